"""``student_fast``: contract (shapes, odd sizes, features), re-parameterisation, ONNX, compile, distillation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfsfuse.losses.distill import FeatureDistillLoss
from dfsfuse.models import FUSION_FEATURES, FusionOutput, create_model, model_from_config, profile
from dfsfuse.models.student_fast import RepConv, StudentFast, pad_to_scale


def _pair(size: tuple[int, int], batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *size, generator=g), torch.rand(batch, 1, *size, generator=g)


def _trained_like(model: StudentFast, seed: int = 0) -> StudentFast:
    """Random non-trivial weights everywhere (a fresh head is near zero and would hide differences)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model.eval()


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (61, 77), (64, 64), (475, 575)])
@pytest.mark.parametrize("scale", [2, 4])
def test_shapes_and_features_at_any_size(size, scale):
    model = create_model("student_fast", scale=scale)
    ir, vis = _pair(size)
    out = model(ir, vis)
    assert isinstance(out, FusionOutput)
    assert out.fused.shape == (2, 1, *size)
    assert out.fused.min() >= 0 and out.fused.max() <= 1
    assert tuple(out.features) == FUSION_FEATURES
    reduced = tuple(-(-n // scale) for n in size)
    assert model.feature_stride == scale
    for name, channels in model.feature_channels.items():
        assert out.features[name].shape == (2, channels, *reduced), name


@pytest.mark.parametrize("head", ["region", "blend", "residual"])
def test_fresh_model_starts_near_max_and_padding_is_replicate(head):
    model = create_model("student_fast", head=head).eval()
    ir, vis = _pair((30, 41), batch=1)
    with torch.no_grad():
        fused = model(ir, vis).fused
        model.head.weight.zero_()
        model.head.bias.zero_()
        base = model(ir, vis).fused
    assert (fused - base).abs().mean() < 0.1  # a small head: near the base
    if head == "residual":  # a zero head is exactly the max rule
        torch.testing.assert_close(base, torch.maximum(ir, vis))
    elif head == "region":  # a zero head is the region-max rule
        from dfsfuse.baselines import region_max_fusion

        rule = region_max_fusion(ir[0, 0].double().numpy() * 255, vis[0, 0].double().numpy() * 255) / 255
        torch.testing.assert_close(base[0, 0].double(), torch.from_numpy(rule), atol=1e-5, rtol=0)
    else:  # a zero head is the soft maximum w·ir + (1 − w)·vis with w = sigmoid(20·(ir − vis))
        w = torch.sigmoid(20 * (ir - vis))
        torch.testing.assert_close(base, (w * ir + (1 - w) * vis).clamp(0, 1))
    x = torch.arange(15.0).reshape(1, 1, 3, 5)
    padded = pad_to_scale(x, 4)
    assert padded.shape == (1, 1, 4, 8)
    torch.testing.assert_close(padded[..., :3, :5], x)
    torch.testing.assert_close(padded[..., 3, :5], x[..., 2, :])  # bottom row repeated
    torch.testing.assert_close(padded[..., :3, 7], x[..., :, 4])  # right column repeated


def test_kwargs_validation_and_rebuild():
    with pytest.raises(ValueError, match="head"):
        create_model("student_fast", head="nope")
    with pytest.raises(ValueError, match="positive"):
        create_model("student_fast", scale=0)
    with pytest.raises(ValueError, match="upsample"):
        create_model("student_fast", upsample="nearest")
    model = create_model("student_fast", width=8, scale=2)
    assert model.arch_config() == {"architecture": "student_fast",
                                   "kwargs": {"width": 8, "scale": 2, "head": "region", "upsample": "bilinear",
                                              "vis_tone": 0.0}}
    assert isinstance(model_from_config(model.arch_config()), StudentFast)
    # Exported before the kwarg existed: the head was a pixel shuffle, and its weights must still load.
    old = model_from_config({"architecture": "student_fast", "kwargs": {"width": 8, "scale": 2, "head": "region"}})
    assert old.upsample == "shuffle" and old.head.out_channels == 2 * 2 * 2


def test_vis_tone_fuses_the_brightened_visible_image_and_survives_export(tmp_path):
    """``vis_tone``: a night image (mean 0.1) is fused as ``vis^γ`` with γ = ln 0.4 / ln 0.1 per image
    (numpy, independently), a day image (mean above the target) exactly as given; the same weights
    without the option, fed the brightened image, give the same fusion; the option is saved and
    rebuilt by from_pretrained; values outside [0, 1) are refused."""
    from dfsfuse.export import from_pretrained, save_pretrained

    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="vis_tone"):
            create_model("student_fast", vis_tone=bad)
    toned = _trained_like(create_model("student_fast", head="region-contrast", vis_tone=0.4))
    plain = create_model("student_fast", head="region-contrast")
    plain.load_state_dict(toned.state_dict())
    plain.eval()
    ir, vis = _pair((32, 40))
    night = vis * 0.2  # mean ≈ 0.1
    day = 0.5 + 0.5 * vis  # mean ≈ 0.75
    gammas = [np.log(0.4) / np.log(float(np.mean(v))) for v in night.numpy()]
    brightened = torch.from_numpy(np.stack([v ** g for v, g in zip(night.numpy().astype(np.float64), gammas)])).float()
    assert all(0.35 < g < 1 for g in gammas)
    with torch.no_grad():
        torch.testing.assert_close(toned(ir, night).fused, plain(ir, brightened).fused, rtol=0, atol=1e-5)
        torch.testing.assert_close(toned(ir, day).fused, plain(ir, day).fused, rtol=0, atol=0)
        assert not torch.allclose(toned(ir, night).fused, plain(ir, night).fused, atol=1e-3)
        loaded = from_pretrained(save_pretrained(toned, tmp_path / "toned"))
        assert loaded.vis_tone == 0.4
        torch.testing.assert_close(loaded(ir, night).fused, toned(ir, night).fused, rtol=0, atol=0)


def test_vis_tone_onnx_matches_pytorch_on_night_and_day_images(tmp_path):
    pytest.importorskip("onnxruntime")
    from dfsfuse.onnx import OnnxModel, export_onnx

    model = _trained_like(create_model("student_fast", head="region-contrast", vis_tone=0.4)).reparameterize()
    runner = OnnxModel(export_onnx(model, tmp_path / "toned.onnx", size=(64, 64)), providers=["CPUExecutionProvider"])
    ir, vis = _pair((61, 77), batch=2)
    vis = torch.cat([vis[:1] * 0.15, vis[1:]])  # one night image, one day image in a batch
    with torch.no_grad():
        expected = model(ir, vis).fused.numpy()
    assert float(np.abs(runner(ir.numpy(), vis.numpy()) - expected).max()) < 1e-4


def _phase_spread(x: torch.Tensor, period: int) -> float:
    """Max − min over the period×period sub-pixel phases of the mean of ``x`` (B×1×H×W)."""
    h, w = (x.shape[-2] // period) * period, (x.shape[-1] // period) * period
    cells = x[..., :h, :w].reshape(-1, h // period, period, w // period, period)
    phases = cells.mean(dim=(0, 1, 3))
    return float(phases.max() - phases.min())


@pytest.mark.parametrize("head", ["region", "residual"])
def test_head_cannot_draw_a_fixed_subpixel_pattern(head):
    """Whatever the weights, the default (bilinear) head adds no scale×scale grid to the fusion: a
    flat pair stays flat away from the borders, and on a textured pair the fusion's deviation from
    the head's rule has the same mean at every sub-pixel phase. The pixel-shuffle head (the first
    design) fails both with the same weights in its body — the 4×4 pattern it learned in training."""
    flat_ir, flat_vis = torch.full((1, 1, 128, 128), 0.3), torch.full((1, 1, 128, 128), 0.6)
    ir, vis = _pair((96, 128), batch=2, seed=3)
    spreads = {}
    for upsample in ("bilinear", "shuffle"):
        model = _trained_like(create_model("student_fast", head=head, upsample=upsample))
        with torch.no_grad():
            model.head.weight.mul_(0.02)  # a residual of a few grey levels: nothing clamped
            model.head.bias.mul_(0.02)
            # 7 layers of 3×3 convs at 1/4 resolution: zero padding reaches 28 px in from the border
            flat = model(flat_ir, flat_vis).fused[..., 40:-40, 40:-40]
            deviation = model(ir, vis).fused - model.fused_image(torch.zeros(2, 2 if head == "region" else 1,
                                                                              96, 128), ir, vis)
        spreads[upsample] = (float(flat.max() - flat.min()), _phase_spread(deviation, 4))
    assert spreads["bilinear"][0] < 1e-5, spreads
    assert spreads["bilinear"][1] < 0.1 * spreads["shuffle"][1], spreads
    assert spreads["shuffle"][0] > 1e-3, spreads  # the check can tell a pattern when there is one


def test_cheaper_than_the_plain_student():
    fast, plain = profile(create_model("student_fast")), profile(create_model("student"))
    assert fast.macs < plain.macs


@pytest.mark.parametrize("groups", [1, 2])
def test_repconv_folds_to_one_conv(groups):
    torch.manual_seed(0)
    layer = RepConv(8, 8, groups=groups).eval()
    x = torch.randn(2, 8, 13, 9)
    with torch.no_grad():
        expected = layer(x)
        layer.reparameterize()
        assert layer.reparameterized and bool(layer.folded) and not layer.conv1x1.weight.any()
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    not_square = RepConv(4, 8)
    assert not not_square.identity


@pytest.mark.parametrize("head", ["blend", "residual"])
def test_reparameterize_keeps_outputs_and_features(head):
    model = _trained_like(create_model("student_fast", head=head))
    ir, vis = _pair((45, 70))
    with torch.no_grad():
        before = model(ir, vis)
        assert model.reparameterize() is model
        after = model(ir, vis)
    assert not any(isinstance(m, RepConv) and not m.reparameterized for m in model.modules())
    assert (before.fused - torch.maximum(ir, vis)).abs().mean() > 0.05  # the head does change the image
    torch.testing.assert_close(after.fused, before.fused, rtol=0, atol=1e-4)
    for name in FUSION_FEATURES:
        torch.testing.assert_close(after.features[name], before.features[name], rtol=1e-4, atol=1e-4)


def test_reparameterized_weights_save_and_load_like_unfolded_ones(tmp_path):
    from dfsfuse.export import from_pretrained, save_pretrained

    unfolded = _trained_like(create_model("student_fast"))
    folded = _trained_like(create_model("student_fast")).reparameterize()
    assert set(folded.state_dict()) == set(unfolded.state_dict())
    ir, vis = _pair((32, 40))
    for source in (folded, unfolded):
        fresh = create_model("student_fast")
        fresh.load_state_dict(source.state_dict())  # strict; the weights set the layers' mode
        loaded = from_pretrained(save_pretrained(source, tmp_path / f"m{id(source)}"))
        with torch.no_grad():
            expected = source(ir, vis).fused
            torch.testing.assert_close(fresh.eval()(ir, vis).fused, expected, rtol=0, atol=0)
            torch.testing.assert_close(loaded(ir, vis).fused, expected, rtol=0, atol=0)
    with torch.no_grad():  # and an unfolded state loaded into a folded model unfolds it
        folded.load_state_dict(unfolded.state_dict())
        torch.testing.assert_close(folded(ir, vis).fused, unfolded(ir, vis).fused, rtol=0, atol=0)
    assert not any(m.reparameterized for m in folded.modules() if isinstance(m, RepConv))


@pytest.mark.parametrize("fold,head", [(False, "region"), (True, "region"), (True, "blend"), (True, "residual")])
def test_onnx_matches_pytorch_at_other_sizes(tmp_path, fold, head):
    pytest.importorskip("onnxruntime")
    from dfsfuse.onnx import OnnxModel, export_onnx

    model = _trained_like(create_model("student_fast", head=head))
    if fold:
        model.reparameterize()
    path = export_onnx(model, tmp_path / "model.onnx", size=(64, 64))
    runner = OnnxModel(path, providers=["CPUExecutionProvider"])
    for size, batch in (((61, 77), 2), ((33, 50), 1), ((64, 64), 1), ((130, 97), 1)):
        ir, vis = _pair(size, batch=batch)
        with torch.no_grad():
            expected = model(ir, vis).fused.numpy()
        got = runner(ir.numpy(), vis.numpy())
        assert got.shape == (batch, 1, *size)
        assert float(np.abs(got - expected).max()) < 1e-4, size


def test_torch_compile_matches_eager():
    model = _trained_like(create_model("student_fast")).reparameterize()
    compiled = torch.compile(model)
    ir, vis = _pair((61, 77), batch=1)
    with torch.no_grad():
        expected, actual = model(ir, vis), compiled(ir, vis)
    torch.testing.assert_close(actual.fused, expected.fused, rtol=0, atol=1e-5)
    for name in FUSION_FEATURES:
        torch.testing.assert_close(actual.features[name], expected.features[name], rtol=1e-4, atol=1e-4)


def test_reduced_features_distil_against_full_size_teacher_features():
    """The loss resizes the 1/4-resolution features to the teacher's size; gradients reach the student."""
    student = create_model("student_fast", width=8)
    ir, vis = _pair((40, 52))
    out = student(ir, vis)
    teacher_feats = {n: torch.randn(2, 6, 40, 52) for n in FUSION_FEATURES}
    loss = FeatureDistillLoss(student.feature_channels, {n: 6 for n in FUSION_FEATURES})
    value = loss(out.features, teacher_feats, weight=torch.ones(2, 1, 40, 52))
    value.backward()
    assert torch.isfinite(value)
    grads = [p.grad for p in student.encoder_ir.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_stage_two_objective_gives_a_toning_student_the_raw_image_and_the_losses_the_brightened_one():
    """stages.py hands StudentObjective ``vis_y`` brightened (for the losses) and ``vis_y_raw`` as given:
    the student must fuse the raw image (it brightens it itself), the fusion loss must see the
    brightened one, so the loss equals an independent computation on exactly those tensors."""
    from dfsfuse.models.blocks import brighten_dark
    from dfsfuse.train.config import load_config
    from dfsfuse.train.objectives import StudentObjective

    cfg = load_config(overrides=["loss.seg_ce=0", "loss.seg_kl=0", "loss.semantic_weighting=false",
                                 "loss.student_fusion=1.0"])
    student = _trained_like(create_model("student_fast", head="region-contrast", vis_tone=0.4))
    seen = []
    student.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    objective = StudentObjective(student, student.feature_channels, cfg.loss)
    ir, vis = _pair((32, 32))
    raw = vis * 0.2
    batch = {"ir": ir, "vis_y": brighten_dark(raw, 0.4), "vis_y_raw": raw}
    with torch.no_grad():
        teacher_out = student(ir, batch["vis_y"])
        seen.clear()
        terms = objective(batch, teacher_out, None, None)
        assert len(seen) == 1 and torch.equal(seen[0], raw)
        fused = student(ir, raw).fused
        expected = objective.fusion_loss(fused, ir, batch["vis_y"])
    for name, value in expected.items():
        torch.testing.assert_close(terms[f"fusion_{name}"], cfg.loss.student_fusion * value)
