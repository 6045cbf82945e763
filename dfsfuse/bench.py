"""Speed benchmark: parameters, multiply-adds, latency, throughput and peak memory of models.

One :class:`BenchRecord` per (model, mode, batch, size); ``dfsfuse bench`` and
``benchmarks/speed.py`` are thin front ends over :func:`run_benchmark`::

    from dfsfuse.bench import BenchConfig, run_benchmark, save_chart
    result = run_benchmark(BenchConfig(models=("teacher", "student:width=8"), modes=("eager", "onnxruntime")))
    result.save_json("speed.json"); save_chart(result, "speed.png")

How each number is taken:

- ``params`` / ``macs``: :func:`dfsfuse.models.profile` on the meta device (convolutions and
  matrix products); ``macs`` is for the whole batch.
- Latency: ``warmup`` untimed forwards (the first, which includes compilation or lazy set-up,
  is reported as ``first_run_ms``; later warm-ups stop once they pass ``max_seconds / 2``),
  then up to ``runs`` timed forwards, stopping once they add up to ``max_seconds`` (at least
  one; ``runs`` in the record is the count used). CPU: ``time.perf_counter`` around each
  forward. CUDA: events around each forward, then synchronisation. ``throughput_img_s`` is
  images / total timed seconds.
- ``peak_mem_mb``: the working memory of one forward (weights and inputs excluded), taken
  on the first forward, or for ``compile`` (whose first call compiles) on one extra forward
  after the timed ones. CUDA: ``max_memory_allocated()`` during it minus ``memory_allocated()``
  before. CPU (Linux): freed memory is handed back to the OS (``gc.collect`` +
  ``malloc_trim``), the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), and the
  record is ``VmHWM`` after the forward minus ``VmRSS`` before it. ONNX Runtime on CUDA
  allocates outside torch: not measured there.
- Isolation (default): each measurement runs in a fresh Python process under a hard time
  limit, so compile caches and allocator state never leak between measurements and a crash
  or a hang becomes a record (``status="error"`` / ``"timeout"``) instead of ending the run.

A mode a model cannot run in still gets a record: ``status`` is ``"unsupported"`` (known
before trying, e.g. fp16 on CPU), ``"error"`` (it was tried and raised) or ``"timeout"``,
and ``reason`` says why.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path, write_bytes_atomic
from .options import BENCH_DEFAULT_MODELS as DEFAULT_MODELS
from .options import BENCH_MODES as MODES
OK, UNSUPPORTED, ERROR, TIMEOUT = "ok", "unsupported", "error", "timeout"
MIB = 1024 * 1024

Size = Tuple[int, int]


def default_modes(device: str) -> Tuple[str, ...]:
    """Modes measured when none are asked for: no low precision on CPU, where bf16 is emulated
    (and very slow) unless the CPU has ``avx512_bf16``/``amx_bf16`` — ask for it with ``modes``."""
    if torch.device(device).type == "cuda":
        return MODES
    return ("eager", "channels_last", "compile", "onnxruntime")


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
            from . import from_pretrained

            return from_pretrained(self.path, device=device)
        from .models import create_model

        return create_model(self.name, **self.kwargs).to(device).eval()

    def build_meta(self) -> nn.Module:
        """The architecture on the meta device (no memory, no weights): for counting."""
        from .models import create_model

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
    from .export import ModelLoadError, read_model_config
    from .models import list_models

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
    model whose architecture is ``teacher``."""

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

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot be measured."""
        unknown = [m for m in self.modes or () if m not in MODES]
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
        return _finite({
            "settings": asdict(self.settings),
            "records": [asdict(r) for r in self.records],
            "speedups": [asdict(s) for s in self.speedups],
        })

    def save_json(self, path: os.PathLike) -> Path:
        """Write :meth:`to_dict` as indented JSON, atomically."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        return write_bytes_atomic(Path(path), text.encode())


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------------------------
# Modes


def unsupported_reason(mode: str, device: str) -> Optional[str]:
    """Why ``mode`` cannot run on ``device`` at all (checked before building anything), else ``None``."""
    dev = torch.device(device)
    if mode == "fp16" and dev.type != "cuda":
        return "fp16 autocast is measured on CUDA only: CPUs here have no fast fp16 kernels (see bf16 for CPU)"
    if mode == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(dev)} has no bf16 support"
    if mode == "compile":
        try:
            from torch._dynamo import is_dynamo_supported
        except ImportError:
            return f"torch {torch.__version__} has no torch.compile"
        if not is_dynamo_supported():
            return f"torch.compile does not support Python {platform.python_version()} in torch {torch.__version__}"
    if mode == "onnxruntime":
        missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
        if missing:
            return f"{' and '.join(missing)} not installed (pip install 'dfsfuse[onnx]')"
        if dev.type == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return "this onnxruntime build has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    return None


