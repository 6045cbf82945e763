"""``dfsfuse segbench``: the semantic benchmark of task-driven fusion papers (SeAFusion, PSFusion).

For each input kind (IR, VIS, avg, max, teacher, student, ``--model NAME=DIR``, ``--fused
NAME=DIR``) train the same segmenter from scratch with the same seed and budget on the labelled
training pairs rendered with that input, and report mIoU / per-class IoU on a labelled test
folder; or, with ``--quick``, score one trained segmenter on every kind. A thin front end over
:mod:`dfsfuse.semantic_bench`; ``benchmarks/semantic.py`` uses the same parser and ``run``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from ..cpus import available_cpus

# Torch-free copies of dfsfuse.semantic_bench's constants: building parsers must not import torch
# (``dfsfuse --help`` stays fast); tests/test_semantic_bench.py checks they agree.
BUILTIN_KINDS = ("ir", "vis", "avg", "max", "region-max", "laplacian", "ir-contrast", "region-contrast", "gamma-contrast",
                 "teacher", "student", "semantic-teacher", "semantic-student",
                 "tone-teacher", "tone-student")
DEFAULT_KINDS = ("ir", "vis", "avg", "max", "teacher", "student")
SEG_LOSS_CHOICES = ("weighted", "ohem", "plain")


def add_arguments(parser: argparse.ArgumentParser, json_default: Optional[Path] = None) -> None:
    """Add the semantic benchmark options to ``parser`` (shared by the CLI and ``benchmarks/semantic.py``)."""
    parser.add_argument("--train", type=Path, metavar="DIR",
                        help="labelled training folder (ir/, vi/, Segmentation_labels/); "
                             "default ../shared/data/msrs/train ($DFSFUSE_SHARED_DATA overrides ../shared/data)")
    parser.add_argument("--test", type=Path, metavar="DIR",
                        help="labelled test folder, same layout (default ../shared/data/msrs/val)")
    parser.add_argument("--kinds", nargs="*", default=list(DEFAULT_KINDS), metavar="KIND",
                        help=f"built-in input kinds, any of {' '.join(BUILTIN_KINDS)} "
                             f"(default: {' '.join(DEFAULT_KINDS)}; --kinds with no value: only --model/--fused)")
    parser.add_argument("--teacher", type=Path, metavar="DIR",
                        help="teacher model folder (default: the shipped dfsfuse/assets/teacher; skipped if absent)")
    parser.add_argument("--student", type=Path, metavar="DIR",
                        help="student model folder (default: the shipped dfsfuse/assets/student)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                        help="also an exported fusion model folder (repeatable)")
    parser.add_argument("--fused", action="append", default=[], metavar="NAME=DIR",
                        help="also a folder of fused images named by pair stem, covering the train and test pairs "
                             "(or with sub-folders named like the train/test folders, e.g. DIR/train, DIR/val)")
    parser.add_argument("--quick", nargs="?", const="", default=None, metavar="SEGMENTER_DIR",
                        help="no training: score this exported segmenter on every kind "
                             "(default: the shipped dfsfuse/assets/segmenter)")
    parser.add_argument("--full", action="store_true",
                        help="GPU setting: native resolution, 384x512 crops, 4000 steps of batch 16, the registry "
                             "segmenter (default: the fast CPU setting)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="train with N seeds, --first-seed .. --first-seed+N-1 (default 1)")
    parser.add_argument("--first-seed", type=int, default=0, metavar="K",
                        help="first seed (default 0); e.g. --first-seed 3 --seeds 2 adds seeds 3, 4 to a 3-seed run")
    parser.add_argument("--steps", type=int, help="training steps per segmenter (fast default 900)")
    parser.add_argument("--batch-size", type=int, help="training batch (fast default 8)")
    parser.add_argument("--lr", type=float, help="peak AdamW learning rate (default 2e-3)")
    parser.add_argument("--ema", type=float, metavar="DECAY",
                        help="score an exponential moving average of the segmenter's weights with this decay, "
                             "e.g. 0.99 (default 0: the last weights)")
    parser.add_argument("--class-crops", type=float, metavar="P",
                        help="probability that a training crop is placed around a pixel of a class drawn uniformly "
                             "among those present (rare-class sampling; default 0: plain random crops)")
    parser.add_argument("--weight-c", type=float, metavar="C",
                        help="c of the ENet class weights 1/ln(c + p) of --loss weighted (default 1.02, ENet's and "
                             "SeAFusion's; larger is softer, e.g. 1.2)")
    parser.add_argument("--color", action="store_true",
                        help="segmenters read RGB, as SeAFusion's does: each kind's grey image recoloured with the "
                             "visible chroma (IR alone as grey RGB); default: the grey image")
    parser.add_argument("--size", metavar="HxW|native",
                        help="working resolution (fast default 240x320; quick default native)")
    parser.add_argument("--crop", metavar="HxW|none", help="random training crop (fast default 160x224)")
    parser.add_argument("--segmenter", metavar="SPEC",
                        help="segmenter to train, registry name[:key=value,...] "
                             "(fast default segmenter:backbone=mobilenetv3_small_100,fpn_dim=32)")
    parser.add_argument("--loss", choices=SEG_LOSS_CHOICES,
                        help="segmentation loss (default weighted: ENet weights of the training labels)")
    parser.add_argument("--device", help="cpu or cuda[:N] (default: cuda with --full when available, else cpu)")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads, per worker with --workers (default: the CPU cores shared "
                             "among the workers)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="train the segmenters in N processes (default without --threads: one per CPU core, "
                             "at most 4 on a CPU and 8 on a GPU, 1 with --full on a GPU; else 1); on 2 cores two one-thread workers train 1.6x as many "
                             "segmenters per hour as one two-thread process, with the numbers of --threads 1; "
                             "each process gets cores/N torch threads unless --threads says otherwise (so "
                             "--workers 1 --threads 1 reproduces the default's numbers, --workers 1 alone does not)")
    parser.add_argument("--picture-image", metavar="STEM",
                        help="test image shown in the picture (default: the one with the most classes)")
    parser.add_argument("--json", type=Path, default=json_default,
                        help="write the results to this JSON file (while training, FILE.partial.json holds "
                             "the seeds every kind has finished, removed at the end: a stopped run keeps them)")
    parser.add_argument("--png", type=Path,
                        help="write the picture here (default: the --json path with .png; none without --json)")


def _hw(text: Optional[str], option: str, none_words: tuple) -> object:
    """``None`` (not given), ``"none"`` for the words in ``none_words``, else (H, W)."""
    from ..bench import parse_size

    if text is None:
        return None
    if text.lower() in none_words:
        return "none"
    try:
        return parse_size(text)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None


def settings_from_args(args: argparse.Namespace):
    """The :class:`dfsfuse.semantic_bench.SegBenchSettings` for parsed arguments."""
    from ..fuse import resolve_device
    from ..semantic_bench import default_data_root, fast_settings, full_settings

    root = default_data_root() / "msrs"
    overrides = {
        "train_dir": str(args.train or root / "train"),
        "test_dir": str(args.test or root / "val"),
    }
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if args.first_seed < 0:
        raise ValueError(f"--first-seed must be at least 0, got {args.first_seed}")
    overrides["seeds"] = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.color:
        overrides["color"] = True
    for key, value in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                       ("segmenter", args.segmenter), ("seg_loss", args.loss), ("ema", args.ema),
                       ("class_crops", args.class_crops), ("weight_c", args.weight_c)):
        if value is not None:
            overrides[key] = value
    size = _hw(args.size, "--size", ("native", "none", "full"))
    crop = _hw(args.crop, "--crop", ("none", "whole"))
    if size is not None:
        overrides["size"] = None if size == "none" else size
    elif args.quick is not None:
        overrides["size"] = None
    if crop is not None:
        overrides["crop"] = None if crop == "none" else crop
    if args.device is not None:
        overrides["device"] = str(resolve_device(args.device))
    settings = full_settings(**overrides) if args.full else fast_settings(**overrides)
    settings.validate()
    return settings


def worker_plan(workers: Optional[int], threads: Optional[int], device: str,
                cores: Optional[int] = None, full: bool = False) -> "tuple[int, int]":
    """(processes, torch threads per process) for ``--workers`` / ``--threads`` as given (``None`` = not given).

    Neither given, on a CPU: one one-thread worker per core, at most 4 (small segmenters do not
    scale across threads; separate processes do). ``--threads`` alone keeps one process (the
    behaviour before workers existed). On a GPU the fast setting's segmenters share it: one per core,
    at most 8 (one process is bound by kernel launches: on an H200 one trained a 900-step segmenter in
    30 s, ten side by side one every 8.7 s); ``full`` keeps one process there (its segmenters are large
    and how many fit a GPU's memory is unmeasured).
    """
    cores = cores or available_cpus()
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers is None:
        if threads is not None:
            workers = 1
        elif device == "cpu":
            workers = min(cores, 4)
        else:
            workers = 1 if full else min(cores, 8)
    return workers, threads or max(1, cores // workers)


class PartialResults:
    """Where a training run keeps its finished seeds while it runs: ``FILE.partial.json`` beside
    ``--json FILE``, rewritten (atomically) as each seed of every kind finishes and removed once
    ``FILE`` is written, so a run stopped by a time limit or Ctrl-C leaves its finished seeds."""

    def __init__(self, final: Path) -> None:
        self.path = final.with_name(final.stem + ".partial.json")
        self.written = False

    def save(self, result) -> None:
        """Write ``result`` (a :class:`dfsfuse.semantic_bench.SegBenchResult` of the finished seeds)."""
        result.save_json(self.path)
        self.written = True

    def remove(self) -> None:
        """Remove the file this run wrote (never one it did not)."""
        if self.written:
            self.path.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or the quick mode), print the table, write JSON and picture when asked."""
    import torch
    from rich.console import Console

    from ..semantic_bench import (
        package_asset,
        parse_named,
        print_table,
        resolve_kinds,
        run_benchmark,
        run_quick,
        save_picture,
    )
    from ..train.progress import StageProgress

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    settings = settings_from_args(args)
    png = args.png or (args.json.with_suffix(".png") if args.json else None)
    for option, out in (("--json", args.json), ("--png", png)):
        if out is not None and out.is_dir():  # checked before the training, not after it
            raise ValueError(f"{out}: is a folder; {option} takes a file path")
    console = Console()
    if not console.is_terminal:  # logs: wide enough for the per-class table
        console = Console(width=150)
    say = lambda text: console.print(f"[dim]{text}[/]")  # noqa: E731
    partial = PartialResults(args.json) if args.json and args.quick is None else None
    quick_dir = None
    if args.quick is not None:
        quick_dir = Path(args.quick) if args.quick else package_asset("segmenter")
        if not (quick_dir / "config.json").is_file():
            raise FileNotFoundError(f"{quick_dir}: no exported segmenter (config.json) for --quick")
    kinds, skipped = resolve_kinds(args.kinds, args.teacher, args.student, parse_named(args.model, "--model"),
                                   parse_named(args.fused, "--fused"), settings.device)
    for name, why in skipped.items():
        console.print(f"[yellow]note: skipping {name}: {why}[/]")
    if quick_dir is not None:
        result, test = run_quick(quick_dir, settings, kinds, skipped, args.picture_image, say)
    else:
        workers, threads = worker_plan(args.workers, args.threads, settings.device, full=args.full)
        result, test = run_benchmark(settings, kinds, skipped, args.picture_image, say,
                                     progress=lambda name, total, **kw: StageProgress(name, total, **kw),
                                     workers=workers, worker_threads=threads,
                                     checkpoint=partial.save if partial else None)
    print_table(result, console)
    console.print(f"wall time {result.settings['wall_time_s']:.0f} s")
    if args.json:
        console.print(f"wrote {result.save_json(args.json)}")
        if partial:
            partial.remove()
    if png:
        console.print(f"wrote {save_picture(result, test, png)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``segbench`` subcommand."""
    parser = subparsers.add_parser(
        "segbench",
        help="semantic benchmark: mIoU of a segmenter trained on IR, VIS, avg, max, teacher, student fusions",
        description=(
            "Task-driven evaluation (SeAFusion/PSFusion protocol): train the same segmenter from scratch, same seed "
            "and budget, on the labelled training pairs rendered with each input kind; report mIoU and per-class IoU "
            "on a labelled test folder. --quick scores one trained segmenter on every kind instead."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
