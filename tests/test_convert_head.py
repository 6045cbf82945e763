"""dfsfuse.models.convert: a trained network moved to another output head without retraining."""

from __future__ import annotations

import pytest
import torch

from dfsfuse.models import create_model
from dfsfuse.models.blocks import fused_from_head
from dfsfuse.models.convert import convert_head


def _trained_looking(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(1)
    model = create_model(name, head="region-contrast", **kwargs).eval()
    conv = model.head if isinstance(model.head, torch.nn.Conv2d) else model.head.conv
    with torch.no_grad():   # every map non-zero, as after training
        conv.weight.normal_(0, 0.05)
        conv.bias.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("name,kwargs", [("student_fast", {"width": 4}),
                                         ("student_fast", {"width": 4, "upsample": "shuffle"}),
                                         ("teacher", {"dim": 8})])
def test_region_gain_conversion_is_the_model_with_its_residual_map_zeroed(name, kwargs):
    """Independent computation: capture the original head's maps, zero r, apply the rule."""
    model = _trained_looking(name, **kwargs)
    conv = model.head if isinstance(model.head, torch.nn.Conv2d) else model.head.conv
    ir, vis = torch.rand(1, 1, 32, 40), torch.rand(1, 1, 32, 40)
    captured = {}
    hook = conv.register_forward_hook(lambda m, i, o: captured.__setitem__("raw", o))
    with torch.no_grad():
        full = model(ir, vis).fused
    hook.remove()
    raw = captured["raw"]
    if name == "student_fast":
        raw = (torch.nn.functional.pixel_shuffle(raw, model.scale) if kwargs.get("upsample") == "shuffle" else
               torch.nn.functional.interpolate(raw, scale_factor=model.scale, mode="bilinear", align_corners=False))
    raw = raw[..., :32, :40].clone()
    assert raw[:, 1].abs().max() > 0.01
    raw[:, 1] = 0
    converted = convert_head(model, "region-gain")
    assert converted.arch_kwargs["head"] == "region-gain" and not converted.training
    with torch.no_grad():
        out = converted(ir, vis).fused
    torch.testing.assert_close(out, fused_from_head(raw, ir, vis, "region-contrast"))
    assert (out - full).abs().max() > 1e-3                      # r did something, and it is gone
    assert model.arch_kwargs["head"] == "region-contrast"       # the source is untouched
    with torch.no_grad():
        torch.testing.assert_close(model(ir, vis).fused, full)


def test_unsupported_conversions_are_a_clear_error():
    with pytest.raises(ValueError, match="region-contrast -> region-gain"):
        convert_head(create_model("student_fast", width=4), "region-gain")    # a region head has no r
    with pytest.raises(ValueError, match="cannot convert"):
        convert_head(_trained_looking("student_fast", width=4), "blend")
