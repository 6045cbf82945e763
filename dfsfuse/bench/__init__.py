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

Models with a ``reparameterize()`` method are measured in that folded inference form.

Modules (one concern each): :mod:`~dfsfuse.bench.records` (specs, config, records, results;
torch-free), :mod:`~dfsfuse.bench.measure` (modes, timing, memory, :func:`measure_module`),
:mod:`~dfsfuse.bench.runner` (worker processes, settings, :func:`run_benchmark`),
:mod:`~dfsfuse.bench.report` (rich table, chart). Names are exported lazily here, so
``from dfsfuse.bench.records import MODES`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "records": ("DEFAULT_MODELS", "MODES", "OK", "UNSUPPORTED", "ERROR", "TIMEOUT", "Size", "default_modes",
                "BenchModel", "parse_model_spec", "parse_size", "BenchConfig", "Job", "Measurement", "BenchRecord",
                "BenchSettings", "Speedup", "BenchResult", "compute_speedups", "QUICK", "FULL", "BenchPreset"),
    "measure": ("unsupported_reason", "measure", "measure_module", "cpu_memory_method", "inference_copy",
                "make_record"),
    "runner": ("measure_isolated", "cpu_model", "cpu_features", "native_bf16", "run_benchmark", "quick_modes"),
    "report": ("print_report", "save_chart"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dfsfuse.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
