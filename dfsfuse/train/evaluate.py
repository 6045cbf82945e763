"""Stage 3: compare avg, max, teacher and student on held-out real pairs, and segmentation mIoU.

Fused images are rounded to 8 bits before scoring, exactly as they would be written to disk
and read back by the standard evaluator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Collection, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from ..baselines import baseline_fusion
from ..data import PairedImages, SyntheticScenes
from ..data.io import ImagePair, to_uint8
from ..fuse import fuse_arrays
from ..metrics import ConfusionMatrix, MetricAccumulator, apply_stretch, fusion_metrics
from ..models import profile

BASELINES = ("avg", "max")


@torch.inference_mode()
def fuse_gray(model: nn.Module, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
    """Fuse two H×W grey images in [0, 255] with a fusion model; returns the 8-bit result as float32."""
    return fuse_arrays(model, [ImagePair(ir=ir, vis_y=vis_y, vis_cbcr=None)], gray=True)[0].astype(np.float32)


@dataclass
class EvalReport:
    """Per-method, per-dataset metric means, segmentation mIoU and a comparison strip per dataset."""

    metrics: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    miou: Dict[str, float] = field(default_factory=dict)
    strips: Dict[str, np.ndarray] = field(default_factory=dict)
    segmentation: Dict[str, Dict[str, dict]] = field(default_factory=dict)
    seconds: float = 0.0


def evaluate_fusion(models: Dict[str, nn.Module], datasets: Dict[str, PairedImages], device: torch.device,
                    max_images: int = 0, show_progress: bool = True, baselines: Sequence[str] = BASELINES,
                    stretch: str = "none", segmenter: Optional[nn.Module] = None,
                    segment_sets: Optional[Collection[str]] = None) -> EvalReport:
    """Score the rule ``baselines`` and each fusion model on every dataset (first ``max_images``
    pairs, 0 = all), fused images scored as saved (``stretch="none"``) or min–max stretched.

    With a ``segmenter``, every labelled set also gets ``report.segmentation[set]`` (see
    :func:`evaluate_segmentation_real`), computed on the same 8-bit fusions (no second forward);
    ``segment_sets`` limits that to the labelled sets it names (``None``: every labelled set).
    """
    report = EvalReport()
    t0 = time.time()
    methods = list(baselines) + list(models)
    for m in models.values():
        m.eval()
    total = sum(min(len(ds), max_images) if max_images else len(ds) for ds in datasets.values())
    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task("evaluating", total=total)
        for name, ds in datasets.items():
            acc = {m: MetricAccumulator() for m in methods}
            seg_kinds = [*models, "max", "ir", "vis"]
            matrices = {k: ConfusionMatrix(num_classes=_NUM_CLASSES) for k in seg_kinds} \
                if segmenter is not None and getattr(ds, "has_labels", False) \
                and (segment_sets is None or name in segment_sets) else None
            n = min(len(ds), max_images) if max_images else len(ds)
            for i in range(n):
                s = ds[i]
                ir, vis = s["ir"][0].numpy() * 255.0, s["vis_y"][0].numpy() * 255.0
                ir, vis = np.round(ir).astype(np.float32), np.round(vis).astype(np.float32)
                fused = {b: baseline_fusion(ir, vis, b) for b in baselines}
                fused.update({m: fuse_gray(model, ir, vis) for m, model in models.items()})
                for m in methods:
                    acc[m].update(fusion_metrics(apply_stretch(fused[m], stretch), ir, vis))
                if matrices is not None:
                    images = {k: fused[k] if k in fused else baseline_fusion(ir, vis, k) for k in seg_kinds}
                    _segment_into(matrices, segmenter, images, s["label"], device)
                if i == 0:
                    report.strips[name] = colour_strip([ir, vis] + [fused[m] for m in methods], s["vis_cbcr"])
                bar.advance(task)
            for m in methods:
                report.metrics.setdefault(m, {})[name] = acc[m].mean()
            if matrices is not None:
                report.segmentation[name] = _iou_report(matrices)
    report.seconds = time.time() - t0
    return report


@torch.inference_mode()
def evaluate_segmentation(segmenter: nn.Module, fusers: Dict[str, nn.Module], count: int, size: int,
                          seed: int, device: torch.device, num_classes: int = 9) -> Dict[str, float]:
    """mIoU of ``segmenter`` on held-out synthetic scenes when fed each fusion, IR alone and VIS alone."""
    scenes = SyntheticScenes(count, size, seed=seed)
    matrices = {k: ConfusionMatrix(num_classes=num_classes) for k in [*fusers, "ir", "vis"]}
    segmenter.eval()
    for i in range(count):
        s = scenes[i]
        ir, vis, label = s["ir"][None].to(device), s["vis_y"][None].to(device), s["label"][None].to(device)
        inputs = {k: m(ir, vis).fused for k, m in fusers.items()}
        inputs.update(ir=ir, vis=vis)
        for k, image in inputs.items():
            matrices[k].update(segmenter(image).logits.argmax(1), label)
    return {k: cm.miou() for k, cm in matrices.items()}


_NUM_CLASSES = 9


@torch.inference_mode()
def _segment_into(matrices: Dict[str, ConfusionMatrix], segmenter: nn.Module, images: Dict[str, np.ndarray],
                  label: torch.Tensor, device: torch.device) -> None:
    """Segment each H×W 8-bit grey image of ``images`` and add it to its kind's confusion matrix."""
    segmenter.eval()
    target = label[None].to(device)
    for kind, image in images.items():
        x = torch.from_numpy(np.asarray(image, np.float32) / 255.0)[None, None].to(device)
        matrices[kind].update(segmenter(x).logits.argmax(1), target)


