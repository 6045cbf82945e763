"""Training and evaluation data from a :class:`~dfsfuse.train.config.RunConfig`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch.utils.data import ConcatDataset, Dataset

from ..data import PairedImages, SyntheticScenes, bundled_msrs_root, train_transform
from ..data.errors import DatasetError
from .config import DataConfig, DatasetSpec, EvalConfig

IGNORE_INDEX = 255


def resolve_root(root: str) -> Path:
    """``bundled:msrs`` → the package's MSRS subset; anything else is a filesystem path."""
    if root.startswith("bundled:"):
        name = root.split(":", 1)[1]
        if name != "msrs":
            raise DatasetError(f"{root}: unknown bundled dataset (available: bundled:msrs)")
        return bundled_msrs_root()
    return Path(root).expanduser()


def open_spec(spec: DatasetSpec, labels: bool = True) -> Optional[PairedImages]:
    """The dataset a spec names, or ``None`` (with a warning) when an optional one is missing."""
    root = resolve_root(spec.root)
    if spec.optional and not root.exists():
        warnings.warn(f"{root}: optional dataset {spec.name or spec.root} not found, skipped", stacklevel=2)
        return None
    return PairedImages(root, split=spec.split, labels=labels)


def spec_name(spec: DatasetSpec) -> str:
    """Display name of a dataset spec."""
    return spec.name or Path(resolve_root(spec.root)).name + (f"_{spec.split}" if spec.split else "")


class Repeat(Dataset):
    """``dataset`` seen ``times`` times per epoch (each time with a different random crop)."""

    def __init__(self, dataset: Dataset, times: int) -> None:
        self.dataset, self.times = dataset, max(1, times)

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


class SeededAugment(Dataset):
    """Applies ``transform`` with a generator seeded from ``(seed, epoch, index)``.

    The augmentation of a sample is then the same whichever process or worker loads it, so
    a run on N processes sees exactly the crops of a one-process run, and a resumed run sees
    the crops of an uninterrupted one. Call :meth:`set_epoch` at the start of every epoch.
    """

    def __init__(self, dataset: Dataset, transform: Callable, seed: int = 0) -> None:
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)
        return self.transform(self.dataset[index], generator=g)


def build_train_dataset(cfg: DataConfig, seed: int, labels: Optional[bool] = None,
                        crop: Optional[int] = None, scale: float = 1.0,
                        scale_max: Optional[float] = None) -> SeededAugment:
    """Real pairs (repeated) + synthetic labelled scenes, resized by ``scale`` (or a random factor
    in [``scale``, ``scale_max``]), randomly cropped (``crop``, default ``cfg.crop``) and flipped."""
    use_labels = cfg.labels if labels is None else labels
    parts: List[Dataset] = []
    for spec in cfg.train:
        ds = open_spec(spec, labels=use_labels)
        if ds is not None:
            parts.append(Repeat(ds, cfg.repeat_real))
    if cfg.synthetic > 0:
        parts.append(SyntheticScenes(cfg.synthetic, cfg.synthetic_size, seed=seed + 1, labels=use_labels))
    if not parts:
        raise DatasetError("data.train: no training data (all sets missing and data.synthetic = 0)")
    transform = train_transform(cfg.crop if crop is None else crop, hflip=0.5, scale=scale, scale_max=scale_max)
    return SeededAugment(ConcatDataset(parts), transform, seed=seed)


def collate_samples(batch: List[Dict[str, object]]) -> Dict[str, object]:
    """Stack samples; where only some carry a ``label``, the others get all-ignore labels."""
    out: Dict[str, object] = {"name": [s["name"] for s in batch]}
    for key in ("ir", "vis_y", "vis_cbcr"):
        out[key] = torch.stack([s[key] for s in batch])
    if any("label" in s for s in batch):
        h, w = batch[0]["ir"].shape[-2:]
        out["label"] = torch.stack([
            s["label"] if "label" in s else torch.full((h, w), IGNORE_INDEX, dtype=torch.int64) for s in batch
        ])
    return out


def build_eval_sets(cfg: EvalConfig) -> Dict[str, PairedImages]:
    """Held-out real pair sets by name (missing optional ones skipped), with their segmentation
    labels where they exist (for the segmenter's held-out mIoU)."""
    sets: Dict[str, PairedImages] = {}
    for spec in cfg.sets:
        ds = open_spec(spec, labels=True)
        if ds is not None:
            sets[spec_name(spec)] = ds
    return sets
