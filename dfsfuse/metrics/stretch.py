"""Scoring conventions for the fused image: as saved (the honest default) or min–max stretched.

Many papers' test scripts stretch every fused image to its own [min, max] → [0, 255] before
scoring, which raises EN, SD, SF and AG (and moves VIF/Qabf) without changing the method. dfsfuse
scores images as they are written to disk; ``stretch="minmax"`` reproduces the stretched tables.
Every results table says which convention it used.
"""

from __future__ import annotations

import numpy as np

from ..options import STRETCH_MODES

__all__ = ["STRETCH_MODES", "apply_stretch"]


def apply_stretch(fused: np.ndarray, mode: str = "none") -> np.ndarray:
    """``fused`` (grey levels in [0, 255]) under a scoring convention, as float32.

    ``"none"``: unchanged. ``"minmax"``: ``round_half_even(255 · (F − min F) / (max F − min F))``
    per image (the stretched image is re-quantised to 8 bits, as the scripts that save it do);
    a constant image stays as it is.
    """
    if mode not in STRETCH_MODES:
        raise ValueError(f"unknown stretch {mode!r}; choose from {', '.join(STRETCH_MODES)}")
    f = np.asarray(fused, dtype=np.float64)
    if mode == "none":
        return f.astype(np.float32)
    lo, hi = f.min(), f.max()
    if hi <= lo:
        return f.astype(np.float32)
    return np.round(255.0 * (f - lo) / (hi - lo)).astype(np.float32)
