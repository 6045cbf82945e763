"""A whole benchmark run: jobs in isolated worker processes, run settings, CPU facts, speed-ups."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .measure import cpu_memory_method, make_record, measure, unsupported_reason
from .records import (
    ERROR,
    OK,
    TIMEOUT,
    UNSUPPORTED,
    BenchConfig,
    BenchModel,
    BenchRecord,
    BenchResult,
    BenchSettings,
    Job,
    Measurement,
    Size,
    _load_average,
    _reason,
    compute_speedups,
    default_modes,
    parse_model_spec,
)

__all__ = ["measure_isolated", "cpu_model", "cpu_features", "native_bf16", "quick_modes", "run_benchmark"]


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
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, OMP_NUM_THREADS=str(job.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    code = "import sys; from dfsfuse.bench.runner import _worker_main; sys.exit(_worker_main(sys.argv[1:]))"
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


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16``); without, bf16 autocast
    is emulated and much slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def quick_modes(device: str) -> Tuple[str, ...]:
    """The student's candidate fast modes measured by the quick preset: eager fp32 and ONNX Runtime,
    plus bf16 autocast where it is native (CUDA with bf16, or a CPU with ``avx512_bf16``/``amx_bf16``)."""
    if torch.device(device).type == "cuda":
        return ("eager", "fp16", "bf16")
    return ("eager", "onnxruntime", "bf16") if native_bf16() else ("eager", "onnxruntime")


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
        reference_modes=list(config.reference_modes) if config.reference_modes else None,
    )


def _counts(model: BenchModel, size: Size, batch: int) -> Tuple[Optional[int], Optional[int], str]:
    """(params, macs, problem) of ``model`` at ``batch``×``size``, counted on the meta device."""
    from ..models import count_parameters, profile

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
    from ..models import model_kind

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
                for mode in (config.reference_modes or modes) if model.label == reference else modes:
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
                    record = make_record(job, params, macs, result, load[0] if load else None)
                    records.append(record)
                    if on_record is not None:
                        on_record(record)
    settings = _settings(config, modes, threads, reference, load_start, started)
    return BenchResult(settings, records, compute_speedups(records, reference, models) if reference else [])
