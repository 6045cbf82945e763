"""Saving and loading models as a hub-ready folder: ``model.safetensors`` + ``config.json`` (+ card).

Loading reads JSON and safetensors only: nothing is unpickled, nothing a file says is run.
Turning a training run into a publishable folder is :mod:`dfsfuse.publish`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__

SHIPPED_STUDENT = Path(__file__).resolve().parent / "assets" / "student"
"""The pretrained student shipped in the package (used by ``dfsfuse fuse`` when no model is given)."""
SHIPPED_TEACHER = SHIPPED_STUDENT.with_name("teacher")
"""The teacher the shipped student was distilled from (float16 storage)."""
SHIPPED_SEGMENTER = SHIPPED_STUDENT.with_name("segmenter")
"""The segmenter of that run (9 MSRS classes, reads a fused luminance; float16 storage)."""
SHIPPED_SEMANTIC = SHIPPED_STUDENT.with_name("semantic")
"""The segmentation-friendly set (``recipes/configs/msrs_semantic_cpu.yaml``): ``teacher/``
(float16), ``student/`` and ``segmenter/`` (float16), both fusion networks with the
``region-contrast`` head; fusions that help a segmenter more than IR, VIS or ``max`` (README,
Semantic benchmark) at a cost in VIF and Q^AB/F."""
SHIPPED_SEMANTIC_TONE = SHIPPED_STUDENT.with_name("semantic_tone")
"""The segmentation-friendly set trained with the night brightened (``recipes/configs/msrs_semantic_tone_cpu.yaml``):
``teacher/``, ``student/`` (both with ``vis_tone`` 0.4: they lift a dark visible image's mean before
fusing it) and ``segmenter/`` (float16, pre-trained on ``gamma-contrast`` fusions); the fusion that helps a
segmenter most (README, Semantic benchmark), at a larger cost in VIF than ``semantic``."""

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"

PathLike = Union[str, os.PathLike]


class ModelLoadError(ValueError):
    """A model folder that cannot be loaded; the message names the file and the problem."""


def model_config(model: nn.Module, **extra: Any) -> Dict[str, Any]:
    """The ``config.json`` content for ``model`` (registry name + kwargs + ``extra`` metadata)."""
    if not hasattr(model, "arch_config"):
        raise TypeError(f"{type(model).__name__} was not built by dfsfuse.models.create_model")
    from .models import model_kind

    config = dict(model.arch_config())
    config["kind"] = model_kind(config["architecture"])
    config["dfsfuse_version"] = __version__
    config.update(extra)
    return config


STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
"""How floating-point weights may be stored on disk; loading always restores the model's float32."""


def weights_sha256(folder: PathLike) -> str:
    """SHA-256 (hex) of a model folder's ``model.safetensors``: names the exact weights a student
    was distilled from, so a later run can tell whether it reads the same teacher."""
    digest = hashlib.sha256()
    with open(Path(folder) / WEIGHTS_NAME, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_pretrained(model: nn.Module, out_dir: PathLike, card: Optional[str] = None,
                    files: Optional[Dict[str, PathLike]] = None, storage: str = "float32", **extra: Any) -> Path:
    """Write ``model`` to ``out_dir`` atomically (built in a temp folder, then renamed).

    ``card`` is the model card text (``README.md``); ``files`` maps extra file names (a sample
    image, an ONNX graph) to paths copied in; ``extra`` goes into ``config.json``.
    ``storage="float16"`` halves the file (floating tensors stored in half precision, recorded
    as ``"storage": "float16"`` in ``config.json``); :func:`from_pretrained` loads them back into
    the float32 model. Refuses to write non-finite weights, also ones that overflow float16.
    """
    out_dir = Path(out_dir)
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage must be one of {', '.join(STORAGE_DTYPES)}, got {storage!r}")
    dtype = STORAGE_DTYPES[storage]
    state = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().to("cpu")).contiguous()
             for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        why = "non-finite" if storage == "float32" else f"non-finite or beyond {storage} range"
        raise ValueError(f"{out_dir}: refusing to export {why} weights ({bad[0]})")
    if storage != "float32":
        extra = {**extra, "storage": storage}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "dfsfuse_version": __version__})
        (tmp / CONFIG_NAME).write_text(json.dumps(model_config(model, **extra), indent=2) + "\n")
        if card is not None:
            (tmp / CARD_NAME).write_text(card)
        for name, src in (files or {}).items():
            shutil.copyfile(src, tmp / name)
        if out_dir.exists():
            backup = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(out_dir, backup)
            os.replace(tmp, out_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def copy_model_folder(src: PathLike, dst: PathLike, storage: str = "float32") -> Path:
    """Copy a model folder (weights, ``config.json``, card and other top-level files, not
    subfolders) to ``dst`` atomically, re-storing the weights as ``storage``; e.g. a run's
    teacher shipped in float16. The config keeps every entry of the source's."""
    src = Path(src)
    config = read_model_config(src)
    model = from_pretrained(src)
    extra = {k: v for k, v in config.items() if k not in ("architecture", "kwargs", "kind", "dfsfuse_version", "storage")}
    card = (src / CARD_NAME).read_text() if (src / CARD_NAME).is_file() else None
    files = {f.name: f for f in src.iterdir() if f.is_file() and f.name not in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)}
    return save_pretrained(model, dst, card=card, files=files, storage=storage, **extra)


