"""Fusion quality metrics (EN … PSNR, as published tables compute them) and segmentation mIoU.

Everything is torch, batched, and runs on CPU or GPU::

    from dfsfuse.metrics import fusion_metrics
    values = fusion_metrics(fused, ir, vis)   # H×W grey levels in [0, 255]
"""

from .fusion import (
    METRIC_NAMES,
    MIN_SIDE,
    MetricAccumulator,
    average_gradient,
    correlation,
    entropy,
    fusion_metrics,
    fusion_metrics_batch,
    mse,
    mutual_information,
    psnr,
    qabf,
    scd,
    spatial_frequency,
    ssim,
    standard_deviation,
    vif,
)
from .segmentation import ConfusionMatrix, FalsePositiveDistance
from .stretch import STRETCH_MODES, apply_stretch

__all__ = [
    "METRIC_NAMES",
    "STRETCH_MODES",
    "apply_stretch",
    "MIN_SIDE",
    "ConfusionMatrix",
    "FalsePositiveDistance",
    "MetricAccumulator",
    "average_gradient",
    "correlation",
    "entropy",
    "fusion_metrics",
    "fusion_metrics_batch",
    "mse",
    "mutual_information",
    "psnr",
    "qabf",
    "scd",
    "spatial_frequency",
    "ssim",
    "standard_deviation",
    "vif",
]
