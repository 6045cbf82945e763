"""Reliability: non-finite losses, corrupt or tampered checkpoints, NaN never exported,
distributed sharding, SIGKILL recovery."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import RECIPE, TINY, _env, _recipe, launch_cmd, small_heldout  # noqa: F401  (fixture re-used)

import dfsfuse.train.objectives as objectives
from dfsfuse.export import save_pretrained
from dfsfuse.models import create_model
from dfsfuse.train.loop import checkpoint_dirs
from dfsfuse.train.tracking import read_log

NO_EVAL = ["eval.sets=[]", "eval.synthetic=1"]


def _spoil_intensity_from_call(monkeypatch, n: int, spoil):
    """From the teacher stage's ``n``-th call on, replace its intensity term by ``spoil(objective, term)``."""
    original = objectives.TeacherObjective.forward
    calls = {"n": 0}

    def forward(self, batch):
        terms = original(self, batch)
        calls["n"] += 1
        if calls["n"] >= n:
            terms["intensity"] = spoil(self, terms["intensity"])
        return terms

    monkeypatch.setattr(objectives.TeacherObjective, "forward", forward)


def _nan_on_call(monkeypatch, n: int):
    """Make the teacher stage's intensity term NaN from its ``n``-th call on."""
    _spoil_intensity_from_call(monkeypatch, n, lambda objective, term: term * float("nan"))


def test_nonfinite_loss_stops_naming_step_and_term(monkeypatch, tmp_path, capsys):
    _nan_on_call(monkeypatch, 2)
    out = tmp_path / "run"
    assert _recipe().main([*TINY, *NO_EVAL, "train.checkpoint_every=1", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "[teacher] step 2: loss term 'intensity' is not finite" in err
    # The checkpoint of step 1 exists; nothing with NaN was written after it.
    assert [p.name for p in checkpoint_dirs(out / "checkpoints" / "teacher")] == ["step_000001"]
    assert not (out / "teacher").exists()


def test_nonfinite_loss_can_skip_the_step(monkeypatch, tmp_path, capsys):
    _nan_on_call(monkeypatch, 3)
    out = tmp_path / "run"
    rc = _recipe().main([*TINY, *NO_EVAL, "train.on_nonfinite=skip", "teacher.steps=3", "student.steps=1",
                         "--output", str(out)])
    # Steps 3.. of the teacher are skipped (NaN), the run still finishes and exports finite weights.
    assert rc == 0
    assert "step skipped" in capsys.readouterr().out
    assert (out / "student" / "model.safetensors").is_file()


def _nan_gradient_on_call(monkeypatch, n: int):
    """From the teacher stage's ``n``-th call on, add ``0·sqrt(p − p)`` to a term: the loss stays finite,
    the gradient of ``p`` is ``0·∞`` = NaN (what a faulty backward kernel does)."""
    def spoil(objective, term):
        p = next(objective.parameters()).flatten()[0]
        return term + 0.0 * torch.sqrt(p - p.detach())

    _spoil_intensity_from_call(monkeypatch, n, spoil)


def test_nonfinite_gradient_with_finite_loss_stops_before_the_weights_change(monkeypatch, tmp_path, capsys):
    _nan_gradient_on_call(monkeypatch, 2)
    out = tmp_path / "run"
    assert _recipe().main([*TINY, *NO_EVAL, "train.checkpoint_every=1", "--output", str(out)]) == 2
    assert "[teacher] step 2: a gradient is not finite (the loss is)" in capsys.readouterr().err
    assert [p.name for p in checkpoint_dirs(out / "checkpoints" / "teacher")] == ["step_000001"]


def test_nonfinite_gradient_can_skip_the_step_and_weights_stay_finite(monkeypatch, tmp_path, capsys):
    _nan_gradient_on_call(monkeypatch, 2)
    out = tmp_path / "run"
    rc = _recipe().main([*TINY, *NO_EVAL, "train.on_nonfinite=skip", "teacher.steps=3", "student.steps=1",
                         "--output", str(out)])
    assert rc == 0
    assert "a gradient is not finite (the loss is); step skipped" in capsys.readouterr().out
    assert (out / "student" / "model.safetensors").is_file()  # export refuses non-finite weights


def test_nan_weights_are_never_exported(tmp_path):
    model = create_model("student")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite weights"):
        save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, small_heldout):  # noqa: F811
    """A run interrupted... by design: only the teacher stage with a checkpoint every step."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert _recipe().main([*TINY, *NO_EVAL, "teacher.steps=2", "student.steps=1", "train.checkpoint_every=1",
                           "--output", str(out)]) == 0
    return out


def test_truncated_checkpoint_gives_one_line_error(checkpointed_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    shutil.rmtree(run / "teacher")  # force stage 1 to resume from its checkpoint
    ckpt = checkpoint_dirs(run / "checkpoints" / "teacher")[-1]
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert _recipe().main([*TINY, *NO_EVAL, "teacher.steps=3", "--resume", "--output", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and "cannot load checkpoint" in err[0]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_in_checkpoint_is_never_executed(checkpointed_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    shutil.rmtree(run / "teacher")
    ckpt = checkpoint_dirs(run / "checkpoints" / "teacher")[-1]
    marker = tmp_path / "pwned"
    for name in ("optimizer.bin", "random_states_0.pkl"):
        (ckpt / name).write_bytes(pickle.dumps(_Payload(marker)))
    rc = _recipe().main([*TINY, *NO_EVAL, "teacher.steps=3", "--resume", "--output", str(run)])
    assert rc == 2 and "cannot load checkpoint" in capsys.readouterr().err
    assert not marker.exists()


SHARD_SCRIPT = r"""
import json, os, sys
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from torch.utils.data import DataLoader, Dataset

class Index(Dataset):
    def __len__(self): return 24
    def __getitem__(self, i): return torch.tensor(i)

acc = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True, data_seed=0))
loader = acc.prepare(DataLoader(Index(), batch_size=8, shuffle=True, drop_last=True))
seen = {}
for epoch in range(2):
    loader.set_epoch(epoch)
    seen[epoch] = [int(i) for b in loader for i in b]
