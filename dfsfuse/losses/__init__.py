"""Losses for fusion, distillation and semantics.

Convention: composite losses (``FusionLoss``, ``DistilledSemanticLoss``) return
``dict[str, Tensor]`` of already-weighted scalar terms (zero-weight terms absent); the loss
is their sum (:func:`total_loss`) and the trainer logs each term. Single terms return one
scalar. Optional per-pixel weight maps are ``B×1×H×W`` and reduce as ``sum(w·l)/sum(w)``.
"""

from .class_balance import (
    MSRS_CLASS_WEIGHTS,
    MSRS_TRAIN_CLASS_PIXELS,
    SEG_LOSS_MODES,
    SegmentationCE,
    class_weights_from_labels,
    enet_class_weights,
    label_pixel_counts,
    ohem_ce,
)
from .distill import (
    FeatureDistillLoss,
    FrequencyDistillLoss,
    output_distill,
    standardize_features,
)
from .fusion import (
    FusionLoss,
    gradient_loss,
    gradient_magnitude,
    intensity_loss,
    resize_weight,
    sobel_gradients,
    ssim_loss,
    ssim_map,
    weighted_mean,
)
from .semantic import (
    MSRS_CLASS_IMPORTANCE,
    DistilledSemanticLoss,
    batch_class_diversity,
    cross_seg_consistency,
    pixel_entropy,
    seg_kl,
    segmentation_ce,
    semantic_weight_map,
)
from .structure import sobel_structure, structure_loss, structure_magnitude
from .weighting import DynamicWeights, total_loss

__all__ = [
    "FusionLoss",
    "intensity_loss",
    "gradient_loss",
    "ssim_loss",
    "ssim_map",
    "sobel_gradients",
    "gradient_magnitude",
    "weighted_mean",
    "resize_weight",
    "output_distill",
    "standardize_features",
    "FeatureDistillLoss",
    "FrequencyDistillLoss",
    "MSRS_CLASS_IMPORTANCE",
    "semantic_weight_map",
    "segmentation_ce",
    "SEG_LOSS_MODES",
    "SegmentationCE",
    "ohem_ce",
    "enet_class_weights",
    "label_pixel_counts",
    "class_weights_from_labels",
    "MSRS_TRAIN_CLASS_PIXELS",
    "MSRS_CLASS_WEIGHTS",
    "seg_kl",
    "cross_seg_consistency",
    "batch_class_diversity",
    "pixel_entropy",
    "DistilledSemanticLoss",
    "DynamicWeights",
    "total_loss",
    "sobel_structure",
    "structure_magnitude",
    "structure_loss",
]
