"""Presentation of an ablation report: a rich table of mean ± std per variant (and student size),
the held-out fidelity curves and the quality-per-multiply-add chart (PNG)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..atomic import atomic_path
from .benchmark import summarise

__all__ = ["MAIN_METRICS", "results_table", "plot_curves", "plot_quality_per_mac"]


MAIN_METRICS: Tuple[str, ...] = ("fidelity_psnr", "fidelity_ssim", "VIF", "Qabf", "SSIM", "miou", "steps_to_95")
"""The columns of the table (every recorded metric is in the JSON)."""


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
