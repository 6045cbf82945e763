"""The segmentation branch: a light timm backbone on the fused image plus an FPN decoder.

The backbone is ``timm.create_model(backbone, features_only=True, pretrained=False,
in_chans=in_chans)`` (1: a grey fused image, the default; 3: an RGB one, the fused luminance
recoloured with the visible chroma as SeAFusion's segmenter reads it). Each selected backbone
level goes through a 1×1 lateral conv to ``fpn_dim`` channels, levels are merged top-down
(nearest upsampling + add), the finest merged map is refined by a 3×3 conv-BN-ReLU (feature
``head``), classified by a 1×1 conv and upsampled bilinearly to the input size. Features are named by their stride: ``fpn_s4`` … ``fpn_s32``
(``fpn_dim`` channels, size ⌈H/s⌉×⌈W/s⌉) and ``head`` (``fpn_dim`` channels, finest stride).
Inputs are padded to the backbone's largest stride and the outputs cropped back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import timm
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import Tensor, nn

from ..ops import upsample_bilinear
from .blocks import crop_to, pad_to_multiple
from .outputs import SegmentationModel, SegmentationOutput
from .registry import register_model


@register_model("segmenter")
class Segmenter(SegmentationModel):
    """Semantic segmentation of fused images: timm backbone (1 input channel, or 3) + light FPN.

    Args:
        num_classes: number of output classes (9 for MSRS).
        backbone: any timm model name that supports ``features_only``; randomly initialised.
        out_indices: backbone levels fed to the FPN.
        fpn_dim: channel width of the FPN.
        in_chans: input channels, 1 (grey) or 3 (RGB).
    """

    def __init__(
        self,
        num_classes: int = 9,
        backbone: str = "mobilenetv3_large_100",
        out_indices: Sequence[int] = (1, 2, 3, 4),
        fpn_dim: int = 64,
        in_chans: int = 1,
    ) -> None:
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.fpn_dim = fpn_dim
        self.backbone = timm.create_model(
            backbone, features_only=True, pretrained=False, in_chans=in_chans, out_indices=tuple(out_indices)
        )
        channels = self.backbone.feature_info.channels()
        self.reductions: list[int] = list(self.backbone.feature_info.reduction())
        self.stride = max(self.reductions)
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_dim, 1) for c in channels)
        self.smooth = ConvNormAct(fpn_dim, fpn_dim, 3)
        self.classifier = nn.Conv2d(fpn_dim, num_classes, 1)

    @property
    def feature_channels(self) -> dict[str, int]:
        """Every FPN level and the head have ``fpn_dim`` channels."""
        return {**{f"fpn_s{r}": self.fpn_dim for r in self.reductions}, "head": self.fpn_dim}

    def forward(self, image: Tensor) -> SegmentationOutput:
        """Logits B×K×H×W for a B×``in_chans``×H×W image in [0, 1]."""
        height, width = image.shape[-2:]
        padded = pad_to_multiple(image, self.stride)
        levels = [lateral(f) for lateral, f in zip(self.lateral, self.backbone(padded))]
        merged = [levels[-1]]
        for level in reversed(levels[:-1]):
            merged.insert(0, level + F.interpolate(merged[0], size=level.shape[-2:], mode="nearest"))
        head = self.smooth(merged[0])
        logits = upsample_bilinear(self.classifier(head), padded.shape[-2:])  # deterministic backward on CUDA

        features: OrderedDict[str, Tensor] = OrderedDict()
        for reduction, level in zip(self.reductions, merged):
            features[f"fpn_s{reduction}"] = crop_to(level, -(-height // reduction), -(-width // reduction))
        finest = self.reductions[0]
        features["head"] = crop_to(head, -(-height // finest), -(-width // finest))
        return SegmentationOutput(logits=crop_to(logits, height, width), features=features)


class FeatureSegHead(nn.Module):
    """Light segmentation head on fused features: two stride-2 3×3 blocks, a dilated one, 1×1 classifier.

    SSVIF's feature-level segmentation (:mod:`dfsfuse.train.ssvif`). The logits are upsampled
    bilinearly to the input's H×W, so they pair pixel by pixel with the segmenter's logits on
    the fused image. Not registered: it is built inside the SSVIF objective, never exported.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(in_channels, width, 3, stride=2),
            ConvNormAct(width, width, 3, stride=2),
            ConvNormAct(width, width, 3, dilation=2),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: Tensor) -> Tensor:
        """B×C×H×W fused features → B×K×H×W logits."""
        logits = self.classifier(self.body(features))
        return upsample_bilinear(logits, features.shape[-2:])
