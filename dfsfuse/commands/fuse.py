"""``dfsfuse fuse``: fuse folders of IR/VIS pairs with a trained student (colour kept).

Exit code 0 when every pair fused (or was already there), 1 when some pairs failed (each
named on stderr), 2 when nothing could start (no model, missing folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cpus import available_cpus


def default_workers() -> int:
    """``--workers`` default: the CPUs this process may use, at most 4."""
    return max(1, min(4, available_cpus()))


def run(args: argparse.Namespace) -> int:
    """Load the model, fuse the folders, print one line per failure and a summary."""
    from rich.console import Console

    from ..data.errors import DatasetError
    from ..fuse import FuseOptions, fuse_folder, load_fusion_model, resolve_device

    for flag, folder in (("--ir", args.ir), ("--vi", args.vi)):  # fail fast, before loading a model
        if not folder.is_dir():
            raise DatasetError(f"{folder}: {flag} folder not found")
    options = FuseOptions(gray=args.gray, batch_size=args.batch_size, overwrite=args.overwrite, ir_range=args.ir_range,
                          workers=args.workers, png_level=args.png_level)
    device = resolve_device(args.device)
    model = load_fusion_model(args.model, device)
    err = Console(stderr=True, highlight=False)
    summary = fuse_folder(model, args.ir, args.vi, args.out, options, console=err)
    print(f"{summary.line()} → {args.out}")
    if summary.failed:
        err.print(f"{len(summary.failed)} pair(s) failed; see the error lines above", soft_wrap=True, markup=False)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fuse`` subcommand."""
    from ..data.irrange import IR_RANGE_HELP, ir_range_arg
    parser = subparsers.add_parser(
        "fuse",
        help="fuse folders of IR/VIS pairs with a trained student",
        description=(
            "Fuse every infrared/visible pair (matched by file name stem) into OUT/<stem>.png. "
            "The visible luminance is fused with IR and the visible colour put back (--gray: luminance only). "
            "Bad pairs are reported one per line; the others still fuse (exit code 1 if any failed)."
        ),
    )
    parser.add_argument("--model", default=None,
                        help="model folder (from `dfsfuse export`) or hub id; default: the student shipped with dfsfuse")
    parser.add_argument("--ir", type=Path, required=True, help="folder of infrared images")
    parser.add_argument("--vi", type=Path, required=True, help="folder of visible images (colour or grey)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--gray", action="store_true", help="write the fused luminance only, not colour")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=4, help="equal-size pairs fused together (default 4)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    parser.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                        help="decoding processes and encoding/writing threads beside the model "
                             f"(default {default_workers()}: the CPU count, at most 4; 0: all in one thread)")
    parser.add_argument("--png-level", type=int, default=1, metavar="0-9",
                        help="PNG compression level (default 1: several times faster to encode than 6, "
                             "files ~10%% larger; the pixels are identical)")
    parser.add_argument("--ir-range", type=ir_range_arg, default="auto", metavar="SPEC",
                        help=f"how 16-bit/float IR maps to [0, 1]: {IR_RANGE_HELP} (default auto: 8-bit IR as "
                             "value/255, deeper IR clipped to its 1st-99th percentiles and stretched; an explicit "
                             "SPEC applies to 8-bit IR too)")
    parser.set_defaults(func=run)
