"""Publishing and using students: ``dfsfuse fuse``, ``dfsfuse export``, ``from_pretrained``.

Everything runs on tiny models built here (no training) and tiny images written to tmp;
nothing touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import dfsfuse
from dfsfuse import cli
from dfsfuse.data.io import read_pair, rgb_to_cbcr
from dfsfuse.export import ModelLoadError, from_pretrained, save_pretrained
from dfsfuse.fuse import FuseOptions, fuse_arrays, fuse_folder
from dfsfuse.models import create_model, list_models, model_kind
from dfsfuse.publish import push_to_hub

TINY = {"width": 4}


def tiny_student(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("student", **TINY).eval()
    with torch.no_grad():  # a visible residual, so the output is not just max(ir, vis)
        model.head.conv.weight.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    return save_pretrained(tiny_student(), tmp_path_factory.mktemp("model") / "student")


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(array).save(path)


def _smooth(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    """A smooth, moderately saturated picture (little clipping when re-coloured)."""
    y, x = np.mgrid[0:h, 0:w]
    planes = [90 + 50 * np.sin(x / (5 + 3 * c) + c) * np.cos(y / 7 + rng.uniform(0, 3)) for c in range(channels)]
    image = np.stack(planes, -1) + rng.normal(0, 6, (h, w, channels))
    return np.clip(image, 0, 255).astype(np.uint8).squeeze(-1) if channels == 1 else np.clip(image, 0, 255).astype(np.uint8)


def make_pairs(root: Path, seed: int = 0) -> dict:
    """ir/ and vi/ with two 40×56 PNG pairs (one batch), an odd 33×47 pair with a grey RGB VIS,
    and a JPEG pair; returns {stem: (height, width)}."""
    rng = np.random.default_rng(seed)
    sizes = {"a": (40, 56), "b": (40, 56), "c_grey": (33, 47), "d_jpeg": (30, 50)}
    for stem, (h, w) in sizes.items():
        ext = ".jpg" if stem == "d_jpeg" else ".png"
        _save(root / "ir" / f"{stem}{ext}", _smooth(rng, h, w, 1))
        vis = _smooth(rng, h, w, 3)
        if stem == "c_grey":
            vis = np.repeat(vis[..., :1], 3, axis=-1)
        _save(root / "vi" / f"{stem}{ext}", vis)
    return sizes


def fuse_cli(student_dir: Path, root: Path, out: Path, *extra: str) -> int:
    return cli.main(["fuse", "--model", str(student_dir), "--ir", str(root / "ir"), "--vi", str(root / "vi"),
                     "--out", str(out), "--device", "cpu", *extra])


def leftovers(folder: Path) -> list:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


# ------------------------------------------------------------------------------------ fuse


def test_fuse_cli_colour_output_keeps_visible_chroma(tmp_path, student_dir, capsys):
    sizes = make_pairs(tmp_path)
    out = tmp_path / "out"
    assert fuse_cli(student_dir, tmp_path, out, "--batch-size", "2") == 0
    assert "fused 4, skipped 0" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [f"{s}.png" for s in sorted(sizes)]
    model = from_pretrained(student_dir)
    for stem, (h, w) in sizes.items():
        with Image.open(out / f"{stem}.png") as img:
            assert img.mode == "RGB" and img.size == (w, h)
            rgb = np.asarray(img)
        ext = ".jpg" if stem == "d_jpeg" else ".png"
        pair = read_pair(tmp_path / "ir" / f"{stem}{ext}", tmp_path / "vi" / f"{stem}{ext}")
        np.testing.assert_array_equal(rgb, fuse_arrays(model, [pair])[0])  # batched == one by one
        if stem == "c_grey":  # a grey visible image has no chroma: the fused picture is grey too
            assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
        else:  # the visible chroma is put back (up to 8-bit rounding) where nothing clipped
            unclipped = ((rgb > 0) & (rgb < 255)).all(-1)
            assert unclipped.mean() > 0.9
            diff = np.abs(rgb_to_cbcr(rgb) - pair.vis_cbcr)[:, unclipped]
            assert diff.max() < 1.5
        y = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
        assert not np.allclose(y, pair.vis_y, atol=2)  # it is a fusion, not the visible image


def test_fuse_gray_writes_fused_luminance(tmp_path, student_dir):
    make_pairs(tmp_path)
    out = tmp_path / "out"
    assert fuse_cli(student_dir, tmp_path, out, "--gray") == 0
    model = from_pretrained(student_dir)
    pair = read_pair(tmp_path / "ir" / "a.png", tmp_path / "vi" / "a.png")
    with Image.open(out / "a.png") as img:
        assert img.mode == "L"
        gray = np.asarray(img)
    with torch.no_grad():
        fused = model(torch.from_numpy(pair.ir / 255)[None, None], torch.from_numpy(pair.vis_y / 255)[None, None]).fused
    np.testing.assert_array_equal(gray, np.round(fused[0, 0].numpy() * 255).astype(np.uint8))


def test_fuse_skips_existing_unless_overwrite(tmp_path, student_dir, capsys):
    make_pairs(tmp_path)
    out = tmp_path / "out"
    assert fuse_cli(student_dir, tmp_path, out) == 0
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(out / "a.png")  # a stale output
    capsys.readouterr()
    assert fuse_cli(student_dir, tmp_path, out) == 0
    assert "fused 0, skipped 4" in capsys.readouterr().out
    assert Image.open(out / "a.png").size == (5, 5)
    assert fuse_cli(student_dir, tmp_path, out, "--overwrite") == 0
    assert "fused 4, skipped 0" in capsys.readouterr().out
    assert Image.open(out / "a.png").size == (56, 40)
    assert leftovers(out) == []


def test_fuse_bad_pairs_are_named_and_the_rest_fuse(tmp_path, student_dir, capsys):
    make_pairs(tmp_path)
    rng = np.random.default_rng(1)
    _save(tmp_path / "ir" / "lonely_ir.png", _smooth(rng, 20, 20, 1))  # no VIS partner
    _save(tmp_path / "vi" / "lonely_vis.png", _smooth(rng, 20, 20, 3))  # no IR partner
    _save(tmp_path / "ir" / "sizes.png", _smooth(rng, 20, 20, 1))  # size mismatch
    _save(tmp_path / "vi" / "sizes.png", _smooth(rng, 21, 20, 3))
    (tmp_path / "ir" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _save(tmp_path / "vi" / "corrupt.png", _smooth(rng, 20, 20, 3))
    _save(tmp_path / "ir" / "truncated.png", _smooth(rng, 20, 20, 1))
    full = tmp_path / "vi" / "truncated.png"
    _save(full, _smooth(rng, 20, 20, 3))
    full.write_bytes(full.read_bytes()[:60])  # header readable, pixels not
    (tmp_path / "ir" / "notes.txt").write_text("ignored: not an image")
    out = tmp_path / "out"
    assert fuse_cli(student_dir, tmp_path, out, "--batch-size", "4") == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    named = {"lonely_ir.png": "ir", "lonely_vis.png": "vi", "sizes.png": "vi", "corrupt.png": "ir", "truncated.png": "vi"}
    assert len(errors) == len(named)
    for name, folder in named.items():
        assert sum(str(tmp_path / folder / name) in line for line in errors) == 1, (name, errors)
    assert "fused 4, skipped 0 (already there), failed 5" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c_grey.png", "d_jpeg.png"]


def test_fuse_folder_library_summary(tmp_path, student_dir):
    make_pairs(tmp_path)
    (tmp_path / "vi" / "b.png").unlink()
    summary = fuse_folder(from_pretrained(student_dir), tmp_path / "ir", tmp_path / "vi", tmp_path / "out",
                          FuseOptions(batch_size=3))
    assert sorted(summary.fused) == ["a", "c_grey", "d_jpeg"] and summary.skipped == []
    assert [f.name for f in summary.failed] == ["b"] and "b.png" in summary.failed[0].message
    assert not summary.ok and summary.images_per_second > 0


def test_fuse_without_model_uses_shipped_student(tmp_path, student_dir, monkeypatch, capsys):
    import dfsfuse.export

    make_pairs(tmp_path)
    args = ["fuse", "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"), "--out", str(tmp_path / "out")]
    monkeypatch.setattr(dfsfuse.export, "SHIPPED_STUDENT", tmp_path / "no-such-student")
    assert cli.main(args + ["--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-student" in err and "--model" in err
    monkeypatch.setattr(dfsfuse.export, "SHIPPED_STUDENT", student_dir)
    assert cli.main(args) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 4


@pytest.mark.parametrize("problem", ["missing_ir_dir", "out_is_input", "segmenter", "bad_device", "batch_size"])
def test_fuse_unusable_setup_exits_2(tmp_path, student_dir, problem, capsys):
    make_pairs(tmp_path)
    model, ir, out, extra = str(student_dir), tmp_path / "ir", tmp_path / "out", []
    if problem == "missing_ir_dir":
        ir = tmp_path / "nope"
    elif problem == "out_is_input":
        out = tmp_path / "vi"
    elif problem == "segmenter":
        model = str(save_pretrained(create_model("segmenter"), tmp_path / "seg"))
    elif problem == "bad_device":
        extra = ["--device", "tpu:9"]
    else:
        extra = ["--batch-size", "0"]
    args = ["fuse", "--model", model, "--ir", str(ir), "--vi", str(tmp_path / "vi"), "--out", str(out)]
    assert cli.main(args + (extra or ["--device", "cpu"])) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "vi").iterdir()) == ["a.png", "b.png", "c_grey.png", "d_jpeg.jpg"]


def test_fuse_tno_then_eval(tmp_path, student_dir, shared_data, capsys):
    """The done-when check on a few TNO pairs with a tiny model: grey RGB PNGs of odd sizes
    (575×475, two 360×270 fused as one batch) fuse to grey colour pictures, then evaluate."""
    tno = shared_data / "tno"
    stems = ["05", "19", "20"]
    if not all((tno / d / f"{s}.png").is_file() for d in ("ir", "vi") for s in stems):
        pytest.skip("TNO pairs not available")
    for folder in ("ir", "vi"):
        (tmp_path / folder).mkdir()
        for stem in stems:
            shutil.copy(tno / folder / f"{stem}.png", tmp_path / folder / f"{stem}.png")
    out = tmp_path / "fused"
    assert fuse_cli(student_dir, tmp_path, out) == 0
    assert sorted(p.stem for p in out.iterdir()) == stems
    for stem in stems:
        with Image.open(out / f"{stem}.png") as img, Image.open(tno / "ir" / f"{stem}.png") as ir:
            assert img.mode == "RGB" and img.size == ir.size
            rgb = np.asarray(img)
        assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    capsys.readouterr()
    assert cli.main(["eval", "--fused", str(out), "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi")]) == 0
    assert "Fusion metrics (3 images)" in capsys.readouterr().out


# ------------------------------------------------------------------------------- from_pretrained


def _example_inputs(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = 2 if model_kind(model.arch_name) == "fusion" else 1
    return [torch.rand(1, 1, 40, 48, generator=g) for _ in range(n)]


def _first_output(model, inputs):
    with torch.no_grad():
        out = model(*inputs)
    return out.fused if hasattr(out, "fused") else out.logits


@pytest.mark.parametrize("name", list_models())
def test_from_pretrained_round_trip_every_architecture(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    folder = save_pretrained(model, tmp_path / name)
    loaded = dfsfuse.from_pretrained(folder, device="cpu")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.arch_config() == model.arch_config()
    inputs = _example_inputs(model)
    assert torch.equal(_first_output(loaded, inputs), _first_output(model, inputs))


def test_hub_id_offline_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="dfsfuse-tests/not-in-cache") as info:
        from_pretrained("dfsfuse-tests/not-in-cache")
    assert "\n" not in str(info.value)


def test_hub_id_resolves_from_the_offline_cache(tmp_path, monkeypatch, student_dir):
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--dfsfuse-tests--tiny-student"
    shutil.copytree(student_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    loaded = from_pretrained("dfsfuse-tests/tiny-student")
    inputs = _example_inputs(loaded)
    assert torch.equal(_first_output(loaded, inputs), _first_output(from_pretrained(student_dir), inputs))


def _copy(student_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(student_dir, tmp_path / "copy"))


@pytest.mark.parametrize("damage, names", [
    ("missing_config", "config.json"),
    ("unknown_architecture", "config.json"),
    ("missing_weights", "model.safetensors"),
    ("shape_mismatch", "model.safetensors"),
    ("truncated", "model.safetensors"),
    ("pickle_as_safetensors", "model.safetensors"),
])
def test_from_pretrained_errors_name_the_file(tmp_path, student_dir, damage, names):
    folder = _copy(student_dir, tmp_path)
    config_path, weights = folder / "config.json", folder / "model.safetensors"
    config = json.loads(config_path.read_text())
    if damage == "missing_config":
        config_path.unlink()
    elif damage == "unknown_architecture":
        config_path.write_text(json.dumps({**config, "architecture": "no_such_net"}))
    elif damage == "missing_weights":
        weights.unlink()
    elif damage == "shape_mismatch":
        config_path.write_text(json.dumps({**config, "kwargs": {**config["kwargs"], "width": 6}}))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        torch.save(tiny_student().state_dict(), weights)
    with pytest.raises(ModelLoadError) as info:
        from_pretrained(folder)
    message = str(info.value)
    assert str(folder / names) in message and "\n" not in message
    if damage == "unknown_architecture":
        assert "no_such_net" in message
    if damage == "shape_mismatch":
        assert "shape" in message


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_loading_never_unpickles(tmp_path, student_dir, monkeypatch):
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(_Payload(canary)))  # the payload works when something unpickles it
    assert canary.is_dir()

    marker = tmp_path / "PWNED"
    folder = _copy(student_dir, tmp_path)
    for name in ("pytorch_model.bin", "model.pt", "model.pkl", "optimizer.bin"):
        (folder / name).write_bytes(pickle.dumps(_Payload(marker)))

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    model = from_pretrained(folder)
    assert model.arch_name == "student" and not marker.exists()

    (folder / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))  # weights that are a pickle
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        from_pretrained(folder)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ export

HELD_OUT = {"EN": 6.5, "SD": 35.0, "SF": 9.0, "AG": 3.0, "MI": 3.1, "SCD": 1.4, "VIF": 0.8, "Qabf": 0.5, "SSIM": 0.9}


def make_run(root: Path) -> Path:
    """A training run folder as recipes/distill.py writes it, built directly (no training)."""
    config = {
        "data": {"train": [{"root": "bundled:msrs", "split": "train", "name": "msrs_bundled", "optional": False}],
                 "synthetic": 8},
        "model": {"teacher": "teacher", "teacher_kwargs": {}, "student": "student", "student_kwargs": TINY,
                  "segmenter": "segmenter", "segmenter_kwargs": {}},
        "student": {"steps": 10, "lr": 0.005}, "train": {"seed": 0, "max_steps": 5},
    }
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config, indent=2))
    metrics = {m: {"msrs_heldout": HELD_OUT} for m in ("avg", "max", "teacher", "student")}
    metrics.update(segmentation_miou={"teacher": 0.41, "student": 0.39, "ir": 0.2, "vis": 0.3},
                   models={"student": {"params": 999, "gmac": 0.1, "latency_ms": 12.5, "height": 48, "width": 64}},
                   wall_time_s=42.0, distilled_from={"teacher": {"path": "runs/x/teacher", "sha256": "ab" * 32}})
    (root / "metrics.json").write_text(json.dumps(metrics))
    Image.fromarray(np.full((8, 48), 128, np.uint8)).save(root / "comparison.png")
    save_pretrained(tiny_student(0), root / "student", role="student")
    ckpt = root / "checkpoints" / "student" / "step_000003"
    ckpt.mkdir(parents=True)
    state = {f"student.{k}": v.contiguous() for k, v in tiny_student(1).state_dict().items()}
    state["distill.feature.adapters.fusion.weight"] = torch.randn(24, 4, 1, 1)
    save_file(state, str(ckpt / "model.safetensors"))
    (ckpt / "trainer_state.json").write_text(json.dumps({"stage": "student", "step": 3, "batches": 3}))
    (ckpt / "random_states_0.pkl").write_bytes(pickle.dumps(_Payload(root / "PWNED")))
    return root


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def test_export_run_folder_is_hub_ready(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    out = tmp_path / "export"
    assert cli.main(["export", str(run), "--out", str(out)] + (["--onnx"] if HAS_ONNX else [])) == 0
    assert ("ONNX check" in capsys.readouterr().out) == HAS_ONNX
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.safetensors", "config.json", "README.md", "sample.png", "comparison.png"]
        + (["model.onnx"] if HAS_ONNX else []))
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "dfsfuse" and meta["license"] and meta["pipeline_tag"] == "image-to-image"
    assert "student" in meta["tags"] and "datasets" not in meta  # the card lists only real hub dataset ids
    assert "| msrs_heldout | student | 6.5000 |" in card  # held-out metrics table
    assert "| 12.5 | 48×64 |" in card  # latency reused from the run, at its size
    assert "- **datasets**: msrs_bundled, synthetic scenes" in card
    assert f"- **distilled from**: teacher `runs/x/teacher` (weights SHA-256 {'ab' * 32})" in card
    assert "recipe config" in card and "max_steps: 5" in card and "0.390" in card and "sample.png" in card
    assert ("## ONNX" in card) == HAS_ONNX
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "student" and config["kwargs"]["width"] == 4 and config["train_steps"] == 5
    exported, original = from_pretrained(out), from_pretrained(run / "student")
    inputs = _example_inputs(original)
    assert torch.equal(_first_output(exported, inputs), _first_output(original, inputs))
    with Image.open(out / "sample.png") as sample:
        assert sample.mode == "RGB" and sample.size == (3 * 640 + 8, 480)
    assert not (run / "PWNED").exists()


def test_export_checkpoint_rebuilds_student_and_drops_adapters(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "export"
    assert cli.main(["export", str(run / "checkpoints" / "student" / "step_000003"), "--out", str(out),
                     "--latency-runs", "1", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "sample.png"]
    exported = from_pretrained(out)
    inputs = _example_inputs(exported)
    assert torch.equal(_first_output(exported, inputs), _first_output(tiny_student(1), inputs))
    card = (out / "README.md").read_text()
    assert front_matter(card)["library_name"] == "dfsfuse"
    assert "| msrs_heldout |" not in card and "not the run's final student" in card  # metrics are not borrowed
    assert "median of 1" in card  # latency measured now
    assert json.loads((out / "config.json").read_text())["train_steps"] == 3
    assert not (run / "PWNED").exists()


def test_export_head_converts_the_student_and_leaves_the_runs_metrics_out(tmp_path, capsys):
    """``--head region-gain`` on a ``region-contrast`` model: the exported folder is convert_head of
    it (same fusion as the model with r = 0), the card does not borrow metrics; a student whose head
    cannot convert is a one-line error and nothing is written."""
    from dfsfuse.models.convert import convert_head

    torch.manual_seed(3)
    model = create_model("student_fast", width=4, head="region-contrast")
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
        model.head.bias.normal_(0, 0.1)
    save_pretrained(model, tmp_path / "trained", role="student")
    out = tmp_path / "export"
    assert cli.main(["export", str(tmp_path / "trained"), "--out", str(out), "--head", "region-gain"]) == 0
    exported = from_pretrained(out)
    assert json.loads((out / "config.json").read_text())["kwargs"]["head"] == "region-gain"
    ir, vis = torch.rand(1, 1, 40, 52), torch.rand(1, 1, 40, 52)
    with torch.no_grad():
        assert torch.equal(exported(ir, vis).fused, convert_head(model.eval(), "region-gain")(ir, vis).fused)
    run = make_run(tmp_path / "run")   # a region-head run: its student has no r to drop
    capsys.readouterr()
    assert cli.main(["export", str(run), "--out", str(tmp_path / "bad"), "--head", "region-gain"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "region-contrast -> region-gain" in err and str(run) in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("case", ["out_exists", "out_is_run", "teacher_checkpoint", "not_a_run"])
def test_export_refusals_exit_2(tmp_path, case, capsys):
    run = make_run(tmp_path / "run")
    source, out = run, tmp_path / "export"
    if case == "out_exists":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    elif case == "out_is_run":
        out = run
    elif case == "teacher_checkpoint":
        source = run / "checkpoints" / "teacher" / "step_000003"
        shutil.copytree(run / "checkpoints" / "student" / "step_000003", source)
    else:
        source = tmp_path / "empty"
        source.mkdir()
    args = ["export", str(source), "--out", str(out)]
    assert cli.main(args) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    if case == "out_exists":
        assert cli.main(args + ["--overwrite"]) == 2  # not a model folder: never replaced
        assert (out / "precious.txt").read_text() == "keep me"
    assert (run / "metrics.json").is_file()


def test_export_overwrite_replaces_a_previous_export(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "export"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    assert cli.main(["export", str(run), "--out", str(out)]) == 2
    assert cli.main(["export", str(run), "--out", str(out), "--overwrite", "--name", "tiny"]) == 0
    assert "# tiny" in (out / "README.md").read_text()


def test_push_to_hub_creates_repo_and_uploads(tmp_path, monkeypatch, student_dir):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls.append(("upload_folder", folder_path, repo_id, sorted(os.listdir(folder_path))))
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = push_to_hub(student_dir, "someone/tiny-student")
    assert url.endswith("someone/tiny-student/commit/abc")
    assert calls[1] == ("create_repo", "someone/tiny-student", {"repo_type": "model", "private": False, "exist_ok": True})
    assert calls[2][1:3] == (str(student_dir), "someone/tiny-student") and "model.safetensors" in calls[2][3]
    with pytest.raises(ModelLoadError):
        push_to_hub(tmp_path, "someone/empty")  # not a model folder: nothing is uploaded
    assert len(calls) == 3


def test_recipe_and_export_cards_parse_as_hub_model_cards(tmp_path, monkeypatch):
    """Both card writers (the recipe's write_teacher_cards, ``dfsfuse export``) go through
    dfsfuse.card.render_card, whose front matter huggingface_hub.ModelCard reads back, offline."""
    import socket

    from conftest import load_script
    from huggingface_hub import ModelCard

    from dfsfuse.card import CARD_METRICS

    def no_network(*args, **kwargs):
        raise AssertionError("a card tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    # dfsfuse export (publish path): local held-out sets stay out of the front matter.
    run = make_run(tmp_path / "run")
    assert cli.main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    exported = ModelCard((tmp_path / "export" / "README.md").read_text())
    assert exported.data.library_name == "dfsfuse" and exported.data.pipeline_tag == "image-to-image"
    assert {"student", "dfsfuse", "image-fusion"} <= set(exported.data.tags)
    assert exported.data.metrics == list(CARD_METRICS)
    assert exported.data.datasets is None and exported.data.eval_results is None
    assert "| msrs_heldout | student | 6.5000 |" in exported.text

    # the recipe's teacher and segmenter cards: only real hub ids reach the front matter.
    recipe = load_script(Path(__file__).resolve().parents[1] / "recipes" / "distill.py", "distill_recipe_cards")
    torch.manual_seed(0)
    teacher = create_model("teacher", dim=8, bottleneck_depth=1)
    segmenter = create_model("segmenter", backbone="mobilenetv3_small_100", fpn_dim=16)
    folder = tmp_path / "teacher"
    (folder / "segmenter").mkdir(parents=True)
    held_out = {"msrs_heldout": HELD_OUT, "someone/ir-vis-pairs": {**HELD_OUT, "EN": 6.25}}
    card_metrics = {m: held_out for m in ("avg", "max", "teacher", "student")}
    training = {"datasets": ["msrs_bundled", "someone/ir-vis-train", "synthetic scenes"], "recipe": "recipes/distill.py"}
    recipe.write_teacher_cards(folder, teacher, segmenter, {"params": 1234, "gmac": 0.5}, card_metrics, "",
                               training, "cpu")
    card = ModelCard((folder / "README.md").read_text())
    assert card.data.library_name == "dfsfuse" and "teacher" in card.data.tags
    assert card.data.metrics == list(CARD_METRICS) and card.data.datasets == ["someone/ir-vis-train"]
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert card.data.model_name == "dfsfuse teacher" and results[("someone/ir-vis-pairs", "EN")] == 6.25
    assert {d for d, _ in results} == {"someone/ir-vis-pairs"} and len(results) == len(CARD_METRICS)
    assert "| msrs_heldout | teacher | 6.5000 |" in card.text
    seg = ModelCard((folder / "segmenter" / "README.md").read_text())
    assert seg.data.pipeline_tag == "image-segmentation" and seg.data.library_name == "dfsfuse"
    assert seg.data.metrics is None and seg.data.datasets == ["someone/ir-vis-train"]
