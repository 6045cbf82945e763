"""A rich progress bar for a training stage: loss, steps/s and ETA, on the main process only.

When output is not a terminal (CI logs, ``nohup``), a bar cannot redraw, so a plain line is
printed at every 10% of the stage instead.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StageProgress:
    """Context manager showing ``name``'s progress; a no-op when ``enabled`` is false."""

    def __init__(self, name: str, total: int, start: int = 0, enabled: bool = True, metric: str = "loss",
                 unit: str = "step") -> None:
        self.name, self.total, self.start, self.enabled = name, total, start, enabled
        self.metric, self.unit = metric, unit
        self._progress = None
        self._task = None
        self._t0 = 0.0
        self._console = Console()
        self._plain = enabled and not self._console.is_terminal
        self._next_report = start

    def __enter__(self) -> "StageProgress":
        if self.enabled and not self._plain:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn(f"{self.metric} {{task.fields[loss]}}"), TextColumn(f"{{task.fields[rate]}} {self.unit}/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.name, total=self.total, completed=self.start,
                                                 loss="-", rate="-")
        self._t0 = time.time()
        return self

    def update(self, step: int, loss: float) -> None:
        """Record that ``step`` finished with ``loss`` (shown under the ``metric`` label)."""
        elapsed = max(1e-9, time.time() - self._t0)
        rate = (step - self.start) / elapsed
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=f"{loss:.4f}", rate=f"{rate:.2f}")
        elif self._plain and (step >= self._next_report or step == self.total):
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            self._console.print(f"{self.name}: {self.unit} {step}/{self.total}  {self.metric} {loss:.4f}  "
                                f"{rate:.2f} {self.unit}/s  elapsed {elapsed:.0f} s  ETA {eta:.0f} s")
            self._next_report = step + max(1, self.total // 10)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
