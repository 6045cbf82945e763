"""Fusion losses (intensity, Sobel gradient, SSIM) and the weighted-mean helpers every loss shares.

Convention for the whole ``dfsfuse.losses`` package: a *composite* loss returns
``dict[str, Tensor]`` of already-weighted scalar terms whose sum is the loss (terms whose
weight is 0 are left out, not computed); single terms are plain functions/modules that
return one scalar. Per-pixel weight maps are ``B×1×H×W`` and reduce as
``sum(w·l) / sum(w)`` (see :func:`weighted_mean`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import SOBEL_X, gaussian_blur, resize_weight, sobel_gradients, weighted_mean
from .quality import qabf_loss, vif_loss

__all__ = [
    "no_autocast",
    "resize_weight",
    "weighted_mean",
    "sobel_gradients",
    "gradient_magnitude",
    "ssim_map",
    "intensity_loss",
    "gradient_loss",
    "signed_gradient_loss",
    "contrast_target",
    "ssim_loss",
    "FusionLoss",
    "FUSION_TERMS",
]

_SOBEL_X = SOBEL_X  # old private name (the kernel lives in dfsfuse.ops)


def no_autocast(x: Tensor) -> torch.autocast:
    """Context that disables autocast on ``x``'s device (for float32-sensitive statistics)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def gradient_magnitude(x: Tensor) -> Tensor:
    """Sobel gradient magnitude ``|Gx| + |Gy|`` (L1 form), same shape as ``x``."""
    gx, gy = sobel_gradients(x)
    return gx.abs() + gy.abs()


