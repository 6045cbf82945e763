"""Semantic benchmark: how useful each kind of input is to a segmenter trained on it.

The protocol of task-driven fusion papers (SeAFusion, PSFusion): for every input kind — IR
alone, VIS alone (luminance), the ``avg`` and ``max`` rules, the teacher's and the student's
fusion, any exported fusion model or folder of fused images — render the labelled training
pairs with that input (each pair fused once, up front, kept in memory as 8-bit images like a
saved fusion), train the *same* segmenter from scratch with the same seed, data order, crops
and budget, and report mIoU and per-class IoU on a held-out labelled folder rendered the same way.
The quick mode scores one already trained segmenter on every kind without retraining.

Images are resized (area) to ``size`` before fusing, labels with nearest neighbour; ``size=None``
keeps the native resolution (the papers' setting, ``--full``). mIoU is computed from one
confusion matrix over the whole test folder (unlabeled class included, as the MSRS tables do).
Library behind ``dfsfuse segbench`` and ``benchmarks/semantic.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .atomic import atomic_path, finite_json, write_json_atomic
from .baselines import IR_CONTRAST_GAIN, REGION_CONTRAST_GAIN, baseline_fusion
from .data.errors import DatasetError
from .data.synthetic import CLASS_NAMES
from .data.transforms import resize_image, resize_label
from .determinism import deterministic_kernels
from .ema import moving_average
from .metrics.segmentation import ConfusionMatrix, FalsePositiveDistance

Size = Tuple[int, int]
IGNORE_INDEX = 255
BUILTIN_KINDS: Tuple[str, ...] = ("ir", "vis", "avg", "max", "region-max", "laplacian", "ir-contrast",
                                  "region-contrast", "teacher", "student", "semantic-teacher", "semantic-student")
DEFAULT_KINDS: Tuple[str, ...] = ("ir", "vis", "avg", "max", "teacher", "student")
RULE_KINDS: Tuple[str, ...] = ("ir", "vis", "avg", "max", "region-max", "laplacian", "ir-contrast",
                               "region-contrast")
# MFNet / RTFNet colours of the 9 MSRS classes (RGB).
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192),
    (128, 128, 0), (64, 64, 128), (192, 128, 128), (192, 64, 0),
)
FAST_SEGMENTER = "segmenter:backbone=mobilenetv3_small_100,fpn_dim=32"


def default_data_root() -> Path:
    """The shared data folder (:func:`dfsfuse.data.shared.shared_data_root`): ``$DFSFUSE_SHARED_DATA``,
    else ``../shared/data`` beside the checkout, else relative to the working directory."""
    from .data.shared import shared_data_root

    return shared_data_root()


def package_asset(name: str) -> Path:
    """A folder under ``dfsfuse/assets`` (may not exist); ``name`` may have sub-folders (``semantic/student``)."""
    return Path(__file__).resolve().parent / "assets" / name


@dataclass
class SegBenchSettings:
    """How every segmenter is trained and scored (identical for every input kind).

    ``size``: working resolution (H, W), ``None`` = native; ``crop``: random training crop,
    ``None`` = whole images; ``segmenter``: registry spec ``name:key=value,...``;
    ``seg_loss``: ``weighted`` (ENet weights of the training labels), ``ohem`` or ``plain``;
    ``ema``: decay of an exponential moving average of the segmenter's weights and BN statistics
    (timm's ``ModelEmaV3`` with its warm-up), scored instead of the last weights; 0 = off;
    ``class_crops``: probability that a training crop is placed around a pixel of a labelled class
    drawn uniformly among the classes present in the image (rare classes seen as often as common
    ones, in the spirit of DAFormer's rare-class sampling); 0 = plain random crops;
    ``weight_c``: the ``c`` of the ENet weights ``1 / ln(c + p_k)`` of ``weighted`` (1.02, ENet's and
    SeAFusion's: MSRS's rare classes ≈ 14–31× background; a larger ``c`` softens them, e.g. 1.2: ≈ 4×);
    ``color``: the segmenter reads RGB, as SeAFusion's does — every kind's grey image recoloured
    with the visible image's chroma (Y + VIS CbCr → RGB), IR alone as grey RGB — instead of the
    grey image itself (False, the default every earlier number was measured with).
    """

    train_dir: str = ""
    test_dir: str = ""
    size: Optional[Size] = (240, 320)
    crop: Optional[Size] = (160, 224)
    steps: int = 900
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    segmenter: str = FAST_SEGMENTER
    seg_loss: str = "weighted"
    seeds: List[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    eval_batch: int = 4
    hflip: bool = True
    ema: float = 0.0
    class_crops: float = 0.0
    weight_c: float = 1.02
    color: bool = False

    @property
    def in_chans(self) -> int:
        """Input channels of the segmenters: 3 with ``color``, else 1."""
        return 3 if self.color else 1

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot run."""
        from .losses import SEG_LOSS_MODES

        if self.steps < 1 or self.batch_size < 1 or self.eval_batch < 1:
            raise ValueError("steps, batch size and eval batch must be at least 1")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.seg_loss not in SEG_LOSS_MODES:
            raise ValueError(f"segmentation loss {self.seg_loss!r}: choose from {', '.join(SEG_LOSS_MODES)}")
        if not self.seeds:
            raise ValueError("at least one seed")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {self.ema}")
        if not 0.0 <= self.class_crops <= 1.0:
            raise ValueError(f"class-crop probability must be in [0, 1], got {self.class_crops}")
        if not self.weight_c > 1.0:
            raise ValueError(f"class-weight c must be greater than 1 (weights are 1/ln(c + p)), got {self.weight_c}")
        for name, hw in (("size", self.size), ("crop", self.crop)):
            if hw is not None and (len(hw) != 2 or min(hw) < 1):
                raise ValueError(f"{name} must be HEIGHTxWIDTH with positive values, got {hw}")


def fast_settings(**overrides: Any) -> SegBenchSettings:
    """The CPU setting (≈ 4–6 min per kind and seed on one core): 240×320 images, 160×224 crops,
    900 steps of batch 8, a MobileNetV3-small FPN segmenter, class-weighted CE. 900, not 300: at 300
    steps a segmenter has learned IR's warm blobs and little else, so no fusion can beat IR alone
    (README, Semantic benchmark)."""
    return SegBenchSettings(**overrides)


def full_settings(**overrides: Any) -> SegBenchSettings:
    """The GPU setting: native 480×640 images, 384×512 crops, 4000 steps of batch 16, the
    registry segmenter (MobileNetV3-large FPN)."""
    base = dict(size=None, crop=(384, 512), steps=4000, batch_size=16, lr=2e-3, warmup_steps=200,
                segmenter="segmenter", device="cuda" if torch.cuda.is_available() else "cpu", eval_batch=8)
    base.update(overrides)
    return SegBenchSettings(**base)


# --------------------------------------------------------------------------------------------
# Data: a labelled split at the working size


@dataclass
class LabelledSplit:
    """A labelled folder at the working size: 8-bit IR and VIS luminance (1×H×W uint8),
    visible chroma (2×H×W float in [0, 1], for pictures), labels (H×W int64), native sizes."""

    root: Path
    names: List[str]
    ir: List[Tensor]
    vis: List[Tensor]
    cbcr: List[Tensor]
    labels: List[Tensor]
    native: List[Size]

    def __len__(self) -> int:
        return len(self.names)


def to_u8(x: Tensor) -> Tensor:
    """[0, 1] floats → uint8 rounded half to even, as a fused image is saved (and a shrunk source is kept)."""
    return torch.round(x.float() * 255.0).clamp(0, 255).to(torch.uint8)


def check_labelled_folder(root: os.PathLike) -> int:
    """Number of labelled pairs in ``root`` (files listed and matched, not read); :class:`DatasetError` if none."""
    from .data.pairs import PairedImages

    dataset = PairedImages(root, labels=True)
    if not dataset.has_labels:
        raise DatasetError(f"{root}: no Segmentation_labels/ folder (the semantic benchmark needs labels)")
    return len(dataset)


def load_labelled_split(root: os.PathLike, size: Optional[Size] = None) -> LabelledSplit:
    """Read every labelled pair of an MSRS-layout split folder (``ir/``, ``vi/``,
    ``Segmentation_labels/``) at ``size``. Missing labels or bad files raise
    :class:`DatasetError` naming the file."""
    from .data.pairs import PairedImages

    root = Path(root)
    check_labelled_folder(root)
    dataset = PairedImages(root, labels=True)
    split = LabelledSplit(root, [], [], [], [], [], [])
    for sample in dataset:
        split.names.append(sample["name"])
        split.native.append(tuple(sample["ir"].shape[-2:]))
        split.ir.append(to_u8(resize_image(sample["ir"], size)))
        split.vis.append(to_u8(resize_image(sample["vis_y"], size)))
        split.cbcr.append(resize_image(sample["vis_cbcr"], size).float())
        split.labels.append(resize_label(sample["label"], size))
    return split


# --------------------------------------------------------------------------------------------
# Input kinds


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
                                       "(dfsfuse.baselines)"}[self.rule]
        return self.source


def load_fusion_model(path: os.PathLike, device: str = "cpu") -> nn.Module:
    """An exported fusion model folder (``from_pretrained``); ``ValueError`` if it is not a fusion model."""
    from .export import from_pretrained

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
        from .data.io import read_gray
        from .data.pairs import list_images

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
    from .data.color import colorize

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
    ``dfsfuse/assets/semantic`` (:data:`dfsfuse.export.SHIPPED_SEMANTIC`). A built-in model kind
    whose default folder does not exist is skipped (not an error). A folder given explicitly
    (``teacher``, ``student``, ``models``, ``fused``) must exist.
    """
    kinds: List[InputKind] = []
    skipped: Dict[str, str] = {}
    paths = {"teacher": Path(teacher) if teacher else package_asset("teacher"),
             "student": Path(student) if student else package_asset("student"),
             "semantic-teacher": package_asset("semantic/teacher"),
             "semantic-student": package_asset("semantic/student")}
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


# --------------------------------------------------------------------------------------------
# Training and evaluation


def build_segmenter(spec: str, num_classes: int = 9, in_chans: int = 1) -> nn.Module:
    """A randomly initialised segmenter from a registry spec (``segmenter:backbone=…,fpn_dim=…``)
    reading ``in_chans`` channels (unless the spec says otherwise)."""
    from .bench import parse_model_spec
    from .models import create_model, model_kind

    parsed = parse_model_spec(spec)
    if model_kind(parsed.name) != "segmentation":
        raise ValueError(f"segmenter {spec!r}: {parsed.name!r} is not a segmentation model")
    kwargs = dict(parsed.kwargs)
    kwargs.setdefault("num_classes", num_classes)
    if in_chans != 1:  # the default stays out of the recorded kwargs, as before colour existed
        kwargs.setdefault("in_chans", in_chans)
    return create_model(parsed.name, **kwargs)


def _class_crop_corner(y: Tensor, crop: Size, g: torch.Generator) -> Optional[Tuple[int, int]]:
    """Top-left corner of a crop holding a random pixel of a class drawn uniformly among the labelled
    classes (not unlabeled 0, not ignore) present in ``y``, at a random place in the crop; ``None``
    when ``y`` has no such pixel."""
    present = [c for c in torch.unique(y).tolist() if c not in (0, IGNORE_INDEX)]
    if not present:
        return None
    c = present[int(torch.randint(0, len(present), (1,), generator=g))]
    pixels = torch.nonzero(y == c)
    py, px = pixels[int(torch.randint(0, len(pixels), (1,), generator=g))].tolist()
    (ch, cw), (h, w) = crop, y.shape
    top = py - int(torch.randint(0, ch, (1,), generator=g))
    left = px - int(torch.randint(0, cw, (1,), generator=g))
    return min(max(top, 0), h - ch), min(max(left, 0), w - cw)


def _sample_batch(images: Sequence[Tensor], labels: Sequence[Tensor], indices: Sequence[int],
                  crop: Optional[Size], hflip: bool, g: torch.Generator,
                  class_crops: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Random crops (padded with 0 / ignore when an image is smaller) and flips, drawn from ``g``;
    with probability ``class_crops`` a crop is placed around a pixel of a random present class
    (no extra draw from ``g`` when it is 0, so plain runs are unchanged)."""
    xs, ys = [], []
    for i in indices:
        x, y = images[i].float().div(255.0), labels[i]
        if crop is not None:
            ch, cw = crop
            h, w = x.shape[-2:]
            if h < ch or w < cw:
                x = F.pad(x, (0, max(0, cw - w), 0, max(0, ch - h)))
                y = F.pad(y, (0, max(0, cw - w), 0, max(0, ch - h)), value=IGNORE_INDEX)
                h, w = x.shape[-2:]
            corner = None
            if class_crops > 0 and bool(torch.rand(1, generator=g) < class_crops):
                corner = _class_crop_corner(y, (ch, cw), g)
            if corner is None:
                corner = (int(torch.randint(0, h - ch + 1, (1,), generator=g)),
                          int(torch.randint(0, w - cw + 1, (1,), generator=g)))
            top, left = corner
            x, y = x[:, top:top + ch, left:left + cw], y[top:top + ch, left:left + cw]
        if hflip and bool(torch.rand(1, generator=g) < 0.5):
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_segmenter(images: Sequence[Tensor], labels: Sequence[Tensor], settings: SegBenchSettings, seed: int,
                    class_weights: Optional[Sequence[float]] = None,
                    on_step: Optional[Callable[[int, float], None]] = None,
                    model: Optional[nn.Module] = None, cuda_deterministic: bool = True) -> nn.Module:
    """Train ``settings.segmenter`` from scratch on ``images`` (1×H×W uint8) / ``labels``
    (or train ``model`` from its current weights, e.g. the recipe's segmenter in stage 0).

    Everything random — initial weights, the order of images (a fresh permutation per epoch),
    crops and flips — comes from ``seed``, so two kinds trained with one seed see the same
    pixel positions in the same order. Warm-up + cosine AdamW. Bit-identical on CPU for a fixed
    thread count. On CUDA a seed did *not* repeat a run before session 23 (one H200, the same command
    twice: 0.1698 and 0.1562 mIoU), through the atomic adds of the bilinear upsampling's backward; now
    the training runs under :func:`dfsfuse.determinism.deterministic_kernels`, and the segmenter's
    upsampling backward is two matrix products (:func:`dfsfuse.ops.upsample_bilinear`);
    ``benchmarks/gpu_check.py``'s ``segmenter`` step checks it on a GPU (``cuda_deterministic=False``
    trains without it, for that check's comparison). With
    ``settings.ema > 0`` the returned model is the moving average of the weights (the trained one is
    discarded).
    """
    if len(images) != len(labels) or not images:
        raise ValueError("need as many training images as labels, at least one")
    device = torch.device(settings.device)
    if device.type == "cuda" and cuda_deterministic:
        with deterministic_kernels():
            return _train_segmenter(images, labels, settings, seed, class_weights, on_step, model, device)
    return _train_segmenter(images, labels, settings, seed, class_weights, on_step, model, device)


def _train_segmenter(images: Sequence[Tensor], labels: Sequence[Tensor], settings: SegBenchSettings, seed: int,
                     class_weights: Optional[Sequence[float]], on_step: Optional[Callable[[int, float], None]],
                     model: Optional[nn.Module], device: torch.device) -> nn.Module:
    from .losses import SegmentationCE

    torch.manual_seed(seed)
    model = (build_segmenter(settings.segmenter, in_chans=settings.in_chans) if model is None else model)
    model = model.to(device).train()
    criterion = SegmentationCE(settings.seg_loss, class_weights=class_weights if settings.seg_loss != "plain" else None,
                               ignore_index=IGNORE_INDEX)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    ema = moving_average(model, settings.ema)
    g = torch.Generator().manual_seed(seed)
    order: List[int] = []
    for step in range(settings.steps):
        while len(order) < settings.batch_size:
            order += torch.randperm(len(images), generator=g).tolist()
        batch, order = order[:settings.batch_size], order[settings.batch_size:]
        x, y = _sample_batch(images, labels, batch, settings.crop, settings.hflip, g, settings.class_crops)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * _lr_factor(step, settings.steps, settings.warmup_steps)
        loss = criterion(model(x.to(device)).logits, y.to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"segmenter loss became {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model, step=step + 1)
        if on_step is not None:
            on_step(step + 1, float(loss.detach()))
    return (model if ema is None else ema.module).eval()


@torch.inference_mode()
def evaluate_segmenter(model: nn.Module, images: Sequence[Tensor], labels: Sequence[Tensor], batch_size: int = 4,
                       keep: Sequence[int] = (), false_positives: Optional[FalsePositiveDistance] = None
                       ) -> Tuple[ConfusionMatrix, Dict[int, Tensor]]:
    """Confusion matrix of ``model`` over whole images; also the predictions (H×W int64) of the
    images whose indices are in ``keep``; ``false_positives``, when given, counts where they lie."""
    model.eval()
    device = next(iter(model.parameters())).device
    num_classes = getattr(model, "num_classes", 9)
    cm = ConfusionMatrix(num_classes=num_classes, ignore_index=IGNORE_INDEX)
    kept: Dict[int, Tensor] = {}
    order = sorted(range(len(images)), key=lambda i: (tuple(images[i].shape), i))
    i = 0
    while i < len(order):
        group = [order[i]]
        while (len(group) < batch_size and i + len(group) < len(order)
               and images[order[i + len(group)]].shape == images[order[i]].shape):
            group.append(order[i + len(group)])
        x = torch.stack([images[j] for j in group]).float().div(255.0).to(device)
        pred = model(x).logits.argmax(1).cpu()
        target = torch.stack([labels[j] for j in group])
        cm.update(pred, target)
        if false_positives is not None:
            false_positives.update(pred, target)
        for j, p in zip(group, pred):
            if j in keep:
                kept[j] = p
        i += len(group)
    return cm, kept


# --------------------------------------------------------------------------------------------
# A whole run


def _nan_mean(rows: Sequence[Sequence[float]]) -> List[float]:
    """Column means of per-seed rows, skipping NaN (NaN only where every seed is NaN)."""
    arr = np.asarray(rows, dtype=np.float64)
    with np.errstate(all="ignore"):
        counts = (~np.isnan(arr)).sum(0)
        sums = np.nansum(arr, 0)
        return [float(s / c) if c else float("nan") for s, c in zip(sums, counts)]


@dataclass
class KindResult:
    """One kind's scores: per seed mIoU, per-class IoU (NaN for a class absent from both
    labels and predictions) and confusion matrix (rows: label, columns: prediction), the rendered
    picture image and its predictions."""

    name: str
    miou: List[float] = field(default_factory=list)
    iou: List[List[float]] = field(default_factory=list)
    seconds: float = 0.0
    picture_image: Optional[Tensor] = None
    picture_pred: Optional[Tensor] = None
    confusion: List[List[List[int]]] = field(default_factory=list)
    false_positives: List[List[List[int]]] = field(default_factory=list)

    def add(self, miou: float, iou: List[float], picture_pred: Tensor,
            confusion: Optional[List[List[int]]] = None, false_positives: Optional[List[List[int]]] = None) -> None:
        """Record one seed's scores (call in seed order); the first seed's prediction is the picture's.
        ``false_positives``: :attr:`FalsePositiveDistance.counts` (near and far per class)."""
        self.miou.append(miou)
        self.iou.append(iou)
        if confusion is not None:
            self.confusion.append(confusion)
        if false_positives is not None:
            self.false_positives.append(false_positives)
        if self.picture_pred is None:
            self.picture_pred = picture_pred

    def mean_rates(self) -> Dict[str, List[float]]:
        """Per-class precision (``TP / predicted``) and recall (``TP / labelled``) averaged over the seeds
        whose confusion matrix is recorded (NaN where undefined in every seed): does a fusion lose a
        class by missing it or by inventing it?"""
        precision, recall = [], []
        for matrix in self.confusion:
            cm = ConfusionMatrix(len(matrix)).merge(torch.tensor(matrix))
            precision.append(cm.precision().tolist())
            recall.append(cm.recall().tolist())
        return {"precision": _nan_mean(precision), "recall": _nan_mean(recall)}

    @property
    def mean_miou(self) -> float:
        """mIoU averaged over seeds."""
        return float(np.mean(self.miou))

    def mean_iou(self) -> List[float]:
        """Per-class IoU averaged over seeds (NaN only where every seed is NaN)."""
        return _nan_mean(self.iou)

    def far_false_positives(self) -> List[float]:
        """Per class, the fraction of false positives far from any labelled object of the class, pooled
        over the seeds (NaN for a class with none): an invented object rather than one drawn too big."""
        counts = np.asarray(self.false_positives, dtype=np.float64).sum(0)
        with np.errstate(all="ignore"):
            return (counts[1] / counts.sum(0)).tolist()


@dataclass
class SegBenchResult:
    """Settings, per-kind results and notes (skipped kinds) of one run."""

    settings: Dict[str, Any]
    kinds: List[KindResult]
    seeds: List[int]
    class_names: Tuple[str, ...] = CLASS_NAMES

    def to_dict(self) -> Dict[str, Any]:
        """``{"settings", "miou", "iou", "precision", "recall", "confusion_per_seed", "false_positives_far",
        "seeds"}`` (+ ``"miou_per_seed"`` and ``"iou_per_seed"``, ``{kind: {class: [one IoU per seed]}}``,
        with several seeds); precision and recall are means over seeds, each confusion matrix is K×K
        pixel counts (rows: label, columns: prediction), ``false_positives_far`` the fraction of each
        class's false positives far from any object of it (:class:`FalsePositiveDistance`, pooled over
        seeds); non-finite numbers become ``None``."""
        out: Dict[str, Any] = {
            "settings": self.settings,
            "miou": {k.name: k.mean_miou for k in self.kinds},
            "iou": {k.name: dict(zip(self.class_names, k.mean_iou())) for k in self.kinds},
            "seeds": list(self.seeds),
        }
        recorded = [k for k in self.kinds if k.confusion]
        if recorded:
            rates = {k.name: k.mean_rates() for k in recorded}
            for rate in ("precision", "recall"):
                out[rate] = {name: dict(zip(self.class_names, r[rate])) for name, r in rates.items()}
            out["confusion_per_seed"] = {k.name: k.confusion for k in recorded}
        located = [k for k in self.kinds if k.false_positives]
        if located:
            out["false_positives_far"] = {k.name: dict(zip(self.class_names, k.far_false_positives())) for k in located}
        if len(self.seeds) > 1:
            out["miou_per_seed"] = {k.name: list(k.miou) for k in self.kinds}
            # Which classes move between seeds is what tells optimisation noise from a real difference.
            out["iou_per_seed"] = {k.name: {c: [seed[i] for seed in k.iou] for i, c in enumerate(self.class_names)}
                                   for k in self.kinds}
        return finite_json(out)

    def save_json(self, path: os.PathLike) -> Path:
        """Write :meth:`to_dict` as indented JSON, atomically."""
        return write_json_atomic(path, self.to_dict())



def pick_picture_index(split: LabelledSplit, name: Optional[str] = None) -> int:
    """The test image shown in the picture: ``name``, else the one with the most distinct
    labelled classes (then the most labelled foreground pixels)."""
    if name is not None:
        if name not in split.names:
            raise ValueError(f"picture image {name!r} is not in {split.root}")
        return split.names.index(name)

    def score(i: int) -> Tuple[int, int]:
        y = split.labels[i]
        fg = y[(y != 0) & (y != IGNORE_INDEX)]
        return len(torch.unique(fg)), int(fg.numel())

    return max(range(len(split)), key=lambda i: (score(i), -i))


def _hardware(settings: SegBenchSettings) -> Dict[str, Any]:
    """Where the numbers come from. A seed's numbers repeat bit for bit only with the same thread
    count, CPU kernels (torch's ``cpu_capability``: two CPUs sold under one model name can differ) and
    library versions (timm sets the initial weights), so all of them are recorded."""
    import timm

    from .bench import cpu_model

    device = torch.device(settings.device)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # CUDA segmenters train under deterministic_kernels (new in session 23); files without this key
        # did not, and their seeds do not repeat
        **({"cuda_determinism": True} if device.type == "cuda" else {}),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _base_settings(settings: SegBenchSettings, kinds: Sequence[InputKind], skipped: Dict[str, str],
                   mode: str) -> Dict[str, Any]:
    record = asdict(settings)
    record["size"] = list(settings.size) if settings.size else "native"
    record["crop"] = list(settings.crop) if settings.crop else "whole image"
    record.update({
        "mode": mode,
        "kinds": {k.name: k.describe() for k in kinds},
        "skipped": dict(skipped),
        "resize": "area for images (before fusing), nearest for labels; fusions rounded to 8 bits",
        "miou": "one confusion matrix over the whole test folder; mean over classes present in labels or "
                "predictions, unlabeled (class 0) included",
        "false_positives_far": "a class's false positives farther than 5% of the short side (Chebyshev) from "
                               "any pixel labelled with it, over all its false positives, pooled over seeds",
        **_hardware(settings),
    })
    return record


Reporter = Callable[[str], None]


def _render_kind(kind: InputKind, train: LabelledSplit, test: LabelledSplit, settings: SegBenchSettings,
                 pic: int, say: Reporter) -> Tuple[List[Tensor], List[Tensor], KindResult]:
    """``kind``'s training and test images, and its (empty) result holding the picture image and the
    rendering time."""
    t0 = time.time()
    say(f"{kind.name}: rendering {len(train)} train + {len(test)} test pairs")
    train_images, test_images = segmenter_inputs(kind, train, settings), segmenter_inputs(kind, test, settings)
    return train_images, test_images, KindResult(kind.name, picture_image=test_images[pic], seconds=time.time() - t0)


def _train_and_score(train_images: Sequence[Tensor], test_images: Sequence[Tensor], train_labels: Sequence[Tensor],
                     test_labels: Sequence[Tensor], settings: SegBenchSettings, seed: int, weights: Sequence[float],
                     pic: int, on_step: Optional[Callable[[int, float], None]] = None
                     ) -> Tuple[float, List[float], Tensor, List[List[int]], List[List[int]]]:
    """One segmenter from scratch on ``train_images``, scored on ``test_images``:
    (mIoU, per-class IoU, prediction of the picture image, confusion matrix, false positives near/far)."""
    model = train_segmenter(train_images, train_labels, settings, seed, weights, on_step)
    return _score(model, test_images, test_labels, settings, pic)


def _score(model: nn.Module, images: Sequence[Tensor], labels: Sequence[Tensor], settings: SegBenchSettings,
           pic: int) -> Tuple[float, List[float], Tensor, List[List[int]], List[List[int]]]:
    """A trained segmenter's (mIoU, per-class IoU, prediction of the picture image, confusion matrix,
    false positives near/far) on whole test images: one seed's :meth:`KindResult.add` arguments."""
    fp = FalsePositiveDistance(getattr(model, "num_classes", 9), ignore_index=IGNORE_INDEX)
    cm, kept = evaluate_segmenter(model, images, labels, settings.eval_batch, keep=[pic], false_positives=fp)
    return cm.miou(), cm.iou().tolist(), kept[pic], cm.matrix.tolist(), fp.counts.tolist()


# Worker processes (``workers > 1``): the rendered kinds and the splits are handed over once per
# worker, by the pool initializer, and each task is one (kind, seed) pair. Module-level so spawned
# processes find them.
_WORKER_DATA: Dict[str, Any] = {}


def _init_worker(data: Dict[str, Any], threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER_DATA.clear()
    _WORKER_DATA.update(data)


def _worker_task(kind_index: int, seed: int) -> Tuple[Tuple[Any, ...], float]:
    """:func:`_train_and_score` for one kind and seed in a worker, and its seconds."""
    d = _WORKER_DATA
    t0 = time.time()
    train_images, test_images = d["rendered"][kind_index]
    scores = _train_and_score(train_images, test_images, d["train_labels"], d["test_labels"], d["settings"], seed,
                              d["weights"], d["pic"])
    return scores, time.time() - t0


Scores = Tuple[Tuple[Any, ...], float]
"""One segmenter's :meth:`KindResult.add` arguments and its seconds."""


def _assemble(rendered: Sequence[KindResult], scores: Mapping[Tuple[int, int], Scores],
              seeds: Sequence[int]) -> List[KindResult]:
    """Per-kind results of ``seeds`` (in order) from the finished segmenters ``scores[(kind index, seed)]``;
    ``rendered`` holds each kind's picture image and rendering time. ``seconds`` of a kind: its rendering
    plus its segmenters' time (summed, not wall time, with workers)."""
    results = []
    for k, r in enumerate(rendered):
        result = KindResult(r.name, picture_image=r.picture_image, seconds=r.seconds)
        for seed in seeds:
            seed_scores, seconds = scores[(k, seed)]
            result.add(*seed_scores)
            result.seconds += seconds
        results.append(result)
    return results


def run_benchmark(settings: SegBenchSettings, kinds: Sequence[InputKind], skipped: Optional[Dict[str, str]] = None,
                  picture_name: Optional[str] = None, say: Reporter = lambda _: None,
                  progress: Optional[Callable[..., Any]] = None, workers: int = 1,
                  worker_threads: int = 1,
                  checkpoint: Optional[Callable[[SegBenchResult], None]] = None) -> Tuple[SegBenchResult, LabelledSplit]:
    """Train one segmenter per kind and seed, score each on the test folder.

    Every kind is rendered first; then the segmenters run seed-major (seed 0 of every kind, then
    seed 1, ...), so a run stopped early has finished whole seeds, paired across kinds.
    ``checkpoint(result)``, when given, is called after each segmenter but the last once at least one
    seed is finished for every kind, with a result holding those seeds only (``settings["partial"]``
    says how many segmenters were done): write it to keep a stopped run's finished seeds.

    ``progress(description, total)`` returns a context manager with ``update(step, loss)``
    (e.g. :class:`dfsfuse.train.progress.StageProgress`); with ``workers > 1`` it is called once,
    as ``progress("segmenters", n, metric="mIoU", unit="segmenter")``, and updated as segmenters
    finish. ``say`` prints notes.

    ``workers > 1`` trains the (kind, seed) segmenters in that many spawned processes of
    ``worker_threads`` torch threads each. Each segmenter's numbers equal a one-process run with
    ``worker_threads`` threads: on a 2-core CPU, two one-thread workers train 1.6× as many segmenters
    per hour as one two-thread process.
    """
    from .losses import class_weights_from_labels

    settings.validate()
    if not kinds:
        raise ValueError("no input kind to benchmark")
    if workers < 1 or worker_threads < 1:
        raise ValueError(f"workers and worker threads must be at least 1, got {workers} and {worker_threads}")
    started = time.time()
    for folder in (settings.train_dir, settings.test_dir):  # list both (cheap) before reading either
        check_labelled_folder(folder)
    say(f"reading {settings.train_dir} and {settings.test_dir}")
    train = load_labelled_split(settings.train_dir, settings.size)
    test = load_labelled_split(settings.test_dir, settings.size)
    weights = list(class_weights_from_labels(torch.cat([y.flatten() for y in train.labels]), c=settings.weight_c))
    pic = pick_picture_index(test, picture_name)
    record = _base_settings(settings, kinds, skipped or {}, "train")
    record.update({"class_weights": weights, "train_pairs": len(train), "test_pairs": len(test),
                   "picture_image": test.names[pic]})
    rendered_images, rendered = [], []
    for kind in kinds:
        train_images, test_images, result = _render_kind(kind, train, test, settings, pic, say)
        rendered_images.append((train_images, test_images))
        rendered.append(result)
    tasks = [(k, seed) for seed in settings.seeds for k in range(len(kinds))]
    scores: Dict[Tuple[int, int], Scores] = {}

    def finished(k: int, seed: int, entry: Scores) -> None:
        scores[(k, seed)] = entry
        say(f"{kinds[k].name} seed {seed}: mIoU {entry[0][0]:.4f}")
        if checkpoint is None or len(scores) == len(tasks):
            return
        done = [s for s in settings.seeds if all((i, s) in scores for i in range(len(kinds)))]
        if done:
            partial = {**record, "partial": f"{len(scores)} of {len(tasks)} segmenters finished; "
                                            f"seeds {', '.join(map(str, done))} of every kind kept",
                       "wall_time_s": round(time.time() - started, 1)}
            checkpoint(SegBenchResult(partial, _assemble(rendered, scores, done), done))

    if workers == 1:
        for k, seed in tasks:
            bar = progress(f"{kinds[k].name} seed {seed}", settings.steps) if progress else None
            t0 = time.time()
            with bar if bar is not None else contextlib.nullcontext():
                out = _train_and_score(*rendered_images[k], train.labels, test.labels, settings, seed, weights, pic,
                                       bar.update if bar is not None else None)
            finished(k, seed, (out, time.time() - t0))
    else:
        workers = min(workers, len(tasks))  # processes actually started
        record.update({"workers": workers, "torch_threads": worker_threads})
        _run_in_workers(settings, tasks, rendered_images, train, test, weights, pic, say, progress, workers,
                        worker_threads, finished)
    results = _assemble(rendered, scores, settings.seeds)
    record.update({"seconds_per_kind": {r.name: round(r.seconds, 1) for r in results},
                   "wall_time_s": round(time.time() - started, 1)})
    return SegBenchResult(record, results, list(settings.seeds)), test


def _run_in_workers(settings: SegBenchSettings, tasks: Sequence[Tuple[int, int]],
                    rendered: Sequence[Tuple[List[Tensor], List[Tensor]]], train: LabelledSplit, test: LabelledSplit,
                    weights: Sequence[float], pic: int, say: Reporter, progress: Optional[Callable[..., Any]],
                    workers: int, threads: int, finished: Callable[[int, int, Scores], None]) -> None:
    """Train and score every (kind index, seed) of ``tasks`` in a pool of ``workers`` processes,
    submitted in order; ``finished(k, seed, scores)`` as each ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    data = {"rendered": list(rendered), "train_labels": train.labels, "test_labels": test.labels,
            "settings": settings, "weights": list(weights), "pic": pic}
    say(f"training {len(tasks)} segmenters in {workers} processes of {threads} thread(s)")
    bar = progress("segmenters", len(tasks), metric="mIoU", unit="segmenter") if progress else None
    done = 0
    with bar if bar is not None else contextlib.nullcontext(), \
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                                initargs=(data, threads)) as pool:
        futures = {pool.submit(_worker_task, k, seed): (k, seed) for k, seed in tasks}
        for future in as_completed(futures):
            k, seed = futures[future]
            try:
                entry = future.result()
            except BaseException:
                for other in futures:  # do not start the rest; running ones end with the pool
                    other.cancel()
                raise
            finished(k, seed, entry)
            done += 1
            if bar is not None:
                bar.update(done, entry[0][0])


def run_quick(segmenter_dir: os.PathLike, settings: SegBenchSettings, kinds: Sequence[InputKind],
              skipped: Optional[Dict[str, str]] = None, picture_name: Optional[str] = None,
              say: Reporter = lambda _: None) -> Tuple[SegBenchResult, LabelledSplit]:
    """Score one trained segmenter (an exported folder) on every kind of the test folder, no training."""
    from .export import from_pretrained

    started = time.time()
    if not kinds:
        raise ValueError("no input kind to benchmark")
    segmenter = from_pretrained(segmenter_dir, device=settings.device)
    if getattr(segmenter, "kind", "") != "segmentation":
        raise ValueError(f"{segmenter_dir}: {getattr(segmenter, 'arch_name', '?')!r} is not a segmentation model")
    reads = getattr(segmenter, "in_chans", 1)
    if reads != settings.in_chans:
        raise ValueError(f"{segmenter_dir}: the segmenter reads {reads} channel(s), "
                         f"{'--color' if settings.color else 'grey input'} needs {settings.in_chans}")
    say(f"reading {settings.test_dir}")
    test = load_labelled_split(settings.test_dir, settings.size)
    pic = pick_picture_index(test, picture_name)
    results: List[KindResult] = []
    for kind in kinds:
        t0 = time.time()
        images = segmenter_inputs(kind, test, settings)
        result = KindResult(kind.name, picture_image=images[pic])
        result.add(*_score(segmenter, images, test.labels, settings, pic))
        result.seconds = time.time() - t0
        results.append(result)
        say(f"{kind.name}: mIoU {results[-1].miou[0]:.4f}")
    record = _base_settings(settings, kinds, skipped or {}, "quick")
    for key in ("train_dir", "crop", "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "seg_loss",
                "hflip", "ema", "class_crops", "weight_c"):
        record.pop(key, None)
    record.update({"segmenter": str(Path(segmenter_dir).resolve()), "segmenter_arch": segmenter.arch_config(),
                   "test_pairs": len(test), "picture_image": test.names[pic],
                   "wall_time_s": round(time.time() - started, 1)})
    return SegBenchResult(record, results, []), test


# --------------------------------------------------------------------------------------------
# Report: table and picture


def print_table(result: SegBenchResult, console: Any = None) -> None:
    """A rich table: one row per kind, mIoU (± spread over seeds) and per-class IoU."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    best = max((k.mean_miou for k in result.kinds if math.isfinite(k.mean_miou)), default=None)
    s = result.settings
    title = (f"Semantic benchmark ({s.get('mode')}): mIoU on {Path(str(s.get('test_dir'))).name}, "
             f"{'seeds ' + ','.join(map(str, result.seeds)) if result.seeds else 'no retraining'}"
             f"{', RGB input (--color)' if s.get('color') else ''}")
    table = Table(title=title)
    table.add_column("input")
    table.add_column("mIoU", justify="right")
    for name in result.class_names:
        table.add_column(name.replace("_", " "), justify="right")
    for k in result.kinds:
        m = k.mean_miou
        cell = f"{m:.4f}"
        if len(k.miou) > 1:
            cell += f" ± {float(np.std(k.miou)):.4f}"
        if best is not None and m == best:
            cell = f"[bold green]{cell}[/]"
        table.add_row(k.name, cell, *("-" if math.isnan(v) else f"{v:.3f}" for v in k.mean_iou()))
    console.print(table)
    for name, why in (s.get("skipped") or {}).items():
        console.print(f"[yellow]skipped {name}: {why}[/]")


def _colour_labels(label: np.ndarray, gray: Optional[np.ndarray] = None) -> np.ndarray:
    """Class colours; with ``gray`` the unlabeled pixels show the dimmed image underneath."""
    palette = np.asarray(PALETTE, dtype=np.uint8)
    safe = np.where(label == IGNORE_INDEX, 0, label)
    rgb = palette[safe].astype(np.float32)
    if gray is not None:
        background = (safe == 0)[..., None]
        under = np.repeat(gray[..., None].astype(np.float32) * 0.45, 3, axis=-1)
        rgb = np.where(background, under, 0.25 * under + 0.75 * rgb)
    return rgb.clip(0, 255).astype(np.uint8)


def save_picture(result: SegBenchResult, test: LabelledSplit, path: os.PathLike) -> Path:
    """PNG: one row per kind — IR | VIS | the kind's input | its segmenter's prediction | label —
    on the picture image, with class colours, a legend and labelled panels. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from .data.color import colorize

    name = result.settings.get("picture_image")
    index = test.names.index(name)
    ir = test.ir[index][0].numpy()
    vis_rgb = (colorize(test.vis[index].float()[None] / 255.0, test.cbcr[index][None])[0]
               .permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    label = test.labels[index].numpy()
    kinds = [k for k in result.kinds if k.picture_image is not None]
    h, w = ir.shape
    cols = 5
    fig_w = 15.0
    panel_h = fig_w / cols * h / w
    fig, axes = plt.subplots(len(kinds), cols, figsize=(fig_w, panel_h * len(kinds) + 1.4), squeeze=False)
    headers = ("IR", "VIS", "input to the segmenter", "prediction", "label")
    for r, k in enumerate(kinds):
        image = k.picture_image  # 1×H×W grey, or 3×H×W RGB with --color
        fused = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
        gray = image.float().mean(0).round().to(torch.uint8).numpy()
        pred = k.picture_pred.numpy()
        cm = ConfusionMatrix()
        cm.update(torch.from_numpy(pred)[None], torch.from_numpy(label)[None])
        panels = (ir, vis_rgb, fused, _colour_labels(pred, gray), _colour_labels(label, gray))
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(headers[c], fontsize=11)
        axes[r, 0].set_ylabel(k.name, fontsize=12, fontweight="bold")
        axes[r, 3].set_xlabel(f"mIoU: set {k.mean_miou:.3f} · this image {cm.miou():.3f}", fontsize=9)
    handles = [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="0.5", label=n.replace("_", " "))
               for n, c in zip(result.class_names, PALETTE)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    mode = result.settings.get("mode")
    fig.suptitle(f"Semantic benchmark ({mode}) — test image {name}: one segmenter per input"
                 if mode == "train" else f"Semantic benchmark (quick) — test image {name}: one segmenter, every input",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97), h_pad=1.5)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path
