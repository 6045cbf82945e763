"""Variants → config overrides: the ``loss.*`` weights that make each variant, the loss terms a
run of it must log (and those it did log), the student model and the per-run budget, and the full
run config of one (variant, seed, student) run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .settings import SEMANTIC_WEIGHTING, VARIANT_TERMS, AblationSettings

__all__ = ["DISTILL_TERMS", "TERM_WEIGHTS_WHEN_ON", "variant_overrides", "expected_terms", "logged_terms",
           "student_overrides", "run_overrides", "run_config"]


DISTILL_TERMS: Tuple[str, ...] = ("output", "feature", "frequency", "seg_kl", "seg_ce", "student_consistency")
"""The teacher- and segmenter-dependent ``loss.*`` weights of the student stage."""

TERM_WEIGHTS_WHEN_ON: Dict[str, float] = {"student_consistency": 0.2}
"""Weight of a term a variant switches on when neither the base config nor
:class:`~dfsfuse.train.config.LossConfig` gives it one (its default is 0: off in the recipe)."""


def variant_overrides(variant: str, base_loss: Any) -> List[str]:
    """``loss.*`` overrides that turn the base config's loss into ``variant``.

    A term the variant switches on keeps the base config's weight (or the
    :class:`~dfsfuse.train.config.LossConfig` default when the base has it at 0); every other
    distillation term is set to 0. The student's own fusion loss keeps its weight in every
    variant (the default when the base has 0), so the variants differ only in teacher terms.
    """
    from ..train.config import LossConfig

    if variant not in VARIANT_TERMS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANT_TERMS)}")
    defaults = LossConfig()
    on = VARIANT_TERMS[variant]
    out = []
    for term in DISTILL_TERMS:
        weight = (getattr(base_loss, term) or getattr(defaults, term) or TERM_WEIGHTS_WHEN_ON[term]) \
            if term in on else 0.0
        out.append(f"loss.{term}={float(weight)!r}")
    out.append(f"loss.semantic_weighting={'true' if SEMANTIC_WEIGHTING[variant] else 'false'}")
    out.append(f"loss.student_fusion={float(base_loss.student_fusion or defaults.student_fusion)!r}")
    return out


def expected_terms(variant: str, cfg: Any) -> List[str]:
    """The student-stage loss term names (as logged, ``student/<term>``) a run of ``variant`` must
    produce under ``cfg`` (after :func:`variant_overrides`): its distillation terms + ``fusion_*``."""
    from ..train.objectives import fusion_loss_from

    fusion = [f"fusion_{n}" for n in fusion_loss_from(cfg.loss).term_names]
    return sorted([*VARIANT_TERMS[variant], *fusion])


def logged_terms(log_path: os.PathLike, stage: str = "student") -> List[str]:
    """Loss term names logged for ``stage`` in a run's ``log.jsonl`` (``loss`` and ``lr`` excluded)."""
    from ..train.tracking import read_log

    names = set()
    for record in read_log(log_path):
        for key in record:
            if key.startswith(f"{stage}/"):
                names.add(key.split("/", 1)[1])
    return sorted(names - {"loss", "lr"})


def student_overrides(spec: Optional[str]) -> List[str]:
    """``model.student`` / ``model.student_kwargs`` overrides for a registry spec (``student:width=8``)."""
    if spec is None:
        return []
    from ..bench import parse_model_spec
    from ..models import model_kind

    parsed = parse_model_spec(spec)
    if parsed.path or model_kind(parsed.name) != "fusion":
        raise ValueError(f"student {spec!r}: need a registered fusion model name with optional kwargs")
    return [f"model.student={parsed.name}", f"model.student_kwargs={json.dumps(parsed.kwargs)}"]


def run_overrides(settings: AblationSettings, seed: int) -> List[str]:
    """Overrides every run of ``settings`` shares (its budget, seed and checkpoint cadence)."""
    out = [f"student.steps={settings.steps}", f"student.batch_size={settings.batch_size}",
           f"data.crop={settings.crop}", f"train.seed={seed}", "train.max_steps=null",
           f"train.checkpoint_every={settings.curve_every}", "train.keep_checkpoints=0",
           f"student.warmup_steps={max(1, min(settings.steps // 10, 30))}"]
    if settings.lr is not None:
        out.append(f"student.lr={settings.lr}")
    return out


def run_config(settings: AblationSettings, variant: str, seed: int, student: Optional[str] = None):
    """The full :class:`~dfsfuse.train.config.RunConfig` of one run and the override list that made it."""
    from ..train.config import load_config

    base_path = Path(settings.config) if settings.config else None
    base = load_config(base_path, settings.overrides)
    overrides = [*settings.overrides, *run_overrides(settings, seed), *student_overrides(student),
                 *variant_overrides(variant, base.loss)]
    return load_config(base_path, overrides), overrides
