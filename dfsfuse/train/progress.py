"""A rich progress bar for a training stage: loss, steps/s and ETA, on the main process only."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StageProgress:
    """Context manager showing ``name``'s progress; a no-op when ``enabled`` is false."""

    def __init__(self, name: str, total: int, start: int = 0, enabled: bool = True) -> None:
        self.name, self.total, self.start, self.enabled = name, total, start, enabled
        self._progress = None
        self._task = None
        self._t0 = 0.0

    def __enter__(self) -> "StageProgress":
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} step/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.name, total=self.total, completed=self.start,
                                                 loss="-", rate="-")
        self._t0 = time.time()
        return self

    def update(self, step: int, loss: float) -> None:
        """Record that ``step`` finished with ``loss``."""
        if self._progress is None:
            return
        rate = (step - self.start) / max(1e-9, time.time() - self._t0)
        self._progress.update(self._task, completed=step, loss=f"{loss:.4f}", rate=f"{rate:.2f}")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
