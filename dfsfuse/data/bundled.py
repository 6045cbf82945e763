"""The few MSRS pairs shipped inside the package (MIT, via SuperFusion; see the README)."""

from __future__ import annotations

from pathlib import Path

BUNDLED_TRAIN = ("00004N", "00012N", "00020N", "00055D", "00085D", "00099D")
BUNDLED_TEST = ("00008N", "00016N", "00081D", "00091D")


def bundled_msrs_root() -> Path:
    """Root of the bundled MSRS subset: ``train/{ir,vi}`` (6 pairs) and ``test/{ir,vi}`` (4 held-out pairs)."""
    return Path(__file__).resolve().parent.parent / "assets" / "msrs"
