"""Student vs teacher fusion quality on real pairs: the full metric set per dataset.

Fuses every pair with ``avg``, ``max`` and the given exported models (``--teacher`` /
``--student`` folders written by ``dfsfuse export`` or ``save_pretrained``), scores them with
:func:`dfsfuse.train.evaluate.evaluate_fusion` (fused images rounded to 8 bits, the published
evaluator's conventions) and writes a rich table, JSON and a labelled side-by-side grid::

    python benchmarks/quality.py --teacher runs/distill/teacher --student runs/distill/student
    python benchmarks/quality.py --student runs/distill/student --dataset mine=/data/pairs --max-images 10
    python benchmarks/quality.py --model fast=runs/a/student --model plain=runs/b/student --rules max,region-max

By default the datasets are ``msrs`` (``<data>/msrs``, test split), ``tno`` and ``roadscene``
under ``--data`` (``../shared/data`` next to the repository), whichever exist.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from dfsfuse.data import PairedImages  # noqa: E402
from dfsfuse.data.errors import DatasetError  # noqa: E402
from dfsfuse.data.shared import shared_data_root  # noqa: E402

RESULTS = HERE / "results"
DEFAULT_DATA = shared_data_root()
DEFAULT_SETS: Tuple[Tuple[str, str, Optional[str]], ...] = (("msrs", "msrs", "test"), ("tno", "tno", None),
                                                             ("roadscene", "roadscene", None))
LOWER_IS_BETTER = {"MSE"}


def open_dataset(path: Path) -> PairedImages:
    """A plain ``ir/`` + ``vi/`` folder, or an MSRS-style root (its ``test`` split); labels are not read."""
    path = Path(path)
    split = "test" if not (path / "ir").is_dir() and (path / "test").is_dir() else None
    return PairedImages(path, split=split, labels=False)


def find_datasets(data: Path, named: Sequence[str]) -> Dict[str, PairedImages]:
    """``NAME=PATH`` items when given, else the default sets found under ``data``."""
    if named:
        sets = {}
        for item in named:
            name, eq, path = item.partition("=")
            if not eq or not name:
                raise ValueError(f"--dataset {item!r}: expected NAME=PATH")
            sets[name] = open_dataset(Path(path))
        return sets
    sets = {name: PairedImages(data / folder, split=split, labels=False)
            for name, folder, split in DEFAULT_SETS if (data / folder).is_dir()}
    if not sets:
        folders = ", ".join(folder for _, folder, _ in DEFAULT_SETS)
        raise DatasetError(f"{data}: none of {folders} found; pass --dataset NAME=PATH")
    return sets


def load_models(paths: Dict[str, Optional[Path]], device: str) -> Tuple[Dict[str, torch.nn.Module], Dict[str, Any]]:
    """Load each given fusion model folder; returns the models and their descriptions for the JSON."""
    from dfsfuse import from_pretrained
    from dfsfuse.models import count_parameters

    models, info = {}, {}
    for name, path in paths.items():
        if path is None:
            continue
        model = from_pretrained(path, device=device)
        if getattr(model, "kind", "") != "fusion":
            raise ValueError(f"{path}: {model.arch_name!r} is not a fusion model")
        models[name] = model
        info[name] = {"path": str(Path(path).resolve()), **model.arch_config(), "params": count_parameters(model)}
    if not models:
        raise ValueError("give at least one model folder (--teacher, --student and/or --model)")
    return models, info


def print_tables(metrics: Dict[str, Dict[str, Dict[str, float]]], counts: Dict[str, int]) -> None:
    """One rich table per dataset: methods as rows, metrics as columns, the best value in bold."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    methods = list(metrics)
    for dataset, count in counts.items():
        names = list(metrics[methods[0]][dataset])
        table = Table(title=f"{dataset} ({count} pairs)")
        table.add_column("method")
        for name in names:
            table.add_column(name + (" ↓" if name in LOWER_IS_BETTER else ""), justify="right", no_wrap=True)
        best = {}
        for name in names:
            values = [metrics[m][dataset][name] for m in methods if not math.isnan(metrics[m][dataset][name])]
            if values:
                best[name] = min(values) if name in LOWER_IS_BETTER else max(values)
        for m in methods:
            cells = []
            for name in names:
                v = metrics[m][dataset][name]
                text = "nan" if math.isnan(v) else f"{v:.4f}"
                cells.append(f"[bold]{text}[/]" if best.get(name) == v else text)
            table.add_row(m, *cells)
        needed = 12 + sum(max(len(n) + 2, 10) + 3 for n in names)
        Console(width=max(console.width, needed)).print(table)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Evaluate, print the tables, write JSON and the image grid."""
    from dfsfuse.atomic import write_json_atomic
    from dfsfuse.data.io import write_image
    from dfsfuse.options import BASELINE_METHODS, STRETCH_MODES
    from dfsfuse.train.evaluate import BASELINES, comparison_image, evaluate_fusion

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, help="exported teacher folder (model.safetensors + config.json)")
    parser.add_argument("--student", type=Path, help="exported student folder")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                        help="also this exported fusion model folder, scored as NAME (repeatable), "
                             "e.g. two students trained with the same recipe")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"root of msrs/ tno/ roadscene/ (default {DEFAULT_DATA})")
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=PATH",
                        help="evaluate this folder instead of the defaults (ir/ + vi/, or MSRS layout); repeatable")
    parser.add_argument("--max-images", type=int, default=0, help="first N pairs of each dataset (0 = all)")
    parser.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    parser.add_argument("--json", type=Path, default=RESULTS / "quality.json", help="JSON report path")
    parser.add_argument("--png", type=Path, help="image grid path (default: the --json path with .png)")
    parser.add_argument("--rules", default=",".join(BASELINES),
                        help=f"rule baselines to score, comma-separated from {', '.join(BASELINE_METHODS)} "
                             f"(default {','.join(BASELINES)})")
    parser.add_argument("--stretch", choices=STRETCH_MODES, default="none",
                        help="score fused images as saved (none, default) or min-max stretched (minmax)")
    args = parser.parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    unknown = [r for r in rules if r not in BASELINE_METHODS]
    if unknown:
        parser.error(f"unknown rule {unknown[0]!r}; choose from {', '.join(BASELINE_METHODS)}")
    if args.max_images < 0:
        parser.error("--max-images must be 0 (all) or positive")

    named: Dict[str, Optional[Path]] = {"teacher": args.teacher, "student": args.student}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--model {spec!r}: expected NAME=DIR")
        if named.get(name) is not None or name in rules:
            parser.error(f"--model {spec!r}: the name {name!r} is already used")
        named[name] = Path(path)
    try:
        datasets = find_datasets(args.data, args.dataset)
        models, info = load_models(named, args.device)
        report = evaluate_fusion(models, datasets, torch.device(args.device), max_images=args.max_images,
                                 show_progress=sys.stderr.isatty(), baselines=rules, stretch=args.stretch)
    except (DatasetError, FileNotFoundError, ValueError) as exc:  # one line, nothing written
        print(f"quality.py: error: {exc}", file=sys.stderr)
        return 2
    counts = {name: min(len(ds), args.max_images) if args.max_images else len(ds) for name, ds in datasets.items()}
    print_tables(report.metrics, counts)

    doc = {
        "settings": {"device": args.device, "torch_version": torch.__version__,
                     "python_version": platform.python_version(), "max_images": args.max_images,
                     "methods": [*rules, *models], "stretch": args.stretch, "seconds": round(report.seconds, 2)},
        "models": info,
        "datasets": {name: {"path": str(ds.root.resolve()), "split": ds.split, "images": counts[name]}
                     for name, ds in datasets.items()},
        "metrics": report.metrics,
    }
    write_json_atomic(args.json, doc)  # NaN (e.g. SCD of a copied input) as null
    png = args.png or args.json.with_suffix(".png")
    write_image(png, comparison_image(report.strips, ["ir", "vis", *rules, *models]))
    print(f"wrote {args.json} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
