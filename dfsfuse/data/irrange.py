"""How infrared images deeper than 8 bits (16-bit PNG/TIFF, float TIFF) are mapped to [0, 1].

Thermal cameras write 14/16-bit counts or floating-point temperatures; the networks take
[0, 1]. An :class:`IrRange` says how, written as text (the ``--ir-range`` option):

- ``auto`` (default): 8-bit images are read exactly as before (value / 255, the metrics'
  convention); deeper images use ``percentile:1,99``.
- ``minmax``: ``(x − min) / (max − min)`` per image.
- ``percentile[:P1,P2]``: clip to the P1-th … P2-th percentiles of the image (default 1 and
  99, linear interpolation as ``numpy.percentile``), then stretch to [0, 1], as a camera's
  automatic gain control does; one hot pixel does not darken the whole frame.
- ``fixed:LO,HI``: ``(x − LO) / (HI − LO)`` clipped to [0, 1], the same for every image (e.g.
  ``fixed:0,65535`` for raw 16-bit counts, ``fixed:-20,40`` for °C).

An explicit spec applies to every IR image, 8-bit ones included; only ``auto`` treats them
differently. An image without contrast (``max == min`` or equal percentiles) maps to 0.
This module imports numpy only when normalising, so CLI parsers can use :func:`parse_ir_range`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import numpy as np

IR_RANGE_METHODS = ("auto", "minmax", "percentile", "fixed")
IR_RANGE_HELP = "auto | minmax | percentile[:P1,P2] | fixed:LO,HI"
DEFAULT_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class IrRange:
    """A normalisation of IR values to [0, 1]: ``method`` and its two numbers (percentiles or LO, HI)."""

    method: str = "auto"
    low: float = DEFAULT_PERCENTILES[0]
    high: float = DEFAULT_PERCENTILES[1]

    def __post_init__(self) -> None:
        if self.method not in IR_RANGE_METHODS:
            raise ValueError(f"unknown IR range {self.method!r}; use {IR_RANGE_HELP}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"IR range {self.method}: bounds must be finite numbers, got {self.low}, {self.high}")
        if self.method in ("auto", "percentile") and not 0 <= self.low < self.high <= 100:
            raise ValueError(f"IR range percentile: need 0 <= P1 < P2 <= 100, got {self.low:g}, {self.high:g}")
        if self.method == "fixed" and not self.low < self.high:
            raise ValueError(f"IR range fixed: need LO < HI, got {self.low:g}, {self.high:g}")

    def __str__(self) -> str:
        if self.method == "minmax":
            return "minmax"
        if self.method == "auto" and (self.low, self.high) == DEFAULT_PERCENTILES:
            return "auto"
        return f"{self.method}:{self.low:g},{self.high:g}"

    def for_high_depth(self) -> "IrRange":
        """The spec used for an image deeper than 8 bits (``auto`` → ``percentile:P1,P2``)."""
        return IrRange("percentile", self.low, self.high) if self.method == "auto" else self

    def bounds(self, values: "np.ndarray") -> tuple[float, float]:
        """The (lo, hi) values of ``values`` that map to 0 and 1."""
        import numpy as np

        spec = self.for_high_depth()
        if spec.method == "fixed":
            return spec.low, spec.high
        if spec.method == "minmax":
            return float(values.min()), float(values.max())
        lo, hi = np.percentile(values, [spec.low, spec.high])
        return float(lo), float(hi)

    def normalize(self, values: "np.ndarray") -> "np.ndarray":
        """``values`` (any real dtype, finite) mapped to float32 in [0, 1]; all zeros when lo == hi."""
        import numpy as np

        x = np.asarray(values, dtype=np.float64)
        if x.size == 0:
            return x.astype(np.float32)
        lo, hi = self.bounds(x)
        if not hi > lo:  # a constant image (or equal percentiles): no contrast to stretch
            return np.zeros(x.shape, dtype=np.float32)
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _numbers(method: str, text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"IR range {method}: expected two numbers 'A,B', got {text!r}") from None
    return low, high


def parse_ir_range(text: Union[str, IrRange, None]) -> IrRange:
    """Parse ``auto``, ``minmax``, ``percentile``, ``percentile:P1,P2`` or ``fixed:LO,HI``.

    ``None`` is ``auto``. Raises ``ValueError`` with a one-line message for anything else.
    """
    if text is None:
        return IrRange()
    if isinstance(text, IrRange):
        return text
    method, sep, rest = str(text).strip().partition(":")
    method = method.strip().lower()
    if method in ("auto", "percentile"):
        low, high = _numbers(method, rest) if sep else DEFAULT_PERCENTILES
        return IrRange(method, low, high)
    if method == "minmax":
        if sep:
            raise ValueError(f"IR range minmax takes no numbers, got {text!r}")
        return IrRange("minmax")
    if method == "fixed":
        if not sep:
            raise ValueError("IR range fixed needs the range: fixed:LO,HI (e.g. fixed:0,65535)")
        return IrRange("fixed", *_numbers(method, rest))
    raise ValueError(f"unknown IR range {text!r}; use {IR_RANGE_HELP}")


def ir_range_arg(text: str) -> IrRange:
    """``argparse`` type for ``--ir-range``: a bad spec becomes a usage error naming the option."""
    import argparse

    try:
        return parse_ir_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
