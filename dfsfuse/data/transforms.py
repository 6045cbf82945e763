"""Paired transforms: one random draw applied to IR, VIS (Y and CbCr) and label alike.

Each transform draws from the ``generator`` passed at call time, else the one given at
construction, else torch's global RNG; training passes a per-sample generator so that
augmentation does not depend on process count or worker layout.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .pairs import Sample

IMAGE_KEYS = ("ir", "vis_y", "vis_cbcr")
LABEL_KEY = "label"


def _spatial_keys(sample: Sample):
    return [k for k in (*IMAGE_KEYS, LABEL_KEY) if k in sample]


def _randint(high: int, generator: Optional[torch.Generator]) -> int:
    return int(torch.randint(high, (1,), generator=generator)) if high > 0 else 0


class PairedRandomCrop:
    """Crop the same random window from every image and the label.

    Samples smaller than ``size`` are first padded: images by reflection (zeros if too small
    to reflect), labels with ``ignore_index`` so the padding is never learnt as a class.
    """

    def __init__(self, size: Union[int, Tuple[int, int]], ignore_index: int = 255,
                 generator: Optional[torch.Generator] = None) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.ignore_index = ignore_index
        self.generator = generator

    def _pad(self, sample: Sample, h: int, w: int) -> Sample:
        ph, pw = max(0, self.size[0] - h), max(0, self.size[1] - w)
        if ph == 0 and pw == 0:
            return sample
        pad = (0, pw, 0, ph)
        mode = "reflect" if ph < h and pw < w else "constant"
        out = dict(sample)
        for key in IMAGE_KEYS:
            if key in sample:
                out[key] = F.pad(sample[key].unsqueeze(0), pad, mode=mode).squeeze(0)
        if LABEL_KEY in sample:
            out[LABEL_KEY] = F.pad(sample[LABEL_KEY], pad, value=self.ignore_index)
        return out

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        g = generator or self.generator
        h, w = sample["ir"].shape[-2:]
        sample = self._pad(sample, h, w)
        h, w = sample["ir"].shape[-2:]
        top = _randint(h - self.size[0] + 1, g)
        left = _randint(w - self.size[1] + 1, g)
        out = dict(sample)
        for key in _spatial_keys(sample):
            out[key] = sample[key][..., top:top + self.size[0], left:left + self.size[1]]
        return out


def resize_image(x: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """``x`` (C, H, W) resized to ``size`` by area averaging, as float32; unchanged when ``size`` is
    ``None`` or already its size. The semantic benchmark shrinks its sources with this too."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None].float(), size=size, mode="area")[0]


def resize_label(label: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """Class-index map ``label`` (H, W) resized to ``size`` by nearest neighbour, as int64;
    unchanged when ``size`` is ``None`` or already its size."""
    if size is None or tuple(label.shape) == tuple(size):
        return label
    return F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()


class PairedRescale:
    """Resize every image (area averaging) and the label (nearest neighbour) by ``scale``, or by
    a factor drawn uniformly from [``scale``, ``scale_max``] per sample.

    Matches how the semantic benchmark shrinks its sources (area for images, nearest for labels),
    so a network trained with ``scale`` 0.5 sees objects at the size the benchmark's segmenter sees.
    """

    def __init__(self, scale: float, scale_max: Optional[float] = None) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if scale_max is not None and not scale_max >= scale:
            raise ValueError(f"scale_max must be at least scale ({scale}), got {scale_max}")
        self.scale = float(scale)
        self.scale_max = None if scale_max is None else float(scale_max)

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        scale = self.scale
        if self.scale_max is not None:
            scale += (self.scale_max - self.scale) * float(torch.rand((), generator=generator))
        h, w = sample["ir"].shape[-2:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size == (h, w):
            return sample
        out = dict(sample)
        for key in IMAGE_KEYS:
            if key in sample:
                out[key] = resize_image(sample[key], size).to(sample[key].dtype)
        if LABEL_KEY in sample:
            out[LABEL_KEY] = resize_label(sample[LABEL_KEY], size).to(sample[LABEL_KEY].dtype)
        return out


class PairedRandomFlip:
    """Flip every image and the label horizontally (and optionally vertically) together."""

    def __init__(self, p_horizontal: float = 0.5, p_vertical: float = 0.0,
                 generator: Optional[torch.Generator] = None) -> None:
        self.p_horizontal = p_horizontal
        self.p_vertical = p_vertical
        self.generator = generator

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        draws = torch.rand(2, generator=generator or self.generator)
        dims = []
        if draws[0] < self.p_horizontal:
            dims.append(-1)
        if draws[1] < self.p_vertical:
            dims.append(-2)
        if not dims:
            return sample
        out = dict(sample)
        for key in _spatial_keys(sample):
            out[key] = torch.flip(sample[key], dims)
        return out


class Compose:
    """Apply sample transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        for t in self.transforms:
            sample = t(sample, generator=generator) if generator is not None else t(sample)
        return sample


def train_transform(crop: Optional[int], hflip: float = 0.5, vflip: float = 0.0, scale: float = 1.0,
                    scale_max: Optional[float] = None) -> Compose:
    """The usual training augmentation: rescale (by ``scale``, or a random factor up to
    ``scale_max``), random crop (if ``crop``) then random flips."""
    steps: list = [PairedRescale(scale, scale_max)] if scale != 1.0 or scale_max is not None else []
    if crop:
        steps.append(PairedRandomCrop(crop))
    steps.append(PairedRandomFlip(hflip, vflip))
    return Compose(steps)
