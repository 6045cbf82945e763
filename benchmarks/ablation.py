"""Prove the distillation: ablation of the distilled semantic loss, and quality per multiply-add.

The same student, data, steps and seeds trained as variants that differ only in the student
stage's ``loss.*`` weights — ``alone`` (own fusion loss only), ``output`` (+ output KD),
``features`` (+ feature and wavelet sub-band KD), ``full`` (the distilled semantic loss) —
through the recipe's own stage 2 (``dfsfuse.train.stages.distill_student``) from an exported
teacher; each scored on held-out pairs (fidelity to the teacher, standard metrics, the teacher
segmenter's mIoU on MSRS val, steps to 95% of the final fidelity gain). See ``dfsfuse/ablation/``::

    OMP_NUM_THREADS=1 python benchmarks/ablation.py --teacher runs/msrs_cpu/teacher --threads 1          # fast CPU
    OMP_NUM_THREADS=1 python benchmarks/ablation.py --teacher runs/msrs_cpu/teacher --threads 1 --sizes  # per MAC
    python benchmarks/ablation.py --full --teacher DIR                                                  # GPU setting
    python benchmarks/ablation.py --dry-run                                          # the plan and a time estimate

Writes ``benchmarks/results/ablation.json`` (``{"settings": ..., "results": {variant: {metric:
[one value per seed]}}}``) + ``ablation.png`` (held-out fidelity vs step), or with ``--sizes``
``quality_per_mac.json`` + ``quality_per_mac.png`` (VIF / Qabf / mIoU vs GMAC at 480×640, distilled
and alone, teacher / max / avg as reference lines). Runs are kept in ``--work`` (default
``runs/ablation``); a finished run with the same settings is reused, so an interrupted benchmark
continues where it stopped (and ``--sizes`` reuses the ablation's seed-0 runs of the default student).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402

from dfsfuse.ablation import (  # noqa: E402
    DEFAULT_SIZES,
    NOT_RUN,
    SIZE_VARIANTS,
    VARIANT_DESCRIPTIONS,
    VARIANT_TERMS,
    AblationSettings,
    estimate_seconds,
    fast_settings,
    finished_runs,
    full_settings,
    open_eval_sets,
    planned_runs,
    plot_curves,
    plot_quality_per_mac,
    results_table,
    run_benchmark,
    write_json,
)
from dfsfuse.data.errors import DatasetError  # noqa: E402
from dfsfuse.data.shared import shared_data_root  # noqa: E402
from dfsfuse.train.config import ConfigError  # noqa: E402

RESULTS = HERE / "results"
SHARED = shared_data_root()


def default_teacher() -> Path:
    """The shipped teacher folder (``dfsfuse/assets/teacher``)."""
    return REPO / "dfsfuse" / "assets" / "teacher"


def default_config() -> Path:
    """``msrs_cpu.yaml`` (real MSRS + RoadScene training pairs) where ``../shared/data`` exists,
    else ``default.yaml``."""
    configs = REPO / "recipes" / "configs"
    return configs / ("msrs_cpu.yaml" if (SHARED / "msrs" / "train").is_dir() else "default.yaml")


def default_eval_sets() -> Dict[str, str]:
    """MSRS val (labelled: mIoU), TNO and RoadScene test pairs from ``../shared/data`` (missing ones skipped);
    the bundled MSRS held-out pairs when none of them exists."""
    sets = {"msrs_val": str(SHARED / "msrs" / "val"), "tno": str(SHARED / "tno"),
            "roadscene": str(SHARED / "roadscene")}
    if not any(Path(p).is_dir() for p in sets.values()):
        return {"msrs_bundled_test": "bundled:msrs|test"}
    return sets


def parse_named_sets(items: Sequence[str]) -> Dict[str, str]:
    """``NAME=PATH`` (PATH may be ``bundled:msrs|test``) → ``{NAME: PATH}``."""
    out: Dict[str, str] = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise ValueError(f"--eval-set {item!r}: expected NAME=PATH")
        out[name] = path
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides for every run")
    p.add_argument("--teacher", type=Path, default=None,
                   help="exported teacher folder (with segmenter/); default dfsfuse/assets/teacher")
    p.add_argument("--config", type=Path, default=None,
                   help="base YAML (default: recipes/configs/msrs_cpu.yaml when ../shared/data exists, "
                        "else default.yaml)")
    p.add_argument("--full", action="store_true",
                   help="the GPU setting (4000 steps, 128-px crops, every held-out pair)")
    p.add_argument("--sizes", nargs="*", default=None, metavar="SPEC",
                   help="quality-per-MAC mode: students of several sizes (registry specs, default "
                        f"{' '.join(DEFAULT_SIZES)}), each trained 'full' and 'alone'")
    p.add_argument("--variants", nargs="+", default=None, help=f"default: {' '.join(VARIANT_TERMS)}")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 per variant (default 3; 1 with --sizes in the fast setting)")
    p.add_argument("--steps", type=int, default=None, help="student steps per run")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--crop", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="student learning rate (default: the config's)")
    p.add_argument("--curve-every", type=int, default=None, help="fidelity curve: a checkpoint every N steps")
    p.add_argument("--curve-images", type=int, default=None, help="held-out pairs of the fidelity curve")
    p.add_argument("--max-images", type=int, default=None, help="held-out pairs per set (0 = all)")
    p.add_argument("--eval-set", action="append", default=[], metavar="NAME=PATH",
                   help="held-out set (repeatable; default msrs_val, tno, roadscene under ../shared/data)")
    p.add_argument("--miou-set", default="msrs_val", help="labelled held-out set for mIoU (default msrs_val)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "ablation", help="run folders (default runs/ablation)")
    p.add_argument("--json", type=Path, default=None, help="output JSON (the PNG is written beside it)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, train nothing")
    return p.parse_intermixed_args(argv)


def build_settings(args: argparse.Namespace) -> AblationSettings:
    """The settings of the requested mode, explicit options overriding the preset."""
    sizes_mode = args.sizes is not None
    given = {k: v for k, v in dict(
        steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr, curve_every=args.curve_every,
        curve_images=args.curve_images, max_images=args.max_images).items() if v is not None}
    seeds = args.seeds if args.seeds is not None else (1 if sizes_mode and not args.full else 3)
    variants = args.variants or (list(SIZE_VARIANTS) if sizes_mode else list(VARIANT_TERMS))
    common = dict(
        teacher=str(args.teacher or default_teacher()), config=str(args.config or default_config()),
        overrides=list(args.overrides), variants=variants, seeds=list(range(seeds)),
        students=(list(args.sizes) or list(DEFAULT_SIZES)) if sizes_mode else None,
        eval_sets=parse_named_sets(args.eval_set) if args.eval_set else default_eval_sets(),
        miou_set=args.miou_set, work_dir=str(args.work), **given)
    settings = full_settings(**common) if args.full else fast_settings(**common)
    settings.validate()
    return settings


def default_json(args: argparse.Namespace) -> Path:
    """``results/ablation[_full].json`` or ``results/quality_per_mac[_full].json``."""
    stem = "quality_per_mac" if args.sizes is not None else "ablation"
    return RESULTS / f"{stem}{'_full' if args.full else ''}.json"


def print_plan(console: Console, settings: AblationSettings) -> None:
    """The runs about to be trained and a rough time estimate."""
    runs = planned_runs(settings)
    sets = open_eval_sets(settings.eval_sets)
    n_pairs = sum(min(len(d), settings.max_images) if settings.max_images else len(d) for d in sets.values())
    miou = sets.get(settings.miou_set)
    n_miou = (min(len(miou), settings.max_images) if settings.max_images else len(miou)) if miou is not None else 0
    done = finished_runs(settings)
    seconds = estimate_seconds(settings, n_pairs, n_miou, skip=done)
    what = f"{len(settings.students)} student size(s) × " if settings.students else ""
    console.print(f"[bold]ablation[/] ({settings.mode}): {len(runs)} runs = {what}"
                  f"{len(settings.variants)} variant(s) × "
                  f"{len(settings.seeds)} seed(s) ({len(done)} already done in {settings.work_dir}, reused); "
                  f"{settings.steps} steps of batch {settings.batch_size} on "
                  f"{settings.crop}-px crops; teacher {settings.teacher}; config {settings.config}")
    for v in settings.variants:
        console.print(f"  {v:9s} {VARIANT_DESCRIPTIONS[v]}")
    for v, why in NOT_RUN.items():
        console.print(f"  [dim]{v:9s} not run: {why}[/]")
    console.print(f"held-out: {', '.join(f'{k} ({len(d)} pairs)' for k, d in sets.items()) or 'none found'}; "
                  f"{n_pairs} pairs scored, mIoU on {settings.miou_set if miou is not None else '- (absent)'}")
    console.print(f"estimated time: about {seconds / 60:.0f} min on one free core of the 2-core development CPU "
                  f"(rough; training scales with crop² × batch × steps; slower on a busy machine)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; 0 on success, 2 on bad input."""
    args = parse_args(argv)
    console = Console(width=max(Console().width, 200))
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        settings = build_settings(args)
        print_plan(console, settings)
        if args.dry_run:
            return 0
        report = run_benchmark(settings, log=console.print)
    except (ConfigError, DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"ablation.py: error: {exc}", file=sys.stderr)
        return 2
    json_path = args.json or default_json(args)
    write_json(report, json_path)
    png = json_path.with_suffix(".png")
    if settings.students is not None:
        plot_quality_per_mac(report, png)
    else:
        plot_curves(report, png)
    console.print(results_table(report))
    console.print(f"wrote {json_path} and {png} in {report['settings']['wall_time_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
