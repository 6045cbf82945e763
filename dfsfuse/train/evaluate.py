"""Stage 3: compare avg, max, teacher and student on held-out real pairs, and segmentation mIoU.

Fused images are rounded to 8 bits before scoring, exactly as they would be written to disk
and read back by the standard evaluator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

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
    seconds: float = 0.0


def evaluate_fusion(models: Dict[str, nn.Module], datasets: Dict[str, PairedImages], device: torch.device,
                    max_images: int = 0, show_progress: bool = True, baselines: Sequence[str] = BASELINES,
                    stretch: str = "none") -> EvalReport:
    """Score the rule ``baselines`` and each fusion model on every dataset (first ``max_images``
    pairs, 0 = all), fused images scored as saved (``stretch="none"``) or min–max stretched."""
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
            n = min(len(ds), max_images) if max_images else len(ds)
            for i in range(n):
                s = ds[i]
                ir, vis = s["ir"][0].numpy() * 255.0, s["vis_y"][0].numpy() * 255.0
                ir, vis = np.round(ir).astype(np.float32), np.round(vis).astype(np.float32)
                fused = {b: baseline_fusion(ir, vis, b) for b in baselines}
                fused.update({m: fuse_gray(model, ir, vis) for m, model in models.items()})
                for m in methods:
                    acc[m].update(fusion_metrics(apply_stretch(fused[m], stretch), ir, vis))
                if i == 0:
                    report.strips[name] = np.concatenate([ir, vis] + [fused[m] for m in methods], axis=1)
                bar.advance(task)
            for m in methods:
                report.metrics.setdefault(m, {})[name] = acc[m].mean()
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


@torch.inference_mode()
def evaluate_segmentation_real(segmenter: nn.Module, fusers: Dict[str, nn.Module],
                               datasets: Dict[str, PairedImages], device: torch.device, max_images: int = 0,
                               num_classes: int = 9, show_progress: bool = True) -> Dict[str, Dict[str, dict]]:
    """mIoU and per-class IoU of ``segmenter`` on every *labelled* held-out set, fed with each
    fusion (rounded to 8 bits as saved), ``max``, IR alone and VIS alone.

    Returns ``{set: {"miou": {input: m}, "iou": {input: {class: iou}}}}``; sets without labels are left out.
    """
    from ..data.synthetic import CLASS_NAMES

    out: Dict[str, Dict[str, dict]] = {}
    segmenter.eval()
    labelled = {k: ds for k, ds in datasets.items() if getattr(ds, "has_labels", False)}
    total = sum(min(len(ds), max_images) if max_images else len(ds) for ds in labelled.values())
    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task("segmenting", total=total)
        for name, ds in labelled.items():
            kinds = [*fusers, "max", "ir", "vis"]
            matrices = {k: ConfusionMatrix(num_classes=num_classes) for k in kinds}
            n = min(len(ds), max_images) if max_images else len(ds)
            for i in range(n):
                s = ds[i]
                ir = torch.round(s["ir"][None] * 255).to(device) / 255
                vis = torch.round(s["vis_y"][None] * 255).to(device) / 255
                inputs = {k: torch.round(m(ir, vis).fused * 255) / 255 for k, m in fusers.items()}
                inputs.update(max=torch.maximum(ir, vis), ir=ir, vis=vis)
                label = s["label"][None].to(device)
                for k, image in inputs.items():
                    matrices[k].update(segmenter(image).logits.argmax(1), label)
                bar.advance(task)
            out[name] = {"miou": {k: cm.miou() for k, cm in matrices.items()},
                         "iou": {k: {CLASS_NAMES[c]: float(v) for c, v in enumerate(cm.iou().tolist())}
                                 for k, cm in matrices.items()}}
    return out


def comparison_image(strips: Dict[str, np.ndarray]) -> np.ndarray:
    """Stack per-dataset strips (IR | VIS | avg | max | teacher | student) into one 8-bit grey image."""
    width = max(s.shape[1] for s in strips.values())
    rows = [np.pad(s, ((0, 4), (0, width - s.shape[1]))) for s in strips.values()]
    return to_uint8(np.concatenate(rows, axis=0))


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
