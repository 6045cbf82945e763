"""A student that is fast by construction on CPU: the body runs at reduced resolution.

The plain ``student`` keeps twelve full-resolution maps; on a CPU it is memory-bound (the
element-wise ops and ``cat`` between its cheap convs take half its time). ``student_fast``
moves almost all work to 1/``scale`` of the resolution (1/16 of the pixels by default), where
its maps fit in cache and dense 3×3 convs keep the cores busy:

- per modality: the input, padded to a multiple of ``scale`` (replicate padding, amounts
  computed from the tensor so an ONNX export stays dynamic), goes through a patchify stem
  (``scale``×``scale`` conv with stride ``scale``: a linear map of each cell, i.e. a 1×1 conv
  of the pixel-unshuffled input) and two :class:`RepConv` layers → ``enc_ir`` / ``enc_vis``;
- fusion: a 3×3 conv of [enc_ir, enc_vis], computed as the sum of one :class:`RepConv` per
  encoding (no ``cat``), then one more :class:`RepConv` → ``fusion``;
- decoder: ``fusion`` plus 1×1 convs of both encodings (a dense link, added rather than
  concatenated) → :class:`RepConv` → ``decoder``;
- head: 3×3 conv to the output maps at 1/``scale`` resolution, upsampled bilinearly to full
  resolution and cropped to H×W (``upsample="bilinear"``, the default); what the maps mean
  (``head="region"``/``"blend"``: a learned soft
  selection of the inputs plus a residual; ``"residual"``: a residual over ``max(ir, vis_y)``) is decided in
  one place, :meth:`StudentFast.fused_image`.

Why bilinear and not a pixel-shuffle head (scale² channels per map, one per sub-pixel, the
first design, still selectable as ``upsample="shuffle"``): nothing ties a shuffle head's 16
sub-pixels together, and distilled on synthetic scenes it learned a ±10-grey-level 4×4 fixed
pattern that wrecked its held-out VIF (README, Speed) while its training loss went down. Full
detail needs no full-resolution maps here: it comes from the inputs themselves through the
output rule (a selection of ``ir`` / ``vis_y`` at every pixel), so the head's maps only have
to be smooth, and a bilinear upsample makes them so by construction (and costs less).

Full-resolution work is only the pad, the stem's read, the upsample and the output rule; the
body's maps are channels-last on CPU (oneDNN's fast layout for narrow convs).
The four features are at H/scale × W/scale (rounded up); the distillation loss resizes them
to the teacher's size (:class:`dfsfuse.losses.distill.FeatureDistillLoss`).

:class:`RepConv` trains as RepVGG does (3×3 + 1×1 + identity branches, summed) and
:meth:`StudentFast.reparameterize` folds each into a single 3×3 conv, the same function up
to float rounding; folded weights save and load like unfolded ones (same tensor names).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import upsample_bilinear
from .blocks import HEADS, brighten_dark, fused_from_head, head_channels, vis_tone_target
from .outputs import FusionModel, FusionOutput
from .registry import register_model

UPSAMPLES: tuple[str, ...] = ("bilinear", "shuffle")
"""How :class:`StudentFast`'s head reaches full resolution (``upsample=`` kwarg)."""

BLEND_SHARPNESS = 20.0
"""``s`` in the blend weight ``sigmoid(z + s·(ir − vis_y))`` (the :class:`~dfsfuse.models.blocks.FusionHead` default)."""


