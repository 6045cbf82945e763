"""A JSON-lines tracker for Accelerate: loss curves with no extra service or package."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

from accelerate.tracking import GeneralTracker, on_main_process

from ..run_layout import RunLayout


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JSONLinesTracker(GeneralTracker):
    """Appends one JSON object per ``accelerator.log`` call to the run's ``log.jsonl``.

    Lines carry ``step``, ``time`` (seconds since the tracker started) and the logged values;
    the run configuration goes to the run's ``run_config.json`` via ``init_trackers``
    (paths from :class:`~dfsfuse.run_layout.RunLayout` of ``logging_dir``).
    """

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    # __init__ must not touch accelerate's process state: the tracker is built before the
    # Accelerator, and an early PartialState() would pin the run to a single process.
    def __init__(self, run_name: str, logging_dir: str, **kwargs) -> None:
        super().__init__()
        self.run_name = run_name
        self.layout = RunLayout(logging_dir)
        self.dir = self.layout.root
        self.path = self.layout.log
        self._t0 = time.time()

    @property
    def tracker(self):
        return self.path

    @on_main_process
    def store_init_configuration(self, values: Dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.layout.run_config.write_text(json.dumps(values, indent=2, default=str))

    @on_main_process
    def log(self, values: Dict[str, Any], step: Optional[int] = None, **kwargs) -> None:
        record = {"step": step, "time": round(time.time() - self._t0, 3)}
        record.update({k: _plain(v) for k, v in values.items()})
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def read_log(path) -> list:
    """The records of a ``log.jsonl`` file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
