"""Distil a frequency-aware fusion teacher into a compact CNN student (DFSFuse), end to end.

    accelerate launch recipes/distill.py                          # small real default, CPU, minutes
    accelerate launch recipes/distill.py --config recipes/configs/msrs.yaml --output runs/msrs
    python recipes/distill.py train.max_steps=20 --output runs/quick --overwrite

Stages: (0, when ``segmenter.steps > 0``) the segmenter pre-trained alone on labelled pairs
fused by a rule, (1) teacher + segmenter on fusion + segmentation losses, (2) student distilled from
the frozen teacher through the distilled semantic loss, (3) evaluation of avg, max, teacher
and student on held-out real pairs (``metrics.json``, ``comparison.png``) and segmentation
mIoU on held-out synthetic scenes, (4) export of student and teacher (safetensors + config +
model card), each loadable with ``dfsfuse.from_pretrained``. ``--resume`` continues an
interrupted run from its latest checkpoint; ``--teacher DIR`` skips stage 1; ``--segmenter DIR``
replaces the teacher's segmenter in stage 2 and the evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from rich.console import Console
from rich.table import Table

from dfsfuse.atomic import write_text_atomic
from dfsfuse.card import distilled_from_line, render_card
from dfsfuse.data.io import write_image
from dfsfuse.export import CONFIG_NAME, save_pretrained, weights_sha256
from dfsfuse.models.convert import convert_head
from dfsfuse.run_layout import SAMPLE_NAME, RunLayout
from dfsfuse.train.config import ConfigError, load_config
from dfsfuse.train.evaluate import (
    BASELINES,
    comparison_image,
    evaluate_fusion,
    evaluate_segmentation,
    model_summary,
)
from dfsfuse.train.data import build_eval_sets
from dfsfuse.train.loop import NonFiniteLossError, TrainingInterrupted
from dfsfuse.train.segmenter_stage import pretrain_segmenter
from dfsfuse.train.stages import (
    RunDirExistsError, apply_cpu_threads, build_models, distill_student, load_class_segmenter, load_segmenter,
    load_teacher, make_accelerator, prepare_run_dir, train_teacher,
)

TABLE_METRICS = ("EN", "SD", "SF", "AG", "MI", "VIF", "Qabf", "SSIM")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=20")
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: recipes/configs/default.yaml)")
    p.add_argument("--output", type=Path, default=Path("runs/default"), help="run folder (default: runs/default)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete what --output holds and start over")
    p.add_argument("--teacher", type=Path, default=None, help="exported teacher folder: skip stage 1")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="exported segmenter folder that stage 2 and the evaluation use instead of --teacher's")
    args = p.parse_intermixed_args(argv)
    if args.segmenter is not None and args.teacher is None:  # else the run's own segmenter card would describe it
        p.error("--segmenter replaces an exported teacher's segmenter: it needs --teacher")
    return args


def run(args: argparse.Namespace) -> dict:
    t_start = time.time()
    # resolve(): launched through a symlink, the built-in default is still the repository's
    # default.yaml; a missing config is an error, never a silent fall-back to the dataclass defaults.
    config_path = args.config or Path(__file__).resolve().with_name("configs") / "default.yaml"
    cfg = load_config(config_path, args.overrides)
    # Segmenter folders are read before the run folder is touched: a typo fails now (nothing
    # overwritten), not after stage 1. Loaded on the CPU; stage 2 moves them to the device.
    cpu = torch.device("cpu")
    segmenter_override = load_segmenter(args.segmenter, cpu, "--segmenter") if args.segmenter else None
    class_segmenter = load_class_segmenter(cfg, cpu)
    run_dir = prepare_run_dir(args.output, resume=args.resume, overwrite=args.overwrite)
    layout = RunLayout(run_dir)
    accelerator = make_accelerator(cfg, run_dir)
    device = accelerator.device
    threads = apply_cpu_threads(cfg, accelerator)
    console = Console(quiet=not accelerator.is_main_process, width=max(Console().width, 130))
    console.print(f"[bold]dfsfuse distill[/] → {run_dir}  ({accelerator.num_processes} process(es) on {device}"
                  f"{f', {threads} thread(s) each' if threads else ''}, mixed precision {accelerator.mixed_precision})")
    teacher, segmenter, student = build_models(cfg)

    # Stage 0 (segmenter.steps > 0): the segmenter pre-trained alone on labelled pairs.
    # Stage 1: teacher + segmenter (both skipped with --teacher, or when a resumed run already exported it).
    teacher_dir = args.teacher or layout.teacher
    if args.teacher is None and not (args.resume and (teacher_dir / CONFIG_NAME).is_file()):
        pretrain_segmenter(accelerator, cfg, segmenter, run_dir, resume=args.resume)
        train_teacher(accelerator, cfg, teacher, segmenter, run_dir, resume=args.resume)
    teacher, segmenter = load_teacher(teacher_dir, device)
    sources = frozen_sources(teacher_dir, args.segmenter or RunLayout.find_segmenter(teacher_dir),
                             cfg.loss.seg_ce_class_segmenter)
    console.print(f"teacher: {teacher_dir}")
    if segmenter_override is not None:
        segmenter = segmenter_override
        console.print(f"segmenter: {args.segmenter}")

    # Stage 2: distil the student from the frozen teacher.
    result = distill_student(accelerator, cfg, teacher, segmenter, student, run_dir, resume=args.resume,
                             class_segmenter=class_segmenter)
    student = accelerator.unwrap_model(student).eval()
    if cfg.model.student_export_head:  # e.g. region-contrast → region-gain: drop the residual r
        student = convert_head(student, cfg.model.student_export_head).to(device)
        console.print(f"student: evaluated and exported with the {cfg.model.student_export_head} head")

    report = {}
    if accelerator.is_main_process:
        # Stage 3: evaluate on held-out real pairs (never trained on) and held-out synthetic scenes.
        eval_sets = build_eval_sets(cfg.eval)
        fusers = {"teacher": teacher.eval(), "student": student}
        # With the segmenter, labelled held-out sets (MSRS val/test) are also segmented, fed with each input.
        fusion = evaluate_fusion(fusers, eval_sets, device, max_images=cfg.eval.max_images, segmenter=segmenter)
        segmentation = fusion.segmentation
        miou = evaluate_segmentation(segmenter, fusers, cfg.eval.synthetic, cfg.eval.synthetic_size,
                                     seed=cfg.train.seed + 10_000, device=device) \
            if segmenter is not None and cfg.eval.synthetic > 0 else {}
        summaries = {name: model_summary(m, tuple(cfg.eval.latency_size), device, runs=cfg.eval.latency_runs)
                     for name, m in fusers.items()}
        if fusion.strips:
            columns = ["ir", "vis", *BASELINES, *fusers]
            write_image(layout.comparison, comparison_image(fusion.strips, columns))
            # The model card's sample shows only the first held-out set (the bundled MSRS pairs, MIT):
            # an exported folder must not carry images whose licence does not allow it.
            first = next(iter(fusion.strips))
            write_image(layout.sample, comparison_image({first: fusion.strips[first]}, columns))

        # Stage 4: export the student (and record everything in metrics.json).
        training = {"datasets": [s.name or s.root for s in cfg.data.train] + (["synthetic scenes"] if cfg.data.synthetic else []),
                    "steps (teacher / student)": f"{cfg.stage_steps('teacher')} / {result.steps}",
                    **({"segmenter": segmenter_history(cfg)} if cfg.stage_steps("segmenter") > 0 else {}),
                    "recipe": "recipes/distill.py", "config": cfg.to_dict()}
        files = {SAMPLE_NAME: layout.sample} if fusion.strips else {}
        card_metrics = {m: fusion.metrics[m] for m in ("avg", "max", "teacher", "student") if m in fusion.metrics}
        report = {**card_metrics, "segmentation_miou": miou, "segmentation": segmentation, "models": summaries,
                  "distilled_from": sources,
                  "eval_seconds": round(fusion.seconds, 1), "wall_time_s": round(time.time() - t_start, 1)}
        training["wall time (s)"] = report["wall_time_s"]
        config = {"architecture": student.arch_name, "kwargs": student.arch_kwargs}
        seg_section = segmentation_markdown(segmentation)
        student_training = {**training, "distilled from": distilled_from_line(sources)}  # not the teacher's cards
        card = render_card("dfsfuse student", config, summary={**summaries["student"], "device": str(device)},
                           metrics=card_metrics, training=student_training, sample_image=SAMPLE_NAME if files else None,
                           sections={"Segmentation of its fusion": seg_section} if seg_section else None)
        save_pretrained(student, layout.student, card=card, files=files, role="student")
        if args.teacher is None:  # this run trained the teacher (and segmenter): give them cards too
            write_teacher_cards(layout.teacher, teacher, segmenter, summaries["teacher"], card_metrics,
                                seg_section, training, device)
        write_text_atomic(layout.metrics, json.dumps(report, indent=2))
        print_summary(console, report, run_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report


def frozen_sources(teacher: Path, segmenter: Optional[Path], class_segmenter: Optional[str]) -> dict:
    """Folder and weights hash (:func:`~dfsfuse.export.weights_sha256`) of each frozen model stage 2
    reads, hashed when loaded: ``{"teacher": {"path", "sha256"}, "segmenter": ..., "class segmenter": ...}``
    for the card and ``metrics.json``. A float16 copy of a teacher has another hash, and distils
    another student (README, Semantic benchmark, "Retraining the shipped semantic student")."""
    folders = {"teacher": teacher, "segmenter": segmenter,
               "class segmenter": Path(class_segmenter) if class_segmenter else None}
    return {role: {"path": str(folder), "sha256": weights_sha256(folder)}
            for role, folder in folders.items() if folder is not None}


def segmentation_markdown(segmentation: dict) -> str:
    """Per-class IoU tables (one per labelled held-out set) of the run's segmenter fed with each input."""
    parts = []
    for name, seg in segmentation.items():
        kinds = list(seg["miou"])
        classes = list(next(iter(seg["iou"].values())))
        rows = [f"| input | mIoU | {' | '.join(classes)} |", "| --- | ---: |" + " ---: |" * len(classes)]
        for k in kinds:
            rows.append(f"| {k} | {seg['miou'][k]:.3f} | "
                        + " | ".join(f"{seg['iou'][k][c]:.3f}" for c in classes) + " |")
        parts.append(f"The run's segmenter on **{name}** (real labels, never trained on), fed with each input "
                     "(fusions rounded to 8 bits as saved):\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


def segmenter_history(cfg) -> str:
    """How a stage-0 segmenter was trained, for the cards (the datasets line lists every training set)."""
    stage = cfg.segmenter
    after = "fine-tuned with the teacher in stage 1" if stage.finetune else "then frozen (stage 1 trains only the teacher)"
    return (f"pre-trained alone for {cfg.stage_steps('segmenter')} steps (batch {stage.batch_size}, "
            f"{stage.crop[0]}×{stage.crop[1]} crops, loss.seg_loss={cfg.loss.seg_loss}) on the labelled training pairs "
            f"fused by {stage.input}; {after}")


def write_teacher_cards(folder: Path, teacher, segmenter, summary: dict, card_metrics: dict, seg_section: str,
                        training: dict, device) -> None:
    """Model cards for the run's teacher and segmenter folders (written atomically)."""
    metrics = {m: card_metrics[m] for m in ("avg", "max", "teacher") if m in card_metrics}
    card = render_card("dfsfuse teacher", teacher.arch_config(), summary={**summary, "device": str(device)},
                       metrics=metrics, training=training,
                       sections={"Segmentation of its fusion": seg_section} if seg_section else None)
    write_text_atomic(folder / "README.md", card)
    seg_dir = RunLayout.segmenter_of(folder)
    if segmenter is not None and seg_dir.is_dir():
        seg_config = {**segmenter.arch_config(), "kind": "segmentation"}
        card = render_card("dfsfuse segmenter", seg_config, training=training,
                           sections={"Held-out segmentation": seg_section} if seg_section else None)
        write_text_atomic(seg_dir / "README.md", card)


def print_summary(console: Console, report: dict, run_dir: Path) -> None:
    """The final table: avg, max, teacher, student on each held-out set, with size and speed."""
    methods = [m for m in ("avg", "max", "teacher", "student") if m in report]
    table = Table(title="held-out real pairs (means); size and speed at "
                        + "×".join(str(v) for v in _size_of(report)))
    for col in ("dataset", "method", *TABLE_METRICS, "params", "GMAC", "ms"):
        table.add_column(col, justify="left" if col in ("dataset", "method") else "right")
    datasets = list(report[methods[0]]) if methods else []
    for dataset in datasets:
        for m in methods:
            row = report[m][dataset]
            size = report["models"].get(m, {})
            table.add_row(dataset, m, *(f"{row[n]:.3f}" for n in TABLE_METRICS),
                          f"{size['params']:,}" if size else "", f"{size['gmac']:.2f}" if size else "",
                          f"{size['latency_ms']:.0f}" if "latency_ms" in size else "")
        if dataset != datasets[-1]:
            table.add_section()
    console.print(table)
    if report.get("segmentation_miou"):
        console.print("segmenter mIoU on held-out synthetic scenes, fed with: " +
                      ", ".join(f"{k} {v:.3f}" for k, v in report["segmentation_miou"].items()))
    for name, seg in report.get("segmentation", {}).items():
        console.print(f"segmenter mIoU on {name} (real labels), fed with: " +
                      ", ".join(f"{k} {v:.3f}" for k, v in seg["miou"].items()))
    layout = RunLayout(run_dir)
    console.print(f"student written to [bold]{layout.student}[/]; metrics in {layout.metrics}; "
                  f"finished in {report['wall_time_s']:.0f} s")


def _size_of(report: dict) -> tuple:
    first = next(iter(report.get("models", {}).values()), {})
    return first.get("height", "?"), first.get("width", "?")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ConfigError, RunDirExistsError, NonFiniteLossError, ValueError, FileNotFoundError) as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"distill: {exc}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
