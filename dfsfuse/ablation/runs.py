"""One run of the ablation: a student trained through the recipe's stage 2 with a variant's
weights (:func:`train_variant`), scored on the held-out pairs (fidelity curve, standard metrics,
mIoU), and its record, reused when a run with the same fingerprint already finished."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..atomic import write_text_atomic
from ..run_layout import RunLayout
from .heldout import HeldoutPair, fidelity, steps_to_fraction
from .settings import AblationSettings
from .variants import expected_terms, logged_terms, run_config

__all__ = ["RunOutcome", "teacher_digest", "evaluate_student", "TrainedRun", "train_variant", "fidelity_curve",
           "train_and_score"]


@dataclass
class RunOutcome:
    """What one trained student scored: ``metrics`` (name → value), the fidelity ``curve``
    (``[step, psnr, ssim]``), the logged ``terms`` and the wall ``seconds``."""

    metrics: Dict[str, float]
    curve: List[List[float]]
    terms: List[str]
    seconds: float
    reused: bool = False


def _file_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def teacher_digest(teacher_dir: os.PathLike) -> str:
    """A short hash of the teacher's and its segmenter's weights (identifies cached runs)."""
    d = Path(teacher_dir)
    seg = RunLayout.find_segmenter(d) or RunLayout.segmenter_of(d)
    return _file_digest([RunLayout.model_weights_of(d), RunLayout.model_weights_of(seg)])


def _fingerprint(cfg: Any, settings: AblationSettings, teacher_id: str) -> str:
    """What makes two runs interchangeable: the run config (the student as its resolved
    architecture + kwargs, so ``student`` and ``student:width=12`` match), the teacher's weights
    and the evaluation settings."""
    from ..models import create_model

    config = cfg.to_dict()
    with torch.device("meta"):
        config["model"]["student_arch"] = create_model(cfg.model.student, **cfg.model.student_kwargs).arch_config()
    del config["model"]["student"], config["model"]["student_kwargs"]
    if config["train"].get("stage1") is None:  # unset (inferred): runs cached before the key existed still match
        config["train"].pop("stage1", None)
    if not config["loss"].get("student_consistency"):  # off: runs cached before the key existed still match
        config["loss"].pop("student_consistency", None)
    payload = {"config": config, "teacher": teacher_id, "eval_sets": settings.eval_sets,
               "max_images": settings.max_images, "curve_images": settings.curve_images,
               "miou_set": settings.miou_set, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _macro(per_set: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """Mean over sets of each metric (a NaN in any set gives NaN), plus ``SET/METRIC`` entries."""
    out: Dict[str, float] = {}
    names = list(next(iter(per_set.values()))) if per_set else []
    for m in names:
        out[m] = float(np.mean([per_set[s][m] for s in per_set]))
    for s, values in per_set.items():
        for m, v in values.items():
            out[f"{s}/{m}"] = float(v)
    return out


def evaluate_student(student: nn.Module, segmenter: Optional[nn.Module], datasets: Dict[str, Any],
                     pairs: Sequence[HeldoutPair], settings: AblationSettings,
                     device: torch.device) -> Dict[str, float]:
    """Fidelity to the teacher, the standard metrics and (where the labelled set exists) mIoU of one student."""
    from ..train.evaluate import evaluate_fusion

    student = student.eval()
    psnr, ssim = fidelity(student, pairs)
    # The labelled miou_set is segmented on the fusions scored here (no second pass of the student).
    report = evaluate_fusion({"student": student}, datasets, device, max_images=settings.max_images,
                             show_progress=False, baselines=(), segmenter=segmenter,
                             segment_sets=(settings.miou_set,))
    metrics = {"fidelity_psnr": psnr, "fidelity_ssim": ssim, **_macro(report.metrics["student"])}
    if settings.miou_set in report.segmentation:
        metrics["miou"] = float(report.segmentation[settings.miou_set]["miou"]["student"])
    return metrics


@dataclass
class TrainedRun:
    """One finished student stage: its config, the trained ``student`` (eval mode), the frozen
    teacher's ``segmenter``, the ``initial`` student weights (step 0), the logged loss ``terms``."""

    cfg: Any
    overrides: List[str]
    run_dir: Path
    student: nn.Module
    segmenter: Optional[nn.Module]
    initial: Dict[str, torch.Tensor]
    terms: List[str]
    seconds: float


