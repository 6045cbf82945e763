"""One training stage, read top to bottom: batches → loss terms → backward → step → log → checkpoint.

Both stages of the recipe (teacher + segmenter, then the distilled student) run through
:func:`train_stage`. The trained module's ``forward(batch)`` returns a dict of already
weighted loss terms whose sum is the loss; everything else here is bookkeeping that makes a
run resumable, interruptible and safe:

* the learning rate is a pure function of the step (warm-up then cosine), so a resumed run
  has exactly the schedule of an uninterrupted one without pickling a scheduler;
* batches are addressed by a global batch counter: epoch = counter // len(loader), and the
  augmentation of each sample depends only on (seed, epoch, index) (see ``SeededAugment``);
* ``accelerator.save_state`` writes model/optimizer/RNG state, plus ``trainer_state.json``
  (step, batches, dynamic loss weights) into a temporary folder that is renamed when complete;
* with ``stage.ema > 0`` a moving average of the weights (timm's ``ModelEmaV3``) is updated after
  every optimizer step, saved beside each checkpoint (``ema.safetensors``) and copied into the
  module when the stage ends, so what is evaluated and exported is the average, resumed or not;
* SIGINT/SIGTERM finish the current step, save a checkpoint and raise :class:`TrainingInterrupted`;
* a non-finite loss term stops the run naming the step and term (or skips the step).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from ..ema import moving_average
from ..losses.weighting import DynamicWeights
from .config import StageConfig, TrainConfig
from .progress import StageProgress

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"


class TrainingInterrupted(RuntimeError):
    """Raised after a signal-triggered checkpoint; the run can continue with ``--resume``."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (truncated, corrupt, or not made by this run)."""


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the stage, step and term."""


@dataclass
class StageResult:
    """What a finished stage reports."""

    name: str
    steps: int
    seconds: float
    final_losses: Dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5% of ``base_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between steps."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def __call__(self, signum, frame) -> None:
        self.signum = signum


@contextmanager
def _catch_signals(flag: _StopFlag):
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def checkpoint_dirs(root: Path) -> List[Path]:
    """Complete checkpoints under ``root`` (``step_NNNNNN`` holding a trainer state), oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / STATE_FILE).is_file())


def read_trainer_state(ckpt: Path) -> dict:
    """The JSON bookkeeping of a checkpoint (one-line error naming the file if unreadable)."""
    path = ckpt / STATE_FILE
    try:
        state = json.loads(path.read_text())
        int(state["step"]), int(state["batches"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: corrupt trainer state ({exc})") from None
    return state


GRADIENT = "<gradient>"  # what ``bad_term`` holds when the loss was finite and a gradient was not


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    flags = [torch.isfinite(t).all() for t in tensors]  # one device sync for all of them, not one each
    return not flags or bool(torch.stack(flags).all())


def _gradients_finite(module: nn.Module) -> bool:
    return _all_finite(p.grad for p in module.parameters() if p.grad is not None)


def _params_finite(module: nn.Module) -> bool:
    return _all_finite(module.parameters())


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, state: dict, module: nn.Module,
                    keep: int, ema: Optional[nn.Module] = None) -> Optional[Path]:
    """Atomically write checkpoint ``root/step_NNNNNN`` (with ``ema``'s weights when given);
    never one holding NaN weights."""
    if not _params_finite(module):
        raise NonFiniteLossError(f"step {step}: parameters are not finite; refusing to write a checkpoint")
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in ema.module.state_dict().items()},
                      str(tmp / EMA_FILE))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _batches(accelerator: Accelerator, loader, start: int) -> Iterator[dict]:
    """Endless batches from global batch number ``start`` on, re-seeding each epoch."""
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError("training set is smaller than one batch; lower the batch size or add data")
    count = start
    while True:
        epoch, skip = divmod(count, per_epoch)
        loader.set_epoch(epoch)
        dataset = loader.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            count += 1
            yield batch


