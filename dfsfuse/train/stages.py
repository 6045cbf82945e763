"""The pieces ``recipes/distill.py`` strings together: run folder, Accelerator, the two training stages."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader

from ..cpus import available_cpus
from ..determinism import use_deterministic_kernels
from ..export import from_pretrained, save_pretrained
from ..losses import DynamicWeights
from ..models import create_model, model_kind
from ..models.blocks import brighten_dark
from ..run_layout import RunLayout
from .config import FusionStageConfig, RunConfig
from .data import build_train_dataset, collate_samples
from .loop import StageResult, train_stage
from .objectives import StudentObjective, TeacherObjective, freeze, restart_cotrained_segmenter
from .ssvif import SSVIFObjective, ssvif_dynamic_weights
from .tracking import JSONLinesTracker


class RunDirExistsError(FileExistsError):
    """The output folder already holds a run and neither ``--resume`` nor ``--overwrite`` was given."""


def prepare_run_dir(output: Path, resume: bool, overwrite: bool) -> Path:
    """Create ``output``; refuse to reuse a non-empty one unless resuming or overwriting."""
    output = Path(output)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite are mutually exclusive")
    if output.exists() and any(output.iterdir()):
        if overwrite:
            shutil.rmtree(output)
        elif not resume:
            raise RunDirExistsError(f"{output}: already holds a run; pass --resume to continue it "
                                    f"or --overwrite to start over")
    output.mkdir(parents=True, exist_ok=True)
    return output


def make_accelerator(cfg: RunConfig, run_dir: Path) -> Accelerator:
    """An Accelerator that logs to the run's ``log.jsonl`` and splits each global batch across processes.

    Mixed precision and the process layout come from ``accelerate launch`` / the Accelerate
    config. ``split_batches`` makes ``batch_size`` the global batch, so a run on N processes
    optimises the same objective as a run on one.
    """
    accelerator = Accelerator(
        log_with=[JSONLinesTracker("distill", str(run_dir))],  # Accelerate logs on the main process only
        project_dir=str(run_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True,
                                                  data_seed=cfg.train.seed),
    )
    if cfg.train.deterministic:
        use_deterministic_kernels()
    accelerator.init_trackers("distill", config=cfg.to_dict())
    return accelerator


def apply_cpu_threads(cfg: RunConfig, accelerator: Accelerator) -> Optional[int]:
    """Set torch's intra-op threads from ``train.cpu_threads`` on a CPU run; returns the count set
    (``None``: left as launched, or not a CPU run)."""
    wanted = cfg.train.cpu_threads
    if wanted is None or accelerator.device.type != "cpu":
        return None
    threads = wanted or max(1, available_cpus() // accelerator.num_processes)
    torch.set_num_threads(threads)
    return threads


def build_models(cfg: RunConfig) -> Tuple[nn.Module, nn.Module, nn.Module]:
    """Teacher, segmenter and student from the config (seeded, so every process builds the same weights)."""
    for role in ("teacher", "student"):
        name = getattr(cfg.model, role)
        if model_kind(name) != "fusion":
            raise ValueError(f"model.{role}: {name!r} is a {model_kind(name)} model, not a fusion model")
    if model_kind(cfg.model.segmenter) != "segmentation":
        raise ValueError(f"model.segmenter: {cfg.model.segmenter!r} is not a segmentation model")
    set_seed(cfg.train.seed)
    teacher = create_model(cfg.model.teacher, **cfg.model.teacher_kwargs)
    segmenter = create_model(cfg.model.segmenter, **cfg.model.segmenter_kwargs)
    student = create_model(cfg.model.student, **cfg.model.student_kwargs)
    return teacher, segmenter, student


def _loader(cfg: RunConfig, batch_size: int, stage: FusionStageConfig) -> DataLoader:
    """The training loader of a fusion stage: its crop (``data.crop`` when unset) and scale."""
    dataset = build_train_dataset(cfg.data, seed=cfg.train.seed, crop=stage.crop, scale=stage.scale,
                                  scale_max=stage.scale_max)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                      collate_fn=collate_samples, num_workers=cfg.data.num_workers,
                      persistent_workers=False)


def _optimizer(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def toned_batch(batch: dict, vis_tone: float) -> dict:
    """``batch`` as a network with ``vis_tone`` sees it: ``vis_y`` brightened (for the losses, the
    segmenter and any network that does not brighten itself) and the original kept as ``vis_y_raw``
    (for the network, which brightens it itself); ``batch`` unchanged when ``vis_tone`` is 0."""
    if not vis_tone:
        return batch
    return {**batch, "vis_y": brighten_dark(batch["vis_y"], vis_tone), "vis_y_raw": batch["vis_y"]}


def train_teacher(accelerator: Accelerator, cfg: RunConfig, teacher: nn.Module, segmenter: nn.Module,
                  run_dir: Path, resume: bool = False) -> StageResult:
    """Stage 1: teacher and segmenter trained on the fusion loss + segmentation CE (``train.stage1=fusion_seg``)
    or label-free SSVIF cross-segmentation consistency (``ssvif``); exported to the run's ``teacher/``."""
    set_seed(cfg.train.seed, device_specific=True)
    ssvif = cfg.stage1_mode == "ssvif"  # label-free SSVIF training instead of segmentation CE
    vis_tone = float(getattr(teacher, "vis_tone", 0.0))  # config validation refuses it with ssvif
    if ssvif:
        objective = SSVIFObjective.from_config(teacher, segmenter, cfg.loss)
        dynamic = ssvif_dynamic_weights(cfg.loss)
    else:
        objective = TeacherObjective(teacher, segmenter, cfg.loss, train_segmenter=cfg.segmenter.finetune)
        dynamic = None
    optimizer = _optimizer(objective, cfg.teacher.lr, cfg.teacher.weight_decay)
    loader = _loader(cfg, cfg.teacher.batch_size, cfg.teacher)
    objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    # A teacher that brightens dark visible images (its vis_tone) is trained on the brightened image:
    # the fusion losses and the segmenter see it, the teacher gets the raw one and brightens it itself.
    forward = (lambda batch: objective(toned_batch(batch, vis_tone))) if vis_tone else None
    result = train_stage(accelerator, "teacher", objective, optimizer, loader, cfg.teacher,
                         cfg.stage_steps("teacher"), cfg.train, RunLayout(run_dir).checkpoints("teacher"),
                         resume=resume, dynamic=dynamic, forward=forward,
                         on_step=accelerator.unwrap_model(objective).set_step if ssvif else None)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export_teacher(accelerator.unwrap_model(objective), RunLayout(run_dir).teacher, cfg, result)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return result


