"""Rule-based fusion baselines: the floor every learned fusion method must beat.

``avg``, ``max``, ``ir`` and ``vis`` of IR/VIS grey images in [0, 255], returned as 8-bit
images exactly as they are written to disk and evaluated (``avg`` rounds half to even), and
two rules that show how metrics can be moved without learning anything:

- ``max-gain``: ``max`` with a global contrast gain of 1.1 about the image mean
  (:data:`CONTRAST_GAIN`). It raises VIF, SD, SF and AG while lowering Qabf and SSIM: a learned
  fusion that "beats max" on VIF alone may have learned no more than this.
- ``poisson``: the gradient-domain rule, the image whose gradient is the stronger source
  gradient *with its sign* (per pixel, per axis), found by a Poisson solve with reflective
  borders (DCT), with the mean of ``max``. It raises EN/SD/SF/AG and lowers VIF and Qabf.

and one rule that shows what a fusion network can start from:

- ``region-max``: ``w·ir + (1 − w)·vis`` with ``w = sigmoid(400·(G₃ * ir − G₃ * vis))`` on
  [0, 1] intensities, i.e. a soft choice of the source that is brighter *in a neighbourhood*
  (Gaussian σ = 3 px, 19 taps, edge-replicated borders) instead of per pixel. Pixel ``max``
  switches source wherever the two cross and cuts both sources' structure there; the regional
  choice keeps it, and beats ``max`` on VIF, Q^AB/F, EN, SD, SF and AG on MSRS, TNO and
  RoadScene. It is the initial state of the default ``region`` fusion head.

and the classic multi-scale rule:

- ``laplacian``: Burt–Adelson Laplacian-pyramid fusion (:data:`LAPLACIAN_LEVELS` levels,
  5-tap binomial kernel, reflected borders): at every detail level the coefficient of larger
  magnitude, at the coarsest level the brighter base. Each source's local contrast survives at
  the scale where it is strongest (a warm body keeps its IR contrast against a bright visible
  background, which ``max`` and ``region-max`` flatten).

and a rule for segmenters rather than for the fusion metrics:

- ``ir-contrast``: the visible luminance plus IR's *positive local contrast*,
  ``vis + k·relu(ir − G_σ * ir)`` (:data:`IR_CONTRAST_GAIN` k = 3, Gaussian σ = the image's short
  side × :data:`IR_CONTRAST_SIGMA_FRACTION`, i.e. 8 px at 480×640, reflected borders): everything
  the visible camera sees, with whatever is warmer than its surroundings brightened on top, by day
  as by night. A segmenter trained on MSRS with it scores above IR alone in every seed and above
  VIS and ``max`` on the mean (within their seed range) at 900 steps (README, Semantic benchmark);
  it loses VIF, Q^AB/F and SSIM against ``max`` (IR's own structure is not kept, its noise is
  amplified).
- ``region-contrast``: ``region-max + k·relu(G₂ * ir − G₈ * ir)`` (:data:`REGION_CONTRAST_GAIN`
  k = 2, σ in pixels: :data:`WARM_CONTRAST_SIGMAS`, edge-replicated borders): the ``region``
  head's rule with IR's warm blobs (without its pixel noise) added on top; the fixed-gain form of
  the ``region-contrast`` head, whose network learns *where* to add them. A milder trade than
  ``ir-contrast``: most of its segmentation gain at 900 steps for a third of its VIF cost.
- ``gamma-contrast``: the ``region-contrast`` rule on a *brightened* visible image,
  ``255·(vis/255)^γ`` with ``γ = clip(ln 0.4 / ln m, 0.35, 1)`` per image (:data:`GAMMA_TARGET`,
  ``m`` the mean visible intensity in [0, 1]): night scenes (m ≈ 0.1) are lifted, day scenes left
  alone (illumination-aware fusion in its simplest form). The best rule for a segmenter measured
  here (900 steps: +0.010 mIoU over ``region-contrast`` in every seed, README, Semantic benchmark);
  it gives up similarity to the dark visible image (SSIM, Q^AB/F) at night.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .options import BASELINE_METHODS

__all__ = ["BASELINE_METHODS", "CONTRAST_GAIN", "LAPLACIAN_LEVELS", "REGION_GAIN", "REGION_SIGMA", "REGION_WINDOW",
           "IR_CONTRAST_GAIN", "IR_CONTRAST_SIGMA_FRACTION", "GAMMA_MIN", "GAMMA_TARGET", "brighten_dark",
           "gamma_contrast_fusion", "WARM_CONTRAST_SIGMAS", "REGION_CONTRAST_GAIN",
           "region_contrast_fusion", "warm_contrast_map", "baseline_fusion", "gaussian_taps",
           "ir_contrast_fusion", "laplacian_max_fusion", "poisson_fusion", "region_max_fusion", "region_taps"]

CONTRAST_GAIN = 1.1


def _laplacian_eigen(n: int) -> np.ndarray:
    """Eigenvalues of the 1-D periodic Laplacian of a length-2n mirror extension (= Neumann, length n)."""
    return 2 * np.cos(np.pi * np.arange(2 * n) / n) - 2


def poisson_fusion(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """Float H×W image whose forward differences best match, in least squares, the stronger
    source's forward differences (sign kept), with reflective (Neumann) borders and the mean
    of ``max(ir, vis)``."""
    a, b = np.asarray(ir, np.float64), np.asarray(vis, np.float64)
    h, w = a.shape
    dx_a, dx_b = np.diff(a, axis=1), np.diff(b, axis=1)
    dy_a, dy_b = np.diff(a, axis=0), np.diff(b, axis=0)
    gx = np.where(np.abs(dx_a) >= np.abs(dx_b), dx_a, dx_b)
    gy = np.where(np.abs(dy_a) >= np.abs(dy_b), dy_a, dy_b)
    # Divergence of the target field with zero flux through the border (Neumann).
    div = np.zeros((h, w))
    div[:, :-1] += gx
    div[:, 1:] -= gx
    div[:-1, :] += gy
    div[1:, :] -= gy
    # Solve the Neumann Poisson equation spectrally: mirror extension + FFT (the DCT-II basis).
    ext = np.concatenate([div, div[::-1]], 0)
    ext = np.concatenate([ext, ext[:, ::-1]], 1)
    spec = np.fft.fft2(ext)
    denom = _laplacian_eigen(h)[:, None] + _laplacian_eigen(w)[None, :]
    denom[0, 0] = 1.0
    spec = spec / denom
    spec[0, 0] = 0.0
    out = np.real(np.fft.ifft2(spec))[:h, :w]
    return out - out.mean() + np.maximum(a, b).mean()


REGION_SIGMA = 3.0
"""Gaussian σ (pixels) of the local brightness the ``region-max`` rule (and the ``region`` head) compares."""
REGION_WINDOW = 19
"""Taps of that Gaussian (2·round(3σ) + 1)."""
REGION_GAIN = 400.0
"""Steepness of the selection on [0, 1] intensities: a 1-grey-level difference of local means ≈ 1.6 logits."""


WARM_CONTRAST_SIGMAS = (2.0, 8.0)
"""Gaussian σ (pixels) of the difference of Gaussians ``relu(G₂ * ir − G₈ * ir)``: IR's warm blobs
(warmer than their surroundings, without pixel noise) that the ``region-contrast`` head adds."""
REGION_CONTRAST_GAIN = 2.0
"""Gain of the warm contrast in the ``region-contrast`` rule."""


def gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised Gaussian taps (float64), ``2·ceil(3σ) + 1`` of them."""
    r = max(1, int(np.ceil(3.0 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return g / g.sum()


def region_taps() -> np.ndarray:
    """The ``REGION_WINDOW`` normalised Gaussian taps (float64) shared by this rule and the ``region`` head."""
    return gaussian_taps(REGION_SIGMA)


def _separable_blur(x: np.ndarray, taps: np.ndarray, mode: str) -> np.ndarray:
    """``x`` blurred along both axes by the odd-length ``taps``, borders padded with ``np.pad``
    mode ``mode``; same size, float64."""
    n = len(taps)
    p = np.pad(x, n // 2, mode=mode)
    h, w = x.shape
    rows = sum(taps[k] * p[:, k : k + w] for k in range(n))
    return sum(taps[k] * rows[k : k + h, :] for k in range(n))


def _region_blur(x: np.ndarray) -> np.ndarray:
    """Separable region Gaussian with edge-replicated borders, same size (float64)."""
    return _separable_blur(x, region_taps(), "edge")


def region_max_fusion(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """Float H×W soft regional maximum of two grey images in [0, 255] (see the module docstring)."""
    a, b = np.asarray(ir, np.float64), np.asarray(vis, np.float64)
    # The blur and the edge padding are linear: blurring the difference once is exact.
    diff = _region_blur((a - b) / 255.0)
    w = 0.5 * (1 + np.tanh(0.5 * REGION_GAIN * diff))  # = sigmoid, without overflow warnings
    return b + w * (a - b)


LAPLACIAN_LEVELS = 4
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _binomial_blur(x: np.ndarray) -> np.ndarray:
    """Separable 5-tap binomial blur with reflected borders, same size (float64)."""
    return _separable_blur(x, _BINOMIAL, "reflect" if min(x.shape) > 2 else "edge")


def _expand(x: np.ndarray, shape: tuple) -> np.ndarray:
    """Upsample ×2 (zero insertion, cropped to ``shape``) and interpolate with the binomial kernel."""
    up = np.zeros((2 * x.shape[0], 2 * x.shape[1]))
    up[::2, ::2] = x
    return 4.0 * _binomial_blur(up[: shape[0], : shape[1]])


def _laplacian_pyramid(x: np.ndarray, levels: int) -> tuple:
    """``(details, base)``: ``levels`` band-pass images, finest first, and the low-pass residual.
    Exact: ``x`` is recovered by expanding the base and adding the details back, coarsest first."""
    details = []
    for _ in range(levels):
        if min(x.shape) < 2:
            break
        low = _binomial_blur(x)[::2, ::2]
        details.append(x - _expand(low, x.shape))
        x = low
    return details, x


def laplacian_fusion(ir: np.ndarray, vis: np.ndarray, levels: int,
                     base: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Float H×W Laplacian-pyramid fusion of two grey images: ``base(ir's, vis's)`` low-pass
    residuals, then at every band-pass level the coefficient larger in magnitude."""
    da, base_a = _laplacian_pyramid(np.asarray(ir, np.float64), levels)
    db, base_b = _laplacian_pyramid(np.asarray(vis, np.float64), levels)
    fused = base(base_a, base_b)
    for a, b in zip(reversed(da), reversed(db)):
        fused = _expand(fused, a.shape) + np.where(np.abs(a) >= np.abs(b), a, b)
    return fused


def laplacian_max_fusion(ir: np.ndarray, vis: np.ndarray, levels: int = LAPLACIAN_LEVELS) -> np.ndarray:
    """Float H×W Laplacian-pyramid fusion of two grey images (see the module docstring)."""
    return laplacian_fusion(ir, vis, levels, np.maximum)


IR_CONTRAST_GAIN = 3.0
"""Weight ``k`` of IR's positive local contrast added to the visible image by ``ir-contrast``."""
IR_CONTRAST_SIGMA_FRACTION = 1.0 / 60.0
"""σ of ``ir-contrast``'s local IR mean as a fraction of the image's short side (8 px at 480×640)."""


def ir_contrast_fusion(ir: np.ndarray, vis: np.ndarray, gain: float = IR_CONTRAST_GAIN,
                       sigma: Optional[float] = None) -> np.ndarray:
    """Float H×W ``vis + gain·relu(ir − G_σ * ir)`` of two grey images in [0, 255] (module docstring);
    ``sigma`` defaults to the short side × :data:`IR_CONTRAST_SIGMA_FRACTION`."""
    a, b = np.asarray(ir, np.float64), np.asarray(vis, np.float64)
    if sigma is None:
        sigma = min(a.shape) * IR_CONTRAST_SIGMA_FRACTION
    local = _separable_blur(a, gaussian_taps(sigma), "reflect" if min(a.shape) > 1 else "edge")
    return b + gain * np.maximum(a - local, 0.0)


def warm_contrast_map(ir: np.ndarray) -> np.ndarray:
    """Float H×W ``relu(G₂ * ir − G₈ * ir)`` (:data:`WARM_CONTRAST_SIGMAS`, edge-replicated borders)."""
    a = np.asarray(ir, np.float64)
    fine, coarse = (_separable_blur(a, gaussian_taps(s), "edge") for s in WARM_CONTRAST_SIGMAS)
    return np.maximum(fine - coarse, 0.0)


def region_contrast_fusion(ir: np.ndarray, vis: np.ndarray, gain: float = REGION_CONTRAST_GAIN) -> np.ndarray:
    """Float H×W ``region-max + gain·relu(G₂ * ir − G₈ * ir)`` of two grey images in [0, 255]:
    the ``region-contrast`` head with ``z = r = 0`` and a constant gain (module docstring)."""
    return region_max_fusion(ir, vis) + gain * warm_contrast_map(ir)


GAMMA_TARGET = 0.4
"""Mean visible intensity (in [0, 1]) that ``gamma-contrast`` lifts a dark image toward."""
GAMMA_MIN = 0.35
"""Smallest gamma :func:`brighten_dark` applies (a nearly black image is not stretched without bound)."""


def brighten_dark(vis: np.ndarray, target: float = GAMMA_TARGET) -> np.ndarray:
    """Float H×W ``255·(vis/255)^γ``, ``γ = clip(ln target / ln m, GAMMA_MIN, 1)``, ``m`` = mean of
    ``vis/255``: a dark image's mean lifted toward ``target``, an image at or above it unchanged (the numpy
    twin of :func:`dfsfuse.models.blocks.brighten_dark`, which a ``student_fast`` with ``vis_tone`` applies)."""
    v = np.clip(np.asarray(vis, np.float64) / 255.0, 0.0, 1.0)
    m = float(np.clip(v.mean(), 1e-3, 0.999))
    return 255.0 * v ** float(np.clip(np.log(target) / np.log(m), GAMMA_MIN, 1.0))


def gamma_contrast_fusion(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """Float H×W ``region-contrast`` rule of ``ir`` and :func:`brighten_dark` ``(vis)`` (module docstring)."""
    return region_contrast_fusion(ir, brighten_dark(vis))


def baseline_fusion(ir: np.ndarray, vis: np.ndarray, method: str) -> np.ndarray:
    """Fuse two H×W grey images in [0, 255] with a fixed rule; returns H×W uint8.

    ``avg``: ``round_half_even((A + B) / 2)``; ``max``: pixelwise maximum; ``ir`` / ``vis``:
    a copy of that input (rounded). Raises ``ValueError`` for an unknown method or
    mismatched shapes.
    """
    if method not in BASELINE_METHODS:
        raise ValueError(f"unknown baseline method {method!r}; choose from {', '.join(BASELINE_METHODS)}")
    ir = np.asarray(ir)
    vis = np.asarray(vis)
    if ir.ndim != 2 or ir.shape != vis.shape:
        raise ValueError(f"ir and vis must be H×W images of the same size; got {ir.shape} and {vis.shape}")
    a = ir.astype(np.float64)
    b = vis.astype(np.float64)
    if method == "avg":
        fused = (a + b) / 2
    elif method == "max":
        fused = np.maximum(a, b)
    elif method == "max-gain":
        m = np.maximum(a, b)
        fused = m.mean() + CONTRAST_GAIN * (m - m.mean())
    elif method == "poisson":
        fused = poisson_fusion(a, b)
    elif method == "region-max":
        fused = region_max_fusion(a, b)
    elif method == "laplacian":
        fused = laplacian_max_fusion(a, b)
    elif method == "ir-contrast":
        fused = ir_contrast_fusion(a, b)
    elif method == "region-contrast":
        fused = region_contrast_fusion(a, b)
    elif method == "gamma-contrast":
        fused = gamma_contrast_fusion(a, b)
    elif method == "ir":
        fused = a
    else:
        fused = b
    return np.clip(np.round(fused), 0, 255).astype(np.uint8)
