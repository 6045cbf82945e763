"""Segmentation metrics: a confusion matrix accumulated over a whole set, per-class IoU and mIoU.

mIoU is computed from one matrix summed over every image (not a mean of per-image mIoUs), as
the MSRS tables report it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor


@dataclass
class ConfusionMatrix:
    """Pixel confusion matrix over ``num_classes`` classes; rows are targets, columns predictions.

    ``matrix`` (int64, K×K) is the raw count tensor: sum it across processes with
    :meth:`all_reduce` or fold another matrix in with :meth:`merge`. It moves to the device
    of the data passed to :meth:`update`.
    """

    num_classes: int = 9
    ignore_index: Optional[int] = 255
    matrix: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count a batch: ``pred`` class indices shaped like ``target`` (e.g. B×H×W), or logits
        B×K×H×W (argmax over K). Target pixels equal to ``ignore_index`` are skipped."""
        k = self.num_classes
        if pred.is_floating_point():
            if pred.dim() != target.dim() + 1 or pred.shape[1] != k:
                raise ValueError(
                    f"float predictions must be logits B×{k}×H×W for targets B×H×W; got {tuple(pred.shape)}"
                )
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        if target.is_floating_point():
            raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
        pred = pred.to(target.device).long().flatten()
        target = target.long().flatten()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        for name, t in (("target", target), ("pred", pred)):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
                raise ValueError(
                    f"{name} has class indices outside 0..{k - 1} (min {int(t.min())}, max {int(t.max())})"
                )
        counts = torch.bincount(target * k + pred, minlength=k * k).view(k, k)
        self.matrix = self.matrix.to(counts.device) + counts

    def iou(self) -> Tensor:
        """Per-class IoU (float64, K values); NaN for a class absent from both targets and predictions."""
        m = self.matrix.double()
        tp = m.diagonal()
        union = m.sum(0) + m.sum(1) - tp
        return tp / union  # 0/0 = NaN for absent classes

    def precision(self) -> Tensor:
        """Per-class precision ``TP / predicted`` (float64); NaN for a class never predicted."""
        m = self.matrix.double()
        return m.diagonal() / m.sum(0)

    def recall(self) -> Tensor:
        """Per-class recall ``TP / labelled`` (float64); NaN for a class never labelled."""
        m = self.matrix.double()
        return m.diagonal() / m.sum(1)

    def miou(self) -> float:
        """Mean IoU over the classes that occur in the targets or the predictions (NaN when none do).

        Classes that never occur have no defined IoU; counting them as 0 or 1 would shift the
        mean with the class list rather than with the predictions.
        """
        iou = self.iou()
        present = ~torch.isnan(iou)
        return float(iou[present].mean()) if bool(present.any()) else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels whose prediction equals the target (NaN when none)."""
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total if total else float("nan")

    def reset(self) -> None:
        """Zero the counts (keeps the device)."""
        self.matrix = torch.zeros_like(self.matrix)

    def merge(self, other: Union["ConfusionMatrix", Tensor]) -> "ConfusionMatrix":
        """Add another matrix's counts (a ``ConfusionMatrix`` or a raw K×K tensor); returns ``self``."""
        counts = other.matrix if isinstance(other, ConfusionMatrix) else other
        if tuple(counts.shape) != (self.num_classes, self.num_classes):
            raise ValueError(f"cannot merge a {tuple(counts.shape)} matrix into {self.num_classes} classes")
        self.matrix = self.matrix + counts.to(self.matrix.device, torch.int64)
        return self

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the counts over every process of an initialised ``torch.distributed`` group (no-op otherwise)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self
