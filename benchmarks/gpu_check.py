"""GPU readiness in one command: the checks that need CUDA, each ending PASS, FAIL or SKIP.

    python benchmarks/gpu_check.py                       # every step, outputs in a temporary folder
    python benchmarks/gpu_check.py --out /tmp/gpu_check  # keep logs, runs and JSON there
    python benchmarks/gpu_check.py --steps metrics speed # a subset

Steps (each in its own process, log in ``OUT/<step>.log``):

1. ``distill``: ``accelerate launch --num_processes 1 --mixed_precision bf16 recipes/distill.py``
   with ``teacher.steps=20 student.steps=20`` (and one evaluation image per set) → a student
   exported and the recipe reporting bf16 on CUDA.
2. ``distill_2gpu``: the same with ``--multi_gpu --num_processes 2`` where at least 2 GPUs
   exist (SKIP otherwise).
3. ``metrics``: every fusion metric of avg and max fusions of the bundled MSRS test pairs on
   CUDA against the same computation on CPU (relative difference ≤ 1e-4, NaN where NaN).
4. ``speed``: ``benchmarks/speed.py --device cuda`` (latency from CUDA events) for the
   teacher and the student in eager fp32 and bf16; every record must be ``ok``.
5. ``distill_repeat``: the recipe of step 1 in fp32 with ``train.deterministic=true``, twice: the
   exported teacher and student must be bit-identical (the Standards' "same seed, same run" on CUDA).
6. ``segmenter``: the semantic benchmark's segmenter trained twice with one seed on CUDA (60 steps
   on synthetic 96×128 scenes) must end with bit-identical weights; the same two runs without
   :func:`dfsfuse.determinism.deterministic_kernels` are reported beside it (they differed on an H200).

Exit code 1 when any step FAILs, else 0. Without CUDA every step is SKIP and the exit code 0.
Writes ``OUT/gpu_check.json`` with each step's status, detail and seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
STEPS = ("distill", "distill_2gpu", "metrics", "speed", "distill_repeat", "segmenter")
TITLES = {
    "distill": "distillation, 1 GPU, bf16",
    "distill_2gpu": "distillation, 2 GPUs (DDP), bf16",
    "metrics": "fusion metrics on CUDA vs CPU",
    "speed": "speed benchmark on CUDA (CUDA events)",
    "distill_repeat": "distillation repeats a seed (deterministic)",
    "segmenter": "segmenter training repeats a seed on CUDA",
}
RECIPE_OVERRIDES = ("teacher.steps=20", "student.steps=20", "eval.max_images=1", "eval.latency_runs=1")
METRIC_RTOL = 1e-4


@dataclass
class StepResult:
    """What one step found: ``status`` PASS/FAIL/SKIP and a one-line ``detail``."""

    step: str
    status: str
    detail: str
    seconds: float = 0.0


def cuda_device_count() -> int:
    """Number of CUDA devices torch can use (0 when torch has no CUDA or no device is visible)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def accelerate_launch() -> List[str]:
    """The ``accelerate launch`` command (console script, else the module)."""
    script = shutil.which("accelerate")
    return [script, "launch"] if script else [sys.executable, "-m", "accelerate.commands.launch"]


