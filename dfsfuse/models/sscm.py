"""SSCM-Fusion: progressive fusion with cross-modality differential feature compensation (CMDFC).

Layout (``widths`` = (w₀, …, w_n)):

- per modality: 3×3 stem (1→w₀); then, for each stage i, a 3×3 conv block per modality
  (w_{i−1}→w_i) followed by a :class:`CMDFC` module that exchanges what one modality has and
  the other lacks: ``f_ir += CBAM(f_vis − f_ir)``, ``f_vis += CBAM(f_ir − f_vis)``; the last
  stage's maps are the features ``enc_ir`` / ``enc_vis`` (w_n);
- fusion: 1×1 conv of both (2w_n→w_n) then a 3×3 block → feature ``fusion`` (w_n);
- image reconstructor: 3×3 blocks w_n→w_n→w_n/2 → feature ``decoder`` (w_n/2) → 3×3 head
  predicting a residual over ``max(ir, vis_y)``, clamped to [0, 1].

Every conv has stride 1, so any H×W works without padding and every feature is at the
input size. CBAM (Woo et al. 2018) is channel attention (shared MLP on average- and
max-pooled descriptors) followed by spatial attention (7×7 conv on channel mean and max).
SSCM-Fusion's semantic loss is the segmentation CE of the training recipe's stage 1.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from einops import reduce
from torch import Tensor, nn

from .blocks import ConvAct, FusionHead
from .outputs import FusionModel, FusionOutput
from .registry import register_model


class ChannelGate(nn.Module):
    """CBAM channel attention: ``sigmoid(MLP(avgpool x) + MLP(maxpool x))`` → B×C×1×1 in [0, 1]."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Channel weights B×C×1×1 of a B×C×H×W map."""
        avg = reduce(x, "b c h w -> b c 1 1", "mean")
        peak = reduce(x, "b c h w -> b c 1 1", "max")
        return torch.sigmoid(self.mlp(avg) + self.mlp(peak))


class SpatialGate(nn.Module):
    """CBAM spatial attention: ``sigmoid(conv_k([mean_c x, max_c x]))`` → B×1×H×W in [0, 1]."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        """Spatial weights B×1×H×W of a B×C×H×W map."""
        stats = torch.cat([reduce(x, "b c h w -> b 1 h w", "mean"), reduce(x, "b c h w -> b 1 h w", "max")], dim=1)
        return torch.sigmoid(self.conv(stats))


class CBAM(nn.Module):
    """Convolutional block attention: ``x · Mc(x)``, then ``· Ms(·)`` (channel, then spatial)."""

    def __init__(self, channels: int, reduction: int = 4, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        """Refined map, same shape as ``x`` (zero for a zero input)."""
        x = x * self.channel(x)
        return x * self.spatial(x)


class CMDFC(nn.Module):
    """Cross-modality differential feature compensation.

    The difference of the two modalities' features is what one has and the other lacks;
    refined by CBAM, it is added to the other modality: ``f_ir + CBAM_ir(f_vis − f_ir)`` and
    ``f_vis + CBAM_vis(f_ir − f_vis)``. Identical inputs pass through unchanged.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.to_ir = CBAM(channels, reduction)
        self.to_vis = CBAM(channels, reduction)

    def compensation(self, f_ir: Tensor, f_vis: Tensor) -> tuple[Tensor, Tensor]:
        """The terms added to (IR, VIS): ``CBAM_ir(f_vis − f_ir)``, ``CBAM_vis(f_ir − f_vis)``."""
        return self.to_ir(f_vis - f_ir), self.to_vis(f_ir - f_vis)

    def forward(self, f_ir: Tensor, f_vis: Tensor) -> tuple[Tensor, Tensor]:
        """Compensated (IR, VIS) features, same shapes as the inputs."""
        c_ir, c_vis = self.compensation(f_ir, f_vis)
        return f_ir + c_ir, f_vis + c_vis


class ProgressiveStage(nn.Module):
    """One stage of the progressive network: a 3×3 block per modality, then :class:`CMDFC`."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int, norm: bool) -> None:
        super().__init__()
        self.conv_ir = ConvAct(in_channels, out_channels, 3, norm=norm)
        self.conv_vis = ConvAct(in_channels, out_channels, 3, norm=norm)
        self.cmdfc = CMDFC(out_channels, reduction)

    def forward(self, f_ir: Tensor, f_vis: Tensor) -> tuple[Tensor, Tensor]:
        """(IR, VIS) features after the convs and the cross-modality compensation."""
        return self.cmdfc(self.conv_ir(f_ir), self.conv_vis(f_vis))


@register_model("sscm")
class SSCMFusion(FusionModel):
    """SSCM-Fusion: progressive two-branch CNN with CMDFC (CBAM on modality differences) at every stage.

    Args:
        widths: channels of the stem followed by those of each progressive stage.
        reduction: channel reduction of the CBAM channel-attention MLPs.
        norm: add BatchNorm after each conv of the branches and the reconstructor.
    """

    def __init__(self, widths: Sequence[int] = (8, 16, 24), reduction: int = 4, norm: bool = False,
                 head: str = "region") -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 2:
            raise ValueError(f"widths needs a stem and at least one stage, each of 2+ channels, got {widths}")
        last = widths[-1]
        self.out_channels = last
        self.decoder_channels = max(last // 2, 1)
        self.stem_ir = ConvAct(1, widths[0], 3, norm=norm)
        self.stem_vis = ConvAct(1, widths[0], 3, norm=norm)
        self.stages = nn.ModuleList(
            ProgressiveStage(c_in, c_out, reduction, norm) for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.fuse = nn.Sequential(ConvAct(2 * last, last, 1, norm=norm), ConvAct(last, last, 3, norm=norm))
        self.decoder = nn.Sequential(
            ConvAct(last, last, 3, norm=norm), ConvAct(last, self.decoder_channels, 3, norm=norm)
        )
        self.head = FusionHead(self.decoder_channels, head)

    @property
    def feature_channels(self) -> dict[str, int]:
        """Encoders and fusion have the last stage's width; the decoder half of it."""
        c = self.out_channels
        return {"enc_ir": c, "enc_vis": c, "fusion": c, "decoder": self.decoder_channels}

    def forward(self, ir: Tensor, vis_y: Tensor) -> FusionOutput:
        """Fuse B×1×H×W ``ir`` and ``vis_y`` in [0, 1]."""
        f_ir, f_vis = self.stem_ir(ir), self.stem_vis(vis_y)
        for stage in self.stages:
            f_ir, f_vis = stage(f_ir, f_vis)
        fusion = self.fuse(torch.cat([f_ir, f_vis], dim=1))
        decoder = self.decoder(fusion)
        features = OrderedDict(enc_ir=f_ir, enc_vis=f_vis, fusion=fusion, decoder=decoder)
        return FusionOutput(fused=self.head(decoder, ir, vis_y), features=features)
