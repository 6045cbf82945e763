"""Model folders: float16 storage and folder copies (save_pretrained / copy_model_folder)."""

from __future__ import annotations

import json

import pytest
import torch

from dfsfuse.export import copy_model_folder, from_pretrained, save_pretrained
from dfsfuse.models import create_model


def test_float16_storage_halves_the_file_and_loads_back_as_float32(tmp_path):
    torch.manual_seed(0)
    model = create_model("teacher", dim=8, bottleneck_depth=1).eval()
    full = save_pretrained(model, tmp_path / "full", card="# card\n", role="teacher", train_steps=5)
    (full / "sample.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    half = copy_model_folder(full, tmp_path / "half", storage="float16")
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    config = json.loads((half / "config.json").read_text())
    assert config["storage"] == "float16" and config["role"] == "teacher" and config["train_steps"] == 5
    assert (half / "README.md").read_text() == "# card\n" and (half / "sample.png").is_file()
    loaded = from_pretrained(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a.half().float(), msg=k)
    ir, vis = torch.rand(1, 1, 24, 32), torch.rand(1, 1, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ir, vis).fused, model(ir, vis).fused, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="storage"):
        save_pretrained(model, tmp_path / "bad", storage="int8")
    huge = create_model("student", width=4)
    with torch.no_grad():
        next(huge.parameters()).fill_(1e6)
    with pytest.raises(ValueError, match="float16 range"):
        save_pretrained(huge, tmp_path / "huge", storage="float16")
    assert not (tmp_path / "huge").exists()
