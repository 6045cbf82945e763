"""Ablation of the distilled semantic loss, and quality per multiply-add (library behind ``benchmarks/ablation.py``).

The same student architecture, data, steps and seeds are trained as *variants* that differ
only in the ``loss.*`` weights of the student stage (:data:`VARIANT_TERMS`):

* ``alone``    – the student's own fusion loss only, no teacher term;
* ``output``   – + output distillation ``|F_s − F_t|``;
* ``features`` – + feature (1×1 adapters) and wavelet sub-band distillation;
* ``full``     – the full distilled semantic loss: the above weighted per pixel by the
  segmenter's semantic map, + seg KL (student vs teacher segmentation), + seg CE on labels;
* ``ssvif``    – ``full`` with SSVIF's label-free cross-segmentation consistency instead of
  the labels (``loss.student_consistency``: a feature-level segmentation of the student's
  features must agree with the frozen segmenter on its fusion; no seg CE, no label read).

Every run goes through the recipe's own machinery — :func:`dfsfuse.train.stages.build_models`
and :func:`~dfsfuse.train.stages.distill_student` with an exported teacher folder (stage 1
skipped), the loop's checkpoints and its ``log.jsonl`` — never a second training loop. The
held-out fidelity curve is read back from the checkpoints the loop writes every
``curve_every`` steps (``train.checkpoint_every``, ``train.keep_checkpoints=0`` keeps them all).

Definitions (on held-out pairs never trained on, fusions rounded to 8 bits as saved):

* ``fidelity_psnr``: mean over pairs of ``10·log10(1 / MSE)`` between the student's and the
  teacher's fused luminance in [0, 1] (peak 1; an MSE below 1e-10 counts as 100 dB);
* ``fidelity_ssim``: mean over pairs of the mean of :func:`dfsfuse.losses.ssim_map` (Gaussian
  window 11, σ 1.5, data range 1) of student vs teacher;
* standard metrics (``VIF``, ``Qabf``, …): :func:`dfsfuse.train.evaluate.evaluate_fusion`, the
  mean over the held-out sets of each set's mean (every set weighs the same); ``SET/METRIC`` per set;
* ``miou``: the teacher's segmenter fed with the student's fusion on the labelled ``miou_set``
  (MSRS val), segmented by the same :func:`~dfsfuse.train.evaluate.evaluate_fusion` call on the
  8-bit fusions it scores (``segmenter=``; the numbers of ``evaluate_segmentation_real``);
* ``steps_to_95``: the first evaluated step ``s`` (0 = the initial weights, then every
  ``curve_every`` steps) from which the fidelity PSNR on the first ``curve_images`` held-out
  pairs stays at or above ``P(0) + 0.95·(P(final) − P(0))``: 95% of the final fidelity gain
  (null when the final PSNR is not above the initial one).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path, write_text_atomic
from .run_layout import RunLayout

DISTILL_TERMS: Tuple[str, ...] = ("output", "feature", "frequency", "seg_kl", "seg_ce", "student_consistency")
"""The teacher- and segmenter-dependent ``loss.*`` weights of the student stage."""

TERM_WEIGHTS_WHEN_ON: Dict[str, float] = {"student_consistency": 0.2}
"""Weight of a term a variant switches on when neither the base config nor
:class:`~dfsfuse.train.config.LossConfig` gives it one (its default is 0: off in the recipe)."""

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

MAIN_METRICS: Tuple[str, ...] = ("fidelity_psnr", "fidelity_ssim", "VIF", "Qabf", "SSIM", "miou", "steps_to_95")
"""The columns of the table (every recorded metric is in the JSON)."""

DEFAULT_SIZES: Tuple[str, ...] = ("student:width=4", "student:width=8", "student:width=12", "student:width=16",
                                  "student_fast")
SIZE_VARIANTS: Tuple[str, ...] = ("full", "alone")
PSNR_CAP_DB = 100.0
LATENCY_SIZE = (480, 640)


# --------------------------------------------------------------------------------------------
# Settings


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


# --------------------------------------------------------------------------------------------
# Variants → config overrides


def variant_overrides(variant: str, base_loss: Any) -> List[str]:
    """``loss.*`` overrides that turn the base config's loss into ``variant``.

    A term the variant switches on keeps the base config's weight (or the
    :class:`~dfsfuse.train.config.LossConfig` default when the base has it at 0); every other
    distillation term is set to 0. The student's own fusion loss keeps its weight in every
    variant (the default when the base has 0), so the variants differ only in teacher terms.
    """
    from .train.config import LossConfig

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
    from .train.objectives import fusion_loss_from

    fusion = [f"fusion_{n}" for n in fusion_loss_from(cfg.loss).term_names]
    return sorted([*VARIANT_TERMS[variant], *fusion])


def logged_terms(log_path: os.PathLike, stage: str = "student") -> List[str]:
    """Loss term names logged for ``stage`` in a run's ``log.jsonl`` (``loss`` and ``lr`` excluded)."""
    from .train.tracking import read_log

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
    from .bench import parse_model_spec
    from .models import model_kind

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
    from .train.config import load_config

    base_path = Path(settings.config) if settings.config else None
    base = load_config(base_path, settings.overrides)
    overrides = [*settings.overrides, *run_overrides(settings, seed), *student_overrides(student),
                 *variant_overrides(variant, base.loss)]
    return load_config(base_path, overrides), overrides


