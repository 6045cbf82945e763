"""Shared tensor operators at the bottom of the layer chain: Sobel gradients, structure maps, weighted means.

Models and losses both use these (SSPFusion's structural signals, the gradient and structure
losses), so they live here rather than in either package: ``dfsfuse.ops`` imports nothing
from ``dfsfuse`` but :mod:`dfsfuse.reduction` (itself dependency-free) and may be imported by every layer. ``dfsfuse.losses`` re-exports them
under their old names (``dfsfuse.losses.fusion.sobel_gradients``,
``dfsfuse.losses.structure.sobel_structure``, ...).

A *structural signal* is the Sobel response of a map, kept per axis so edge orientation is
not lost: :func:`sobel_structure` turns ``B×C×H×W`` into ``B×2C×H×W`` with channels
``(gx, gy)`` per input channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor

from .reduction import global_mean

__all__ = [
    "SOBEL_X",
    "resize_weight",
    "weighted_mean",
    "sobel_gradients",
    "sobel_structure",
    "structure_magnitude",
    "structure_loss",
    "gaussian_blur",
    "bilinear_matrix",
    "upsample_bilinear",
]

SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
"""The 3×3 Sobel kernel for ``d/dx`` (its transpose is ``d/dy``)."""

_EPS = 1e-12


def resize_weight(weight: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Resize a ``B×1×H×W`` weight map to ``size``: area average when shrinking, bilinear otherwise."""
    size = (int(size[0]), int(size[1]))
    h, w = weight.shape[-2:]
    if (h, w) == size:
        return weight
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(weight, size)
    return F.interpolate(weight, size=size, mode="bilinear", align_corners=False)


def weighted_mean(loss_map: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of a ``B×C×H×W`` loss map, or ``sum(w·l) / (C·sum(w))`` with a ``B×1×h×w`` weight map.

    Reduced in float32. The weight is broadcast over channels and resized to the loss map's
    size with :func:`resize_weight` when needed, so a map of ones gives exactly the plain
    mean and a map that is zero outside a region averages over that region only. Under
    ``torch.distributed`` the weighted form divides by the weight sum of all ranks
    (:func:`dfsfuse.reduction.global_mean`), so a DDP run equals one process on the global batch.
    """
    loss_map = loss_map.float()
    if weight is None:
        return loss_map.mean()
    if weight.ndim != 4 or weight.shape[1] != 1 or weight.shape[0] != loss_map.shape[0]:
        raise ValueError(
            f"weight must be B×1×H×W with B={loss_map.shape[0]}, got {tuple(weight.shape)}"
        )
    weight = resize_weight(weight.float(), loss_map.shape[-2:])
    den = weight.sum() * loss_map.shape[1]
    return global_mean((loss_map * weight).sum(), den, _EPS)


def sobel_gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel Sobel derivatives ``(gx, gy)`` of ``B×C×H×W`` ``x``, same size as ``x``.

    Borders use replicate padding, so a constant image has zero gradient everywhere
    (zero padding would invent edges along the frame). Matches
    ``scipy.ndimage.sobel(x, axis=-1 / -2, mode="nearest")``.
    """
    c = x.shape[1]
    kx = SOBEL_X.to(device=x.device, dtype=x.dtype)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C)×1×3×3
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels, groups=c)
    return g[:, 0::2], g[:, 1::2]


def sobel_structure(x: Tensor) -> Tensor:
    """Sobel structural signal of ``B×C×H×W`` ``x``: ``B×2C×H×W``, channels ``(gx, gy)`` per channel.

    ``gx`` responds to horizontal change (a vertical edge), ``gy`` to vertical change; both
    are zero on flat areas (replicate borders, see :func:`sobel_gradients`).
    """
    gx, gy = sobel_gradients(x)
    return rearrange([gx, gy], "d b c h w -> b (c d) h w")


def structure_magnitude(signal: Tensor) -> Tensor:
    """Edge strength ``|gx| + |gy|`` of a :func:`sobel_structure` signal: ``B×2C×H×W`` → ``B×C×H×W``."""
    return reduce(signal.abs(), "b (c d) h w -> b c h w", "sum", d=2)