def _resolve(path_or_hub_id: PathLike, revision: Optional[str] = None) -> Path:
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        return path
    text = str(path_or_hub_id)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download
        except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
            raise ModelLoadError(f"{text}: not a folder, and huggingface_hub is unavailable ({exc})") from None
        try:
            return Path(snapshot_download(text, revision=revision,
                                          allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, "*.png"]))
        except Exception as exc:  # network, offline mode, missing repo: one line, named
            raise ModelLoadError(f"{text}: not a local folder and not downloadable from the hub "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    raise ModelLoadError(f"{text}: model folder not found")


def read_model_config(folder: PathLike) -> Dict[str, Any]:
    """``config.json`` of a model folder, validated (architecture known, kwargs a mapping)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing (not a dfsfuse model folder)")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: invalid JSON ({exc})") from None
    from .models import list_models

    arch = config.get("architecture") if isinstance(config, dict) else None
    if not isinstance(arch, str):
        raise ModelLoadError(f"{path}: no 'architecture' entry")
    if arch not in list_models():
        raise ModelLoadError(f"{path}: unknown architecture {arch!r} (known: {', '.join(list_models())})")
    if not isinstance(config.get("kwargs", {}), dict):
        raise ModelLoadError(f"{path}: 'kwargs' must be a mapping")
    return config


def load_weights(model: nn.Module, weights: PathLike) -> nn.Module:
    """Load a safetensors file into ``model`` strictly; mismatches give a one-line error naming the file."""
    return load_state_checked(model, read_safetensors(weights), weights)


def read_safetensors(path: PathLike) -> Dict[str, torch.Tensor]:
    """All tensors of a safetensors file on CPU; :class:`ModelLoadError` naming the file if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: corrupt or truncated safetensors file ({exc})") from None


def load_state_checked(model: nn.Module, state: Dict[str, torch.Tensor], weights: PathLike) -> nn.Module:
    """Load ``state`` into ``model`` strictly; names, then shapes, are checked first (errors name ``weights``)."""
    from .models.blocks import upgrade_state_dict

    expected = model.state_dict()
    state = upgrade_state_dict(state, expected)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelLoadError(f"{weights}: tensors do not match the architecture ({what})")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ModelLoadError(f"{weights}: tensor {key!r} has shape {tuple(value.shape)}, "
                                 f"the architecture expects {tuple(expected[key].shape)}")
    model.load_state_dict(state)
    return model


def from_pretrained(path_or_hub_id: PathLike, device: Union[str, torch.device] = "cpu",
                    revision: Optional[str] = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pretrained` from a local folder or a hub id, in eval mode."""
    from .models import model_from_config

    folder = _resolve(path_or_hub_id, revision)
    config = read_model_config(folder)
    try:
        model = model_from_config(config)
    except TypeError as exc:
        raise ModelLoadError(f"{folder / CONFIG_NAME}: kwargs do not fit {config['architecture']!r} ({exc})") from None
    load_weights(model, folder / WEIGHTS_NAME)
    return model.to(device).eval()