# --------------------------------------------------------------------------------------------
# Held-out pairs and fidelity


@dataclass
class HeldoutPair:
    """One held-out pair as evaluate_fusion reads it: 8-bit grey levels (float32 H×W) and the teacher's fusion."""

    dataset: str
    name: str
    ir: np.ndarray
    vis: np.ndarray
    teacher: np.ndarray


def open_eval_sets(eval_sets: Dict[str, str]):
    """``{name: root}`` (``root`` may be ``bundled:msrs|test`` for a split) → ``{name: PairedImages}``;
    missing folders are skipped with a warning."""
    from .train.config import DatasetSpec, EvalConfig
    from .train.data import build_eval_sets

    specs = []
    for name, root in eval_sets.items():
        root, _, split = root.partition("|")
        specs.append(DatasetSpec(root, split or None, name, optional=True))
    return build_eval_sets(EvalConfig(sets=specs))


def load_heldout(datasets: Dict[str, Any], teacher: nn.Module, max_images: int) -> List[HeldoutPair]:
    """The first ``max_images`` pairs of every set (0 = all), each with the teacher's 8-bit fusion."""
    from .train.evaluate import fuse_gray

    pairs = []
    teacher.eval()
    for name, ds in datasets.items():
        n = min(len(ds), max_images) if max_images else len(ds)
        for i in range(n):
            s = ds[i]
            ir = np.round(s["ir"][0].numpy() * 255.0).astype(np.float32)
            vis = np.round(s["vis_y"][0].numpy() * 255.0).astype(np.float32)
            pairs.append(HeldoutPair(name, s["name"], ir, vis, fuse_gray(teacher, ir, vis)))
    return pairs


def psnr_ssim(a: np.ndarray, b: np.ndarray) -> Tuple[float, float]:
    """PSNR (dB, peak 1, capped at 100 dB) and mean SSIM (:func:`dfsfuse.losses.ssim_map`, data range 1)
    of two H×W images given in grey levels [0, 255]."""
    from .losses import ssim_map

    x = torch.from_numpy(np.asarray(a, dtype=np.float32) / 255.0)[None, None]
    y = torch.from_numpy(np.asarray(b, dtype=np.float32) / 255.0)[None, None]
    mse = float(((x.double() - y.double()) ** 2).mean())
    psnr = PSNR_CAP_DB if mse < 1e-10 else min(PSNR_CAP_DB, 10.0 * math.log10(1.0 / mse))
    return psnr, float(ssim_map(x, y, data_range=1.0).mean())


def fidelity(model: nn.Module, pairs: Sequence[HeldoutPair]) -> Tuple[float, float]:
    """Mean PSNR and SSIM of ``model``'s 8-bit fusion against the teacher's on ``pairs``."""
    from .train.evaluate import fuse_gray

    model.eval()
    values = [psnr_ssim(fuse_gray(model, p.ir, p.vis), p.teacher) for p in pairs]
    return float(np.mean([v[0] for v in values])), float(np.mean([v[1] for v in values]))


def steps_to_fraction(curve: Sequence[Tuple[int, float]], fraction: float = 0.95) -> float:
    """The first step from which the curve stays at or above ``c0 + fraction·(c_final − c0)``.

    ``curve`` is ``[(step, value), ...]`` in step order, starting at step 0. A curve that ends
    at or below its start has no gain to reach: NaN (stored as null in the JSON).
    """
    if not curve:
        raise ValueError("empty curve")
    start, final = curve[0][1], curve[-1][1]
    if not final > start:
        return float("nan")
    threshold = start + fraction * (final - start)
    answer = curve[-1][0]
    for step, value in reversed(curve):
        if value < threshold:
            break
        answer = step
    return float(answer)


# --------------------------------------------------------------------------------------------
# One run


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
    from .models import create_model

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
    from .train.evaluate import evaluate_fusion

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
    from .train.stages import build_models, distill_student, load_teacher, make_accelerator, prepare_run_dir

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
    from .publish import load_checkpoint_student
    from .train.loop import checkpoint_dirs

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


# --------------------------------------------------------------------------------------------
# The benchmark


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
    from .metrics import MetricAccumulator, fusion_metrics
    from .models import profile
    from .train.evaluate import evaluate_fusion

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
    from .models import create_model, profile
    from .train.stages import load_teacher

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


# --------------------------------------------------------------------------------------------
# Presentation