def structure_loss(signal: Tensor, source: Tensor, weight: Tensor | None = None) -> Tensor:
    """``mean |signal − sobel_structure(source)|``: zero exactly when the signal is the source's structure.

    ``signal`` is ``B×2C×H×W`` (a :func:`sobel_structure` output), ``source`` the ``B×C×H×W``
    image it should describe; ``weight`` is an optional ``B×1×H×W`` map (:func:`weighted_mean`).
    SSPFusion's self-supervised structure loss (its model computes it as an auxiliary loss).
    """
    target = sobel_structure(source.detach())
    if signal.shape != target.shape:
        raise ValueError(
            f"signal {tuple(signal.shape)} does not match the structure of the source {tuple(target.shape)}"
        )
    return weighted_mean((signal - target).abs(), weight)


def gaussian_blur(x: Tensor, window_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur of a B×C×H×W map (``window_size`` taps, replicate borders), same size.

    Replicate padding works at any map size (reflect needs H, W > window_size // 2) and traces
    to ONNX as a plain pad + two depthwise convs.
    """
    coords = torch.arange(window_size, device=x.device, dtype=x.dtype) - (window_size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    c, r = x.shape[1], window_size // 2
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def bilinear_matrix(out_size: int, in_size: int, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``out_size × in_size`` matrix ``A`` of 1-D bilinear resizing with ``align_corners=False``:
    ``F.interpolate(x, size=(H, W), mode="bilinear")`` is ``A_H · x · A_Wᵀ`` per channel.

    Source index of output ``o``: ``(o + 0.5) · in/out − 0.5``, clamped at 0, blended between
    its floor and the next index (the last index repeats), as PyTorch computes it when given a size.
    """
    o = torch.arange(out_size, dtype=torch.float64)  # built on the CPU: its adds have a fixed order
    src = ((o + 0.5) * (in_size / out_size) - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = src - i0.to(torch.float64)
    a = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    a.index_put_((rows, i0), 1.0 - w1, accumulate=True)
    a.index_put_((rows, i1), w1, accumulate=True)
    return a.to(device=device, dtype=dtype)


class _BilinearUpsample(torch.autograd.Function):
    """``F.interpolate(..., mode="bilinear", align_corners=False)`` whose backward is two matrix
    products (``A_Hᵀ · g · A_W``) instead of CUDA's scatter of atomic adds, so it does not change
    with the order the GPU's threads add in."""

    @staticmethod
    def forward(ctx, x: Tensor, size: tuple[int, int] | None, scale_factor: float | None) -> Tensor:  # type: ignore[override]
        out = F.interpolate(x, size=size, scale_factor=scale_factor, mode="bilinear", align_corners=False)
        ctx.in_size, ctx.out_size = tuple(x.shape[-2:]), tuple(out.shape[-2:])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (hi, wi), (ho, wo) = ctx.in_size, ctx.out_size
        a_h = bilinear_matrix(ho, hi, grad.device, grad.dtype)
        a_w = bilinear_matrix(wo, wi, grad.device, grad.dtype)
        return torch.einsum("oh,ncop,pw->nchw", a_h, grad, a_w), None, None


def upsample_bilinear(x: Tensor, size: tuple[int, int] | torch.Size | None = None, *,
                      scale_factor: float | None = None, deterministic: bool | None = None) -> Tensor:
    """Bilinear resize of a B×C×H×W map to ``size`` or by ``scale_factor`` (``align_corners=False``).

    The values of ``F.interpolate`` with the same arguments. Its backward on CUDA adds with atomics,
    so two runs with one seed drift apart (measured on an H200: one segbench segmenter, same seed,
    0.1698 and 0.1562 mIoU). With ``deterministic`` (default: when
    ``torch.are_deterministic_algorithms_enabled()``) and a CUDA input that needs a gradient, the
    backward is two matrix products instead (:func:`bilinear_matrix`; exact for the integer scale
    factors used here, where ``in/out`` is the kernel's ``1/scale_factor``). Elsewhere, e.g. on CPU, it
    *is* ``F.interpolate``, so CPU results and exported graphs do not change.
    """
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size and scale_factor")
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    if deterministic and x.is_cuda and x.requires_grad and torch.is_grad_enabled():
        return _BilinearUpsample.apply(x, None if size is None else (int(size[0]), int(size[1])), scale_factor)
    # size passes through untouched: while tracing it is symbolic, and int() would bake one size into the graph
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode="bilinear", align_corners=False)

