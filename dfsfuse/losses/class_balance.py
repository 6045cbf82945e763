"""Class-imbalance-aware segmentation cross-entropy: class weights from label frequencies and OHEM.

MSRS labels are ~93% ``unlabeled`` (class 0), so plain cross-entropy is dominated by background.
The two remedies task-driven fusion papers use:

- **class-weighted CE** with ENet's weights ``w_k = 1 / ln(c + p_k)`` (``c = 1.02``), where
  ``p_k`` is the fraction of labelled pixels of class ``k``: rare classes weigh up to ~50×,
  background ~1.5×. The weights come from a folder of label PNGs (:func:`label_pixel_counts`)
  or the fixed MSRS table (:data:`MSRS_TRAIN_CLASS_PIXELS`, counted on the 156 labelled
  ``msrs/train`` pairs);
- **OHEM CE** as SeAFusion's ``OhemCELoss``: keep the pixels whose loss exceeds
  ``-ln(thresh)`` (probability of the true class below ``thresh``, 0.7), but at least
  ``n_min`` of the batch's labelled pixels (the hardest ones), and average those.

:func:`segmentation_ce` (in :mod:`.semantic`) selects one with ``mode=``; :class:`SegmentationCE`
holds a configured choice for the training objectives.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reduction import global_mean, global_sum, world_size

__all__ = [
    "SEG_LOSS_MODES",
    "MSRS_TRAIN_CLASS_PIXELS",
    "MSRS_CLASS_WEIGHTS",
    "enet_class_weights",
    "label_pixel_counts",
    "class_weights_from_labels",
    "ohem_ce",
    "SegmentationCE",
]

SEG_LOSS_MODES: tuple[str, ...] = ("plain", "weighted", "ohem")
"""Every ``mode`` :func:`segmentation_ce` accepts."""

# Pixels per class in the 156 labels of msrs/train (640×480 each; 0 unlabeled, 1 car, 2 person,
# 3 bike, 4 curve, 5 car_stop, 6 guardrail, 7 color_cone, 8 bump). Recomputed from the files by
# tests/test_seg_losses.py when ../shared/data is present.
MSRS_TRAIN_CLASS_PIXELS: tuple[int, ...] = (
    44789281, 1347716, 514281, 424715, 162127, 318014, 86034, 168851, 112181,
)


def enet_class_weights(counts: Union[Sequence[float], Tensor, np.ndarray], c: float = 1.02) -> tuple[float, ...]:
    """ENet/SeAFusion-style class weights ``1 / ln(c + p_k)`` from per-class pixel counts.

    ``p_k = counts_k / Σ counts``. ``c > 1`` bounds the largest weight at ``1 / ln(c)``
    (≈ 50.5 for 1.02), reached by a class that never occurs.
    """
    if c <= 1.0:
        raise ValueError(f"c must be greater than 1 (weights are 1/ln(c + p)), got {c}")
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or (arr < 0).any() or not np.isfinite(arr).all():
        raise ValueError(f"counts must be a non-empty list of non-negative numbers, got {arr.tolist()}")
    total = arr.sum()
    if total <= 0:
        raise ValueError("counts are all zero: no labelled pixels to weigh classes by")
    return tuple(float(1.0 / math.log(c + p)) for p in arr / total)


MSRS_CLASS_WEIGHTS: tuple[float, ...] = enet_class_weights(MSRS_TRAIN_CLASS_PIXELS)
"""ENet weights (``c = 1.02``) of :data:`MSRS_TRAIN_CLASS_PIXELS`: background ≈ 1.5, rare classes ≈ 40–48."""


def label_pixel_counts(
    labels: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Tensor],
    num_classes: int = 9,
    ignore_index: int = 255,
) -> np.ndarray:
    """Pixels per class (int64, ``num_classes`` values) of a folder of label PNGs, a list of
    label files, or a tensor of labels; ``ignore_index`` pixels are not counted.

    Files are read with :func:`dfsfuse.data.read_label`, so a bad label raises
    :class:`~dfsfuse.data.DatasetError` naming it; an empty folder raises too.
    """
    if isinstance(labels, Tensor):
        flat = labels.reshape(-1).long()
        flat = flat[flat != ignore_index]
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_classes):
            raise ValueError(f"labels hold classes outside 0..{num_classes - 1}")
        return torch.bincount(flat.cpu(), minlength=num_classes).numpy().astype(np.int64)

    from pathlib import Path

    from ..data.errors import DatasetError
    from ..data.io import read_label
    from ..data.pairs import list_images

    if isinstance(labels, (str, os.PathLike)):
        folder = Path(labels)
        files = list(list_images(folder).values())
        if not files:
            raise DatasetError(f"{folder}: no label images")
    else:
        files = [Path(p) for p in labels]
    counts = np.zeros(num_classes, dtype=np.int64)
    for path in files:
        label = read_label(path, num_classes, ignore_index)
        label = label[label != ignore_index]
        counts += np.bincount(label.ravel(), minlength=num_classes)[:num_classes]
    return counts


def class_weights_from_labels(
    labels: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Tensor],
    num_classes: int = 9,
    c: float = 1.02,
    ignore_index: int = 255,
) -> tuple[float, ...]:
    """:func:`enet_class_weights` of :func:`label_pixel_counts` (a label folder, files or a tensor)."""
    return enet_class_weights(label_pixel_counts(labels, num_classes, ignore_index), c)


def _check_ohem(thresh: float, min_kept: float) -> None:
    if not 0.0 < thresh <= 1.0:
        raise ValueError(f"OHEM thresh is a probability in (0, 1], got {thresh}")
    if not 0.0 < min_kept <= 1.0:
        raise ValueError(f"OHEM min_kept is a fraction of labelled pixels in (0, 1], got {min_kept}")


def ohem_ce(
    logits: Tensor,
    labels: Tensor,
    thresh: float = 0.7,
    min_kept: float = 1 / 16,
    ignore_index: int = 255,
    class_weights: Optional[Union[Tensor, Sequence[float]]] = None,
) -> Tensor:
    """Online hard example mining CE (SeAFusion's ``OhemCELoss``) of ``B×K×H×W`` logits.

    Among labelled pixels, the kept ones are those with loss ``> -ln(thresh)``; when fewer than
    ``n_min = ceil(min_kept × labelled pixels)`` pass (``min_kept`` is a fraction in (0, 1]),
    the ``n_min`` highest losses are kept instead. Returns the mean of the kept losses
    (with ``class_weights``: ``Σ w·l / Σ w`` over the kept pixels, selection on the unweighted
    loss). Unlike SeAFusion's version, ignored pixels never count towards ``n_min``. All
    pixels ignored → 0 still connected to ``logits``.

    Under ``torch.distributed`` (more than one rank) the selection is global: ``n_valid``,
    ``n_min`` and the count of losses over the threshold are all-reduced, so every rank takes the
    branch one process would take on the global batch; in the ``n_min`` branch the kept pixels
    are those whose loss is at least the global ``n_min``-th largest (gathered from each rank's
    top ``n_min``), and the mean divides by the global kept count / weight sum
    (:func:`dfsfuse.reduction.global_mean`). The result equals the one-process loss and
    gradient up to float rounding, except when losses tie exactly at the ``n_min``-th value
    (one process keeps exactly ``n_min`` of the tied pixels, the ranks keep all of them).
    """
    _check_ohem(thresh, min_kept)
    logits = logits.float()
    loss = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none").flatten()
    valid = (labels != ignore_index).flatten()
    if world_size() > 1:
        return _ohem_distributed(logits, labels, loss, valid, thresh, min_kept, class_weights)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return logits.sum() * 0.0
    valid_loss = loss[valid]
    n_min = min(n_valid, max(1, math.ceil(min_kept * n_valid)))
    hard = valid_loss > -math.log(thresh)
    if int(hard.sum()) >= n_min:
        keep = hard
    else:
        keep = torch.zeros_like(hard)
        keep[valid_loss.topk(n_min, sorted=False).indices] = True
    if class_weights is None:
        return valid_loss[keep].mean()
    w = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    w_pix = w[labels.flatten()[valid][keep]]
    return (valid_loss[keep] * w_pix).sum() / w_pix.sum().clamp_min(1e-12)


def _ohem_distributed(
    logits: Tensor,
    labels: Tensor,
    loss: Tensor,
    valid: Tensor,
    thresh: float,
    min_kept: float,
    class_weights: Optional[Union[Tensor, Sequence[float]]],
) -> Tensor:
    """:func:`ohem_ce` with the pixel selection and the mean taken over all ranks (collective)."""
    valid_loss = loss[valid]
    hard = valid_loss > -math.log(thresh)
    counts = global_sum(torch.stack([valid.sum(), hard.sum()]).to(torch.int64))
    n_valid, n_hard = int(counts[0]), int(counts[1])
    if n_valid == 0:  # the same on every rank: no further collective is skipped by one rank only
        return logits.sum() * 0.0
    n_min = min(n_valid, max(1, math.ceil(min_kept * n_valid)))
    if n_hard >= n_min:
        keep = hard
    else:
        # the global top n_min lies in the union of the ranks' top n_min: gather those, take the n_min-th
        top = torch.full((n_min,), -math.inf, device=loss.device)
        k = min(n_min, valid_loss.numel())
        top[:k] = valid_loss.detach().topk(k, sorted=False).values
        parts = [torch.empty_like(top) for _ in range(world_size())]
        torch.distributed.all_gather(parts, top)
        kth = torch.cat(parts).topk(n_min, sorted=True).values[-1]
        keep = valid_loss >= kth
    if class_weights is None:
        return global_mean(valid_loss[keep].sum(), keep.sum().to(valid_loss.dtype))
    w = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    w_pix = w[labels.flatten()[valid][keep]]
    return global_mean((valid_loss[keep] * w_pix).sum(), w_pix.sum())


class SegmentationCE(nn.Module):
    """A configured segmentation CE: ``forward(logits, labels)`` = :func:`segmentation_ce` with
    the stored ``mode`` / class weights / OHEM settings.

    ``mode="weighted"`` without ``class_weights`` uses :data:`MSRS_CLASS_WEIGHTS`. Holds no
    parameters or buffers (nothing changes in checkpoints).
    """

    def __init__(
        self,
        mode: str = "plain",
        class_weights: Optional[Sequence[float]] = None,
        ohem_thresh: float = 0.7,
        ohem_min_kept: float = 1 / 16,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if mode not in SEG_LOSS_MODES:
            raise ValueError(f"unknown segmentation loss {mode!r}; choose from {', '.join(SEG_LOSS_MODES)}")
        if mode == "plain" and class_weights is not None:
            raise ValueError("class weights need mode 'weighted' or 'ohem', not 'plain'")
        if mode == "weighted" and class_weights is None:
            class_weights = MSRS_CLASS_WEIGHTS
        self.mode = mode
        self.class_weights = None if class_weights is None else tuple(float(v) for v in class_weights)
        self.ohem_thresh = float(ohem_thresh)
        self.ohem_min_kept = float(ohem_min_kept)
        self.ignore_index = ignore_index
        if mode == "ohem":
            _check_ohem(self.ohem_thresh, self.ohem_min_kept)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        from .semantic import segmentation_ce

        return segmentation_ce(logits, labels, ignore_index=self.ignore_index, class_weights=self.class_weights,
                               mode=self.mode, ohem_thresh=self.ohem_thresh, ohem_min_kept=self.ohem_min_kept)

    def extra_repr(self) -> str:
        weights = "msrs" if self.class_weights == MSRS_CLASS_WEIGHTS else self.class_weights
        return f"mode={self.mode!r}, class_weights={weights}, ohem_thresh={self.ohem_thresh}, " \
               f"ohem_min_kept={self.ohem_min_kept}"
