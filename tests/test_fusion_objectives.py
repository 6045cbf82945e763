"""Objectives and heads that let fusion networks leave the ``max`` rule (issue: beyond max)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from dfsfuse.export import from_pretrained
from dfsfuse.losses import FusionLoss
from dfsfuse.losses.fusion import contrast_target, signed_gradient_loss, sobel_gradients
from dfsfuse.losses.quality import qabf_loss, vif_loss
from dfsfuse.metrics import fusion_metrics_batch
from dfsfuse.models import create_model
from dfsfuse.models.blocks import HEADS, FusionHead
from dfsfuse.train.config import ConfigError, load_config


def _scene(seed: int = 0, size: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """IR with a warm blob, VIS with texture and an edge: each has structure the other lacks."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ir = 0.2 + 0.6 * (((yy - size / 2) ** 2 + (xx - size / 3) ** 2) < (size / 6) ** 2).float()
    vis = 0.3 + 0.3 * (xx > size * 0.6).float() + 0.1 * torch.rand(size, size, generator=g)
    blur = torch.nn.functional.avg_pool2d
    ir = blur(ir[None, None], 3, 1, 1, count_include_pad=False)
    vis = blur(vis[None, None], 3, 1, 1, count_include_pad=False)
    return ir.clamp(0, 1), vis.clamp(0, 1)


def test_vif_loss_equals_the_metric():
    ir, vis = _scene()
    fused = torch.maximum(ir, vis) * 0.9 + 0.05
    metric = fusion_metrics_batch(fused * 255, ir * 255, vis * 255, metrics=("VIF",))["VIF"]
    assert 2 - vif_loss(fused, ir, vis).item() == pytest.approx(metric.item(), rel=1e-4)


def test_qabf_loss_tracks_the_metric():
    # Smooth corners (ε, no g_F quirk, replicate borders) and orientations compared modulo π put
    # it near, not on, the metric: the metric also counts a flip of atan(gy/gx) across ±90° (the
    # same orientation) as disagreement, so the loss reads Q up to ~0.1 higher; it orders fusions
    # as the metric does. A black frame makes the metric's zero padding and the loss's
    # replicate padding agree.
    ir, vis = (torch.nn.functional.pad(x[..., 3:-3, 3:-3], (3, 3, 3, 3)) for x in _scene(1, 128))
    fusions = (torch.maximum(ir, vis), (ir + vis) / 2, ir)
    metric = [fusion_metrics_batch(f * 255, ir * 255, vis * 255, metrics=("Qabf",))["Qabf"].item() for f in fusions]
    loss_q = [1 - qabf_loss(f, ir, vis).item() for f in fusions]
    assert metric == sorted(metric, reverse=True) and loss_q == sorted(loss_q, reverse=True)
    for m, q in zip(metric, loss_q):
        assert m - 0.01 <= q <= m + 0.1


def test_qabf_loss_is_continuous_where_the_fusion_copies_a_source():
    """At a rule's output (F = a source, pixel for pixel) a tiny change of F changes the loss by
    a tiny amount, also on horizontal edges where the Sobel ``gx`` is exactly 0 and any
    perturbation flips its sign (the metric's orientation jumps by π there), and a small step
    along the loss's own gradient lowers it."""
    ir, vis = _scene(5, 64)
    ir = ir.clone()
    ir[..., 20:, :] += 0.2                                  # a horizontal edge: gx = 0 along it
    ir = ir.clamp(0, 1)
    fused = ir.clone().requires_grad_(True)
    loss = qabf_loss(fused, ir, vis)
    loss.backward()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(fused.shape, generator=g)
    with torch.no_grad():
        nudged = qabf_loss(fused + 1e-6 * noise, ir, vis)
        assert abs(nudged.item() - loss.item()) < 1e-4
        step = qabf_loss(fused - 1e-3 * fused.grad / fused.grad.norm(), ir, vis)
    assert step.item() < loss.item()


def test_qabf_loss_prefers_keeping_both_sources_edges():
    ir, vis = _scene(2)
    both = qabf_loss(torch.maximum(ir, vis), ir, vis)
    only_ir = qabf_loss(ir, ir, vis)
    assert both < only_ir