@dataclass
class Prepared:
    """A ready-to-run forward for one mode; ``torch_memory`` says whether torch allocates its memory."""

    forward: Callable[[], Any]
    torch_memory: bool = True


def _prepare(model: nn.Module, mode: str, inputs: List[torch.Tensor], threads: int, workdir: Path) -> Prepared:
    """Turn an eval-mode model and its inputs into a no-argument forward for ``mode``."""
    device = inputs[0].device
    if mode == "onnxruntime":
        return _prepare_onnxruntime(model, inputs, threads, workdir)
    if mode == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    if mode == "compile":
        model = torch.compile(model)
    if mode in ("bf16", "fp16"):
        dtype = torch.bfloat16 if mode == "bf16" else torch.float16
        context: Callable[[], Any] = lambda: torch.autocast(device.type, dtype=dtype)  # noqa: E731
    else:
        context = contextlib.nullcontext

    def forward() -> Any:
        with torch.no_grad(), context():
            return model(*inputs)

    return Prepared(forward)


def _prepare_onnxruntime(model: nn.Module, inputs: List[torch.Tensor], threads: int, workdir: Path) -> Prepared:
    """Export to ONNX at the input size (dynamic batch/height/width) and run it with ONNX Runtime."""
    import onnxruntime as ort

    from .onnx import export_onnx, signature_of

    path = export_onnx(model, workdir / "model.onnx", size=tuple(inputs[0].shape[-2:]))
    cuda = inputs[0].device.type == "cuda"
    feed = {name: x.detach().cpu().numpy() for name, x in zip(signature_of(model).inputs, inputs)}

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    return Prepared(lambda: session.run(None, feed), torch_memory=False)


