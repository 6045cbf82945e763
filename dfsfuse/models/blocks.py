"""Layers shared by the networks: padding helpers, conv blocks, channel-attention transformer
blocks, the wavelet frequency block and the fused-image output head."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, LayerNorm2d, Mlp
from torch import Tensor, nn

from ..baselines import (GAMMA_MIN, GAMMA_TARGET, REGION_CONTRAST_GAIN, REGION_GAIN, WARM_CONTRAST_SIGMAS,
                         gaussian_taps, region_taps)
from ..ops import upsample_bilinear
from ..wavelets import DWTForward, DWTInverse


def _tracing() -> bool:
    """True while TorchScript tracing (``torch.onnx.export(dynamo=False)``) or torch.compile/export runs."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "replicate") -> Tensor:
    """Pad the bottom/right of a B×C×H×W map so H and W are multiples of ``multiple``.

    The amounts are ``(-size) % multiple`` of the map's own sizes, which the ONNX tracer and
    ``torch.export`` keep symbolic, so an exported graph pads correctly at any input size.
    While tracing, the map is always padded (possibly by 0): skipping the pad on the example
    size would bake that decision into the graph. Eager calls skip a zero pad (same values).
    """
    pad_h = (-x.shape[-2]) % multiple
    pad_w = (-x.shape[-1]) % multiple
    if not _tracing() and pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def crop_to(x: Tensor, height: int, width: int) -> Tensor:
    """Keep the top-left ``height``×``width`` window (undoes :func:`pad_to_multiple`)."""
    return x[..., :height, :width]


def fused_from_residual(residual: Tensor, ir: Tensor, vis_y: Tensor) -> Tensor:
    """Fused image = ``max(ir, vis_y) + residual``, clamped to [0, 1].

    The element-wise maximum is the target of the intensity loss, so an untrained network
    already outputs a sensible image and learns only the correction; the clamp passes
    gradients everywhere inside the valid range.
    """
    return (torch.maximum(ir, vis_y) + residual).clamp(0.0, 1.0)


HEADS: tuple[str, ...] = ("region", "blend", "residual", "region-add", "region-contrast", "region-gain")
"""Output heads every fusion network accepts (``head=`` kwarg); see :class:`FusionHead`."""


