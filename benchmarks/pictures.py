"""Picture grid: IR | VIS | rules | teacher | student on day and night scenes, each followed by a
zoomed crop of the window where the student's fusion (or ``--focus``'s) differs most from ``max``.

    python benchmarks/pictures.py                                   # shipped models, bundled MSRS pairs
    python benchmarks/pictures.py --teacher runs/x/teacher --student runs/x/student --pairs DIR
    python benchmarks/pictures.py --teacher '' --model semantic=dfsfuse/assets/semantic/student \
        --rules max,region-contrast --focus semantic --png benchmarks/results/pictures_semantic.png

By default the pairs are the four bundled MSRS test pairs (two day ``D``, two night ``N``; MIT
licensed, so the picture may be committed) and the models are the shipped ones
(``dfsfuse/assets/{teacher,student}``). Every fusion is rounded to 8 bits and given the
visible image's chroma back, exactly as ``dfsfuse fuse`` writes it. Writes the PNG and a JSON
record of the pairs, crop windows and the mean absolute difference to ``max`` (grey levels)
of every method in each crop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = HERE / "results"
ASSETS = HERE.parent / "dfsfuse" / "assets"


def crop_window(diff: np.ndarray, height: int, width: int) -> tuple:
    """Top-left (y, x) of the ``height``×``width`` window with the largest sum of ``diff``."""
    c = np.pad(np.cumsum(np.cumsum(diff, 0), 1), ((1, 0), (1, 0)))
    sums = c[height:, width:] - c[:-height, width:] - c[height:, :-width] + c[:-height, :-width]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Fuse, pick the crops, write the picture and its JSON record."""
    from dfsfuse.atomic import write_json_atomic
    from dfsfuse.baselines import baseline_fusion
    from dfsfuse.data import PairedImages, bundled_msrs_root
    from dfsfuse.data.io import write_image
    from dfsfuse.export import from_pretrained
    from dfsfuse.options import BASELINE_METHODS
    from dfsfuse.semantic_bench import parse_named
    from dfsfuse.train.evaluate import colour_strip, comparison_image

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Strs, not Paths: Path("") is ".", so "--teacher ''" could not mean "no teacher".
    p.add_argument("--teacher", default=str(ASSETS / "teacher"), help="exported teacher folder ('' to skip)")
    p.add_argument("--student", default=str(ASSETS / "student"), help="exported student folder")
    p.add_argument("--pairs", type=Path, default=None, help="folder of ir/ + vi/ pairs (default: bundled MSRS test)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="also this exported fusion model as column NAME (repeatable)")
    p.add_argument("--focus", default="student",
                   help="the column whose differences to max choose the crops (default student)")
    p.add_argument("--rules", default="max,region-max", help="rule columns, comma-separated")
    p.add_argument("--crop", type=float, default=0.25, help="crop size as a fraction of the image side")
    p.add_argument("--width", type=int, default=1536, help="picture width in pixels (rows are scaled to it)")
    p.add_argument("--png", type=Path, default=RESULTS / "pictures.png")
    args = p.parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    bad = [r for r in rules if r not in BASELINE_METHODS]
    if bad:
        p.error(f"unknown rule {bad[0]!r}; choose from {', '.join(BASELINE_METHODS)}")
    if not 0 < args.crop <= 1:
        p.error("--crop must be in (0, 1]")
    if args.width < 64:
        p.error("--width must be at least 64")
    folders: Dict[str, Path] = {name: Path(folder) for name, folder in (("teacher", args.teacher),
                                                                         ("student", args.student)) if folder}
    if "student" not in folders:
        p.error("--student is required")
    try:
        extra = parse_named(args.model, "--model")
    except ValueError as exc:
        p.error(str(exc))
    for name, folder in extra.items():
        if name in folders or name in ("ir", "vis", *rules):
            p.error(f"--model {name}={folder}: the column name {name!r} is already used")
    folders.update(extra)
    models: Dict[str, torch.nn.Module] = {}
    for name, folder in folders.items():
        if not (folder / "config.json").is_file():
            p.error(f"{folder}: no exported model (config.json missing)")
        models[name] = from_pretrained(folder).eval()
    if args.focus not in models:
        p.error(f"--focus {args.focus!r}: not a model column ({', '.join(models)})")
    pairs = PairedImages(args.pairs) if args.pairs else PairedImages(bundled_msrs_root(), split="test")
    columns = ["ir", "vis", *rules, *models]
    strips: Dict[str, np.ndarray] = {}
    record: List[dict] = []
    for sample in pairs:
        ir8 = np.round(sample["ir"][0].numpy() * 255).astype(np.float32)
        vis8 = np.round(sample["vis_y"][0].numpy() * 255).astype(np.float32)
        panels = {"ir": ir8, "vis": vis8}
        for rule in rules:
            panels[rule] = baseline_fusion(ir8, vis8, rule).astype(np.float32)
        with torch.inference_mode():
            for name, model in models.items():
                fused = model(sample["ir"][None].float(), sample["vis_y"][None].float()).fused[0, 0]
                panels[name] = torch.round(fused.clamp(0, 1) * 255).numpy().astype(np.float32)
        h, w = ir8.shape
        ch, cw = max(8, int(h * args.crop)), max(8, int(w * args.crop))
        reference = np.maximum(ir8, vis8)
        y, x = crop_window(np.abs(panels[args.focus] - reference), ch, cw)
        name = sample["name"]
        strips[name] = colour_strip([panels[c] for c in columns], sample["vis_cbcr"])
        crop_cbcr = sample["vis_cbcr"][:, y:y + ch, x:x + cw]
        strips[f"{name} crop"] = colour_strip([panels[c][y:y + ch, x:x + cw] for c in columns], crop_cbcr)
        record.append({"pair": name, "crop": {"y": y, "x": x, "height": ch, "width": cw},
                       "mean_abs_diff_to_max_in_crop": {c: round(float(np.abs(panels[c] - reference)[y:y + ch, x:x + cw].mean()), 2)
                                                        for c in columns[2:]}})
    grid = comparison_image(strips, columns)
    if grid.shape[1] != args.width:
        from PIL import Image

        height = round(grid.shape[0] * args.width / grid.shape[1])
        grid = np.asarray(Image.fromarray(grid).resize((args.width, height), Image.LANCZOS))
    write_image(args.png, grid)
    write_json_atomic(args.png.with_suffix(".json"), {
        "pairs": str(pairs.root), "columns": columns,
        "models": {n: str(f) for n, f in folders.items()}, "focus": args.focus, "crops": record})
    print(f"wrote {args.png} and {args.png.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