def _fmt(values: Sequence[float], metric: str) -> str:
    mean, std = summarise(values)
    if not math.isfinite(mean):
        return "-"
    digits = 0 if metric == "steps_to_95" else 2 if metric == "fidelity_psnr" else 3
    finite = sum(1 for v in values if v is not None and math.isfinite(v))
    note = f" (n={finite})" if finite < len(values) else ""  # e.g. steps_to_95 undefined for some seeds
    return f"{mean:.{digits}f} ± {std:.{digits}f}{note}"


def results_table(report: Dict[str, Any], metrics: Sequence[str] = MAIN_METRICS):
    """A rich table of mean ± std (sample std over seeds) per variant (and student size)."""
    from rich.table import Table

    results = report["results"]
    sizes_mode = report["settings"].get("students") is not None
    rows: List[Tuple[List[str], Dict[str, List[float]]]] = []
    if sizes_mode:
        models = report["settings"].get("models", {})
        for spec, by_variant in results.items():
            for variant, values in by_variant.items():
                rows.append(([spec, f"{models.get(spec, {}).get('gmac', float('nan')):.3f}", variant], values))
        head = ["student", "GMAC", "variant"]
    else:
        rows = [([variant], values) for variant, values in results.items()]
        head = ["variant"]
    present = [m for m in metrics if any(m in values for _, values in rows)]
    seeds = len(report["settings"].get("seeds", []))
    table = Table(title=f"held-out mean ± std over {seeds} seed(s)")
    for col in head:
        table.add_column(col, no_wrap=True)
    for m in present:
        table.add_column(m, justify="right", no_wrap=True)
    for label, values in rows:
        table.add_row(*label, *(_fmt(values.get(m, []), m) for m in present))
    refs = report["settings"].get("references", {})
    for name in ("teacher", "max", "avg"):
        if name in refs:
            ref = refs[name]
            cells = [f"{ref[m]:.3f}" if isinstance(ref.get(m), (int, float)) else "" for m in present]
            gmac = f"{ref['gmac']:.2f}" if "gmac" in ref else ""
            label = [name, gmac, "reference"] if sizes_mode else [f"{name} (reference)"]
            table.add_row(*label, *cells, style="dim")
    return table


def plot_curves(report: Dict[str, Any], path: os.PathLike) -> Path:
    """PNG: held-out fidelity PSNR (student vs teacher) against step, mean over seeds with a min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["settings"]["curves"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, by_seed in curves.items():
        series = [np.asarray(c, dtype=np.float64) for c in by_seed.values()]
        n = min(len(s) for s in series)
        steps = series[0][:n, 0]
        values = np.stack([s[:n, 1] for s in series])
        line, = ax.plot(steps, values.mean(0), marker="o", ms=3, label=f"{name} ({len(series)} seed(s))")
        if len(series) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    s = report["settings"]
    ax.set_xlabel("student step")
    ax.set_ylabel("fidelity to teacher: PSNR (dB)")
    ax.set_title(f"held-out fidelity ({', '.join(s['curve_pairs'])}), crop {s['crop']}, batch {s['batch_size']}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_quality_per_mac(report: Dict[str, Any], path: os.PathLike) -> Path:
    """PNG: VIF, Qabf (and mIoU) against GMAC at 480×640 per student size, distilled vs alone,
    with the teacher, ``max`` and ``avg`` as horizontal reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, settings = report["results"], report["settings"]
    models, refs = settings["models"], settings.get("references", {})
    metrics = [m for m in ("VIF", "Qabf", "miou")
               if any(m in vals for by_v in results.values() for vals in by_v.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.0), squeeze=False)
    styles = {"teacher": ("k", "-"), "max": ("tab:red", "--"), "avg": ("tab:gray", ":")}
    for ax, metric in zip(axes[0], metrics):
        for variant, marker in (("full", "o"), ("alone", "s")):
            pts = []
            for spec, by_variant in results.items():
                if variant in by_variant and metric in by_variant[variant]:
                    mean, std = summarise(by_variant[variant][metric])
                    pts.append((models[spec]["gmac"], mean, std, spec))
            if not pts:
                continue
            pts.sort()
            xs, ys, es = (np.array([p[i] for p in pts]) for i in range(3))
            ax.errorbar(xs, ys, yerr=es, marker=marker, capsize=3, label="distilled (full)" if variant == "full"
                        else "alone", fillstyle="full" if variant == "full" else "none")
            if variant == "full":
                for x, y, _, spec in pts:
                    ax.annotate(spec.replace("student", "s").replace(":", " "), (x, y), fontsize=6,
                                textcoords="offset points", xytext=(3, 4))
        for name, (color, ls) in styles.items():
            if metric in refs.get(name, {}):
                label = f"{name} ({refs[name]['gmac']:.1f} GMAC)" if name == "teacher" else name
                ax.axhline(refs[name][metric], color=color, ls=ls, lw=1, label=label)
        ax.set_xlabel("GMAC at 480×640")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"quality per multiply-add: {settings['steps']} steps, crop {settings['crop']}, "
                 f"{len(settings['seeds'])} seed(s)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return Path(path)
