"""benchmarks/gpu_check.py as far as a machine without CUDA can test it: SKIP path, FAIL path, metric comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the script would run the real checks")
def test_without_cuda_every_step_skips_and_exit_code_is_zero(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.split(" ", 1)[0] in ("PASS", "FAIL", "SKIP")]
    assert len(lines) == len(gpu_check.STEPS) and all(ln.startswith("SKIP") for ln in lines)
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["ok"] and doc["cuda_devices"] == 0
    assert [r["step"] for r in doc["results"]] == list(gpu_check.STEPS)


def test_a_failing_step_is_fail_with_its_reason_and_exit_code_one(tmp_path, monkeypatch, capsys):
    # Pretend there is one GPU and that `accelerate launch` is a program that fails.
    monkeypatch.setattr(gpu_check, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(gpu_check, "accelerate_launch",
                        lambda: [sys.executable, "-c", "import sys; print('launcher broke'); sys.exit(3)"])
    code = gpu_check.main(["--out", str(tmp_path), "--steps", "distill", "distill_2gpu"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  distillation, 1 GPU, bf16" in out and "exit 3: launcher broke" in out
    assert "SKIP  distillation, 2 GPUs" in out and "needs 2 GPUs, this machine has 1" in out
    log = (tmp_path / "distill.log").read_text().splitlines()
    assert log[-1] == "launcher broke"  # the command's own output, after the logged command line
    assert "--mixed_precision bf16" in log[0] and "teacher.steps=20 student.steps=20" in log[0]


def test_a_run_without_the_expected_outputs_fails(tmp_path, monkeypatch):
    # Exit code 0 is not enough: the recipe must report bf16 on CUDA and export a student.
    monkeypatch.setattr(gpu_check, "accelerate_launch", lambda: [sys.executable, "-c", "print('all good')"])
    result = gpu_check.check_distill(tmp_path, 1, timeout=60)
    assert result.status == gpu_check.FAIL
    assert "did not report 1 process(es) on cuda" in result.detail and "model.safetensors missing" in result.detail


def test_metric_comparison_code_path_on_cpu():
    worst, where, images = gpu_check.compare_metrics("cpu")
    assert images == 8  # 4 bundled test pairs × (avg, max)
    assert worst == 0.0, where


def test_speed_step_reads_the_benchmark_json(tmp_path):
    # The same command and checks as on CUDA, run on the CPU at a tiny size with few runs.
    result = gpu_check.check_speed(tmp_path, timeout=600, device="cpu", size="32x32", runs=2, isolate=False)
    assert result.status == gpu_check.PASS, result.detail
    assert "teacher eager" in result.detail and "student bf16" in result.detail


def test_segmenter_comparison_code_path_on_cpu():
    # On a CPU both ways of training repeat a seed bit for bit; on CUDA only the benchmark's way must.
    result = gpu_check.compare_segmenter_runs("cpu", steps=3)
    assert result == {"deterministic": 0.0, "plain": 0.0}


def test_segmenter_step_fails_when_two_runs_differ(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "run_logged",
                        lambda cmd, log, timeout: (0, '{"deterministic": 0.25, "plain": 0.5}\n'))
    result = gpu_check.check_segmenter(tmp_path, timeout=60)
    assert result.status == gpu_check.FAIL and "difference 0.25" in result.detail
    monkeypatch.setattr(gpu_check, "run_logged",
                        lambda cmd, log, timeout: (0, '{"deterministic": 0.0, "plain": 0.5}\n'))
    assert gpu_check.check_segmenter(tmp_path, timeout=60).status == gpu_check.PASS


def test_weight_comparison_of_two_runs(tmp_path):
    from safetensors.torch import save_file

    def export(run, scale):
        for model in ("teacher", "student"):
            (run / model).mkdir(parents=True)
            save_file({"w": torch.arange(6.0).reshape(2, 3) * scale, "b": torch.zeros(3)},
                      str(run / model / "model.safetensors"))

    export(tmp_path / "a", 1.0)
    export(tmp_path / "b", 1.0)
    export(tmp_path / "c", 1.5)
    assert gpu_check.largest_weight_difference(tmp_path / "a", tmp_path / "b") == 0.0
    assert gpu_check.largest_weight_difference(tmp_path / "a", tmp_path / "c") == pytest.approx(2.5)


def test_distill_repeat_fails_when_the_recipe_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "accelerate_launch",
                        lambda: [sys.executable, "-c", "import sys; print('no GPU here'); sys.exit(2)"])
    result = gpu_check.check_distill_repeat(tmp_path, timeout=60)
    assert result.status == gpu_check.FAIL and "run 1: exit 2: no GPU here" in result.detail
    log = (tmp_path / "distill_repeat_1.log").read_text().splitlines()[0]
    assert "train.deterministic=true" in log and "--mixed_precision no" in log
