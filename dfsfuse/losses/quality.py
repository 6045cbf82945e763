"""Differentiable counterparts of the two fusion metrics that reward keeping *both* sources:
edge preservation (Xydeas–Petrović Q^AB/F) and pixel-domain visual information fidelity (VIF).

Why they exist: the classic fusion loss (intensity towards ``max(ir, vis)``, gradient towards
the larger input gradient) is nearly minimised by the ``max`` rule itself, so networks trained
with it *are* the rule. ``max`` loses the dimmer source's edges wherever the other source is
brighter; Q^AB/F measures exactly that loss, weighted by how strong each source edge is.

Both follow the published definitions (see ``docs/metrics.md``) with the non-differentiable
corners made smooth:

- **Q^AB/F** (``qabf_loss = 1 − Q``): Sobel gradients ``g = √(gx² + gy² + ε²)``, strength ratio ``min(g_X, g_F) / max(g_X, g_F)``
  and orientation agreement ``1 − |α_X − α_F| / (π/2)`` through the metric's sigmoids
  (Γ_g = 0.9994, κ_g = −15, σ_g = 0.5; Γ_α = 0.9879, κ_α = −22, σ_α = 0.8), and
  ``Q = Σ(Q_AF·g_A + Q_BF·g_B) / Σ(g_A + g_B)``. The evaluator's ``g_F`` quirk where
  ``g_X == g_F`` is left out (it has measure zero for a network's output).

  Two changes make it trainable from a fusion rule, where F *copies* a source locally
  (``max``, ``region-max``; every fusion head starts there):

  1. orientations are compared modulo π, as the angle between the two gradient lines
     (``atan2(|g_X × g_F|, |g_X · g_F|)``, with ε² inside both magnitudes). The metric's
     ``atan(gy/gx)`` jumps by π when ``gx`` changes sign, so on every near-horizontal edge
     (``gx ≈ 0``, common in 8-bit images) its ``|α_X − α_F|`` jumps from 0 to π under an
     arbitrarily small change of F: a loss built on it is discontinuous exactly at the rule,
     a line search along its own gradient went *uphill* at every step size, and networks
     trained with it ended below the rule they started from. The two angles are the same
     orientation, which is what the term is meant to measure; a fusion that keeps the
     source's pixels keeps the metric's sign too.
  2. the cusp of ``min/max`` (``= exp(−|log g_X − log g_F|)``) at ``g_F = g_X`` is smoothed
     (``|x| → √(x² + δ²) − δ``, δ = 0.05), so the peak where F copies X is flat instead of a
     corner that every gradient step falls off.
- **VIF** (``vif_loss = 2 − VIF``, so 0 when F carries all the information of both sources):
  ``vifp(X → F)`` summed over ``X ∈ {A, B}``, four scales with Gaussian windows 17, 9, 5, 3
  (σ = N/5), "valid" filtering, ``σ_n² = 2`` grey levels², on grey levels in [0, 255] in
  float32 (``E[x²] − μ²`` then carries errors of ~0.01 grey level², far below ``σ_n²``; the
  metric itself runs in float64). VIF alone is gameable by a global
  contrast gain (it rewards ``g > 1``); use it together with Q^AB/F and SSIM, never alone.

Images are ``B×1×H×W`` in [0, 1]. Each returns one scalar (mean over the batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import sobel_gradients

__all__ = ["qabf_map", "qabf_loss", "vif_loss"]

_HALF_PI = math.pi / 2
_TG, _KG, _DG = 0.9994, -15.0, 0.5
_TA, _KA, _DA = 0.9879, -22.0, 0.8
_GRAD_EPS = 1e-3  # in [0, 1] intensity units of a Sobel response (≈ 0.25 grey levels)
_SMOOTH_RATIO = 0.05  # δ of the smoothed |log-ratio| (5% strength difference)

_VIF_WINDOWS = (17, 9, 5, 3)
_VIF_NOISE_VAR = 2.0
_VIF_EPS = 1e-10


def qabf_map(fused: Tensor, ir: Tensor, vis_y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel ``(Q_AF·g_A + Q_BF·g_B, g_A + g_B)``; their sums' ratio is Q^AB/F."""
    with torch.autocast(device_type=fused.device.type, enabled=False):
        gx, gy = sobel_gradients(torch.cat([ir, vis_y, fused], 1).float())
        g = torch.sqrt(gx * gx + gy * gy + _GRAD_EPS**2)
        g_src, g_f = g[:, :2], g[:, 2:]
        # Strength: min(g_X, g_F) / max(g_X, g_F) = exp(−|log g_X − log g_F|), its cusp at
        # g_X = g_F smoothed (|x| → √(x² + δ²) − δ).
        log_ratio = torch.log(g_src) - torch.log(g_f)
        ratio = torch.exp(_SMOOTH_RATIO - torch.sqrt(log_ratio * log_ratio + _SMOOTH_RATIO**2))
        # Orientation: the angle between the two gradient *lines* (modulo π), in [0, π/2], from
        # their dot and cross products; ε² inside the magnitudes makes it smooth everywhere,
        # with a flat peak where F's gradient is parallel to X's.
        dot = gx[:, :2] * gx[:, 2:] + gy[:, :2] * gy[:, 2:]
        cross = gx[:, :2] * gy[:, 2:] - gy[:, :2] * gx[:, 2:]
        tiny = _GRAD_EPS**4
        angle = torch.atan2(torch.sqrt(cross * cross + tiny), torch.sqrt(dot * dot + tiny))
        orientation = 1 - angle / _HALF_PI
        q = _TG / (1 + torch.exp(_KG * (ratio - _DG))) * _TA / (1 + torch.exp(_KA * (orientation - _DA)))
        return (q * g_src).sum(1, keepdim=True), g_src.sum(1, keepdim=True)


