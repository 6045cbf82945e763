"""The speed benchmark (API, CLI, worker processes) and the quality benchmark, on tiny inputs.

Timings are never checked, only the shape of what is written: records, settings, speed-ups, chart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script

from dfsfuse.bench import (
    ERROR,
    OK,
    TIMEOUT,
    UNSUPPORTED,
    BenchConfig,
    BenchModel,
    Job,
    measure,
    measure_isolated,
    measure_module,
    parse_model_spec,
    parse_size,
    run_benchmark,
    save_chart,
)
from dfsfuse.cli import main
from dfsfuse.export import save_pretrained
from dfsfuse.metrics import METRIC_NAMES
from dfsfuse.models import create_model

REPO = Path(__file__).resolve().parents[1]
RECORD_KEYS = {"model", "mode", "batch", "height", "width", "params", "macs", "latency_ms_p50", "latency_ms_p95",
               "throughput_img_s", "peak_mem_mb", "status", "reason", "runs"}
SETTINGS_KEYS = {"device", "device_name", "cpu_model", "torch_version", "threads", "warmup", "runs", "max_seconds",
                 "memory_method", "timing_method"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--sizes", "32x48", "--runs", "2", "--warmup", "1", "--max-seconds", "0.5", "--threads", "1"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Tiny teacher and student folders written by save_pretrained."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    return {
        "teacher": save_pretrained(create_model("teacher", dim=8, bottleneck_depth=1), root / "tiny-teacher"),
        "student": save_pretrained(create_model("student", width=4), root / "tiny-student"),
    }


def _check_document(doc: dict, expected_records: int) -> None:
    assert SETTINGS_KEYS <= set(doc["settings"])
    assert doc["settings"]["cpu_model"]
    assert len(doc["records"]) == expected_records
    for r in doc["records"]:
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
        assert r["status"] in (OK, UNSUPPORTED, ERROR, TIMEOUT)
        if r["status"] == OK:
            assert r["runs"] >= 1 and 0 < r["latency_ms_p50"] <= r["latency_ms_p95"]
            assert r["throughput_img_s"] > 0
            assert r["peak_mem_mb"] is None or r["peak_mem_mb"] >= 0
        else:
            assert r["reason"] and r["latency_ms_p50"] is None and r["runs"] == 0


def test_api_records_json_speedups_and_chart(tmp_path, exported):
    config = BenchConfig(models=("teacher:dim=8,bottleneck_depth=1", str(exported["student"])),
                         modes=("eager", "channels_last", "fp16"), sizes=((32, 48),), batches=(1, 2),
                         warmup=1, runs=2, max_seconds=0.5, threads=1, isolate=False)
    seen = []
    result = run_benchmark(config, on_record=seen.append)
    assert len(seen) == len(result.records) == 2 * 3 * 2

    by = {(r.model, r.mode, r.batch): r for r in result.records}
    student = by[("tiny-student", "eager", 1)]
    assert student.arch == "student" and student.status == OK, student.reason
    assert student.params == sum(p.numel() for p in create_model("student", width=4).parameters())
    assert by[("tiny-student", "eager", 2)].macs == 2 * student.macs
    # A mode that cannot run here is a record with a reason, not a silent gap.
    fp16 = by[("teacher:dim=8,bottleneck_depth=1", "fp16", 1)]
    assert fp16.status == UNSUPPORTED and "CUDA" in fp16.reason

    assert result.settings.reference == "teacher:dim=8,bottleneck_depth=1"
    best = [s for s in result.speedups if s.best]
    assert {(s.model, s.batch) for s in best} == {("tiny-student", 1), ("tiny-student", 2)}
    assert all(s.latency_ratio > 0 and s.params_ratio > 1 for s in result.speedups)
    assert {s.mode for s in result.speedups if not s.best} == {"eager", "channels_last"}

    doc = json.loads(result.save_json(tmp_path / "speed.json").read_text())
    _check_document(doc, 12)
    assert doc["speedups"] and doc["settings"]["threads"] == 1
    png = save_chart(result, tmp_path / "speed.png")
    assert png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_cli_bench_in_worker_processes(tmp_path, capsys):
    out = tmp_path / "bench" / "speed.json"
    rc = main(["bench", "--models", "student:width=4", "--modes", "eager", "fp16", "--batches", "1", *TINY,
               "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    _check_document(doc, 2)
    assert doc["settings"]["isolate"] is True
    assert [r["status"] for r in doc["records"]] == [OK, UNSUPPORTED]
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    assert "student:width=4" in capsys.readouterr().out


def test_timeout_and_error_become_records(tmp_path):
    job = Job(BenchModel("student", "student"), "fusion", "eager", 1, 16, 16, "cpu", 1, 1, 1, 0.1)
    late = measure_isolated(job, timeout_s=0.05)  # the worker cannot even import torch this fast
    assert late.status == TIMEOUT and "0.05 s" in late.reason

    broken = save_pretrained(create_model("student", width=4), tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    failed = measure(Job(BenchModel("broken", "student", {"width": 4}, str(broken)), "fusion", "eager",
                         1, 16, 16, "cpu", 1, 1, 1, 0.1))
    assert failed.status == ERROR and "model.safetensors" in failed.reason


def test_specs_and_bad_arguments(tmp_path, exported, capsys):
    assert parse_model_spec("student:width=8,norm=true") == BenchModel("student:width=8,norm=true", "student",
                                                                       {"width": 8, "norm": True})
    folder = parse_model_spec(str(exported["teacher"]))
    assert (folder.label, folder.name, folder.kwargs["dim"]) == ("tiny-teacher", "teacher", 8)
    assert parse_size("480x640") == (480, 640)
    for bad in ("nosuchmodel", "student:width"):
        with pytest.raises(ValueError):
            parse_model_spec(bad)
    with pytest.raises(ValueError):
        parse_size("480")
    with pytest.raises(ValueError, match="unknown mode"):
        run_benchmark(BenchConfig(modes=("turbo",)))
    assert main(["bench", "--models", "student:nope=1", "--json", str(tmp_path / "x.json")]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def _quality_module():
    return load_script(REPO / "benchmarks" / "quality.py", "bench_quality")


@pytest.mark.slow
def test_quality_on_one_pair_per_dataset(tmp_path, exported, shared_data):
    out = tmp_path / "quality.json"
    rc = _quality_module().main(["--teacher", str(exported["teacher"]), "--student", str(exported["student"]),
                                 "--model", f"twin={exported['student']}",
                                 "--data", str(shared_data), "--max-images", "1", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert set(doc["metrics"]) == {"avg", "max", "teacher", "student", "twin"}
    assert doc["metrics"]["twin"] == doc["metrics"]["student"]  # the same folder scores the same
    assert set(doc["datasets"]) == {"msrs", "tno", "roadscene"}
    assert all(d["images"] == 1 for d in doc["datasets"].values())
    for per_dataset in doc["metrics"].values():
        for values in per_dataset.values():
            assert list(values) == list(METRIC_NAMES)
    assert doc["models"]["student"]["architecture"] == "student"
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("spec", ["nameonly", "=dir", "max=somewhere", "student=somewhere"])
def test_quality_model_option_rejects_bad_specs(spec, capsys):
    with pytest.raises(SystemExit) as info:  # "student" is taken only when --student is given
        _quality_module().main(["--student", "somewhere", "--model", spec, "--rules", "max"])
    assert info.value.code == 2 and "--model" in capsys.readouterr().err


def test_quality_runtime_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "q.json"
    pairs = tmp_path / "pairs"
    for cases in ((["--rules", "max"], "at least one model folder"),
                  (["--student", str(tmp_path / "nope"), "--dataset", f"x={REPO / 'dfsfuse' / 'assets' / 'msrs'}"], "nope"),
                  (["--student", str(REPO / "dfsfuse" / "assets" / "student"), "--dataset", f"x={pairs}"], "pairs")):
        extra, expected = cases
        assert _quality_module().main([*extra, "--json", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_measure_module_in_process_leaves_the_model_alone():
    """The one in-process timer: a record for an in-memory module; the module itself is not folded or moved."""
    from dfsfuse.models.student_fast import RepConv

    torch.manual_seed(0)
    model = create_model("student_fast", width=4).train()
    record = measure_module(model, (32, 48), "eager", runs=3, threads=1, warmup=1)
    assert record.ok, record.reason
    assert (record.model, record.arch, record.kind, record.mode) == ("student_fast", "student_fast", "fusion", "eager")
    assert record.runs == 3 and 0 < record.latency_ms_p50 <= record.latency_ms_p95
    assert record.params == sum(p.numel() for p in create_model("student_fast", width=4).parameters())
    assert record.macs and record.macs > 0
    assert model.training and all(not m.reparameterized for m in model.modules() if isinstance(m, RepConv))
    fp16 = measure_module(model, (32, 48), "fp16", runs=1, count=False)
    assert fp16.status == UNSUPPORTED and fp16.params is None


def test_bench_records_import_without_torch():
    """Constants, presets and records are importable in a fresh interpreter without torch."""
    import subprocess
    import sys

    code = ("import sys; from dfsfuse.bench.records import MODES, DEFAULT_MODELS, QUICK, FULL, BenchRecord; "
            "import dfsfuse.bench.report; print('torch' in sys.modules, 'student_fast' in QUICK.models)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.slow
def test_speed_script_default_is_quick_teacher_vs_students(tmp_path):
    """benchmarks/speed.py with no model/mode options: teacher eager only, students in their candidate modes, batch 1."""
    from dfsfuse.bench import quick_modes

    speed = load_script(REPO / "benchmarks" / "speed.py", "bench_speed")
    out = tmp_path / "speed.json"
    assert speed.main(["--sizes", "32x48", "--threads", "1", "--runs", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    students = ("student", "student_fast")
    modes = list(quick_modes("cpu"))
    assert "eager" in modes and "onnxruntime" in modes
    _check_document(doc, 1 + len(students) * len(modes))
    assert doc["settings"]["batches"] == [1] and doc["settings"]["reference_modes"] == ["eager"]
    assert [(r["model"], r["mode"]) for r in doc["records"]] == [("teacher", "eager")] + [
        (m, mode) for m in students for mode in modes]
    assert all(r["status"] == OK for r in doc["records"]), [r["reason"] for r in doc["records"]]
    best = {s["model"]: s for s in doc["speedups"] if s["best"]}
    assert set(best) == set(students)
    assert all(s["reference_mode"] == "eager" and s["mode"] in modes for s in best.values())
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC



def test_pictures_grid_crops_where_the_student_differs_from_max(tmp_path, exported):
    import numpy as np
    from PIL import Image

    pictures = load_script(REPO / "benchmarks" / "pictures.py", "bench_pictures")
    diff = np.zeros((20, 30))
    diff[12:16, 3:9] = 1.0
    assert pictures.crop_window(diff, 4, 6) == (12, 3)
    png = tmp_path / "pictures.png"
    assert pictures.main(["--teacher", str(exported["teacher"]), "--student", str(exported["student"]),
                          "--width", "600", "--png", str(png)]) == 0
    doc = json.loads(png.with_suffix(".json").read_text())
    assert doc["columns"] == ["ir", "vis", "max", "region-max", "teacher", "student"]
    assert [c["pair"] for c in doc["crops"]] == ["00008N", "00016N", "00081D", "00091D"]  # bundled, night and day
    for c in doc["crops"]:
        assert c["crop"]["height"] == 120 and c["crop"]["width"] == 160
        assert c["mean_abs_diff_to_max_in_crop"]["max"] == 0.0
    with Image.open(png) as img:
        assert img.size == (600, 600)  # 8 rows (4 pairs + 4 crops) of 6 panels with a 4:3 aspect
    with pytest.raises(SystemExit):
        pictures.main(["--student", str(tmp_path / "missing")])
    # An extra model column, and the crops following it: the window with the largest difference to max.
    from dfsfuse.export import SHIPPED_SEMANTIC

    assert pictures.main(["--teacher", "", "--student", str(exported["student"]), "--rules", "max",
                          "--model", f"sem={SHIPPED_SEMANTIC / 'student'}", "--focus", "sem",
                          "--width", "500", "--png", str(png)]) == 0
    doc = json.loads(png.with_suffix(".json").read_text())
    assert doc["columns"] == ["ir", "vis", "max", "student", "sem"] and doc["focus"] == "sem"
    assert doc["models"]["sem"] == str(SHIPPED_SEMANTIC / "student")
    for c in doc["crops"]:  # the semantic student brightens warm objects: its crop is where it differs most
        assert c["mean_abs_diff_to_max_in_crop"]["sem"] > c["mean_abs_diff_to_max_in_crop"]["student"]
    for bad in (["--focus", "teacher", "--teacher", ""], ["--model", "max=" + str(exported["student"])],
                ["--model", "nameonly"]):
        with pytest.raises(SystemExit):
            pictures.main(["--student", str(exported["student"]), *bad, "--png", str(tmp_path / "x.png")])
