"""Measuring one module in one mode: preparing the mode, timing forwards, peak memory.

:func:`measure_module` is the one in-process entry for "how fast is this module" (the recipe's
evaluation and ``dfsfuse export --latency-runs`` use it); :func:`measure` does the same for a
:class:`~dfsfuse.bench.records.Job` (a model spec that is built here), which is what a worker
process of :func:`dfsfuse.bench.run_benchmark` runs.

A model with a ``reparameterize()`` method (``student_fast``) is measured in its folded
inference form, on a copy: the module passed in is never changed.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import importlib.util
import platform
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import torch
from torch import nn

from .records import ERROR, UNSUPPORTED, BenchModel, BenchRecord, Job, Measurement, Size, _reason

MIB = 1024 * 1024

__all__ = ["unsupported_reason", "measure", "measure_module", "cpu_memory_method", "inference_copy"]


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


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model``, re-parameterised (branches folded) when it can be."""
    model = copy.deepcopy(model).eval()
    if callable(getattr(model, "reparameterize", None)):
        model.reparameterize()
    return model


def _prepare(model: nn.Module, mode: str, inputs: List[torch.Tensor], threads: int, workdir: Path) -> Prepared:
    """Turn an eval-mode model (changed in place: use :func:`inference_copy`) and its inputs into a
    no-argument forward for ``mode``."""
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

    from ..onnx import export_onnx, signature_of

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


def _measure_built(model: nn.Module, job: Job, note: Callable[[str], None]) -> Measurement:
    """Time ``model`` (already built, not yet prepared) as ``job`` says, with ``job.threads`` threads."""
    device = torch.device(job.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="dfsfuse-bench-") as workdir:
            t0 = time.perf_counter()
            try:
                model = inference_copy(model).to(device)
                gen = torch.Generator(device=device).manual_seed(0)
                inputs = [torch.rand(job.batch, 1, job.height, job.width, device=device, generator=gen)
                          for _ in range(2 if job.kind == "fusion" else 1)]
                prepared = _prepare(model, job.mode, inputs, job.threads, Path(workdir))
            except Exception as exc:  # a model that cannot be copied or exported in this mode
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


def measure(job: Job, note: Callable[[str], None] = lambda _: None) -> Measurement:
    """Build ``job.model`` and measure it in this process; model or mode failures become ``status="error"``."""
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        model = job.model.build(job.device)
    except Exception as exc:  # a model that cannot be built
        return Measurement(status=ERROR, reason=f"preparing: {_reason(exc)}")
    build_s = time.perf_counter() - t0
    result = _measure_built(model, job, note)
    if result.prepare_s is not None:  # preparing includes building the model
        result.prepare_s += build_s
    return result


def measure_module(model: nn.Module, size: Size = (480, 640), mode: str = "eager", runs: int = 30,
                   threads: Optional[int] = None, *, batch: int = 1, warmup: int = 3, max_seconds: float = 20.0,
                   device: Optional[torch.device | str] = None, count: bool = True) -> BenchRecord:
    """Measure one in-memory fusion or segmentation ``model`` in this process: the one timer of dfsfuse.

    ``runs`` timed forwards at most (stopping once they add up to ``max_seconds``) after
    ``warmup`` untimed ones, batch ``batch`` of random inputs at ``size``, with ``threads``
    intra-op threads (default: torch's current count), on ``device`` (default: where the
    model's parameters are). ``model`` itself is not changed (a re-parameterised copy is
    timed). ``count=False`` skips the parameter/MAC count. Returns a :class:`BenchRecord`
    (``status`` says whether it ran; ``latency_ms_p50`` is the median).
    """
    from ..models import model_kind, profile

    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    label = getattr(model, "arch_name", "") or type(model).__name__
    kind = getattr(model, "kind", "") or (model_kind(label) if label else "fusion")
    threads = threads or torch.get_num_threads()
    job = Job(BenchModel(label, label), kind, mode, batch, size[0], size[1], str(device), threads,
              warmup, runs, max_seconds)
    why = unsupported_reason(mode, str(device))
    result = Measurement(status=UNSUPPORTED, reason=why) if why else _measure_built(model, job, lambda _: None)
    params = macs = None
    if count:
        try:
            prof = profile(model, size=size, batch=batch)
            params, macs = prof.params, prof.macs
        except Exception as exc:  # an op without a meta kernel: the timing still stands
            result.reason = result.reason or f"MACs not counted ({_reason(exc)})"
    return make_record(job, params, macs, result, None)


def make_record(job: Job, params: Optional[int], macs: Optional[int], m: Measurement,
                load: Optional[float]) -> BenchRecord:
    """The :class:`BenchRecord` of ``job`` measured as ``m`` (floats rounded to 3 decimals)."""
    values = {f.name: getattr(m, f.name) for f in fields(Measurement)}
    for key, value in values.items():
        if isinstance(value, float):
            values[key] = round(value, 3)
    return BenchRecord(model=job.model.label, arch=job.model.name, kind=job.kind, mode=job.mode, batch=job.batch,
                       height=job.height, width=job.width, params=params, macs=macs, load_avg_1m=load, **values)
