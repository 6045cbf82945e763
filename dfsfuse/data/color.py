"""RGB ↔ YCbCr (BT.601 full range, the JPEG convention) in torch.

The network fuses the luminance Y of the visible image with IR; Cb/Cr are carried around the
network and put back to colour the result. Tensors are B×3×H×W (or 3×H×W) in [0, 1]; chroma
is offset by 0.5 so that grey is Cb = Cr = 0.5.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows: Y, Cb, Cr. Shared with the numpy reader in ``io.py``.
RGB_TO_YCBCR_ROWS = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_RGB_TO_YCBCR = torch.tensor(RGB_TO_YCBCR_ROWS, dtype=torch.float64)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)


def _apply(matrix: Tensor, x: Tensor, channel_dim: int) -> Tensor:
    m = matrix.to(device=x.device, dtype=x.dtype)
    return torch.movedim(torch.tensordot(torch.movedim(x, channel_dim, -1), m.T, dims=1), -1, channel_dim)


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """RGB in [0, 1] (channels at dim -3) → YCbCr with Cb/Cr offset by 0.5."""
    if rgb.shape[-3] != 3:
        raise ValueError(f"expected 3 channels at dim -3, got shape {tuple(rgb.shape)}")
    ycc = _apply(_RGB_TO_YCBCR, rgb, -3)
    offset = torch.tensor([0.0, 0.5, 0.5], dtype=ycc.dtype, device=ycc.device).view(3, 1, 1)
    return ycc + offset


def ycbcr_to_rgb(ycbcr: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (not clamped: clamp when writing an image)."""
    if ycbcr.shape[-3] != 3:
        raise ValueError(f"expected 3 channels at dim -3, got shape {tuple(ycbcr.shape)}")
    offset = torch.tensor([0.0, 0.5, 0.5], dtype=ycbcr.dtype, device=ycbcr.device).view(3, 1, 1)
    return _apply(_YCBCR_TO_RGB, ycbcr - offset, -3)


def colorize(fused_y: Tensor, cbcr: Tensor) -> Tensor:
    """Colour a fused luminance (…×1×H×W) with the visible chroma (…×2×H×W); RGB clamped to [0, 1]."""
    return ycbcr_to_rgb(torch.cat([fused_y, cbcr], dim=-3)).clamp(0.0, 1.0)