def export_teacher(objective: nn.Module, out: Path, cfg: RunConfig, result: StageResult) -> None:
    """Save the trained teacher to ``out`` and its segmenter beside it (``out/segmenter``, as in a run folder)."""
    extra = {"role": "teacher", "train_steps": result.steps, "train_config": cfg.to_dict()}
    save_pretrained(objective.fusion, out, **extra)
    if objective.segmenter is not None:
        save_pretrained(objective.segmenter, RunLayout.segmenter_of(out), role="segmenter", train_steps=result.steps)


def load_teacher(folder: Path, device: torch.device) -> Tuple[nn.Module, Optional[nn.Module]]:
    """A teacher exported by stage 1 (and its segmenter, in ``segmenter/`` or beside it; see
    :meth:`RunLayout.find_segmenter`)."""
    teacher = from_pretrained(folder, device=device)
    seg_dir = RunLayout.find_segmenter(folder)
    segmenter = from_pretrained(seg_dir, device=device) if seg_dir is not None else None
    return teacher, segmenter


def load_segmenter(folder: Union[str, Path], device: torch.device, option: str) -> nn.Module:
    """A frozen segmentation model exported to ``folder``; errors name ``option`` (what gave the folder)."""
    if not RunLayout.is_model_dir(folder):
        raise FileNotFoundError(f"{option}: {folder} holds no exported model (config.json + model.safetensors)")
    model = from_pretrained(folder, device=device)
    if model_kind(model.arch_name) != "segmentation":
        raise ValueError(f"{option}: {folder} is not a segmentation model")
    return freeze(model)


def load_class_segmenter(cfg: RunConfig, device: torch.device) -> Optional[nn.Module]:
    """The frozen segmenter of ``loss.seg_ce_class_segmenter`` (``None`` when unset)."""
    folder = cfg.loss.seg_ce_class_segmenter
    return load_segmenter(folder, device, "loss.seg_ce_class_segmenter") if folder is not None else None


