"""Report of a semantic-benchmark run: a rich table and a PNG picture of every kind on one test image."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..atomic import atomic_path
from ..metrics.segmentation import ConfusionMatrix
from .data import LabelledSplit
from .results import SegBenchResult
from .settings import IGNORE_INDEX, PALETTE

__all__ = ["print_table", "save_picture"]


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

    from ..data.color import colorize

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