def test_optimising_qabf_from_max_raises_the_metric():
    ir, vis = _scene(3, 64)
    start = torch.maximum(ir, vis)
    delta = torch.zeros_like(start, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=0.003)
    losses = []
    for _ in range(40):
        loss = qabf_loss((start + delta).clamp(0, 1), ir, vis)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    q = lambda f: fusion_metrics_batch(f * 255, ir * 255, vis * 255, metrics=("Qabf",))["Qabf"].item()  # noqa: E731
    assert q((start + delta).detach().clamp(0, 1)) > q(start)


def test_signed_gradient_loss_is_zero_for_the_stronger_source_and_punishes_inversion():
    ir, vis = _scene(4)
    flat = torch.full_like(vis, 0.5)
    assert signed_gradient_loss(ir, ir, flat).item() == pytest.approx(0.0, abs=1e-7)
    inverted = 1 - ir  # same magnitudes, opposite sign
    gx, gy = sobel_gradients(ir)
    expected = 2 * (gx.abs() + gy.abs()).mean().item()
    assert signed_gradient_loss(inverted, ir, flat).item() == pytest.approx(expected, rel=1e-5)


def test_contrast_target_follows_the_textured_source():
    g = torch.Generator().manual_seed(0)
    textured = 0.3 + 0.2 * torch.rand(1, 1, 48, 48, generator=g)
    bright_flat = torch.full_like(textured, 0.9)
    target = contrast_target(bright_flat, textured)
    # max would copy the bright flat image; the contrast target stays with the texture.
    assert (target - textured).abs().mean() < 0.05
    both_flat = contrast_target(torch.full_like(textured, 0.2), torch.full_like(textured, 0.7))
    torch.testing.assert_close(both_flat, torch.full_like(textured, 0.7), atol=1e-3, rtol=0)


def test_fusion_loss_terms_and_names():
    ir, vis = _scene(5, 48)
    fused = (ir + vis) / 2
    loss = FusionLoss(w_intensity=1.0, w_gradient=0.5, w_ssim=0.0, w_qabf=2.0, w_vif=0.1,
                      intensity_target="contrast", gradient_mode="signed")
    terms = loss(fused, ir, vis)
    assert list(terms) == loss.term_names == ["intensity", "gradient", "qabf", "vif"]
    assert terms["qabf"].item() == pytest.approx(2.0 * qabf_loss(fused, ir, vis).item(), rel=1e-6)
    assert terms["gradient"].item() == pytest.approx(0.5 * signed_gradient_loss(fused, ir, vis).item(), rel=1e-6)
    with pytest.raises(ValueError, match="intensity_target"):
        FusionLoss(intensity_target="mean")
    with pytest.raises(ValueError, match="gradient_mode"):
        FusionLoss(gradient_mode="laplace")


def test_config_rejects_unknown_loss_modes():
    with pytest.raises(ConfigError, match="loss.intensity_target"):
        load_config(None, ["loss.intensity_target=brightest"])
    cfg = load_config(None, ["loss.qabf=1.5", "loss.gradient_mode=signed"])
    assert cfg.loss.qabf == 1.5 and cfg.loss.gradient_mode == "signed"


def test_blend_head_starts_as_a_soft_max_and_can_leave_it():
    ir, vis = _scene(6, 40)
    head = FusionHead(4, "blend")
    feats = torch.zeros(1, 4, 40, 40)
    with torch.no_grad():
        head.conv.bias.zero_()
        out = head(feats, ir, vis)
    # Initial state: a soft maximum, close to max where the inputs differ.
    differ = (ir - vis).abs() > 0.2
    torch.testing.assert_close(out[differ], torch.maximum(ir, vis)[differ], atol=0.01, rtol=0)
    # A constant residual channel moves every pixel: intensities no input has are reachable.
    with torch.no_grad():
        head.conv.bias[1] = 0.1
        brighter = head(feats, ir, vis)
    assert (brighter > torch.maximum(ir, vis) + 0.05).float().mean() > 0.5
    with pytest.raises(ValueError, match="unknown head"):
        FusionHead(4, "direct")