def _iou_report(matrices: Dict[str, ConfusionMatrix]) -> dict:
    from ..data.synthetic import CLASS_NAMES

    return {"miou": {k: cm.miou() for k, cm in matrices.items()},
            "iou": {k: {CLASS_NAMES[c]: float(v) for c, v in enumerate(cm.iou().tolist())}
                    for k, cm in matrices.items()}}


@torch.inference_mode()
def evaluate_segmentation_real(segmenter: nn.Module, fusers: Dict[str, nn.Module],
                               datasets: Dict[str, PairedImages], device: torch.device, max_images: int = 0,
                               num_classes: int = 9, show_progress: bool = True) -> Dict[str, Dict[str, dict]]:
    """mIoU and per-class IoU of ``segmenter`` on every *labelled* held-out set, fed with each
    fusion (rounded to 8 bits as saved), ``max``, IR alone and VIS alone.

    Returns ``{set: {"miou": {input: m}, "iou": {input: {class: iou}}}}``; sets without labels are left out.
    """
    out: Dict[str, Dict[str, dict]] = {}
    labelled = {k: ds for k, ds in datasets.items() if getattr(ds, "has_labels", False)}
    total = sum(min(len(ds), max_images) if max_images else len(ds) for ds in labelled.values())
    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task("segmenting", total=total)
        for name, ds in labelled.items():
            matrices = {k: ConfusionMatrix(num_classes=num_classes) for k in [*fusers, "max", "ir", "vis"]}
            n = min(len(ds), max_images) if max_images else len(ds)
            for i in range(n):
                s = ds[i]
                ir = np.round(s["ir"][0].numpy() * 255.0).astype(np.float32)
                vis = np.round(s["vis_y"][0].numpy() * 255.0).astype(np.float32)
                images = {k: fuse_gray(m, ir, vis) for k, m in fusers.items()}
                images.update(max=baseline_fusion(ir, vis, "max"), ir=ir, vis=vis)
                _segment_into(matrices, segmenter, images, s["label"], device)
                bar.advance(task)
            out[name] = _iou_report(matrices)
    return out


def colour_strip(panels: Sequence[np.ndarray], vis_cbcr: torch.Tensor) -> np.ndarray:
    """Panels (H×W grey levels in [0, 255]: IR first, then VIS and fusions) side by side as one
    H×(n·W)×3 RGB strip: IR stays grey, every other panel gets the visible image's chroma back
    (the way `dfsfuse fuse` writes a colour fusion)."""
    from ..data.color import colorize

    out = [np.repeat(np.asarray(panels[0], np.float32)[..., None], 3, axis=2)]
    cbcr = vis_cbcr.float()
    for panel in panels[1:]:
        y = torch.from_numpy(np.asarray(panel, np.float32) / 255.0)[None]
        out.append(colorize(y, cbcr).permute(1, 2, 0).numpy() * 255.0)
    return np.concatenate(out, axis=1)


def comparison_image(strips: Dict[str, np.ndarray], columns: Optional[Sequence[str]] = None) -> np.ndarray:
    """Stack per-dataset strips (IR | VIS | rules | models, grey or RGB) into one 8-bit RGB image.

    Rows are scaled to a common width (no padding between or beside them); with ``columns`` each
    panel is labelled with its method, the first with the dataset too.
    """
    from PIL import Image, ImageDraw, ImageFont

    rows = [Image.fromarray(to_uint8(s if s.ndim == 3 else np.repeat(s[..., None], 3, axis=2))) for s in strips.values()]
    width = max(r.width for r in rows)
    rows = [r if r.width == width else r.resize((width, round(r.height * width / r.width)), Image.BILINEAR)
            for r in rows]
    grid = Image.new("RGB", (width, sum(r.height for r in rows)))
    top = 0
    draw = ImageDraw.Draw(grid)
    for (dataset, _), row in zip(strips.items(), rows):
        grid.paste(row, (0, top))
        if columns:
            try:
                font = ImageFont.load_default(size=max(12, row.height // 20))
            except TypeError:  # Pillow < 10.1: fixed-size bitmap font only
                font = ImageFont.load_default()
            panel = width / len(columns)
            for i, name in enumerate(columns):
                label = f"{dataset}: {name}" if i == 0 else name
                x, y = int(i * panel) + 4, top + 4
                box = draw.textbbox((x, y), label, font=font)
                draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
                draw.text((x, y), label, fill=(255, 255, 255), font=font)
        top += row.height
    return np.asarray(grid)


def model_summary(model: nn.Module, size: Tuple[int, int], device: Optional[torch.device] = None,
                  runs: int = 3) -> Dict[str, float]:
    """Parameters, GMAC (meta device) and, when ``device`` is given and ``runs`` > 0, the median eager fp32
    latency of ``runs`` batch-1 forwards at ``size`` after one warm-up (:func:`dfsfuse.bench.measure_module`,
    torch's current thread count)."""
    prof = profile(model, size=size)
    out = {"params": prof.params, "gmac": prof.macs / 1e9, "height": size[0], "width": size[1]}
    if device is not None and runs > 0:
        from ..bench import measure_module

        record = measure_module(model, size, "eager", runs=runs, warmup=1, max_seconds=float("inf"), device=device,
                                count=False)
        if record.ok:
            out["latency_ms"] = record.latency_ms_p50
    return out
