"""Parameter and multiply-add counts of a model at a given input size, on the meta device.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products; element-wise ops are not counted) with FLOPs = 2 × MACs. The model is copied to
the meta device, so profiling a large model at full resolution allocates no memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .outputs import FUSION, SEGMENTATION
from .registry import create_model


@dataclass(frozen=True)
class ModelProfile:
    """Size and cost of one forward pass: ``params``, ``macs``, ``flops`` at batch×1×height×width."""

    params: int
    macs: int
    flops: int
    height: int
    width: int
    batch: int = 1

    @property
    def gmacs(self) -> float:
        """Multiply-adds in units of 10⁹."""
        return self.macs / 1e9


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def profile(model: Union[nn.Module, str], size: tuple[int, int] = (480, 640), batch: int = 1) -> ModelProfile:
    """Count parameters and multiply-adds of one forward pass at ``batch``×1×``size``.

    ``model`` is a fusion or segmentation model (its ``kind`` decides whether it gets
    ``(ir, vis_y)`` or one image) or a registered name, which is then built directly on the
    meta device with default kwargs.
    """
    if isinstance(model, str):
        with torch.device("meta"):
            meta_model = create_model(model)
    else:
        meta_model = copy.deepcopy(model).to("meta")
    kind = getattr(meta_model, "kind", "")
    if kind not in (FUSION, SEGMENTATION):
        raise TypeError(f"cannot profile {type(meta_model).__name__}: its kind must be {FUSION!r} or {SEGMENTATION!r}")
    height, width = size
    meta_model.eval()
    inputs = [torch.zeros(batch, 1, height, width, device="meta") for _ in range(2 if kind == FUSION else 1)]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        meta_model(*inputs)
    flops = counter.get_total_flops()
    return ModelProfile(
        params=count_parameters(meta_model), macs=flops // 2, flops=flops, height=height, width=width, batch=batch
    )