def test_region_head_starts_as_the_region_max_rule():
    """A zero head is the ``region-max`` baseline (numpy, float64) to within 8-bit rounding,
    and the rule picks whole neighbourhoods: inside a region where IR is brighter on average,
    VIS pixels that poke above IR do not switch the source (pixel max would)."""
    import numpy as np

    from dfsfuse.baselines import baseline_fusion

    rng = np.random.default_rng(3)
    ir = np.full((48, 56), 150.0) + rng.normal(0, 5, (48, 56))
    vis = np.full((48, 56), 60.0) + rng.normal(0, 5, (48, 56))
    vis[:, 28:] += 130.0                     # right half: VIS brighter on average
    vis[10:14, 5:9] = 200.0                  # a small bright VIS blob inside the IR region
    a, b = (torch.from_numpy(x).float()[None, None] / 255 for x in (ir, vis))
    head = FusionHead(4, "region")
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.bias.zero_()
        out = head(torch.zeros(1, 4, 48, 56), a, b)[0, 0].double().numpy() * 255
    rule = baseline_fusion(ir, vis, "region-max").astype(np.float64)
    assert np.abs(np.round(out) - rule).max() <= 1
    # Far from the boundary each half is one source; the blob's pixels stay IR's...
    np.testing.assert_allclose(out[30:40, 2:20], ir[30:40, 2:20], atol=0.5)
    np.testing.assert_allclose(out[30:40, 36:54], vis[30:40, 36:54], atol=0.5)
    assert np.abs(out[11:13, 6:8] - ir[11:13, 6:8]).max() < np.abs(out[11:13, 6:8] - vis[11:13, 6:8]).min()
    # ...where pixel max takes VIS's blob.
    np.testing.assert_array_equal(baseline_fusion(ir, vis, "max")[11:13, 6:8], np.round(vis[11:13, 6:8]))


def test_region_add_head_starts_at_the_rule_and_can_switch_a_saturated_region():
    """``region-add`` starts where ``region`` does, but its weight map gets a gradient where the
    region prior is saturated (``region``'s vanishes there), and ``z = 1`` shows IR in a region
    where VIS is far brighter."""
    ir = torch.full((1, 1, 32, 32), 0.2)
    vis = torch.full((1, 1, 32, 32), 0.8)    # VIS brighter everywhere: the rule shows VIS
    feats = torch.zeros(1, 4, 32, 32)
    grads = {}
    for kind in ("region", "region-add"):
        head = FusionHead(4, kind)
        with torch.no_grad():
            head.conv.weight.zero_()
            head.conv.bias.zero_()
        out = head(feats, ir, vis)
        torch.testing.assert_close(out, vis, atol=1e-6, rtol=0)
        (out - ir).abs().mean().backward()   # a loss that wants IR
        grads[kind] = head.conv.bias.grad[0].abs().item()
    assert grads["region"] < 1e-12 < 0.1 < grads["region-add"]
    head = FusionHead(4, "region-add")
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.bias.copy_(torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(head(feats, ir, vis), ir, atol=1e-6, rtol=0)
        head.conv.bias.copy_(torch.tensor([1.2, 0.0]))   # beyond 1: the difference stretched (F clipped)
        torch.testing.assert_close(head(feats, ir, vis), ir + 0.2 * (ir - vis), atol=1e-6, rtol=0)
        head.conv.bias.copy_(torch.tensor([3.0, 0.0]))
        assert head(feats, ir, vis).max().item() == 0.0


def _edge_gaussian(x, sigma):
    """Independent 2-D Gaussian convolution (full 2-D kernel, 2·ceil(3σ)+1 taps) with edge-replicated borders."""
    import numpy as np

    r = int(np.ceil(3 * sigma))
    t = np.arange(-r, r + 1)
    k = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma ** 2))
    k /= k.sum()
    p = np.pad(x, r, mode="edge")
    h, w = x.shape
    return sum(k[i, j] * p[i:i + h, j:j + w] for i in range(2 * r + 1) for j in range(2 * r + 1))


