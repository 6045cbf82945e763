"""The model contract: what every network returns and what it exposes about itself.

Fusion models take ``forward(ir, vis_y)`` with two B×1×H×W float tensors in [0, 1] and
return :class:`FusionOutput`. Its ``features`` dict always holds the names in
:data:`FUSION_FEATURES`, every map at ⌈H/s⌉×⌈W/s⌉ for the model's ``feature_stride`` s (1, the
full input size, for most models; ``student_fast`` works at 1/4), so distillation pairs teacher
and student features by name and resizes a reduced-resolution one to the teacher's size:

- ``enc_ir``  — output of the infrared encoder,
- ``enc_vis`` — output of the visible (luminance) encoder,
- ``fusion``  — the fused feature map of both modalities,
- ``decoder`` — the last decoder feature before the output head.

Widths differ between models (``model.feature_channels``); adapters that map one width to
another belong to the loss, never to the model.

Segmentation models take ``forward(image)`` with a B×1×H×W fused image in [0, 1] and return
:class:`SegmentationOutput` with B×K×H×W logits and their own named decoder features.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from abc import ABCMeta, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

FUSION_FEATURES: tuple[str, ...] = ("enc_ir", "enc_vis", "fusion", "decoder")
"""Feature names every fusion model returns, in this order."""

FUSION = "fusion"
SEGMENTATION = "segmentation"
MODEL_KINDS: tuple[str, ...] = (FUSION, SEGMENTATION)


@dataclass
class FusionOutput:
    """Result of a fusion model: ``fused`` B×1×H×W in [0, 1] and named features (see ``feature_stride``)."""

    fused: Tensor
    features: OrderedDict[str, Tensor] = field(default_factory=OrderedDict)


@dataclass
class SegmentationOutput:
    """Result of a segmentation model: ``logits`` B×K×H×W and named decoder features."""

    logits: Tensor
    features: OrderedDict[str, Tensor] = field(default_factory=OrderedDict)


def json_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Round-trip kwargs through JSON (tuples become lists); reject what JSON cannot hold."""
    try:
        return json.loads(json.dumps(kwargs, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"kwargs of model {name!r} must be JSON-serialisable: {exc}") from None


class ArchModule(nn.Module, metaclass=ABCMeta):
    """Base of every registered network: it knows its registry name and constructor kwargs.

    ``arch_name`` and ``arch_kwargs`` are filled in when the model is built (directly or via
    :func:`dfsfuse.models.create_model`), so ``model_from_config(model.arch_config())``
    rebuilds the same architecture from a ``config.json``.
    """

    kind: ClassVar[str] = ""
    registry_name: ClassVar[str] = ""
    """The name :func:`~dfsfuse.models.register_model` registered this very class under ("" if none)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every subclass records, on instances of exactly that class, its registry name and the
        bound constructor kwargs (defaults included, JSON-normalised): timm-style, no patching
        by the registry."""
        super().__init_subclass__(**kwargs)
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self: ArchModule, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if type(self) is cls:  # the outermost class records; its parents' wrappers stay silent
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                recorded = dict(bound.arguments)
                recorded.pop(next(iter(signature.parameters)))
                name = cls.__dict__.get("registry_name", "")
                self.arch_name = name
                self.arch_kwargs = json_kwargs(name or cls.__name__, recorded)

        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self) -> None:
        super().__init__()
        self.arch_name: str = ""
        self.arch_kwargs: dict[str, Any] = {}

    def arch_config(self) -> dict[str, Any]:
        """``{"architecture": name, "kwargs": {...}}``, JSON-serialisable."""
        return {"architecture": self.arch_name, "kwargs": copy.deepcopy(self.arch_kwargs)}

    @property
    @abstractmethod
    def feature_channels(self) -> dict[str, int]:
        """Channel count of each named feature map in the output's ``features``."""


class FusionModel(ArchModule):
    """Base class of fusion networks: ``forward(ir, vis_y) -> FusionOutput``."""

    kind: ClassVar[str] = FUSION
    feature_stride: int = 1
    """Features are ⌈H / feature_stride⌉ × ⌈W / feature_stride⌉ maps (1: the input size)."""

    @abstractmethod
    def forward(self, ir: Tensor, vis_y: Tensor) -> FusionOutput:
        """Fuse B×1×H×W infrared and visible luminance in [0, 1]."""


class SegmentationModel(ArchModule):
    """Base class of segmentation networks: ``forward(image) -> SegmentationOutput``."""

    kind: ClassVar[str] = SEGMENTATION
    num_classes: int

    @abstractmethod
    def forward(self, image: Tensor) -> SegmentationOutput:
        """Segment a B×1×H×W image in [0, 1]."""
