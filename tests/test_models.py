"""Networks: registry, output contract, shapes on odd sizes, gradients, rebuild, compile, budgets."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from torch import nn

from dfsfuse.models import (
    FUSION,
    FUSION_FEATURES,
    SEGMENTATION,
    FusionModel,
    FusionOutput,
    SegmentationOutput,
    create_model,
    get_model_spec,
    list_models,
    model_from_config,
    model_kind,
    profile,
    register_model,
)
from dfsfuse.models.blocks import WaveletBlock

SMALL = (61, 77)
LARGE = (475, 575)


def _inputs(kind: str, size: tuple[int, int], batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    count = 2 if kind == FUSION else 1
    return tuple(torch.rand(batch, 1, *size, generator=gen) for _ in range(count))


def _build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name)


def _main_output(out: FusionOutput | SegmentationOutput) -> torch.Tensor:
    return out.fused if isinstance(out, FusionOutput) else out.logits


def _check_output(name: str, model: nn.Module, out: object, size: tuple[int, int], batch: int) -> None:
    kind = model_kind(name)
    if kind == FUSION:
        assert isinstance(out, FusionOutput)
        assert out.fused.shape == (batch, 1, *size)
        assert torch.isfinite(out.fused).all()
        assert out.fused.min() >= 0.0 and out.fused.max() <= 1.0
        assert tuple(out.features) == FUSION_FEATURES
        stride = model.feature_stride
        feature_size = tuple(-(-n // stride) for n in size)
        for feature, channels in model.feature_channels.items():
            assert out.features[feature].shape == (batch, channels, *feature_size), feature
            assert torch.isfinite(out.features[feature]).all(), feature
    else:
        assert isinstance(out, SegmentationOutput)
        assert out.logits.shape == (batch, model.num_classes, *size)
        assert torch.isfinite(out.logits).all()
        assert list(out.features) == list(model.feature_channels)
        for feature, channels in model.feature_channels.items():
            assert out.features[feature].shape[:2] == (batch, channels), feature


def test_registry_lists_the_three_networks() -> None:
    names = list_models()
    assert {"teacher", "student", "segmenter"} <= set(names)
    assert model_kind("teacher") == model_kind("student") == FUSION
    assert model_kind("segmenter") == SEGMENTATION
    assert set(list_models(FUSION)) | set(list_models(SEGMENTATION)) == set(names)
    assert get_model_spec("student").description


def test_registry_errors() -> None:
    with pytest.raises(KeyError, match="registered models"):
        create_model("no_such_model")
    with pytest.raises(TypeError, match="JSON"):
        create_model("student", norm=np.bool_(False))
    # A keyword the architecture does not take (e.g. the teacher's `dim` left in
    # model.teacher_kwargs when switching model.teacher): the model and the key, its real arguments.
    with pytest.raises(ValueError, match=r"'student_fast' takes no argument 'dim' \(its arguments: width, scale"):
        create_model("student_fast", dim=16)
    with pytest.raises(ValueError, match="kind"):
        register_model("bad_kind", kind="detector")(nn.Identity)
    with pytest.raises(ValueError, match="already registered"):

        @register_model("student")
        class Impostor(FusionModel):
            """Not the real student."""

            def __init__(self) -> None:
                super().__init__()

    assert "bad_kind" not in list_models()


def test_arch_config_is_recorded_for_direct_construction_and_builders() -> None:
    from dfsfuse.models import Student

    model = Student(width=8)
    assert model.arch_config() == {"architecture": "student", "kwargs": {"width": 8, "norm": False, "head": "region"}}
    json.dumps(create_model("segmenter", out_indices=(2, 3, 4)).arch_config())
    assert create_model("segmenter", out_indices=(2, 3, 4)).arch_kwargs["out_indices"] == [2, 3, 4]


def test_named_variants_record_their_name_and_full_kwargs() -> None:
    assert {"teacher_cpu", "student_w8", "student_w16"} <= set(list_models(FUSION))
    assert create_model("student_w8").arch_config() == {
        "architecture": "student_w8", "kwargs": {"width": 8, "norm": False, "head": "region"}}
    assert create_model("student_w16", head="residual").arch_kwargs == {"width": 16, "norm": False, "head": "residual"}
    assert create_model("teacher_cpu", bottleneck_depth=1).arch_kwargs["dim"] == 16
    assert model_from_config(create_model("student_w8").arch_config()).width == 8


def test_kwargs_are_recorded_by_the_base_class_not_the_registry() -> None:
    class Unregistered(FusionModel):
        def __init__(self, width: int = 2, sizes: tuple = (1, 2)) -> None:
            super().__init__()
            self.width = width

        @property
        def feature_channels(self) -> dict:
            return {}

        def forward(self, ir, vis_y):
            return FusionOutput(fused=ir)

    class Child(Unregistered):
        pass

    assert Unregistered(width=3).arch_config() == {"architecture": "", "kwargs": {"width": 3, "sizes": [1, 2]}}
    assert Child(width=5).arch_kwargs == {"width": 5, "sizes": [1, 2]}
    from dfsfuse.models import Student

    assert Student.registry_name == "student" and "registry_name" not in vars(FusionModel)


@pytest.mark.parametrize("name", list_models())
def test_forward_small_odd_size(name: str) -> None:
    model = _build(name).eval()
    with torch.no_grad():
        out = model(*_inputs(model_kind(name), SMALL))
    _check_output(name, model, out, SMALL, batch=2)


@pytest.mark.parametrize("name", list_models())
def test_forward_large_odd_size(name: str) -> None:
    model = _build(name).eval()
    inputs = _inputs(model_kind(name), LARGE, batch=1)
    start = time.perf_counter()
    with torch.no_grad():
        out = model(*inputs)
    elapsed = time.perf_counter() - start
    _check_output(name, model, out, LARGE, batch=1)
    assert elapsed < 60, f"{name} took {elapsed:.1f}s at {LARGE}"


@pytest.mark.parametrize("name", list_models())
def test_backward_gives_finite_gradients(name: str) -> None:
    model = _build(name).train()
    inputs = _inputs(model_kind(name), SMALL)
    out = model(*inputs)
    loss = _main_output(out).square().mean() + sum(f.square().mean() for f in out.features.values())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(g).all() for g in grads.values())
    nonzero = sum(bool(g.abs().sum() > 0) for g in grads.values())
    assert nonzero >= 0.9 * len(grads)


@pytest.mark.parametrize("name", list_models())
def test_rebuild_from_config_gives_identical_output(name: str) -> None:
    model = _build(name, seed=1).eval()
    config = json.loads(json.dumps(model.arch_config()))
    assert config["architecture"] == name
    torch.manual_seed(2)
    rebuilt = model_from_config(config).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    inputs = _inputs(model_kind(name), (37, 45), batch=1)
    with torch.no_grad():
        expected = model(*inputs)
        actual = rebuilt(*inputs)
    torch.testing.assert_close(_main_output(actual), _main_output(expected), rtol=0, atol=0)
    for feature in expected.features:
        torch.testing.assert_close(actual.features[feature], expected.features[feature], rtol=0, atol=0)


def test_fusion_models_share_feature_names() -> None:
    for name in list_models(FUSION):
        assert tuple(create_model(name).feature_channels) == FUSION_FEATURES, name


def test_student_width_knob() -> None:
    small, default = create_model("student", width=8), create_model("student")
    assert small.feature_channels["fusion"] == 8
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in default.parameters())
    out = small(*_inputs(FUSION, SMALL))
    assert out.features["decoder"].shape == (2, 8, *SMALL)


def test_student_torch_compile_matches_eager() -> None:
    model = _build("student").eval()
    compiled = torch.compile(model)
    inputs = _inputs(FUSION, SMALL, batch=1)
    with torch.no_grad():
        expected = model(*inputs)
        actual = compiled(*inputs)
    assert isinstance(actual, FusionOutput)
    torch.testing.assert_close(actual.fused, expected.fused, rtol=0, atol=1e-5)
    for feature in FUSION_FEATURES:
        torch.testing.assert_close(actual.features[feature], expected.features[feature], rtol=1e-5, atol=1e-5)


def test_student_budget_against_teacher() -> None:
    teacher, student = profile("teacher"), profile("student")
    assert (teacher.height, teacher.width) == (480, 640)
    assert teacher.params >= 10 * student.params
    assert teacher.macs >= 10 * student.macs
    assert student.macs <= 5e9
    assert student.flops == 2 * student.macs


def test_profile_counts_known_layers() -> None:
    model = create_model("student", width=4)
    result = profile(model, size=(10, 20), batch=3)
    pixels = 3 * 10 * 20
    w = 4
    per_pixel = (
        2 * (9 * w + 2 * (9 * w + w * w))  # two encoders: stem + two separable blocks
        + (2 * w * w + 9 * w + w * w)  # fusion: 1×1 then separable block
        + (3 * w * w + 9 * w + w * w)  # decoder: 1×1 on the dense concat then separable block
        + 2 * 9 * w  # region head: weight and residual channels
    )
    # (The region head's fixed Gaussian prior is a sum of shifted slices, not a conv: not counted.)
    assert result.macs == per_pixel * pixels
    assert result.params == sum(p.numel() for p in model.parameters())
    assert next(model.parameters()).device.type == "cpu"


def test_wavelet_block_handles_odd_sizes_and_reconstructs() -> None:
    block = WaveletBlock(3)
    for conv in (block.low[-1], block.high[-1]):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    x = torch.rand(1, 3, 15, 22)
    torch.testing.assert_close(block(x), x, rtol=0, atol=1e-5)
