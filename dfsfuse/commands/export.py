"""``dfsfuse export``: a training run or checkpoint → a folder ready to upload to a model hub.

The folder holds ``model.safetensors``, ``config.json``, a ``README.md`` model card and
``sample.png`` (plus ``model.onnx`` with ``--onnx``); ``--push REPO_ID`` uploads it to the
Hugging Face Hub.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..options import HEAD_CONVERSIONS


def run(args: argparse.Namespace) -> int:
    """Export the student, list what was written, and push it when asked."""
    from rich.console import Console

    from ..fuse import resolve_device
    from ..publish import export_student, push_to_hub

    if args.onnx:
        from ..onnx import require_onnx

        require_onnx()
    console = Console(highlight=False)
    device = resolve_device(args.device) if args.latency_runs > 0 else "cpu"
    result = export_student(args.source, args.out, onnx=args.onnx, latency_runs=args.latency_runs, device=device,
                            name=args.name, repo_id=args.push, overwrite=args.overwrite, head=args.head)
    console.print(f"exported {result.label} → {result.folder}", soft_wrap=True, markup=False)
    for name in result.files:
        size = (result.folder / name).stat().st_size
        console.print(f"  {name:<20} {size / 1024:10.1f} KiB", markup=False)
    if result.onnx_max_error is not None:
        console.print(f"ONNX check: max |onnxruntime − PyTorch| = {result.onnx_max_error:.2e} at 61×77", markup=False)
    if args.push:
        url = push_to_hub(result.folder, args.push, private=args.private)
        console.print(f"pushed to {args.push}: {url}", soft_wrap=True, markup=False)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="turn a training run or checkpoint into a hub-ready model folder (card, sample, ONNX)",
        description=(
            "Export the student of a training run folder (its student/ weights and metrics.json), of a "
            "checkpoint (RUN/checkpoints/student/step_N) or of a model folder into OUT: model.safetensors, "
            "config.json, README.md model card, sample.png, and model.onnx with --onnx. "
            "Load it with dfsfuse.from_pretrained(OUT) or `dfsfuse fuse --model OUT`."
        ),
    )
    parser.add_argument("source", type=Path, metavar="RUN_OR_CHECKPOINT",
                        help="training run folder, student checkpoint folder, or model folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (refused if it exists, unless --overwrite)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (dynamic batch, height, width)")
    parser.add_argument("--push", metavar="REPO_ID", default=None,
                        help="upload the folder to this Hugging Face Hub model repo (created if missing)")
    parser.add_argument("--private", action="store_true", help="with --push: create the repo as private")
    parser.add_argument("--latency-runs", type=int, default=0,
                        help="measure latency now with N runs on --device (default 0: reuse the run's measurement)")
    parser.add_argument("--device", default=None, help="device for --latency-runs (default: cuda if available, else cpu)")
    parser.add_argument("--name", default=None, help="title of the model card (default: dfsfuse <architecture>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing exported model folder at --out")
    parser.add_argument("--head", default=None, choices=sorted({b for _, b in HEAD_CONVERSIONS}),
                        help="export with this output head instead of the trained one: region-gain drops a "
                             "region-contrast student's free residual r (the run's metrics then stay out of the card)")
    parser.set_defaults(func=run)
