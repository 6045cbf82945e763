"""Training and evaluation of one segmenter of the semantic benchmark: building it, random crops,
the warm-up + cosine AdamW training and scoring over whole test images."""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..determinism import deterministic_kernels
from ..ema import moving_average
from ..metrics.segmentation import ConfusionMatrix, FalsePositiveDistance
from .settings import IGNORE_INDEX, SegBenchSettings, Size

__all__ = ["build_segmenter", "train_segmenter", "evaluate_segmenter"]


def build_segmenter(spec: str, num_classes: int = 9, in_chans: int = 1) -> nn.Module:
    """A randomly initialised segmenter from a registry spec (``segmenter:backbone=…,fpn_dim=…``)
    reading ``in_chans`` channels (unless the spec says otherwise)."""
    from ..bench import parse_model_spec
    from ..models import create_model, model_kind

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
    from ..losses import SegmentationCE

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
