"""``dfsfuse baseline``: write trivial fusions (avg, max, ir, vis) of a folder of IR/VIS pairs.

The outputs are 8-bit grey PNGs named by stem, ready for ``dfsfuse eval``: the floor any learned
fusion method has to beat.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.errors import DatasetError
from ..options import BASELINE_METHODS

LARGE_SET = 10  # show a progress bar from this many pairs on


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt image ({exc})") from None


def run(args: argparse.Namespace) -> int:
    """Fuse every IR/VIS pair (matched by stem, every file needs its partner) with the chosen rule
    and write ``OUT/<stem>.png``."""
    from rich.console import Console
    from rich.progress import track

    from ..baselines import baseline_fusion
    from ..data.io import read_gray, write_image
    from ..data.pairs import match_pairs

    pairs = match_pairs(args.ir, args.vi)
    # Check every pair before writing anything, so bad input leaves no partial output.
    for pair in pairs:
        (iw, ih), (w, h) = _image_size(pair.ir), _image_size(pair.vis)
        if (iw, ih) != (w, h):
            raise DatasetError(f"{pair.vis}: size {w}x{h} does not match IR {pair.ir} ({iw}x{ih})")
    out = Path(args.out)
    for pair in track(pairs, description=f"{args.method} fusion", disable=len(pairs) < LARGE_SET, transient=True):
        fused = baseline_fusion(read_gray(pair.ir), read_gray(pair.vis), args.method)
        write_image(out / f"{pair.name}.png", fused)
    Console().print(f"wrote {len(pairs)} {args.method} fusions to {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``baseline`` subcommand."""
    parser = subparsers.add_parser(
        "baseline",
        help="trivial fusions (avg, max, ir, vis) of IR/VIS folders, the floor to beat",
        description="Fuse IR/VIS pairs (matched by name stem) with a fixed rule and write 8-bit grey PNGs.",
    )
    parser.add_argument("--method", choices=BASELINE_METHODS, default="avg", help="fusion rule (default avg)")
    parser.add_argument("--ir", type=Path, required=True, help="folder of infrared images")
    parser.add_argument("--vi", type=Path, required=True, help="folder of visible images")
    parser.add_argument("--out", type=Path, required=True, help="output folder for <stem>.png")
    parser.set_defaults(func=run)
