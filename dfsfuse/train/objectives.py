"""The trained module of each stage: networks + the losses that train them, ``forward(batch) -> terms``.

Wrapping a stage's trainable parts in one module gives Accelerate/DDP a single thing to
prepare, and keeps frozen networks (the teacher, the segmenter in stage 2) out of it.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from ..losses import (
    MSRS_CLASS_IMPORTANCE,
    DistilledSemanticLoss,
    FusionLoss,
    SegmentationCE,
    cross_seg_consistency,
)
from ..models import create_model
from ..models.segmentation import FeatureSegHead
from ..ops import upsample_bilinear
from .config import LossConfig
from .data import IGNORE_INDEX


def _labels_or_ignore(batch: dict) -> Tensor:
    """The batch's labels, or all-ignore labels (so the segmenter always takes part: DDP needs it)."""
    if "label" in batch:
        return batch["label"]
    ir = batch["ir"]
    return torch.full((ir.shape[0], *ir.shape[-2:]), IGNORE_INDEX, dtype=torch.long, device=ir.device)


def auxiliary_terms(model: nn.Module, out, batch: dict) -> Dict[str, Tensor]:
    """Losses a fusion architecture defines for itself (e.g. SSPFusion's structure loss).

    A model opts in by defining ``auxiliary_losses(output, ir, vis_y) -> dict[str, Tensor]``
    (already weighted terms); their names get the prefix ``aux_``.
    """
    hook = getattr(model, "auxiliary_losses", None)
    if hook is None:
        return {}
    return {f"aux_{k}": v for k, v in hook(out, batch["ir"], batch["vis_y"]).items()}


def seg_criterion_from(cfg: LossConfig) -> SegmentationCE:
    """The segmentation CE of the config (``loss.seg_loss``: plain, weighted or ohem)."""
    try:
        return SegmentationCE(mode=cfg.seg_loss, class_weights=cfg.seg_class_weights, ohem_thresh=cfg.seg_ohem_thresh,
                              ohem_min_kept=cfg.seg_ohem_min_kept, ignore_index=IGNORE_INDEX)
    except ValueError as exc:
        raise ValueError(f"loss.seg_loss: {exc}") from None


def fusion_loss_from(cfg: LossConfig) -> FusionLoss:
    """The unsupervised fusion loss with the configured weights."""
    return FusionLoss(w_intensity=cfg.intensity, w_gradient=cfg.gradient, w_ssim=cfg.ssim,
                      w_qabf=cfg.qabf, w_vif=cfg.vif, intensity_target=cfg.intensity_target,
                      gradient_mode=cfg.gradient_mode)


class TeacherObjective(nn.Module):
    """Stage 1: a fusion network and the segmenter trained together.

    Terms: the fusion loss of the fused image, plus segmentation cross-entropy of the
    segmenter run on that fused image (labels where they exist): the gradient of the
    segmentation loss reaches the fusion network, which learns to keep what the segmenter
    needs (semantic-driven fusion). With ``train_segmenter=False`` the segmenter (e.g. one
    pre-trained in stage 0) is frozen, in eval mode even while the objective trains, and only
    the fusion network learns from its loss.
    """

    def __init__(self, fusion: nn.Module, segmenter: Optional[nn.Module], cfg: LossConfig,
                 train_segmenter: bool = True) -> None:
        super().__init__()
        self.fusion = fusion
        self.segmenter = segmenter if cfg.seg_ce > 0 else None
        self.train_segmenter = train_segmenter
        if self.segmenter is not None and not train_segmenter:
            freeze(self.segmenter)
        self.fusion_loss = fusion_loss_from(cfg)
        self.w_seg_ce = cfg.seg_ce
        self.seg_criterion = seg_criterion_from(cfg)

    def train(self, mode: bool = True) -> "TeacherObjective":
        """Train/eval mode; a frozen segmenter stays in eval mode (its BatchNorm statistics fixed)."""
        super().train(mode)
        if self.segmenter is not None and not self.train_segmenter:
            self.segmenter.eval()
        return self

    def forward(self, batch: dict) -> Dict[str, Tensor]:
        # vis_y_raw: the visible image as given, when the network brightens it itself (stages.py)
        out = self.fusion(batch["ir"], batch.get("vis_y_raw", batch["vis_y"]))
        terms = self.fusion_loss(out.fused, batch["ir"], batch["vis_y"])
        terms.update(auxiliary_terms(self.fusion, out, batch))
        if self.segmenter is not None:
            logits = self.segmenter(out.fused).logits
            terms["seg_ce"] = self.w_seg_ce * self.seg_criterion(logits, _labels_or_ignore(batch))
        return terms


