"""The run folder is defined once (dfsfuse/run_layout.py); old runs (config.json) keep loading."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from test_publish import make_run

from dfsfuse.publish import load_student_source, read_run_config
from dfsfuse.run_layout import RunLayout
from dfsfuse.train.tracking import JSONLinesTracker

REPO = Path(__file__).resolve().parent.parent


def test_paths() -> None:
    run = RunLayout("runs/x")
    assert run.checkpoints("teacher") == Path("runs/x/checkpoints/teacher")
    assert run.checkpoints("student") == Path("runs/x/checkpoints/student")
    assert (run.teacher, run.segmenter, run.student) == (Path("runs/x/teacher"), Path("runs/x/teacher/segmenter"),
                                                         Path("runs/x/student"))
    assert (run.metrics, run.log, run.run_config) == (Path("runs/x/metrics.json"), Path("runs/x/log.jsonl"),
                                                      Path("runs/x/run_config.json"))
    assert (run.comparison, run.sample) == (Path("runs/x/comparison.png"), Path("runs/x/sample.png"))
    assert RunLayout(run) == run and RunLayout.segmenter_of("elsewhere/t") == Path("elsewhere/t/segmenter")
    with pytest.raises(ValueError, match="unknown stage"):
        run.checkpoints("students")


def test_find_the_run_from_inside() -> None:
    assert RunLayout.from_checkpoint("r/checkpoints/student/step_000004") == (RunLayout("r"), "student")
    assert RunLayout.from_stage_dir("r/checkpoints/teacher") == (RunLayout("r"), "teacher")


def test_from_model_dir(tmp_path) -> None:
    run = RunLayout(tmp_path / "run")
    for folder in (run.student, run.segmenter):
        folder.mkdir(parents=True)
    assert RunLayout.from_model_dir(run.student) is None  # no run config, no metrics: not a run
    run.run_config.write_text("{}")
    assert RunLayout.from_model_dir(run.student) == run
    assert RunLayout.from_model_dir(run.segmenter) == run
    assert RunLayout.from_model_dir(tmp_path / "run" / "other") is None


def test_run_config_new_name_and_legacy(tmp_path) -> None:
    run = RunLayout(tmp_path)
    assert run.find_run_config() is None and not run.is_run()
    run.legacy_run_config.write_text(json.dumps({"architecture": "student", "kwargs": {}}))  # a model folder
    assert run.find_run_config() is None
    run.legacy_run_config.write_text(json.dumps({"model": {"student": "student"}}))  # a run before run_config.json
    assert run.find_run_config() == run.legacy_run_config and run.read_run_config()["model"]["student"] == "student"
    run.run_config.write_text(json.dumps({"model": {"student": "student_fast"}}))  # the new name wins
    assert run.find_run_config() == run.run_config and run.read_run_config()["model"]["student"] == "student_fast"


def test_tracker_writes_the_run_config_under_its_own_name(tmp_path) -> None:
    tracker = JSONLinesTracker("distill", str(tmp_path))
    tracker.store_init_configuration({"model": {"student": "student"}})
    tracker.log({"student/loss": 1.0}, step=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "run_config.json"]


@pytest.mark.parametrize("layout", ["legacy", "new"])
def test_publish_reads_both_layouts(tmp_path, layout) -> None:
    root = make_run(tmp_path / "run")
    if layout == "new":
        shutil.move(root / "config.json", root / "run_config.json")
    assert read_run_config(root)["model"]["student"] == "student"
    assert load_student_source(root).final
    assert load_student_source(root / "student").final
    ckpt = load_student_source(root / "checkpoints" / "student" / "step_000003")
    assert ckpt.step == 3 and not ckpt.final and ckpt.run_config["model"]["student"] == "student"
    assert load_student_source(root / "checkpoints" / "student").step == 3


# -- nothing outside run_layout.py builds run-folder paths ------------------------------------------

RUN_FOLDER_NAMES = {"checkpoints", "student", "teacher", "segmenter"}
RUN_FILE_NAMES = {"log.jsonl", "metrics.json", "comparison.png", "run_config.json"}


def _under_assets(node: ast.AST) -> bool:
    """``... / "assets"``: the shipped models (``dfsfuse/assets/student``), not a run folder."""
    return isinstance(node, ast.BinOp) and isinstance(node.right, ast.Constant) and node.right.value == "assets"


def _path_building(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                and node.right.value in RUN_FOLDER_NAMES and not _under_assets(node.left):
            found.append(f"{path}:{node.lineno}: / {node.right.value!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and node.value in RUN_FILE_NAMES:
            found.append(f"{path}:{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Attribute) and node.attr == "parent" and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "parent" and isinstance(node.value.value, ast.Attribute) \
                and node.value.value.attr == "parent":
            found.append(f"{path}:{node.lineno}: .parent.parent.parent")
    return found


def test_run_folder_paths_are_built_only_in_run_layout() -> None:
    files = [p for p in (REPO / "dfsfuse").rglob("*.py") if p.name != "run_layout.py"]
    files += sorted((REPO / "recipes").glob("*.py"))
    assert len(files) > 20
    assert [hit for p in sorted(files) for hit in _path_building(p)] == []


def test_model_folder_files(tmp_path) -> None:
    from dfsfuse.export import CONFIG_NAME, WEIGHTS_NAME
    from dfsfuse.run_layout import MODEL_CONFIG_NAME, MODEL_WEIGHTS_NAME

    assert (MODEL_CONFIG_NAME, MODEL_WEIGHTS_NAME) == (CONFIG_NAME, WEIGHTS_NAME)
    assert RunLayout.model_config_of("m") == Path("m/config.json")
    assert RunLayout.model_weights_of("m") == Path("m/model.safetensors")
    assert not RunLayout.is_model_dir(tmp_path)
    RunLayout.model_config_of(tmp_path).write_text("{}")
    assert RunLayout.is_model_dir(tmp_path)


def test_ablation_builds_no_model_file_paths() -> None:
    """dfsfuse/ablation/ finds a teacher's config and weights through RunLayout, never by file name."""
    files = sorted((REPO / "dfsfuse" / "ablation").glob("*.py"))
    assert any(p.name == "runs.py" for p in files)  # the module that reads the teacher's files is scanned
    names = {"config.json", "model.safetensors"}
    hits = [f"{path.name}:{node.lineno}" for path in files for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and node.value in names]
    assert hits == []


def test_find_segmenter_inside_a_run_teacher_or_beside_the_shipped_one(tmp_path):
    run_teacher = tmp_path / "run" / "teacher"
    (run_teacher / "segmenter").mkdir(parents=True)
    (run_teacher / "config.json").write_text("{}")
    assert RunLayout.find_segmenter(run_teacher) is None            # no model in segmenter/ yet
    (run_teacher / "segmenter" / "config.json").write_text("{}")
    assert RunLayout.find_segmenter(run_teacher) == run_teacher / "segmenter"
    assets = tmp_path / "assets"
    for name in ("teacher", "segmenter"):
        (assets / name).mkdir(parents=True)
        (assets / name / "config.json").write_text("{}")
    assert RunLayout.find_segmenter(assets / "teacher") == assets / "segmenter"
    # A folder named segmenter is never its own segmenter.
    assert RunLayout.find_segmenter(assets / "segmenter") is None
    # Writing still goes inside the teacher's folder.
    assert RunLayout.segmenter_of(assets / "teacher") == assets / "teacher" / "segmenter"
