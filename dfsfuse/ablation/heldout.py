"""Held-out pairs and fidelity: the held-out sets and their pairs with the teacher's 8-bit fusion,
a student's fidelity to the teacher (PSNR, SSIM) and the steps to a fraction of its final gain."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["PSNR_CAP_DB", "HeldoutPair", "open_eval_sets", "load_heldout", "psnr_ssim", "fidelity",
           "steps_to_fraction"]


PSNR_CAP_DB = 100.0


@dataclass
class HeldoutPair:
    """One held-out pair as evaluate_fusion reads it: 8-bit grey levels (float32 H×W) and the teacher's fusion."""

    dataset: str
    name: str
    ir: np.ndarray
    vis: np.ndarray
    teacher: np.ndarray


def open_eval_sets(eval_sets: Dict[str, str]):
    """``{name: root}`` (``root`` may be ``bundled:msrs|test`` for a split) → ``{name: PairedImages}``;
    missing folders are skipped with a warning."""
    from ..train.config import DatasetSpec, EvalConfig
    from ..train.data import build_eval_sets

    specs = []
    for name, root in eval_sets.items():
        root, _, split = root.partition("|")
        specs.append(DatasetSpec(root, split or None, name, optional=True))
    return build_eval_sets(EvalConfig(sets=specs))


def load_heldout(datasets: Dict[str, Any], teacher: nn.Module, max_images: int) -> List[HeldoutPair]:
    """The first ``max_images`` pairs of every set (0 = all), each with the teacher's 8-bit fusion."""
    from ..train.evaluate import fuse_gray

    pairs = []
    teacher.eval()
    for name, ds in datasets.items():
        n = min(len(ds), max_images) if max_images else len(ds)
        for i in range(n):
            s = ds[i]
            ir = np.round(s["ir"][0].numpy() * 255.0).astype(np.float32)
            vis = np.round(s["vis_y"][0].numpy() * 255.0).astype(np.float32)
            pairs.append(HeldoutPair(name, s["name"], ir, vis, fuse_gray(teacher, ir, vis)))
    return pairs


def psnr_ssim(a: np.ndarray, b: np.ndarray) -> Tuple[float, float]:
    """PSNR (dB, peak 1, capped at 100 dB) and mean SSIM (:func:`dfsfuse.losses.ssim_map`, data range 1)
    of two H×W images given in grey levels [0, 255]."""
    from ..losses import ssim_map

    x = torch.from_numpy(np.asarray(a, dtype=np.float32) / 255.0)[None, None]
    y = torch.from_numpy(np.asarray(b, dtype=np.float32) / 255.0)[None, None]
    mse = float(((x.double() - y.double()) ** 2).mean())
    psnr = PSNR_CAP_DB if mse < 1e-10 else min(PSNR_CAP_DB, 10.0 * math.log10(1.0 / mse))
    return psnr, float(ssim_map(x, y, data_range=1.0).mean())


def fidelity(model: nn.Module, pairs: Sequence[HeldoutPair]) -> Tuple[float, float]:
    """Mean PSNR and SSIM of ``model``'s 8-bit fusion against the teacher's on ``pairs``."""
    from ..train.evaluate import fuse_gray

    model.eval()
    values = [psnr_ssim(fuse_gray(model, p.ir, p.vis), p.teacher) for p in pairs]
    return float(np.mean([v[0] for v in values])), float(np.mean([v[1] for v in values]))


def steps_to_fraction(curve: Sequence[Tuple[int, float]], fraction: float = 0.95) -> float:
    """The first step from which the curve stays at or above ``c0 + fraction·(c_final − c0)``.

    ``curve`` is ``[(step, value), ...]`` in step order, starting at step 0. A curve that ends
    at or below its start has no gain to reach: NaN (stored as null in the JSON).
    """
    if not curve:
        raise ValueError("empty curve")
    start, final = curve[0][1], curve[-1][1]
    if not final > start:
        return float("nan")
    threshold = start + fraction * (final - start)
    answer = curve[-1][0]
    for step, value in reversed(curve):
        if value < threshold:
            break
        answer = step
    return float(answer)
