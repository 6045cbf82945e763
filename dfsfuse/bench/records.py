"""What a speed benchmark is about and what it produces: specs, settings, records, speed-ups.

Torch-free (torch is imported only inside the few methods that build models), so the CLI and
anything that only reads or writes benchmark JSON stay light.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..atomic import finite_json, write_json_atomic
from ..options import BENCH_DEFAULT_MODELS as DEFAULT_MODELS
from ..options import BENCH_MODES as MODES

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_MODELS", "MODES", "OK", "UNSUPPORTED", "ERROR", "TIMEOUT", "Size", "default_modes", "BenchModel",
    "parse_model_spec", "parse_size", "BenchConfig", "Job", "Measurement", "BenchRecord", "BenchSettings",
    "Speedup", "BenchResult", "compute_speedups", "BenchPreset", "QUICK", "FULL",
]


Size = Tuple[int, int]

OK, UNSUPPORTED, ERROR, TIMEOUT = "ok", "unsupported", "error", "timeout"
"""Record statuses: measured, known not to run here, raised, or killed after the time limit."""


def default_modes(device: str) -> Tuple[str, ...]:
    """Modes measured when none are asked for: no low precision on CPU, where bf16 is emulated
    (and very slow) unless the CPU has ``avx512_bf16``/``amx_bf16`` — ask for it with ``modes``."""
    if device.split(":")[0] == "cuda":
        return MODES
    return ("eager", "channels_last", "compile", "onnxruntime")


@dataclass(frozen=True)
class BenchPreset:
    """The defaults of a benchmark run; every field can be overridden on the command line.

    ``modes=None`` means the preset's own choice for the device (``quick_modes`` for
    :data:`QUICK`, :func:`default_modes` for :data:`FULL`); ``reference_modes=None`` measures the
    reference (the teacher) in the same modes as the others.
    """

    name: str
    models: Tuple[str, ...]
    modes: Optional[Tuple[str, ...]]
    reference_modes: Optional[Tuple[str, ...]]
    batches: Tuple[int, ...]
    warmup: int
    runs: int
    max_seconds: float


QUICK = BenchPreset("quick", ("teacher", "student", "student_fast"), None, ("eager",), (1,), 1, 20, 4.0)
"""The default: teacher (eager fp32 only) vs the students (eager fp32 and their candidate fast
modes), batch 1, one untimed first forward, then up to 20 timed ones or 4 s: a minute or two on
2 quiet CPU cores (the teacher's ~2 s forwards dominate)."""

FULL = BenchPreset("full", ("teacher", "student", "student_fast", "segmenter"), None, None, (1, 4), 3, 30, 20.0)
"""``--full``: every default model in every default mode, batches 1 and 4."""


# --------------------------------------------------------------------------------------------
# What to measure


@dataclass(frozen=True)
class BenchModel:
    """A model to benchmark: a registry name with kwargs, or an exported model folder (``path``)."""

    label: str
    name: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None

    def build(self, device: str = "cpu") -> nn.Module:
        """The model on ``device`` in eval mode (random weights for a registry name)."""
        if self.path is not None:
            from .. import from_pretrained

            return from_pretrained(self.path, device=device)
        from ..models import create_model

        return create_model(self.name, **self.kwargs).to(device).eval()

    def build_meta(self) -> nn.Module:
        """The architecture on the meta device (no memory, no weights): for counting."""
        import torch

        from ..models import create_model

        with torch.device("meta"):
            return create_model(self.name, **self.kwargs)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_model_spec(spec: str) -> BenchModel:
    """``teacher``, ``student:width=8,norm=true`` (registry name + kwargs) or a model folder path.

    Raises ``ValueError`` for an unknown name or a malformed spec.
    """
    from ..export import ModelLoadError, read_model_config
    from ..models import list_models

    if os.path.isdir(spec):
        try:
            config = read_model_config(spec)
        except ModelLoadError as exc:
            raise ValueError(str(exc)) from None
        path = Path(spec).resolve()
        return BenchModel(path.name, config["architecture"], dict(config.get("kwargs") or {}), str(path))
    name, _, args = spec.partition(":")
    if name not in list_models():
        raise ValueError(f"model {spec!r}: not a folder and not a registered model ({', '.join(list_models())})")
    kwargs: Dict[str, Any] = {}
    for item in filter(None, args.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"model {spec!r}: expected name:key=value[,key=value...], got {item!r}")
        kwargs[key.strip()] = _parse_value(value.strip())
    return BenchModel(spec, name, kwargs)


def parse_size(text: str) -> Size:
    """``"480x640"`` (height × width) → ``(480, 640)``."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 480x640") from None
    if height < 1 or width < 1:
        raise ValueError(f"size {text!r}: height and width must be positive")
    return height, width


@dataclass
class BenchConfig:
    """Everything :func:`run_benchmark` needs. ``modes=None`` means :func:`default_modes`;
    ``threads=None`` means torch's current thread count; ``reference=None`` means the first
    model whose architecture is ``teacher``; ``reference_modes`` (default: ``modes``) are the modes
    the reference is measured in (e.g. only ``eager`` for a slow teacher)."""

    models: Sequence[str] = DEFAULT_MODELS
    modes: Optional[Sequence[str]] = None
    sizes: Sequence[Size] = ((480, 640),)
    batches: Sequence[int] = (1, 4)
    device: str = "cpu"
    threads: Optional[int] = None
    warmup: int = 3
    runs: int = 30
    max_seconds: float = 20.0
    timeout_s: float = 300.0
    isolate: bool = True
    reference: Optional[str] = None
    note: str = ""
    reference_modes: Optional[Sequence[str]] = None

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot be measured."""
        unknown = [m for m in [*(self.modes or ()), *(self.reference_modes or ())] if m not in MODES]
        if unknown:
            raise ValueError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
        if not self.models:
            raise ValueError("no models to benchmark")
        if any(b < 1 for b in self.batches) or not self.batches:
            raise ValueError(f"batch sizes must be positive, got {list(self.batches)}")
        if self.warmup < 1 or self.runs < 1:
            raise ValueError("warmup and runs must both be at least 1")
        if self.max_seconds <= 0 or self.timeout_s <= 0:
            raise ValueError("max_seconds and timeout_s must be positive")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be positive, got {self.threads}")
        import torch

        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device}: CUDA is not available on this machine")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device {self.device}: only cpu and cuda are supported")


