"""``dfsfuse eval``: the standard fusion metrics of a folder of fused images.

Fused files are matched to IR and VIS files by stem (``00004N.png`` ↔ ``ir/00004N.jpg`` is a
match); all three are read as the published evaluator reads them (BT.601 luma, rounded) and
scored with :func:`dfsfuse.metrics.fusion_metrics_batch`. Results go to a rich table and,
optionally, to JSON and CSV files written atomically.

The metrics keep the published 8-bit convention. A 16-bit or float IR image is refused with
a one-line error unless ``--ir-range SPEC`` is given: it is then mapped to [0, 1] as
``dfsfuse fuse --ir-range SPEC`` maps it, and rounded to 8 bits before scoring. 8-bit IR
images are always read by the published convention.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Optional

from ..atomic import write_text_atomic
from ..data.errors import DatasetError
from ..options import STRETCH_MODES

if TYPE_CHECKING:
    import numpy as np

    from ..data.irrange import IrRange

LARGE_SET = 10  # show a progress bar from this many images on


@dataclass(frozen=True)
class Triple:
    """One fused image and the IR / VIS images it came from."""

    name: str
    fused: Path
    ir: Path
    vis: Path


def find_triples(fused_dir: Path, ir_dir: Path, vis_dir: Path) -> list[Triple]:
    """Every fused image (sorted by stem) with its IR and VIS partners.

    Raises :class:`DatasetError` naming the file for a missing or empty fused folder, a fused
    image without a partner, or two images sharing a stem. IR/VIS images without a fused
    image are fine (a subset may be evaluated).
    """
    from ..data.io import IMAGE_EXTENSIONS
    from ..data.pairs import list_images

    fused = list_images(fused_dir)
    if not fused:
        raise DatasetError(f"{fused_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the fused folder")
    partners = {"IR": (ir_dir, list_images(ir_dir)), "VIS": (vis_dir, list_images(vis_dir))}
    for stem, path in sorted(fused.items()):
        for role, (folder, index) in partners.items():
            if stem not in index:
                raise DatasetError(f"{path}: no {role} image named {stem}.* in {folder}")
    irs, viss = partners["IR"][1], partners["VIS"][1]
    return [Triple(stem, path, irs[stem], viss[stem]) for stem, path in sorted(fused.items())]


def read_ir_8bit(path: Path, ir_range: Optional[IrRange] = None) -> np.ndarray:
    """The IR image as the metrics see it: 8-bit files by the published convention; a 16-bit or
    float file mapped by ``ir_range`` and rounded to 8 bits, or :class:`DatasetError` without one."""
    import numpy as np

    from ..data.io import is_high_depth, read_gray, read_ir, to_uint8

    if not is_high_depth(path):
        return read_gray(path)
    if ir_range is None:
        raise DatasetError(f"{path}: IR image deeper than 8 bits; the metrics use the published 8-bit convention: "
                           "pass --ir-range SPEC (the one used with `dfsfuse fuse`, e.g. auto) to convert it")
    return to_uint8(read_ir(path, ir_range)).astype(np.float32)


def read_triple(triple: Triple, ir_range: Optional[IrRange] = None,
                stretch: str = "none") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read F, A, B as float32 grey arrays (F under the ``stretch`` convention); :class:`DatasetError`
    naming the file if sizes differ."""
    from ..data.io import read_gray
    from ..metrics.stretch import apply_stretch

    f = apply_stretch(read_gray(triple.fused), stretch)
    a = read_ir_8bit(triple.ir, ir_range)
    b = read_gray(triple.vis)
    if a.shape != b.shape:
        raise DatasetError(f"{triple.vis}: size {_wh(b.shape)} does not match IR {triple.ir} ({_wh(a.shape)})")
    if f.shape != a.shape:
        raise DatasetError(f"{triple.fused}: size {_wh(f.shape)} does not match IR {triple.ir} ({_wh(a.shape)})")
    return f, a, b


def _wh(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _batches(triples: list[Triple], batch_size: int, ir_range: Optional[IrRange] = None,
             stretch: str = "none") -> Iterator[tuple[list[str], tuple[np.ndarray, ...]]]:
    """Read triples and group consecutive same-size images into B×1×H×W stacks of at most ``batch_size``."""
    import numpy as np

    names: list[str] = []
    stack: list[tuple[np.ndarray, ...]] = []
    for triple in triples:
        arrays = read_triple(triple, ir_range, stretch)
        if stack and (arrays[0].shape != stack[0][0].shape or len(stack) == batch_size):
            yield names, tuple(np.stack(x)[:, None] for x in zip(*stack))
            names, stack = [], []
        names.append(triple.name)
        stack.append(arrays)
    if stack:
        yield names, tuple(np.stack(x)[:, None] for x in zip(*stack))


def evaluate_folders(
    triples: list[Triple], device: str = "cpu", batch_size: int = 4, progress: bool = False,
    ir_range: Optional[IrRange] = None, stretch: str = "none",
) -> dict[str, dict[str, float]]:
    """Per-image metrics ``{name: {metric: value}}`` for every triple, in order (``ir_range``: see
    :func:`read_ir_8bit`; ``stretch``: the fused image's scoring convention, see
    :func:`dfsfuse.metrics.stretch.apply_stretch`)."""
    from rich.progress import Progress

    from ..metrics import fusion_metrics_batch

    results: dict[str, dict[str, float]] = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(triples))
        for names, (f, a, b) in _batches(triples, batch_size, ir_range, stretch):
            values = fusion_metrics_batch(f, a, b, device=device)
            for i, name in enumerate(names):
                results[name] = {k: float(v[i]) for k, v in values.items()}
            bar.advance(task, len(names))
    return results