def train_variant(settings: AblationSettings, variant: str, seed: int, run_dir: Path,
                  student_spec: Optional[str] = None, check_terms: bool = True) -> TrainedRun:
    """Train one student through the recipe's stage 2 (``build_models`` + ``distill_student``
    from the exported teacher, its loop, checkpoints and ``log.jsonl``) with ``variant``'s weights.

    With ``check_terms`` a run whose logged loss terms are not exactly :func:`expected_terms`
    raises ``RuntimeError`` (a variant must switch exactly the terms it names).
    """
    from ..train.stages import build_models, distill_student, load_teacher, make_accelerator, prepare_run_dir

    cfg, overrides = run_config(settings, variant, seed, student_spec)
    run_dir = prepare_run_dir(run_dir, resume=False, overwrite=True)
    accelerator = make_accelerator(cfg, run_dir)
    device = accelerator.device
    _, _, student = build_models(cfg)
    teacher, segmenter = load_teacher(Path(settings.teacher), device)
    needs_seg = cfg.loss.semantic_weighting or cfg.loss.seg_kl > 0 or cfg.loss.seg_ce > 0
    if needs_seg and segmenter is None:
        raise ValueError(f"{settings.teacher}: variant {variant!r} needs the teacher's segmenter "
                         f"(teacher/segmenter/ or a segmenter/ folder beside it), which this folder lacks")
    initial = {k: v.detach().clone() for k, v in student.state_dict().items()}
    t0 = time.time()
    try:
        distill_student(accelerator, cfg, teacher, segmenter, student, run_dir)
    finally:
        accelerator.end_training()
    seconds = time.time() - t0
    student = accelerator.unwrap_model(student).eval()
    terms = logged_terms(RunLayout(run_dir).log)
    if check_terms and terms != expected_terms(variant, cfg):
        raise RuntimeError(f"{run_dir}: variant {variant!r} logged terms {terms}, "
                           f"expected {expected_terms(variant, cfg)}")
    return TrainedRun(cfg, overrides, run_dir, student, segmenter, initial, terms, seconds)


def fidelity_curve(run: TrainedRun, pairs: Sequence[HeldoutPair]) -> List[List[float]]:
    """``[step, psnr, ssim]`` of the initial weights (step 0) and of every checkpoint the loop kept."""
    from ..publish import load_checkpoint_student
    from ..train.loop import checkpoint_dirs

    device = next(run.student.parameters()).device
    initial = copy.deepcopy(run.student)
    initial.load_state_dict(run.initial)
    curve = [[0, *fidelity(initial, pairs)]]
    cfg_dict = run.cfg.to_dict()
    for ckpt in checkpoint_dirs(RunLayout(run.run_dir).checkpoints("student")):
        step = int(ckpt.name.split("_")[1])
        curve.append([step, *fidelity(load_checkpoint_student(ckpt, cfg_dict).to(device), pairs)])
    return curve


def train_and_score(settings: AblationSettings, variant: str, seed: int, run_dir: Path,
                    datasets: Dict[str, Any], pairs: Sequence[HeldoutPair], teacher_id: str,
                    student_spec: Optional[str] = None) -> RunOutcome:
    """Train one run (:func:`train_variant`) and score it: fidelity curve, held-out metrics, mIoU.

    A run whose record (``RUN/ablation_run.json`` or ``WORK/index/<fingerprint>.json``) carries
    the same fingerprint (config, teacher weights, evaluation settings) is reused instead of
    retrained, so an interrupted benchmark continues where it stopped.
    """
    cfg, _ = run_config(settings, variant, seed, student_spec)
    fingerprint = _fingerprint(cfg, settings, teacher_id)
    record_path = run_dir / "ablation_run.json"
    index_path = Path(settings.work_dir) / "index" / f"{fingerprint}.json"
    for path in (record_path, index_path):
        if path.is_file():
            try:
                old = json.loads(path.read_text())
                if old.get("fingerprint") == fingerprint:
                    return RunOutcome(old["metrics"], old["curve"], old["terms"], old["seconds"], reused=True)
            except (OSError, ValueError, KeyError):
                pass
    t0 = time.time()
    run = train_variant(settings, variant, seed, run_dir, student_spec)
    device = next(run.student.parameters()).device
    curve = fidelity_curve(run, pairs[: settings.curve_images])
    metrics = evaluate_student(run.student, run.segmenter, datasets, pairs, settings, device)
    metrics["steps_to_95"] = float(steps_to_fraction([(int(s), p) for s, p, _ in curve]))
    metrics["train_seconds"] = round(run.seconds, 1)
    outcome = RunOutcome(metrics, curve, run.terms, round(time.time() - t0, 1))
    text = json.dumps({"fingerprint": fingerprint, "variant": variant, "seed": seed, "student": student_spec,
                       "run_dir": str(run_dir), "overrides": run.overrides, **asdict(outcome)}, indent=1)
    write_text_atomic(record_path, text)
    write_text_atomic(index_path, text)
    return outcome