@dataclass(frozen=True)
class Job:
    """One measurement: a model in one mode at one batch and size (what a worker process gets)."""

    model: BenchModel
    kind: str
    mode: str
    batch: int
    height: int
    width: int
    device: str
    threads: int
    warmup: int
    runs: int
    max_seconds: float

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form (see :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Job":
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "model": BenchModel(**data["model"])})


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class Measurement:
    """What a worker measures; ``status`` is ``ok`` or tells why the numbers are missing."""

    latency_ms_p50: Optional[float] = None
    latency_ms_p95: Optional[float] = None
    latency_ms_mean: Optional[float] = None
    latency_ms_min: Optional[float] = None
    throughput_img_s: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    runs: int = 0
    warmup: int = 0
    first_run_ms: Optional[float] = None
    prepare_s: Optional[float] = None
    status: str = OK
    reason: str = ""


@dataclass
class BenchRecord:
    """One row of the benchmark: a (model, mode, batch, size) and what was measured."""

    model: str
    mode: str
    batch: int
    height: int
    width: int
    params: Optional[int]
    macs: Optional[int]
    latency_ms_p50: Optional[float]
    latency_ms_p95: Optional[float]
    throughput_img_s: Optional[float]
    peak_mem_mb: Optional[float]
    status: str
    reason: str
    runs: int
    warmup: int
    latency_ms_mean: Optional[float] = None
    latency_ms_min: Optional[float] = None
    first_run_ms: Optional[float] = None
    prepare_s: Optional[float] = None
    arch: str = ""
    kind: str = ""
    load_avg_1m: Optional[float] = None

    @property
    def ok(self) -> bool:
        """Whether the latency numbers exist."""
        return self.status == OK


