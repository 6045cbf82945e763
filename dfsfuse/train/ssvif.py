"""SSVIF: label-free, segmentation-oriented fusion training by cross-segmentation consistency.

No segmentation label is read. A light head (:class:`FeatureSegHead`) segments the
*feature-level* fusion (the fusion model's ``features["fusion"]``) and the segmenter segments
the *pixel-level* fusion (the fused image); the two segmentations must agree
(:func:`~dfsfuse.losses.cross_seg_consistency`, symmetric KL, both sides trained), so the
fusion network learns to keep what makes the scene segmentable.

Two stages: for the first ``warmup`` steps only the fusion loss trains; then fusion and
consistency train jointly. The objective returns the terms ``fusion`` (the whole weighted
fusion loss) and ``consistency``, which :func:`ssvif_dynamic_weights` balances dynamically
(``DynamicWeights``) once the joint stage has two steps of history. During the warm-up the
consistency term is still computed, with weight 0: every parameter takes part in every step,
as DDP requires, and no gradient of it reaches any network.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..losses import (
    DynamicWeights,
    FusionLoss,
    batch_class_diversity,
    cross_seg_consistency,
    pixel_entropy,
    total_loss,
)
from ..models.segmentation import FeatureSegHead  # lived here before; kept importable from this module
from .config import LossConfig
from .objectives import auxiliary_terms, fusion_loss_from

SSVIF_TERMS: tuple[str, ...] = ("fusion", "consistency")
"""The terms :class:`SSVIFObjective` returns that dynamic weighting balances (``aux_*`` terms pass through)."""

SSVIF_CONFIG_KEYS: tuple[str, ...] = (
    "consistency",
    "consistency_warmup",
    "consistency_temperature",
    "consistency_dynamic",
    "consistency_diversity",
    "consistency_confidence",
)
"""The ``loss.*`` config keys SSVIF reads (see :meth:`SSVIFObjective.from_config`)."""


class SSVIFObjective(nn.Module):
    """Stage 1, label-free: fusion loss + cross-segmentation consistency, fusion warm-up first.

    ``forward(batch)`` reads only ``ir`` and ``vis_y`` and returns already weighted terms:
    ``fusion`` (sum of the fusion loss's terms), ``aux_*`` (the fusion model's own losses,
    e.g. SSPFusion's structure loss) and ``consistency`` (``w · cross_seg_consistency`` of
    the feature-level and pixel-level segmentations; weight 0 before ``warmup`` steps).
    Constant segmentations agree trivially, so with ``diversity > 0`` the term ``diversity``
    (``w · ½ Σ batch_class_diversity``, KL of each segmentation's batch-mean class distribution
    to uniform) keeps both using all classes, and with ``confidence > 0`` the term
    ``confidence`` (``w · ½ Σ pixel_entropy``) makes each pixel commit to a class; both follow
    the consistency's warm-up switch and are outside the dynamic weighting.
    Call :meth:`set_step` with the step about to run before each optimizer step.

    Attributes ``fusion`` and ``segmenter`` have the names :class:`TeacherObjective` uses, so
    the trained pair exports the same way; ``feature_head`` is training-only.

    Args:
        fusion: the fusion model (its ``feature_channels["fusion"]`` sizes the head).
        segmenter: the segmentation model run on the fused image (``num_classes`` sizes the head).
        fusion_loss: the unsupervised fusion loss.
        consistency: weight of the consistency term in the joint stage (positive).
        warmup: fusion-only steps before the joint stage.
        temperature: softmax temperature of the consistency term.
        head_width: channels of :class:`FeatureSegHead`.
        diversity: weight of the anti-collapse batch class-diversity term (0: absent).
        confidence: weight of the per-pixel entropy term (0: absent).
    """

    def __init__(
        self,
        fusion: nn.Module,
        segmenter: nn.Module,
        fusion_loss: FusionLoss,
        consistency: float = 1.0,
        warmup: int = 0,
        temperature: float = 1.0,
        head_width: int = 32,
        diversity: float = 0.0,
        confidence: float = 0.0,
    ) -> None:
        super().__init__()
        if consistency <= 0:
            raise ValueError(f"consistency weight must be positive for SSVIF, got {consistency}")
        if warmup < 0:
            raise ValueError(f"warmup must be non-negative, got {warmup}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if diversity < 0 or confidence < 0:
            raise ValueError(f"diversity and confidence weights must be non-negative, got {diversity}, {confidence}")
        self.fusion = fusion
        self.segmenter = segmenter
        self.feature_head = FeatureSegHead(fusion.feature_channels["fusion"], segmenter.num_classes, head_width)
        self.fusion_loss = fusion_loss
        self.w_consistency = float(consistency)
        self.warmup = int(warmup)
        self.temperature = float(temperature)
        self.w_diversity = float(diversity)
        self.w_confidence = float(confidence)
        self.step = 0

    @classmethod
    def from_config(cls, fusion: nn.Module, segmenter: nn.Module, cfg: LossConfig) -> SSVIFObjective:
        """Build from a ``LossConfig`` carrying the keys in :data:`SSVIF_CONFIG_KEYS`."""
        return cls(
            fusion,
            segmenter,
            fusion_loss_from(cfg),
            consistency=cfg.consistency,
            warmup=cfg.consistency_warmup,
            temperature=cfg.consistency_temperature,
            diversity=cfg.consistency_diversity,
            confidence=cfg.consistency_confidence,
        )

    def set_step(self, step: int) -> None:
        """Record the (0-based) optimizer step about to run; it selects warm-up or joint training."""
        self.step = int(step)

    @property
    def term_names(self) -> list[str]:
        """The weighted terms :meth:`forward` returns that dynamic weighting balances (:data:`SSVIF_TERMS`;
        ``aux_*``, ``diversity`` and ``confidence`` pass through), as ``StudentObjective.term_names``."""
        return list(SSVIF_TERMS)

    @property
    def joint(self) -> bool:
        """Whether the current step is in the joint (fusion + consistency) stage."""
        return self.step >= self.warmup

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Weighted terms ``fusion``, ``aux_*`` and ``consistency`` of one batch (only ``ir``/``vis_y`` read)."""
        ir, vis_y = batch["ir"], batch["vis_y"]
        out = self.fusion(ir, vis_y)
        fusion_name, consistency_name = SSVIF_TERMS
        terms = {fusion_name: total_loss(self.fusion_loss(out.fused, ir, vis_y))}
        terms.update(auxiliary_terms(self.fusion, out, batch))
        pixel_level = self.segmenter(out.fused).logits
        feature_level = self.feature_head(out.features["fusion"])
        weight = self.w_consistency if self.joint else 0.0
        terms[consistency_name] = weight * cross_seg_consistency(feature_level, pixel_level, T=self.temperature)
        on = 1.0 if self.joint else 0.0
        if self.w_diversity:
            terms["diversity"] = on * self.w_diversity * 0.5 * (
                batch_class_diversity(feature_level, self.temperature) + batch_class_diversity(pixel_level, self.temperature))
        if self.w_confidence:
            terms["confidence"] = on * self.w_confidence * 0.5 * (
                pixel_entropy(feature_level, self.temperature) + pixel_entropy(pixel_level, self.temperature))
        return terms

    def extra_repr(self) -> str:
        return (f"consistency={self.w_consistency}, warmup={self.warmup}, temperature={self.temperature}, "
                f"diversity={self.w_diversity}, confidence={self.w_confidence}")


def ssvif_dynamic_weights(cfg: LossConfig) -> DynamicWeights | None:
    """Dynamic weights over :data:`SSVIF_TERMS` (``None`` when ``cfg.consistency_dynamic`` is off).

    They stay at 1 through the warm-up and the first two joint steps (``warmup + 2`` updates),
    so the ratios only ever compare joint-stage losses.
    """
    if not cfg.consistency_dynamic:
        return None
    return DynamicWeights(SSVIF_TERMS, temperature=cfg.dynamic_temperature, warmup=cfg.consistency_warmup + 2)
