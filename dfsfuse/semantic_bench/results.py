"""Results of the semantic benchmark: one kind's per-seed scores (:class:`KindResult`) and a whole
run's (:class:`SegBenchResult`, written as JSON)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..atomic import finite_json, write_json_atomic
from ..data.synthetic import CLASS_NAMES
from ..metrics.segmentation import ConfusionMatrix

__all__ = ["KindResult", "SegBenchResult"]


def _nan_mean(rows: Sequence[Sequence[float]]) -> List[float]:
    """Column means of per-seed rows, skipping NaN (NaN only where every seed is NaN)."""
    arr = np.asarray(rows, dtype=np.float64)
    with np.errstate(all="ignore"):
        counts = (~np.isnan(arr)).sum(0)
        sums = np.nansum(arr, 0)
        return [float(s / c) if c else float("nan") for s, c in zip(sums, counts)]


@dataclass
class KindResult:
    """One kind's scores: per seed mIoU, per-class IoU (NaN for a class absent from both
    labels and predictions) and confusion matrix (rows: label, columns: prediction), the rendered
    picture image and its predictions."""

    name: str
    miou: List[float] = field(default_factory=list)
    iou: List[List[float]] = field(default_factory=list)
    seconds: float = 0.0
    picture_image: Optional[Tensor] = None
    picture_pred: Optional[Tensor] = None
    confusion: List[List[List[int]]] = field(default_factory=list)
    false_positives: List[List[List[int]]] = field(default_factory=list)

    def add(self, miou: float, iou: List[float], picture_pred: Tensor,
            confusion: Optional[List[List[int]]] = None, false_positives: Optional[List[List[int]]] = None) -> None:
        """Record one seed's scores (call in seed order); the first seed's prediction is the picture's.
        ``false_positives``: :attr:`FalsePositiveDistance.counts` (near and far per class)."""
        self.miou.append(miou)
        self.iou.append(iou)
        if confusion is not None:
            self.confusion.append(confusion)
        if false_positives is not None:
            self.false_positives.append(false_positives)
        if self.picture_pred is None:
            self.picture_pred = picture_pred

    def mean_rates(self) -> Dict[str, List[float]]:
        """Per-class precision (``TP / predicted``) and recall (``TP / labelled``) averaged over the seeds
        whose confusion matrix is recorded (NaN where undefined in every seed): does a fusion lose a
        class by missing it or by inventing it?"""
        precision, recall = [], []
        for matrix in self.confusion:
            cm = ConfusionMatrix(len(matrix)).merge(torch.tensor(matrix))
            precision.append(cm.precision().tolist())
            recall.append(cm.recall().tolist())
        return {"precision": _nan_mean(precision), "recall": _nan_mean(recall)}

    @property
    def mean_miou(self) -> float:
        """mIoU averaged over seeds."""
        return float(np.mean(self.miou))

    def mean_iou(self) -> List[float]:
        """Per-class IoU averaged over seeds (NaN only where every seed is NaN)."""
        return _nan_mean(self.iou)

    def far_false_positives(self) -> List[float]:
        """Per class, the fraction of false positives far from any labelled object of the class, pooled
        over the seeds (NaN for a class with none): an invented object rather than one drawn too big."""
        counts = np.asarray(self.false_positives, dtype=np.float64).sum(0)
        with np.errstate(all="ignore"):
            return (counts[1] / counts.sum(0)).tolist()


@dataclass
class SegBenchResult:
    """Settings, per-kind results and notes (skipped kinds) of one run."""

    settings: Dict[str, Any]
    kinds: List[KindResult]
    seeds: List[int]
    class_names: Tuple[str, ...] = CLASS_NAMES

    def to_dict(self) -> Dict[str, Any]:
        """``{"settings", "miou", "iou", "precision", "recall", "confusion_per_seed", "false_positives_far",
        "seeds"}`` (+ ``"miou_per_seed"`` and ``"iou_per_seed"``, ``{kind: {class: [one IoU per seed]}}``,
        with several seeds); precision and recall are means over seeds, each confusion matrix is K×K
        pixel counts (rows: label, columns: prediction), ``false_positives_far`` the fraction of each
        class's false positives far from any object of it (:class:`FalsePositiveDistance`, pooled over
        seeds); non-finite numbers become ``None``."""
        out: Dict[str, Any] = {
            "settings": self.settings,
            "miou": {k.name: k.mean_miou for k in self.kinds},
            "iou": {k.name: dict(zip(self.class_names, k.mean_iou())) for k in self.kinds},
            "seeds": list(self.seeds),
        }
        recorded = [k for k in self.kinds if k.confusion]
        if recorded:
            rates = {k.name: k.mean_rates() for k in recorded}
            for rate in ("precision", "recall"):
                out[rate] = {name: dict(zip(self.class_names, r[rate])) for name, r in rates.items()}
            out["confusion_per_seed"] = {k.name: k.confusion for k in recorded}
        located = [k for k in self.kinds if k.false_positives]
        if located:
            out["false_positives_far"] = {k.name: dict(zip(self.class_names, k.far_false_positives())) for k in located}
        if len(self.seeds) > 1:
            out["miou_per_seed"] = {k.name: list(k.miou) for k in self.kinds}
            # Which classes move between seeds is what tells optimisation noise from a real difference.
            out["iou_per_seed"] = {k.name: {c: [seed[i] for seed in k.iou] for i, c in enumerate(self.class_names)}
                                   for k in self.kinds}
        return finite_json(out)

    def save_json(self, path: os.PathLike) -> Path:
        """Write :meth:`to_dict` as indented JSON, atomically."""
        return write_json_atomic(path, self.to_dict())