@dataclass
class BenchSettings:
    """The conditions of a run, saved with the records."""

    device: str
    device_name: str
    cpu_model: str
    cpu_features: List[str]
    cpu_count: int
    threads: int
    torch_version: str
    onnxruntime_version: Optional[str]
    python_version: str
    platform: str
    warmup: int
    runs: int
    max_seconds: float
    timeout_s: float
    isolate: bool
    models: List[str]
    modes: List[str]
    sizes: List[List[int]]
    batches: List[int]
    reference: Optional[str]
    timing_method: str
    memory_method: str
    macs_method: str
    created: str  # when the run started (UTC)
    load_avg_start: Optional[List[float]] = None
    load_avg_end: Optional[List[float]] = None
    note: str = ""
    reference_modes: Optional[List[str]] = None


def _load_average() -> Optional[List[float]]:
    """1-, 5- and 15-minute system load (runnable processes), to judge how busy a shared machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Speedup:
    """How much faster ``model`` is than ``reference`` in one run: ``latency_ratio`` =
    reference p50 / model p50 (so > 1 means faster); ``best`` marks the model's fastest mode
    compared with the reference in eager mode."""

    model: str
    reference: str
    batch: int
    height: int
    width: int
    mode: str
    reference_mode: str
    latency_ratio: float
    params_ratio: Optional[float]
    macs_ratio: Optional[float]
    best: bool = False


@dataclass
class BenchResult:
    """Settings, records and student-vs-reference speed-ups of one benchmark run."""

    settings: BenchSettings
    records: List[BenchRecord]
    speedups: List[Speedup]

    def to_dict(self) -> Dict[str, Any]:
        """``{"settings": …, "records": […], "speedups": […]}`` with finite numbers or ``None``."""
        return finite_json({
            "settings": asdict(self.settings),
            "records": [asdict(r) for r in self.records],
            "speedups": [asdict(s) for s in self.speedups],
        })

    def save_json(self, path: os.PathLike) -> Path:
        """Write :meth:`to_dict` as indented JSON, atomically."""
        return write_json_atomic(path, self.to_dict())



def _reason(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."



def compute_speedups(records: Iterable[BenchRecord], reference: str,
                     models: Optional[Sequence[BenchModel]] = None) -> List[Speedup]:
    """Reference-over-model p50 ratios from one run: per shared mode, and the model's best mode
    against the reference in eager mode. Only fusion models are compared (segmentation is another task)."""
    records = [r for r in records if r.ok]
    by_key = {(r.model, r.mode, r.batch, r.height, r.width): r for r in records}
    order = [m.label for m in models] if models else list(dict.fromkeys(r.model for r in records))
    ratio = lambda a, b: (a / b) if a and b else None  # noqa: E731
    out: List[Speedup] = []
    for label in order:
        mine = [r for r in records if r.model == label and r.kind == "fusion"]
        if label == reference or not mine:
            continue
        for batch, height, width in dict.fromkeys((r.batch, r.height, r.width) for r in mine):
            group = [r for r in mine if (r.batch, r.height, r.width) == (batch, height, width)]
            for r in group:
                ref = by_key.get((reference, r.mode, batch, height, width))
                if ref is not None:
                    out.append(Speedup(label, reference, batch, height, width, r.mode, r.mode,
                                       ref.latency_ms_p50 / r.latency_ms_p50, ratio(ref.params, r.params),
                                       ratio(ref.macs, r.macs)))
            ref = by_key.get((reference, "eager", batch, height, width))
            if ref is not None:
                best = min(group, key=lambda r: r.latency_ms_p50)
                out.append(Speedup(label, reference, batch, height, width, best.mode, "eager",
                                   ref.latency_ms_p50 / best.latency_ms_p50, ratio(ref.params, best.params),
                                   ratio(ref.macs, best.macs), best=True))
    return out
