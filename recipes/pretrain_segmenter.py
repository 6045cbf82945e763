"""Pre-train a segmenter on the labelled training pairs rendered by one or several rules.

Exactly a recipe's stage 0 (one function for both: ``dfsfuse.train.segmenter_stage.train_on_rules``;
``segmenter.*`` of the config: crop, batch, learning rate, class-weighted CE, seed ``train.seed``),
but on the pairs rendered by each of ``--rules`` at once (the same labels repeated per rule).
The folder it writes is what stage 2 reads through ``recipes/distill.py --segmenter DIR`` (instead
of the teacher's segmenter) or ``loss.seg_ce_class_segmenter=DIR`` (for chosen classes only)::

    python recipes/pretrain_segmenter.py --rules ir --out runs/segmenter_ir
    accelerate launch --config_file recipes/accelerate/one_process.yaml -q recipes/distill.py \\
        --config recipes/configs/msrs_semantic_cpu.yaml --output runs/student_ir_people \\
        --teacher dfsfuse/assets/semantic/teacher loss.seg_ce_class_segmenter=runs/segmenter_ir

(README, Semantic benchmark, "Which segmenter stage 2 looks through".)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Tuple

import torch

from dfsfuse.bench import parse_size
from dfsfuse.export import save_pretrained
from dfsfuse.models import create_model
from dfsfuse.options import BASELINE_METHODS
from dfsfuse.train.config import load_config
from dfsfuse.train.progress import StageProgress
from dfsfuse.train.segmenter_stage import train_on_rules


def _size(text: str) -> Tuple[int, int]:
    """``HxW`` as ``dfsfuse segbench --size`` reads it; a bad value is argparse's one-line error."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", required=True, help=f"comma-separated inputs, any of: {', '.join(BASELINE_METHODS)}")
    p.add_argument("--out", type=Path, required=True, help="folder for the segmenter (must not exist)")
    p.add_argument("--config", type=Path, default=Path("recipes/configs/msrs_semantic_cpu.yaml"),
                   help="training data, segmenter architecture and segmenter.* settings")
    p.add_argument("--steps", type=int, default=900, help="default 900 (the config's stage 0 has 600 for one rule)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the numbers depend on it)")
    p.add_argument("--size", type=_size, metavar="HxW",
                   help="shrink the pairs to HxW before fusing (the semantic benchmark's 240x320); default native")
    p.add_argument("--crop", type=_size, metavar="HxW",
                   help="training crop (default: the config's segmenter.crop; the benchmark's is 160x224)")
    args = p.parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    bad = [r for r in rules if r not in BASELINE_METHODS]
    if bad or not rules:
        p.error(f"--rules: unknown rule {bad[0] if bad else '(none)'!r}; choose from {', '.join(BASELINE_METHODS)}")
    if args.out.exists():
        p.error(f"{args.out} exists: choose another --out")
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [])
    crop = args.crop or tuple(cfg.segmenter.crop)
    if args.size is not None and (crop[0] > args.size[0] or crop[1] > args.size[1]):
        # the trainer would pad such a crop with ignored pixels: wasted steps, not what was meant
        source = "--crop" if args.crop else f"segmenter.crop of {args.config}"
        p.error(f"{source} {crop[0]}x{crop[1]} does not fit inside --size {args.size[0]}x{args.size[1]}")
    model = create_model(cfg.model.segmenter, **cfg.model.segmenter_kwargs)
    with StageProgress("segmenter", args.steps) as progress:
        trained, record = train_on_rules(cfg, rules, args.steps, model, on_step=progress.update,
                                         size=args.size, crop=args.crop)
    save_pretrained(trained, args.out, role="segmenter", train_steps=args.steps, pretraining=record)
    print(f"wrote {args.out} ({record['pairs']} images: {', '.join(rules)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
