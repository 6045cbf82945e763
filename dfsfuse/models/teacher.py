"""The frequency-aware teacher: global (transformer) + frequency (wavelet) fusion network.

Layout (``dim`` = C):

- per modality: 3×3 conv embedding → :class:`DualBranchBlock` (C, full resolution)
  → features ``enc_ir`` / ``enc_vis``;
- fusion: 1×1 conv of both encodings, then a small U-shaped body of dual-branch blocks at
  1/2 (2C) and 1/4 (4C) resolution with pixel-(un)shuffle resampling and skip links, back
  to full resolution → feature ``fusion`` (C);
- decoder: two 3×3 conv blocks → feature ``decoder`` (C) → 3×3 :class:`FusionHead` (default
  ``blend``: learned per-pixel weighting of the inputs plus a free residual, clamped to [0, 1]).

Every dual-branch block runs Restormer-style channel attention (cost linear in pixels) in
parallel with a one-level DWT branch that treats LL and (LH, HL, HH) with separate layers.
Inputs of any size are padded to a multiple of 8 (two downsamplings, then an even size for
the DWT at 1/4) and all outputs are cropped back to H×W.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from .blocks import (
    ConvAct,
    Downsample,
    DualBranchBlock,
    FusionHead,
    Upsample,
    brighten_dark,
    crop_to,
    pad_to_multiple,
    vis_tone_target,
)
from .outputs import FusionModel, FusionOutput
from .registry import register_model


@register_model("teacher")
class Teacher(FusionModel):
    """Frequency-aware teacher: channel-attention transformer ‖ wavelet branches, U-shaped fusion.

    Args:
        dim: channel width at full resolution (2·dim at 1/2, 4·dim at 1/4).
        heads: attention heads at full resolution (doubled at each level).
        mlp_ratio: hidden width of the transformer MLPs relative to their input.
        bottleneck_depth: number of dual-branch blocks at 1/4 resolution.
        wave: ``pytorch_wavelets`` wavelet name of the frequency branches.
        drop_path: stochastic-depth rate of every transformer block.
        head: output head, ``"region"`` (default), ``"blend"`` or ``"residual"`` (see :class:`FusionHead`).
        vis_tone: 0 (default) fuses the visible luminance as given; a target in (0, 1) first lifts a
            dark visible image's mean toward it (:func:`~dfsfuse.models.blocks.brighten_dark`), as
            ``student_fast``'s ``vis_tone``; stage 1 then gives the losses and the segmenter the same
            brightened image, so a teacher trained this way fuses raw pairs the way it was trained.
    """

    stride = 8

    def __init__(
        self,
        dim: int = 24,
        heads: int = 1,
        mlp_ratio: float = 2.0,
        bottleneck_depth: int = 2,
        wave: str = "haar",
        drop_path: float = 0.0,
        head: str = "region",
        vis_tone: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.vis_tone = vis_tone_target(vis_tone)

        def block(width: int, level: int) -> DualBranchBlock:
            return DualBranchBlock(width, heads * 2**level, mlp_ratio, wave, drop_path)

        self.embed_ir = ConvAct(1, dim, 3)
        self.embed_vis = ConvAct(1, dim, 3)
        self.encoder_ir = block(dim, 0)
        self.encoder_vis = block(dim, 0)

        self.fuse_in = ConvAct(dim * 2, dim, 1)
        self.down1 = Downsample(dim)
        self.level2_in = block(dim * 2, 1)
        self.down2 = Downsample(dim * 2)
        self.bottleneck = nn.Sequential(*(block(dim * 4, 2) for _ in range(bottleneck_depth)))
        self.up2 = Upsample(dim * 4)
        self.reduce2 = nn.Conv2d(dim * 4, dim * 2, 1)
        self.level2_out = block(dim * 2, 1)
        self.up1 = Upsample(dim * 2)
        self.reduce1 = nn.Conv2d(dim * 2, dim, 1)

        self.decoder = nn.Sequential(ConvAct(dim, dim, 3), ConvAct(dim, dim, 3))
        self.head = FusionHead(dim, head)

    @property
    def feature_channels(self) -> dict[str, int]:
        """All four features have ``dim`` channels."""
        return {"enc_ir": self.dim, "enc_vis": self.dim, "fusion": self.dim, "decoder": self.dim}

    def forward(self, ir: Tensor, vis_y: Tensor) -> FusionOutput:
        """Fuse B×1×H×W ``ir`` and ``vis_y`` in [0, 1]; features are cropped to H×W."""
        height, width = ir.shape[-2:]
        if self.vis_tone:
            vis_y = brighten_dark(vis_y, self.vis_tone)
        enc_ir = self.encoder_ir(self.embed_ir(pad_to_multiple(ir, self.stride)))
        enc_vis = self.encoder_vis(self.embed_vis(pad_to_multiple(vis_y, self.stride)))

        full = self.fuse_in(torch.cat([enc_ir, enc_vis], dim=1))
        half = self.level2_in(self.down1(full))
        quarter = self.bottleneck(self.down2(half))
        half = self.level2_out(self.reduce2(torch.cat([self.up2(quarter), half], dim=1)))
        fusion = self.reduce1(torch.cat([self.up1(half), full], dim=1))

        decoder = self.decoder(fusion)
        fused = self.head(decoder, ir, vis_y)
        features = OrderedDict(
            (name, crop_to(t, height, width))
            for name, t in (("enc_ir", enc_ir), ("enc_vis", enc_vis), ("fusion", fusion), ("decoder", decoder))
        )
        return FusionOutput(fused=fused, features=features)


@register_model("teacher_cpu", kind="fusion")
def teacher_cpu(**kwargs) -> Teacher:
    """The teacher at ``dim=16`` (as ``recipes/configs/msrs_cpu.yaml``): about half the MACs, trains on a CPU.

    A named variant, timm-style: ``create_model("teacher_cpu", **overrides)``; its ``arch_config()``
    keeps the name and the full kwargs, so the folder it is saved to rebuilds it exactly.
    """
    return Teacher(**{"dim": 16, **kwargs})