def test_warm_contrast_is_a_difference_of_gaussians_of_ir():
    """The head's torch map and the rule's numpy map both equal relu(G2*ir - G8*ir) computed
    with a 2-D kernel; the image is smaller than the coarse kernel (borders replicated many times)."""
    import numpy as np

    from dfsfuse.baselines import WARM_CONTRAST_SIGMAS, warm_contrast_map
    from dfsfuse.models.blocks import warm_contrast

    assert WARM_CONTRAST_SIGMAS == (2.0, 8.0)
    ir = np.random.default_rng(3).uniform(0, 1, (20, 36))
    expected = np.maximum(_edge_gaussian(ir, 2.0) - _edge_gaussian(ir, 8.0), 0)
    np.testing.assert_allclose(warm_contrast_map(ir), expected, atol=1e-12)
    got = warm_contrast(torch.from_numpy(ir).float()[None, None])[0, 0].double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def _warm_target_head(kind: str):
    """A head of ``kind`` with zero features, and a warm IR target on a brighter visible background:
    (head, ir, vis, features, ir·255 and vis·255 as float64 arrays)."""
    ir = torch.full((1, 1, 64, 64), 0.3)
    ir[..., 28:36, 28:36] = 0.5                      # a warm target...
    vis = torch.full((1, 1, 64, 64), 0.6)            # ...on a brighter visible background
    a, b = ir[0, 0].double().numpy() * 255, vis[0, 0].double().numpy() * 255
    return FusionHead(4, kind), ir, vis, torch.zeros(1, 4, 64, 64), a, b


def test_region_contrast_head_starts_at_its_rule_and_learns_the_gain_of_warm_contrast():
    """Zero maps: the ``region-contrast`` rule (region-max + 2·relu(G2*ir − G8*ir)). A gain map g:
    F = region-max + (2 + g)·relu(G2*ir − G8*ir) (g = −2: exactly region-max), and the gain's
    gradient is that map, so a loss can move it only where IR is warmer than its surroundings."""
    import numpy as np

    from dfsfuse.baselines import REGION_CONTRAST_GAIN, baseline_fusion, region_max_fusion, warm_contrast_map

    head, ir, vis, feats, a, b = _warm_target_head("region-contrast")
    assert head.conv.out_channels == 3
    out = head(feats, ir, vis)
    rule = baseline_fusion(a, b, "region-contrast").astype(np.float64)
    assert np.abs(out[0, 0].detach().double().numpy() * 255 - rule).max() <= 0.5 + 1e-3  # rule = 8-bit rounding
    assert rule[28:36, 28:36].mean() - rule[4:12, 4:12].mean() > 20    # the target stands out...
    assert region_max_fusion(a, b)[28:36, 28:36].mean() == pytest.approx(b[0, 0])   # ...region-max hides it
    (-out[..., 28:36, 28:36].mean()).backward()      # a loss that wants the target brighter
    g_grad = -head.conv.bias.grad[2].item()
    expected_grad = warm_contrast_map(a / 255)[28:36, 28:36].mean()
    assert g_grad == pytest.approx(expected_grad, rel=1e-4) and expected_grad > 0.05
    with torch.no_grad():
        head.conv.bias.copy_(torch.tensor([0.0, 0.0, -REGION_CONTRAST_GAIN]))
        out = head(feats, ir, vis)[0, 0].double().numpy() * 255
    np.testing.assert_allclose(out, region_max_fusion(a, b), atol=1e-3)


def test_region_gain_head_is_region_contrast_without_the_free_residual():
    """``region-gain``: two maps (z, g). Zero maps give the ``region-contrast`` rule; the second map is
    the warm-contrast gain (g = −2: region-max), so no map can change a pixel where IR is not warmer
    than its surroundings and the selection prior is saturated."""
    import numpy as np

    from dfsfuse.baselines import REGION_CONTRAST_GAIN, baseline_fusion, region_max_fusion, warm_contrast_map

    head, ir, vis, feats, a, b = _warm_target_head("region-gain")
    assert head.conv.out_channels == 2
    out = head(feats, ir, vis)
    rule = baseline_fusion(a, b, "region-contrast").astype(np.float64)
    assert np.abs(out[0, 0].detach().double().numpy() * 255 - rule).max() <= 0.5 + 1e-3
    (-out[..., 28:36, 28:36].mean()).backward()
    assert -head.conv.bias.grad[1].item() == pytest.approx(warm_contrast_map(a / 255)[28:36, 28:36].mean(), rel=1e-4)
    with torch.no_grad():
        head.conv.bias.copy_(torch.tensor([0.0, -REGION_CONTRAST_GAIN]))
        np.testing.assert_allclose(head(feats, ir, vis)[0, 0].double().numpy() * 255, region_max_fusion(a, b), atol=1e-3)
        head.conv.bias.copy_(torch.tensor([0.0, 5.0]))   # a large gain moves only the warm target
        moved = (head(feats, ir, vis) - FusionHead(4, "region-gain")(feats, ir, vis)).abs()[0, 0]
    assert moved[30:34, 30:34].min() > 0.05 and moved[:8, :8].max() == 0.0