def _json_value(v: float):
    return None if math.isnan(v) else v


def results_json(per_image: Mapping[str, Mapping[str, float]], mean: Mapping[str, float]) -> str:
    """The JSON report; NaN (undefined, e.g. SCD) becomes ``null`` so the file stays strict JSON."""
    doc = {
        "per_image": {n: {k: _json_value(v) for k, v in m.items()} for n, m in per_image.items()},
        "mean": {k: _json_value(v) for k, v in mean.items()},
        "count": len(per_image),
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def results_csv(per_image: Mapping[str, Mapping[str, float]], mean: Mapping[str, float]) -> str:
    """The CSV report: one row per image, then a ``mean`` row; NaN is written as ``nan``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", *mean])
    for name, m in per_image.items():
        writer.writerow([name, *(repr(m[k]) for k in mean)])
    writer.writerow(["mean", *(repr(v) for v in mean.values())])
    return buf.getvalue()


def _print_table(per_image: Mapping[str, Mapping[str, float]], mean: Mapping[str, float], show_rows: bool) -> None:
    """Per-image rows (image × metric) with ``show_rows``, else one column of means (metric × mean)."""
    from rich.console import Console
    from rich.table import Table

    title = f"Fusion metrics ({len(per_image)} images)"
    if not show_rows:
        table = Table(title=title, min_width=len(title) + 4)
        table.add_column("metric")
        table.add_column("mean", justify="right")
        for name, value in mean.items():
            table.add_row(name, f"{value:.4f}")
        Console().print(table)
        return
    rows = [[image, *(f"{v:.4f}" for v in m.values())] for image, m in per_image.items()]
    rows.append(["mean", *(f"{v:.4f}" for v in mean.values())])
    header = ["image", *mean]
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows[:-1]:
        table.add_row(*row)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    # Never squeeze numbers into ellipses: a terminal too narrow for the table wraps its lines.
    needed = sum(max(len(r[i]) for r in [header, *rows]) + 3 for i in range(len(header))) + 1
    console = Console()
    Console(width=max(console.width, needed)).print(table)


def run(args: argparse.Namespace) -> int:
    """Evaluate the fused folder; print the table and write the requested reports."""
    from ..metrics import MetricAccumulator

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threads < 0:
        raise ValueError(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ..fuse import resolve_device

    device = str(resolve_device(args.device))
    triples = find_triples(args.fused, args.ir, args.vi)
    per_image = evaluate_folders(triples, device=device, batch_size=args.batch_size,
                                 progress=len(triples) >= LARGE_SET, ir_range=args.ir_range, stretch=args.stretch)
    acc = MetricAccumulator()
    for values in per_image.values():
        acc.update(values)
    mean = acc.mean()
    _print_table(per_image, mean, show_rows=args.per_image)
    if args.json:
        write_text_atomic(args.json, results_json(per_image, mean))
    if args.csv:
        write_text_atomic(args.csv, results_csv(per_image, mean))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    from ..data.irrange import IR_RANGE_HELP, ir_range_arg
    parser = subparsers.add_parser(
        "eval",
        help="standard fusion metrics (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM, CC, MSE, PSNR)",
        description=(
            "Score fused images against their IR and VIS sources with the metrics published tables use. "
            "Files are matched by name stem; all three are read as 8-bit BT.601 luma."
        ),
    )
    parser.add_argument("--fused", type=Path, required=True, help="folder of fused images")
    parser.add_argument("--ir", type=Path, required=True, help="folder of infrared images")
    parser.add_argument("--vi", type=Path, required=True, help="folder of visible images")
    parser.add_argument("--json", type=Path, help="write per-image values and means to this JSON file")
    parser.add_argument("--csv", type=Path, help="write per-image values and means to this CSV file")
    parser.add_argument("--per-image", action="store_true", help="print one table row per image, not just the mean")
    parser.add_argument("--device", default="cpu", help="torch device for the metrics (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--batch-size", type=int, default=4, help="same-size images scored together (default 4)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's; 1 is faster on a busy machine)"
    )
    parser.add_argument("--ir-range", type=ir_range_arg, default=None, metavar="SPEC",
                        help=f"convert 16-bit/float IR to 8 bits before scoring ({IR_RANGE_HELP}; use the SPEC given "
                             "to `dfsfuse fuse`); without it such IR is refused. 8-bit IR is always read as published")
    parser.add_argument("--stretch", choices=STRETCH_MODES, default="none",
                        help="scoring convention for the fused images: none (as saved, default) or minmax (each "
                             "stretched to [0, 255] first, as many papers' test scripts do; raises EN/SD/SF/AG)")
    parser.set_defaults(func=run)
