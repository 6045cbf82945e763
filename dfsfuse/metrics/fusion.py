"""The standard IR/VIS fusion metrics, batched in torch, matching the evaluator papers report.

Conventions (``docs/metrics.md``): images are grey levels in [0, 255] (never divided by
255), argument order is fused F, IR A, VIS B, and every metric reproduces the widely copied
evaluator to a relative tolerance of 1e-4. Precision-sensitive metrics (VIF, SSIM, MI and the
moments) are computed in float64; Qabf keeps the evaluator's float32 intermediates.

Every ``metric(f, a, b)`` function here takes float64 tensors B×1×H×W on one device and returns
a float64 tensor of B values; :func:`fusion_metrics_batch` validates and converts its inputs
and calls them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ._filters import box_taps, gaussian_taps, separable_valid, sobel_valid, strip_sums

ArrayLike = Union[np.ndarray, Tensor]

METRIC_NAMES: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "MSE", "PSNR")
"""Every metric :func:`fusion_metrics` returns, in this order."""

VIF_WINDOWS = (17, 9, 5, 3)
VIF_NOISE_VAR = 2.0
VIF_EPS = 1e-10
SSIM_WINDOW = 7
SSIM_DATA_RANGE = 2.0  # an old scikit-image default for float input; the published tables use it

_HALF_PI = math.pi / 2


@dataclass(frozen=True)
class QabfConstants:
    """Xydeas–Petrović sigmoid parameters (gradient strength g, orientation a; L = 1)."""

    tg: float = 0.9994
    kg: float = -15.0
    dg: float = 0.5
    ta: float = 0.9879
    ka: float = -22.0
    da: float = 0.8


QABF = QabfConstants()


# ----------------------------------------------------------------------------- metrics on B×1×H×W float64


def entropy(f: Tensor) -> Tensor:
    """EN: Shannon entropy in bits of the 256-bin histogram of ``round(F)``."""
    b = f.shape[0]
    levels = f.round().clamp(0, 255).long().flatten(1)
    if b > 1:
        levels = levels + 256 * torch.arange(b, device=f.device).unsqueeze(1)
    counts = torch.bincount(levels.flatten(), minlength=256 * b).view(b, 256).double()
    p = counts / levels.shape[1]
    return -(p * torch.log2(p.clamp_min(1e-300))).sum(1)


def standard_deviation(f: Tensor) -> Tensor:
    """SD: population standard deviation (ddof 0)."""
    return f.flatten(1).std(dim=1, correction=0)


def spatial_frequency(f: Tensor) -> Tensor:
    """SF: ``sqrt(mean(dx²) + mean(dy²))`` of forward differences over valid pixels."""
    dx = f[..., :, 1:] - f[..., :, :-1]
    dy = f[..., 1:, :] - f[..., :-1, :]
    return torch.sqrt(dx.square().mean((1, 2, 3)) + dy.square().mean((1, 2, 3)))


def average_gradient(f: Tensor) -> Tensor:
    """AG: ``mean(sqrt((Gx² + Gy²) / 2))`` with ``np.gradient`` differences."""
    gy, gx = torch.gradient(f, dim=(-2, -1))
    return torch.sqrt((gx.square() + gy.square()) / 2).mean((1, 2, 3))


def _is_byte_valued(x: Tensor) -> bool:
    return bool((x == x.round()).all())


def _mi_byte_levels(f: Tensor, r: Tensor) -> Tensor:
    """MI of integer grey levels 0..255 from a 256×256 joint histogram per image."""
    b = f.shape[0]
    n = f[0].numel()
    idx = f.long().flatten(1) * 256 + r.long().flatten(1)
    if b > 1:
        idx = idx + 65536 * torch.arange(b, device=f.device).unsqueeze(1)
    joint = torch.bincount(idx.flatten(), minlength=65536 * b).view(b, 256, 256).double()
    pf = joint.sum(2, keepdim=True).clamp_min(1)
    pr = joint.sum(1, keepdim=True).clamp_min(1)
    # Empty cells contribute 0·finite; clamping keeps the logs finite there.
    terms = joint * (torch.log(joint.clamp_min(1)) + math.log(n) - torch.log(pf) - torch.log(pr))
    return (terms.sum((1, 2)) / n).clamp_min(0)


def _mi_any_values(f: Tensor, r: Tensor) -> Tensor:
    """MI with every distinct value its own bin (as sklearn), for arbitrary real values."""
    out = []
    for fi, ri in zip(f.flatten(1), r.flatten(1)):
        n = fi.numel()
        _, inv_f = torch.unique(fi, return_inverse=True)
        _, inv_r = torch.unique(ri, return_inverse=True)
        nr = int(inv_r.max()) + 1
        cells, counts = torch.unique(inv_f * nr + inv_r, return_counts=True)
        cf = torch.bincount(inv_f).double()[cells // nr]
        cr = torch.bincount(inv_r).double()[cells % nr]
        c = counts.double()
        out.append((c * (torch.log(c) + math.log(n) - torch.log(cf) - torch.log(cr))).sum() / n)
    return torch.stack(out).clamp_min(0)


def mutual_information(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """MI: ``I(F;A) + I(F;B)`` in nats, each distinct grey value its own bin.

    Equal to ``sklearn.metrics.mutual_info_score`` on the flattened images. Integer grey levels
    (the convention) take a fast 256×256 joint histogram; other values fall back to
    ``torch.unique`` per image, which gives the same answer more slowly.
    """
    mi = _mi_byte_levels if all(_is_byte_valued(x) for x in (f, a, b)) else _mi_any_values
    return mi(f, a) + mi(f, b)


def _pearson(x: Tensor, y: Tensor) -> Tensor:
    x = x.flatten(1)
    y = y.flatten(1)
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    return (x * y).sum(1) / torch.sqrt(x.square().sum(1) * y.square().sum(1))


def scd(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SCD: ``corr(A, F − B) + corr(B, F − A)``; NaN where a difference is constant (F copies an input)."""
    return _pearson(a, f - b) + _pearson(b, f - a)


