"""Settings of the ablation: the variant catalogue (which distillation terms each variant switches
on, whether it weights them semantically, its description, the variants not run), the defaults
of the quality-per-MAC (``--sizes``) mode, and :class:`AblationSettings` (what is trained, how
long, where it is scored) with the fast (CPU) and full (GPU) presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["VARIANT_TERMS", "SEMANTIC_WEIGHTING", "VARIANT_DESCRIPTIONS", "NOT_RUN", "DEFAULT_SIZES", "SIZE_VARIANTS",
           "AblationSettings", "fast_settings", "full_settings"]


VARIANT_TERMS: Dict[str, Tuple[str, ...]] = {
    "alone": (),
    "output": ("output",),
    "features": ("output", "feature", "frequency"),
    "full": ("output", "feature", "frequency", "seg_kl", "seg_ce"),
    "ssvif": ("output", "feature", "frequency", "seg_kl", "student_consistency"),
}
"""Variant → the distillation terms it switches on (every variant keeps the student's own fusion loss)."""

SEMANTIC_WEIGHTING: Dict[str, bool] = {"alone": False, "output": False, "features": False, "full": True,
                                        "ssvif": True}
"""Variant → whether the distillation terms are weighted per pixel by the segmenter's semantic map."""

VARIANT_DESCRIPTIONS: Dict[str, str] = {
    "alone": "student's own fusion loss only (no teacher term)",
    "output": "+ output distillation |F_s - F_t|",
    "features": "+ feature (1x1 adapters) and wavelet sub-band distillation",
    "full": "full distilled semantic loss: semantic weighting, + seg KL, + seg CE on labels",
    "ssvif": "full, with SSVIF's label-free cross-segmentation consistency instead of seg CE (no labels)",
}

NOT_RUN: Dict[str, str] = {}
"""Variants named in the literature that this benchmark cannot run, with the reason (none at present)."""

DEFAULT_SIZES: Tuple[str, ...] = ("student:width=4", "student:width=8", "student:width=12", "student:width=16",
                                  "student_fast")
SIZE_VARIANTS: Tuple[str, ...] = ("full", "alone")


@dataclass
class AblationSettings:
    """One ablation (or quality-per-MAC) benchmark: what is trained, how long, and where it is scored.

    ``overrides`` are extra ``key=value`` config overrides applied to ``config`` before the
    benchmark's own (steps, crop, batch, seed, checkpoints, variant weights). ``eval_sets`` maps
    a held-out set name to ``root`` (``bundled:msrs/test`` style ``root[:split]`` is allowed via
    ``root|split``). ``students`` are registry specs (``student:width=8``); ``None`` = the config's student.
    """

    teacher: str = ""
    config: str = ""
    overrides: List[str] = field(default_factory=list)
    variants: List[str] = field(default_factory=lambda: list(VARIANT_TERMS))
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    students: Optional[List[str]] = None
    steps: int = 200
    batch_size: int = 4
    crop: int = 64
    lr: Optional[float] = None
    curve_every: int = 25
    curve_images: int = 2
    max_images: int = 3
    eval_sets: Dict[str, str] = field(default_factory=dict)
    miou_set: str = "msrs_val"
    work_dir: str = "runs/ablation"
    mode: str = "fast"

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot run."""
        unknown = [v for v in self.variants if v not in VARIANT_TERMS]
        if unknown:
            hint = f" ({NOT_RUN[unknown[0]]})" if unknown[0] in NOT_RUN else ""
            raise ValueError(f"unknown variant {unknown[0]!r}{hint}; choose from {', '.join(VARIANT_TERMS)}")
        if not self.variants or not self.seeds:
            raise ValueError("at least one variant and one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for name in ("steps", "batch_size", "crop", "curve_every", "curve_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_images < 0:
            raise ValueError(f"max_images must be >= 0 (0 = all), got {self.max_images}")


def fast_settings(**overrides: Any) -> AblationSettings:
    """The CPU setting: 200 steps of batch 4 on 64-px crops, fidelity every 25 steps on 2 held-out
    pairs, 3 held-out pairs per set (the ablation, 4 variants × 3 seeds, ≈ 28 min on one free core;
    ``--sizes``, 5 sizes × 2 variants × 1 seed of which 2 runs are reused, ≈ 17 min)."""
    return AblationSettings(**overrides)


def full_settings(**overrides: Any) -> AblationSettings:
    """The GPU setting: 4000 steps of batch 16 on 128-px crops, fidelity every 200 steps on 8 pairs,
    every held-out pair."""
    base: Dict[str, Any] = dict(steps=4000, batch_size=16, crop=128, curve_every=200, curve_images=8,
                                max_images=0, mode="full")
    base.update(overrides)
    return AblationSettings(**base)