def test_region_contrast_rule_equals_region_max_on_flat_ir():
    import numpy as np

    from dfsfuse.baselines import baseline_fusion

    vis = np.random.default_rng(4).integers(0, 256, (40, 48)).astype(np.float64)
    ir = np.full((40, 48), 70.0)
    np.testing.assert_array_equal(baseline_fusion(ir, vis, "region-contrast"), baseline_fusion(ir, vis, "region-max"))


def test_gamma_contrast_rule_brightens_only_dark_visible_images_and_matches_the_model_twin():
    """gamma-contrast = region-contrast of IR and vis^γ (γ from the image mean, computed here by hand);
    a day image is fused exactly like region-contrast; the brightening keeps the pixel order and lifts a dim
    image's mean close to the target; the numpy and torch brightenings agree."""
    import numpy as np

    from dfsfuse.baselines import baseline_fusion, region_contrast_fusion
    from dfsfuse.models.blocks import brighten_dark

    rng = np.random.default_rng(5)
    ir = rng.integers(0, 256, (40, 48)).astype(np.float64)
    day = rng.integers(110, 256, (40, 48)).astype(np.float64)
    np.testing.assert_array_equal(baseline_fusion(ir, day, "gamma-contrast"), baseline_fusion(ir, day, "region-contrast"))
    night = np.round(day * 0.15)  # mean ≈ 0.11
    gamma = np.log(0.4) / np.log(night.mean() / 255.0)
    assert 0.35 < gamma < 0.5
    expected = np.clip(np.round(region_contrast_fusion(ir, 255.0 * (night / 255.0) ** gamma)), 0, 255)
    np.testing.assert_array_equal(baseline_fusion(ir, night, "gamma-contrast"), expected.astype(np.uint8))
    cold = np.round(ir * 0.05)  # a cold scene: the visible image is what region-max keeps, brightened here
    assert baseline_fusion(cold, night, "gamma-contrast").mean() > baseline_fusion(cold, night, "region-contrast").mean() + 40
    from dfsfuse.baselines import brighten_dark as brighten_np

    smooth_day = rng.uniform(60, 255, (40, 48))  # mean above the target: left alone
    assert np.allclose(brighten_np(smooth_day), smooth_day)
    dim = 0.25 * smooth_day  # mean ≈ 0.16: γ = ln 0.4 / ln m lifts the mean close to 0.4, order kept
    lifted = brighten_np(dim)
    assert np.allclose(lifted, 255 * (dim / 255) ** (np.log(0.4) / np.log(dim.mean() / 255)))
    assert 0.33 < lifted.mean() / 255 < 0.42
    assert np.array_equal(np.argsort(lifted.ravel(), kind="stable"), np.argsort(dim.ravel(), kind="stable"))
    torch_version = brighten_dark(torch.from_numpy(night / 255.0)[None, None].float(), 0.4)[0, 0].double().numpy() * 255
    np.testing.assert_allclose(torch_version, brighten_np(night), atol=1e-3)


@pytest.mark.parametrize("name", ["student", "teacher"])
def test_heads_are_a_kwarg_of_the_fusion_models(name):
    kwargs = {"dim": 8} if name == "teacher" else {"width": 4}
    ir, vis = _scene(7, 33)
    assert create_model(name, **kwargs).arch_kwargs["head"] == "region"  # the default
    for head in HEADS:
        model = create_model(name, head=head, **kwargs)
        assert model.arch_kwargs["head"] == head
        assert model(ir, vis).fused.shape == ir.shape


