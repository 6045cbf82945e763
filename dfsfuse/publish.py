"""Publishing: a training run (or one of its checkpoints) → a hub-ready model folder, optionally pushed.

The folder is what :func:`dfsfuse.export.save_pretrained` writes, plus a model card with the
run's held-out metrics, a sample fusion and optionally ONNX (``dfsfuse export``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .export import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ModelLoadError,
    PathLike,
    from_pretrained,
    load_state_checked,
    model_config,
    read_model_config,
    read_safetensors,
    save_pretrained,
)

from .run_layout import COMPARISON_NAME, METRICS_NAME, SAMPLE_NAME, RunLayout, is_model_config  # noqa: F401

ONNX_NAME = "model.onnx"
TRAINER_STATE_NAME = "trainer_state.json"
CARD_METHODS = ("avg", "max", "teacher", "student")
DEFAULT_PROFILE_SIZE = (480, 640)


@dataclass
class StudentSource:
    """A student to publish and what is known about it.

    ``final`` says the weights are the run's final student; ``metrics`` and ``comparison`` are
    set only then (they describe exactly these weights); ``step`` is the training step when known.
    """

    model: nn.Module
    label: str
    final: bool = False
    run_dir: Optional[Path] = None
    run_config: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    step: Optional[int] = None
    comparison: Optional[Path] = None


@dataclass
class ExportResult:
    """What :func:`export_student` wrote: the folder, its files, and the ONNX check when exported."""

    folder: Path
    label: str
    files: List[str]
    onnx_max_error: Optional[float] = None


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def read_run_config(run_dir: PathLike) -> Dict[str, Any]:
    """The configuration a training run wrote (``{"model": {"student": name, "student_kwargs": ...}, ...}``):
    its ``run_config.json``, or the ``config.json`` of runs written before that name existed."""
    layout = RunLayout(run_dir)
    path = layout.find_run_config()
    if path is None:
        raise ModelLoadError(f"{layout.run_config}: missing (not a dfsfuse training run folder)")
    config = _read_json(path)
    model = config.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("student"), str):
        raise ModelLoadError(f"{path}: no 'model.student' entry (not a dfsfuse training run config)")
    if not isinstance(model.get("student_kwargs") or {}, dict):
        raise ModelLoadError(f"{path}: 'model.student_kwargs' must be a mapping")
    return config


def _student_from_run_config(config: Dict[str, Any], config_path: Path) -> nn.Module:
    from .models import create_model, list_models

    name, kwargs = config["model"]["student"], dict(config["model"].get("student_kwargs") or {})
    if name not in list_models():
        raise ModelLoadError(f"{config_path}: unknown student architecture {name!r} (known: {', '.join(list_models())})")
    try:
        return create_model(name, **kwargs)
    except TypeError as exc:
        raise ModelLoadError(f"{config_path}: student kwargs do not fit {name!r} ({exc})") from None


def student_state_from_checkpoint(weights: PathLike) -> Dict[str, torch.Tensor]:
    """The student's tensors in an Accelerate checkpoint (keys ``student.*``, prefix removed).

    Loss-side tensors (``distill.*`` adapters) are dropped; a ``module.`` prefix (a wrapped
    model) is tolerated.
    """
    weights = Path(weights)
    state = read_safetensors(weights)
    student = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith("student."):
            student[key[len("student."):]] = value
    if not student:
        prefixes = sorted({k.split(".")[0] for k in state})
        raise ModelLoadError(f"{weights}: no student tensors (keys 'student.*'; found prefixes {prefixes})")
    return student


def load_checkpoint_student(checkpoint: PathLike, run_config: Optional[Dict[str, Any]] = None) -> nn.Module:
    """Rebuild the student of ``RUN/checkpoints/student/step_N`` from the run's config and load its weights."""
    checkpoint = Path(checkpoint)
    layout, stage = RunLayout.from_checkpoint(checkpoint)
    if stage != "student":
        raise ModelLoadError(f"{checkpoint}: not a student checkpoint (expected RUN/checkpoints/student/step_N)")
    config = run_config if run_config is not None else read_run_config(layout.root)
    model = _student_from_run_config(config, layout.find_run_config() or layout.run_config)
    weights = checkpoint / WEIGHTS_NAME
    return load_state_checked(model, student_state_from_checkpoint(weights), weights).eval()


