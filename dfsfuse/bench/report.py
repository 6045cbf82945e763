"""Reporting a benchmark run: a rich table with the speed-ups, and a PNG chart (torch-free)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

from ..atomic import atomic_path
from .records import BenchResult, Size

__all__ = ["print_report", "save_chart"]


# --------------------------------------------------------------------------------------------
# Reports


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _short(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _ratio(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:,.1f}×"


def _count(value: Optional[int]) -> str:
    if value is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return str(value)


def _print_wide(console: Any, table: Any) -> None:
    """Print ``table`` without squeezing numbers into ellipses: widen the console if needed."""
    from rich.console import Console
    from rich.measure import Measurement as Width

    needed = Width.get(console, console.options.update(width=10_000), table).maximum
    Console(width=max(console.width, needed), file=console.file, force_terminal=console.is_terminal).print(table)


def print_report(result: BenchResult, console: Any = None) -> None:
    """The records as a rich table (reasons as numbered notes below it), then the speed-up table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s = result.settings
    load = f", load {s.load_avg_start[0]:g}→{s.load_avg_end[0]:g}" if s.load_avg_start and s.load_avg_end else ""
    table = Table(title=f"Speed on {s.device_name} ({s.device}, {s.threads} threads, torch {s.torch_version}{load})")
    for name in ("model", "mode", "batch", "size", "params", "MACs", "p50 ms", "p95 ms", "img/s", "peak MB", "runs",
                 "status"):
        table.add_column(name, justify="left" if name in ("model", "mode", "size", "status") else "right",
                         no_wrap=True)
    notes: Dict[str, int] = {}
    for r in result.records:
        status = r.status if r.ok else f"[yellow]{r.status}[/]"
        if r.reason:
            status += f" [{notes.setdefault(r.reason, len(notes) + 1)}]"
        table.add_row(r.model, r.mode, str(r.batch), f"{r.height}×{r.width}", _count(r.params), _count(r.macs),
                      _fmt(r.latency_ms_p50), _fmt(r.latency_ms_p95), _fmt(r.throughput_img_s, 2),
                      _fmt(r.peak_mem_mb), str(r.runs), status)
    _print_wide(console, table)
    for reason, number in notes.items():
        console.print(f"  [{number}] {reason}", markup=False, highlight=False, soft_wrap=True)
    if not result.speedups:
        return
    speed = Table(title=f"Speed-up over {s.reference} (p50 ratio, measured in this run)")
    for name in ("model", "batch", "size", "mode", f"{s.reference} mode", "speed-up", "params ×", "MACs ×"):
        speed.add_column(name, justify="right" if name in ("batch", "speed-up", "params ×", "MACs ×") else "left",
                         no_wrap=True)
    for x in result.speedups:
        speed.add_row(x.model, str(x.batch), f"{x.height}×{x.width}", x.mode + (" (best)" if x.best else ""),
                      x.reference_mode, f"{x.latency_ratio:.1f}×", _ratio(x.params_ratio), _ratio(x.macs_ratio),
                      style="bold" if x.best else None)
    _print_wide(console, speed)


def save_chart(result: BenchResult, path: os.PathLike, batch: Optional[int] = None,
               size: Optional[Size] = None) -> Path:
    """A PNG with p50 latency per model and mode (log scale) and MACs / params per model, for one
    batch and size (default: the smallest batch, the first size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.settings
    batch = batch or min(s.batches)
    size = tuple(size or s.sizes[0])
    rows = [r for r in result.records if r.batch == batch and (r.height, r.width) == size]
    models = list(dict.fromkeys(r.model for r in rows))
    modes = list(dict.fromkeys(r.mode for r in rows))
    fig, (ax_lat, ax_mac) = plt.subplots(1, 2, figsize=(max(10, 2.4 * len(models) + 6), 4.8),
                                         gridspec_kw={"width_ratios": [2, 1]})
    from matplotlib.patches import Patch

    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        for i, model in enumerate(models):
            r = next((x for x in rows if x.model == model and x.mode == mode), None)
            x = i - 0.4 + width * (j + 0.5)
            if r is not None and r.ok:
                ax_lat.bar(x, r.latency_ms_p50, width, color=f"C{j}")
                ax_lat.text(x, r.latency_ms_p50, _short(r.latency_ms_p50), ha="center", va="bottom", fontsize=6)
            else:
                ax_lat.text(x, 0.02, r.status if r else "—", ha="center", va="bottom", fontsize=6, rotation=90,
                            transform=ax_lat.get_xaxis_transform(), color=f"C{j}")
    ax_lat.set_yscale("log")
    ax_lat.set_xlim(-0.5, len(models) - 0.5)
    ax_lat.set_xticks(range(len(models)), models, fontsize=8)
    ax_lat.set_ylabel("latency p50 (ms, log)")
    ax_lat.set_title(f"Latency, batch {batch}, {size[0]}×{size[1]}")
    ax_lat.legend(handles=[Patch(color=f"C{j}", label=m) for j, m in enumerate(modes)], fontsize=7)
    counts = {r.model: r for r in rows}
    macs = [(counts[m].macs or 0) / batch for m in models]
    ax_mac.bar(range(len(models)), macs, color="0.5")
    for i, m in enumerate(models):
        ax_mac.text(i, macs[i], f"{_count(int(macs[i]))}MAC\n{_count(counts[m].params)} params", ha="center",
                    va="bottom", fontsize=7)
    ax_mac.set_yscale("log")
    if any(macs):
        ax_mac.set_ylim(min(v for v in macs if v) / 3, max(macs) * 5)
    ax_mac.set_xticks(range(len(models)), models, fontsize=8)
    ax_mac.set_ylabel("multiply-adds per image (log)")
    ax_mac.set_title("Multiply-adds and parameters")
    load = f" · load {s.load_avg_start[0]:g}→{s.load_avg_end[0]:g}" if s.load_avg_start and s.load_avg_end else ""
    fig.suptitle(f"{s.device_name} · {s.device} · {s.threads} threads · torch {s.torch_version}{load}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path