def _cotrain_restarts(accelerator: Accelerator, objective: nn.Module, optimizer: torch.optim.Optimizer,
                      cfg: RunConfig) -> Optional[Callable[[int], None]]:
    """The ``on_step`` hook restarting the co-trained segmenter every ``loss.seg_ce_cotrain_reset`` steps
    (``None`` when off). Called right after a resume too: the same step gives the same fresh weights."""
    every = cfg.loss.seg_ce_cotrain_reset
    if every <= 0:
        return None

    def restart(step: int) -> None:
        if step > 0 and step % every == 0:
            restart_cotrained_segmenter(accelerator.unwrap_model(objective).cotrain_segmenter, optimizer,
                                        cfg.model.segmenter, cfg.model.segmenter_kwargs, seed=cfg.train.seed + step)
    return restart


def distill_student(accelerator: Accelerator, cfg: RunConfig, teacher: nn.Module, segmenter: Optional[nn.Module],
                    student: nn.Module, run_dir: Path, resume: bool = False,
                    class_segmenter: Optional[nn.Module] = None) -> StageResult:
    """Stage 2: the student learns from the frozen teacher through the distilled semantic loss.

    The teacher and segmenter are frozen, in eval mode, run under ``no_grad`` for the
    teacher's side, and never passed to ``accelerator.prepare``. With ``loss.seg_ce_cotrain > 0`` a
    fresh segmenter trains beside the student (part of the objective and its checkpoints, not exported);
    ``loss.seg_ce_cotrain_reset`` restarts it from fresh weights every that many steps. A
    ``class_segmenter`` (:func:`load_class_segmenter`) reads ``loss.seg_ce_classes`` for the seg CE.
    """
    set_seed(cfg.train.seed, device_specific=True)
    device = accelerator.device
    teacher = freeze(teacher).to(device)
    segmenter = freeze(segmenter).to(device) if segmenter is not None else None
    class_segmenter = freeze(class_segmenter).to(device) if class_segmenter is not None else None
    cotrain = None
    if cfg.loss.seg_ce_cotrain > 0:  # fresh weights (seeded above), the stage-1 segmenter's architecture
        cotrain = create_model(cfg.model.segmenter, **cfg.model.segmenter_kwargs)
    objective = StudentObjective(student, teacher.feature_channels, cfg.loss,
                                 num_classes=getattr(segmenter, "num_classes", 9), cotrain_segmenter=cotrain)
    if segmenter is None and objective.needs_segmenter:
        raise ValueError("the semantic losses need a segmenter; train the teacher with loss.seg_ce > 0 "
                         "or set loss.semantic_weighting=false loss.seg_kl=0 loss.seg_ce=0 loss.seg_iou=0 "
                         "loss.student_consistency=0")
    dynamic = None
    if cfg.loss.dynamic_weights:  # the objective names the terms it returns
        dynamic = DynamicWeights(objective.term_names, temperature=cfg.loss.dynamic_temperature)
    optimizer = _optimizer(objective, cfg.student.lr, cfg.student.weight_decay)
    loader = _loader(cfg, cfg.student.batch_size, cfg.student)
    objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)

    # A student that brightens dark visible images (student_fast's vis_tone) fuses the brightened
    # image; the teacher's targets, the fusion losses and the segmenter see that image too. A teacher
    # that brightens itself (trained with its own vis_tone) gets the raw image, as in stage 1.
    vis_tone = float(getattr(student, "vis_tone", 0.0))
    teacher_tones = bool(getattr(teacher, "vis_tone", 0.0))

    def forward(batch: dict):
        batch = toned_batch(batch, vis_tone)
        with torch.no_grad(), accelerator.autocast():
            t_out = teacher(batch["ir"], batch["vis_y_raw"] if teacher_tones and vis_tone else batch["vis_y"])
            seg_t = segmenter(t_out.fused).logits if segmenter is not None else None
        return objective(batch, t_out, seg_t, segmenter, class_segmenter)

    on_step = _cotrain_restarts(accelerator, objective, optimizer, cfg)  # None unless loss.seg_ce_cotrain_reset
    result = train_stage(accelerator, "student", objective, optimizer, loader, cfg.student,
                         cfg.stage_steps("student"), cfg.train, RunLayout(run_dir).checkpoints("student"),
                         resume=resume, dynamic=dynamic, forward=forward, on_step=on_step)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return result