def head_channels(kind: str) -> int:
    """How many maps a head of ``kind`` predicts: 1 for ``residual`` (r), 3 for ``region-contrast``
    (z, r, g), 2 for ``region-gain`` (z, g) and for the others (z, r)."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; choose from {', '.join(HEADS)}")
    return {"residual": 1, "region-contrast": 3}.get(kind, 2)


_REGION_TAPS = region_taps().tolist()  # the region-max rule's Gaussian (dfsfuse.baselines)


def _blur_along(x: Tensor, dim: int, taps: "list[float] | None" = None) -> Tensor:
    """A symmetric Gaussian (default: the region Gaussian) along ``dim`` (-1 or -2),
    edge-replicated borders, same size.

    A sum of shifted slices (taps paired by symmetry, accumulated in place), not a depthwise
    conv: PyTorch's CPU kernel for a 1×19 depthwise conv made this blur 2/3 of ``student_fast``'s
    time at 480×640 (32 of 48 ms on 2 threads); this takes ~4 ms with the same values (to float
    rounding). Slices end at negative offsets, so traced graphs stay size-independent.
    """
    taps = _REGION_TAPS if taps is None else taps
    n = len(taps)
    r = n // 2
    # Replicate padding by concatenating edge slices (not F.pad): the ONNX graph then keeps the
    # static channel dimension, which a traced replicate Pad loses.
    first, last = (x[..., :1], x[..., -1:]) if dim == -1 else (x[..., :1, :], x[..., -1:, :])
    y = torch.cat([first] * r + [x] + [last] * r, dim=dim)

    def shifted(k: int) -> Tensor:
        index = slice(k, (k - (n - 1)) or None)
        return y[..., index] if dim == -1 else y[..., index, :]

    out = shifted(r) * taps[r]
    for k in range(r):
        out.add_(shifted(k) + shifted(n - 1 - k), alpha=taps[k])
    return out


_WARM_TAPS = [gaussian_taps(sigma).tolist() for sigma in WARM_CONTRAST_SIGMAS]


def warm_contrast(ir: Tensor) -> Tensor:
    """``relu(G₂ * ir − G₈ * ir)`` (σ in pixels, :data:`~dfsfuse.baselines.WARM_CONTRAST_SIGMAS`,
    edge-replicated borders): where IR is warmer than its surroundings, as a blob (the small
    Gaussian removes pixel noise); the direction the ``region-contrast`` head adds along."""
    fine, coarse = (_blur_along(_blur_along(ir, -2, taps), -1, taps) for taps in _WARM_TAPS)
    return (fine - coarse).clamp(min=0.0)


def brighten_dark(vis_y: Tensor, target: float = GAMMA_TARGET) -> Tensor:
    """Lift a dark image's mean intensity toward ``target`` with one gamma per image: the torch twin of
    :func:`dfsfuse.baselines.brighten_dark` (``gamma-contrast``'s brightening), for the ``vis_tone`` of
    ``student_fast`` and ``teacher``.

    ``vis^γ`` with ``γ = clip(ln target / ln m, GAMMA_MIN, 1)`` and ``m`` the mean of each B×C×H×W
    image in [0, 1]: a night image (m ≈ 0.1) gets γ ≈ 0.4, an image at or above ``target`` is returned
    unchanged (γ = 1). Order-preserving per image, so no structure is lost. No gradient reaches
    ``vis_y`` (an input); ONNX-exportable (ReduceMean, Log, Div, Clip, Pow).
    """
    mean = vis_y.float().mean(dim=(-3, -2, -1), keepdim=True).clamp(1e-3, 0.999)
    gamma = (torch.log(torch.tensor(target, dtype=mean.dtype, device=mean.device)) / mean.log()).clamp(GAMMA_MIN, 1.0)
    return vis_y.float().clamp(0.0, 1.0).pow(gamma).to(vis_y.dtype)


def vis_tone_target(vis_tone: float) -> float:
    """A fusion network's validated ``vis_tone``: 0 (off) or the target mean in (0, 1) that
    :func:`brighten_dark` lifts a dark visible input toward; ``ValueError`` otherwise."""
    if not 0.0 <= vis_tone < 1.0:
        raise ValueError(f"vis_tone must be 0 (off) or a target mean in (0, 1), got {vis_tone}")
    return float(vis_tone)


def region_logits(ir: Tensor, vis_y: Tensor) -> Tensor:
    """``REGION_GAIN · (G_σ * ir − G_σ * vis)``: the ``region`` head's prior selection logits
    (the ``region-max`` rule's, see :mod:`dfsfuse.baselines`); edge-replicated borders."""
    # The blur and the replicate padding are linear: blurring the difference once is exact.
    return REGION_GAIN * _blur_along(_blur_along(ir - vis_y, -2), -1)


def fused_from_head(raw: Tensor, ir: Tensor, vis_y: Tensor, kind: str, sharpness: float = 20.0) -> Tensor:
    """The output rule of a head of ``kind`` (see :class:`FusionHead`) applied to its B×k×H×W maps ``raw``.

    ``sharpness`` is the ``blend`` head's per-pixel selection gain; ``region`` uses
    :data:`REGION_GAIN` on local means instead.
    """
    if kind == "residual":
        return fused_from_residual(raw, ir, vis_y)
    z, residual = raw[:, :1], raw[:, 1:2]
    if kind in ("region-contrast", "region-gain"):
        # region + a learned gain (the last map) on IR's warm contrast; region-gain has no residual r
        fused = vis_y + torch.sigmoid(z + region_logits(ir, vis_y)) * (ir - vis_y)
        if kind == "region-contrast":
            fused = fused + residual
        return (fused + (raw[:, -1:] + REGION_CONTRAST_GAIN) * warm_contrast(ir)).clamp(0.0, 1.0)
    if kind == "region-add":
        # Not clipped: a clip at the saturated prior's 0/1 would pass no gradient (the point of
        # this head); F itself is clipped, and a weight outside [0, 1] extrapolates contrast.
        w = torch.sigmoid(region_logits(ir, vis_y)) + z
    else:
        prior = region_logits(ir, vis_y) if kind == "region" else sharpness * (ir - vis_y)
        w = torch.sigmoid(z + prior)
    return (vis_y + w * (ir - vis_y) + residual).clamp(0.0, 1.0)


class FusionHead(nn.Module):
    """The last layer of a fusion network: features → fused luminance in [0, 1].

    - ``"residual"``: ``F = clip(max(ir, vis) + r)``. Training starts *at* the max rule; with
      the classic intensity/gradient-towards-max loss it stays there.
    - ``"blend"``: ``F = clip(w·ir + (1 − w)·vis + r)`` with a per-pixel weight
      ``w = sigmoid(z + s·(ir − vis))``. With ``z = r = 0`` (the initial state) this is a soft
      maximum of the inputs, so training still starts near ``max``; but the network owns both
      the base (``z`` moves the weight towards either source wherever it wants) and a free
      detail/contrast term ``r``, so it can produce intensities and edges neither input has
      (e.g. the dimmer source's edges on top of the brighter source).
    - ``"region"`` (default): the same, but the prior compares *local* brightness,
      ``w = sigmoid(z + 400·(G₃ * ir − G₃ * vis))`` (Gaussian σ = 3 px). Its initial state is
      the ``region-max`` rule, which already beats pixel ``max`` on VIF and Q^AB/F: a pixel
      max switches source wherever the two cross and cuts the structure of both there, while
      a regional choice keeps each neighbourhood's structure from one source.
    - ``"region-add"``: the same rule, but ``z`` moves the *weight*, not its logit:
      ``w = sigmoid(400·(G₃ * ir − G₃ * vis)) + z`` (not clipped; ``F`` is). The prior is saturated
      almost everywhere (a local difference of 0.02 is already a logit of 8), so in ``"region"``
      ``z`` gets a gradient only along the borders between sources, and switching a region to
      the other source takes a logit of tens: networks stay at the rule plus their residual.
      Here ``∂F/∂z = ir − vis`` everywhere, ``z = ±1`` switches any region, and a weight
      beyond [0, 1] stretches the difference of the sources. Same initial state (``region-max``).
    - ``"region-contrast"``: ``region`` plus a learned gain on IR's warm contrast,
      ``F = clip(vis + w·(ir − vis) + r + (2 + g)·relu(G₂ * ir − G₈ * ir))`` (third map ``g``;
      :func:`warm_contrast`; 2 = :data:`~dfsfuse.baselines.REGION_CONTRAST_GAIN`). A segmenter
      finds people far better in IR than in any brightness-based fusion because a warm body keeps
      its contrast *against its surroundings* there; adding that contrast everywhere costs VIF and
      Q^AB/F, so here the network learns *where* to keep it (from a segmentation loss or a
      teacher). Initial state: the ``region-contrast`` rule (``g = 0``), not ``region-max``: a
      zero-initialised gain barely moves in a CPU budget (measured: a teacher trained 600 steps
      from ``g = 0`` with seg CE 0.5 ended 52.5 dB from ``region-max``, +0.25 grey levels on people).

    ``forward(x, ir, vis_y)`` crops the head's output to ``ir``'s size first, so a network that
    pads its input (the teacher) can hand over its padded decoder map.
    """

    def __init__(self, in_channels: int, kind: str = "region", sharpness: float = 20.0) -> None:
        super().__init__()
        self.conv = OutputHead(in_channels, out_channels=head_channels(kind))  # validates kind
        self.kind = kind
        self.sharpness = float(sharpness)

    def forward(self, x: Tensor, ir: Tensor, vis_y: Tensor) -> Tensor:
        """Fused B×1×H×W image from the B×C×H'×W' map ``x`` (H' ≥ H, W' ≥ W)."""
        raw = self.conv(x)[..., : ir.shape[-2], : ir.shape[-1]]
        return fused_from_head(raw, ir, vis_y, self.kind, self.sharpness)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, sharpness={self.sharpness}"


def upgrade_state_dict(state: dict[str, Tensor], expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the tensors of weights saved before :class:`FusionHead` existed
    (``…head.weight`` → ``…head.conv.weight``) when ``expected`` has the new names."""
    renamed = {}
    for key, value in state.items():
        for leaf in (".weight", ".bias"):
            new = key[: -len(leaf)] + ".conv" + leaf
            if key.endswith("head" + leaf) and key not in expected and new in expected:
                key = new
        renamed[key] = value
    return renamed


class OutputHead(nn.Conv2d):
    """3×3 conv to the head's channels, initialised to zero so training starts exactly at the
    head's rule (``max`` for ``residual``, ``region-max`` for ``region``).

    Zero, not small random: a random head perturbs the rule's output by an amount training then
    spends its first hundreds of steps undoing (measured: a head scaled ×0.1 from the default
    init ended 400 steps *above* the rule's training loss). The head's weights still get a
    gradient at step one (features × output gradient); the body gets one from step two on.
    """

    def __init__(self, in_channels: int, out_channels: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)
        with torch.no_grad():
            self.weight.zero_()
            self.bias.zero_()


class ChannelsLastOnCPU(nn.Module):
    """Identity that lays a CPU map out channels-last; later convs keep that layout.

    oneDNN convolutions of narrow full-resolution maps run about twice as fast channels-last,
    and a 1-channel input cannot carry the layout itself. Weights stay contiguous, so
    ``state_dict`` saves as-is.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``x`` in channels-last memory format on CPU, unchanged elsewhere."""
        return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


class ConvAct(nn.Sequential):
    """Conv2d (same padding) → optional BatchNorm → LeakyReLU (or no activation)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        groups: int = 1,
        dilation: int = 1,
        norm: bool = False,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                groups=groups,
                bias=not norm,
            )
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if act:
            layers.append(nn.LeakyReLU(0.1, inplace=True))
        super().__init__(*layers)


class SeparableResBlock(nn.Module):
    """``x + act(pointwise(depthwise(x)))``: a cheap residual 3×3 block for the student."""

    def __init__(self, channels: int, dilation: int = 1, norm: bool = False) -> None:
        super().__init__()
        self.depthwise = ConvAct(channels, channels, 3, groups=channels, dilation=dilation, norm=norm, act=False)
        self.pointwise = ConvAct(channels, channels, 1, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        """Residual depthwise-separable convolution."""
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # PyTorch 2.14's CPU bf16 backward of this depthwise conv on a channels-last map returned
            # non-finite weight gradients in ~1.5% of identical calls (uninitialised memory, by the look:
            # replaying one with the same tensors never failed); on a contiguous map it did not (0 of 300)
            x = x.contiguous()
        return x + self.pointwise(self.depthwise(x))


class ChannelAttention(nn.Module):
    """Restormer's multi-Dconv-head transposed attention (MDTA).

    Attention runs across channels (a C/h × C/h map per head), with queries and keys
    L2-normalised over pixels, so cost and memory grow linearly with the pixel count.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Channel attention over all pixels of ``x`` (B×C×H×W → B×C×H×W)."""
        height, width = x.shape[-2:]
        q, k, v = (
            rearrange(t, "b (head c) h w -> b head c (h w)", head=self.heads)
            for t in self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        )
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = torch.einsum("bhcn,bhdn->bhcd", q, k) * self.temperature
        out = torch.einsum("bhcd,bhdn->bhcn", attn.softmax(dim=-1), v)
        return self.proj(rearrange(out, "b head c (h w) -> b (head c) h w", h=height, w=width))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on B×C×H×W maps: MDTA + conv MLP (timm layers)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = ChannelAttention(dim, heads)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, use_conv=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Attention then MLP, each with a residual connection."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _autocast_off(x: Tensor) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``x``'s device if it is on there (else does nothing)."""
    kind = x.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(device_type=kind, enabled=False)
    return contextlib.nullcontext()


class WaveletBlock(nn.Module):
    """Frequency branch: one-level DWT, separate layers for LL and for (LH, HL, HH), IDWT.

    Each sub-band path is residual and DWT→IDWT reconstructs perfectly in ``"zero"`` mode,
    so the block is ``x + IDWT(low(LL), high(LH, HL, HH))``. Odd sizes are padded to even and
    cropped back, because DWT→IDWT of an odd size returns the next even size.
    """

    def __init__(self, dim: int, wave: str = "haar") -> None:
        super().__init__()
        self.dwt = DWTForward(J=1, wave=wave, mode="zero")
        self.idwt = DWTInverse(wave=wave, mode="zero")
        self.low = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1))
        high = dim * 3
        self.high = nn.Sequential(
            nn.Conv2d(high, high, 1),
            nn.Conv2d(high, high, 3, padding=1, groups=high),
            nn.GELU(),
            nn.Conv2d(high, high, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Process low and high sub-bands separately; output has the size of ``x``."""
        height, width = x.shape[-2:]
        # pytorch_wavelets' autograd functions convolve with float32 filters and their backward
        # runs outside autocast: under bf16/fp16 autocast the gradient's dtype would not match
        # ("expected scalar type BFloat16 but found Float"). The transforms therefore run in
        # float32 with autocast off (a no-op in plain fp32); the sub-band layers still autocast.
        with _autocast_off(x):
            low, (high,) = self.dwt(pad_to_multiple(x, 2).float())
        high = rearrange(high, "b c band h w -> b (c band) h w")
        low = low + self.low(low)
        high = high + self.high(high)
        high = rearrange(high, "b (c band) h w -> b c band h w", band=3)
        with _autocast_off(x):
            out = self.idwt((low.float(), [high.float()]))
        return crop_to(out, height, width)


class DualBranchBlock(nn.Module):
    """The teacher's unit: global (transformer) and frequency (wavelet) branches in parallel,
    merged by a 1×1 conv and added to the input."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 2.0, wave: str = "haar", drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.global_branch = TransformerBlock(dim, heads, mlp_ratio, drop_path)
        self.frequency_branch = WaveletBlock(dim, wave)
        self.merge = nn.Conv2d(dim * 2, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x + merge([global(x), frequency(x)])``."""
        return x + self.merge(torch.cat([self.global_branch(x), self.frequency_branch(x)], dim=1))


class Downsample(nn.Module):
    """Halve the resolution, double the channels: 3×3 conv to C/2 then pixel-unshuffle ×2."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """B×C×H×W → B×2C×H/2×W/2 (H, W even)."""
        return rearrange(self.conv(x), "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2)


class Upsample(nn.Module):
    """Double the resolution, halve the channels: 1×1 conv to C/2, then bilinear ×2.

    The conv runs before upsampling (a quarter of the pixels), and bilinear interpolation
    avoids the checkerboard of a pixel-shuffle fed by a cheap conv.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim // 2, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """B×C×H×W → B×C/2×2H×2W."""
        return upsample_bilinear(self.conv(x), scale_factor=2.0)