# --------------------------------------------------------------------------------------------
# Timing and memory


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PeakMemory:
    """Context manager: ``mb`` is the working memory of what runs inside (see the module docstring),
    ``None`` when it cannot be measured here."""

    def __init__(self, device: torch.device, wanted: bool = True) -> None:
        self.device = device
        self.enabled = wanted and (device.type == "cuda" or cpu_memory_method() is not None)
        self.mb: Optional[float] = None

    def __enter__(self) -> "_PeakMemory":
        if not self.enabled:
            return self
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_memory()
            _CLEAR_REFS.write_text("5")
            self.base = _proc_status_kb("VmRSS")
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled or exc[0] is not None:
            return
        if self.device.type == "cuda":
            _sync(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / MIB
        else:
            self.mb = max(0, _proc_status_kb("VmHWM") - self.base) / 1024


def _time_runs(prepared: Prepared, job: Job, device: torch.device, note: Callable[[str], None]) -> Measurement:
    """First forward (memory measured unless compiling), warm-up, then timed forwards (module docstring)."""
    cuda = device.type == "cuda"
    events = cuda and prepared.torch_memory
    with _PeakMemory(device, job.mode != "compile" and (prepared.torch_memory or not cuda)) as memory:
        start = time.perf_counter()
        prepared.forward()
        _sync(device)
        first_ms = (time.perf_counter() - start) * 1000
    note(f"first forward took {first_ms / 1000:.1f} s, warming up")
    warmup, warm_start = 1, time.perf_counter()
    while warmup < job.warmup and time.perf_counter() - warm_start < job.max_seconds / 2:
        prepared.forward()
        _sync(device)
        warmup += 1
    times: List[float] = []
    while len(times) < job.runs and sum(times) < job.max_seconds * 1000:
        if events:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            prepared.forward()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            prepared.forward()
            _sync(device)
            times.append((time.perf_counter() - t0) * 1000)
        note(f"first forward {first_ms / 1000:.1f} s, {warmup} warm-up, {len(times)} timed "
             f"(last {times[-1] / 1000:.1f} s)")
    peak = memory.mb
    if job.mode == "compile":
        with _PeakMemory(device) as memory:
            prepared.forward()
        peak = memory.mb
    p50, p95 = np.percentile(times, [50, 95])
    return Measurement(
        latency_ms_p50=float(p50), latency_ms_p95=float(p95), latency_ms_mean=float(np.mean(times)),
        latency_ms_min=float(np.min(times)), throughput_img_s=job.batch * len(times) * 1000 / sum(times),
        peak_mem_mb=peak, runs=len(times), warmup=warmup, first_run_ms=first_ms,
    )


_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def cpu_memory_method() -> Optional[str]:
    """How CPU peak memory is measured here, or ``None`` when this OS offers no way to reset peak RSS."""
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")
        _proc_status_kb("VmHWM")
    except (OSError, KeyError):
        return None
    return ("VmHWM after one forward minus VmRSS before it (peak RSS reset via /proc/self/clear_refs; "
            "gc + malloc_trim first); first forward, or an extra one after timing for compile")


def _release_free_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(job: Job, note: Callable[[str], None] = lambda _: None) -> Measurement:
    """Run one measurement in this process; model or mode failures become ``status="error"``."""
    device = torch.device(job.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="dfsfuse-bench-") as workdir:
            t0 = time.perf_counter()
            try:
                torch.manual_seed(0)
                model = job.model.build(job.device)
                inputs = [torch.rand(job.batch, 1, job.height, job.width, device=device)
                          for _ in range(2 if job.kind == "fusion" else 1)]
                prepared = _prepare(model, job.mode, inputs, job.threads, Path(workdir))
            except Exception as exc:  # a model that cannot be built or exported in this mode
                return Measurement(status=ERROR, reason=f"preparing: {_reason(exc)}")
            prepare_s = time.perf_counter() - t0
            note(f"prepared in {prepare_s:.1f} s, first forward still running")
            try:
                result = _time_runs(prepared, job, device, note)
            except Exception as exc:  # e.g. torch.compile failing on its first call
                return Measurement(status=ERROR, reason=f"running: {_reason(exc)}", prepare_s=prepare_s)
            result.prepare_s = prepare_s
            return result
    finally:
        torch.set_num_threads(threads)
        if job.mode == "compile":
            torch._dynamo.reset()


# --------------------------------------------------------------------------------------------
# Worker processes


def _worker_main(argv: Sequence[str]) -> int:
    """Entry point of a measurement subprocess: ``JOB.json RESULT.json`` (progress in RESULT.progress)."""
    job_path, out_path = argv
    job = Job.from_dict(json.loads(Path(job_path).read_text()))
    progress = Path(out_path).with_suffix(".progress")

    def note(text: str) -> None:
        progress.write_text(text)

    result = measure(job, note)
    Path(out_path).write_text(json.dumps(asdict(result)))
    return 0


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def measure_isolated(job: Job, timeout_s: float) -> Measurement:
    """Run :func:`measure` in a fresh Python process, killed (with its children) after ``timeout_s``."""
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS=str(job.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    code = "import sys; from dfsfuse.bench import _worker_main; sys.exit(_worker_main(sys.argv[1:]))"
    with tempfile.TemporaryDirectory(prefix="dfsfuse-bench-job-") as tmp:
        job_path, out_path, err_path = Path(tmp, "job.json"), Path(tmp, "result.json"), Path(tmp, "stderr.txt")
        job_path.write_text(json.dumps(job.to_dict()))
        with open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", code, str(job_path), str(out_path)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                progress = out_path.with_suffix(".progress")
                last = progress.read_text() if progress.exists() else "nothing finished"
                return Measurement(status=TIMEOUT, reason=f"stopped after {timeout_s:g} s ({last})")
            except BaseException:
                _kill_group(proc)
                raise
        if out_path.exists():
            return Measurement(**json.loads(out_path.read_text()))
        lines = [ln for ln in err_path.read_text(errors="replace").splitlines() if ln.strip()]
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        last = lines[-1].strip() if lines else "no output"
        return Measurement(status=ERROR, reason=f"worker died ({how}): {last}"[:300])


# --------------------------------------------------------------------------------------------
# A whole run


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_features() -> List[str]:
    """The SIMD features of /proc/cpuinfo that decide fp32/bf16/fp16 speed (empty where unknown).

    A CPU with ``avx512_bf16`` or ``amx_bf16`` runs bf16 natively; without them bf16 is emulated
    and far slower than fp32.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in CPU_FEATURES if f in flags]
    return []


def _settings(config: BenchConfig, modes: Sequence[str], threads: int, reference: Optional[str],
              load_start: Optional[List[float]], started: str) -> BenchSettings:
    device = torch.device(config.device)
    cuda = device.type == "cuda"
    ort_version = None
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        ort_version = onnxruntime.__version__
    memory = ("torch.cuda.max_memory_allocated() during one forward minus memory_allocated() before it"
              if cuda else cpu_memory_method() or "not measured (needs Linux /proc/self/clear_refs)")
    timing = ("CUDA events around each forward, synchronised" if cuda else "time.perf_counter around each forward")
    return BenchSettings(
        device=str(device), device_name=torch.cuda.get_device_name(device) if cuda else cpu_model(),
        cpu_model=cpu_model(), cpu_features=cpu_features(), cpu_count=os.cpu_count() or 0, threads=threads,
        torch_version=torch.__version__,
        onnxruntime_version=ort_version, python_version=platform.python_version(), platform=platform.platform(),
        warmup=config.warmup, runs=config.runs, max_seconds=config.max_seconds, timeout_s=config.timeout_s,
        isolate=config.isolate, models=list(config.models), modes=list(modes),
        sizes=[list(s) for s in config.sizes], batches=list(config.batches), reference=reference,
        timing_method=timing, memory_method=memory,
        macs_method="dfsfuse.models.profile on the meta device (FlopCounterMode; conv + matmul; MACs = FLOPs / 2)",
        created=started, load_avg_start=load_start,
        load_avg_end=_load_average(), note=config.note,
    )


def _counts(model: BenchModel, size: Size, batch: int) -> Tuple[Optional[int], Optional[int], str]:
    """(params, macs, problem) of ``model`` at ``batch``×``size``, counted on the meta device."""
    from .models import count_parameters, profile

    meta = model.build_meta()
    try:
        prof = profile(meta, size=size, batch=batch)
    except Exception as exc:  # an op without a meta kernel: params still count
        return count_parameters(meta), None, f"MACs not counted ({_reason(exc)})"
    return prof.params, prof.macs, ""


def _reference_label(models: Sequence[BenchModel], wanted: Optional[str]) -> Optional[str]:
    labels = [m.label for m in models]
    if wanted is not None:
        if wanted not in labels:
            raise ValueError(f"reference {wanted!r} is not among the benchmarked models ({', '.join(labels)})")
        return wanted
    return next((m.label for m in models if m.name == "teacher"), None)


def run_benchmark(config: BenchConfig, on_record: Optional[Callable[[BenchRecord], None]] = None) -> BenchResult:
    """Measure every (size, batch, model, mode) of ``config``; ``on_record`` sees each record as it is done."""
    from .models import model_kind

    config.validate()
    modes = list(config.modes or default_modes(config.device))
    threads = config.threads or torch.get_num_threads()
    models = list({m.label: m for m in map(parse_model_spec, config.models)}.values())
    for model in models:  # fail fast on bad kwargs, before any timing
        try:
            model.build_meta()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model {model.label!r}: {exc}") from None
    reference = _reference_label(models, config.reference)
    load_start = _load_average()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records: List[BenchRecord] = []
    for size in config.sizes:
        for batch in config.batches:
            for model in models:
                kind = model_kind(model.name)
                params, macs, count_problem = _counts(model, size, batch)
                for mode in modes:
                    job = Job(model, kind, mode, batch, size[0], size[1], config.device, threads,
                              config.warmup, config.runs, config.max_seconds)
                    load = _load_average()
                    why = unsupported_reason(mode, config.device)
                    if why is not None:
                        result = Measurement(status=UNSUPPORTED, reason=why)
                    elif config.isolate:
                        result = measure_isolated(job, config.timeout_s)
                    else:
                        result = measure(job)
                    if count_problem and result.status == OK:
                        result.reason = count_problem
                    record = _record(job, params, macs, result, load[0] if load else None)
                    records.append(record)
                    if on_record is not None:
                        on_record(record)
    settings = _settings(config, modes, threads, reference, load_start, started)
    return BenchResult(settings, records, compute_speedups(records, reference, models) if reference else [])


def _record(job: Job, params: Optional[int], macs: Optional[int], m: Measurement, load: Optional[float]) -> BenchRecord:
    values = {f.name: getattr(m, f.name) for f in fields(Measurement)}
    for key, value in values.items():
        if isinstance(value, float):
            values[key] = round(value, 3)
    return BenchRecord(model=job.model.label, arch=job.model.name, kind=job.kind, mode=job.mode, batch=job.batch,
                       height=job.height, width=job.width, params=params, macs=macs, load_avg_1m=load, **values)


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
