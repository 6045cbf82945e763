"""The distillation recipe: config validation, an end-to-end tiny run, export round trip,
resume after an interrupted run, and 2-process (gloo) agreement with 1 process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import load_script
from PIL import Image
from safetensors.torch import load_file

import dfsfuse
from dfsfuse.train.config import ConfigError, load_config
from dfsfuse.train.loop import checkpoint_dirs, lr_at
from dfsfuse.train.tracking import read_log

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "distill.py"

# Tiny but complete: every stage runs, on 32×32 crops, a few steps each, evaluated on small
# crops of the bundled held-out pairs (see ``small_heldout``).
TINY = [
    "data.synthetic=16", "data.synthetic_size=48", "data.crop=32", "data.repeat_real=1",
    "eval.max_images=1", "eval.synthetic=2", "eval.synthetic_size=64", "eval.latency_runs=0",
    "teacher.steps=3", "student.steps=4", "teacher.batch_size=4", "student.batch_size=4",
    "teacher.warmup_steps=1", "student.warmup_steps=1", "train.log_every=1", "train.checkpoint_every=2",
    "train.deterministic=true",
]


def _recipe():
    return load_script(RECIPE, "distill_recipe")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def launch_cmd(processes: int, script, *args) -> list:
    """``accelerate launch`` of ``script`` on ``processes`` real CPU ranks (gloo).

    ``--cpu --num_processes 2`` would start one process only; ``--multi_gpu`` with
    ``ACCELERATE_USE_CPU=1`` (set by :func:`_env` callers) starts real CPU ranks.
    """
    port = str(29500 + processes + os.getpid() % 2000)
    dist = ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", port] if processes > 1 \
        else ["--num_processes", "1"]
    return [sys.executable, "-m", "accelerate.commands.launch", *dist, "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *map(str, args)]


@pytest.fixture(scope="module", autouse=True)
def small_heldout(tmp_path_factory):
    """96×128 crops of two bundled held-out MSRS pairs, as the tiny runs' evaluation set."""
    from dfsfuse.data import bundled_msrs_root

    root = tmp_path_factory.mktemp("heldout")
    for sub in ("ir", "vi"):
        (root / sub).mkdir()
        for src in sorted((bundled_msrs_root() / "test" / sub).glob("*.png"))[:2]:
            with Image.open(src) as img:
                img.crop((200, 150, 328, 246)).save(root / sub / src.name)
    TINY.append(f"eval.sets=[{{root: '{root}', name: heldout}}]")
    yield root
    TINY.pop()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, small_heldout):
    """One complete tiny run of the recipe, in process."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert _recipe().main([*TINY, "--output", str(out)]) == 0
    return out


# --- config -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.stage_steps("teacher") > 0 and cfg.stage_steps("student") > 0


def test_default_config_file_matches_and_validates():
    cfg = load_config(REPO / "recipes" / "configs" / "default.yaml")
    assert cfg.model.teacher == "teacher" and cfg.model.student == "student_fast"
    assert cfg.eval.sets[0].root == "bundled:msrs" and cfg.eval.sets[0].split == "test"


def test_cpu_threads_setting(monkeypatch):
    """``train.cpu_threads``: N sets N threads on a CPU run, 0 divides the usable CPUs among the
    processes, None (and any GPU run) leaves torch as launched; negative values are refused."""
    from types import SimpleNamespace

    from dfsfuse.train import stages

    before = torch.get_num_threads()
    monkeypatch.setattr(stages, "available_cpus", lambda: 8)
    cpu = lambda n: SimpleNamespace(device=torch.device("cpu"), num_processes=n)  # noqa: E731
    try:
        assert stages.apply_cpu_threads(load_config(overrides=["train.cpu_threads=3"]), cpu(1)) == 3
        assert torch.get_num_threads() == 3
        assert stages.apply_cpu_threads(load_config(overrides=["train.cpu_threads=0"]), cpu(2)) == 4
        assert stages.apply_cpu_threads(load_config(overrides=["train.cpu_threads=0"]), cpu(16)) == 1
        assert torch.get_num_threads() == 1
        assert stages.apply_cpu_threads(load_config(), cpu(1)) is None and torch.get_num_threads() == 1
        gpu = SimpleNamespace(device=torch.device("cuda", 0), num_processes=1)
        assert stages.apply_cpu_threads(load_config(overrides=["train.cpu_threads=0"]), gpu) is None
    finally:
        torch.set_num_threads(before)
    assert load_config(REPO / "recipes" / "configs" / "default.yaml").train.cpu_threads == 0
    with pytest.raises(ConfigError, match="train.cpu_threads"):
        load_config(overrides=["train.cpu_threads=-1"])


def test_unknown_key_and_bad_values_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  seed: 1\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'train\.max_stepz'"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"'teacher\.steps' expected int"):
        load_config(overrides=["teacher.steps=many"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(overrides=["teacher.steps"])


def test_config_yaml_is_never_executed(tmp_path):
    evil = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    evil.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(evil)
    assert not marker.exists()


def test_overrides_are_typed_and_nested():
    cfg = load_config(overrides=["train.max_steps=20", "model.teacher=student", "loss.dynamic_weights=true",
                                 "student.lr=1e-3"])
    assert cfg.train.max_steps == 20 and cfg.stage_steps("teacher") == 20
    assert cfg.model.teacher == "student" and cfg.loss.dynamic_weights is True and cfg.student.lr == 1e-3


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.05, abs=0.01)


# --- end to end -------------------------------------------------------------------------------

def test_tiny_run_writes_metrics_comparison_and_exports(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for method in ("avg", "max", "teacher", "student"):
        assert set(metrics[method]) == {"heldout"}
        assert {"EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM"} <= set(metrics[method]["heldout"])
    assert metrics["wall_time_s"] > 0
    assert set(metrics["segmentation_miou"]) == {"teacher", "student", "ir", "vis"}
    assert (tiny_run / "comparison.png").is_file()
    for folder in ("student", "teacher", "teacher/segmenter"):
        assert {"model.safetensors", "config.json"} <= {p.name for p in (tiny_run / folder).iterdir()}
    card = (tiny_run / "student" / "README.md").read_text()
    assert "library_name: dfsfuse" in card and "| heldout | student |" in card
    from huggingface_hub import ModelCard

    data = ModelCard(card).data  # the hub's own parser reads the front matter (no network)
    architecture = json.loads((tiny_run / "student" / "config.json").read_text())["architecture"]
    assert data.library_name == "dfsfuse" and architecture in data.tags and "VIF" in data.metrics
    assert data.eval_results is None  # "heldout" is a local set, not a hub id
    log = read_log(tiny_run / "log.jsonl")
    assert [r["step"] for r in log if "student/loss" in r] == [1, 2, 3, 4]


def test_exported_student_reproduces_the_trained_one(tiny_run):
    """from_pretrained(student/) gives the weights of the final training checkpoint, bit for bit."""
    loaded = dfsfuse.from_pretrained(tiny_run / "student")
    ckpt = load_file(str(checkpoint_dirs(tiny_run / "checkpoints" / "student")[-1] / "model.safetensors"))
    fresh = dfsfuse.models.create_model(loaded.arch_name, **loaded.arch_kwargs)
    fresh.load_state_dict({k[len("student."):]: v for k, v in ckpt.items() if k.startswith("student.")})
    fresh.eval()
    ir, vis = torch.rand(1, 1, 37, 45), torch.rand(1, 1, 37, 45)
    with torch.no_grad():
        assert torch.equal(loaded(ir, vis).fused, fresh(ir, vis).fused)


def test_existing_run_dir_is_not_overwritten(tiny_run, capsys):
    before = (tiny_run / "metrics.json").read_bytes()
    assert _recipe().main([*TINY, "--output", str(tiny_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tiny_run / "metrics.json").read_bytes() == before


def test_teacher_without_segmenter_needs_the_semantic_losses_off(tiny_run, tmp_path, capsys):
    """``--teacher`` a folder with no segmenter: the semantic losses are a one-line error naming the
    switches to turn off (nothing written to the student); with them off, the student trains."""
    teacher = tmp_path / "alone" / "teacher"
    teacher.mkdir(parents=True)
    for f in (tiny_run / "teacher").iterdir():
        if f.is_file():
            (teacher / f.name).write_bytes(f.read_bytes())
    args = [*TINY, "student.steps=2", "eval.sets=[]", "--teacher", str(teacher)]
    assert _recipe().main([*args, "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "need a segmenter" in err and "loss.seg_kl=0" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad" / "student").exists()
    off = ["loss.semantic_weighting=false", "loss.seg_kl=0", "loss.seg_ce=0"]
    assert _recipe().main([*args, *off, "--output", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "student" / "model.safetensors").is_file()


def test_segmenter_options_replace_the_segmenters_stage_2_reads(tiny_run, tmp_path, capsys):
    """``--segmenter DIR`` replaces the teacher's segmenter in stage 2 (a copy of it trains the same
    student, a different one another), ``loss.seg_ce_class_segmenter`` changes the student, and a
    folder that holds no segmenter fails in one line before the run folder is touched."""
    from dfsfuse.export import save_pretrained

    teacher = tiny_run / "teacher"
    args = [*TINY, "student.steps=2", "eval.sets=[]", "eval.synthetic=0", "--teacher", str(teacher)]
    copy, other = tmp_path / "seg_copy", tmp_path / "seg_other"
    copy.mkdir()
    for f in (teacher / "segmenter").iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    torch.manual_seed(1)
    save_pretrained(dfsfuse.models.create_model("segmenter", fpn_dim=8), other, role="segmenter")

    def student(name: str, *extra: str) -> dict:
        assert _recipe().main([*args, *extra, "--output", str(tmp_path / "runs" / name)]) == 0
        return load_file(str(tmp_path / "runs" / name / "student" / "model.safetensors"))

    base = student("base")
    same = student("same", "--segmenter", str(copy))
    assert all(torch.equal(base[k], same[k]) for k in base)
    # metrics.json and the student's card name the exact weights stage 2 read: folder + SHA-256
    sha = {f: hashlib.sha256((f / "model.safetensors").read_bytes()).hexdigest()
           for f in (teacher, teacher / "segmenter", copy, other)}
    sources = {n: json.loads((tmp_path / "runs" / n / "metrics.json").read_text())["distilled_from"]
               for n in ("base", "same")}
    assert sources["base"] == {"teacher": {"path": str(teacher), "sha256": sha[teacher]},
                               "segmenter": {"path": str(teacher / "segmenter"), "sha256": sha[teacher / "segmenter"]}}
    assert sources["same"]["segmenter"] == {"path": str(copy), "sha256": sha[teacher / "segmenter"]}
    card = (tmp_path / "runs" / "same" / "student" / "README.md").read_text()
    assert f"segmenter `{copy}` (weights SHA-256 {sha[copy]})" in card
    for name, extra in (("other", ["--segmenter", str(other)]),
                        ("classes", [f"loss.seg_ce_class_segmenter={other}", "loss.seg_ce_classes=[car, person]"])):
        changed = student(name, *extra)
        assert any(not torch.equal(base[k], changed[k]) for k in base), name
        sources = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())["distilled_from"]
        role = "segmenter" if name == "other" else "class segmenter"
        assert sources[role] == {"path": str(other), "sha256": sha[other]}, name
    capsys.readouterr()
    keep = tmp_path / "runs" / "base" / "student" / "model.safetensors"
    before = keep.read_bytes()
    for extra in (["--segmenter", str(tmp_path / "missing")], ["--segmenter", str(teacher)],
                  [f"loss.seg_ce_class_segmenter={tmp_path / 'missing'}"]):
        assert _recipe().main([*args, *extra, "--output", str(tmp_path / "runs" / "base"), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("missing" in err or "not a segmentation model" in err), err
        assert keep.read_bytes() == before
    with pytest.raises(SystemExit):
        _recipe().parse_args(["--segmenter", str(copy)])
    assert "needs --teacher" in capsys.readouterr().err


def test_student_export_head_converts_the_trained_student_before_evaluation_and_export(tiny_run, tmp_path, capsys):
    """``model.student_export_head=region-gain``: the student trains with ``region-contrast`` (its
    checkpoints keep r) and is evaluated and exported as ``convert_head`` of the last checkpoint; a
    student whose head cannot convert is refused before anything trains."""
    from dfsfuse.models.convert import convert_head

    args = [*TINY, "student.steps=2", "eval.synthetic=0", "--teacher", str(tiny_run / "teacher"),
            "model.student=student_fast", "model.student_kwargs={width: 4, head: region-contrast}"]
    out = tmp_path / "gain"
    assert _recipe().main([*args, "model.student_export_head=region-gain", "--output", str(out)]) == 0
    exported = dfsfuse.from_pretrained(out / "student")
    assert exported.arch_kwargs["head"] == "region-gain"
    ckpt = load_file(str(checkpoint_dirs(out / "checkpoints" / "student")[-1] / "model.safetensors"))
    trained = dfsfuse.models.create_model("student_fast", width=4, head="region-contrast")
    trained.load_state_dict({k[len("student."):]: v for k, v in ckpt.items() if k.startswith("student.")})
    ir, vis = torch.rand(1, 1, 37, 45), torch.rand(1, 1, 37, 45)
    with torch.no_grad():
        assert torch.equal(exported(ir, vis).fused, convert_head(trained.eval(), "region-gain")(ir, vis).fused)
    assert "region-gain" in (out / "student" / "config.json").read_text()
    assert _recipe().main([*TINY, "model.student_export_head=region-gain", "--output", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "student_export_head" in err and "'region'" in err
    assert not (tmp_path / "bad" / "student").exists()


def test_resume_after_sigterm_equals_uninterrupted_run(tiny_run, tmp_path):
    """Kill the student stage with SIGTERM mid-run, resume, and get the uninterrupted student exactly."""
    args = [*TINY, "student.steps=6", "train.checkpoint_every=100", "--teacher", str(tiny_run / "teacher")]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert subprocess.run([sys.executable, str(RECIPE), *args, "--output", str(full)], env=_env(),
                          capture_output=True).returncode == 0

    proc = subprocess.Popen([sys.executable, str(RECIPE), *args, "--output", str(cut)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = cut / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and any("student/loss" in r and r["step"] >= 2 for r in read_log(log)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    saved = checkpoint_dirs(cut / "checkpoints" / "student")
    assert saved and 2 <= int(saved[-1].name.split("_")[1]) < 6
    assert not (cut / "student").exists()

    assert subprocess.run([sys.executable, str(RECIPE), *args, "--resume", "--output", str(cut)], env=_env(),
                          capture_output=True).returncode == 0
    a = load_file(str(full / "student" / "model.safetensors"))
    b = load_file(str(cut / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("data", [["data.train=[]"], []], ids=["all_labelled", "mixed_labels"])
def test_two_cpu_processes_match_one(tiny_run, tmp_path, data):
    """2 gloo ranks with the same global batch follow the loss curve of 1 process.

    ``all_labelled``: only labelled synthetic scenes. ``mixed_labels``: the default data, the
    bundled MSRS pairs (no labels) and labelled synthetic scenes; masked and weighted means are
    normalised by the global count (``dfsfuse.reduction.global_mean``), so this matches too.
    (``tests/test_distributed_losses.py`` checks each loss and the parameters to 1e-5.)
    """
    args = [*TINY, *data, "student.steps=4", "eval.sets=[]", "eval.synthetic=1",
            "--teacher", str(tiny_run / "teacher")]
    curves = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        res = subprocess.run(launch_cmd(n, RECIPE, *args, "--output", out), env={**_env(), "ACCELERATE_USE_CPU": "1"},
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        curves[n] = [r["student/loss"] for r in read_log(out / "log.jsonl") if "student/loss" in r]
        assert (out / "student" / "model.safetensors").is_file()
        assert f"{n} process(es)" in res.stdout
    assert len(curves[1]) == len(curves[2]) == 4  # one writer: rank 0 only
    assert curves[2] == pytest.approx(curves[1], rel=2e-2)


def test_stage_crop_overrides_the_data_crop():
    """``student.crop`` / ``teacher.crop``: that stage's random crops have this side (the seg CE gets
    context); unset, every stage uses ``data.crop``; a non-positive side is refused."""
    from dfsfuse.train import stages

    cfg = load_config(overrides=["data.crop=32", "student.crop=48", "data.synthetic=4", "data.synthetic_size=64"])
    assert cfg.teacher.crop is None and cfg.student.crop == 48
    teacher_batch = next(iter(stages._loader(cfg, 2, cfg.teacher)))
    student_batch = next(iter(stages._loader(cfg, 2, cfg.student)))
    assert teacher_batch["ir"].shape[-2:] == (32, 32)
    assert student_batch["ir"].shape[-2:] == student_batch["vis_y"].shape[-2:] == (48, 48)
    with pytest.raises(ConfigError, match="student.crop"):
        load_config(overrides=["student.crop=0"])


def test_stage_scale_resizes_training_pairs_before_the_crop():
    """``student.scale`` 0.5: the stage's crops come from pairs at half size (a crop as large as the
    halved pair is the whole pair, 2x2-block averaged); ``scale_max`` reaches the transform; bad
    factors are refused."""
    from dfsfuse.train import stages

    over = ["data.synthetic=4", "data.synthetic_size=64", "data.repeat_real=0", "data.train=[]"]
    cfg = load_config(overrides=over + ["student.crop=32", "student.scale=0.5"])
    full_cfg = load_config(overrides=over + ["student.crop=64"])
    halved = {s["name"]: s["ir"] for s in stages._loader(cfg, 1, cfg.student).dataset}
    full = {s["name"]: s["ir"] for s in stages._loader(full_cfg, 1, full_cfg.student).dataset}
    assert sorted(halved) == sorted(full) and len(full) == 4
    for name, x in halved.items():  # same seed, same flips: the whole 64x64 scene averaged over 2x2 blocks
        assert x.shape[-2:] == (32, 32)
        torch.testing.assert_close(x, torch.nn.functional.avg_pool2d(full[name], 2))
    rand = load_config(overrides=over + ["student.scale=0.5", "student.scale_max=1.0"])
    rescale = stages._loader(rand, 1, rand.student).dataset.transform.transforms[0]
    assert (rescale.scale, rescale.scale_max) == (0.5, 1.0)
    with pytest.raises(ConfigError, match="student.scale"):
        load_config(overrides=["student.scale=0"])
    with pytest.raises(ConfigError, match="student.scale_max"):
        load_config(overrides=["student.scale=0.5", "student.scale_max=0.4"])
