"""Small filters shared by the fusion metrics: separable "valid" filtering, 3×3 Sobel, strip sums.

Both work on B×C×H×W tensors of any floating dtype on any device. Separable filtering is a
sum of shifted slices, which on CPU is an order of magnitude faster than ``conv2d`` in
float64 and equals a 2-D "valid" correlation with ``outer(taps, taps)`` up to rounding.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# Rows per strip in strip_sums: a 640-wide float64 strip of this height with its few derived
# channels stays in a core's L2/L3 cache; whole 640×480 maps do not (about 2× slower).
STRIP_ROWS = 64


def gaussian_taps(size: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """1-D factor of MATLAB ``fspecial('gaussian', size, size / 5)``: ``outer(t, t)`` is that window.

    The 2-D window ``exp(-(x² + y²) / 2σ²)`` is the outer product of the 1-D one, and for
    σ = size / 5 no entry falls below ``eps · max`` (the truncation ``fspecial`` applies),
    so normalising the 1-D factor normalises the window.
    """
    sigma = size / 5.0
    radius = (size - 1) / 2.0
    x = torch.arange(size, dtype=torch.float64) - radius
    taps = torch.exp(-(x * x) / (2 * sigma * sigma))
    if taps.min() ** 2 < torch.finfo(torch.float64).eps * taps.max() ** 2:
        raise ValueError(f"gaussian window of size {size} would be truncated; not separable")
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def box_taps(size: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """1-D factor of a size×size uniform (mean) window."""
    return torch.full((size,), 1.0 / size, dtype=dtype, device=device)


def _valid_1d(x: Tensor, taps: Tensor, dim: int) -> Tensor:
    k = taps.numel()
    n = x.shape[dim] - k + 1
    weights = taps.tolist()
    out = x.narrow(dim, 0, n) * weights[0]
    for i in range(1, k):
        out.add_(x.narrow(dim, i, n), alpha=weights[i])
    return out


def separable_valid(x: Tensor, taps: Tensor) -> Tensor:
    """Correlate every channel of ``x`` (B×C×H×W) with ``outer(taps, taps)``, "valid" mode.

    Output is B×C×(H−k+1)×(W−k+1). For symmetric taps this is also the convolution.
    """
    if x.shape[-1] < taps.numel() or x.shape[-2] < taps.numel():
        raise ValueError(f"image {tuple(x.shape[-2:])} is smaller than the {taps.numel()}-tap window")
    return _valid_1d(_valid_1d(x, taps, dim=-1), taps, dim=-2)


def sobel_valid(p: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel gradients of every channel of ``p``, "valid" mode; ``sobel_valid(pad(x, 1))`` equals
    ``scipy.signal.convolve2d(x, h, mode="same")`` with the kernels Qabf uses.

    ``h_x = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` and ``h_y = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]``.
    Convolution flips the kernel, so ``g_x`` is left minus right and ``g_y`` is bottom minus top.
    Exact in float32 for integer images.
    """
    h, w = p.shape[-2] - 2, p.shape[-1] - 2
    dx = p[..., :, 0:w] - p[..., :, 2 : w + 2]
    gx = dx[..., 0:h, :] + 2 * dx[..., 1 : h + 1, :] + dx[..., 2 : h + 2, :]
    dy = p[..., 2 : h + 2, :] - p[..., 0:h, :]
    gy = dy[..., 0:w] + 2 * dy[..., 1 : w + 1] + dy[..., 2 : w + 2]
    return gx, gy


def strip_sums(fn: Callable[[Tensor], Tensor], x: Tensor, window: int, rows: int = STRIP_ROWS) -> Tensor:
    """``fn(x)`` for an ``fn`` that filters with a ``window``-row "valid" window and then sums
    over the output pixels, computed strip by strip of output rows on CPU (cache-friendly).

    Each strip gets its ``window − 1`` rows of halo, so the strips' sums add up to the sum over
    the whole image. On other devices ``fn`` runs once on the whole tensor.
    """
    out_rows = x.shape[-2] - window + 1
    if x.device.type != "cpu" or out_rows <= rows:
        return fn(x)
    total = None
    for start in range(0, out_rows, rows):
        stop = min(start + rows, out_rows)
        part = fn(x[..., start : stop + window - 1, :])
        total = part if total is None else total + part
    return total
