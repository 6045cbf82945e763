"""Run configuration: YAML (``yaml.safe_load`` only) validated into dataclasses, plus ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Dict,
    List,
    Optional,
    Sequence,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

from ..options import BASELINE_METHODS, HEAD_CONVERSIONS


STAGE1_MODES = ("fusion_seg", "ssvif")
"""What stage 1 can train (``train.stage1``; see :attr:`RunConfig.stage1_mode`)."""


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the source and key."""


@dataclass
class DatasetSpec:
    """A folder of IR/VIS pairs. ``root`` may start with ``bundled:`` (the MSRS pairs shipped in
    the package) and is otherwise resolved against the working directory. ``optional`` sets are
    skipped with a warning when missing (e.g. ``../shared/data`` on a user's machine)."""

    root: str
    split: Optional[str] = None
    name: Optional[str] = None
    optional: bool = False


@dataclass
class DataConfig:
    """What the networks train and are evaluated on."""

    train: List[DatasetSpec] = field(default_factory=lambda: [DatasetSpec("bundled:msrs", "train", "msrs_bundled")])
    repeat_real: int = 8               # each real pair appears this many times per epoch (random crops differ)
    synthetic: int = 256               # synthetic labelled scenes in the training set (0 = none)
    synthetic_size: int = 96
    crop: int = 64
    labels: bool = True                # read segmentation labels where they exist
    num_workers: int = 0


@dataclass
class EvalConfig:
    """Stage 3: held-out real pairs (never trained on) and held-out synthetic scenes."""

    sets: List[DatasetSpec] = field(default_factory=lambda: [
        DatasetSpec("bundled:msrs", "test", "msrs_heldout"),
        DatasetSpec("../shared/data/tno", None, "tno", optional=True),
        DatasetSpec("../shared/data/roadscene", None, "roadscene", optional=True),
    ])
    max_images: int = 4                # per held-out set (0 = all)
    synthetic: int = 16                # held-out synthetic scenes for segmentation mIoU
    synthetic_size: int = 128
    latency_size: List[int] = field(default_factory=lambda: [480, 640])
    latency_runs: int = 3              # 0 = do not time the models


@dataclass
class ModelConfig:
    """Architectures by registry name, with their keyword arguments."""

    teacher: str = "teacher"
    teacher_kwargs: Dict[str, Any] = field(default_factory=dict)
    student: str = "student"
    student_kwargs: Dict[str, Any] = field(default_factory=dict)
    segmenter: str = "segmenter"
    segmenter_kwargs: Dict[str, Any] = field(default_factory=dict)
    # After stage 2, evaluate and export the student with this output head instead
    # (dfsfuse.models.convert.convert_head): "region-gain" drops a "region-contrast" student's
    # free residual, which carries its VIF cost. None: export the head it was trained with.
    student_export_head: Optional[str] = None


@dataclass
class StageConfig:
    """Optimisation of one training stage."""

    steps: int = 200
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    batch_size: int = 8                # global batch (split across processes)
    grad_accum: int = 1
    grad_clip: float = 1.0
    ema: float = 0.0                   # > 0: the stage ends on a moving average of its weights (timm's
                                       # ModelEmaV3 with warm-up, this decay), which is evaluated and exported


@dataclass
class FusionStageConfig(StageConfig):
    """Stage 1 (teacher) or stage 2 (student): optimisation plus the side of its random crops."""

    crop: Optional[int] = None         # square random crops of this side; None: data.crop. Larger crops give
                                       # the seg CE context (msrs_semantic_cpu.yaml: student.crop 128)
    scale: float = 1.0                 # resize training pairs by this factor before cropping (area; labels
                                       # nearest). 0.5 shows MSRS at the 240x320 the semantic benchmark uses
    scale_max: Optional[float] = None  # set: each sample's factor is drawn uniformly from [scale, scale_max]


