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


@dataclass
class FalsePositiveDistance:
    """Where a segmenter's false positives lie: near a labelled object of the same class (an object
    drawn too big) or far from any (an object invented).

    A false positive of class ``c`` is a labelled pixel (not ``ignore_index``) predicted ``c`` whose
    label is another class. It is *near* when a pixel labelled ``c`` lies within a square of half-side
    ``round(radius × short side)`` pixels around it (Chebyshev distance; 12 px at 240×320 for the
    default 0.05), else *far*. ``counts`` (int64, 2×K) holds near and far per class, summed over
    every :meth:`update`; near + far equals the confusion matrix's column sum minus its diagonal.
    """

    num_classes: int = 9
    radius: float = 0.05
    ignore_index: Optional[int] = 255
    counts: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        if not 0.0 < self.radius < 1.0:
            raise ValueError(f"radius is a fraction of the image's short side in (0, 1), got {self.radius}")
        self.counts = torch.zeros(2, self.num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count a batch of B×H×W predicted class indices against B×H×W targets."""
        if pred.shape != target.shape or pred.ndim != 3:
            raise ValueError(f"pred and target must both be B×H×W, got {tuple(pred.shape)} and {tuple(target.shape)}")
        r = max(1, round(self.radius * min(target.shape[-2:])))
        labelled = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        counts = torch.zeros_like(self.counts)
        for c in range(self.num_classes):
            fp = (pred == c) & (target != c) & labelled
            if not bool(fp.any()):
                continue
            is_c = (target == c).float().unsqueeze(1)
            near_c = torch.nn.functional.max_pool2d(is_c, 2 * r + 1, stride=1, padding=r).squeeze(1) > 0
            counts[0, c] = (fp & near_c).sum()
            counts[1, c] = (fp & ~near_c).sum()
        self.counts = self.counts.to(counts.device) + counts

    def far_fraction(self) -> Tensor:
        """Per class, the fraction of false positives far from any object of the class (float64;
        NaN for a class with none)."""
        c = self.counts.double()
        return c[1] / c.sum(0)
