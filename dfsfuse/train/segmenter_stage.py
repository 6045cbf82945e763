"""Stage 0: the segmenter pre-trained alone on labelled training pairs, before stage 1.

Why: trained from scratch jointly with the teacher on the fusion's small crops, the segmenter
collapses to predicting background everywhere (class 0 covers ≈ 92% of MSRS pixels) and its
gradient then tells the teacher nothing. Pre-training it on whole-scene crops of a rule
fusion — by default ``region-max``, the initial state of the ``region`` head, so stage 1 starts
on the images this segmenter knows — gives stage 1 a segmenter that already sees people and
cars. The training itself is the semantic benchmark's (:func:`dfsfuse.semantic_bench.train_segmenter`:
seeded crops and flips, warm-up + cosine AdamW, class-weighted or OHEM CE from ``loss.seg_loss``).

The stage runs on the main process and is saved to the run's ``segmenter_init/``; every
process then loads it. A resumed run whose ``segmenter_init/`` exists skips the stage; one cut
during it trains the stage again from the start (it takes minutes, not hours).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from accelerate import Accelerator
from torch import Tensor, nn

from ..baselines import baseline_fusion
from ..data import DatasetError
from ..data.transforms import resize_image, resize_label
from ..export import from_pretrained, save_pretrained
from ..losses import class_weights_from_labels
from ..run_layout import RunLayout
from ..semantic_bench import SegBenchSettings, to_u8, train_segmenter
from .config import RunConfig
from .data import open_spec, spec_name
from .progress import StageProgress

__all__ = ["labelled_training_pairs", "pretrain_segmenter", "train_on_rules"]


def labelled_training_pairs(cfg: RunConfig, rule: str, size: Optional[Tuple[int, int]] = None
                            ) -> Tuple[List[Tensor], List[Tensor], List[str]]:
    """Every labelled pair of ``data.train`` fused by ``rule``: (1×H×W uint8 images, H×W int64
    labels, names of the sets used). Sets without labels are skipped; none at all is an error.
    ``size`` (H, W) resizes the sources before fusing (area, rounded to 8 bits) and the labels
    (nearest), as the semantic benchmark's :func:`~dfsfuse.semantic_bench.load_labelled_split` does;
    ``None`` keeps the native size."""
    images: List[Tensor] = []
    labels: List[Tensor] = []
    used: List[str] = []
    for spec in cfg.data.train:
        dataset = open_spec(spec, labels=True)
        if dataset is None or not dataset.has_labels:
            continue
        for sample in dataset:
            if "label" not in sample:
                continue
            ir, vis = (to_u8(resize_image(sample[k], size))[0].numpy().astype(np.float32) for k in ("ir", "vis_y"))
            images.append(torch.from_numpy(baseline_fusion(ir, vis, rule))[None])
            labels.append(resize_label(sample["label"], size))
        used.append(spec_name(spec))
    if not images:
        raise DatasetError("segmenter.steps > 0 but no set in data.train has segmentation labels "
                           "(Segmentation_labels/); set segmenter.steps=0")
    return images, labels, used


def train_on_rules(cfg: RunConfig, rules: Sequence[str], steps: int, segmenter: nn.Module, device: str = "cpu",
                   on_step: Optional[Callable[[int, float], None]] = None, size: Optional[Tuple[int, int]] = None,
                   crop: Optional[Tuple[int, int]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Stage 0's training of ``segmenter`` for ``steps`` steps (``segmenter.*`` crop, batch and
    optimiser, seed ``train.seed``, ``loss.seg_loss`` with class weights from these labels) on the
    labelled pairs of ``data.train`` fused by each of ``rules`` (the labels repeated per rule);
    returns the trained model and the ``pretraining`` record its card keeps. ``size`` shrinks the
    pairs before fusing (:func:`labelled_training_pairs`); ``crop`` replaces ``segmenter.crop``."""
    stage = cfg.segmenter
    crop = tuple(crop) if crop is not None else tuple(stage.crop)
    images: List[Tensor] = []
    labels: List[Tensor] = []
    for rule in rules:
        rule_images, rule_labels, used = labelled_training_pairs(cfg, rule, size)
        images += rule_images
        labels += rule_labels
    weights = class_weights_from_labels(torch.cat([y.flatten() for y in labels]))
    settings = SegBenchSettings(size=None, crop=crop, steps=steps, batch_size=stage.batch_size,
                                lr=stage.lr, weight_decay=stage.weight_decay, warmup_steps=stage.warmup_steps,
                                seg_loss=cfg.loss.seg_loss, ema=stage.ema, device=device)
    settings.validate()
    trained = train_segmenter(images, labels, settings, seed=cfg.train.seed, class_weights=list(weights),
                              on_step=on_step, model=segmenter)
    return trained, {"input": "+".join(rules), "datasets": used, "pairs": len(images), "crop": list(crop),
                     "size": list(size) if size is not None else "native", "seg_loss": cfg.loss.seg_loss}


def pretrain_segmenter(accelerator: Accelerator, cfg: RunConfig, segmenter: nn.Module, run_dir: Path,
                       resume: bool = False) -> nn.Module:
    """Stage 0 (``segmenter.steps > 0``): train ``segmenter`` on labelled pairs fused by
    ``segmenter.input``; returns it with the trained weights (every process), saved in the run."""
    steps = cfg.stage_steps("segmenter")
    if steps <= 0:
        return segmenter
    out = RunLayout(run_dir).segmenter_init
    if not (resume and RunLayout.is_model_dir(out)):
        if accelerator.is_main_process:
            with StageProgress("segmenter", steps) as progress:
                trained, record = train_on_rules(cfg, [cfg.segmenter.input], steps, segmenter,
                                                 device=str(accelerator.device), on_step=progress.update)
            save_pretrained(trained, out, role="segmenter", train_steps=steps, pretraining=record)
        accelerator.wait_for_everyone()
    loaded = from_pretrained(out, device=accelerator.device)
    segmenter.load_state_dict(loaded.state_dict())
    return segmenter.train()
