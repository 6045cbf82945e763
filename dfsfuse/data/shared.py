"""Where the shared evaluation data (``shared/data``: MSRS, TNO, RoadScene) is found: one rule
for every command, benchmark script and test helper."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA_ENV = "DFSFUSE_SHARED_DATA"
"""Environment variable that names the shared data folder explicitly."""

CHECKOUT_SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
"""``<repository>/../shared/data`` for a source checkout (meaningless for an installed wheel)."""


def shared_data_root() -> Path:
    """The shared data folder: ``$DFSFUSE_SHARED_DATA`` when set; else ``../shared/data`` beside the
    source checkout when that exists (so a script finds it from any working directory); else
    ``../shared/data`` relative to the working directory (an installed package, run from a folder
    beside the data). The folder itself may not exist; callers say what is missing."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    if CHECKOUT_SHARED_DATA.is_dir():
        return CHECKOUT_SHARED_DATA
    return Path("..") / "shared" / "data"
