"""Probe: which segmenter the stage-2 seg CE looks through.

Pre-trains a segmenter exactly as a recipe's stage 0 does (one function for both:
``dfsfuse.train.segmenter_stage.train_on_rules``; ``segmenter.*`` of the config: crop, batch,
learning rate, class-weighted CE, seed ``train.seed``) but on the labelled training pairs
rendered by *one or several* rules at once (the same labels repeated per rule), and writes it
beside a copy of a teacher, so that stage 2 distils from that teacher while its semantic losses
use this segmenter::

    python benchmarks/stage2_segmenter.py --rules ir,vis --out runs/seg_irvis
    accelerate launch --config_file recipes/accelerate/one_process.yaml -q recipes/distill.py \\
        --config recipes/configs/msrs_semantic_cpu.yaml --output runs/student_irvis \\
        --teacher runs/seg_irvis/teacher train.cpu_threads=1

(``--teacher DIR`` loads the segmenter from ``DIR/segmenter`` or a ``segmenter`` folder beside
``DIR``; README, Semantic benchmark, "Which segmenter stage 2 looks through".)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from dfsfuse.export import save_pretrained
from dfsfuse.models import create_model
from dfsfuse.options import BASELINE_METHODS
from dfsfuse.train.config import load_config
from dfsfuse.train.progress import StageProgress
from dfsfuse.train.segmenter_stage import train_on_rules


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", required=True, help=f"comma-separated inputs, any of: {', '.join(BASELINE_METHODS)}")
    p.add_argument("--out", type=Path, required=True, help="folder for teacher/ (a copy) and segmenter/")
    p.add_argument("--config", type=Path, default=Path("recipes/configs/msrs_semantic_cpu.yaml"))
    p.add_argument("--teacher", type=Path, default=Path("dfsfuse/assets/semantic/teacher"))
    p.add_argument("--steps", type=int, default=900, help="default 900 (the config's 600 for one rule, "
                                                           "more for the larger set)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    bad = [r for r in rules if r not in BASELINE_METHODS]
    if bad or not rules:
        p.error(f"--rules: unknown rule {bad[0] if bad else '(none)'!r}; choose from {', '.join(BASELINE_METHODS)}")
    if (args.out / "segmenter").exists():
        p.error(f"{args.out / 'segmenter'} exists: choose another --out")
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [])
    model = create_model(cfg.model.segmenter, **cfg.model.segmenter_kwargs)
    with StageProgress("segmenter", args.steps) as progress:
        trained, record = train_on_rules(cfg, rules, args.steps, model, on_step=progress.update)
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "teacher").exists():
        shutil.copytree(args.teacher, args.out / "teacher")
    save_pretrained(trained, args.out / "segmenter", role="segmenter", train_steps=args.steps, pretraining=record)
    print(f"wrote {args.out / 'segmenter'} ({record['pairs']} images: {', '.join(rules)}) beside {args.out / 'teacher'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
