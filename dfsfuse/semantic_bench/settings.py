"""Settings of the semantic benchmark: its constants (input kinds, class colours, the fast
segmenter), where its data and shipped models live, and :class:`SegBenchSettings` (how every
segmenter is trained and scored) with the fast (CPU) and full (GPU) presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch

__all__ = ["Size", "IGNORE_INDEX", "BUILTIN_KINDS", "DEFAULT_KINDS", "RULE_KINDS", "PALETTE", "FAST_SEGMENTER",
           "default_data_root", "package_asset", "SegBenchSettings", "fast_settings", "full_settings"]


Size = Tuple[int, int]
IGNORE_INDEX = 255
BUILTIN_KINDS: Tuple[str, ...] = ("ir", "vis", "avg", "max", "region-max", "laplacian", "ir-contrast",
                                  "region-contrast", "gamma-contrast", "teacher", "student", "semantic-teacher", "semantic-student",
                                  "tone-teacher", "tone-student")
DEFAULT_KINDS: Tuple[str, ...] = ("ir", "vis", "avg", "max", "teacher", "student")
RULE_KINDS: Tuple[str, ...] = ("ir", "vis", "avg", "max", "region-max", "laplacian", "ir-contrast",
                               "region-contrast", "gamma-contrast")
# MFNet / RTFNet colours of the 9 MSRS classes (RGB).
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192),
    (128, 128, 0), (64, 64, 128), (192, 128, 128), (192, 64, 0),
)
FAST_SEGMENTER = "segmenter:backbone=mobilenetv3_small_100,fpn_dim=32"


def default_data_root() -> Path:
    """The shared data folder (:func:`dfsfuse.data.shared.shared_data_root`): ``$DFSFUSE_SHARED_DATA``,
    else ``../shared/data`` beside the checkout, else relative to the working directory."""
    from ..data.shared import shared_data_root

    return shared_data_root()


def package_asset(name: str) -> Path:
    """A folder under ``dfsfuse/assets`` (may not exist); ``name`` may have sub-folders (``semantic/student``)."""
    return Path(__file__).resolve().parent.parent / "assets" / name


@dataclass
class SegBenchSettings:
    """How every segmenter is trained and scored (identical for every input kind).

    ``size``: working resolution (H, W), ``None`` = native; ``crop``: random training crop,
    ``None`` = whole images; ``segmenter``: registry spec ``name:key=value,...``;
    ``seg_loss``: ``weighted`` (ENet weights of the training labels), ``ohem`` or ``plain``;
    ``ema``: decay of an exponential moving average of the segmenter's weights and BN statistics
    (timm's ``ModelEmaV3`` with its warm-up), scored instead of the last weights; 0 = off;
    ``class_crops``: probability that a training crop is placed around a pixel of a labelled class
    drawn uniformly among the classes present in the image (rare classes seen as often as common
    ones, in the spirit of DAFormer's rare-class sampling); 0 = plain random crops;
    ``weight_c``: the ``c`` of the ENet weights ``1 / ln(c + p_k)`` of ``weighted`` (1.02, ENet's and
    SeAFusion's: MSRS's rare classes ≈ 14–31× background; a larger ``c`` softens them, e.g. 1.2: ≈ 4×);
    ``color``: the segmenter reads RGB, as SeAFusion's does — every kind's grey image recoloured
    with the visible image's chroma (Y + VIS CbCr → RGB), IR alone as grey RGB — instead of the
    grey image itself (False, the default every earlier number was measured with).
    """

    train_dir: str = ""
    test_dir: str = ""
    size: Optional[Size] = (240, 320)
    crop: Optional[Size] = (160, 224)
    steps: int = 900
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    segmenter: str = FAST_SEGMENTER
    seg_loss: str = "weighted"
    seeds: List[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    eval_batch: int = 4
    hflip: bool = True
    ema: float = 0.0
    class_crops: float = 0.0
    weight_c: float = 1.02
    color: bool = False

    @property
    def in_chans(self) -> int:
        """Input channels of the segmenters: 3 with ``color``, else 1."""
        return 3 if self.color else 1

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot run."""
        from ..losses import SEG_LOSS_MODES

        if self.steps < 1 or self.batch_size < 1 or self.eval_batch < 1:
            raise ValueError("steps, batch size and eval batch must be at least 1")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.seg_loss not in SEG_LOSS_MODES:
            raise ValueError(f"segmentation loss {self.seg_loss!r}: choose from {', '.join(SEG_LOSS_MODES)}")
        if not self.seeds:
            raise ValueError("at least one seed")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {self.ema}")
        if not 0.0 <= self.class_crops <= 1.0:
            raise ValueError(f"class-crop probability must be in [0, 1], got {self.class_crops}")
        if not self.weight_c > 1.0:
            raise ValueError(f"class-weight c must be greater than 1 (weights are 1/ln(c + p)), got {self.weight_c}")
        for name, hw in (("size", self.size), ("crop", self.crop)):
            if hw is not None and (len(hw) != 2 or min(hw) < 1):
                raise ValueError(f"{name} must be HEIGHTxWIDTH with positive values, got {hw}")


def fast_settings(**overrides: Any) -> SegBenchSettings:
    """The CPU setting (≈ 4–6 min per kind and seed on one core): 240×320 images, 160×224 crops,
    900 steps of batch 8, a MobileNetV3-small FPN segmenter, class-weighted CE. 900, not 300: at 300
    steps a segmenter has learned IR's warm blobs and little else, so no fusion can beat IR alone
    (README, Semantic benchmark)."""
    return SegBenchSettings(**overrides)


def full_settings(**overrides: Any) -> SegBenchSettings:
    """The GPU setting: native 480×640 images, 384×512 crops, 4000 steps of batch 16, the
    registry segmenter (MobileNetV3-large FPN)."""
    base = dict(size=None, crop=(384, 512), steps=4000, batch_size=16, lr=2e-3, warmup_steps=200,
                segmenter="segmenter", device="cuda" if torch.cuda.is_available() else "cpu", eval_batch=8)
    base.update(overrides)
    return SegBenchSettings(**base)
