"""Input kinds of the semantic benchmark: what a segmenter reads (a rule, a fusion model or a
folder of fused images), rendering a split through a kind, and resolving the kinds asked for."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..baselines import GAMMA_TARGET, IR_CONTRAST_GAIN, REGION_CONTRAST_GAIN, baseline_fusion
from ..data.errors import DatasetError
from ..data.transforms import resize_image
from .data import LabelledSplit, to_u8
from .settings import BUILTIN_KINDS, DEFAULT_KINDS, RULE_KINDS, SegBenchSettings, package_asset

__all__ = ["InputKind", "load_fusion_model", "render", "colour_images", "segmenter_inputs", "parse_named",
           "resolve_kinds"]


@dataclass
class InputKind:
    """One kind of segmenter input: a fixed rule (``ir``, ``vis``, ``avg``, ``max``), a fusion
    model (``model``) or a folder of fused images matched by stem (``folder``)."""

    name: str
    rule: Optional[str] = None
    model: Optional[nn.Module] = None
    folder: Optional[Path] = None
    source: str = ""

    def describe(self) -> str:
        """What the kind is, for the settings record."""
        if self.rule is not None:
            return {"ir": "infrared alone", "vis": "visible luminance alone", "avg": "(ir + vis) / 2",
                    "max": "max(ir, vis)", "region-max": "regional max (dfsfuse.baselines)",
                    "laplacian": "Laplacian-pyramid max (dfsfuse.baselines)",
                    "ir-contrast": f"vis + {IR_CONTRAST_GAIN:g} relu(ir - G * ir) (dfsfuse.baselines)",
                    "region-contrast": f"region-max + {REGION_CONTRAST_GAIN:g} relu(G2 * ir - G8 * ir) "
                                       "(dfsfuse.baselines)",
                    "gamma-contrast": f"region-contrast of ir and vis^gamma, the gamma lifting a dark image's "
                                      f"mean toward {GAMMA_TARGET:g} (dfsfuse.baselines)"}[self.rule]
        return self.source


def load_fusion_model(path: os.PathLike, device: str = "cpu") -> nn.Module:
    """An exported fusion model folder (``from_pretrained``); ``ValueError`` if it is not a fusion model."""
    from ..export import from_pretrained

    model = from_pretrained(path, device=device)
    if getattr(model, "kind", "") != "fusion":
        raise ValueError(f"{path}: {getattr(model, 'arch_name', type(model).__name__)!r} is not a fusion model")
    return model


def _folder_for(folder: Path, split: LabelledSplit) -> Path:
    """``DIR/<split folder name>`` when it exists (e.g. ``DIR/train``, ``DIR/val``), else ``DIR``."""
    sub = folder / split.root.name
    return sub if sub.is_dir() else folder


@torch.inference_mode()
def render(kind: InputKind, split: LabelledSplit, batch_size: int = 4,
           on_image: Optional[Callable[[], None]] = None) -> List[Tensor]:
    """The split's images as seen through ``kind``: one 1×H×W uint8 tensor per pair."""
    out: List[Tensor] = []
    if kind.rule is not None:
        for ir, vis in zip(split.ir, split.vis):
            fused = baseline_fusion(ir[0].numpy().astype(np.float32), vis[0].numpy().astype(np.float32), kind.rule)
            out.append(torch.from_numpy(fused)[None])
            if on_image:
                on_image()
        return out
    if kind.folder is not None:
        from ..data.io import read_gray
        from ..data.pairs import list_images

        folder = _folder_for(kind.folder, split)
        files = list_images(folder)
        for name, native, ir in zip(split.names, split.native, split.ir):
            if name not in files:
                raise DatasetError(f"{folder / name}.png: fused image for kind {kind.name!r} not found "
                                   f"(files are matched by stem)")
            gray = read_gray(files[name])
            if gray.shape != tuple(native):
                raise DatasetError(f"{files[name]}: size {gray.shape[1]}x{gray.shape[0]} does not match the pair's "
                                   f"{native[1]}x{native[0]}")
            image = to_u8(resize_image(torch.from_numpy(gray / np.float32(255.0))[None], tuple(ir.shape[-2:])))
            out.append(image)
            if on_image:
                on_image()
        return out
    assert kind.model is not None
    device = next(iter(kind.model.parameters())).device
    order = sorted(range(len(split)), key=lambda i: (tuple(split.ir[i].shape), i))
    fused_by_index: Dict[int, Tensor] = {}
    i = 0
    while i < len(order):
        group = [order[i]]
        while (len(group) < batch_size and i + len(group) < len(order)
               and split.ir[order[i + len(group)]].shape == split.ir[order[i]].shape):
            group.append(order[i + len(group)])
        ir = torch.stack([split.ir[j] for j in group]).float().div(255.0).to(device)
        vis = torch.stack([split.vis[j] for j in group]).float().div(255.0).to(device)
        fused = to_u8(kind.model(ir, vis).fused.float().clamp(0, 1)).cpu()
        for j, f in zip(group, fused):
            fused_by_index[j] = f
            if on_image:
                on_image()
        i += len(group)
    return [fused_by_index[j] for j in range(len(split))]


