"""A straightforward numpy/scipy/scikit-image/scikit-learn fusion evaluator, the way papers compute it.

Written from ``docs/metrics.md``, one metric per function, float arrays H×W in [0, 255].
It is the baseline of ``benchmarks/metrics_speed.py`` and the independent oracle of
``tests/test_metrics.py``; nothing in :mod:`dfsfuse` imports it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity
from sklearn.metrics import mutual_info_score

NAMES = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "MSE", "PSNR")


def en(f: np.ndarray) -> float:
    """Shannon entropy (bits) of the 256-bin histogram of ``uint8(round(F))``."""
    p = np.bincount(np.round(f).astype(np.uint8).ravel(), minlength=256) / f.size
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p)))


def sd(f: np.ndarray) -> float:
    """Population standard deviation."""
    return float(np.std(f.astype(np.float64)))


def sf(f: np.ndarray) -> float:
    """Spatial frequency from forward differences over valid pixels."""
    f = f.astype(np.float64)
    return float(np.sqrt(np.mean(np.diff(f, axis=1) ** 2) + np.mean(np.diff(f, axis=0) ** 2)))


def ag(f: np.ndarray) -> float:
    """Average gradient with ``np.gradient`` differences."""
    gy, gx = np.gradient(f.astype(np.float64))
    return float(np.mean(np.sqrt((gx**2 + gy**2) / 2)))


def mi(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """``I(F;A) + I(F;B)`` in nats, every distinct value its own bin."""
    return float(mutual_info_score(f.ravel(), a.ravel()) + mutual_info_score(f.ravel(), b.ravel()))


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64) - x.mean(dtype=np.float64)
    y = y.astype(np.float64) - y.mean(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y)))


def scd(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Sum of the correlations of differences (NaN where F equals an input)."""
    f, a, b = (x.astype(np.float64) for x in (f, a, b))
    return _corr(a, f - b) + _corr(b, f - a)


def cc(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the correlations of F with A and with B."""
    return (_corr(a, f) + _corr(b, f)) / 2


def mse(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the two mean squared errors."""
    f, a, b = (x.astype(np.float64) for x in (f, a, b))
    return float((np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2)


def psnr(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """PSNR with the maximum of F as the peak."""
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(float(np.max(f)) ** 2 / mse(f, a, b)))


def gaussian_window(n: int) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', n, n / 5)``."""
    sigma = n / 5.0
    r = (n - 1) / 2.0
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h / h.sum()


def vifp(ref: np.ndarray, dist: np.ndarray, sigma_nsq: float = 2.0, eps: float = 1e-10) -> float:
    """Pixel-domain VIF of ``dist`` against ``ref`` over four scales."""
    ref = ref.astype(np.float64)
    dist = dist.astype(np.float64)
    num = den = 0.0
    for scale in range(4):
        win = np.rot90(gaussian_window(2 ** (4 - scale) + 1), 2)
        if scale > 0:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1 = convolve2d(ref, win, mode="valid")
        mu2 = convolve2d(dist, win, mode="valid")
        s1 = convolve2d(ref * ref, win, mode="valid") - mu1 * mu1
        s2 = convolve2d(dist * dist, win, mode="valid") - mu2 * mu2
        s12 = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        low1 = s1 < eps
        g[low1] = 0
        sv[low1] = s2[low1]
        s1[low1] = 0
        low2 = s2 < eps
        g[low2] = 0
        sv[low2] = 0
        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1 + g * g * s1 / (sv + sigma_nsq)))
        den += np.sum(np.log10(1 + s1 / sigma_nsq))
    with np.errstate(invalid="ignore"):
        value = num / den
    return 1.0 if np.isnan(value) else float(value)


def vif(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """``vifp(A→F) + vifp(B→F)``."""
    return vifp(a, f) + vifp(b, f)


_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float32)


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = img.astype(np.float32)
    gx = convolve2d(img, _SOBEL_X, mode="same").astype(np.float32)
    gy = convolve2d(img, _SOBEL_Y, mode="same").astype(np.float32)
    strength = np.sqrt(gx * gx + gy * gy)
    angle = np.full_like(img, np.float32(math.pi / 2))
    nz = gx != 0
    angle[nz] = np.arctan(gy[nz] / gx[nz])
    return strength, angle


def _edge_preservation(g_in, a_in, g_f, a_f) -> np.ndarray:
    ratio = np.zeros_like(g_in)
    gt, eq, lt = g_in > g_f, g_in == g_f, g_in < g_f
    ratio[gt] = g_f[gt] / g_in[gt]
    ratio[eq] = g_f[eq]  # the evaluator's quirk: g_F, not 1
    ratio[lt] = g_in[lt] / g_f[lt]
    orient = 1 - np.abs(a_in - a_f) / np.float32(math.pi / 2)
    q_g = np.float32(0.9994) / (1 + np.exp(np.float32(-15) * (ratio - np.float32(0.5))))
    q_a = np.float32(0.9879) / (1 + np.exp(np.float32(-22) * (orient - np.float32(0.8))))
    return q_g * q_a


def qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Xydeas–Petrović Q^AB/F with float32 intermediates."""
    g_a, a_a = _sobel(a)
    g_b, a_b = _sobel(b)
    g_f, a_f = _sobel(f)
    q_af = _edge_preservation(g_a, a_a, g_f, a_f)
    q_bf = _edge_preservation(g_b, a_b, g_f, a_f)
    return float(np.sum(q_af * g_a + q_bf * g_b, dtype=np.float64) / np.sum(g_a + g_b, dtype=np.float64))


def ssim(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """``ssim(F, A) + ssim(F, B)``: 7×7 uniform window, sample covariance, data_range 2."""
    kw = dict(win_size=7, use_sample_covariance=True, gaussian_weights=False, data_range=2.0)
    f, a, b = (x.astype(np.float64) for x in (f, a, b))
    return float(structural_similarity(f, a, **kw) + structural_similarity(f, b, **kw))


def reference_metrics(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Every metric for one fused image F with IR A and VIS B, in the order of :data:`NAMES`."""
    return {
        "EN": en(f),
        "SD": sd(f),
        "SF": sf(f),
        "AG": ag(f),
        "MI": mi(f, a, b),
        "SCD": scd(f, a, b),
        "VIF": vif(f, a, b),
        "Qabf": qabf(f, a, b),
        "SSIM": ssim(f, a, b),
        "CC": cc(f, a, b),
        "MSE": mse(f, a, b),
        "PSNR": psnr(f, a, b),
    }
