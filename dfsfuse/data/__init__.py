"""Data layer: image reading convention, IR/VIS pair datasets, synthetic scenes, transforms.

Names are imported lazily (PEP 562), so ``from dfsfuse.data.errors import DatasetError`` — what
the CLI needs to start — does not pay for importing torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "bundled_msrs_root": "bundled",
    "colorize": "color", "rgb_to_ycbcr": "color", "ycbcr_to_rgb": "color",
    "DatasetError": "errors",
    "ImagePair": "io", "read_gray": "io", "read_ir": "io", "read_label": "io", "read_pair": "io", "read_rgb": "io",
    "IrRange": "irrange", "parse_ir_range": "irrange",
    "write_image": "io",
    "PairedImages": "pairs", "PairFiles": "pairs", "match_pairs": "pairs",
    "shared_data_root": "shared",
    "CLASS_NAMES": "synthetic", "SceneConfig": "synthetic", "SyntheticScenes": "synthetic", "make_scene": "synthetic",
    "Compose": "transforms", "PairedRandomCrop": "transforms", "PairedRandomFlip": "transforms",
    "PairedRescale": "transforms", "resize_image": "transforms", "resize_label": "transforms",
    "train_transform": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dfsfuse.data' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(list(globals()) + __all__)
