"""Data layer: image reading convention, IR/VIS pair datasets, synthetic scenes, transforms."""

from .bundled import bundled_msrs_root
from .color import colorize, rgb_to_ycbcr, ycbcr_to_rgb
from .errors import DatasetError
from .io import ImagePair, read_gray, read_label, read_pair, read_rgb, write_image
from .pairs import PairedImages, PairFiles, match_pairs
from .synthetic import CLASS_NAMES, SceneConfig, SyntheticScenes, make_scene
from .transforms import Compose, PairedRandomCrop, PairedRandomFlip, train_transform

__all__ = [
    "CLASS_NAMES", "Compose", "DatasetError", "ImagePair", "PairFiles", "PairedImages",
    "PairedRandomCrop", "PairedRandomFlip", "SceneConfig", "SyntheticScenes", "bundled_msrs_root",
    "colorize", "make_scene", "match_pairs", "read_gray", "read_label", "read_pair", "read_rgb",
    "rgb_to_ycbcr", "train_transform", "write_image", "ycbcr_to_rgb",
]