def colour_images(kind: InputKind, images: Sequence[Tensor], split: LabelledSplit) -> List[Tensor]:
    """``images`` (1×H×W uint8, the split's pairs seen through ``kind``) as 3×H×W uint8 RGB, the way
    SeAFusion's segmenter reads a fusion: the grey image is the luminance and the visible image
    gives the chroma. IR alone has no visible chroma, so it becomes grey RGB (R = G = B)."""
    from ..data.color import colorize

    if kind.rule == "ir":
        return [image.expand(3, -1, -1).contiguous() for image in images]
    return [to_u8(colorize(image.float()[None] / 255.0, cbcr[None].float())[0])
            for image, cbcr in zip(images, split.cbcr)]


def segmenter_inputs(kind: InputKind, split: LabelledSplit, settings: SegBenchSettings) -> List[Tensor]:
    """The split as ``settings``' segmenters read it through ``kind``: :func:`render`'s grey images,
    recoloured by :func:`colour_images` with ``settings.color``."""
    images = render(kind, split, settings.eval_batch)
    return colour_images(kind, images, split) if settings.color else images


def parse_named(items: Sequence[str], option: str) -> Dict[str, Path]:
    """``["NAME=PATH", ...]`` → ``{NAME: PATH}``; ``ValueError`` for a malformed or repeated name."""
    out: Dict[str, Path] = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not eq or not name.strip() or not path.strip():
            raise ValueError(f"{option} {item!r}: expected NAME=PATH")
        if name in out:
            raise ValueError(f"{option} {item!r}: name {name!r} given twice")
        out[name.strip()] = Path(path.strip())
    return out


def resolve_kinds(builtins: Sequence[str] = DEFAULT_KINDS, teacher: Optional[os.PathLike] = None,
                  student: Optional[os.PathLike] = None, models: Optional[Dict[str, Path]] = None,
                  fused: Optional[Dict[str, Path]] = None, device: str = "cpu") -> Tuple[List[InputKind], Dict[str, str]]:
    """The kinds to benchmark and the skipped ones (``{name: why}``).

    ``teacher`` / ``student`` default to the shipped ``dfsfuse/assets/teacher`` and ``.../student``;
    ``semantic-teacher`` / ``semantic-student`` are the shipped segmentation-friendly pair in
    ``dfsfuse/assets/semantic`` (:data:`dfsfuse.export.SHIPPED_SEMANTIC`), ``tone-teacher`` / ``tone-student``
    the pair trained with the night brightened, ``dfsfuse/assets/semantic_tone``
    (:data:`dfsfuse.export.SHIPPED_SEMANTIC_TONE`). A built-in model kind
    whose default folder does not exist is skipped (not an error). A folder given explicitly
    (``teacher``, ``student``, ``models``, ``fused``) must exist.
    """
    kinds: List[InputKind] = []
    skipped: Dict[str, str] = {}
    paths = {"teacher": Path(teacher) if teacher else package_asset("teacher"),
             "student": Path(student) if student else package_asset("student"),
             "semantic-teacher": package_asset("semantic/teacher"),
             "semantic-student": package_asset("semantic/student"),
             "tone-teacher": package_asset("semantic_tone/teacher"),
             "tone-student": package_asset("semantic_tone/student")}
    for name in builtins:
        if name in RULE_KINDS:
            kinds.append(InputKind(name, rule=name))
        elif name in paths:
            path = paths[name]
            given = {"teacher": teacher, "student": student}.get(name)
            if not (path / "config.json").is_file():
                if given:
                    raise FileNotFoundError(f"{path}: no exported {name} model (config.json) here")
                skipped[name] = f"no exported model at {path} (not shipped yet)"
                continue
            kinds.append(InputKind(name, model=load_fusion_model(path, device), source=f"fusion model {path}"))
        else:
            raise ValueError(f"unknown input kind {name!r}; choose from {', '.join(BUILTIN_KINDS)}")
    taken = {k.name for k in kinds} | set(skipped)
    for name, path in (models or {}).items():
        if name in taken:
            raise ValueError(f"--model {name}={path}: the name {name!r} is already used")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: model folder not found (--model {name})")
        kinds.append(InputKind(name, model=load_fusion_model(path, device), source=f"fusion model {path}"))
        taken.add(name)
    for name, path in (fused or {}).items():
        if name in taken:
            raise ValueError(f"--fused {name}={path}: the name {name!r} is already used")
        if not Path(path).is_dir():
            raise DatasetError(f"{path}: folder of fused images not found (--fused {name})")
        kinds.append(InputKind(name, folder=Path(path), source=f"fused images in {path}"))
        taken.add(name)
    return kinds, skipped
