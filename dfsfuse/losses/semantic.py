"""Semantic losses: semantic weight map, segmentation CE/KL, the distilled semantic loss, and
cross-segmentation consistency (label-free, SSVIF)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reduction import global_mean, global_sum
from .class_balance import MSRS_CLASS_WEIGHTS, SEG_LOSS_MODES, SegmentationCE, ohem_ce
from .distill import FeatureDistillLoss, FrequencyDistillLoss, output_distill
from .fusion import no_autocast, weighted_mean
from .iou import lovasz_softmax

__all__ = [
    "MSRS_CLASS_IMPORTANCE",
    "semantic_weight_map",
    "segmentation_ce",
    "seg_kl",
    "cross_seg_consistency",
    "batch_class_diversity",
    "pixel_entropy",
    "DistilledSemanticLoss",
]

# Per-class importance for MSRS (K=9): 0 unlabeled/background, 1 car, 2 person, 3 bike,
# 4 curve, 5 car_stop, 6 guardrail, 7 color_cone, 8 bump. Background adds nothing on top of
# the base weight; people weigh most, vehicles next, road furniture/markings 1.0.
MSRS_CLASS_IMPORTANCE: tuple[float, ...] = (0.0, 1.5, 2.0, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0)


def semantic_weight_map(
    seg_logits: Tensor,
    class_importance: Sequence[float] | Tensor = MSRS_CLASS_IMPORTANCE,
    base: float = 1.0,
    detach: bool = True,
) -> Tensor:
    """Per-pixel weight ``base + Σ_k softmax(logits)_k · importance_k``, normalised to mean 1 per image.

    ``seg_logits`` is ``B×K×H×W``; returns ``B×1×H×W`` (float32). The per-image
    normalisation keeps a loss weighted by the map on the same scale as the unweighted
    one: the map only redistributes emphasis towards semantically rich pixels.
    """
    importance = torch.as_tensor(class_importance, dtype=torch.float32, device=seg_logits.device)
    if importance.ndim != 1 or importance.numel() != seg_logits.shape[1]:
        raise ValueError(
            f"class_importance needs {seg_logits.shape[1]} values, got shape {tuple(importance.shape)}"
        )
    if base < 0 or bool((importance < 0).any()):
        raise ValueError("base and class_importance must be non-negative")
    logits = seg_logits.detach() if detach else seg_logits
    with no_autocast(logits):
        probs = logits.float().softmax(dim=1)
        m = base + torch.einsum("bkhw,k->bhw", probs, importance).unsqueeze(1)
    return m / m.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def segmentation_ce(
    logits: Tensor,
    labels: Tensor,
    ignore_index: int = 255,
    class_weights: Tensor | Sequence[float] | None = None,
    mode: str | None = None,
    ohem_thresh: float = 0.7,
    ohem_min_kept: float = 1 / 16,
) -> Tensor:
    """Cross-entropy of ``B×K×H×W`` logits against int64 ``B×H×W`` labels, ignoring ``ignore_index``.

    ``mode`` (see :mod:`.class_balance`):

    - ``"plain"``: mean over labelled pixels;
    - ``"weighted"``: ``Σ w_y·l / Σ w_y`` like ``F.cross_entropy(weight=)``; ``class_weights``
      default to :data:`MSRS_CLASS_WEIGHTS` (ENet ``1/ln(1.02 + p)`` of the MSRS train labels);
    - ``"ohem"``: SeAFusion's online hard example mining (:func:`ohem_ce`), pixels whose
      true-class probability is below ``ohem_thresh``, at least ``ohem_min_kept`` of the
      labelled pixels (optionally class-weighted);
    - ``None`` (default): ``"weighted"`` when ``class_weights`` are given, else ``"plain"``.

    When every pixel is ignored it returns 0 that is still connected to ``logits`` (no NaN).
    Under ``torch.distributed`` the denominator (labelled pixels, or their class-weight sum) is
    that of all ranks (:func:`dfsfuse.reduction.global_mean`): a DDP run on a mix of labelled
    and unlabelled samples gives the gradients of one process on the global batch.
    """
    if mode is None:
        mode = "plain" if class_weights is None else "weighted"
    if mode not in SEG_LOSS_MODES:
        raise ValueError(f"unknown segmentation loss mode {mode!r}; choose from {', '.join(SEG_LOSS_MODES)}")
    if mode == "plain" and class_weights is not None:
        raise ValueError("class_weights need mode 'weighted' or 'ohem', not 'plain'")
    logits = logits.float()
    if mode == "ohem":
        return ohem_ce(logits, labels, ohem_thresh, ohem_min_kept, ignore_index, class_weights)
    if mode == "weighted" and class_weights is None:
        class_weights = MSRS_CLASS_WEIGHTS
    if class_weights is not None:
        class_weights = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
        if class_weights.shape != (logits.shape[1],):
            raise ValueError(f"class_weights need {logits.shape[1]} values, got shape {tuple(class_weights.shape)}")
    if logits.is_cuda and torch.are_deterministic_algorithms_enabled():
        loss_sum = cross_entropy_sum(logits, labels, class_weights, ignore_index)
    else:
        loss_sum = F.cross_entropy(
            logits, labels, weight=class_weights, ignore_index=ignore_index, reduction="sum"
        )
    valid = labels != ignore_index
    if class_weights is None:
        den = valid.sum().to(loss_sum.dtype)
    else:
        den = class_weights[labels[valid]].sum()
    return global_mean(loss_sum, den, 1e-12)


def cross_entropy_sum(logits: Tensor, labels: Tensor, class_weights: Tensor | None = None,
                      ignore_index: int = 255) -> Tensor:
    """``F.cross_entropy(logits, labels, weight=class_weights, ignore_index=, reduction="sum")``
    from a log-softmax, a gather and a plain sum: the same value up to the order of the additions.

    CUDA's NLL loss sums with atomic adds, so its value changes from run to run;
    :func:`segmentation_ce` uses this instead on CUDA when deterministic algorithms are enabled.
    """
    valid = labels != ignore_index
    target = torch.where(valid, labels, torch.zeros_like(labels))
    picked = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    weight = valid.to(picked.dtype)
    if class_weights is not None:
        weight = weight * class_weights.to(picked.dtype)[target]
    return -(picked * weight).sum()


def seg_kl(
    student_logits: Tensor, teacher_logits: Tensor, T: float = 2.0, weight: Tensor | None = None
) -> Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` per pixel, averaged (teacher detached).

    The ``T²`` factor keeps gradient magnitudes comparable across temperatures (Hinton et al.).
    """
    log_p_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / T, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1, keepdim=True)
    return (T * T) * weighted_mean(kl, weight)


