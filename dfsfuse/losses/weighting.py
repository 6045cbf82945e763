"""Dynamic loss weights (dynamic weight averaging, as in SSVIF / SegMiF / Liu et al. 2019) and
the sum of a dict of loss terms."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

__all__ = ["DynamicWeights", "total_loss"]


def total_loss(terms: Mapping[str, Tensor]) -> Tensor:
    """Sum of a composite loss's already-weighted terms (the package-wide convention)."""
    if not terms:
        raise ValueError("no loss terms to sum")
    values = list(terms.values())
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


class DynamicWeights:
    """Dynamic weight averaging: ``w_k(t) = K · softmax_k(r_k / T)``, ``r_k = L_k(t−1) / L_k(t−2)``.

    A loss that decreases slowly (ratio near or above 1) gets more weight than one that
    drops fast; the weights always sum to K. Every weight is 1 until ``max(warmup, 2)``
    updates have been recorded. Call :meth:`update` once per step (or per epoch, with
    averaged values, for smoother weights) with detached floats — in distributed training,
    with values already reduced across processes so every rank gets the same weights. The
    ratio is scale-free, so passing terms that already carry a constant weight is fine.
    A previous value of 0 gives ratio 1 (no trend known).
    """

    def __init__(self, names: Iterable[str], temperature: float = 2.0, warmup: int = 2):
        self.names = list(names)
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"names must be non-empty and unique, got {self.names}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.warmup = max(int(warmup), 2)
        self.steps = 0
        self.history: dict[str, list[float]] = {n: [] for n in self.names}  # last two values

    def update(self, losses: Mapping[str, float | Tensor]) -> None:
        """Record one value per name (floats or 0-d tensors; exactly the configured names)."""
        if set(losses) != set(self.names):
            raise KeyError(f"expected losses for {sorted(self.names)}, got {sorted(losses)}")
        values = {n: float(losses[n]) for n in self.names}
        bad = {n: v for n, v in values.items() if not math.isfinite(v) or v < 0}
        if bad:
            raise ValueError(f"loss values must be finite and non-negative, got {bad}")
        for n, v in values.items():
            self.history[n] = (self.history[n] + [v])[-2:]
        self.steps += 1

    @property
    def weights(self) -> dict[str, float]:
        """Current weight per name (sum K)."""
        if self.steps < self.warmup:
            return {n: 1.0 for n in self.names}
        ratios = {}
        for n in self.names:
            prev, last = self.history[n]
            ratios[n] = last / prev if prev > 0 else 1.0
        logits = {n: r / self.temperature for n, r in ratios.items()}
        top = max(logits.values())
        exps = {n: math.exp(v - top) for n, v in logits.items()}
        z = sum(exps.values())
        k = len(self.names)
        return {n: k * e / z for n, e in exps.items()}

    def apply(self, terms: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Multiply the managed terms by their current weight; other terms pass unchanged."""
        w = self.weights
        return {n: (w[n] * t if n in w else t) for n, t in terms.items()}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (plain floats, ints, strings, lists)."""
        return {
            "names": list(self.names),
            "temperature": self.temperature,
            "warmup": self.warmup,
            "steps": self.steps,
            "history": {n: list(v) for n, v in self.history.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the names must match this instance's."""
        if list(state["names"]) != self.names:
            raise ValueError(f"state is for names {state['names']}, this instance has {self.names}")
        self.temperature = float(state["temperature"])
        self.warmup = int(state["warmup"])
        self.steps = int(state["steps"])
        self.history = {n: [float(v) for v in state["history"][n]] for n in self.names}

    def __repr__(self) -> str:
        return f"DynamicWeights(names={self.names}, temperature={self.temperature}, warmup={self.warmup})"