@dataclass
class SegmenterStageConfig(StageConfig):
    """Stage 0 (off unless ``steps > 0``): the segmenter pre-trained alone on the labelled
    training pairs, fused by the rule ``input`` (the ``region`` head's initial state), before it
    trains jointly with the teacher. Whole-image random crops ``crop`` (H, W) at native size:
    semantics need far more context than the fusion's small crops give."""

    steps: int = 0
    crop: List[int] = field(default_factory=lambda: [192, 256])
    input: str = "region-max"
    finetune: bool = True              # false: frozen in stage 1 (only the teacher learns from seg CE)


@dataclass
class LossConfig:
    """Weights of every loss term (see :mod:`dfsfuse.losses`)."""

    intensity: float = 1.0
    gradient: float = 1.0
    ssim: float = 0.0
    qabf: float = 0.0                  # 1 − Q^AB/F (edges of both sources), see losses/quality.py
    vif: float = 0.0                   # 2 − VIF (only next to qabf/ssim: gameable by contrast gain)
    intensity_target: str = "max"      # max (classic) or contrast (per-window local-contrast selection)
    gradient_mode: str = "magnitude"   # magnitude (classic) or signed (stronger source edge with its sign)
    seg_ce: float = 0.5                # segmentation CE on the fused image, where labels exist
    seg_loss: str = "plain"            # its kind: plain, weighted (ENet 1/ln(1.02+p) class weights) or ohem (SeAFusion)
    seg_class_weights: Optional[List[float]] = None  # weighted/ohem class weights (weighted, None: the MSRS table)
    seg_ohem_thresh: float = 0.7       # ohem: keep pixels whose true-class probability is below this ...
    seg_ohem_min_kept: float = 0.0625  # ... but at least this fraction of the labelled pixels (the hardest)
    seg_iou: float = 0.0               # stage 2: Lovász-softmax (an mIoU surrogate, losses/iou.py) of the segmentation
                                       # seg_ce reads, where labels exist: also penalises false rare-class pixels
    output: float = 1.0                # distillation: student vs teacher fused image
    feature: float = 0.2
    frequency: float = 0.5
    seg_kl: float = 0.2
    student_fusion: float = 0.5        # the student's own fusion loss next to distillation
    student_consistency: float = 0.0   # stage 2, label-free (SSVIF): a feature-level segmentation of the
                                       # student's features must agree with the segmenter on its fusion
    seg_ce_cotrain: float = 0.0        # stage 2 (SeAFusion's joint training): seg CE of a fresh segmenter
                                       # trained with the student on its fusions; never exported
    seg_ce_cotrain_reset: int = 0      # > 0: that segmenter restarts from fresh weights (and optimizer state)
                                       # every N student steps, so the student keeps hearing what a segmenter
                                       # early in its training needs, as a from-scratch segmenter on its fusions
    seg_ce_class_segmenter: Optional[str] = None  # stage 2: an exported segmenter folder whose seg CE on the
                                       # student's fusion replaces the stage-2 segmenter's on the pixels labelled
                                       # seg_ce_classes (e.g. people seen by a segmenter pre-trained on IR)
    seg_ce_classes: List[str] = field(default_factory=lambda: ["person"])  # class names (data.synthetic.CLASS_NAMES)
    temperature: float = 2.0
    semantic_weighting: bool = True
    class_importance: Optional[List[float]] = None
    dynamic_weights: bool = False
    dynamic_temperature: float = 2.0
    consistency: float = 0.0           # SSVIF: > 0 trains stage 1 label-free (cross-segmentation consistency)
    consistency_warmup: int = 0        # SSVIF: fusion-only steps before the joint stage
    consistency_temperature: float = 1.0
    consistency_dynamic: bool = True   # SSVIF: dynamic weights between "fusion" and "consistency"
    consistency_diversity: float = 1.0  # SSVIF: anti-collapse KL(batch-mean class distribution ‖ uniform)
    consistency_confidence: float = 0.0  # SSVIF: per-pixel entropy minimisation (off by default)

    def __post_init__(self) -> None:
        for key, allowed in (("intensity_target", ("max", "contrast")), ("gradient_mode", ("magnitude", "signed"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"loss.{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if self.seg_iou < 0:
            raise ConfigError(f"loss.seg_iou must be 0 (off) or positive, got {self.seg_iou}")
        if self.seg_ce_cotrain < 0:
            raise ConfigError(f"loss.seg_ce_cotrain must be 0 (off) or positive, got {self.seg_ce_cotrain}")
        if self.seg_ce_cotrain_reset < 0:
            raise ConfigError(f"loss.seg_ce_cotrain_reset must be 0 (never) or a positive step count, "
                              f"got {self.seg_ce_cotrain_reset}")
        if self.seg_ce_cotrain_reset > 0 and self.seg_ce_cotrain <= 0:
            raise ConfigError("loss.seg_ce_cotrain_reset restarts the co-trained segmenter: it needs loss.seg_ce_cotrain > 0")
        from ..data.synthetic import CLASS_NAMES

        unknown = [c for c in self.seg_ce_classes if c not in CLASS_NAMES]
        if unknown or not self.seg_ce_classes:  # "unlabeled" is MSRS's class 0 (background), not the ignore index
            raise ConfigError(f"loss.seg_ce_classes must name classes ({', '.join(CLASS_NAMES)}), "
                              f"got {self.seg_ce_classes}")
        if self.seg_ce_class_segmenter is not None and self.seg_ce <= 0:
            raise ConfigError("loss.seg_ce_class_segmenter splits the seg CE between two segmenters: it needs loss.seg_ce > 0")

    @property
    def seg_ce_class_ids(self) -> List[int]:
        """The label indices of ``seg_ce_classes``."""
        from ..data.synthetic import CLASS_NAMES

        return [CLASS_NAMES.index(c) for c in self.seg_ce_classes]


@dataclass
class TrainConfig:
    """The run as a whole."""

    seed: int = 0
    deterministic: bool = False
    max_steps: Optional[int] = None    # caps every stage (quick runs, tests)
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    on_nonfinite: str = "stop"         # "stop" or "skip"
    stage1: Optional[str] = None       # "fusion_seg" or "ssvif"; unset: "ssvif" iff loss.consistency > 0
    # torch intra-op threads per process on a CPU run: N, or 0 = the CPUs this process may use
    # divided among the processes; None = as launched (`accelerate launch` gives each process one
    # thread unless OMP_NUM_THREADS is set, which leaves half of a 2-core machine idle).
    cpu_threads: Optional[int] = None


@dataclass
class RunConfig:
    """Everything ``recipes/distill.py`` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: FusionStageConfig = field(default_factory=FusionStageConfig)
    student: FusionStageConfig = field(default_factory=FusionStageConfig)
    segmenter: SegmenterStageConfig = field(default_factory=SegmenterStageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.segmenter.input not in BASELINE_METHODS:
            raise ConfigError(f"segmenter.input must be one of {', '.join(BASELINE_METHODS)}, got {self.segmenter.input!r}")
        if len(self.segmenter.crop) != 2 or min(self.segmenter.crop) < 1:
            raise ConfigError(f"segmenter.crop must be [height, width] with positive values, got {self.segmenter.crop}")
        for stage in ("teacher", "student", "segmenter"):
            if not 0.0 <= getattr(self, stage).ema < 1.0:
                raise ConfigError(f"{stage}.ema must be in [0, 1) (0: off), got {getattr(self, stage).ema}")
        for stage in ("teacher", "student"):
            crop = getattr(self, stage).crop
            if crop is not None and crop < 1:
                raise ConfigError(f"{stage}.crop must be a positive side (or null: data.crop), got {crop}")
            scale = getattr(self, stage).scale
            if not 0 < scale <= 4:
                raise ConfigError(f"{stage}.scale must be in (0, 4], got {scale}")
            scale_max = getattr(self, stage).scale_max
            if scale_max is not None and not scale <= scale_max <= 4:
                raise ConfigError(f"{stage}.scale_max must be in [{stage}.scale, 4] (or null), got {scale_max}")
        if self.loss.seg_ce_cotrain > 0 and not self.data.labels:
            raise ConfigError("loss.seg_ce_cotrain > 0 trains a segmenter on labels: it needs data.labels=true")
        if self.loss.seg_ce_class_segmenter is not None and not self.data.labels:
            raise ConfigError("loss.seg_ce_class_segmenter splits the seg CE by label: it needs data.labels=true")
        if self.train.cpu_threads is not None and self.train.cpu_threads < 0:
            raise ConfigError(f"train.cpu_threads must be 0 (all CPUs) or more, got {self.train.cpu_threads}")
        export_head = self.model.student_export_head
        if export_head is not None:
            trained = self.model.student_kwargs.get("head", "region")
            if (trained, export_head) not in HEAD_CONVERSIONS:
                raise ConfigError(f"model.student_export_head={export_head!r}: a student trained with head {trained!r} "
                                  f"cannot be exported with it; supported: "
                                  f"{', '.join(f'{a} -> {b}' for a, b in HEAD_CONVERSIONS)}")
        if self.model.teacher_kwargs.get("vis_tone") and self.stage1_mode == "ssvif":
            raise ConfigError("model.teacher_kwargs.vis_tone: a teacher that brightens its visible input trains "
                              "with train.stage1=fusion_seg, not ssvif (its losses see the brightened image)")
        mode, weight = self.train.stage1, self.loss.consistency
        if mode is None:
            return
        if mode not in STAGE1_MODES:
            raise ConfigError(f"train.stage1 must be one of {', '.join(STAGE1_MODES)}, got {mode!r}")
        if mode == "ssvif" and not weight > 0:
            raise ConfigError(f"train.stage1=ssvif needs loss.consistency > 0 (got {weight})")
        if mode == "fusion_seg" and weight > 0:
            raise ConfigError(f"train.stage1=fusion_seg contradicts loss.consistency={weight} (only SSVIF uses it): "
                              f"set loss.consistency=0 or train.stage1=ssvif")

    @property
    def stage1_mode(self) -> str:
        """What stage 1 trains: ``fusion_seg`` (fusion loss + segmentation CE on labels) or ``ssvif``
        (label-free cross-segmentation consistency). ``train.stage1``, or for configs that do not
        name it, ``ssvif`` exactly when ``loss.consistency > 0``."""
        if self.train.stage1 is not None:
            return self.train.stage1
        return "ssvif" if self.loss.consistency > 0 else "fusion_seg"

    def stage_steps(self, stage: str) -> int:
        """Steps of ``stage`` ("segmenter"/"teacher"/"student") after the ``train.max_steps`` cap."""
        steps = getattr(self, stage).steps
        return min(steps, self.train.max_steps) if self.train.max_steps is not None else steps

    def to_dict(self) -> Dict[str, Any]:
        """Plain, JSON/YAML-serialisable form."""
        return dataclasses.asdict(self)


def _build(cls, data: Any, source: str, prefix: str = ""):
    """Recursively turn plain YAML data into dataclass ``cls``, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    return cls(**{k: _convert(hints[k], v, source, f"{prefix}{k}") for k, v in data.items()})


def _convert(tp, value: Any, source: str, key: str):
    origin, args = get_origin(tp), get_args(tp)
    bad = ConfigError(f"{source}: '{key}' expected {getattr(tp, '__name__', tp)}, got {value!r}")
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, source, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key + ".")
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' expected a list, got {value!r}")
        return [_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise bad from None
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise bad


def _set_dotted(data: Dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["train.max_steps=20", "model.teacher=sscm"]`` → nested dict (values parsed as YAML scalars)."""
    out: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from None
        _set_dotted(out, key.strip(), value)
    return out


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config (or the defaults), apply ``key=value`` overrides, validate."""
    data: Dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        source += " + overrides"
    return _build(RunConfig, data, source)
