"""Means that stay exact under data-parallel training: normalise by the *global* count.

DDP averages the gradients of the per-rank losses. A loss that is a plain mean over an
equally sized per-rank batch is then exact, but a mean over a mask or a weight map
(``sum(l) / count`` with a count that differs between ranks: labelled pixels, ``sum(w)``)
is not: the average of per-rank means is not the global mean. :func:`global_mean` returns
``sum_r · W / Σ_r count_r`` on each of ``W`` ranks, so that the mean over ranks of the loss
values *and* of their gradients equals the one-process loss and gradient on the union of the
ranks' batches. It is the identity ``sum / count`` (bit for bit the old expression) when
``torch.distributed`` is not initialised or has one rank.

It is a collective: every rank must call it the same number of times in the same order
(compute the sum and count on every rank, even when they are 0). Code that evaluates a loss on
one rank only wraps it in :func:`local_reduction`. This module imports nothing from ``dfsfuse``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["world_size", "global_sum", "global_mean", "local_reduction"]

_STATE = threading.local()


@contextlib.contextmanager
def local_reduction() -> Iterator[None]:
    """Within this context :func:`global_mean` / :func:`global_sum` reduce over this process only."""
    before = getattr(_STATE, "local", False)
    _STATE.local = True
    try:
        yield
    finally:
        _STATE.local = before


def world_size() -> int:
    """Ranks that :func:`global_mean` reduces over: 1 unless ``torch.distributed`` is initialised
    (and not inside :func:`local_reduction`)."""
    if getattr(_STATE, "local", False):
        return 1
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def global_sum(value: Tensor) -> Tensor:
    """Sum of ``value`` over all ranks (a new tensor; identity copy on one rank).

    Differentiable when ``value`` requires grad (``torch.distributed.nn.all_reduce``: the
    gradient of each rank's contribution is the sum of the ranks' upstream gradients);
    otherwise a plain detached ``all_reduce``.
    """
    if world_size() == 1:
        return value
    if value.requires_grad:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(value)
    out = value.detach().clone()
    torch.distributed.all_reduce(out)
    return out


def global_mean(total: Tensor, count: Tensor, eps: float = 1e-12) -> Tensor:
    """``total / count`` on one process; ``total · W / Σ_ranks count`` on ``W`` ranks.

    ``total`` is this rank's sum of losses (connected to the graph), ``count`` its number of
    valid pixels or its sum of weights (a scalar tensor; a differentiable weight sum is
    reduced differentiably, see :func:`global_sum`). The denominator is clamped at ``eps`` so
    no valid pixel anywhere gives 0, not NaN.
    """
    n = world_size()
    if n == 1:
        return total / count.clamp_min(eps)
    count = global_sum(count.to(total.dtype))
    return total * n / count.clamp_min(eps)
