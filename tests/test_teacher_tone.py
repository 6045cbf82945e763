"""A teacher that brightens dark visible images (``vis_tone``): the model, its export, and how
stages 1 and 2 hand it and its losses the raw and the brightened image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from dfsfuse.models import create_model
from dfsfuse.models.blocks import brighten_dark
from dfsfuse.train import stages
from dfsfuse.train.config import load_config
from dfsfuse.train.objectives import TeacherObjective

SMALL = {"dim": 8, "bottleneck_depth": 1, "head": "region-contrast"}


def _pair(size=(32, 40), batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *size, generator=g), torch.rand(batch, 1, *size, generator=g)


def _random_weights(model, seed: int = 0):
    """Non-trivial weights everywhere (a fresh head is zero and would hide differences)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def test_toning_teacher_fuses_the_brightened_image_and_survives_export(tmp_path):
    """A night image (mean 0.1) is fused as ``vis^γ``, γ = ln 0.4 / ln m per image (numpy, independently);
    a day image exactly as given; the option is saved and rebuilt; values outside [0, 1) are refused."""
    from dfsfuse.export import from_pretrained, save_pretrained

    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="vis_tone"):
            create_model("teacher", **SMALL, vis_tone=bad)
    toned = _random_weights(create_model("teacher", **SMALL, vis_tone=0.4))
    plain = create_model("teacher", **SMALL).eval()
    plain.load_state_dict(toned.state_dict())
    ir, vis = _pair()
    night, day = vis * 0.2, 0.5 + 0.5 * vis
    gammas = [np.log(0.4) / np.log(float(np.mean(v))) for v in night.numpy()]
    assert all(0.35 < g < 1 for g in gammas)
    brightened = torch.from_numpy(np.stack([v.astype(np.float64) ** g for v, g in zip(night.numpy(), gammas)])).float()
    with torch.no_grad():
        torch.testing.assert_close(toned(ir, night).fused, plain(ir, brightened).fused, rtol=0, atol=1e-5)
        torch.testing.assert_close(toned(ir, day).fused, plain(ir, day).fused, rtol=0, atol=0)
        assert not torch.allclose(toned(ir, night).fused, plain(ir, night).fused, atol=1e-3)
        loaded = from_pretrained(save_pretrained(toned, tmp_path / "toned"))
        assert loaded.vis_tone == 0.4 and loaded.arch_config()["kwargs"]["vis_tone"] == 0.4
        torch.testing.assert_close(loaded(ir, night).fused, toned(ir, night).fused, rtol=0, atol=0)


def test_toned_batch_keeps_the_raw_image_beside_the_brightened_one():
    ir, vis = _pair()
    batch = {"ir": ir, "vis_y": vis * 0.2}
    assert stages.toned_batch(batch, 0.0) is batch
    toned = stages.toned_batch(batch, 0.4)
    assert toned["vis_y_raw"] is batch["vis_y"] and toned["ir"] is ir
    torch.testing.assert_close(toned["vis_y"], brighten_dark(batch["vis_y"], 0.4), rtol=0, atol=0)
    assert "vis_y_raw" not in batch  # the loader's batch is not modified


def _captured_forward(monkeypatch):
    """Replace the stages' training loop by one that keeps the ``forward`` it was given."""
    captured = {}

    def fake_train_stage(accelerator, name, objective, optimizer, loader, *args, forward=None, **kwargs):
        captured["forward"], captured["objective"] = forward, objective
        return None

    monkeypatch.setattr(stages, "train_stage", fake_train_stage)
    monkeypatch.setattr(stages, "export_teacher", lambda *args, **kwargs: None)
    return captured


def _tiny_cfg(*extra):
    return load_config(overrides=["data.synthetic=4", "data.synthetic_size=48", "data.crop=32", "data.repeat_real=1",
                                  "teacher.batch_size=2", "student.batch_size=2", *extra])


def test_stage_one_gives_a_toning_teacher_the_raw_image_and_its_losses_the_brightened_one(monkeypatch, tmp_path):
    """The loss stage 1 optimises equals an independent computation: the teacher fed the raw night
    image, the fusion loss and the segmenter's CE on the brightened one."""
    captured = _captured_forward(monkeypatch)
    cfg = _tiny_cfg("loss.seg_ce=1.0")
    teacher = _random_weights(create_model("teacher", **SMALL, vis_tone=0.4))
    segmenter = create_model("segmenter", backbone="mobilenetv3_small_100", fpn_dim=8).eval()
    seen = []
    teacher.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    stages.train_teacher(Accelerator(cpu=True), cfg, teacher, segmenter, tmp_path)
    assert captured["forward"] is not None
    ir, vis = _pair()
    raw = vis * 0.2
    batch = {"ir": ir, "vis_y": raw, "seg": torch.zeros(2, 32, 40, dtype=torch.long)}
    objective: TeacherObjective = captured["objective"]
    objective.eval()
    with torch.no_grad():
        terms = captured["forward"](batch)
        assert len(seen) == 1 and torch.equal(seen[0], raw)
        fused = teacher(ir, raw).fused
        expected = objective.fusion_loss(fused, ir, brighten_dark(raw, 0.4))
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value)
    # a teacher without the option trains on the loader's batch as before
    captured.clear()
    stages.train_teacher(Accelerator(cpu=True), cfg, create_model("teacher", **SMALL), segmenter, tmp_path)
    assert captured["forward"] is None


def test_config_refuses_a_toning_teacher_with_ssvif():
    from dfsfuse.train.config import ConfigError

    with pytest.raises(ConfigError, match="vis_tone.*ssvif"):
        _tiny_cfg("train.stage1=ssvif", "loss.consistency=1.0", "model.teacher_kwargs={vis_tone: 0.4}")
    _tiny_cfg("train.stage1=ssvif", "loss.consistency=1.0", "model.teacher_kwargs={vis_tone: 0.0}")  # off: fine


@pytest.mark.parametrize("teacher_tone", [0.0, 0.4])
def test_stage_two_gives_the_teacher_the_image_it_was_trained_on(monkeypatch, tmp_path, teacher_tone):
    """With a toning student the stage brightens the batch; a teacher that tones itself gets the raw
    image (as in its stage 1), one that does not gets the brightened image."""
    captured = _captured_forward(monkeypatch)
    cfg = _tiny_cfg("loss.seg_ce=0", "loss.seg_kl=0", "loss.semantic_weighting=false")
    teacher = _random_weights(create_model("teacher", **SMALL, vis_tone=teacher_tone))
    student = create_model("student_fast", head="region-contrast", vis_tone=0.4)
    seen = []
    teacher.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    stages.distill_student(Accelerator(cpu=True), cfg, teacher, None, student, tmp_path)
    ir, vis = _pair()
    raw = vis * 0.2
    with torch.no_grad():
        captured["forward"]({"ir": ir, "vis_y": raw})
    assert len(seen) == 1
    expected = raw if teacher_tone else brighten_dark(raw, 0.4)
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)