def _checkpoints(folder: Path) -> List[Path]:
    """Complete checkpoint folders (``step_*`` with weights, not ``.tmp``) under ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*")
                  if p.is_dir() and not p.name.endswith(".tmp") and (p / WEIGHTS_NAME).is_file())


def _checkpoint_step(checkpoint: Path) -> Optional[int]:
    state_path = checkpoint / TRAINER_STATE_NAME
    if state_path.is_file():
        try:
            return int(json.loads(state_path.read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    digits = checkpoint.name.rpartition("_")[2]
    return int(digits) if digits.isdigit() else None


def _final_student_steps(config: Dict[str, Any]) -> Optional[int]:
    steps = (config.get("student") or {}).get("steps")
    cap = (config.get("train") or {}).get("max_steps")
    if isinstance(steps, int) and isinstance(cap, int):
        return min(steps, cap)
    return steps if isinstance(steps, int) else None


def _same_weights(model: nn.Module, weights: Path) -> bool:
    """Whether ``weights`` (a safetensors file) holds exactly ``model``'s tensors."""
    if not weights.is_file():
        return False
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError):
        return False
    mine = model.state_dict()
    return set(state) == set(mine) and all(torch.equal(state[k], mine[k].detach().cpu()) for k in mine)


def _run_source(run_dir: Path) -> StudentSource:
    config = read_run_config(run_dir)
    layout = RunLayout(run_dir)
    metrics_path = layout.metrics
    student_dir = layout.student
    if (student_dir / CONFIG_NAME).is_file():
        comparison = layout.comparison
        return StudentSource(model=from_pretrained(student_dir), label=f"run {run_dir.name} (final student)",
                             final=True, run_dir=run_dir, run_config=config,
                             metrics=_read_json(metrics_path) if metrics_path.is_file() else {},
                             step=_final_student_steps(config), comparison=comparison if comparison.is_file() else None)
    found = _checkpoints(layout.checkpoints("student"))
    if not found:
        raise ModelLoadError(f"{run_dir}: no exported student/ folder and no student checkpoint in checkpoints/student/")
    return _checkpoint_source(found[-1], config)


def _checkpoint_source(checkpoint: Path, config: Optional[Dict[str, Any]] = None) -> StudentSource:
    layout, stage = RunLayout.from_checkpoint(checkpoint)
    run_dir = layout.root
    if stage == "teacher":
        raise ModelLoadError(f"{checkpoint}: a teacher checkpoint; export a student one (RUN/checkpoints/student/step_N)")
    config = config if config is not None else read_run_config(run_dir)
    model = load_checkpoint_student(checkpoint, config)
    step = _checkpoint_step(checkpoint)
    source = StudentSource(model=model, label=f"run {run_dir.name}, checkpoint step {step}",
                           run_dir=run_dir, run_config=config, step=step)
    if _same_weights(model, layout.student / WEIGHTS_NAME):  # the final student: the run's report applies
        metrics_path, comparison = layout.metrics, layout.comparison
        source.final = True
        source.metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
        source.comparison = comparison if comparison.is_file() else None
    return source


