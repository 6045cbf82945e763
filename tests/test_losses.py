"""Tests for dfsfuse.losses on small hand-made tensors, checked against independent computations."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from dfsfuse.losses import (
    MSRS_CLASS_IMPORTANCE,
    DistilledSemanticLoss,
    DynamicWeights,
    FeatureDistillLoss,
    FrequencyDistillLoss,
    FusionLoss,
    cross_seg_consistency,
    gradient_loss,
    intensity_loss,
    output_distill,
    seg_kl,
    segmentation_ce,
    semantic_weight_map,
    sobel_gradients,
    ssim_loss,
    ssim_map,
    total_loss,
    weighted_mean,
)

K = 9
SIZES = [(32, 32), (31, 45)]


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _np_grad_mag(x: np.ndarray) -> np.ndarray:
    """|Gx| + |Gy| per image of a B×1×H×W array, with scipy (replicate = mode 'nearest')."""
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        img = x[b, 0]
        out[b, 0] = np.abs(ndimage.sobel(img, axis=-1, mode="nearest")) + np.abs(
            ndimage.sobel(img, axis=-2, mode="nearest")
        )
    return out


class TinyFusionNet(nn.Module):
    """Stand-in for a fusion model: returns .fused and named full-resolution .features."""

    def __init__(self, width: int):
        super().__init__()
        self.enc_ir = nn.Conv2d(1, width, 3, padding=1)
        self.enc_vis = nn.Conv2d(1, width, 3, padding=1)
        self.fusion = nn.Conv2d(2 * width, width, 1)
        self.decoder = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, ir: torch.Tensor, vis_y: torch.Tensor) -> SimpleNamespace:
        a, b = torch.relu(self.enc_ir(ir)), torch.relu(self.enc_vis(vis_y))
        f = torch.relu(self.fusion(torch.cat([a, b], 1)))
        d = self.decoder(f)
        feats = OrderedDict(enc_ir=a, enc_vis=b, fusion=f, decoder=d)
        return SimpleNamespace(fused=torch.sigmoid(d), features=feats)


# --------------------------------------------------------------------------- weighted mean


def test_weighted_mean_ones_equals_mean_and_region_only_counts_region():
    loss = _rand(2, 3, 8, 10)
    assert torch.allclose(weighted_mean(loss, torch.ones(2, 1, 8, 10)), loss.mean())
    w = torch.zeros(2, 1, 8, 10)
    w[:, :, 2:5, 3:7] = 1.0
    assert torch.allclose(weighted_mean(loss, w), loss[:, :, 2:5, 3:7].mean())
    # a weight map of another size is resized; a uniform one still gives the plain mean
    assert torch.allclose(weighted_mean(loss, torch.full((2, 1, 16, 20), 3.0)), loss.mean())
    with pytest.raises(ValueError):
        weighted_mean(loss, torch.ones(2, 3, 8, 10))


# --------------------------------------------------------------------------- fusion


@pytest.mark.parametrize("size", SIZES)
def test_intensity_zero_at_max_and_matches_numpy(size):
    ir, vis = _rand(2, 1, *size, seed=1), _rand(2, 1, *size, seed=2)
    assert intensity_loss(torch.maximum(ir, vis), ir, vis).item() == 0.0
    fused = _rand(2, 1, *size, seed=3)
    expected = np.abs(fused.numpy() - np.maximum(ir.numpy(), vis.numpy())).mean()
    assert intensity_loss(fused, ir, vis).item() == pytest.approx(expected, rel=1e-5)


def test_sobel_matches_scipy_nearest():
    x = _rand(2, 1, 31, 45)
    gx, gy = sobel_gradients(x)
    for b in range(2):
        np.testing.assert_allclose(gx[b, 0].numpy(), ndimage.sobel(x[b, 0].numpy(), axis=-1, mode="nearest"), atol=1e-5)
        np.testing.assert_allclose(gy[b, 0].numpy(), ndimage.sobel(x[b, 0].numpy(), axis=-2, mode="nearest"), atol=1e-5)
    # replicate padding: no edges invented at the frame of a constant image
    assert sobel_gradients(torch.full((1, 2, 5, 6), 0.7))[0].abs().max().item() < 1e-6


@pytest.mark.parametrize("size", SIZES)
def test_gradient_loss_matches_scipy(size):
    ir, vis, fused = (_rand(2, 1, *size, seed=s) for s in (4, 5, 6))
    target = np.maximum(_np_grad_mag(ir.numpy()), _np_grad_mag(vis.numpy()))
    expected = np.abs(_np_grad_mag(fused.numpy()) - target).mean()
    assert gradient_loss(fused, ir, vis).item() == pytest.approx(expected, rel=1e-5)
    assert gradient_loss(ir, ir, ir).item() == 0.0


def test_ssim_matches_skimage_interior_and_is_one_for_identical():
    from skimage.metrics import structural_similarity

    x, y = _rand(1, 1, 31, 45, seed=7), _rand(1, 1, 31, 45, seed=8)
    smap = ssim_map(x, y)[0, 0].numpy()
    _, ref = structural_similarity(
        x[0, 0].numpy().astype(np.float64), y[0, 0].numpy().astype(np.float64),
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, full=True,
    )
    np.testing.assert_allclose(smap[5:-5, 5:-5], ref[5:-5, 5:-5], atol=1e-4)
    assert ssim_loss(x, x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert ssim_loss(x, y, y).item() > 0.1


@pytest.mark.parametrize("size", SIZES)
def test_fusion_loss_terms_weights_and_weight_map(size):
    ir, vis, fused = (_rand(2, 1, *size, seed=s) for s in (9, 10, 11))
    plain = FusionLoss()(fused, ir, vis)
    assert set(plain) == {"intensity", "gradient"}  # w_ssim=0: absent, not computed
    loss = FusionLoss(w_intensity=2.0, w_gradient=0.5, w_ssim=3.0)
    terms = loss(fused, ir, vis)
    assert terms["intensity"].item() == pytest.approx(2.0 * intensity_loss(fused, ir, vis).item(), rel=1e-6)
    assert terms["gradient"].item() == pytest.approx(0.5 * gradient_loss(fused, ir, vis).item(), rel=1e-6)
    assert terms["ssim"].item() == pytest.approx(3.0 * ssim_loss(fused, ir, vis).item(), rel=1e-6)
    assert torch.allclose(total_loss(terms), sum(terms.values()))
    ones = loss(fused, ir, vis, weight=torch.ones(2, 1, *size))
    for k in terms:
        assert torch.allclose(ones[k], terms[k], rtol=1e-5)
    zero = loss(torch.maximum(ir, vis), ir, vis)["intensity"]
    assert zero.item() == 0.0
    # a weight on one region only counts that region
    w = torch.zeros(2, 1, *size)
    w[..., :8, :8] = 1
    region = intensity_loss(fused[..., :8, :8], ir[..., :8, :8], vis[..., :8, :8])
    assert intensity_loss(fused, ir, vis, w).item() == pytest.approx(region.item(), rel=1e-5)


def test_fusion_loss_gradient_reaches_fused_only():
    ir, vis = _rand(2, 1, 16, 16, seed=1), _rand(2, 1, 16, 16, seed=2)
    fused = _rand(2, 1, 16, 16, seed=3).requires_grad_()
    total_loss(FusionLoss(w_ssim=1.0)(fused, ir, vis)).backward()
    assert fused.grad is not None and fused.grad.abs().sum() > 0


# --------------------------------------------------------------------------- distillation


@pytest.mark.parametrize("size", SIZES)
def test_output_distill_value_zero_and_teacher_no_grad(size):
    s = _rand(2, 1, *size, seed=1).requires_grad_()
    t = _rand(2, 1, *size, seed=2).requires_grad_()
    loss = output_distill(s, t)
    assert loss.item() == pytest.approx((s - t).abs().mean().item(), rel=1e-6)
    loss.backward()
    assert s.grad is not None and t.grad is None
    assert output_distill(t, t).item() == 0.0
    assert torch.allclose(output_distill(s, t, torch.ones(2, 1, *size)), loss)


def _identity_adapters(loss: FeatureDistillLoss) -> None:
    with torch.no_grad():
        for conv in loss.adapters.values():
            conv.weight.copy_(torch.eye(conv.out_channels, conv.in_channels)[:, :, None, None])
            conv.bias.zero_()


@pytest.mark.parametrize("size", SIZES)
def test_feature_distill_zero_for_equal_features_and_scale_free(size):
    chans = {"enc_ir": 4, "fusion": 4}
    loss = FeatureDistillLoss(chans, chans, loss="mse")
    _identity_adapters(loss)
    feats = {n: _randn(2, 4, *size, seed=i) for i, n in enumerate(chans)}
    assert loss(feats, feats).item() == pytest.approx(0.0, abs=1e-6)
    other = {n: _randn(2, 4, *size, seed=10 + i) for i, n in enumerate(chans)}
    base = loss(feats, other)
    assert base.item() > 0
    scaled = {n: 100.0 * v + 5.0 for n, v in other.items()}
    assert loss(feats, scaled).item() == pytest.approx(base.item(), rel=1e-4)
    # independent MSE of standardized maps (population variance, eps=1e-5)
    def std(x):
        return (x - x.mean((-2, -1), keepdim=True)) / torch.sqrt(x.var((-2, -1), unbiased=False, keepdim=True) + 1e-5)
    ref = sum(((std(feats[n]) - std(other[n])) ** 2).mean() for n in chans) / 2
    assert base.item() == pytest.approx(ref.item(), rel=1e-5)


def test_feature_distill_adapters_names_resize_and_grads():
    student_ch = {"enc_ir": 3, "fusion": 5, "decoder": 1, "only_student": 2}
    teacher_ch = {"enc_ir": 8, "fusion": 16, "decoder": 1}
    loss = FeatureDistillLoss(student_ch, teacher_ch)
    assert loss.names == ["enc_ir", "fusion", "decoder"]
    assert loss.adapters["fusion"].in_channels == 5 and loss.adapters["fusion"].out_channels == 16
    s = {n: _randn(2, c, 16, 23, seed=i).requires_grad_() for i, (n, c) in enumerate(student_ch.items())}
    t = {n: _randn(2, c, 31, 45, seed=20 + i).requires_grad_() for i, (n, c) in enumerate(teacher_ch.items())}
    weight = _rand(2, 1, 31, 45) + 0.1
    value = loss(s, t, weight)
    assert value.ndim == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    assert all(s[n].grad is not None for n in loss.names)
    assert all(v.grad is None for v in t.values())
    assert all(p.grad is not None for p in loss.adapters.parameters())
    with pytest.raises(ValueError):
        FeatureDistillLoss({"a": 1}, {"b": 1})
    with pytest.raises(ValueError):
        FeatureDistillLoss(student_ch, teacher_ch, names=["only_student"])


def _haar_bands(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent one-level orthonormal Haar of an even-sized map: LL and |LH|+|HL|+|HH| stack."""
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    ll = (a + b + c + d) / 2
    highs = torch.stack([(a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2], 2)
    return ll, highs


def test_frequency_distill_matches_manual_haar():
    s, t = _rand(2, 1, 32, 32, seed=1), _rand(2, 1, 32, 32, seed=2)
    (sl, sh), (tl, th) = _haar_bands(s), _haar_bands(t)
    expected = (sl - tl).abs().mean() + 0.5 * (sh - th).abs().mean()
    got = FrequencyDistillLoss(w_low=1.0, w_high=0.5)(s, t)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("levels", [1, 2])
def test_frequency_distill_zero_positive_grads_and_weights(size, levels):
    loss = FrequencyDistillLoss(levels=levels)
    s = _rand(2, 1, *size, seed=1).requires_grad_()
    t = _rand(2, 1, *size, seed=2).requires_grad_()
    assert loss(t, t).item() == pytest.approx(0.0, abs=1e-7)
    value = loss(s, t)
    assert value.item() > 0
    assert torch.allclose(loss(s, t, torch.ones(2, 1, *size)), value, rtol=1e-5)
    value.backward()
    assert s.grad is not None and t.grad is None
    # the DWT filters are fixed, not checkpoint state
    assert len(loss.state_dict()) == 0


# --------------------------------------------------------------------------- semantic


def _person_logits(size=(31, 45)) -> torch.Tensor:
    """Background everywhere except a confident person box in image 0."""
    logits = torch.full((2, K, *size), -10.0)
    logits[:, 0] = 10.0
    logits[0, 0, 4:12, 6:16] = -10.0
    logits[0, 2, 4:12, 6:16] = 10.0
    return logits


def test_semantic_weight_map_emphasises_rich_classes():
    logits = _person_logits()
    w = semantic_weight_map(logits)
    assert w.shape == (2, 1, 31, 45)
    torch.testing.assert_close(w.mean(dim=(-2, -1)), torch.ones(2, 1))
    assert w[0, 0, 5, 7] > 1.5 * w[0, 0, 20, 30]
    torch.testing.assert_close(w[1], torch.ones(1, 31, 45))  # all background: uniform
    # person (importance 2) outweighs car (1.5) at equal area
    car = logits.clone()
    car[0, 2, 4:12, 6:16], car[0, 1, 4:12, 6:16] = -10.0, 10.0
    assert semantic_weight_map(logits)[0, 0, 5, 7] > semantic_weight_map(car)[0, 0, 5, 7]
    grad_logits = logits.clone().requires_grad_()
    assert not semantic_weight_map(grad_logits).requires_grad
    assert semantic_weight_map(grad_logits, detach=False).requires_grad
    with pytest.raises(ValueError):
        semantic_weight_map(logits, class_importance=[1.0, 2.0])
    assert len(MSRS_CLASS_IMPORTANCE) == K and MSRS_CLASS_IMPORTANCE[0] == 0.0


def test_segmentation_ce_matches_torch_and_all_ignored_is_zero():
    logits = _randn(2, K, 31, 45).requires_grad_()
    labels = torch.randint(0, K, (2, 31, 45), generator=torch.Generator().manual_seed(0))
    labels[:, :10] = 255
    torch.testing.assert_close(segmentation_ce(logits, labels), F.cross_entropy(logits, labels, ignore_index=255))
    cw = torch.linspace(0.5, 2.0, K)
    torch.testing.assert_close(
        segmentation_ce(logits, labels, class_weights=cw),
        F.cross_entropy(logits, labels, weight=cw, ignore_index=255),
    )
    ignored = torch.full((2, 31, 45), 255, dtype=torch.long)
    zero = segmentation_ce(logits, ignored)
    assert zero.item() == 0.0 and torch.isfinite(zero) and zero.requires_grad
    zero.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_seg_kl_matches_distributions_and_teacher_no_grad(T):
    s = _randn(2, K, 31, 45, seed=1).requires_grad_()
    t = _randn(2, K, 31, 45, seed=2).requires_grad_()
    p_t = torch.distributions.Categorical(logits=(t / T).movedim(1, -1))
    p_s = torch.distributions.Categorical(logits=(s / T).movedim(1, -1))
    expected = T * T * torch.distributions.kl_divergence(p_t, p_s).mean()
    value = seg_kl(s, t, T=T)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert s.grad is not None and t.grad is None
    assert seg_kl(t, t, T=T).item() == pytest.approx(0.0, abs=1e-6)


def test_cross_seg_consistency_symmetric_zero_and_grads_both_sides():
    a = _randn(2, K, 31, 45, seed=3).requires_grad_()
    b = _randn(2, K, 31, 45, seed=4).requires_grad_()
    assert cross_seg_consistency(a, a).item() == 0.0
    value = cross_seg_consistency(a, b)
    pa = torch.distributions.Categorical(logits=a.movedim(1, -1))
    pb = torch.distributions.Categorical(logits=b.movedim(1, -1))
    kl = torch.distributions.kl_divergence
    expected = 0.5 * (kl(pa, pb) + kl(pb, pa)).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert cross_seg_consistency(b, a).item() == pytest.approx(value.item(), rel=1e-6)
    value.backward()
    assert a.grad is not None and b.grad is not None


def _models(size):
    torch.manual_seed(0)
    teacher, student, seg = TinyFusionNet(8), TinyFusionNet(3), nn.Conv2d(1, K, 3, padding=1)
    ir, vis = _rand(2, 1, *size, seed=1), _rand(2, 1, *size, seed=2)
    return teacher, student, seg, ir, vis


def _channels(net: TinyFusionNet) -> dict[str, int]:
    return {"enc_ir": net.enc_ir.out_channels, "enc_vis": net.enc_vis.out_channels,
            "fusion": net.fusion.out_channels, "decoder": 1}


@pytest.mark.parametrize("size", SIZES)
def test_distilled_semantic_loss_grads_reach_student_and_adapters_only(size):
    teacher, student, seg, ir, vis = _models(size)
    loss_fn = DistilledSemanticLoss(_channels(student), _channels(teacher))
    t_out = teacher(ir, vis)  # with grad enabled on purpose: the loss must detach it
    s_out = student(ir, vis)
    labels = torch.randint(0, K, (2, *size), generator=torch.Generator().manual_seed(0))
    terms = loss_fn(s_out, t_out, seg(s_out.fused), seg(t_out.fused), labels)
    assert set(terms) == {"output", "feature", "frequency", "seg_kl", "seg_ce"}
    assert all(v.ndim == 0 and torch.isfinite(v) and v.item() > 0 for v in terms.values())
    total_loss(terms).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is not None for p in loss_fn.feature.adapters.parameters())
    # the segmenter learns through the student's fusion only
    assert all(p.grad is not None for p in seg.parameters())