class RepConv(nn.Module):
    """RepVGG-style 3×3 conv: 3×3 + 1×1 (+ identity when in == out) branches, then LeakyReLU.

    :meth:`reparameterize` folds the branches into the 3×3 conv (exact in real arithmetic),
    leaving one conv and its activation for inference and export. The folded layer keeps its
    (zeroed, unused) 1×1 weight and records ``folded`` in a buffer, so folded and unfolded
    weights have the same tensor names: either loads into a fresh model (``from_pretrained``
    included), and loading sets the layer's mode from the weights.
    """

    folded: Tensor

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, groups=groups)
        self.conv1x1 = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False)
        self.identity = in_channels == out_channels
        self.act: nn.Module = nn.LeakyReLU(0.1, inplace=True) if act else nn.Identity()
        self.register_buffer("folded", torch.zeros((), dtype=torch.bool))
        self._folded = False  # a Python copy of the buffer: forward never branches on a tensor (tracing, compile)

    @property
    def reparameterized(self) -> bool:
        """Whether the branches have been folded into ``conv``."""
        return self._folded

    def forward(self, x: Tensor) -> Tensor:
        """``act(conv3x3(x) + conv1x1(x) + x)``, or ``act(conv3x3(x))`` once folded."""
        y = self.conv(x)
        if not self._folded:
            y = y + self.conv1x1(x)
            if self.identity:
                y = y + x
        return self.act(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the 1×1 and identity branches into the 3×3 kernel (no-op when already folded)."""
        if self._folded:
            return
        weight = self.conv.weight + F.pad(self.conv1x1.weight, [1, 1, 1, 1])
        if self.identity:  # output channel o reads input o, which is index o % (C / groups) in its group
            out_channels, group_in = weight.shape[:2]
            index = torch.arange(out_channels, device=weight.device)
            weight[index, index % group_in, 1, 1] += 1.0
        self.conv.weight.copy_(weight)
        self.conv1x1.weight.zero_()
        self.folded.fill_(True)
        self._folded = True

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "folded" in state_dict:  # the weights say which form they are in
            self._folded = bool(state_dict[prefix + "folded"])


def pad_to_scale(x: Tensor, scale: int) -> Tensor:
    """Replicate-pad the bottom/right of ``x`` to a multiple of ``scale``.

    The pad amounts are computed from the tensor's own size on every call (never branched
    on), so a traced ONNX graph pads correctly at any input size.
    """
    height, width = x.shape[-2], x.shape[-1]
    pad_h = (scale - height % scale) % scale
    pad_w = (scale - width % scale) % scale
    return F.pad(x, [0, pad_w, 0, pad_h], mode="replicate")


class _Encoder(nn.Module):
    """Patchify stem (s×s conv, stride s: a linear map of each s×s cell) then two RepConvs."""

    def __init__(self, width: int, scale: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, scale, stride=scale)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.body = nn.Sequential(RepConv(width, width), RepConv(width, width))

    def forward(self, x: Tensor) -> Tensor:
        """B×1×H×W (H, W multiples of the scale) → B×width×H/scale×W/scale."""
        x = self.act(self.stem(x))
        if x.device.type == "cpu":  # oneDNN runs the narrow convs that follow fastest channels-last
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)


@register_model("student_fast")
class StudentFast(FusionModel):
    """Fast CPU student: patchify ×``scale``, RepVGG-style body at reduced resolution, upsampled head.

    Args:
        width: channels of every feature map (the size knob; 16 by default).
        scale: patch size (4 by default; 2 is sharper and about 4× the cost): the body runs
            at H/scale × W/scale.
        head: how the head's maps become the fused image, ``"region"``, ``"blend"`` or ``"residual"``, the
            same rules as every fusion network's :class:`~dfsfuse.models.blocks.FusionHead`.
        upsample: how the head's low-resolution maps reach full resolution: ``"bilinear"``
            (default: smooth maps, detail comes from the inputs through the rule) or
            ``"shuffle"`` (pixel-shuffle of scale² channels per map; the first design, kept to
            load models exported with it, prone to a fixed scale×scale pattern).
        vis_tone: 0 (default) fuses the visible luminance as given; a target in (0, 1) first lifts a
            dark visible image's mean toward it with one gamma per image
            (:func:`~dfsfuse.models.blocks.brighten_dark`), so night scenes reach the network and its output
            rule brightened; stage 2 then gives the teacher and the losses the same brightened image.
    """

    def __init__(self, width: int = 16, scale: int = 4, head: str = "region", upsample: str = "bilinear",
                 vis_tone: float = 0.0) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {upsample!r}")
        if scale < 1 or width < 1:
            raise ValueError(f"scale and width must be positive, got scale={scale}, width={width}")
        self.vis_tone = vis_tone_target(vis_tone)
        self.width, self.scale, self.head_kind, self.upsample = width, scale, head, upsample
        self.feature_stride = scale
        self.encoder_ir = _Encoder(width, scale)
        self.encoder_vis = _Encoder(width, scale)
        # A conv of [enc_ir, enc_vis] computed as the sum of one conv per encoding: no cat.
        self.fuse_ir = RepConv(width, width, act=False)
        self.fuse_vis = RepConv(width, width, act=False)
        self.fuse_act = nn.LeakyReLU(0.1, inplace=True)
        self.fuse = RepConv(width, width)
        # Dense link encoders → decoder, added (1×1 convs) rather than concatenated.
        self.skip_ir = nn.Conv2d(width, width, 1)
        self.skip_vis = nn.Conv2d(width, width, 1, bias=False)
        self.decoder = RepConv(width, width)
        # One map per output channel of the rule (region/blend: z and r; residual: r), at low
        # resolution (bilinear) or as s² sub-pixel cells each (shuffle).
        cells = scale * scale if upsample == "shuffle" else 1
        self.head = nn.Conv2d(width, head_channels(head) * cells, 3, padding=1)
        with torch.no_grad():  # zero: training starts at the head's rule (see blocks.OutputHead)
            self.head.weight.zero_()
            self.head.bias.zero_()

    @property
    def feature_channels(self) -> dict[str, int]:
        """All four features have ``width`` channels (at 1/``scale`` resolution)."""
        return {"enc_ir": self.width, "enc_vis": self.width, "fusion": self.width, "decoder": self.width}

    def reparameterize(self) -> "StudentFast":
        """Fold every :class:`RepConv` into one 3×3 conv (for inference/export); returns ``self``."""
        for module in self.modules():
            if isinstance(module, RepConv):
                module.reparameterize()
        return self

    def fused_image(self, raw: Tensor, ir: Tensor, vis_y: Tensor) -> Tensor:
        """The output rule: the head's full-resolution maps ``raw`` and the inputs → fused image, exactly
        as :class:`~dfsfuse.models.blocks.FusionHead` of kind ``head`` computes it (shared function)."""
        return fused_from_head(raw, ir, vis_y, self.head_kind, BLEND_SHARPNESS)

    def forward(self, ir: Tensor, vis_y: Tensor) -> FusionOutput:
        """Fuse B×1×H×W ``ir`` and ``vis_y`` in [0, 1] (any H, W)."""
        height, width = ir.shape[-2], ir.shape[-1]
        if self.vis_tone:
            vis_y = brighten_dark(vis_y, self.vis_tone)
        enc_ir = self.encoder_ir(pad_to_scale(ir, self.scale))
        enc_vis = self.encoder_vis(pad_to_scale(vis_y, self.scale))
        fusion = self.fuse(self.fuse_act(self.fuse_ir(enc_ir) + self.fuse_vis(enc_vis)))
        decoder = self.decoder(fusion + self.skip_ir(enc_ir) + self.skip_vis(enc_vis))
        raw = self.head(decoder)
        if self.upsample == "shuffle":
            raw = F.pixel_shuffle(raw, self.scale)
        elif self.scale > 1:  # contiguous: bilinear upsampling of a channels-last map is ~4× slower on CPU
            raw = upsample_bilinear(raw.contiguous(), scale_factor=self.scale)
        raw = raw[..., :height, :width]
        features = OrderedDict(enc_ir=enc_ir, enc_vis=enc_vis, fusion=fusion, decoder=decoder)
        return FusionOutput(fused=self.fused_image(raw, ir, vis_y), features=features)
