"""Shared fixtures: the real pairs in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DFSFUSE_SHARED_DATA", REPO.parent / "shared" / "data"))

# One intra-op thread for the whole suite: on a busy 2-core machine two OpenMP threads spin-wait
# for each other at every op (5-50x slower, measured), and no test depends on the thread count.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real IR/VIS pairs (msrs/, tno/, roadscene/); skips the test if missing."""
    if not (SHARED_DATA / "msrs" / "test" / "ir").is_dir():
        pytest.skip(f"real pairs not found at {SHARED_DATA}")
    return SHARED_DATA


def load_script(path: Path, name: str):
    """Import a script that is not a package module (a recipe, a benchmark) by file path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
