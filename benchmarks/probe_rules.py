"""Probe fusion rules for the semantic benchmark: write their fusions of labelled folders for ``--fused``.

Which *look* of a fusion helps a segmenter? These rules are questions, not methods; none of them
is a baseline of :mod:`dfsfuse.baselines` (the session-20 log in docs/semantic_benchmark_log.md
says what each scored). Each one keeps IR's *surroundings* of a warm target, not only the target:

- ``irbase4`` / ``irbase2``: a Laplacian pyramid of 4 / 2 levels, the low-pass base from IR and
  every band-pass level from the source with the larger magnitude — an image shaded like IR
  (warm people on cooler ground) with the visible image's edges and textures;
- ``darkcold`` / ``darkcold05``: ``region-max − k·relu(G₈ * vis − G₈ * ir)`` with k = 1 / 0.5:
  what is bright in VIS but cold in IR (sunlit road, walls, lamps) is darkened toward IR;
- ``rc-darkcold05``: the ``region-contrast`` rule with ``darkcold05``'s darkening;
- ``darkhalo``: ``darkcold`` only near warm targets, weighted by
  ``clip(G₁₆ * relu(G₂ * ir − G₈ * ir) / 12, 0, 1)``;
- ``gamma-rc`` / ``gamma-max``: the ``region-contrast`` rule / pixel ``max`` on a *brightened* visible
  image (:func:`dfsfuse.baselines.brighten_dark`: ``255·(vis/255)^γ``, ``γ = clip(ln 0.4 / ln m, 0.35, 1)``,
  ``m`` the image's mean visible intensity in [0, 1]; a night image, mean ≈ 0.1, gets γ ≈ 0.4, a day
  image is left alone): illumination-aware fusion (PIAFusion's idea) in its simplest form. Does a
  segmenter learn MSRS's dark night scenes better when the visible half is not dark? (``gamma-rc``
  did, and became the ``gamma-contrast`` baseline.)

G_σ: Gaussian blur of σ pixels, edge-replicated borders; images in [0, 255], fusions rounded to
8 bits. Like the label oracle, the images are derived from MSRS pairs whose licence is unstated:
write them outside the repository::

    python benchmarks/probe_rules.py --rules irbase2 darkcold --out /tmp/rules
    dfsfuse segbench --kinds --fused irbase2=/tmp/rules/irbase2 --fused darkcold=/tmp/rules/darkcold --seeds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dfsfuse.atomic import atomic_path  # noqa: E402
from dfsfuse.baselines import (  # noqa: E402
    _separable_blur,
    brighten_dark,
    gamma_contrast_fusion,
    gaussian_taps,
    laplacian_fusion,
    region_contrast_fusion,
    region_max_fusion,
    warm_contrast_map,
)
from dfsfuse.data import PairedImages  # noqa: E402
from dfsfuse.data.errors import DatasetError  # noqa: E402
from dfsfuse.semantic_bench import default_data_root  # noqa: E402

Rule = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return _separable_blur(x, gaussian_taps(sigma), "edge")


def ir_base_fusion(ir: np.ndarray, vis: np.ndarray, levels: int) -> np.ndarray:
    """Laplacian pyramid of ``levels`` levels: IR's low-pass base, the larger-magnitude band-pass
    coefficient of the two sources at every level (float H×W): the ``laplacian`` baseline with
    IR's base instead of the larger one."""
    return laplacian_fusion(ir, vis, levels, base=lambda ir_base, vis_base: ir_base)


def cold_brightness(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """``relu(G₈ * vis − G₈ * ir)``: how much brighter the visible image is than IR, locally."""
    return np.maximum(_blur(np.asarray(vis, np.float64), 8.0) - _blur(np.asarray(ir, np.float64), 8.0), 0.0)


def warm_halo(ir: np.ndarray, scale: float = 12.0) -> np.ndarray:
    """``clip(G₁₆ * relu(G₂ * ir − G₈ * ir) / scale, 0, 1)``: 1 near warm targets, 0 far from them."""
    return np.clip(_blur(warm_contrast_map(ir), 16.0) / scale, 0.0, 1.0)


RULES: Dict[str, Rule] = {
    "irbase4": lambda ir, vis: ir_base_fusion(ir, vis, 4),
    "irbase2": lambda ir, vis: ir_base_fusion(ir, vis, 2),
    "darkcold": lambda ir, vis: region_max_fusion(ir, vis) - cold_brightness(ir, vis),
    "darkcold05": lambda ir, vis: region_max_fusion(ir, vis) - 0.5 * cold_brightness(ir, vis),
    "rc-darkcold05": lambda ir, vis: region_contrast_fusion(ir, vis) - 0.5 * cold_brightness(ir, vis),
    "darkhalo": lambda ir, vis: region_max_fusion(ir, vis) - warm_halo(ir) * cold_brightness(ir, vis),
    "gamma-rc": gamma_contrast_fusion,  # = the gamma-contrast baseline, kept under the name session 24 measured
    "gamma-max": lambda ir, vis: np.maximum(ir, brighten_dark(vis)),
}


def probe_fusion(ir: np.ndarray, vis: np.ndarray, rule: str) -> np.ndarray:
    """``rule`` applied to two H×W grey images in [0, 255], rounded to uint8."""
    return np.clip(np.round(RULES[rule](np.asarray(ir, np.float64), np.asarray(vis, np.float64))), 0, 255).astype(np.uint8)


def write_folder(src: Path, out: Path, rule: str) -> int:
    """Write ``rule``'s fusion of every pair of ``src`` to ``out/<stem>.png``; the pair count."""
    pairs = PairedImages(src)
    out.mkdir(parents=True, exist_ok=True)
    for sample in pairs:
        ir, vis = (sample[key][0].numpy().astype(np.float64) * 255.0 for key in ("ir", "vis_y"))
        fused = probe_fusion(ir, vis, rule)
        with atomic_path(out / f"{sample['name']}.png", suffix=".png") as tmp:
            Image.fromarray(fused).save(tmp, format="PNG")
    return len(pairs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write every requested rule's fusion of every folder to ``--out/<rule>/<folder name>``."""
    default_data = default_data_root() / "msrs"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", nargs="+", required=True, choices=sorted(RULES), help="rules to write")
    parser.add_argument("--folders", nargs="+", type=Path, default=[default_data / "train", default_data / "val"],
                        help="pair folders (ir/, vi/); default msrs/train and msrs/val")
    parser.add_argument("--out", type=Path, required=True, help="output folder: out/<rule>/<folder name>/<stem>.png")
    args = parser.parse_args(argv)
    try:
        for rule in args.rules:
            for folder in args.folders:
                n = write_folder(folder, args.out / rule / folder.name, rule)
                print(f"{rule}: {folder}: {n} pairs → {args.out / rule / folder.name}")
    except (DatasetError, FileNotFoundError) as exc:
        print(f"probe_rules.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