def run_logged(cmd: Sequence[str], log: Path, timeout: float, env: Optional[Dict[str, str]] = None) -> tuple[int, str]:
    """Run ``cmd`` in the repository with stdout+stderr to ``log``; (exit code, output). 124 on timeout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(map(str, cmd)) + "\n")
        fh.flush()
        try:
            code = subprocess.run(list(map(str, cmd)), cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})}, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\n[gpu_check] killed after {timeout:.0f} s\n")
            code = 124
    return code, log.read_text(encoding="utf-8", errors="replace")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(no output)"


def check_distill(out: Path, processes: int, timeout: float) -> StepResult:
    """A short bf16 distillation under ``accelerate launch`` on ``processes`` GPUs."""
    step = "distill" if processes == 1 else "distill_2gpu"
    run_dir = out / f"run_{processes}gpu"
    layout = ["--multi_gpu"] if processes > 1 else []
    cmd = [*accelerate_launch(), *layout, "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "bf16", "--dynamo_backend", "no",
           "recipes/distill.py", *RECIPE_OVERRIDES, "--output", str(run_dir), "--overwrite"]
    code, text = run_logged(cmd, out / f"{step}.log", timeout)
    if code != 0:
        return StepResult(step, FAIL, f"exit {code}: {_last_line(text)} (log {out / f'{step}.log'})")
    problems = []
    if f"{processes} process(es) on cuda" not in text:
        problems.append(f"the recipe did not report {processes} process(es) on cuda")
    if "mixed precision bf16" not in text:
        problems.append("the recipe did not report mixed precision bf16")
    for needed in ("student/model.safetensors", "metrics.json"):
        if not (run_dir / needed).is_file():
            problems.append(f"{run_dir / needed} missing")
    if not problems:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        values = [v for sets in metrics.get("student", {}).values() for v in sets.values()]
        if not values or not all(isinstance(v, (int, float)) for v in values):
            problems.append("metrics.json has no student metrics")
        elif not any(math.isfinite(v) for v in values):
            problems.append("student metrics are not finite")
    if problems:
        return StepResult(step, FAIL, "; ".join(problems))
    return StepResult(step, PASS, f"student exported to {run_dir / 'student'} (bf16, {processes} process(es) on cuda)")


def largest_difference(a: Mapping[str, "torch.Tensor"], b: Mapping[str, "torch.Tensor"]) -> float:
    """Largest absolute difference between the same-named tensors of two state dicts; infinite when the
    names or shapes differ."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return math.inf
    return max((float((a[k].double().cpu() - b[k].double().cpu()).abs().max()) for k in a if a[k].numel()),
               default=0.0)


def largest_weight_difference(run_a: Path, run_b: Path, models: Sequence[str] = ("teacher", "student")) -> float:
    """:func:`largest_difference` over two runs' exported ``models`` (each ``RUN/<model>/model.safetensors``)."""
    from safetensors.torch import load_file

    return max(largest_difference(*(load_file(str(run / model / "model.safetensors")) for run in (run_a, run_b)))
               for model in models)


def check_distill_repeat(out: Path, timeout: float) -> StepResult:
    """Step 1's recipe in fp32 with ``train.deterministic=true``, twice; the exports must be equal."""
    runs = []
    for i in (1, 2):
        run_dir = out / f"run_repeat_{i}"
        cmd = [*accelerate_launch(), "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "recipes/distill.py", *RECIPE_OVERRIDES, "train.deterministic=true",
               "--output", str(run_dir), "--overwrite"]
        log = out / f"distill_repeat_{i}.log"
        code, text = run_logged(cmd, log, timeout)
        if code != 0:
            return StepResult("distill_repeat", FAIL, f"run {i}: exit {code}: {_last_line(text)} (log {log})")
        missing = [m for m in ("teacher", "student") if not (run_dir / m / "model.safetensors").is_file()]
        if missing:
            return StepResult("distill_repeat", FAIL, f"run {i} exported no {', '.join(missing)}")
        runs.append(run_dir)
    diff = largest_weight_difference(*runs)
    detail = f"two runs, one seed: largest weight difference {diff:.3g} (teacher and student)"
    return StepResult("distill_repeat", PASS if diff == 0 else FAIL, detail)