def ssim_map(
    x: Tensor, y: Tensor, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> Tensor:
    """Per-pixel SSIM of ``x`` and ``y`` (``B×C×H×W``) with a Gaussian window, same size as the inputs.

    Population (biased) local statistics as in Wang et al. 2004 and
    ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``;
    borders use replicate padding instead of cropping so any size works and the map can be
    weighted pixel by pixel. Computed in float32.
    """
    if window_size % 2 != 1:
        raise ValueError(f"window_size must be odd, got {window_size}")
    x, y = x.float(), y.float()
    c = x.shape[1]
    # E[x²] − E[x]² cancels catastrophically in half precision.
    with no_autocast(x):
        stats = gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), window_size, sigma)
    mu_x, mu_y, xx, yy, xy = stats.split(c, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return num / den


def intensity_loss(fused: Tensor, ir: Tensor, vis_y: Tensor, weight: Tensor | None = None) -> Tensor:
    """``mean |F − max(I_ir, Y_vis)|`` (weighted mean with a weight map)."""
    return weighted_mean((fused - torch.maximum(ir, vis_y)).abs(), weight)


def gradient_loss(fused: Tensor, ir: Tensor, vis_y: Tensor, weight: Tensor | None = None) -> Tensor:
    """``mean | |∇F| − max(|∇I_ir|, |∇Y_vis|) |`` with Sobel ``|∇| = |Gx| + |Gy|``."""
    target = torch.maximum(gradient_magnitude(ir), gradient_magnitude(vis_y))
    return weighted_mean((gradient_magnitude(fused) - target).abs(), weight)


def signed_gradient_loss(fused: Tensor, ir: Tensor, vis_y: Tensor, weight: Tensor | None = None) -> Tensor:
    """``mean |Gx_F − Gx*| + |Gy_F − Gy*|``: each Sobel derivative towards the input's that is
    larger in absolute value, *with its sign* (the stronger source edge, polarity kept).

    Unlike :func:`gradient_loss` (magnitudes only), an edge of the dimmer source that ``max``
    flattens or inverts is penalised.
    """
    gx, gy = sobel_gradients(torch.cat([ir, vis_y, fused], 1))
    tx = torch.where(gx[:, :1].abs() >= gx[:, 1:2].abs(), gx[:, :1], gx[:, 1:2])
    ty = torch.where(gy[:, :1].abs() >= gy[:, 1:2].abs(), gy[:, :1], gy[:, 1:2])
    return weighted_mean((gx[:, 2:] - tx).abs() + (gy[:, 2:] - ty).abs(), weight)


def contrast_target(ir: Tensor, vis_y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-pixel intensity target chosen by local contrast instead of brightness: a soft
    selection ``w·ir + (1 − w)·vis`` with ``w = σ_ir² / (σ_ir² + σ_vis²)`` from Gaussian-window
    variances (PSFusion-style saliency), falling back to ``max`` where both are flat."""
    with no_autocast(ir):
        x = torch.cat([ir, vis_y, ir * ir, vis_y * vis_y], 1).float()
        m = gaussian_blur(x, window, sigma)
        var = (m[:, 2:] - m[:, :2] ** 2).clamp_min(0)
        flat = 1e-4
        w = (var[:, :1] + flat * (ir >= vis_y)) / (var.sum(1, keepdim=True) + flat)
        return (w * ir + (1 - w) * vis_y).to(ir.dtype)


def ssim_loss(fused: Tensor, ir: Tensor, vis_y: Tensor, weight: Tensor | None = None) -> Tensor:
    """``1 − (SSIM(F, I_ir) + SSIM(F, Y_vis)) / 2`` (11×11 Gaussian, σ=1.5, data range 1)."""
    s = (ssim_map(fused, ir) + ssim_map(fused, vis_y)) / 2
    return weighted_mean(1 - s, weight)


FUSION_TERMS: tuple[str, ...] = ("intensity", "gradient", "ssim", "qabf", "vif")
"""Names of the :class:`FusionLoss` terms, in the order it returns them."""
INTENSITY_TARGETS: tuple[str, ...] = ("max", "contrast")
GRADIENT_MODES: tuple[str, ...] = ("magnitude", "signed")


class FusionLoss(nn.Module):
    """Unsupervised fusion loss: intensity + Sobel gradient (+ SSIM, Q^AB/F, VIF).

    - ``intensity``: ``|F − T|`` with ``T = max(ir, vis)`` (``intensity_target="max"``) or the
      local-contrast selection of :func:`contrast_target` (``"contrast"``).
    - ``gradient``: ``| |∇F| − max(|∇ir|, |∇vis|) |`` (``gradient_mode="magnitude"``) or the
      signed form of :func:`signed_gradient_loss` (``"signed"``).
    - ``ssim``: ``1 − (SSIM(F, ir) + SSIM(F, vis)) / 2``.
    - ``qabf``: ``1 − Q^AB/F`` (:func:`~dfsfuse.losses.quality.qabf_loss`): edge strength and
      orientation of *both* sources carried into F.
    - ``vif``: ``2 − VIF`` (:func:`~dfsfuse.losses.quality.vif_loss`); gameable by contrast
      gain alone, so only next to ``qabf``/``ssim``. Ignores ``weight``.

    ``forward(fused, ir, vis_y, weight=None)`` returns the non-zero terms, already weighted,
    in :data:`FUSION_TERMS` order; the loss is their sum. The defaults are the classic loss
    (CDDFuse/SeAFusion), whose optimum is the ``max`` rule.
    """

    def __init__(self, w_intensity: float = 1.0, w_gradient: float = 1.0, w_ssim: float = 0.0,
                 w_qabf: float = 0.0, w_vif: float = 0.0, intensity_target: str = "max",
                 gradient_mode: str = "magnitude"):
        super().__init__()
        if min(w_intensity, w_gradient, w_ssim, w_qabf, w_vif) < 0:
            raise ValueError("fusion loss weights must be non-negative")
        if intensity_target not in INTENSITY_TARGETS:
            raise ValueError(f"intensity_target must be one of {INTENSITY_TARGETS}, got {intensity_target!r}")
        if gradient_mode not in GRADIENT_MODES:
            raise ValueError(f"gradient_mode must be one of {GRADIENT_MODES}, got {gradient_mode!r}")
        self.w_intensity, self.w_gradient, self.w_ssim = w_intensity, w_gradient, w_ssim
        self.w_qabf, self.w_vif = w_qabf, w_vif
        self.intensity_target, self.gradient_mode = intensity_target, gradient_mode

    @property
    def term_names(self) -> list[str]:
        """Names of the terms this loss returns (those with a non-zero weight)."""
        weights = (self.w_intensity, self.w_gradient, self.w_ssim, self.w_qabf, self.w_vif)
        return [n for n, w in zip(FUSION_TERMS, weights) if w]

    def forward(
        self, fused: Tensor, ir: Tensor, vis_y: Tensor, weight: Tensor | None = None
    ) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if self.w_intensity:
            if self.intensity_target == "max":
                terms["intensity"] = self.w_intensity * intensity_loss(fused, ir, vis_y, weight)
            else:
                target = contrast_target(ir, vis_y)
                terms["intensity"] = self.w_intensity * weighted_mean((fused - target).abs(), weight)
        if self.w_gradient:
            grad = signed_gradient_loss if self.gradient_mode == "signed" else gradient_loss
            terms["gradient"] = self.w_gradient * grad(fused, ir, vis_y, weight)
        if self.w_ssim:
            terms["ssim"] = self.w_ssim * ssim_loss(fused, ir, vis_y, weight)
        if self.w_qabf:
            terms["qabf"] = self.w_qabf * qabf_loss(fused, ir, vis_y, weight)
        if self.w_vif:
            terms["vif"] = self.w_vif * vif_loss(fused, ir, vis_y)
        return terms

    def extra_repr(self) -> str:
        return (f"w_intensity={self.w_intensity}, w_gradient={self.w_gradient}, w_ssim={self.w_ssim}, "
                f"w_qabf={self.w_qabf}, w_vif={self.w_vif}, intensity_target={self.intensity_target!r}, "
                f"gradient_mode={self.gradient_mode!r}")
