"""Data of the semantic benchmark: a labelled split (MSRS layout) read at the working size."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from torch import Tensor

from ..data.errors import DatasetError
from ..data.transforms import resize_image, resize_label
from .settings import Size

__all__ = ["LabelledSplit", "to_u8", "check_labelled_folder", "load_labelled_split"]


@dataclass
class LabelledSplit:
    """A labelled folder at the working size: 8-bit IR and VIS luminance (1×H×W uint8),
    visible chroma (2×H×W float in [0, 1], for pictures), labels (H×W int64), native sizes."""

    root: Path
    names: List[str]
    ir: List[Tensor]
    vis: List[Tensor]
    cbcr: List[Tensor]
    labels: List[Tensor]
    native: List[Size]

    def __len__(self) -> int:
        return len(self.names)


def to_u8(x: Tensor) -> Tensor:
    """[0, 1] floats → uint8 rounded half to even, as a fused image is saved (and a shrunk source is kept)."""
    return torch.round(x.float() * 255.0).clamp(0, 255).to(torch.uint8)


def check_labelled_folder(root: os.PathLike) -> int:
    """Number of labelled pairs in ``root`` (files listed and matched, not read); :class:`DatasetError` if none."""
    from ..data.pairs import PairedImages

    dataset = PairedImages(root, labels=True)
    if not dataset.has_labels:
        raise DatasetError(f"{root}: no Segmentation_labels/ folder (the semantic benchmark needs labels)")
    return len(dataset)


def load_labelled_split(root: os.PathLike, size: Optional[Size] = None) -> LabelledSplit:
    """Read every labelled pair of an MSRS-layout split folder (``ir/``, ``vi/``,
    ``Segmentation_labels/``) at ``size``. Missing labels or bad files raise
    :class:`DatasetError` naming the file."""
    from ..data.pairs import PairedImages

    root = Path(root)
    check_labelled_folder(root)
    dataset = PairedImages(root, labels=True)
    split = LabelledSplit(root, [], [], [], [], [], [])
    for sample in dataset:
        split.names.append(sample["name"])
        split.native.append(tuple(sample["ir"].shape[-2:]))
        split.ir.append(to_u8(resize_image(sample["ir"], size)))
        split.vis.append(to_u8(resize_image(sample["vis_y"], size)))
        split.cbcr.append(resize_image(sample["vis_cbcr"], size).float())
        split.labels.append(resize_label(sample["label"], size))
    return split
