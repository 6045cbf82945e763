"""Deterministic kernels, the one switch behind ``train.deterministic`` and the semantic benchmark's CUDA
segmenters: PyTorch's deterministic algorithms (warn-only: an op without a deterministic kernel warns
rather than stops the run), cuDNN deterministic and not benchmarking, and the cuBLAS workspace that makes
matrix products repeatable (``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset; it takes effect in a process
that has not used cuBLAS yet).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Tuple

import torch

__all__ = ["use_deterministic_kernels", "deterministic_kernels"]

State = Tuple[bool, bool, bool, bool]


def use_deterministic_kernels() -> State:
    """Switch deterministic kernels on for the rest of the process; returns the settings before
    (deterministic algorithms, warn-only, cuDNN deterministic, cuDNN benchmark)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    return before


@contextlib.contextmanager
def deterministic_kernels() -> Iterator[None]:
    """:func:`use_deterministic_kernels` inside the block; the previous settings come back afterwards."""
    before = use_deterministic_kernels()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
