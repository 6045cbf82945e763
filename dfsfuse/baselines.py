"""Trivial fusion baselines: the floor every learned fusion method must beat.

``avg``, ``max``, ``ir`` and ``vis`` of IR/VIS grey images in [0, 255], returned as 8-bit
images exactly as they are written to disk and evaluated (``avg`` rounds half to even).
"""

from __future__ import annotations

import numpy as np

from .options import BASELINE_METHODS

__all__ = ["BASELINE_METHODS", "baseline_fusion"]


def baseline_fusion(ir: np.ndarray, vis: np.ndarray, method: str) -> np.ndarray:
    """Fuse two H×W grey images in [0, 255] with a fixed rule; returns H×W uint8.

    ``avg``: ``round_half_even((A + B) / 2)``; ``max``: pixelwise maximum; ``ir`` / ``vis``:
    a copy of that input (rounded). Raises ``ValueError`` for an unknown method or
    mismatched shapes.
    """
    if method not in BASELINE_METHODS:
        raise ValueError(f"unknown baseline method {method!r}; choose from {', '.join(BASELINE_METHODS)}")
    ir = np.asarray(ir)
    vis = np.asarray(vis)
    if ir.ndim != 2 or ir.shape != vis.shape:
        raise ValueError(f"ir and vis must be H×W images of the same size; got {ir.shape} and {vis.shape}")
    a = ir.astype(np.float64)
    b = vis.astype(np.float64)
    if method == "avg":
        fused = (a + b) / 2
    elif method == "max":
        fused = np.maximum(a, b)
    elif method == "ir":
        fused = a
    else:
        fused = b
    return np.clip(np.round(fused), 0, 255).astype(np.uint8)
