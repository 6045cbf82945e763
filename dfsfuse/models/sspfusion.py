"""SSPFusion: semantic structure-preserving fusion guided by self-supervised Sobel structural signals.

Layout (``width`` = C):

- per modality, a structural feature extractor (SFE): 3×3 stem → ``depth`` residual 3×3
  blocks → feature ``enc_ir`` / ``enc_vis`` (C). A 1×1 projection of that feature to one
  channel, transformed by the Sobel operator, is the modality's *structural signal*
  (B×2×H×W, ``(gx, gy)``); :meth:`SSPFusion.auxiliary_losses` aligns it with the Sobel
  structure of the modality's input (self-supervision, weight ``structure_weight``);
- multi-scale structure-preserving fusion (SPF): at each scale in ``scales`` both features
  and the edge strengths of both signals are average-pooled, a per-pixel softmax over the
  two modalities (logits = ``gain · edge strength`` + a learned correction, small at
  initialisation) picks the structurally richer modality, and a residual block refines the
  merged map; the scales are upsampled and merged by a 1×1 conv → feature ``fusion`` (C);
- decoder: two 3×3 conv blocks → feature ``decoder`` (C) → 3×3 head predicting a residual
  over ``max(ir, vis_y)``, clamped to [0, 1].

Inputs are padded to a multiple of the coarsest scale and every output cropped back. The
output is :class:`SSPFusionOutput`: a :class:`FusionOutput` whose extra ``signals`` dict holds
``structure_ir`` and ``structure_vis`` (``features`` keeps exactly the four shared names).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import SOBEL_X, structure_loss, structure_magnitude, upsample_bilinear
from .blocks import ConvAct, FusionHead, crop_to, pad_to_multiple
from .outputs import FusionModel, FusionOutput
from .registry import register_model


@dataclass
class SSPFusionOutput(FusionOutput):
    """:class:`FusionOutput` plus the structural signals (name → B×2×H×W Sobel ``(gx, gy)``)."""

    signals: OrderedDict[str, Tensor] = field(default_factory=OrderedDict)


class ResidualBlock(nn.Module):
    """``x + conv(act(conv(x)))`` with two 3×3 convs of ``channels`` channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvAct(channels, channels, 3), ConvAct(channels, channels, 3, act=False))

    def forward(self, x: Tensor) -> Tensor:
        """Residual 3×3 block."""
        return x + self.body(x)


def sobel_signal(x: Tensor) -> Tensor:
    """:func:`~dfsfuse.ops.sobel_structure` of a one-channel map ``B×1×H×W`` → ``B×2×H×W``.

    The same numbers (same kernel, replicate borders, same convolution call), but the kernel
    is a fixed ``2×1×3×3`` tensor rather than one repeated per input channel: a kernel whose
    shape depends on a traced size cannot be exported to ONNX.
    """
    kx = SOBEL_X.to(device=x.device, dtype=x.dtype)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)


class StructuralFeatureExtractor(nn.Module):
    """SFE: stem + residual blocks → structural features, and their Sobel structural signal."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.features = nn.Sequential(ConvAct(1, width, 3), *(ResidualBlock(width) for _ in range(depth)))
        self.to_structure = nn.Conv2d(width, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """B×1×H×W image → (B×C×H×W features, B×2×H×W structural signal)."""
        features = self.features(x)
        return features, sobel_signal(self.to_structure(features))


class SPFLevel(nn.Module):
    """Structure-guided merge of two modality features at one scale.

    Per pixel, ``softmax_m(gain · s_m + gate([f_ir, f_vis, s_ir, s_vis])_m)`` over the two
    modalities m weights their features (``s_m``: edge strength of the structural signal),
    then a residual block refines the merged map. The gate's last conv starts small (bias
    zero), so an untrained level mostly follows the structural signals.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))
        self.gate = nn.Sequential(ConvAct(2 * width + 2, width, 1), nn.Conv2d(width, 2, 3, padding=1))
        with torch.no_grad():  # small, not zero: the gate's first conv still gets gradient at step one
            self.gate[-1].weight.mul_(0.1)
            self.gate[-1].bias.zero_()
        self.refine = ResidualBlock(width)

    def weights(self, f_ir: Tensor, f_vis: Tensor, strength: Tensor) -> Tensor:
        """Per-pixel modality weights B×2×H×W (IR, VIS), summing to 1; ``strength`` is B×2×H×W."""
        logits = self.gain * strength + self.gate(torch.cat([f_ir, f_vis, strength], dim=1))
        return logits.softmax(dim=1)

    def forward(self, f_ir: Tensor, f_vis: Tensor, strength: Tensor) -> Tensor:
        """Weighted sum of the two features, refined: B×C×H×W."""
        w_ir, w_vis = self.weights(f_ir, f_vis, strength).split(1, dim=1)
        return self.refine(w_ir * f_ir + w_vis * f_vis)


