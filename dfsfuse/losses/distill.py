"""Distillation losses: output L1, adapted feature matching, and DWT sub-band (frequency) matching.

Teacher tensors are always detached here, so a teacher run with gradients enabled still
receives none from these losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from ..ops import upsample_bilinear
from ..wavelets import DWTForward
from .fusion import no_autocast, weighted_mean

__all__ = ["output_distill", "standardize_features", "FeatureDistillLoss", "FrequencyDistillLoss"]


def output_distill(student_fused: Tensor, teacher_fused: Tensor, weight: Tensor | None = None) -> Tensor:
    """``mean |F_s − F_t|`` between student and (detached) teacher fused images."""
    return weighted_mean((student_fused - teacher_fused.detach()).abs(), weight)


def standardize_features(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero-mean, unit-variance per sample and channel over the spatial dims (float32).

    Used so the feature term does not depend on feature magnitude: matched standardized
    maps give a value in O(1) whatever the layer's scale (for MSE it is ``2·(1 − corr)``).
    Channels with variance well below ``eps`` (dead channels) map to ~0.
    """
    x = x.float()
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = x.var(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + eps)


class FeatureDistillLoss(nn.Module):
    """Match named student features to teacher features through trainable 1×1 adapters.

    One ``Conv2d(student_width, teacher_width, 1)`` per paired name (``self.adapters``);
    the adapters train with the student and are never exported with it. Both sides are
    standardized with :func:`standardize_features`, compared with L1 or MSE per element,
    and the per-pair values are averaged. If spatial sizes differ, the adapted student map
    and the weight map are resized (bilinear) to the teacher's size.

    Args:
        student_channels: feature name → student width.
        teacher_channels: feature name → teacher width.
        names: pairs to match; default every student name the teacher also has, in
            student order.
        loss: ``"l1"`` or ``"mse"``.
    """

    def __init__(
        self,
        student_channels: Mapping[str, int],
        teacher_channels: Mapping[str, int],
        names: Sequence[str] | None = None,
        loss: str = "l1",
    ):
        super().__init__()
        if loss not in ("l1", "mse"):
            raise ValueError(f"loss must be 'l1' or 'mse', got {loss!r}")
        if names is None:
            names = [n for n in student_channels if n in teacher_channels]
        names = list(names)
        if not names:
            raise ValueError("no feature names to distil (student and teacher share none)")
        missing = [n for n in names if n not in student_channels or n not in teacher_channels]
        if missing:
            raise ValueError(f"feature names missing from student or teacher channels: {missing}")
        self.names = names
        self.loss = loss
        self.adapters = nn.ModuleDict(
            {n: nn.Conv2d(int(student_channels[n]), int(teacher_channels[n]), 1) for n in names}
        )

    def forward(
        self,
        student_feats: Mapping[str, Tensor],
        teacher_feats: Mapping[str, Tensor],
        weight: Tensor | None = None,
    ) -> Tensor:
        total = 0.0
        for name in self.names:
            if name not in student_feats or name not in teacher_feats:
                raise KeyError(f"feature {name!r} missing from student or teacher outputs")
            t = teacher_feats[name].detach()
            s = self.adapters[name](student_feats[name])
            if s.shape[-2:] != t.shape[-2:]:
                s = upsample_bilinear(s, t.shape[-2:])
            diff = standardize_features(s) - standardize_features(t)
            total = total + weighted_mean(diff.abs() if self.loss == "l1" else diff**2, weight)
        return total / len(self.names)

    def extra_repr(self) -> str:
        return f"names={self.names}, loss={self.loss!r}"


class FrequencyDistillLoss(nn.Module):
    """L1 between DWT sub-bands of the student's and the teacher's fused images.

    ``w_low · L1(LL_J) + w_high · mean_j L1(LH_j, HL_j, HH_j)`` over ``levels`` = J levels of a
    ``pytorch_wavelets.DWTForward`` (any H, W; odd sizes are padded by ``mode``). A weight
    map is area-averaged down to each sub-band's size. Returns one scalar. With an
    orthonormal wavelet the LL band grows by 2 per level, so ``w_low`` may need lowering
    for ``levels > 1``. Computed in the filters' dtype (float32) with autocast off.
    """

    def __init__(
        self,
        wave: str = "haar",
        levels: int = 1,
        w_low: float = 1.0,
        w_high: float = 1.0,
        mode: str = "symmetric",
    ):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.dwt = DWTForward(J=levels, wave=wave, mode=mode)
        # The filters are fixed by (wave, mode): keep them out of the state dict so
        # checkpoints hold only trainable state.
        for name, buf in list(self.dwt.named_buffers(recurse=False)):
            self.dwt.register_buffer(name, buf, persistent=False)
        self.wave, self.levels, self.mode = wave, levels, mode
        self.w_low, self.w_high = w_low, w_high

    def forward(self, student_fused: Tensor, teacher_fused: Tensor, weight: Tensor | None = None) -> Tensor:
        dtype = self.dwt.h0_col.dtype
        with no_autocast(student_fused):
            s_low, s_high = self.dwt(student_fused.to(dtype))
            with torch.no_grad():
                t_low, t_high = self.dwt(teacher_fused.detach().to(dtype))
        loss = s_low.new_zeros(())
        if self.w_low:
            loss = loss + self.w_low * weighted_mean((s_low - t_low).abs(), weight)
        if self.w_high:
            high = sum(
                weighted_mean(rearrange((sh - th).abs(), "b c k h w -> b (c k) h w"), weight)
                for sh, th in zip(s_high, t_high)
            )
            loss = loss + self.w_high * high / self.levels
        return loss

    def extra_repr(self) -> str:
        return (
            f"wave={self.wave!r}, levels={self.levels}, mode={self.mode!r}, "
            f"w_low={self.w_low}, w_high={self.w_high}"
        )