def test_models_saved_before_heads_existed_still_load(tmp_path):
    """A folder as dfsfuse 0.1.0 wrote it: no ``head`` kwarg, the head conv stored as ``head.*``."""
    old = create_model("student", width=4, head="residual")
    state = {k.replace("head.conv.", "head."): v.contiguous() for k, v in old.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "student", "kwargs": {"width": 4, "norm": False}}))
    loaded = from_pretrained(tmp_path)
    assert loaded.arch_kwargs["head"] == "residual"
    ir, vis = _scene(8, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ir, vis).fused, old.eval()(ir, vis).fused)


def test_poisson_rule_reproduces_a_source_when_the_other_is_flat_and_keeps_both_edges():
    import numpy as np

    from dfsfuse.baselines import baseline_fusion, poisson_fusion

    rng = np.random.default_rng(0)
    a = rng.random((13, 17)) * 200
    out = poisson_fusion(a, np.full_like(a, 7.0))
    np.testing.assert_allclose(out - out.mean(), a - a.mean(), atol=1e-9)
    # Two step edges, one per source, the dimmer one under the brighter source: both survive.
    ir = np.full((20, 20), 200.0)
    ir[:, 10:] = 150.0              # IR: a vertical edge, bright everywhere
    vis = np.full((20, 20), 20.0)
    vis[10:, :] = 60.0              # VIS: a horizontal edge, dim everywhere
    fused = poisson_fusion(ir, vis)
    assert np.ptp(baseline_fusion(ir, vis, "max")[:, 3]) == 0          # max loses the VIS edge
    assert fused[15, 3] - fused[5, 3] == pytest.approx(40.0, abs=1e-6)  # Poisson keeps it
    assert fused[5, 15] - fused[5, 3] == pytest.approx(-50.0, abs=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (13, 17), (64, 48), (75, 101)])
def test_laplacian_rule_is_an_exact_pyramid_and_keeps_the_stronger_contrast(shape):
    import numpy as np

    from dfsfuse.baselines import _binomial_blur, _expand, _laplacian_pyramid, laplacian_max_fusion

    rng = np.random.default_rng(2)
    a = rng.random(shape) * 200
    # a pyramid reconstructs its image exactly, so fusing an image with itself or with black returns it
    details, base = _laplacian_pyramid(a, 4)
    rebuilt = base
    for d in reversed(details):
        rebuilt = _expand(rebuilt, d.shape) + d
    np.testing.assert_allclose(rebuilt, a, atol=1e-9)
    np.testing.assert_allclose(laplacian_max_fusion(a, a), a, atol=1e-9)
    np.testing.assert_allclose(laplacian_max_fusion(a, np.zeros(shape)), a, atol=1e-9)
    if min(shape) >= 13:
        # the binomial kernel against an independent 2-D convolution (reflected borders)
        k = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
        p = np.pad(a, 2, mode="reflect")
        ref = sum(k[i, j] * p[i:i + shape[0], j:j + shape[1]] for i in range(5) for j in range(5))
        np.testing.assert_allclose(_binomial_blur(a), ref, atol=1e-9)


def test_laplacian_rule_keeps_a_warm_target_that_max_flattens():
    import numpy as np

    from dfsfuse.baselines import baseline_fusion

    # IR: a dim scene with a warm 6×6 target (+40); VIS: brighter everywhere, no target.
    ir = np.full((64, 64), 60.0)
    ir[29:35, 29:35] = 100.0
    vis = np.full((64, 64), 120.0)
    target, around = (slice(29, 35), slice(29, 35)), (slice(29, 35), slice(40, 46))
    contrast = {m: baseline_fusion(ir, vis, m).astype(float) for m in ("max", "region-max", "laplacian")}
    contrast = {m: f[target].mean() - f[around].mean() for m, f in contrast.items()}
    assert contrast["max"] == 0 and contrast["region-max"] < 5   # both show VIS there
    assert contrast["laplacian"] > 20                            # the IR target's contrast survives
    assert set(np.unique(baseline_fusion(vis, vis, "laplacian"))) == {120}


