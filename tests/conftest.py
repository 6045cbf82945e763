"""Shared fixtures: the real pairs in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DFSFUSE_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real IR/VIS pairs (msrs/, tno/, roadscene/); skips the test if missing."""
    if not (SHARED_DATA / "msrs" / "test" / "ir").is_dir():
        pytest.skip(f"real pairs not found at {SHARED_DATA}")
    return SHARED_DATA