def qabf_loss(fused: Tensor, ir: Tensor, vis_y: Tensor, weight: Tensor | None = None) -> Tensor:
    """``1 − Q^AB/F`` per image, averaged over the batch; ``weight`` (B×1×H×W) weighs pixels."""
    num, den = qabf_map(fused, ir, vis_y)
    if weight is not None:
        weight = weight.float()
        if weight.shape[-2:] != num.shape[-2:]:
            weight = F.interpolate(weight, size=num.shape[-2:], mode="bilinear", align_corners=False)
        num, den = num * weight, den * weight
    return (1 - num.sum((1, 2, 3)) / den.sum((1, 2, 3)).clamp_min(1e-12)).mean()


def _gaussian(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    sigma = size / 5.0
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    return g / g.sum()


def _valid(x: Tensor, taps: Tensor) -> Tensor:
    c = x.shape[1]
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def vif_loss(fused: Tensor, ir: Tensor, vis_y: Tensor) -> Tensor:
    """``2 − (vifp(A → F) + vifp(B → F))`` per image, averaged over the batch (float32)."""
    with torch.autocast(device_type=fused.device.type, enabled=False):
        x = torch.cat([ir, vis_y, fused], 1).float() * 255.0
        num = x.new_zeros(x.shape[0], 2)
        den = x.new_zeros(x.shape[0], 2)
        for scale, size in enumerate(_VIF_WINDOWS):
            taps = _gaussian(size, x.dtype, x.device)
            if scale:
                x = _valid(x, taps)[..., ::2, ::2]
            if min(x.shape[-2:]) < size:
                break
            refs, dist = x[:, :2], x[:, 2:]
            stats = _valid(torch.cat([x, refs * refs, dist * dist, refs * dist], 1), taps)
            mu_r, mu_d = stats[:, :2], stats[:, 2:3]
            var_r = (stats[:, 3:5] - mu_r * mu_r).clamp_min(0)
            var_d = (stats[:, 5:6] - mu_d * mu_d).clamp_min(0)
            cov = stats[:, 6:8] - mu_r * mu_d
            informative = (var_r >= _VIF_EPS).to(x.dtype)
            g = cov.clamp_min(0) / (var_r + _VIF_EPS) * informative
            sv = (var_d - g * cov).clamp_min(_VIF_EPS)
            num = num + torch.log10(1 + g * g * var_r / (sv + _VIF_NOISE_VAR)).sum((-2, -1))
            den = den + torch.log10(1 + var_r * informative / _VIF_NOISE_VAR).sum((-2, -1))
        vifp = num / den.clamp_min(1e-12)
        return (2 - vifp.sum(1)).mean()