def train_stage(
    accelerator: Accelerator,
    name: str,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    stage: StageConfig,
    steps: int,
    train_cfg: TrainConfig,
    checkpoint_root: Path,
    resume: bool = False,
    dynamic: Optional[DynamicWeights] = None,
    forward: Optional[Callable[[dict], Dict[str, torch.Tensor]]] = None,
    on_step: Optional[Callable[[int], None]] = None,
) -> StageResult:
    """Optimise ``module`` for ``steps`` optimizer steps of ``stage.grad_accum`` batches each.

    ``forward(batch)`` (default: ``module(batch)``) returns weighted loss terms. With
    ``dynamic``, each term it manages is further scaled by its dynamic weight, updated every
    step from the process-averaged values of the terms before that scaling. ``on_step(step)``
    is called before each optimizer step (0-based count of steps done).
    """
    forward = forward or module
    step, batches, skipped = 0, 0, 0
    ema = moving_average(accelerator.unwrap_model(module), stage.ema)
    if resume and checkpoint_dirs(checkpoint_root):
        latest = checkpoint_dirs(checkpoint_root)[-1]
        state = read_trainer_state(latest)
        try:
            accelerator.load_state(str(latest))
        except Exception as exc:  # truncated/corrupt/tampered files: one line naming the checkpoint
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointError(f"{latest}: cannot load checkpoint ({type(exc).__name__}: {detail[:200]})") from None
        step, batches, skipped = int(state["step"]), int(state["batches"]), int(state.get("skipped", 0))
        if dynamic is not None and state.get("dynamic_weights"):
            dynamic.load_state_dict(state["dynamic_weights"])
        if ema is not None:
            _load_moving_average(ema, latest)
        accelerator.print(f"[{name}] resumed from {latest} at step {step}")
    if step >= steps:
        _adopt_moving_average(accelerator, module, ema)
        return StageResult(name, step, 0.0)

    flag = _StopFlag()
    stream = _batches(accelerator, loader, batches)
    last: Dict[str, float] = {}
    t0 = time.time()
    module.train()
    progress = StageProgress(name, steps, start=step, enabled=accelerator.is_main_process)
    with _catch_signals(flag), progress:
        while step < steps:
            if on_step is not None:  # e.g. SSVIF's warm-up → joint switch; also right after a resume
                on_step(step)
            lr = lr_at(step, steps, stage.lr, stage.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums: Dict[str, torch.Tensor] = {}
            bad_term: Optional[str] = None
            for micro in range(stage.grad_accum):
                batch = next(stream)
                batches += 1
                sync = micro == stage.grad_accum - 1
                with nullcontext() if sync else accelerator.no_sync(module):
                    raw = forward(batch)
                    terms = dynamic.apply(raw) if dynamic is not None else raw
                    loss = sum(terms.values())
                    finite = torch.stack([torch.isfinite(v.detach()).all() for v in terms.values()]).all()
                    all_finite = accelerator.reduce(finite.float().reshape(1), reduction="sum").item() \
                        == accelerator.num_processes
                    if not all_finite:
                        bad_term = next((k for k, v in terms.items() if not torch.isfinite(v.detach()).all()),
                                        "on another process")
                        break
                    accelerator.backward(loss / stage.grad_accum)
                for k, v in raw.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float() / stage.grad_accum
                sums["loss"] = sums.get("loss", 0.0) + loss.detach().float() / stage.grad_accum
            # A finite loss can still give non-finite gradients (seen: PyTorch's CPU bf16 depthwise-conv
            # backward on tiny maps, now and then); one such step would turn every weight into NaN. fp16's
            # GradScaler expects inf gradients and skips those steps itself.
            if bad_term is None and accelerator.scaler is None and not _gradients_finite(module):
                bad_term = GRADIENT
            if bad_term is not None:
                optimizer.zero_grad(set_to_none=True)
                message = (f"[{name}] step {step + 1}: a gradient is not finite (the loss is)" if bad_term == GRADIENT
                           else f"[{name}] step {step + 1}: loss term '{bad_term}' is not finite")
                if train_cfg.on_nonfinite == "skip":
                    skipped += 1
                    step += 1
                    accelerator.print(message + "; step skipped")
                    continue
                raise NonFiniteLossError(message)
            if stage.grad_clip > 0:
                accelerator.clip_grad_norm_(module.parameters(), stage.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if ema is not None:
                ema.update(accelerator.unwrap_model(module), step=step)

            # Terms are logged before dynamic weighting; "loss" is the weighted total that was optimised.
            keys = sorted(sums)  # every process returns the same terms, so one collective serves all
            values = accelerator.reduce(torch.stack([sums[k] for k in keys]), reduction="mean").tolist()
            reduced = dict(zip(keys, values))
            last = reduced
            if dynamic is not None:
                dynamic.update({k: reduced.get(k, 0.0) for k in dynamic.names})
            progress.update(step, reduced["loss"])
            if step % train_cfg.log_every == 0 or step == steps:
                accelerator.log({f"{name}/{k}": v for k, v in {**reduced, "lr": lr}.items()}, step=step)

            stop = flag.signum is not None
            if step % train_cfg.checkpoint_every == 0 or step == steps or stop:
                state = {"stage": name, "step": step, "batches": batches, "skipped": skipped,
                         "dynamic_weights": dynamic.state_dict() if dynamic is not None else None}
                save_checkpoint(accelerator, checkpoint_root, step, state, module, train_cfg.keep_checkpoints, ema)
            if stop:
                raise TrainingInterrupted(
                    f"[{name}] stopped by signal {signal.Signals(flag.signum).name} at step {step}; "
                    f"checkpoint saved in {checkpoint_root}, continue with --resume")
    _adopt_moving_average(accelerator, module, ema)
    return StageResult(name, step, time.time() - t0, last, skipped)


def _load_moving_average(ema: nn.Module, checkpoint: Path) -> None:
    path = checkpoint / EMA_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint}: no {EMA_FILE} (was the stage's ema turned on after this checkpoint?)")
    try:
        ema.module.load_state_dict(load_file(str(path)))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load the moving average ({type(exc).__name__})") from None


def _adopt_moving_average(accelerator: Accelerator, module: nn.Module, ema: Optional[nn.Module]) -> None:
    """The stage ends on the average: copy it into ``module`` (every process holds the same one)."""
    if ema is not None:
        accelerator.unwrap_model(module).load_state_dict(ema.module.state_dict())
