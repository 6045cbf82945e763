"""The project's weight averaging: timm's ``ModelEmaV3`` with its warm-up, one definition for the
semantic benchmark's segmenters (``--ema``) and the training stages (``stage.ema``)."""

from __future__ import annotations

from typing import Optional

from torch import nn

__all__ = ["moving_average"]


def moving_average(model: nn.Module, decay: float) -> Optional[nn.Module]:
    """A ``ModelEmaV3`` copy of ``model`` (weights and buffers) whose k-th ``update(model, step=k)``
    uses decay ``min(decay, 1 − k^(−2/3))``; ``None`` when ``decay`` is 0 (off)."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3  # timm is slow to import; only runs that average pay for it

    return ModelEmaV3(model, decay=decay, use_warmup=True)