def compare_metrics(device: str = "cuda", rtol: float = METRIC_RTOL) -> tuple[float, str, int]:
    """Largest relative difference between the metrics on ``device`` and on CPU: (diff, metric, images).

    Avg and max fusions of the bundled MSRS test pairs, scored with the same code on both
    devices. NaN on both sides counts as equal; NaN on one side only is an infinite difference.
    """
    import numpy as np

    from dfsfuse.baselines import baseline_fusion
    from dfsfuse.data.bundled import bundled_msrs_root
    from dfsfuse.data.io import read_gray
    from dfsfuse.data.pairs import match_pairs
    from dfsfuse.metrics import fusion_metrics_batch

    root = bundled_msrs_root() / "test"
    worst, worst_name, count = 0.0, "", 0
    for pair in match_pairs(root / "ir", root / "vi"):
        a, b = read_gray(pair.ir), read_gray(pair.vis)
        for method in ("avg", "max"):
            f = baseline_fusion(a, b, method).astype(np.float32)
            stack = tuple(x[None, None] for x in (f, a, b))
            cpu = fusion_metrics_batch(*stack, device="cpu")
            other = fusion_metrics_batch(*stack, device=device)
            count += 1
            for name, ref in cpu.items():
                r, g = float(ref[0]), float(other[name][0])
                if math.isnan(r) and math.isnan(g):
                    continue
                diff = math.inf if math.isnan(r) != math.isnan(g) else abs(g - r) / max(abs(r), 1e-12)
                if diff > worst:
                    worst, worst_name = diff, f"{name} ({pair.name} {method}: cpu {r:.6g}, {device} {g:.6g})"
    return worst, worst_name, count


def check_metrics(out: Path, timeout: float) -> StepResult:
    """Metrics on CUDA vs CPU, in a child process (a CUDA crash cannot take the script down)."""
    code, text = run_logged([sys.executable, __file__, "--metrics-worker"], out / "metrics.log", timeout)
    if code != 0:
        return StepResult("metrics", FAIL, f"exit {code}: {_last_line(text)}")
    result = json.loads(text.strip().splitlines()[-1])
    detail = f"max relative difference {result['max_rel_diff']:.1e} over {result['images']} images"
    if result["max_rel_diff"] > METRIC_RTOL:
        return StepResult("metrics", FAIL, f"{detail} > {METRIC_RTOL:g}: {result['where']}")
    return StepResult("metrics", PASS, f"{detail} (tolerance {METRIC_RTOL:g})")


def check_speed(out: Path, timeout: float, device: str = "cuda", size: str = "480x640", runs: int = 20,
                isolate: bool = True) -> StepResult:
    """``benchmarks/speed.py --device cuda``: teacher and student, eager fp32 and bf16, batch 1
    (``device``, ``size``, ``runs``, ``isolate`` let the tests run the same step on a CPU)."""
    json_path = out / f"speed_{device}.json"
    cmd = [sys.executable, "benchmarks/speed.py", "--device", device, "--models", "teacher", "student",
           "--modes", "eager", "bf16", "--batches", "1", "--sizes", size, "--runs", str(runs),
           "--max-seconds", "5", "--json", str(json_path), "--png", str(out / f"speed_{device}.png"),
           *([] if isolate else ["--no-isolate"])]
    code, text = run_logged(cmd, out / "speed.log", timeout)
    if code != 0:
        return StepResult("speed", FAIL, f"exit {code}: {_last_line(text)}")
    if not json_path.is_file():
        return StepResult("speed", FAIL, f"{json_path} was not written")
    records = json.loads(json_path.read_text())["records"]
    bad = [f"{r['model']}/{r['mode']}: {r['status']} {r.get('reason', '')}".strip()
           for r in records if r["status"] != "ok"]
    if bad or not records:
        return StepResult("speed", FAIL, "; ".join(bad) or "no records")
    p50 = ", ".join(f"{r['model']} {r['mode']} {r['latency_ms_p50']:.1f} ms" for r in records)
    return StepResult("speed", PASS, f"p50 at {size}, batch 1: {p50}")