def correlation(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """CC: mean of ``corr(A, F)`` and ``corr(B, F)``."""
    return (_pearson(a, f) + _pearson(b, f)) / 2


def mse(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """MSE: ``(mean((A − F)²) + mean((B − F)²)) / 2``."""
    return ((a - f).square().mean((1, 2, 3)) + (b - f).square().mean((1, 2, 3))) / 2


def psnr(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """PSNR: ``10·log10(max(F)² / MSE)``; the peak is the maximum of F, not 255."""
    peak = f.flatten(1).amax(1)
    return 10 * torch.log10(peak.square() / mse(f, a, b))


def _vif_sums(x: Tensor, taps: Tensor) -> Tensor:
    """Per-image ``[num_A, num_B, den_A, den_B]`` of one VIF scale; ``x`` holds A, B, F as channels."""
    refs, dist = x[:, :2], x[:, 2:]
    stats = separable_valid(torch.cat([x, refs * refs, dist * dist, refs * dist], 1), taps)
    mu_r, mu_d = stats[:, :2], stats[:, 2:3]
    var_r = (stats[:, 3:5] - mu_r * mu_r).clamp_min_(0)
    var_d = (stats[:, 5:6] - mu_d * mu_d).clamp_min_(0)
    cov = stats[:, 6:8] - mu_r * mu_d
    # The evaluator's case analysis, folded: g = 0 where σ_X² < eps, σ_F² < eps or g < 0
    # (σ_X² then also counts as 0), and with g = 0 the sv² it assigns there is irrelevant.
    informative = var_r >= VIF_EPS
    g = cov.clamp_min(0) / (var_r + VIF_EPS)
    g.mul_(informative & (var_d >= VIF_EPS))
    sv = (var_d - g * cov).clamp_min_(VIF_EPS)
    num = torch.log10(1 + g * g * var_r / (sv + VIF_NOISE_VAR)).sum((-2, -1))
    den = torch.log10(1 + var_r * informative / VIF_NOISE_VAR).sum((-2, -1))
    return torch.cat([num, den], 1)


def vif(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """VIF: ``vifp(A → F) + vifp(B → F)``, pixel-domain, four scales (see the conventions).

    As in the evaluator, a reference with no local variance anywhere (0/0) scores 1.0.
    """
    x = torch.cat([a, b, f], 1)  # channels: two references, then the distorted image
    sums = x.new_zeros(x.shape[0], 4)
    for scale, size in enumerate(VIF_WINDOWS):
        taps = gaussian_taps(size, dtype=x.dtype, device=x.device)
        if scale:
            x = separable_valid(x, taps)[..., ::2, ::2]
        sums += strip_sums(functools.partial(_vif_sums, taps=taps), x, size)
    vifp = sums[:, :2] / sums[:, 2:]
    return torch.where(torch.isnan(vifp), torch.ones_like(vifp), vifp).sum(1)


def _qabf_sums(p: Tensor) -> Tensor:
    """Per-image ``[Σ(Q_AF·g_A + Q_BF·g_B), Σ(g_A + g_B)]`` over the "valid" Sobel outputs of
    ``p`` (zero-padded A, B, F as float32 channels)."""
    gx, gy = sobel_valid(p)
    strength = torch.sqrt(gx * gx + gy * gy)
    nonzero = gx != 0
    angle = torch.atan(gy / torch.where(nonzero, gx, torch.ones_like(gx)))
    angle = torch.where(nonzero, angle, torch.full_like(angle, _HALF_PI))
    g_in, a_in = strength[:, :2], angle[:, :2]
    g_f, a_f = strength[:, 2:], angle[:, 2:]
    ratio = torch.where(g_in == g_f, g_f, torch.minimum(g_in, g_f) / torch.maximum(g_in, g_f))
    orientation = 1 - torch.abs(a_in - a_f) / _HALF_PI
    q_g = QABF.tg / (1 + torch.exp(QABF.kg * (ratio - QABF.dg)))
    q_a = QABF.ta / (1 + torch.exp(QABF.ka * (orientation - QABF.da)))
    num = (q_g * q_a * g_in).double().sum((1, 2, 3))
    return torch.stack([num, g_in.double().sum((1, 2, 3))], 1)


def qabf(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Qabf: Xydeas–Petrović edge preservation of A and B in F, float32 intermediates.

    The gradient-strength ratio keeps the evaluator's quirk: ``g_F`` (not 1) where ``g_A == g_F``.
    """
    padded = torch.nn.functional.pad(torch.cat([a, b, f], 1).float(), (1, 1, 1, 1))  # "same", zero padding
    sums = strip_sums(_qabf_sums, padded, 3)
    return sums[:, 0] / sums[:, 1]


def _ssim_sums(x: Tensor) -> Tensor:
    """Per-image sums of the SSIM maps of F (channel 0) against A and B (channels 1, 2)."""
    n = SSIM_WINDOW * SSIM_WINDOW
    cov_norm = n / (n - 1)
    c1 = (0.01 * SSIM_DATA_RANGE) ** 2
    c2 = (0.03 * SSIM_DATA_RANGE) ** 2
    f, refs = x[:, :1], x[:, 1:]
    m = separable_valid(
        torch.cat([x, f * f, refs * refs, f * refs], 1), box_taps(SSIM_WINDOW, dtype=x.dtype, device=x.device)
    )
    mu_f, mu_r = m[:, 0:1], m[:, 1:3]
    var_f = cov_norm * (m[:, 3:4] - mu_f * mu_f)
    var_r = cov_norm * (m[:, 4:6] - mu_r * mu_r)
    cov = cov_norm * (m[:, 6:8] - mu_f * mu_r)
    s = (2 * mu_f * mu_r + c1) * (2 * cov + c2) / ((mu_f * mu_f + mu_r * mu_r + c1) * (var_f + var_r + c2))
    return s.sum((-2, -1))


def ssim(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SSIM: ``ssim(F, A) + ssim(F, B)`` with a 7×7 uniform window, sample covariance,
    data_range 2, averaged over the pixels whose window lies inside the image."""
    h, w = f.shape[-2:]
    valid = (h - SSIM_WINDOW + 1) * (w - SSIM_WINDOW + 1)
    return (strip_sums(_ssim_sums, torch.cat([f, a, b], 1), SSIM_WINDOW) / valid).sum(1)


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "EN": entropy,
    "SD": standard_deviation,
    "SF": spatial_frequency,
    "AG": average_gradient,
}
_TERNARY: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "MI": mutual_information,
    "SCD": scd,
    "VIF": vif,
    "Qabf": qabf,
    "SSIM": ssim,
    "CC": correlation,
    "MSE": mse,
    "PSNR": psnr,
}


def _vif_min_side() -> int:
    def fits(n: int) -> bool:
        for scale, size in enumerate(VIF_WINDOWS):
            if scale:
                n = (n - size + 2) // 2  # "valid" filter, then every second sample
            if n - size + 1 < 1:
                return False
        return True

    return next(n for n in range(1, 1000) if fits(n))


MIN_SIDE: dict[str, int] = {"SF": 2, "AG": 2, "SSIM": SSIM_WINDOW, "VIF": _vif_min_side()}
"""Smallest image side (pixels) each size-dependent metric accepts."""


# ----------------------------------------------------------------------------- entry points


def _as_batch(x: ArrayLike, name: str, device: torch.device) -> Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if t.dim() == 2:
        t = t[None, None]
    elif not (t.dim() == 4 and t.shape[1] == 1):
        raise ValueError(f"{name}: expected an H×W image or a B×1×H×W batch, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name}: expected real grey values, got dtype {t.dtype}")
    t = t.to(device=device, dtype=torch.float64)
    if t.numel():
        low, high = (v.item() for v in torch.aminmax(t))  # NaN propagates into both
        if not (low >= 0 and high <= 255):
            raise ValueError(
                f"{name}: values must be finite grey levels in [0, 255] (got min {low:g}, max {high:g}); "
                "the metrics never divide by 255"
            )
    return t


def _check_names(metrics: Iterable[str]) -> tuple[str, ...]:
    wanted = set(metrics)
    unknown = wanted.difference(METRIC_NAMES)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    return tuple(n for n in METRIC_NAMES if n in wanted)


@torch.no_grad()
def fusion_metrics_batch(
    fused: ArrayLike,
    ir: ArrayLike,
    vis: ArrayLike,
    metrics: Sequence[str] = METRIC_NAMES,
    device: Optional[Union[str, torch.device]] = None,
) -> dict[str, Tensor]:
    """Fusion metrics for a batch: F, A, B as B×1×H×W (or H×W) grey levels in [0, 255].

    Returns ``{name: tensor of B float64 values}`` in :data:`METRIC_NAMES` order, restricted
    to ``metrics``. Runs on ``device`` (default: the device of ``fused``, else CPU). Raises
    ``ValueError`` for mismatched shapes, other layouts, values outside [0, 255] or images
    too small for a requested metric.
    """
    names = _check_names(metrics)
    if device is None:
        device = fused.device if isinstance(fused, Tensor) else torch.device("cpu")
    device = torch.device(device)
    f, a, b = (_as_batch(x, n, device) for x, n in ((fused, "fused"), (ir, "ir"), (vis, "vis")))
    if not f.shape == a.shape == b.shape:
        raise ValueError(
            f"fused, ir and vis must have the same shape; got {tuple(f.shape)}, {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if f.shape[0] == 0:
        raise ValueError("empty batch: expected at least one image")
    side = min(f.shape[-2:])
    for name in names:
        if side < MIN_SIDE.get(name, 1):
            raise ValueError(
                f"{name} needs images of at least {MIN_SIDE[name]}×{MIN_SIDE[name]} pixels, got {tuple(f.shape[-2:])}"
            )
    # On CPU, one image at a time keeps the float64 working set small enough to stay in cache
    # (a whole batch of 640×480 maps is slower per image); on GPU the batch runs at once.
    step = 1 if device.type == "cpu" else f.shape[0]
    parts = [
        {n: _UNARY[n](fi) if n in _UNARY else _TERNARY[n](fi, ai, bi) for n in names}
        for fi, ai, bi in zip(f.split(step), a.split(step), b.split(step))
    ]
    return {n: torch.cat([p[n] for p in parts]) for n in names}


def fusion_metrics(
    fused: ArrayLike,
    ir: ArrayLike,
    vis: ArrayLike,
    metrics: Sequence[str] = METRIC_NAMES,
    device: Optional[Union[str, torch.device]] = None,
) -> dict[str, float]:
    """Fusion metrics of one image: F, A, B as H×W grey levels in [0, 255] → ``{name: value}``."""
    for x, name in ((fused, "fused"), (ir, "ir"), (vis, "vis")):
        if getattr(x, "ndim", None) != 2:
            raise ValueError(f"{name}: expected one H×W image, got shape {tuple(getattr(x, 'shape', ()))}")
    values = fusion_metrics_batch(fused, ir, vis, metrics=metrics, device=device)
    return {n: float(v[0]) for n, v in values.items()}


@dataclass
class MetricAccumulator:
    """Collects per-image metric values and gives per-dataset means.

    A NaN value (e.g. SCD of a fusion that copies an input) makes that metric's mean NaN,
    exactly as ``np.mean`` over a per-image table would; ``mean(skip_nan=True)`` averages only
    the defined values instead.
    """

    values: dict[str, list[float]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Number of images seen."""
        return len(next(iter(self.values.values()))) if self.values else 0

    def update(self, values: Mapping[str, Union[Tensor, float, Sequence[float]]]) -> None:
        """Add one image (floats) or a batch (one value per image) for every metric in ``values``."""
        arrays = {
            k: np.atleast_1d(np.asarray(v.detach().cpu() if isinstance(v, Tensor) else v, dtype=np.float64))
            for k, v in values.items()
        }
        shapes = {a.shape for a in arrays.values()}
        if len(shapes) > 1 or any(len(s) != 1 for s in shapes):
            raise ValueError(f"every metric needs the same number of per-image values; got shapes {sorted(shapes)}")
        if self.values and set(arrays) != set(self.values):
            raise ValueError(f"metrics {sorted(arrays)} differ from earlier updates {sorted(self.values)}")
        for k, arr in arrays.items():
            self.values.setdefault(k, []).extend(arr.tolist())

    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Append the values of another accumulator (another shard or process); returns ``self``."""
        if other.values:
            self.update(other.values)
        return self

    def mean(self, skip_nan: bool = False) -> dict[str, float]:
        """Mean of every metric over the images seen so far, in :data:`METRIC_NAMES` order."""
        order = [n for n in METRIC_NAMES if n in self.values] + [n for n in self.values if n not in METRIC_NAMES]
        out = {}
        for k in order:
            arr = np.asarray(self.values[k], dtype=np.float64)
            if skip_nan:
                arr = arr[~np.isnan(arr)]
            out[k] = float(arr.mean()) if arr.size else math.nan
        return out

    def reset(self) -> None:
        """Forget every value."""
        self.values.clear()
