"""The semantic benchmark end to end on tiny folders: schema, every kind, determinism, quick mode, bad input."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfsfuse.baselines import baseline_fusion
from dfsfuse.cli import main
from dfsfuse.data.synthetic import CLASS_NAMES
from dfsfuse.export import save_pretrained
from dfsfuse.models import create_model
from dfsfuse.semantic_bench import evaluate_segmenter, fast_settings, train_segmenter

from conftest import REPO, load_script

TINY = ["--size", "native", "--crop", "32x32", "--steps", "2", "--batch-size", "2",
        "--segmenter", "segmenter:backbone=mobilenetv3_small_050,fpn_dim=8", "--threads", "1"]


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _split(root: Path, names, seed: int, h: int = 40, w: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        _save(root / "ir" / f"{name}.png", rng.integers(0, 256, (h, w), dtype=np.uint8))
        _save(root / "vi" / f"{name}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        _save(root / "Segmentation_labels" / f"{name}.png", rng.integers(0, 9, (h, w), dtype=np.uint8))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """3 train + 2 test labelled pairs, a tiny exported teacher, and max fusions saved as a folder."""
    root = tmp_path_factory.mktemp("segbench")
    train = _split(root / "train", ["a", "b", "c"], 0)
    test = _split(root / "test", ["d", "e"], 1)
    torch.manual_seed(0)
    save_pretrained(create_model("teacher", dim=8, bottleneck_depth=1), root / "teacher")
    fused = root / "fused_max"
    for split in (train, test):
        for ir in sorted((split / "ir").iterdir()):
            vis = np.asarray(Image.open(split / "vi" / ir.name).convert("RGB")).astype(np.float32)
            y = np.round(np.float32(0.299) * vis[..., 0] + np.float32(0.587) * vis[..., 1]
                         + np.float32(0.114) * vis[..., 2])
            _save(fused / split.name / ir.name, baseline_fusion(np.asarray(Image.open(ir), np.float32), y, "max"))
    return {"root": root, "train": train, "test": test, "teacher": root / "teacher", "fused": fused}


def _argv(tiny: dict, out: Path, *extra: str) -> list:
    return ["segbench", "--train", str(tiny["train"]), "--test", str(tiny["test"]), "--teacher", str(tiny["teacher"]),
            "--model", f"student8={REPO / 'dfsfuse' / 'assets' / 'student'}", "--fused", f"maxdir={tiny['fused']}",
            *TINY, "--json", str(out), *extra]


def _run(tiny: dict, out: Path, *extra: str) -> dict:
    assert main(_argv(tiny, out, *extra)) == 0
    return json.loads(out.read_text())


def test_end_to_end_schema_every_kind_and_same_seed_same_numbers(tiny, tmp_path):
    first = _run(tiny, tmp_path / "a.json")
    kinds = ["ir", "vis", "avg", "max", "teacher", "student", "student8", "maxdir"]
    assert set(first) == {"settings", "miou", "iou", "precision", "recall", "confusion_per_seed",
                          "false_positives_far", "seeds"}
    assert list(first["miou"]) == kinds and list(first["iou"]) == kinds and first["seeds"] == [0]
    for kind in kinds:
        assert 0.0 <= first["miou"][kind] <= 1.0
        assert list(first["iou"][kind]) == list(CLASS_NAMES)
        assert all(v is None or 0.0 <= v <= 1.0 for v in first["iou"][kind].values())
        # the recorded confusion matrix counts every labelled test pixel, and IoU, precision and
        # recall are what it gives
        (m,) = first["confusion_per_seed"][kind]
        m = np.asarray(m, dtype=np.float64)
        assert m.shape == (9, 9) and m.sum() == 2 * 40 * 48  # two 40×48 test labels, none ignored
        tp = np.diag(m)
        with np.errstate(all="ignore"):
            rates = {"iou": tp / (m.sum(0) + m.sum(1) - tp), "precision": tp / m.sum(0), "recall": tp / m.sum(1)}
        for name, expected in rates.items():
            got = np.array([np.nan if v is None else v for v in first[name][kind].values()])
            np.testing.assert_allclose(got, expected, rtol=1e-9)
        far = [v for v in first["false_positives_far"][kind].values()]
        assert all(v is None or 0.0 <= v <= 1.0 for v in far)
        assert [v is None for v in far] == list(m.sum(0) - tp == 0)  # defined exactly where there are false positives
    # a folder of max fusions is the max kind, pixel for pixel: same training, same numbers
    assert first["miou"]["maxdir"] == first["miou"]["max"]
    assert first["iou"]["maxdir"] == first["iou"]["max"]
    s = first["settings"]
    assert s["mode"] == "train" and s["steps"] == 2 and s["train_pairs"] == 3 and s["test_pairs"] == 2
    assert s["wall_time_s"] > 0 and s["skipped"] == {} and len(s["class_weights"]) == 9
    png = tmp_path / "a.png"
    assert png.is_file() and Image.open(png).size[0] > 500

    again = _run(tiny, tmp_path / "b.json")
    assert again["miou"] == first["miou"] and again["iou"] == first["iou"]


def test_several_seeds_record_mean_and_per_seed(tiny, tmp_path):
    out = _run(tiny, tmp_path / "s.json", "--kinds", "ir", "max", "--seeds", "2")
    assert out["seeds"] == [0, 1] and set(out["miou_per_seed"]) == {"ir", "max", "student8", "maxdir"}
    for kind, values in out["miou_per_seed"].items():
        assert len(values) == 2 and out["miou"][kind] == pytest.approx(sum(values) / 2)
        per_class = out["iou_per_seed"][kind]
        assert list(per_class) == list(CLASS_NAMES)
        for seed, miou in enumerate(values):  # each seed's mIoU is the mean of its present classes
            present = [v[seed] for v in per_class.values() if v[seed] is not None]
            assert miou == pytest.approx(sum(present) / len(present))
    # --first-seed extends a run: seed 1 alone gives what it gave as the second of two seeds.
    later = _run(tiny, tmp_path / "s1.json", "--kinds", "ir", "max", "--seeds", "1", "--first-seed", "1")
    assert later["seeds"] == [1]
    for kind, miou in later["miou"].items():
        assert miou == out["miou_per_seed"][kind][1]


def test_a_stopped_run_keeps_its_finished_seeds_in_a_partial_json(tiny, tmp_path, monkeypatch, capsys):
    """Segmenters run seed-major; a run of four kinds and two seeds stopped during its fifth segmenter
    exits 130 and leaves ``FILE.partial.json`` with seed 0 of every kind, equal to seed 0 of the full
    run; a full run removes its partial file."""
    import dfsfuse.semantic_bench.run as sb_run  # run_benchmark looks _train_and_score up there

    args = ["--kinds", "ir", "max", "--seeds", "2"]  # + _run's student8 and maxdir kinds
    full = _run(tiny, tmp_path / "full.json", *args)
    assert not (tmp_path / "full.partial.json").exists()
    real, calls = sb_run._train_and_score, []

    def stop_at_fifth(*a, **kw):
        calls.append(a[5])  # the seed
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sb_run, "_train_and_score", stop_at_fifth)
    assert main(_argv(tiny, tmp_path / "cut.json", *args)) == 130 and "interrupted" in capsys.readouterr().err
    assert calls == [0, 0, 0, 0, 1]  # seed 0 of every kind first
    assert not (tmp_path / "cut.json").exists()
    kept = json.loads((tmp_path / "cut.partial.json").read_text())
    assert kept["seeds"] == [0] and kept["settings"]["partial"].startswith("4 of 8 segmenters finished")
    assert kept["miou"] == {k: v[0] for k, v in full["miou_per_seed"].items()}
    assert kept["confusion_per_seed"] == {k: v[:1] for k, v in full["confusion_per_seed"].items()}


def test_worker_plan_defaults_to_one_thread_per_core_on_cpu_only():
    from dfsfuse.commands.segbench import worker_plan

    assert worker_plan(None, None, "cpu", cores=2) == (2, 1)
    assert worker_plan(None, None, "cpu", cores=16) == (4, 4)
    assert worker_plan(None, 2, "cpu", cores=2) == (1, 2)     # --threads alone: one process, as before
    assert worker_plan(3, None, "cpu", cores=6) == (3, 2)
    # a GPU: the fast setting's small segmenters share it (one process is launch-bound); --full keeps one
    assert worker_plan(None, None, "cuda", cores=16) == (8, 2)
    assert worker_plan(None, None, "cuda:1", cores=4) == (4, 1)
    assert worker_plan(None, None, "cuda", cores=16, full=True) == (1, 16)
    assert worker_plan(None, 4, "cuda", cores=16) == (1, 4)
    with pytest.raises(ValueError, match="--workers must be at least 1"):
        worker_plan(0, None, "cpu")


def test_worker_processes_give_the_numbers_of_one_process(tiny, tmp_path, capsys):
    """--workers 2 (one thread each): every (kind, seed) segmenter equals the one-process run with one thread."""
    one = _run(tiny, tmp_path / "one.json", "--kinds", "ir", "teacher", "--seeds", "2")
    two = _run(tiny, tmp_path / "two.json", "--kinds", "ir", "teacher", "--seeds", "2", "--workers", "2")
    assert two["miou_per_seed"] == one["miou_per_seed"] and two["iou_per_seed"] == one["iou_per_seed"]
    assert two["settings"]["workers"] == 2 and two["settings"]["torch_threads"] == 1
    assert "workers" not in one["settings"]
    assert "training 8 segmenters in 2 processes" in capsys.readouterr().out
    argv = ["segbench", "--train", str(tiny["train"]), "--test", str(tiny["test"]), "--kinds", "ir", *TINY,
            "--workers", "0", "--json", str(tmp_path / "w0.json")]
    assert main(argv) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "w0.json").exists()


def test_kinds_without_value_benchmarks_only_the_named_models_and_folders(tiny, tmp_path, capsys):
    out = _run(tiny, tmp_path / "only.json", "--kinds")
    assert set(out["miou"]) == {"student8", "maxdir"}
    argv = ["segbench", "--train", str(tiny["train"]), "--test", str(tiny["test"]), "--kinds", *TINY,
            "--json", str(tmp_path / "none.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "no input kind" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "none.json").exists()


def test_library_training_is_seeded_and_learns_a_trivial_task():
    """Bright rectangles labelled 1 on a dark background: a few dozen steps segment them."""
    settings = fast_settings(size=None, crop=(32, 32), steps=30, batch_size=4, lr=5e-3, warmup_steps=2,
                             segmenter="segmenter:backbone=mobilenetv3_small_050,fpn_dim=8", seg_loss="plain")
    g = torch.Generator().manual_seed(0)
    images, labels = [], []
    for _ in range(6):
        label = torch.zeros(48, 48, dtype=torch.long)
        top, left = torch.randint(0, 24, (2,), generator=g).tolist()
        label[top:top + 20, left:left + 20] = 1
        noise = torch.randint(0, 40, (48, 48), generator=g)
        images.append((noise + 180 * label).clamp(0, 255).to(torch.uint8)[None])
        labels.append(label)
    losses: list = []
    a = train_segmenter(images, labels, settings, seed=3, on_step=lambda step, loss: losses.append(loss))
    b = train_segmenter(images, labels, settings, seed=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])
    untrained = train_segmenter(images, labels, fast_settings(**{**settings.__dict__, "steps": 1, "lr": 1e-9}), seed=3)
    trained_iou = evaluate_segmenter(a, images, labels)[0].iou()[:2].mean()
    assert trained_iou > evaluate_segmenter(untrained, images, labels)[0].iou()[:2].mean() + 0.05


def test_ema_returns_the_moving_average_of_the_weights_along_training():
    """--ema: the scored segmenter is the warm-up EMA of every step's weights and BN statistics.

    Independent computation: the weights after k steps come from separate runs of k steps (a
    warm-up longer than the run makes step k's learning rate independent of the total), averaged
    by hand with the documented decay ``min(decay, 1 - (1 + (k - 1))^(-2/3))`` (0 at step 1).
    """
    base = dict(size=None, crop=(32, 32), batch_size=2, lr=5e-3, warmup_steps=100,
                segmenter="segmenter:backbone=mobilenetv3_small_050,fpn_dim=8", seg_loss="plain")
    g = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 255, (1, 40, 40), generator=g, dtype=torch.uint8) for _ in range(4)]
    labels = [torch.randint(0, 3, (40, 40), generator=g) for _ in range(4)]
    steps, decay = 4, 0.6
    trajectory = [train_segmenter(images, labels, fast_settings(**base, steps=k), seed=5).state_dict()
                  for k in range(1, steps + 1)]
    expected = {name: value.clone() for name, value in trajectory[0].items()}
    for k in range(2, steps + 1):
        d = min(decay, 1.0 - (1.0 + (k - 1)) ** (-2.0 / 3.0))
        for name, value in trajectory[k - 1].items():
            expected[name] = d * expected[name] + (1 - d) * value if value.is_floating_point() else value.clone()
    got = train_segmenter(images, labels, fast_settings(**base, steps=steps, ema=decay), seed=5).state_dict()
    last = trajectory[-1]
    moved = [name for name in got if got[name].is_floating_point() and not torch.allclose(got[name], last[name])]
    assert moved, "the EMA model equals the last weights"
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="EMA decay"):
        fast_settings(**base, steps=1, ema=1.0).validate()


def test_class_crops_hold_a_labelled_class_and_leave_plain_crops_unchanged():
    """--class-crops 1: every crop of an image with a labelled class holds some of it (here a 2×2
    patch a plain 16×16 crop of 60×80 rarely sees); an image of background only still gets a crop;
    --class-crops 0 draws exactly the plain crops (same generator calls as before the option)."""
    from dfsfuse.semantic_bench.training import _sample_batch

    label = torch.zeros(60, 80, dtype=torch.long)
    label[2:4, 70:72] = 8
    images = [torch.arange(60 * 80).reshape(1, 60, 80).remainder(251).to(torch.uint8)] * 2
    labels = [label, torch.zeros(60, 80, dtype=torch.long)]
    g = torch.Generator().manual_seed(0)
    hits = [bool((_sample_batch(images, labels, [0, 1], (16, 16), True, g, class_crops=1.0)[1][0] == 8).any())
            for _ in range(40)]
    assert all(hits)
    g = torch.Generator().manual_seed(0)
    plain = [bool((_sample_batch(images, labels, [0], (16, 16), True, g)[1] == 8).any()) for _ in range(40)]
    assert sum(plain) < 10
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x, y = _sample_batch(images, labels, [0], (16, 16), True, g, class_crops=0.0)
    top = int(torch.randint(0, 60 - 16 + 1, (1,), generator=ref))
    left = int(torch.randint(0, 80 - 16 + 1, (1,), generator=ref))
    flip = bool(torch.rand(1, generator=ref) < 0.5)
    expected = labels[0][top:top + 16, left:left + 16]
    assert torch.equal(y[0], expected.flip(-1) if flip else expected)


def test_quick_mode_scores_one_segmenter_on_every_kind(tiny, tmp_path):
    torch.manual_seed(0)
    seg_dir = tmp_path / "seg"
    save_pretrained(create_model("segmenter", backbone="mobilenetv3_small_050", fpn_dim=8), seg_dir)
    out_path = tmp_path / "q.json"
    argv = ["segbench", "--quick", str(seg_dir), "--test", str(tiny["test"]), "--teacher", str(tiny["teacher"]),
            "--fused", f"maxdir={tiny['fused']}", "--json", str(out_path), "--threads", "1"]
    assert main(argv) == 0
    out = json.loads(out_path.read_text())
    assert list(out["miou"]) == ["ir", "vis", "avg", "max", "teacher", "student", "maxdir"]
    assert out["seeds"] == [] and out["settings"]["mode"] == "quick"
    assert all(0.0 <= m <= 1.0 for m in out["miou"].values())
    assert out["miou"]["maxdir"] == out["miou"]["max"]
    assert (tmp_path / "q.png").is_file()
    # the same segmenter scored twice gives the same numbers
    assert main(argv[:-4] + ["--json", str(tmp_path / "r.json"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["miou"] == out["miou"]


def test_color_mode_recolours_every_kind_but_ir_with_the_visible_chroma(tiny):
    """--color: VIS seen through the benchmark is the visible image itself (to rounding), IR alone is
    grey RGB, a fusion keeps its luminance and takes the visible chroma; segmenters read 3 channels."""
    from dfsfuse.data.io import rgb_to_luma
    from dfsfuse.semantic_bench import InputKind, build_segmenter, colour_images, load_labelled_split, render

    split = load_labelled_split(tiny["test"])
    vis = colour_images(InputKind("vis", rule="vis"), render(InputKind("vis", rule="vis"), split), split)
    ir = colour_images(InputKind("ir", rule="ir"), render(InputKind("ir", rule="ir"), split), split)
    fused = colour_images(InputKind("max", rule="max"), render(InputKind("max", rule="max"), split), split)
    for i, name in enumerate(split.names):
        rgb = np.asarray(Image.open(tiny["test"] / "vi" / f"{name}.png").convert("RGB")).astype(np.int64)
        assert vis[i].shape == (3, *rgb.shape[:2]) and vis[i].dtype == torch.uint8
        # Y rounded to 8 bits moves each channel by at most a grey level or two
        assert np.abs(vis[i].permute(1, 2, 0).numpy().astype(np.int64) - rgb).max() <= 2
        assert torch.equal(ir[i], split.ir[i].expand(3, -1, -1))
        # the luminance is the fusion's wherever no channel was clipped to [0, 255]
        rgb_fused = fused[i].permute(1, 2, 0).numpy()
        inside = ((rgb_fused > 0) & (rgb_fused < 255)).all(-1)
        y = rgb_to_luma(rgb_fused.astype(np.float32))
        expected = np.maximum(split.ir[i][0].numpy(), split.vis[i][0].numpy()).astype(np.float64)
        assert inside.mean() > 0.3 and np.abs(y - expected)[inside].max() <= 2.0
    model = build_segmenter("segmenter:backbone=mobilenetv3_small_050,fpn_dim=8", in_chans=3)
    assert model.arch_kwargs["in_chans"] == 3
    assert model.eval()(torch.rand(1, 3, 32, 32)).logits.shape == (1, 9, 32, 32)
    with pytest.raises(ValueError, match="in_chans"):
        create_model("segmenter", backbone="mobilenetv3_small_050", in_chans=2)


def test_color_runs_end_to_end_and_quick_mode_checks_the_segmenters_channels(tiny, tmp_path, capsys):
    out = _run(tiny, tmp_path / "c.json", "--kinds", "ir", "vis", "max", "--color")
    assert out["settings"]["color"] is True and list(out["miou"]) == ["ir", "vis", "max", "student8", "maxdir"]
    assert out["miou"]["maxdir"] == out["miou"]["max"]  # a folder of max fusions, recoloured the same way
    assert (tmp_path / "c.png").is_file()
    assert "RGB input" in capsys.readouterr().out
    grey = _run(tiny, tmp_path / "g.json", "--kinds", "vis")
    assert grey["settings"]["color"] is False and grey["miou"]["vis"] != out["miou"]["vis"]
    torch.manual_seed(0)
    rgb_dir, grey_dir = tmp_path / "seg3", tmp_path / "seg1"
    save_pretrained(create_model("segmenter", backbone="mobilenetv3_small_050", fpn_dim=8, in_chans=3), rgb_dir)
    save_pretrained(create_model("segmenter", backbone="mobilenetv3_small_050", fpn_dim=8), grey_dir)
    quick = ["segbench", "--test", str(tiny["test"]), "--kinds", "ir", "vis", "--threads", "1"]
    assert main(quick + ["--quick", str(rgb_dir), "--color", "--json", str(tmp_path / "q.json")]) == 0
    assert json.loads((tmp_path / "q.json").read_text())["settings"]["color"] is True
    capsys.readouterr()
    for seg, extra in ((grey_dir, ["--color"]), (rgb_dir, [])):
        assert main(quick + ["--quick", str(seg), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert str(seg) in err and "channel" in err and len(err.splitlines()) == 1, err


def test_missing_shipped_model_is_skipped_with_a_note(tiny, tmp_path, monkeypatch, capsys):
    import dfsfuse.semantic_bench.kinds as sb_kinds  # resolve_kinds looks package_asset up there

    monkeypatch.setattr(sb_kinds, "package_asset", lambda name: tmp_path / "assets" / name)
    out_path = tmp_path / "k.json"
    argv = ["segbench", "--train", str(tiny["train"]), "--test", str(tiny["test"]), "--kinds", "ir", "teacher",
            *TINY, "--json", str(out_path)]
    assert main(argv) == 0
    out = json.loads(out_path.read_text())
    assert list(out["miou"]) == ["ir"] and "teacher" in out["settings"]["skipped"]
    assert "skipping teacher" in capsys.readouterr().out


def _copy_split(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("problem", ["bad-class", "wrong-size", "missing-label", "missing-fused", "no-labels"])
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tiny, tmp_path, capsys, problem):
    test = _copy_split(tiny["test"], tmp_path / "test")
    extra = []
    if problem == "bad-class":
        label = np.zeros((40, 48), np.uint8)
        label[5, 5] = 9
        _save(test / "Segmentation_labels" / "e.png", label)
        expected = "Segmentation_labels/e.png: label has classes [9] outside 0..8"
    elif problem == "wrong-size":
        _save(test / "Segmentation_labels" / "e.png", np.zeros((40, 47), np.uint8))
        expected = "Segmentation_labels/e.png: label size 47x40 does not match the pair's 48x40"
    elif problem == "missing-label":
        (test / "Segmentation_labels" / "e.png").unlink()
        expected = "ir/e.png: no label named e.*"
    elif problem == "missing-fused":
        fused = _copy_split(tiny["fused"], tmp_path / "fused")
        (fused / "test" / "d.png").unlink()
        extra = ["--fused", f"f={fused}"]
        expected = "fused image for kind 'f' not found"
    else:
        import shutil

        shutil.rmtree(test / "Segmentation_labels")
        expected = "no Segmentation_labels/ folder"
    out_path = tmp_path / "x.json"
    argv = ["segbench", "--train", str(tiny["train"]), "--test", str(test), "--kinds", "ir", *extra, *TINY,
            "--json", str(out_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not out_path.exists() and not out_path.with_suffix(".png").exists()


def test_weight_c_sets_the_enet_weights_the_segmenters_train_with(tiny, tmp_path):
    """``--weight-c`` is ENet's ``c``: the recorded weights are 1/ln(c + p) of the training labels'
    class frequencies (counted here independently); the default is ENet's 1.02."""
    counts = np.zeros(9)
    for f in sorted((tiny["train"] / "Segmentation_labels").iterdir()):
        counts += np.bincount(np.asarray(Image.open(f)).ravel(), minlength=9)
    p = counts / counts.sum()
    runs = {c: _run(tiny, tmp_path / f"c{c}.json", "--kinds", "ir", "--weight-c", c) for c in ("1.02", "1.5")}
    for c, out in runs.items():
        assert out["settings"]["weight_c"] == float(c)
        np.testing.assert_allclose(out["settings"]["class_weights"], 1.0 / np.log(float(c) + p), rtol=1e-9)
    assert runs["1.02"]["miou"]["ir"] == _run(tiny, tmp_path / "default.json", "--kinds", "ir")["miou"]["ir"]


def test_bad_options_are_one_line_errors(tiny, tmp_path, capsys):
    base = ["segbench", "--train", str(tiny["train"]), "--test", str(tiny["test"]), "--kinds", "ir"]
    for extra, expected in ((["--kinds", "thermal"], "unknown input kind 'thermal'"),
                            (["--model", "x"], "expected NAME=PATH"),
                            (["--model", f"x={tmp_path / 'nope'}"], "model folder not found"),
                            (["--teacher", str(tmp_path / "nope"), "--kinds", "teacher"], "no exported teacher"),
                            (["--size", "abc"], "--size"),
                            (["--seeds", "0"], "--seeds"),
                            (["--first-seed", "-1"], "--first-seed"),
                            (["--ema", "1.5"], "EMA decay"),
                            (["--class-crops", "2"], "class-crop probability"),
                            (["--weight-c", "1.0"], "class-weight c must be greater than 1"),
                            (["--quick", str(tmp_path)], "no exported segmenter"),
                            (["--png", str(tmp_path)], "is a folder; --png takes a file path"),
                            (["--json", str(tmp_path)], "is a folder; --json takes a file path")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err


def test_benchmark_script_uses_the_same_code(tiny, tmp_path):
    script = load_script(REPO / "benchmarks" / "semantic.py", "semantic_benchmark")
    out = tmp_path / "bench.json"
    assert script.main(["--train", str(tiny["train"]), "--test", str(tiny["test"]), "--kinds", "vis", *TINY,
                        "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert list(data["miou"]) == ["vis"] and math.isfinite(data["miou"]["vis"])
    assert script.main(["--test", str(tmp_path / "nope")]) == 2


def test_device_cache_gives_the_numbers_of_the_image_folders(tmp_path, monkeypatch):
    """``benchmarks/device``: a split cached by ``make_cache.py`` and benchmarked by
    ``segbench_cached.py`` scores exactly as the benchmark on the image folders themselves."""
    import subprocess
    import sys

    data = tmp_path / "msrs"
    _split(data / "train", ["a", "b"], 2, 480, 640)
    _split(data / "val", ["c", "d"], 3, 480, 640)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEGBENCH_CACHE": str(tmp_path / "c.npz")}
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "device" / "make_cache.py"), "--data", str(data),
                    "--out", str(tmp_path / "c.npz")], check=True, env=env, capture_output=True)
    common = ["--kinds", "ir", "max", *TINY[2:], "--size", "240x320", "--workers", "1"]
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "device" / "segbench_cached.py"), *common,
                    "--json", str(tmp_path / "cached.json")], check=True, env=env, capture_output=True, cwd=tmp_path)
    assert main(["segbench", "--train", str(data / "train"), "--test", str(data / "val"), *common,
                 "--json", str(tmp_path / "folders.json")]) == 0
    cached, folders = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("cached", "folders"))
    assert cached["miou"] == folders["miou"] and cached["confusion_per_seed"] == folders["confusion_per_seed"]
    assert cached["settings"]["class_weights"] == folders["settings"]["class_weights"]
    # and the cached tensors are the folders' own, bit for bit
    from dfsfuse.semantic_bench import load_labelled_split

    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "c.npz"))
    cached_split = load_script(REPO / "benchmarks" / "device" / "segbench_cached.py", "segbench_cached").load(
        data / "val", (240, 320))
    split = load_labelled_split(data / "val", (240, 320))
    assert cached_split.names == split.names == ["c", "d"] and cached_split.native == split.native
    for key in ("ir", "vis", "labels"):
        for a, b in zip(getattr(cached_split, key), getattr(split, key)):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_parser_constants_agree_with_the_library_and_import_no_torch():
    import subprocess
    import sys

    from dfsfuse.commands import segbench
    from dfsfuse.losses import SEG_LOSS_MODES
    from dfsfuse.semantic_bench import BUILTIN_KINDS, DEFAULT_KINDS

    assert segbench.DEFAULT_KINDS == DEFAULT_KINDS and segbench.BUILTIN_KINDS == BUILTIN_KINDS and set(segbench.SEG_LOSS_CHOICES) == set(SEG_LOSS_MODES)
    code = ("import argparse, sys; from dfsfuse.commands import segbench; "
            "segbench.register(argparse.ArgumentParser().add_subparsers()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_label_oracle_shows_ir_exactly_on_the_grown_class_masks(tiny, tmp_path, capsys):
    """benchmarks/label_oracle.py: IR on the labelled people grown by ``--dilate`` px, VIS
    luminance elsewhere (against the 8-bit inputs the benchmark reads), one file per pair, and
    a one-line error for a folder without labels; its output is a valid ``--fused`` folder."""
    script = load_script(REPO / "benchmarks" / "label_oracle.py", "label_oracle")
    out = tmp_path / "oracle"
    assert script.main(["--folders", str(tiny["train"]), str(tiny["test"]), "--out", str(out), "--dilate", "1"]) == 0
    for split in (tiny["train"], tiny["test"]):
        assert sorted(p.name for p in (out / split.name).iterdir()) == sorted(p.name for p in (split / "ir").iterdir())
        for ir_path in (split / "ir").iterdir():
            ir = np.asarray(Image.open(ir_path), np.float32)
            rgb = np.asarray(Image.open(split / "vi" / ir_path.name).convert("RGB")).astype(np.float32)
            vis = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
            label = np.asarray(Image.open(split / "Segmentation_labels" / ir_path.name))
            person = np.pad(label == 2, 1)
            grown = np.zeros_like(label, dtype=bool)
            for dy, dx in ((1, 1), (0, 1), (2, 1), (1, 0), (1, 2)):   # 4-neighbourhood dilation, by hand
                grown |= person[dy:dy + label.shape[0], dx:dx + label.shape[1]]
            fused = np.asarray(Image.open(out / split.name / ir_path.name), np.float32)
            np.testing.assert_allclose(fused[grown], ir[grown], atol=0.5)
            np.testing.assert_allclose(fused[~grown], vis[~grown], atol=1.01)
    unlabelled = tmp_path / "unlabelled"
    for sub in ("ir", "vi"):
        (unlabelled / sub).mkdir(parents=True)
        for p in (tiny["test"] / sub).iterdir():
            (unlabelled / sub / p.name).write_bytes(p.read_bytes())
    assert script.main(["--folders", str(unlabelled), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no Segmentation_labels" in err and str(unlabelled) in err and len(err.splitlines()) == 1
    data = _run(tiny, tmp_path / "with_oracle.json", "--kinds", "vis", "--fused", f"oracle={out}")
    assert math.isfinite(data["miou"]["oracle"])


def test_cpu_defaults_follow_the_affinity_mask(monkeypatch):
    """Restricted to one CPU (``taskset``, a cgroup cpuset) on a many-core machine, every CPU default
    follows the mask, not the machine: segbench's worker plan, fuse's workers, training threads."""
    import os
    from types import SimpleNamespace

    from dfsfuse import cpus
    from dfsfuse.commands.fuse import default_workers
    from dfsfuse.commands.segbench import worker_plan
    from dfsfuse.train.config import load_config
    from dfsfuse.train.stages import apply_cpu_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
        assert cpus.available_cpus() == 1
        assert worker_plan(None, None, "cpu") == (1, 1)
        assert default_workers() == 1
        before = torch.get_num_threads()
        try:
            one_process = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
            assert apply_cpu_threads(load_config(overrides=["train.cpu_threads=0"]), one_process) == 1
        finally:
            torch.set_num_threads(before)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows: the CPU count
    assert cpus.available_cpus() == 64
    assert worker_plan(None, None, "cpu") == (4, 16)
    assert default_workers() == 4


def test_pretrain_segmenter_trains_on_every_rule_and_writes_a_model_folder(tiny, tmp_path, capsys):
    """recipes/pretrain_segmenter.py: one segmenter pre-trained on the labelled pairs rendered by
    each of ``--rules`` (pairs × rules images), written as a model folder with its pretraining
    record (what ``distill.py --segmenter`` and ``loss.seg_ce_class_segmenter`` read); an unknown
    rule or an existing output is a one-line error that writes nothing."""
    from dfsfuse.export import from_pretrained

    script = load_script(REPO / "recipes" / "pretrain_segmenter.py", "pretrain_segmenter")
    config = tmp_path / "tiny.yaml"
    config.write_text(f"data:\n  train:\n    - {{root: {tiny['train']}, name: tiny}}\n  labels: true\n"
                      "model:\n  segmenter: segmenter\n  segmenter_kwargs: {backbone: mobilenetv3_small_050, fpn_dim: 8}\n"
                      "segmenter:\n  crop: [32, 32]\n  batch_size: 2\n")
    out = tmp_path / "seg_irvis"
    args = ["--rules", "ir,vis", "--out", str(out), "--config", str(config), "--steps", "2"]
    assert script.main(args) == 0
    card = json.loads((out / "config.json").read_text())
    assert card["pretraining"]["input"] == "ir+vis" and card["pretraining"]["pairs"] == 2 * 3
    assert card["role"] == "segmenter" and card["train_steps"] == 2
    assert from_pretrained(out).num_classes == 9
    capsys.readouterr()
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as exc:
        script.main(args)
    assert exc.value.code == 2 and "exists" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    with pytest.raises(SystemExit):
        script.main(["--rules", "ir,nope", "--out", str(tmp_path / "other")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'nope'" in err and not (tmp_path / "other").exists()
    half = tmp_path / "seg_half"
    assert script.main(["--rules", "max", "--out", str(half), "--config", str(config), "--steps", "2",
                        "--size", "32x40", "--crop", "24x32"]) == 0
    record = json.loads((half / "config.json").read_text())["pretraining"]
    assert record["size"] == [32, 40] and record["crop"] == [24, 32] and card["pretraining"]["size"] == "native"
    with pytest.raises(SystemExit):
        script.main(["--rules", "max", "--out", str(tmp_path / "bad"), "--size", "0x40"])
    assert "--size" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # a crop larger than --size, given or the config's (32x32), is an error before any training
    for size, extra, named in (("32x40", ["--crop", "24x48"], "--crop 24x48"), ("24x40", [], "segmenter.crop")):
        with pytest.raises(SystemExit):
            script.main(["--rules", "max", "--out", str(tmp_path / "bad"), "--config", str(config), "--steps", "2",
                         "--size", size, *extra])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert named in err and f"does not fit inside --size {size}" in err and not (tmp_path / "bad").exists()


def test_probe_rules_match_their_formulas_and_write_one_folder_per_rule(tiny, tmp_path, capsys):
    """benchmarks/probe_rules.py: the IR-base pyramid gives IR back when both sources are IR and
    keeps IR's shading under VIS's edges; the darkening never touches pixels where VIS is not brighter;
    the script writes every pair of every folder, and a missing folder is a one-line error."""
    script = load_script(REPO / "benchmarks" / "probe_rules.py", "probe_rules")
    rng = np.random.default_rng(0)
    ir = rng.uniform(0, 255, (40, 48))
    assert np.allclose(script.ir_base_fusion(ir, ir, 2), ir)
    flat = np.full((40, 48), 100.0)  # VIS: a flat field plus a vertical edge; IR: a smooth ramp
    vis = flat.copy()
    vis[:, 24:] = 180.0
    ramp = np.tile(np.linspace(20, 60, 48), (40, 1))
    fused = script.ir_base_fusion(ramp, vis, 4)
    assert abs(fused.mean() - ramp.mean()) < 2.0  # IR's brightness …
    assert fused[:, 26].mean() - fused[:, 21].mean() > 40  # … with VIS's edge on it
    cold = ir + 30.0  # IR warmer everywhere: nothing to darken
    assert np.allclose(script.RULES["darkcold"](cold, ir), script.region_max_fusion(cold, ir))
    assert np.all(script.RULES["darkcold"](ir, ir + 50) <= script.region_max_fusion(ir, ir + 50) + 1e-9)
    out = tmp_path / "rules"
    assert script.main(["--rules", "irbase2", "darkhalo", "--folders", str(tiny["train"]), str(tiny["test"]),
                        "--out", str(out)]) == 0
    for rule in ("irbase2", "darkhalo"):
        assert sorted(p.name for p in (out / rule / "train").iterdir()) == ["a.png", "b.png", "c.png"]
        assert sorted(p.name for p in (out / rule / "test").iterdir()) == ["d.png", "e.png"]
    image = np.asarray(Image.open(out / "irbase2" / "test" / "d.png"))
    assert image.dtype == np.uint8 and image.shape == (40, 48)
    capsys.readouterr()
    assert script.main(["--rules", "irbase2", "--folders", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and len(err.splitlines()) == 1, err