def test_distilled_semantic_loss_zero_for_identical_student_and_options():
    size = (31, 45)
    teacher, _, seg, ir, vis = _models(size)
    with torch.no_grad():
        out = teacher(ir, vis)
        logits = seg(out.fused)
    ch = _channels(teacher)
    loss_fn = DistilledSemanticLoss(ch, ch, feature_loss="mse")
    _identity_adapters(loss_fn.feature)
    terms = loss_fn(out, out, logits, logits)  # no labels: no seg_ce
    assert set(terms) == {"output", "feature", "frequency", "seg_kl"}
    for k, v in terms.items():
        assert v.item() == pytest.approx(0.0, abs=1e-6), k

    other = SimpleNamespace(fused=_rand(2, 1, *size, seed=9), features=out.features)
    unweighted = DistilledSemanticLoss(ch, ch, w_feature=0, w_freq=0, w_seg_kl=0, semantic_weighting=False)
    assert unweighted.feature is None and unweighted.frequency is None
    only = unweighted(other, out)
    assert set(only) == {"output"}
    assert only["output"].item() == pytest.approx((other.fused - out.fused).abs().mean().item(), rel=1e-6)

    ignored = torch.full((2, *size), 255, dtype=torch.long)
    ce = DistilledSemanticLoss(ch, ch)(other, out, seg(other.fused), logits, ignored)["seg_ce"]
    assert ce.item() == 0.0 and torch.isfinite(ce)
    with pytest.raises(ValueError):
        DistilledSemanticLoss(ch, ch)(other, out)


