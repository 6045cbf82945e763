"""``stage.ema``: a stage that ends on the moving average of its weights (timm's ModelEmaV3 with
warm-up), checked against a hand-computed average, across a resume, and in the config."""

from __future__ import annotations

from typing import List, Optional

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from dfsfuse.train.config import ConfigError, StageConfig, TrainConfig, load_config
from dfsfuse.train.loop import CheckpointError, train_stage

STEPS = 6


class _Toy(nn.Module):
    """A regression with a BatchNorm, so buffers are averaged too."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, batch: dict) -> dict:
        return {"mse": ((self.net(batch["x"]) - batch["y"]) ** 2).mean()}


class _Cut(Exception):
    pass


def _state(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _fit(root, ema: float, resume: bool = False, record: Optional[List[dict]] = None,
         cut_at: Optional[int] = None) -> dict:
    """Train the toy for STEPS steps (checkpoints every 2); ``record`` gets the weights before
    each step; ``cut_at`` raises before that step (a crash after the checkpoint of step 2)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = [{"x": torch.randn(4, generator=g), "y": torch.randn(1, generator=g)} for _ in range(16)]
    accelerator = Accelerator(cpu=True)
    module = _Toy()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module, optimizer, loader = accelerator.prepare(module, optimizer, DataLoader(data, batch_size=4))

    def on_step(step: int) -> None:
        if record is not None:
            record.append(_state(accelerator.unwrap_model(module)))
        if cut_at is not None and step == cut_at:
            raise _Cut

    stage = StageConfig(steps=STEPS, lr=0.1, warmup_steps=0, batch_size=4, grad_clip=0.0, ema=ema)
    train_stage(accelerator, "toy", module, optimizer, loader, stage, STEPS,
                TrainConfig(checkpoint_every=2, log_every=100), root, resume=resume, on_step=on_step)
    return _state(accelerator.unwrap_model(module))


def test_stage_ends_on_the_warmed_up_moving_average_of_its_weights(tmp_path):
    """The weights w_1..w_N of a plain run, averaged by hand with decay min(D, 1 − k^(−2/3)) at
    the k-th step, equal what the same run with ``ema=D`` ends on (BN statistics included)."""
    before: List[dict] = []
    last = _fit(tmp_path / "plain", 0.0, record=before)
    weights = before[1:] + [last]  # w_1 .. w_N
    decay = 0.8
    average = {k: v.double() for k, v in weights[0].items() if v.is_floating_point()}
    for k, w in enumerate(weights[1:], start=2):
        d = min(decay, 1.0 - k ** (-2.0 / 3.0))
        average = {name: d * a + (1 - d) * w[name].double() for name, a in average.items()}
    ended = _fit(tmp_path / "ema", decay)
    for name, a in average.items():
        torch.testing.assert_close(ended[name].double(), a, rtol=0, atol=1e-6, msg=name)
    assert not torch.allclose(ended["net.0.weight"], last["net.0.weight"], atol=1e-4)  # not the last weights


def test_a_resumed_stage_ends_on_the_same_average_as_an_uninterrupted_one(tmp_path):
    full = _fit(tmp_path / "full", 0.9)
    with pytest.raises(_Cut):
        _fit(tmp_path / "cut", 0.9, cut_at=3)
    assert (tmp_path / "cut" / "step_000002" / "ema.safetensors").is_file()
    resumed = _fit(tmp_path / "cut", 0.9, resume=True)
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    # a finished stage resumed again hands back the average, not the last checkpoint's raw weights
    again = _fit(tmp_path / "cut", 0.9, resume=True)
    assert all(torch.equal(full[k], again[k]) for k in full)


def test_turning_ema_on_for_a_checkpoint_without_it_is_a_one_line_error(tmp_path):
    _fit(tmp_path / "run", 0.0)
    with pytest.raises(CheckpointError, match=r"step_000006: no ema\.safetensors"):
        _fit(tmp_path / "run", 0.5, resume=True)


@pytest.mark.parametrize("stage", ["teacher", "student", "segmenter"])
@pytest.mark.parametrize("value", [1.0, -0.1])
def test_ema_outside_0_1_is_a_config_error(stage, value):
    with pytest.raises(ConfigError, match=rf"{stage}\.ema must be in \[0, 1\)"):
        load_config(None, [f"{stage}.ema={value}"])