def compare_segmenter_runs(device: str = "cuda", steps: int = 60) -> Dict[str, float]:
    """Largest weight difference between two segbench segmenters trained with one seed on ``device``:
    ``deterministic`` as the benchmark trains them, ``plain`` without its CUDA determinism (0 on a CPU)."""
    import torch

    from dfsfuse.semantic_bench import fast_settings, train_segmenter

    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (1, 96, 128), generator=g, dtype=torch.uint8) for _ in range(12)]
    labels = [torch.randint(0, 9, (96, 128), generator=g) for _ in range(12)]
    settings = fast_settings(device=device, steps=steps, batch_size=4, crop=(64, 96), warmup_steps=5)

    return {name: largest_difference(*(train_segmenter(images, labels, settings, seed=0,
                                                       cuda_deterministic=flag).state_dict() for _ in range(2)))
            for name, flag in (("deterministic", True), ("plain", False))}


def check_segmenter(out: Path, timeout: float) -> StepResult:
    """:func:`compare_segmenter_runs` on CUDA in a child process."""
    code, text = run_logged([sys.executable, __file__, "--segmenter-worker"], out / "segmenter.log", timeout)
    if code != 0:
        return StepResult("segmenter", FAIL, f"exit {code}: {_last_line(text)}")
    result = json.loads(text.strip().splitlines()[-1])
    detail = (f"same seed twice: largest weight difference {result['deterministic']:.3g} "
              f"({result['plain']:.3g} without the benchmark's CUDA determinism)")
    return StepResult("segmenter", PASS if result["deterministic"] == 0 else FAIL, detail)


def run_steps(steps: Sequence[str], out: Path, gpus: int, timeout: float,
              report: Callable[[StepResult], None] = lambda r: None) -> List[StepResult]:
    """Run the chosen steps with ``gpus`` CUDA devices visible; every step gives one result."""
    results = []
    for step in steps:
        start = time.perf_counter()
        if gpus == 0:
            result = StepResult(step, SKIP, "no CUDA device (torch.cuda.is_available() is False)")
        elif step == "distill_2gpu" and gpus < 2:
            result = StepResult(step, SKIP, f"needs 2 GPUs, this machine has {gpus}")
        else:
            try:
                if step == "distill":
                    result = check_distill(out, 1, timeout)
                elif step == "distill_2gpu":
                    result = check_distill(out, 2, timeout)
                elif step == "metrics":
                    result = check_metrics(out, timeout)
                elif step == "segmenter":
                    result = check_segmenter(out, timeout)
                elif step == "distill_repeat":
                    result = check_distill_repeat(out, timeout)
                else:
                    result = check_speed(out, timeout)
            except Exception as exc:  # a broken check is a FAIL with its reason, never a traceback
                result = StepResult(step, FAIL, f"{type(exc).__name__}: {exc}")
        result.seconds = round(time.perf_counter() - start, 1)
        report(result)
        results.append(result)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the checks, print one PASS/FAIL/SKIP line each, write the JSON; 1 if any FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="steps to run (default all)")
    parser.add_argument("--out", type=Path, help="folder for logs, runs and JSON (default: a new temporary folder)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per step (default 1800)")
    parser.add_argument("--metrics-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--segmenter-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.segmenter_worker:
        print(json.dumps(compare_segmenter_runs("cuda")))
        return 0

    if args.metrics_worker:
        worst, where, images = compare_metrics("cuda")
        print(json.dumps({"max_rel_diff": worst, "where": where, "images": images}))
        return 0

    out = args.out or Path(tempfile.mkdtemp(prefix="dfsfuse_gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    gpus = cuda_device_count()
    print(f"gpu_check: {gpus} CUDA device(s); logs in {out}")

    def report(r: StepResult) -> None:
        print(f"{r.status}  {TITLES[r.step]:<38} {r.detail}  [{r.seconds:.0f} s]", flush=True)

    results = run_steps(args.steps, out, gpus, args.timeout, report)
    failed = [r for r in results if r.status == FAIL]
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIP)}
    print(f"gpu_check: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped")
    doc = {"cuda_devices": gpus, "results": [asdict(r) for r in results], "ok": not failed}
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
