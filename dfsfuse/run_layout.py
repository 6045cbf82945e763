"""The training run folder, defined once: every reader and writer builds its paths here.

::

    RUN/
      run_config.json          the run's configuration (older runs: config.json, see below)
      log.jsonl                one JSON object per logged step (train/tracking.py)
      checkpoints/<stage>/     step_NNNNNN checkpoints of each stage ("teacher", "student")
      teacher/                 the exported teacher (a model folder: model.safetensors + config.json)
      teacher/segmenter/       the segmenter trained beside it (a model folder)
      student/                 the exported student (a model folder)
      metrics.json             held-out metrics of every method
      comparison.png, sample.png

Runs written before ``run_config.json`` existed keep their run configuration in
``config.json``; it is told apart from a *model's* ``config.json`` (which has an
``architecture`` key) and still read. Torch-free; imports nothing from ``dfsfuse``, so every
layer (``train``, ``publish``, ``ablation``, the recipe) may use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

__all__ = [
    "RunLayout",
    "RUN_CONFIG_NAME",
    "LEGACY_RUN_CONFIG_NAME",
    "METRICS_NAME",
    "LOG_NAME",
    "COMPARISON_NAME",
    "SAMPLE_NAME",
    "STAGES",
    "is_model_config",
    "MODEL_CONFIG_NAME",
    "MODEL_WEIGHTS_NAME",
]

RUN_CONFIG_NAME = "run_config.json"
MODEL_CONFIG_NAME = "config.json"  # every model folder's config (dfsfuse.export.CONFIG_NAME)
MODEL_WEIGHTS_NAME = "model.safetensors"  # every model folder's weights (dfsfuse.export.WEIGHTS_NAME)
LEGACY_RUN_CONFIG_NAME = MODEL_CONFIG_NAME  # runs before run_config.json kept theirs under a model's config name
METRICS_NAME = "metrics.json"
LOG_NAME = "log.jsonl"
COMPARISON_NAME = "comparison.png"
SAMPLE_NAME = "sample.png"
CHECKPOINTS_DIR = "checkpoints"
SEGMENTER_DIR = "segmenter"
STAGES: Tuple[str, ...] = ("teacher", "student")


def is_model_config(config: Any) -> bool:
    """Whether a parsed ``config.json`` is a model's (``architecture`` + ``kwargs``), not a run's."""
    return isinstance(config, dict) and "architecture" in config


class RunLayout:
    """Paths of one run folder (nothing is created or read until asked)."""

    def __init__(self, root: Union[str, os.PathLike, "RunLayout"]) -> None:
        self.root = Path(root.root if isinstance(root, RunLayout) else root)

    def __repr__(self) -> str:
        return f"RunLayout({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunLayout) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # -- where things go ---------------------------------------------------------------
    @property
    def checkpoints_root(self) -> Path:
        """``RUN/checkpoints``: one folder per stage below it."""
        return self.root / CHECKPOINTS_DIR

    def checkpoints(self, stage: str) -> Path:
        """``RUN/checkpoints/<stage>``, the folder of ``step_NNNNNN`` checkpoints of ``stage``."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
        return self.checkpoints_root / stage

    @property
    def teacher(self) -> Path:
        """The exported teacher's model folder."""
        return self.root / "teacher"

    @property
    def segmenter(self) -> Path:
        """The exported segmenter's model folder (inside the teacher's)."""
        return self.segmenter_of(self.teacher)

    @property
    def segmenter_init(self) -> Path:
        """The segmenter as stage 0 left it (pre-trained alone), before stage 1 fine-tunes it."""
        return self.root / "segmenter_init"

    @staticmethod
    def segmenter_of(teacher_dir: Union[str, os.PathLike]) -> Path:
        """Where any teacher folder (in a run or not, e.g. ``--teacher DIR``) keeps its segmenter."""
        return Path(teacher_dir) / SEGMENTER_DIR

    @staticmethod
    def find_segmenter(teacher_dir: Union[str, os.PathLike]) -> Optional[Path]:
        """The segmenter that goes with a teacher folder, for reading: its ``segmenter/``
        subfolder (a run's teacher), else a ``segmenter`` folder beside it (the package's
        ``assets/teacher`` + ``assets/segmenter``); ``None`` when neither holds a model."""
        for candidate in (Path(teacher_dir) / SEGMENTER_DIR, Path(teacher_dir).parent / SEGMENTER_DIR):
            if RunLayout.is_model_dir(candidate) and candidate.resolve() != Path(teacher_dir).resolve():
                return candidate
        return None

    @staticmethod
    def model_config_of(model_dir: Union[str, os.PathLike]) -> Path:
        """The ``config.json`` of any model folder (in a run or not)."""
        return Path(model_dir) / MODEL_CONFIG_NAME

    @staticmethod
    def model_weights_of(model_dir: Union[str, os.PathLike]) -> Path:
        """The ``model.safetensors`` of any model folder (in a run or not)."""
        return Path(model_dir) / MODEL_WEIGHTS_NAME

    @staticmethod
    def is_model_dir(model_dir: Union[str, os.PathLike]) -> bool:
        """Whether ``model_dir`` holds an exported model (its ``config.json`` exists; not read)."""
        return RunLayout.model_config_of(model_dir).is_file()

    @property
    def student(self) -> Path:
        """The exported student's model folder."""
        return self.root / "student"

    def model(self, role: str) -> Path:
        """The model folder of ``role`` (``teacher``, ``segmenter`` or ``student``)."""
        if role not in ("teacher", "segmenter", "student"):
            raise ValueError(f"unknown role {role!r} (known: teacher, segmenter, student)")
        return getattr(self, role)

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_NAME

    @property
    def log(self) -> Path:
        return self.root / LOG_NAME

    @property
    def comparison(self) -> Path:
        return self.root / COMPARISON_NAME

    @property
    def sample(self) -> Path:
        return self.root / SAMPLE_NAME

    @property
    def run_config(self) -> Path:
        """Where a run writes its configuration (``run_config.json``)."""
        return self.root / RUN_CONFIG_NAME

    @property
    def legacy_run_config(self) -> Path:
        """Where runs written before ``run_config.json`` kept it (``config.json``)."""
        return self.root / LEGACY_RUN_CONFIG_NAME

    # -- reading -------------------------------------------------------------------------
    def find_run_config(self) -> Optional[Path]:
        """The run configuration file: ``run_config.json``, else a ``config.json`` that is not a
        model's (older runs); ``None`` when the folder holds neither."""
        if self.run_config.is_file():
            return self.run_config
        if self.legacy_run_config.is_file():
            try:
                config = json.loads(self.legacy_run_config.read_text())
            except (OSError, ValueError):
                return self.legacy_run_config  # unreadable: let the reader report it
            if not is_model_config(config):
                return self.legacy_run_config
        return None

    def is_run(self) -> bool:
        """Whether ``root`` holds a run configuration (a training run folder)."""
        return self.find_run_config() is not None

    def read_run_config(self) -> Dict[str, Any]:
        """The parsed run configuration (``FileNotFoundError`` / ``ValueError`` when absent / not JSON)."""
        path = self.find_run_config()
        if path is None:
            raise FileNotFoundError(f"{self.run_config}: missing (not a dfsfuse training run folder)")
        return json.loads(path.read_text())

    # -- finding the run from inside it --------------------------------------------------
    @classmethod
    def from_stage_dir(cls, stage_dir: Union[str, os.PathLike]) -> Tuple["RunLayout", str]:
        """``RUN/checkpoints/<stage>`` → ``(RunLayout(RUN), stage)``."""
        stage_dir = Path(stage_dir)
        return cls(stage_dir.parent.parent), stage_dir.name

    @classmethod
    def from_checkpoint(cls, checkpoint: Union[str, os.PathLike]) -> Tuple["RunLayout", str]:
        """``RUN/checkpoints/<stage>/step_N`` → ``(RunLayout(RUN), stage)``."""
        return cls.from_stage_dir(Path(checkpoint).parent)

    @classmethod
    def from_model_dir(cls, model_dir: Union[str, os.PathLike]) -> Optional["RunLayout"]:
        """The run a model folder belongs to (``RUN/student``, ``RUN/teacher``,
        ``RUN/teacher/segmenter``), or ``None`` when the folder is not inside a run."""
        model_dir = Path(model_dir)
        candidates = {"student": model_dir.parent, "teacher": model_dir.parent}
        if model_dir.name == "segmenter" and model_dir.parent.name == "teacher":
            candidates["segmenter"] = model_dir.parent.parent
        root = candidates.get(model_dir.name)
        if root is None:
            return None
        layout = cls(root)
        return layout if layout.model(model_dir.name) == model_dir and (layout.is_run() or layout.metrics.is_file()) \
            else None
