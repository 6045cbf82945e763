"""Scoring a label-free segmenter: match its clusters to the real classes (Hungarian), then mIoU.

A segmenter trained without labels (SSVIF) invents its own classes. To ask whether they carry
information about the real ones, count a ``classes × clusters`` confusion matrix on labelled
images, find the one-to-one cluster → class assignment with the most agreeing pixels
(:func:`scipy.optimize.linear_sum_assignment`), and compute the IoU of the relabelled
prediction. Pixels of clusters left unmatched (more clusters than classes) count as wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["cluster_confusion", "ClusterMatch", "match_clusters"]


def cluster_confusion(
    pred: Tensor, target: Tensor, num_classes: int, num_clusters: int, ignore_index: Optional[int] = 255
) -> np.ndarray:
    """``num_classes × num_clusters`` pixel counts (int64): rows true classes, columns predicted clusters.

    ``pred`` holds cluster indices shaped like ``target`` (or ``B×K×H×W`` logits, argmax over K);
    target pixels equal to ``ignore_index`` are skipped.
    """
    if pred.ndim == target.ndim + 1:
        pred = pred.argmax(dim=1)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    p, t = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"target has classes outside 0..{num_classes - 1}")
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_clusters):
        raise ValueError(f"pred has clusters outside 0..{num_clusters - 1}")
    counts = torch.bincount(t * num_clusters + p, minlength=num_classes * num_clusters)
    return counts.reshape(num_classes, num_clusters).numpy().astype(np.int64)


@dataclass
class ClusterMatch:
    """Result of :func:`match_clusters`: ``mapping[cluster] = class`` (matched clusters only),
    per-class IoU (NaN for a class absent from targets and matched predictions), their mean
    over the classes present, and the pixel accuracy of the relabelled prediction."""

    mapping: dict[int, int]
    iou: list[float]
    miou: float
    pixel_accuracy: float


def match_clusters(confusion: np.ndarray) -> ClusterMatch:
    """Hungarian matching of clusters (columns) to classes (rows) maximising agreeing pixels."""
    conf = np.asarray(confusion, dtype=np.float64)
    if conf.ndim != 2:
        raise ValueError(f"confusion must be a classes × clusters matrix, got shape {conf.shape}")
    rows, cols = linear_sum_assignment(conf, maximize=True)
    mapping = {int(c): int(r) for r, c in zip(rows, cols)}
    n_classes = conf.shape[0]
    matched = np.zeros((n_classes, n_classes))  # true class × predicted (relabelled) class
    for cluster, cls in mapping.items():
        matched[:, cls] += conf[:, cluster]
    tp = np.diag(matched)
    true_total = conf.sum(axis=1)  # unmatched clusters' pixels stay in the rows: they count as misses
    union = true_total + matched.sum(axis=0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    present = ~np.isnan(iou)
    miou = float(iou[present].mean()) if present.any() else float("nan")
    total = conf.sum()
    acc = float(tp.sum() / total) if total else float("nan")
    return ClusterMatch(mapping=mapping, iou=[float(v) for v in iou], miou=miou, pixel_accuracy=acc)