class StudentObjective(nn.Module):
    """Stage 2: the student and the feature adapters of the distilled semantic loss.

    ``forward(batch, teacher_out, seg_teacher_logits, segmenter)`` takes the frozen
    teacher's output and the segmentation of the teacher's fusion (both computed without
    grad outside this module) and the frozen segmenter, which is run on the student's
    fusion so segmentation agreement and CE gradients reach the student.

    With ``cfg.student_consistency > 0`` it also returns ``student_consistency``: SSVIF's
    label-free cross-segmentation consistency moved to stage 2 — a :class:`FeatureSegHead`
    (trained here, never exported) segments the student's ``fusion`` features and must agree
    (symmetric KL at ``cfg.consistency_temperature``) with the frozen segmenter on the
    student's fused image; both the head and the student get its gradient. No label is read.
    ``num_classes`` sizes that head (the segmenter's classes).

    With ``cfg.seg_ce_cotrain > 0`` it also returns ``seg_ce_cotrain``: the segmentation CE of
    ``cotrain_segmenter`` (trainable, part of this module, never exported) on the student's fusion.
    Both it and the student get that gradient, as in SeAFusion's joint training: the fusion learns
    what a segmenter *learning on it* needs, not only what a fixed, already trained one reads.

    With a ``class_segmenter`` passed to :meth:`forward` (``loss.seg_ce_class_segmenter``), ``seg_ce``
    reads that frozen segmenter's logits on the pixels labelled ``cfg.seg_ce_classes`` and the stage-2
    segmenter's everywhere else: one CE, one normalisation, chosen classes seen through another
    segmenter (e.g. people through one pre-trained on IR; measured in the README's semantic benchmark,
    not adopted). ``seg_kl`` and the semantic weighting keep the stage-2 segmenter.
    """

    def __init__(self, student: nn.Module, teacher_channels: Dict[str, int], cfg: LossConfig,
                 num_classes: int = 9, cotrain_segmenter: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.student = student
        self.register_buffer("class_ids", torch.tensor(cfg.seg_ce_class_ids, dtype=torch.long), persistent=False)
        self.w_cotrain = float(cfg.seg_ce_cotrain)
        if self.w_cotrain > 0 and cotrain_segmenter is None:
            raise ValueError("loss.seg_ce_cotrain > 0 needs a segmenter to train with the student")
        self.cotrain_segmenter = cotrain_segmenter if self.w_cotrain > 0 else None
        importance = cfg.class_importance if cfg.class_importance is not None else MSRS_CLASS_IMPORTANCE
        self.distill = DistilledSemanticLoss(
            student.feature_channels, teacher_channels,
            w_output=cfg.output, w_feature=cfg.feature, w_freq=cfg.frequency,
            w_seg_kl=cfg.seg_kl, w_seg_ce=cfg.seg_ce, temperature=cfg.temperature,
            class_importance=importance, semantic_weighting=cfg.semantic_weighting,
            ignore_index=IGNORE_INDEX, seg_criterion=seg_criterion_from(cfg), w_seg_iou=cfg.seg_iou,
        )
        self.fusion_loss = fusion_loss_from(cfg)
        self.w_fusion = cfg.student_fusion
        self.w_consistency = float(cfg.student_consistency)
        self.consistency_temperature = float(cfg.consistency_temperature)
        self.feature_head = (FeatureSegHead(student.feature_channels["fusion"], num_classes)
                             if self.w_consistency > 0 else None)
        self.needs_segmenter = (cfg.semantic_weighting or cfg.seg_kl > 0 or cfg.seg_ce > 0 or cfg.seg_iou > 0
                                or self.w_consistency > 0)

    @property
    def term_names(self) -> list:
        """The weighted terms :meth:`forward` returns that dynamic weighting balances (``aux_*`` pass through)."""
        fusion = [f"fusion_{n}" for n in self.fusion_loss.term_names] if self.w_fusion else []
        consistency = ["student_consistency"] if self.feature_head is not None else []
        cotrain = ["seg_ce_cotrain"] if self.cotrain_segmenter is not None else []
        return [*self.distill.term_names, *consistency, *cotrain, *fusion]

    def forward(self, batch: dict, teacher_out, seg_teacher_logits: Optional[Tensor],
                segmenter: Optional[nn.Module], class_segmenter: Optional[nn.Module] = None) -> Dict[str, Tensor]:
        # vis_y_raw: the visible image as given, when the student brightens it itself (stages.py)
        out = self.student(batch["ir"], batch.get("vis_y_raw", batch["vis_y"]))
        seg_student = segmenter(out.fused).logits if segmenter is not None and self.needs_segmenter else None
        labels = _labels_or_ignore(batch) if (self.distill.w_seg_ce or self.distill.w_seg_iou) else None
        seg_ce_logits = None
        if class_segmenter is not None and labels is not None and seg_student is not None:
            by_class = torch.isin(labels, self.class_ids).unsqueeze(1)
            seg_ce_logits = torch.where(by_class, class_segmenter(out.fused).logits, seg_student)
        terms = self.distill(out, teacher_out, seg_student, seg_teacher_logits, labels, seg_ce_logits)
        if self.feature_head is not None:
            if seg_student is None:
                raise ValueError("loss.student_consistency > 0 needs a segmenter")
            feature_level = upsample_bilinear(self.feature_head(out.features["fusion"]), seg_student.shape[-2:])
            terms["student_consistency"] = self.w_consistency * cross_seg_consistency(
                feature_level, seg_student, T=self.consistency_temperature)
        if self.cotrain_segmenter is not None:
            terms["seg_ce_cotrain"] = self.w_cotrain * self.distill.seg_criterion(
                self.cotrain_segmenter(out.fused).logits, _labels_or_ignore(batch))
        if self.w_fusion:
            for k, v in self.fusion_loss(out.fused, batch["ir"], batch["vis_y"]).items():
                terms[f"fusion_{k}"] = self.w_fusion * v
        terms.update(auxiliary_terms(self.student, out, batch))
        return terms


def restart_cotrained_segmenter(segmenter: nn.Module, optimizer: torch.optim.Optimizer, spec: str,
                                kwargs: Dict[str, Any], seed: int) -> None:
    """Give ``segmenter`` the fresh weights (and BN statistics) of ``create_model(spec, **kwargs)``
    built under ``seed``, and drop its parameters' optimizer state (AdamW starts them afresh).

    The global RNG is left untouched and every process builds the same weights, so a restart
    neither shifts the rest of a seeded run nor desynchronises data-parallel copies.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = create_model(spec, **kwargs)
    segmenter.load_state_dict(fresh.state_dict())  # copies in place: the optimizer keeps the same tensors
    state = getattr(optimizer, "optimizer", optimizer).state  # accelerate wraps the torch optimizer
    for p in segmenter.parameters():
        state.pop(p, None)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients for the parameters (inputs can still carry gradients through it)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