def load_student_source(path: PathLike) -> StudentSource:
    """The student in a run folder (its ``student/``, else its latest checkpoint), a checkpoint
    folder (``RUN/checkpoints/student/step_N`` or ``RUN/checkpoints/student``) or a model folder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not found (expected a training run, checkpoint or model folder)")
    if RunLayout(path).is_run():
        return _run_source(path)
    if (path / CONFIG_NAME).is_file():
        _read_json(path / CONFIG_NAME)  # one-line error when unreadable
        run = RunLayout.from_model_dir(path)
        if path.name == "student" and run is not None and run.metrics.is_file():
            return _run_source(run.root)
        model = from_pretrained(path)
        return StudentSource(model=model, label=f"model folder {path.name}")
    if (path / WEIGHTS_NAME).is_file():
        return _checkpoint_source(path)
    found = _checkpoints(path)
    if found:
        return _checkpoint_source(found[-1])
    raise ModelLoadError(f"{path}: not a training run folder, a checkpoint folder or a model folder")


def render_sample(model: nn.Module, path: PathLike) -> Path:
    """Write ``IR | VIS | fused`` (colour) of a bundled held-out MSRS pair, fused by ``model``."""
    import numpy as np

    from .data.bundled import BUNDLED_TEST, bundled_msrs_root
    from .data.io import read_pair, read_rgb, write_image
    from .fuse import fuse_arrays

    name = next((n for n in BUNDLED_TEST if n.endswith("D")), BUNDLED_TEST[0])
    root = bundled_msrs_root() / "test"
    ir_path, vis_path = root / "ir" / f"{name}.png", root / "vi" / f"{name}.png"
    fused = fuse_arrays(model, [read_pair(ir_path, vis_path)])[0]
    ir, vis = read_rgb(ir_path), read_rgb(vis_path)
    gap = np.full((ir.shape[0], 4, 3), 255, dtype=np.uint8)
    write_image(path, np.concatenate([ir, gap, vis, gap, fused], axis=1))
    return Path(path)


def _check_out_dir(out_dir: Path, source: Path, overwrite: bool) -> None:
    """Refuse to replace the source, a folder holding it, or an existing non-model folder."""
    out, src = out_dir.resolve(), source.resolve()
    if out == src or out in src.parents:
        raise ValueError(f"{out_dir}: the output folder would replace the source {source}; choose another --out")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise ValueError(f"{out_dir}: already exists; pass --overwrite to replace it")
        if not (out_dir / CONFIG_NAME).is_file() or "architecture" not in _read_json(out_dir / CONFIG_NAME):
            raise ValueError(f"{out_dir}: exists and is not a dfsfuse model folder; refusing to replace it")


def _summary(source: StudentSource, latency_runs: int, device: torch.device) -> Dict[str, Any]:
    from .models import profile

    recorded = (source.metrics.get("models") or {}).get("student") or {}
    size = (int(recorded.get("height", DEFAULT_PROFILE_SIZE[0])), int(recorded.get("width", DEFAULT_PROFILE_SIZE[1])))
    prof = profile(source.model, size=size)
    summary: Dict[str, Any] = {"params": prof.params, "gmac": prof.gmacs, "height": size[0], "width": size[1]}
    if latency_runs > 0:
        from .bench import measure_module

        record = measure_module(source.model.to(device), size, "eager", runs=latency_runs, warmup=1,
                                max_seconds=float("inf"), device=device, count=False)
        if not record.ok:
            raise ValueError(f"latency could not be measured: {record.reason}")
        summary["latency_ms"] = record.latency_ms_p50
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        summary["device"] = f"{device}{threads}, eager fp32, batch 1, median of {latency_runs}"
    elif "latency_ms" in recorded:
        summary["latency_ms"] = recorded["latency_ms"]
        summary["device"] = "measured after training (eager fp32, batch 1)"
    return summary


def _training(source: StudentSource) -> Optional[Dict[str, Any]]:
    config = source.run_config
    if not config:
        return None
    data = config.get("data") or {}
    datasets = [d.get("name") or d.get("root") for d in data.get("train") or [] if isinstance(d, dict)]
    if data.get("synthetic"):
        datasets.append("synthetic scenes")
    info: Dict[str, Any] = {"datasets": datasets, "teacher": (config.get("model") or {}).get("teacher"),
                            "student steps": source.step, "recipe": "recipes/distill.py"}
    if source.metrics.get("wall_time_s") is not None:
        info["wall time (s)"] = source.metrics["wall_time_s"]
    if source.metrics.get("distilled_from"):
        from .card import distilled_from_line

        info["distilled from"] = distilled_from_line(source.metrics["distilled_from"])
    info["config"] = config
    return {k: v for k, v in info.items() if v is not None}


def _sections(source: StudentSource, onnx_error: Optional[float]) -> Dict[str, str]:
    sections: Dict[str, str] = {}
    score = "Score it on your pairs with `dfsfuse fuse --model THIS_FOLDER ...` then `dfsfuse eval ...`."
    if source.run_config and not source.final:
        sections["Metrics"] = (f"These weights come from {source.label}, not the run's final student, so the run's "
                               f"held-out metrics do not describe them. {score}")
    elif not source.metrics:
        sections["Metrics"] = f"No held-out metrics were recorded for this model. {score}"
    miou = source.metrics.get("segmentation_miou") or {}
    if miou:
        values = ", ".join(f"{k} {v:.3f}" for k, v in miou.items())
        sections["Segmentation check"] = ("mIoU of the run's segmentation branch on held-out synthetic scenes "
                                          f"when fed each input: {values}.")
    if onnx_error is not None:
        sections["ONNX"] = "\n".join([
            f"`{ONNX_NAME}` takes `ir` and `vis_y` (float32 B×1×H×W in [0, 1], any H and W) and returns `fused`. "
            f"Its largest difference from PyTorch on a random 61×77 pair is {onnx_error:.1e}.", "",
            "```python", "import onnxruntime as ort", "",
            f'session = ort.InferenceSession("{ONNX_NAME}")',
            'fused, = session.run(None, {"ir": ir, "vis_y": vis_y})', "```"])
    return sections


def export_student(source: PathLike, out_dir: PathLike, *, onnx: bool = False, latency_runs: int = 0,
                   device: Union[str, torch.device] = "cpu", name: Optional[str] = None,
                   repo_id: Optional[str] = None, overwrite: bool = False,
                   head: Optional[str] = None) -> ExportResult:
    """Write a hub-ready folder for the student of ``source`` (see :func:`load_student_source`).

    The folder holds ``model.safetensors``, ``config.json``, a ``README.md`` card (front matter,
    training data and config, held-out metrics when they describe these weights, params, MACs
    and latency), ``sample.png`` (a held-out pair fused by these weights), the run's
    ``comparison.png`` when it shows these weights, and ``model.onnx`` with ``onnx=True``.
    ``latency_runs`` > 0 measures latency now on ``device``; 0 reuses the run's measurement.
    ``head`` exports the student with another output head (:func:`dfsfuse.models.convert.convert_head`,
    e.g. ``region-gain`` drops a ``region-contrast`` student's residual); the run's held-out
    metrics and comparison then describe other weights and are left out of the card.
    """
    from .card import render_card

    source_path, out_dir = Path(source), Path(out_dir)
    _check_out_dir(out_dir, source_path, overwrite)
    if latency_runs < 0:
        raise ValueError(f"latency runs must be 0 or more, got {latency_runs}")
    device = torch.device(device)
    src = load_student_source(source_path)
    model = src.model.eval()
    if getattr(model, "kind", "") != "fusion":
        raise ModelLoadError(f"{source_path}: {model.arch_name!r} is not a fusion model; only students are published")
    if head is not None:
        from .models.convert import convert_head

        try:
            model = convert_head(model, head)
        except ValueError as exc:
            raise ValueError(f"{source_path}: {exc}") from None
        src = replace(src, model=model, label=f"{src.label}, converted to the {head} head", final=False,
                      metrics={}, comparison=None)
    summary = _summary(src, latency_runs, device)
    model.cpu()
    work = Path(tempfile.mkdtemp(prefix=".dfsfuse-export."))
    try:
        files: Dict[str, PathLike] = {SAMPLE_NAME: render_sample(model, work / SAMPLE_NAME)}
        if src.comparison is not None:
            files[COMPARISON_NAME] = src.comparison
        onnx_error = None
        if onnx:
            from .onnx import export_onnx, max_onnx_error

            files[ONNX_NAME] = export_onnx(model, work / ONNX_NAME)
            onnx_error = max_onnx_error(model, files[ONNX_NAME])
        sections = _sections(src, onnx_error)
        if src.comparison is not None:
            sections["Comparison"] = (f"![IR | VIS | avg | max | teacher | student]({COMPARISON_NAME})\n\n"
                                      "*held-out pairs: IR | VIS | avg | max | teacher | student*")
        metrics = {m: src.metrics[m] for m in CARD_METHODS if isinstance(src.metrics.get(m), dict)}
        extra: Dict[str, Any] = {"role": "student", "source": src.label}
        if src.step is not None:
            extra["train_steps"] = src.step
        if src.run_config:
            extra["train_config"] = src.run_config
        config = model_config(model, **extra)
        card = render_card(name or f"dfsfuse {config['architecture']}", config, summary=summary,
                           metrics=metrics or None, training=_training(src), sample_image=SAMPLE_NAME,
                           repo_id=repo_id, sample_caption="IR | VIS | fused by this model (held-out MSRS pair)",
                           sections=sections)
        save_pretrained(model, out_dir, card=card, files=files, **extra)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(folder=out_dir, label=src.label, files=sorted(p.name for p in out_dir.iterdir()),
                        onnx_max_error=onnx_error)


class PublishError(ValueError):
    """Pushing a folder to the hub failed; the message names the repository and the cause."""


def push_to_hub(folder: PathLike, repo_id: str, *, private: bool = False, token: Optional[str] = None,
                commit_message: str = "Upload dfsfuse model") -> str:
    """Create ``repo_id`` on the Hugging Face Hub if needed and upload ``folder``; returns the commit URL.

    The folder must be loadable by :func:`from_pretrained` (checked first, locally).
    """
    folder = Path(folder)
    read_model_config(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise ModelLoadError(f"{folder / WEIGHTS_NAME}: missing weights file")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message)
    except Exception as exc:  # network, auth, invalid id: one line naming the repo
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PublishError(f"{repo_id}: push failed ({type(exc).__name__}: {first})") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")