class StructurePreservingFusion(nn.Module):
    """Multi-scale SPF: an :class:`SPFLevel` per scale (average-pooled inputs), upsampled and merged by 1×1."""

    def __init__(self, width: int, scales: Sequence[int]) -> None:
        super().__init__()
        self.scales = [int(s) for s in scales]
        self.levels = nn.ModuleList(SPFLevel(width) for _ in self.scales)
        self.merge = ConvAct(width * len(self.scales), width, 1)

    def forward(self, f_ir: Tensor, f_vis: Tensor, signal_ir: Tensor, signal_vis: Tensor) -> Tensor:
        """Fuse full-resolution features guided by the structural signals; H, W divisible by every scale."""
        size = f_ir.shape[-2:]
        strength = torch.cat([structure_magnitude(signal_ir), structure_magnitude(signal_vis)], dim=1)
        outs = []
        for scale, level in zip(self.scales, self.levels):
            pooled = [F.avg_pool2d(t, scale) if scale > 1 else t for t in (f_ir, f_vis, strength)]
            out = level(*pooled)
            outs.append(upsample_bilinear(out, size) if scale > 1 else out)
        return self.merge(torch.cat(outs, dim=1))


@register_model("sspfusion")
class SSPFusion(FusionModel):
    """SSPFusion: structural feature extractors, Sobel structural signals, multi-scale structure-preserving fusion.

    Args:
        width: channels of every feature map.
        depth: residual blocks in each structural feature extractor.
        scales: pooling factors of the SPF levels (1 = full resolution).
        structure_weight: weight of the self-supervised structure loss returned by
            :meth:`auxiliary_losses` (0 switches it off).
    """

    def __init__(
        self, width: int = 16, depth: int = 2, scales: Sequence[int] = (1, 2, 4), structure_weight: float = 0.5,
        head: str = "region",
    ) -> None:
        super().__init__()
        if not scales or any(int(s) < 1 for s in scales):
            raise ValueError(f"scales must be positive integers, got {scales}")
        if structure_weight < 0:
            raise ValueError(f"structure_weight must be non-negative, got {structure_weight}")
        self.width = width
        self.structure_weight = float(structure_weight)
        self.stride = math.lcm(*(int(s) for s in scales))
        self.sfe_ir = StructuralFeatureExtractor(width, depth)
        self.sfe_vis = StructuralFeatureExtractor(width, depth)
        self.spf = StructurePreservingFusion(width, scales)
        self.decoder = nn.Sequential(ConvAct(width, width, 3), ConvAct(width, width, 3))
        self.head = FusionHead(width, head)

    @property
    def feature_channels(self) -> dict[str, int]:
        """All four features have ``width`` channels."""
        return {"enc_ir": self.width, "enc_vis": self.width, "fusion": self.width, "decoder": self.width}

    def forward(self, ir: Tensor, vis_y: Tensor) -> SSPFusionOutput:
        """Fuse B×1×H×W ``ir`` and ``vis_y`` in [0, 1]; features and signals are cropped to H×W."""
        height, width = ir.shape[-2:]
        enc_ir, signal_ir = self.sfe_ir(pad_to_multiple(ir, self.stride))
        enc_vis, signal_vis = self.sfe_vis(pad_to_multiple(vis_y, self.stride))
        fusion = self.spf(enc_ir, enc_vis, signal_ir, signal_vis)
        decoder = self.decoder(fusion)
        fused = self.head(decoder, ir, vis_y)
        features = OrderedDict(
            (name, crop_to(t, height, width))
            for name, t in (("enc_ir", enc_ir), ("enc_vis", enc_vis), ("fusion", fusion), ("decoder", decoder))
        )
        signals = OrderedDict(
            structure_ir=crop_to(signal_ir, height, width), structure_vis=crop_to(signal_vis, height, width)
        )
        return SSPFusionOutput(fused=fused, features=features, signals=signals)

    def auxiliary_losses(self, output: SSPFusionOutput, ir: Tensor, vis_y: Tensor) -> dict[str, Tensor]:
        """``{"structure": w · mean of both modalities' structure losses}`` (empty when the weight is 0)."""
        if not self.structure_weight:
            return {}
        loss_ir = structure_loss(output.signals["structure_ir"], ir)
        loss_vis = structure_loss(output.signals["structure_vis"], vis_y)
        return {"structure": self.structure_weight * (loss_ir + loss_vis) / 2}
