"""IR/VIS pairs on disk: the MSRS layout and plain ``ir/`` + ``vi/`` folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError
from .io import IMAGE_EXTENSIONS, PathLike, read_label, read_pair
from .irrange import IrRange, parse_ir_range

IR_DIRS = ("ir", "Infrared", "infrared")
VIS_DIRS = ("vi", "vis", "Visible", "visible")
LABEL_DIRS = ("Segmentation_labels", "labels", "label")

Sample = Dict[str, object]


@dataclass(frozen=True)
class PairFiles:
    """The files of one pair, matched by stem."""

    name: str
    ir: Path
    vis: Path
    label: Optional[Path] = None


def list_images(folder: PathLike) -> Dict[str, Path]:
    """Image files of a folder keyed by stem; two files with one stem raise :class:`DatasetError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
    found: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
            if path.stem in found:
                raise DatasetError(f"{path}: stem {path.stem!r} also used by {found[path.stem].name}")
            found[path.stem] = path
    return found


def _first_dir(root: Path, names: Sequence[str]) -> Optional[Path]:
    return next((root / n for n in names if (root / n).is_dir()), None)


def match_pairs(ir_dir: PathLike, vis_dir: PathLike, label_dir: Optional[PathLike] = None) -> List[PairFiles]:
    """Pair IR and VIS files by stem (any image extension).

    A file without its partner, an empty folder, or a label folder lacking a pair's label
    raises :class:`DatasetError` naming the file: nothing is silently dropped.
    """
    irs, viss = list_images(ir_dir), list_images(vis_dir)
    if not irs and not viss:
        raise DatasetError(f"{ir_dir}: no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    for stem, path in irs.items():
        if stem not in viss:
            raise DatasetError(f"{path}: no visible partner named {stem}.* in {vis_dir}")
    for stem, path in viss.items():
        if stem not in irs:
            raise DatasetError(f"{path}: no infrared partner named {stem}.* in {ir_dir}")
    labels = list_images(label_dir) if label_dir is not None else {}
    pairs = []
    for stem in sorted(irs):
        label = None
        if label_dir is not None:
            label = labels.get(stem)
            if label is None:
                raise DatasetError(f"{irs[stem]}: no label named {stem}.* in {label_dir}")
        pairs.append(PairFiles(stem, irs[stem], viss[stem], label))
    return pairs


def find_pair_folders(root: PathLike, split: Optional[str] = None) -> tuple:
    """Locate ``(ir_dir, vis_dir, label_dir_or_None)`` under ``root`` (MSRS layout or plain)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    base = root / split if split is not None else root
    if split is not None and not base.is_dir():
        splits = sorted(p.name for p in root.iterdir() if p.is_dir() and _first_dir(p, IR_DIRS))
        raise DatasetError(f"{root}: no split {split!r} (found: {', '.join(splits) or 'none'})")
    ir_dir, vis_dir = _first_dir(base, IR_DIRS), _first_dir(base, VIS_DIRS)
    if ir_dir is None or vis_dir is None:
        hint = " (MSRS layout needs split='train' or 'test')" if split is None and (root / "test").is_dir() else ""
        raise DatasetError(f"{base}: expected sub-folders ir/ and vi/{hint}")
    return ir_dir, vis_dir, _first_dir(base, LABEL_DIRS)


class PairedImages(Dataset):
    """IR/VIS pairs from disk as dict samples of float tensors in [0, 1].

    ``root`` is either an MSRS-style dataset (``{train,test}/{ir,vi,Segmentation_labels}``,
    pick one with ``split``) or a folder with ``ir/`` and ``vi/``. Each sample holds ``ir``
    and ``vis_y`` (1×H×W), ``vis_cbcr`` (2×H×W), ``name`` and, when a label folder exists and
    ``labels=True``, ``label`` (H×W int64; 255 = ignore). With ``labels=False`` label files
    are never opened. ``transform`` maps a sample dict to a sample dict (see
    :mod:`dfsfuse.data.transforms`). ``ir_range`` says how 16-bit and float IR images are
    mapped to [0, 1] (``"auto"``, ``"minmax"``, ``"percentile:1,99"``, ``"fixed:LO,HI"``; see
    :mod:`dfsfuse.data.irrange`); with the default, 8-bit IR is read exactly as value / 255.
    """

    def __init__(
        self,
        root: PathLike,
        split: Optional[str] = None,
        transform: Optional[Callable[[Sample], Sample]] = None,
        labels: bool = True,
        num_classes: int = 9,
        ignore_index: int = 255,
        ir_range: Union[str, IrRange, None] = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.ir_range = parse_ir_range(ir_range)  # a bad spec fails here, not in a worker
        ir_dir, vis_dir, label_dir = find_pair_folders(root, split)
        self.pairs = match_pairs(ir_dir, vis_dir, label_dir if labels else None)
        self.transform = transform
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    @property
    def has_labels(self) -> bool:
        """Whether samples carry a ``label``."""
        return bool(self.pairs) and self.pairs[0].label is not None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        files = self.pairs[index]
        pair = read_pair(files.ir, files.vis, self.ir_range)
        sample: Sample = {
            "ir": torch.from_numpy(pair.ir / 255.0).unsqueeze(0),
            "vis_y": torch.from_numpy(pair.vis_y / 255.0).unsqueeze(0),
            "vis_cbcr": torch.from_numpy(pair.vis_cbcr / 255.0),
            "name": files.name,
        }
        if files.label is not None:
            label = read_label(files.label, self.num_classes, self.ignore_index)
            if label.shape != pair.ir.shape:
                raise DatasetError(
                    f"{files.label}: label size {label.shape[1]}x{label.shape[0]} does not match "
                    f"the pair's {pair.ir.shape[1]}x{pair.ir.shape[0]}"
                )
            sample["label"] = torch.from_numpy(np.ascontiguousarray(label))
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        return f"PairedImages({str(self.root)!r}{split}, pairs={len(self)}, labels={self.has_labels})"
