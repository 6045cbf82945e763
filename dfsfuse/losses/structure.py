"""SSPFusion's self-supervised structure loss: Sobel structural signals and their alignment.

A *structural signal* is the Sobel response of a map, kept per axis so edge orientation is
not lost: :func:`sobel_structure` turns ``B×C×H×W`` into ``B×2C×H×W`` with channels
``(gx, gy)`` per input channel. A fusion network that produces structural signals from its
features is trained so that they match the Sobel structure of its inputs
(:func:`structure_loss`): the features then keep every edge of the source images.
"""

from __future__ import annotations

from einops import rearrange, reduce
from torch import Tensor

from .fusion import sobel_gradients, weighted_mean

__all__ = ["sobel_structure", "structure_loss", "structure_magnitude"]


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
    """
    target = sobel_structure(source.detach())
    if signal.shape != target.shape:
        raise ValueError(
            f"signal {tuple(signal.shape)} does not match the structure of the source {tuple(target.shape)}"
        )
    return weighted_mean((signal - target).abs(), weight)