with open(os.path.join(sys.argv[1], f"rank{acc.process_index}.json"), "w") as fh:
    json.dump(seen, fh)
"""


@pytest.mark.slow
def test_each_rank_sees_its_own_shard_and_the_union_is_the_dataset(tmp_path):
    """The data setup the recipe uses (split_batches + seedable sampler), on 2 gloo ranks."""
    import json

    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    res = subprocess.run(launch_cmd(2, script, tmp_path), env={**_env(), "ACCELERATE_USE_CPU": "1"},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    for epoch in ("0", "1"):
        assert not set(r0[epoch]) & set(r1[epoch])
        assert sorted(r0[epoch] + r1[epoch]) == list(range(24))
    assert r0["0"] != r0["1"]  # reshuffled every epoch


def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(checkpointed_run, tmp_path):
    """SIGKILL mid-stage, then --resume: the run completes from the last complete checkpoint."""
    args = [*TINY, *NO_EVAL, "student.steps=8", "train.checkpoint_every=2", "--teacher",
            str(checkpointed_run / "teacher"), "--output", str(tmp_path / "run")]
    proc = subprocess.Popen([sys.executable, str(RECIPE), *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "run" / "checkpoints" / "student"
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint_dirs(ckpts):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    kept = checkpoint_dirs(ckpts)
    assert kept, "no checkpoint before the kill"
    last_step = int(kept[-1].name.split("_")[1])
    assert all(not p.name.endswith(".tmp") for p in kept)
    res = subprocess.run([sys.executable, str(RECIPE), *args, "--resume"], env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    steps = [r["step"] for r in read_log(tmp_path / "run" / "log.jsonl") if "student/loss" in r]
    assert steps[-1] == 8 and f"resumed from {kept[-1]} at step {last_step}" in res.stdout
