"""The whole benchmark: the planned runs (and those already finished), a time estimate, the
reference metrics (teacher, ``avg``, ``max``), :func:`run_benchmark` (every run trained and
scored, one JSON report) and the report written to disk."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..atomic import write_text_atomic
from ..run_layout import RunLayout
from .heldout import HeldoutPair, load_heldout, open_eval_sets
from .runs import _fingerprint, _macro, teacher_digest, train_and_score
from .settings import NOT_RUN, SEMANTIC_WEIGHTING, VARIANT_DESCRIPTIONS, VARIANT_TERMS, AblationSettings
from .variants import run_config

__all__ = ["LATENCY_SIZE", "planned_runs", "STEP_SECONDS", "EVAL_SECONDS_PER_PAIR", "MIOU_SECONDS_PER_IMAGE",
           "CURVE_SECONDS_PER_PAIR", "SETUP_SECONDS_PER_PAIR", "finished_runs", "estimate_seconds", "summarise",
           "reference_metrics", "result_key", "run_benchmark", "write_json"]


LATENCY_SIZE = (480, 640)


def planned_runs(settings: AblationSettings) -> List[Tuple[Optional[str], str, int]]:
    """``(student spec or None, variant, seed)`` of every run, in the order they are trained."""
    students = settings.students or [None]
    return [(s, v, seed) for s in students for v in settings.variants for seed in settings.seeds]


# Seconds per student step at 64×64, batch 4, on one free core of the development machine (2-core
# AMD EPYC, teacher dim 16 — the msrs_cpu teacher —, student width 12, msrs_cpu data: the frozen
# teacher's forward and the PNG decoding dominate, so 'alone' is not much cheaper). Measured at
# 0.76–1.33 s/step for 'full' while other jobs held the machine at a load of 4–5 and scaled to one
# free core; rough. Training cost scales with crop² × batch. Evaluation: per held-out pair, per
# mIoU image, per (curve point × curve pair); setup: the teacher's fusion of each held-out pair.
STEP_SECONDS = {"alone": 0.45, "output": 0.47, "features": 0.50, "full": 0.60, "ssvif": 0.62}
EVAL_SECONDS_PER_PAIR = 1.2
MIOU_SECONDS_PER_IMAGE = 2.0
CURVE_SECONDS_PER_PAIR = 0.35
SETUP_SECONDS_PER_PAIR = 5.0


def finished_runs(settings: AblationSettings) -> List[Tuple[Optional[str], str, int]]:
    """The planned runs already done with the same fingerprint (they will be reused, not retrained)."""
    teacher_dir = Path(settings.teacher)
    if not RunLayout.is_model_dir(teacher_dir):
        return []
    teacher_id = teacher_digest(teacher_dir)
    index = Path(settings.work_dir) / "index"
    done = []
    for student, variant, seed in planned_runs(settings):
        cfg, _ = run_config(settings, variant, seed, student)
        if (index / f"{_fingerprint(cfg, settings, teacher_id)}.json").is_file():
            done.append((student, variant, seed))
    return done


def estimate_seconds(settings: AblationSettings, n_pairs: int, n_miou: int,
                     skip: Sequence[Tuple[Optional[str], str, int]] = ()) -> float:
    """A rough wall-time estimate of the whole benchmark (one free CPU core of the development
    machine; see the constants), leaving out the runs in ``skip`` (reused)."""
    scale = (settings.crop / 64) ** 2 * settings.batch_size / 4
    total = n_pairs * SETUP_SECONDS_PER_PAIR
    for run in planned_runs(settings):
        if run in skip:
            continue
        variant = run[1]
        total += settings.steps * STEP_SECONDS[variant] * scale + 5.0
        total += n_pairs * EVAL_SECONDS_PER_PAIR + n_miou * MIOU_SECONDS_PER_IMAGE
        points = settings.steps // settings.curve_every + 1
        total += points * min(settings.curve_images, n_pairs) * CURVE_SECONDS_PER_PAIR
    return total


def summarise(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values (NaN if none)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def reference_metrics(teacher: nn.Module, segmenter: Optional[nn.Module], datasets: Dict[str, Any],
                      pairs: Sequence[HeldoutPair], settings: AblationSettings,
                      device: torch.device) -> Dict[str, Dict[str, float]]:
    """The same metrics for the teacher and the ``avg`` / ``max`` rules (the reference lines), with GMAC.

    The rules go through :func:`~dfsfuse.train.evaluate.evaluate_fusion`; the teacher is scored
    on its fusions already held in ``pairs`` with the same per-image call evaluate_fusion makes
    (``fusion_metrics`` of the 8-bit fusion), so the slow teacher is not run twice. Its mIoU (and
    that of ``max``, IR and VIS) on the labelled ``miou_set`` comes from an ``evaluate_fusion`` call
    with the segmenter on that set alone: the teacher fuses those pairs once more, as before.
    """
    from ..metrics import MetricAccumulator, fusion_metrics
    from ..models import profile
    from ..train.evaluate import evaluate_fusion

    report = evaluate_fusion({}, datasets, device, max_images=settings.max_images, show_progress=False)
    out = {m: _macro(report.metrics[m]) for m in report.metrics}
    accs: Dict[str, Any] = {}
    for p in pairs:
        accs.setdefault(p.dataset, MetricAccumulator()).update(fusion_metrics(p.teacher, p.ir, p.vis))
    out["teacher"] = _macro({name: acc.mean() for name, acc in accs.items()})
    if segmenter is not None and settings.miou_set in datasets:
        labelled = {settings.miou_set: datasets[settings.miou_set]}
        seg = evaluate_fusion({"teacher": teacher}, labelled, device, max_images=settings.max_images,
                              show_progress=False, baselines=(), segmenter=segmenter).segmentation
        for kind, value in seg.get(settings.miou_set, {}).get("miou", {}).items():
            out.setdefault(kind, {})["miou"] = float(value)
    out["teacher"]["gmac"] = profile(teacher, size=LATENCY_SIZE).gmacs
    out["teacher"]["params"] = float(sum(p.numel() for p in teacher.parameters()))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def result_key(student: Optional[str], variant: str, sizes_mode: bool) -> Tuple[str, ...]:
    """Where a run's metrics live in ``results``: ``(variant,)`` or ``(student, variant)``."""
    return (student or "student", variant) if sizes_mode else (variant,)