def test_distilled_semantic_weighting_follows_teacher_segmentation():
    size = (32, 32)
    ch = {"fusion": 2}
    feats = {"fusion": _randn(2, 2, *size)}
    teacher = SimpleNamespace(fused=torch.zeros(2, 1, *size), features=feats)
    logits = _person_logits(size)
    box = torch.zeros(2, 1, *size)
    box[0, :, 4:12, 6:16] = 1.0
    inside = SimpleNamespace(fused=box * 0.5, features=feats)  # error only on the person
    outside = SimpleNamespace(fused=torch.zeros(2, 1, *size), features=feats)
    outside.fused[0, :, 20:28, 20:30] = 0.5  # same-sized error on background
    kw = dict(w_feature=0, w_freq=0, w_seg_kl=0)
    weighted = DistilledSemanticLoss(ch, ch, **kw)
    assert weighted(inside, teacher, None, logits)["output"] > weighted(outside, teacher, None, logits)["output"]
    flat = DistilledSemanticLoss(ch, ch, semantic_weighting=False, **kw)
    torch.testing.assert_close(flat(inside, teacher)["output"], flat(outside, teacher)["output"])


# --------------------------------------------------------------------------- dynamic weights


def test_dynamic_weights_warmup_sum_and_shift():
    dw = DynamicWeights(["a", "b", "c"], temperature=2.0, warmup=2)
    assert dw.weights == {"a": 1.0, "b": 1.0, "c": 1.0}
    dw.update({"a": 1.0, "b": 1.0, "c": 1.0})
    assert dw.weights == {"a": 1.0, "b": 1.0, "c": 1.0}
    dw.update({"a": 0.5, "b": 0.9, "c": 1.0})  # a drops fastest, c not at all
    w = dw.weights
    assert sum(w.values()) == pytest.approx(3.0)
    assert w["c"] > w["b"] > w["a"]
    ratios = np.array([0.5, 0.9, 1.0]) / 2.0
    expected = 3 * np.exp(ratios) / np.exp(ratios).sum()
    assert [w[k] for k in "abc"] == pytest.approx(expected.tolist())
    terms = dw.apply({"a": torch.tensor(2.0), "other": torch.tensor(1.0)})
    assert terms["a"].item() == pytest.approx(2 * w["a"]) and terms["other"].item() == 1.0


def test_dynamic_weights_longer_warmup_and_state_round_trip():
    dw = DynamicWeights(["x", "y"], warmup=3)
    dw.update({"x": 1.0, "y": 1.0})
    dw.update({"x": 0.1, "y": torch.tensor(2.0)})
    assert dw.weights == {"x": 1.0, "y": 1.0}
    dw.update({"x": 0.1, "y": 1.0})
    state = json.loads(json.dumps(dw.state_dict()))
    restored = DynamicWeights(["x", "y"])
    restored.load_state_dict(state)
    assert restored.weights == dw.weights and restored.warmup == 3
    restored.update({"x": 0.0, "y": 0.5})
    dw.update({"x": 0.0, "y": 0.5})
    assert restored.weights == dw.weights
    assert math.isclose(sum(restored.weights.values()), 2.0)
    with pytest.raises(ValueError):
        DynamicWeights(["z"]).load_state_dict(state)
    with pytest.raises(KeyError):
        dw.update({"x": 1.0})
    with pytest.raises(ValueError):
        dw.update({"x": float("nan"), "y": 1.0})
