"""Where does a fusion add brightness? Its mean offset from ``region-max`` per labelled class.

A fusion that helps a segmenter find people without costing the fusion metrics has to brighten
warm objects (people, cars) and leave the rest at a structure-keeping rule. This scores that
directly on labelled pairs (default ``../shared/data/msrs/val``, never trained on): for every
fusion — exported fusion models (``--model NAME=DIR``, e.g. the shipped teacher and student) and
rules (``--rules``, any ``dfsfuse baseline`` method) — the mean of ``F − region-max`` (grey levels,
fusions rounded to 8 bits as saved, ``region-max`` unrounded) over the pixels of each class, and
the PSNR of ``F`` to ``region-max``, and (``--vif``) each fusion's VIF, what the contrast costs.
``--without-residual NAME`` adds ``NAME-r0``: that ``region-contrast`` model with its free residual
``r`` dropped (``dfsfuse.models.convert.convert_head(model, "region-gain")``), to see which head
term adds what::

    python benchmarks/class_contrast.py --rules region-contrast ir-contrast \\
        --model student=dfsfuse/assets/student --model semantic=runs/msrs_semantic_cpu/student

Writes ``benchmarks/results/class_contrast.json`` (``--json``): ``{"settings", "offset": {fusion:
{class: grey levels}}, "psnr_to_region_max": {fusion: dB}, "vif": {fusion: mean}}`` (``vif`` with
``--vif``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dfsfuse.atomic import atomic_path  # noqa: E402
from dfsfuse.baselines import baseline_fusion, region_max_fusion  # noqa: E402
from dfsfuse.data import CLASS_NAMES, PairedImages  # noqa: E402
from dfsfuse.data.errors import DatasetError  # noqa: E402
from dfsfuse.data.shared import shared_data_root  # noqa: E402
from dfsfuse.metrics import fusion_metrics  # noqa: E402

RESULTS = HERE / "results"


class OffsetAccumulator:
    """Running per-class sums of ``F − reference`` and the squared error, over many images."""

    def __init__(self, num_classes: int = len(CLASS_NAMES)) -> None:
        self.sums = np.zeros(num_classes)
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.psnr: List[float] = []

    def add(self, fused: np.ndarray, reference: np.ndarray, label: np.ndarray) -> None:
        """One image: ``fused`` and ``reference`` H×W in [0, 255], ``label`` H×W class indices."""
        diff = np.asarray(fused, np.float64) - np.asarray(reference, np.float64)
        n = len(self.sums)
        self.sums += np.bincount(label.ravel(), weights=diff.ravel(), minlength=n)[:n]
        self.counts += np.bincount(label.ravel(), minlength=n)[:n]
        mse = float(np.mean(diff * diff))
        self.psnr.append(100.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))

    def offsets(self) -> Dict[str, Optional[float]]:
        """Mean offset per class name (``None`` for a class with no pixel)."""
        return {name: (float(s / c) if c else None) for name, s, c in zip(CLASS_NAMES, self.sums, self.counts)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse options, score every fusion, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="labelled folder (ir/, vi/, Segmentation_labels/); default msrs/val")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="exported fusion model (repeatable)")
    p.add_argument("--rules", nargs="*", default=["region-contrast"], help="baseline rules (default region-contrast)")
    p.add_argument("--without-residual", action="append", default=[], metavar="NAME",
                   help="also the --model NAME (region-contrast head) with its residual r zeroed, as NAME-r0")
    p.add_argument("--vif", action="store_true", help="also each fusion's mean VIF (slower)")
    p.add_argument("--max-images", type=int, default=0, help="first N pairs only (0 = all)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--json", type=Path, default=RESULTS / "class_contrast.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from dfsfuse.models.convert import convert_head
        from dfsfuse.semantic_bench import load_fusion_model, parse_named

        data = args.data or shared_data_root() / "msrs" / "val"
        pairs = PairedImages(data, labels=True)
        if not pairs.has_labels:
            raise DatasetError(f"{data}: no Segmentation_labels/ folder")
        model_dirs = parse_named(args.model, "--model")
        models = {name: load_fusion_model(path).eval() for name, path in model_dirs.items()}
        for name in args.without_residual:
            if name not in model_dirs:
                raise ValueError(f"--without-residual {name}: no --model of that name")
            models[f"{name}-r0"] = convert_head(models[name], "region-gain")
        for rule in args.rules:
            baseline_fusion(np.zeros((2, 2)), np.zeros((2, 2)), rule)  # unknown rule: ValueError now, not later
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"class_contrast.py: error: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    acc = {name: OffsetAccumulator() for name in [*args.rules, *models]}
    vifs: Dict[str, List[float]] = {name: [] for name in acc}
    count = len(pairs) if args.max_images <= 0 else min(args.max_images, len(pairs))
    for i in range(count):
        sample = pairs[i]
        ir, vis = sample["ir"][0].numpy() * 255.0, sample["vis_y"][0].numpy() * 255.0
        label = sample["label"].numpy().astype(np.int64)
        reference = region_max_fusion(ir, vis)
        fusions = {rule: baseline_fusion(ir, vis, rule) for rule in args.rules}
        with torch.inference_mode():
            for name, model in models.items():
                fused = model(sample["ir"][None], sample["vis_y"][None]).fused[0, 0].clamp(0, 1).numpy()
                fusions[name] = np.round(fused * 255.0)
        for name, fused in fusions.items():
            acc[name].add(fused, reference, label)
            if args.vif:
                vifs[name].append(float(fusion_metrics(fused, ir, vis, metrics=("VIF",))["VIF"]))
    record = {
        "settings": {"data": str(data), "pairs": count, "models": {n: str(p) for n, p in model_dirs.items()},
                     "rules": list(args.rules), "reference": "region-max (unrounded)", "units": "grey levels (0-255)",
                     "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                     "wall_time_s": round(time.time() - started, 1)},
        "offset": {name: a.offsets() for name, a in acc.items()},
        "psnr_to_region_max": {name: float(np.mean(a.psnr)) for name, a in acc.items()},
    }
    if args.vif:
        record["vif"] = {name: float(np.mean(v)) for name, v in vifs.items()}
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mean F − region-max per class (grey levels), {count} pairs of {data}")
    table.add_column("fusion")
    table.add_column("PSNR to region-max", justify="right")
    if args.vif:
        table.add_column("VIF", justify="right")
    for c in CLASS_NAMES:
        table.add_column(c, justify="right")
    for name, offsets in record["offset"].items():
        table.add_row(name, f"{record['psnr_to_region_max'][name]:.1f}",
                      *([f"{record['vif'][name]:.3f}"] if args.vif else []),
                      *("-" if offsets[c] is None else f"{offsets[c]:+.2f}" for c in CLASS_NAMES))
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.json, suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