def test_ir_contrast_rule_is_vis_plus_irs_positive_local_contrast():
    import numpy as np

    from dfsfuse.baselines import IR_CONTRAST_GAIN, baseline_fusion, ir_contrast_fusion

    # Against an independent 2-D Gaussian convolution with reflected borders (σ given explicitly).
    rng = np.random.default_rng(0)
    ir, vis = rng.uniform(0, 255, (12, 16)), rng.uniform(0, 255, (12, 16))
    sigma = 1.3
    r = int(np.ceil(3 * sigma))
    t = np.arange(-r, r + 1)
    k = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma ** 2))
    k /= k.sum()
    p = np.pad(ir, r, mode="reflect")
    local = sum(k[i, j] * p[i:i + 12, j:j + 16] for i in range(2 * r + 1) for j in range(2 * r + 1))
    np.testing.assert_allclose(ir_contrast_fusion(ir, vis, sigma=sigma),
                               vis + IR_CONTRAST_GAIN * np.maximum(ir - local, 0), atol=1e-9)
    # Flat IR adds nothing: the visible image exactly.
    vis8 = rng.integers(0, 256, (48, 64)).astype(np.float64)
    np.testing.assert_array_equal(baseline_fusion(np.full((48, 64), 90.0), vis8, "ir-contrast"), vis8)
    # A warm target on a bright visible background: max and region-max show VIS there, this rule
    # brightens the target above its surroundings (the default σ: short side / 60).
    ir = np.full((120, 120), 60.0)
    ir[57:63, 57:63] = 100.0
    vis = np.full((120, 120), 120.0)
    fused = baseline_fusion(ir, vis, "ir-contrast").astype(float)
    assert fused[57:63, 57:63].mean() - fused[57:63, 80:86].mean() > 40  # more than its IR contrast
    assert baseline_fusion(ir, vis, "max")[57:63, 57:63].mean() == 120


def test_max_gain_rule_is_a_contrast_stretch_of_max():
    import numpy as np

    from dfsfuse.baselines import CONTRAST_GAIN, baseline_fusion

    rng = np.random.default_rng(1)
    a, b = rng.random((8, 9)) * 100 + 50, rng.random((8, 9)) * 100 + 50
    m = np.maximum(a, b)
    expected = np.clip(np.round(m.mean() + CONTRAST_GAIN * (m - m.mean())), 0, 255)
    np.testing.assert_array_equal(baseline_fusion(a, b, "max-gain"), expected.astype(np.uint8))


def test_minmax_stretch_convention():
    import numpy as np

    from dfsfuse.metrics import apply_stretch

    f = np.array([[10.0, 20.0], [30.0, 60.0]])
    np.testing.assert_array_equal(apply_stretch(f, "minmax"), np.round(255 * (f - 10) / 50))
    np.testing.assert_array_equal(apply_stretch(f, "none"), f)
    flat = np.full((3, 3), 42.0)
    np.testing.assert_array_equal(apply_stretch(flat, "minmax"), flat)
    with pytest.raises(ValueError, match="unknown stretch"):
        apply_stretch(f, "gamma")


def test_eval_cli_stretch_raises_sd_of_a_low_contrast_fusion(tmp_path):
    import numpy as np
    from PIL import Image

    from dfsfuse.cli import main

    rng = np.random.default_rng(0)
    for sub in ("ir", "vi", "fused"):
        (tmp_path / sub).mkdir()
    ir = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    vi = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    fused = (100 + ((ir.astype(int) + vi) // 8)).astype(np.uint8)  # values in [100, 163]
    for sub, img in (("ir", ir), ("vi", vi), ("fused", fused)):
        Image.fromarray(img).save(tmp_path / sub / "a.png")
    results = {}
    for mode in ("none", "minmax"):
        out = tmp_path / f"{mode}.json"
        assert main(["eval", "--fused", str(tmp_path / "fused"), "--ir", str(tmp_path / "ir"),
                     "--vi", str(tmp_path / "vi"), "--json", str(out), "--stretch", mode]) == 0
        results[mode] = json.loads(out.read_text())["mean"]["SD"]
    f = fused.astype(float)
    stretched = np.round(255 * (f - f.min()) / np.ptp(f))
    assert results["none"] == pytest.approx(fused.std(), rel=1e-6)
    assert results["minmax"] == pytest.approx(stretched.std(), rel=1e-6)