def cross_seg_consistency(
    logits_a: Tensor, logits_b: Tensor, T: float = 1.0, weight: Tensor | None = None
) -> Tensor:
    """Symmetric KL ``T² · ½ [KL(p_a‖p_b) + KL(p_b‖p_a)]`` between two segmentations, averaged.

    Label-free (SSVIF): both sides receive gradients. Exactly 0 for identical logits,
    positive otherwise. Per pixel it equals ``½ Σ_k (p_a − p_b)(log p_a − log p_b)``.
    """
    log_a = F.log_softmax(logits_a.float() / T, dim=1)
    log_b = F.log_softmax(logits_b.float() / T, dim=1)
    sym = 0.5 * ((log_a.exp() - log_b.exp()) * (log_a - log_b)).sum(dim=1, keepdim=True)
    return (T * T) * weighted_mean(sym, weight)


def batch_class_diversity(logits: Tensor, T: float = 1.0) -> Tensor:
    """``KL(p̄ ‖ uniform) = log K − H(p̄)`` of the batch-mean class distribution ``p̄`` (IIC/SCAN-style).

    ``p̄`` is the mean over every pixel of the batch of ``softmax(logits / T)`` (``B×K×H×W``
    logits). 0 when the batch uses the classes evenly, ``log K`` when every pixel is sure of one
    and the same class: the term that keeps a label-free segmenter (SSVIF's consistency, which
    constant segmentations satisfy trivially) from collapsing. Under ``torch.distributed``
    ``p̄`` is the mean over all ranks' pixels (differentiable all-reduce), so DDP gives the
    one-process loss and gradient of the global batch.
    """
    probs = F.softmax(logits.float() / T, dim=1)
    total = probs.sum(dim=(0, 2, 3))
    count = torch.tensor(float(probs.numel() // probs.shape[1]), device=probs.device)
    mean = global_sum(total) / global_sum(count)
    k = probs.shape[1]
    return math.log(k) + (mean * mean.clamp_min(1e-12).log()).sum()


def pixel_entropy(logits: Tensor, T: float = 1.0, weight: Tensor | None = None) -> Tensor:
    """Mean per-pixel entropy ``H(softmax(logits / T))`` (nats): low when each pixel is confident.

    Minimising it (with :func:`batch_class_diversity` keeping the classes in use) makes a
    label-free segmentation commit to classes instead of spreading probability.
    """
    log_p = F.log_softmax(logits.float() / T, dim=1)
    return weighted_mean(-(log_p.exp() * log_p).sum(dim=1, keepdim=True), weight)


class DistilledSemanticLoss(nn.Module):
    """DFSFuse's distilled semantic loss for training the student from a frozen teacher.

    Terms (already weighted; a term with weight 0, or ``seg_ce`` without labels, is absent):

    - ``output``: L1 between student and teacher fused images,
    - ``feature``: adapted, standardized feature matching (:class:`FeatureDistillLoss`),
    - ``frequency``: DWT sub-band L1 (:class:`FrequencyDistillLoss`),

      each weighted per pixel by :func:`semantic_weight_map` of the segmenter's logits on the
      teacher's fusion (detached) when ``semantic_weighting``;
    - ``seg_kl``: :func:`seg_kl` between segmentations of the student's and teacher's fusions,
    - ``seg_ce``: :func:`segmentation_ce` of the segmentation of the student's fusion (plain, or
      as configured by ``seg_criterion``, a :class:`SegmentationCE`),
    - ``seg_iou``: :func:`~dfsfuse.losses.iou.lovasz_softmax` (an mIoU surrogate) of the same
      segmentation against the same labels.

    ``forward(student_out, teacher_out, seg_student_logits, seg_teacher_logits, labels=None)``;
    ``*_out`` need ``.fused`` (``B×1×H×W``) and ``.features`` (name → map). The loss is the sum
    of the returned dict. Trainable state: the feature adapters (``self.feature.adapters``),
    built only when ``w_feature > 0`` so DDP sees no unused parameters.
    """

    def __init__(
        self,
        student_channels: Mapping[str, int],
        teacher_channels: Mapping[str, int],
        w_output: float = 1.0,
        w_feature: float = 0.5,
        w_freq: float = 0.5,
        w_seg_kl: float = 0.1,
        w_seg_ce: float = 0.1,
        temperature: float = 2.0,
        class_importance: Sequence[float] | Tensor = MSRS_CLASS_IMPORTANCE,
        base: float = 1.0,
        semantic_weighting: bool = True,
        feature_names: Sequence[str] | None = None,
        feature_loss: str = "l1",
        wave: str = "haar",
        levels: int = 1,
        ignore_index: int = 255,
        seg_criterion: SegmentationCE | None = None,
        w_seg_iou: float = 0.0,
    ):
        super().__init__()
        if min(w_output, w_feature, w_freq, w_seg_kl, w_seg_ce, w_seg_iou) < 0:
            raise ValueError("loss weights must be non-negative")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.w_output, self.w_feature, self.w_freq = w_output, w_feature, w_freq
        self.w_seg_kl, self.w_seg_ce, self.w_seg_iou = w_seg_kl, w_seg_ce, w_seg_iou
        self.temperature = temperature
        self.class_importance = tuple(float(v) for v in torch.as_tensor(class_importance).tolist())
        self.base = base
        self.semantic_weighting = semantic_weighting
        self.ignore_index = ignore_index
        # how ``seg_ce`` is computed (plain / class-weighted / OHEM); plain CE when not given
        self.seg_criterion = seg_criterion if seg_criterion is not None else SegmentationCE(ignore_index=ignore_index)
        self.feature = (
            FeatureDistillLoss(student_channels, teacher_channels, feature_names, feature_loss)
            if w_feature
            else None
        )
        self.frequency = FrequencyDistillLoss(wave=wave, levels=levels) if w_freq else None

    @property
    def term_names(self) -> list[str]:
        """Names of the terms :meth:`forward` can return (those with a non-zero weight), in order."""
        weights = (("output", self.w_output), ("feature", self.w_feature), ("frequency", self.w_freq),
                   ("seg_kl", self.w_seg_kl), ("seg_ce", self.w_seg_ce), ("seg_iou", self.w_seg_iou))
        return [name for name, w in weights if w]

    def forward(
        self,
        student_out: Any,
        teacher_out: Any,
        seg_student_logits: Tensor | None = None,
        seg_teacher_logits: Tensor | None = None,
        labels: Tensor | None = None,
        seg_ce_logits: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The weighted terms; ``seg_ce_logits`` (default ``seg_student_logits``) are what ``seg_ce`` and
        ``seg_iou`` read."""
        weight = None
        if self.semantic_weighting:
            if seg_teacher_logits is None:
                raise ValueError("semantic_weighting needs seg_teacher_logits")
            weight = semantic_weight_map(seg_teacher_logits, self.class_importance, self.base)

        s_fused, t_fused = student_out.fused, teacher_out.fused
        terms: dict[str, Tensor] = {}
        if self.w_output:
            terms["output"] = self.w_output * output_distill(s_fused, t_fused, weight)
        if self.feature is not None:
            terms["feature"] = self.w_feature * self.feature(
                student_out.features, teacher_out.features, weight
            )
        if self.frequency is not None:
            terms["frequency"] = self.w_freq * self.frequency(s_fused, t_fused, weight)
        if self.w_seg_kl:
            if seg_student_logits is None or seg_teacher_logits is None:
                raise ValueError("w_seg_kl > 0 needs seg_student_logits and seg_teacher_logits")
            terms["seg_kl"] = self.w_seg_kl * seg_kl(
                seg_student_logits, seg_teacher_logits, T=self.temperature
            )
        if (self.w_seg_ce or self.w_seg_iou) and labels is not None:
            ce_logits = seg_ce_logits if seg_ce_logits is not None else seg_student_logits
            if ce_logits is None:
                raise ValueError("w_seg_ce or w_seg_iou > 0 with labels needs seg_student_logits")
            if self.w_seg_ce:
                terms["seg_ce"] = self.w_seg_ce * self.seg_criterion(ce_logits, labels)
            if self.w_seg_iou:
                terms["seg_iou"] = self.w_seg_iou * lovasz_softmax(ce_logits, labels, self.ignore_index)
        return terms

    def extra_repr(self) -> str:
        return (
            f"w_output={self.w_output}, w_feature={self.w_feature}, w_freq={self.w_freq}, "
            f"w_seg_kl={self.w_seg_kl}, w_seg_ce={self.w_seg_ce}, w_seg_iou={self.w_seg_iou}, temperature={self.temperature}, "
            f"semantic_weighting={self.semantic_weighting}"
        )
