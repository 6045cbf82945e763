"""An IoU surrogate for segmentation: the Lovász-softmax loss (Berman, Triki & Blaschko, CVPR 2018).

Class-weighted CE (what the fusion stages read through their frozen segmenter) rewards finding a
rare class far more than not inventing it: with MSRS's ENet weights a missed person pixel costs
~20× a background pixel called a person. mIoU counts both alike (``IoU = TP / (TP + FP + FN)``).
The Lovász-softmax loss is the convex (Lovász) extension of ``1 − IoU_c`` evaluated on the
softmax probabilities: for one-hot predictions it *equals* ``1 − IoU_c``, so a fusion network
trained through it is also pushed to stop showing what a segmenter mistakes for a rare class
(lamps and lit windows read as people), not only to show the rare class better.

The loss is taken over the whole batch (one IoU per class over all its pixels, as the benchmark
takes one confusion matrix over a whole test folder), averaged over the classes present in the
batch's labels. Under ``torch.distributed`` each rank computes it on its own share of the batch
(the sort that defines it does not split across ranks), so an N-process run is not the
one-process run on the global batch for this term.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lovasz_grad", "lovasz_softmax"]


def lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at the sorted errors.

    ``fg_sorted`` is the 0/1 foreground indicator of the pixels sorted by decreasing error;
    returns the per-position weights ``J(i) − J(i−1)``, where ``J(i) = 1 − |fg ∖ E_i| / |fg ∪ E_i|`` is
    the Jaccard loss of a prediction that gets exactly the first ``i`` pixels ``E_i`` wrong.
    """
    fg_sorted = fg_sorted.float()
    gts = fg_sorted.sum()
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if fg_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Lovász-softmax loss of ``B×K×H×W`` logits against int64 ``B×H×W`` labels.

    Mean over the classes present among the labelled pixels of ``1 − IoU_c`` extended to
    probabilities (``softmax`` of the logits, in float32); ``ignore_index`` pixels are left out.
    Between 0 (every labelled pixel predicted with probability 1) and 1. No labelled pixel → 0
    still connected to ``logits`` (no NaN).
    """
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"lovasz_softmax needs B×K×H×W logits and B×H×W labels, got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    probs = logits.float().softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    flat = labels.reshape(-1)
    valid = flat != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    probs, flat = probs[valid], flat[valid]
    losses = []
    for c in torch.unique(flat).tolist():
        fg = (flat == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
    return torch.stack(losses).mean()
