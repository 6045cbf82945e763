"""The compact student: a plain full-resolution CNN (no attention, no wavelets, no resampling).

Layout (``width`` = W):

- per modality: 3×3 conv (1→W) → depthwise-separable residual block → dilated one
  → features ``enc_ir`` / ``enc_vis`` (W);
- fusion: 1×1 conv of both encodings (2W→W) → dilated separable residual block
  → feature ``fusion`` (W);
- decoder: 1×1 conv of [fusion, enc_ir, enc_vis] (dense link, 3W→W) → separable residual
  block → feature ``decoder`` (W) → 3×3 :class:`FusionHead` (default ``region``: a learned
  weighting of the two inputs around the regional-max prior plus a free residual, clamped to [0, 1]).

Every conv has stride 1, so the network takes any H×W without padding, its ONNX export
keeps dynamic height/width, and all features are at the input size. On CPU the maps are
laid out channels-last after the stems (oneDNN runs these narrow convs about twice as fast).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from .blocks import (
    ChannelsLastOnCPU,
    ConvAct,
    FusionHead,
    SeparableResBlock,
)
from .outputs import FusionModel, FusionOutput
from .registry import register_model


class _Encoder(nn.Sequential):
    """3×3 stem then two separable residual blocks (dilation 1, 2)."""

    def __init__(self, width: int, norm: bool) -> None:
        super().__init__(
            ConvAct(1, width, 3, norm=norm),
            ChannelsLastOnCPU(),
            SeparableResBlock(width, dilation=1, norm=norm),
            SeparableResBlock(width, dilation=2, norm=norm),
        )


@register_model("student")
class Student(FusionModel):
    """Compact CNN student: two light encoders, 1×1 fusion, dense-linked decoder.

    Args:
        width: channels of every feature map (the size knob; 12 by default).
        norm: add BatchNorm after each conv (off by default: batch statistics of small
            fusion batches are noisy, and without it the exported graph is plain convs).
        head: output head, ``"region"`` (default: learned soft selection from a regional-max
            prior + free residual, can leave the rule), ``"blend"`` (per-pixel prior) or ``"residual"`` (clamped residual over ``max(ir, vis_y)``); see
            :class:`~dfsfuse.models.blocks.FusionHead`.
    """

    def __init__(self, width: int = 12, norm: bool = False, head: str = "region") -> None:
        super().__init__()
        self.width = width
        self.encoder_ir = _Encoder(width, norm)
        self.encoder_vis = _Encoder(width, norm)
        self.fuse = nn.Sequential(
            ConvAct(width * 2, width, 1, norm=norm), SeparableResBlock(width, dilation=2, norm=norm)
        )
        self.decoder = nn.Sequential(ConvAct(width * 3, width, 1, norm=norm), SeparableResBlock(width, norm=norm))
        self.head = FusionHead(width, head)

    @property
    def feature_channels(self) -> dict[str, int]:
        """All four features have ``width`` channels."""
        return {"enc_ir": self.width, "enc_vis": self.width, "fusion": self.width, "decoder": self.width}

    def forward(self, ir: Tensor, vis_y: Tensor) -> FusionOutput:
        """Fuse B×1×H×W ``ir`` and ``vis_y`` in [0, 1]."""
        enc_ir = self.encoder_ir(ir)
        enc_vis = self.encoder_vis(vis_y)
        fusion = self.fuse(torch.cat([enc_ir, enc_vis], dim=1))
        decoder = self.decoder(torch.cat([fusion, enc_ir, enc_vis], dim=1))
        features = OrderedDict(enc_ir=enc_ir, enc_vis=enc_vis, fusion=fusion, decoder=decoder)
        return FusionOutput(fused=self.head(decoder, ir, vis_y), features=features)


@register_model("student_w8", kind="fusion")
def student_w8(**kwargs) -> Student:
    """The student at ``width=8``: the smallest size of the quality-per-MAC comparison."""
    return Student(**{"width": 8, **kwargs})


@register_model("student_w16", kind="fusion")
def student_w16(**kwargs) -> Student:
    """The student at ``width=16``: a larger student than the default (12)."""
    return Student(**{"width": 16, **kwargs})