def run_benchmark(settings: AblationSettings, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train and score every planned run; return ``{"settings": ..., "results": ...}``.

    Ablation mode (``settings.students`` is None): ``results[variant][metric]`` = one value per
    seed. Sizes mode: ``results[student][variant][metric]``. ``settings`` (the returned block)
    also holds the held-out sets, the reference metrics (teacher, avg, max), the fidelity curves,
    each variant's logged loss terms, the models' size, the machine and the wall time.
    """
    from ..models import create_model, profile
    from ..train.stages import load_teacher

    settings.validate()
    t0 = time.time()
    teacher_dir = Path(settings.teacher)
    if not RunLayout.is_model_dir(teacher_dir):
        raise FileNotFoundError(f"{teacher_dir}: no exported teacher (config.json) here; pass --teacher DIR "
                                f"(a run's teacher/ folder, e.g. runs/msrs_cpu/teacher)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, segmenter = load_teacher(teacher_dir, device)
    datasets = open_eval_sets(settings.eval_sets)
    if not datasets:
        raise FileNotFoundError(f"no held-out set found among {settings.eval_sets}")
    pairs = load_heldout(datasets, teacher, settings.max_images)
    teacher_id = teacher_digest(teacher_dir)
    references = reference_metrics(teacher, segmenter, datasets, pairs, settings, device)
    sizes_mode = settings.students is not None
    results: Dict[str, Any] = {}
    curves: Dict[str, Dict[str, List[List[float]]]] = {}
    terms: Dict[str, List[str]] = {}
    models: Dict[str, Dict[str, float]] = {}
    runs = planned_runs(settings)
    for i, (student, variant, seed) in enumerate(runs, 1):
        key = result_key(student, variant, sizes_mode)
        name = "/".join(key)
        parts = [k.replace(":", "_").replace(",", "_").replace("=", "") for k in key]
        run_dir = Path(settings.work_dir).joinpath(*(["sizes"] if sizes_mode else []), *parts, f"seed_{seed}")
        t_run = time.time()
        outcome = train_and_score(settings, variant, seed, run_dir, datasets, pairs, teacher_id, student)
        node = results
        for k in key:
            node = node.setdefault(k, {})
        for metric, value in outcome.metrics.items():
            node.setdefault(metric, []).append(value)
        curves.setdefault(name, {})[str(seed)] = outcome.curve
        terms[name] = outcome.terms
        spec = student or "student"
        if spec not in models:
            cfg, _ = run_config(settings, variant, seed, student)
            model = create_model(cfg.model.student, **cfg.model.student_kwargs)
            prof = profile(model, size=LATENCY_SIZE)
            models[spec] = {"architecture": cfg.model.student, "kwargs": dict(cfg.model.student_kwargs),
                            "params": prof.params, "gmac": prof.gmacs}
        status = "reused" if outcome.reused else f"{time.time() - t_run:.0f} s"
        log(f"[{i}/{len(runs)}] {name} seed {seed}: fidelity {outcome.metrics['fidelity_psnr']:.2f} dB, "
            f"VIF {outcome.metrics.get('VIF', float('nan')):.3f}, Qabf {outcome.metrics.get('Qabf', float('nan')):.3f}"
            + (f", mIoU {outcome.metrics['miou']:.3f}" if "miou" in outcome.metrics else "")
            + f", steps to 95% {outcome.metrics['steps_to_95']:.0f} ({status})")
    settings_block = {
        **asdict(settings),
        "heldout": {name: (min(len(ds), settings.max_images) if settings.max_images else len(ds))
                    for name, ds in datasets.items()},
        "curve_pairs": [f"{p.dataset}/{p.name}" for p in pairs[: settings.curve_images]],
        "variant_terms": {v: list(VARIANT_TERMS[v]) for v in settings.variants},
        "semantic_weighting": {v: SEMANTIC_WEIGHTING[v] for v in settings.variants},
        "descriptions": {v: VARIANT_DESCRIPTIONS[v] for v in settings.variants},
        "not_run": dict(NOT_RUN),
        "logged_terms": terms,
        "definitions": {
            "fidelity_psnr": "mean over held-out pairs of 10*log10(1/MSE), student vs teacher fused luminance "
                             "in [0,1] rounded to 8 bits (peak 1, capped at 100 dB)",
            "fidelity_ssim": "mean over held-out pairs of mean(dfsfuse.losses.ssim_map(student, teacher, "
                             "data_range=1)), Gaussian window 11, sigma 1.5",
            "standard metrics": "dfsfuse.train.evaluate.evaluate_fusion; METRIC = mean over held-out sets of the "
                                "set means, SET/METRIC per set",
            "miou": f"teacher's segmenter fed with the student's fusion on {settings.miou_set} "
                    "(evaluate_fusion with the segmenter, first max_images pairs)",
            "steps_to_95": "first evaluated step (0 = initial weights, then every curve_every) from which the "
                           "fidelity PSNR on the curve pairs stays >= P(0) + 0.95 (P(final) - P(0)); null when "
                           "P(final) <= P(0)",
        },
        "references": references,
        "models": models,
        "curves": curves,
        "teacher_digest": teacher_id,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "wall_time_s": round(time.time() - t0, 1),
    }
    return _jsonable({"settings": settings_block, "results": results})


def write_json(report: Dict[str, Any], path: os.PathLike) -> Path:
    """Write the report atomically (NaN stored as null)."""
    return write_text_atomic(path, json.dumps(_jsonable(report), indent=1) + "\n")
