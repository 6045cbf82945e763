"""Reading and writing images the way published fusion tables do.

The convention (``docs/metrics.md``): every file is read as 8-bit colour (grey files
replicated to three channels), converted to float32, turned into BT.601 luma
``0.299 R + 0.587 G + 0.114 B`` computed in float32 and rounded half-to-even. Values stay in
[0, 255].

Infrared images as thermal cameras write them (16-bit integer PNG/TIFF, 32-bit integer or
float TIFF) are read by :func:`read_ir` (and :func:`read_pair`), mapped to [0, 1] by an
:class:`~dfsfuse.data.irrange.IrRange` and scaled to [0, 255] like the others. The metrics
reader :func:`read_gray` keeps the 8-bit convention and refuses them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..atomic import atomic_path
from .color import RGB_TO_YCBCR_ROWS
from .errors import DatasetError
from .irrange import IrRange, parse_ir_range

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# BT.601 full-range (JPEG) YCbCr; the luma row is the one the metrics use.
_LUMA = (np.float32(0.299), np.float32(0.587), np.float32(0.114))

HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
"""Pillow modes of one-channel images deeper than 8 bits (16/32-bit integer, 32-bit float)."""


def _describe_mode(mode: str) -> str:
    return {"I": "32-bit integer", "F": "floating-point"}.get(mode, "16-bit")


def read_rgb(path: PathLike) -> np.ndarray:
    """Read an image file as 8-bit RGB, H×W×3 uint8 (grey files replicated to three channels).

    A 16-bit or float image raises :class:`DatasetError`: this is the 8-bit reader (for IR
    images deeper than 8 bits, use :func:`read_ir`).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            if img.mode in HIGH_DEPTH_MODES:
                raise DatasetError(f"{path}: {_describe_mode(img.mode)} image (mode {img.mode}) where an 8-bit "
                                   "image is expected (only infrared images may have more than 8 bits)")
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt image ({exc})") from None
    return rgb


def is_high_depth(path: PathLike) -> bool:
    """Whether the image file is one-channel 16-bit, 32-bit integer or float (header only)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            return img.mode in HIGH_DEPTH_MODES
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt image ({exc})") from None


def _read_high_depth(path: Path) -> Optional[np.ndarray]:
    """The raw values of a high-depth one-channel image as float64 H×W, or None for an 8-bit image."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            if img.mode not in HIGH_DEPTH_MODES:
                return None
            raw = np.asarray(img).astype(np.float64)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt image ({exc})") from None
    if raw.ndim != 2:
        raise DatasetError(f"{path}: expected a one-channel image, got shape {raw.shape}")
    bad = int((~np.isfinite(raw)).sum())
    if bad:
        raise DatasetError(f"{path}: {bad} pixel(s) are NaN or infinite")
    return raw


def read_ir(path: PathLike, ir_range: Union[str, IrRange, None] = None) -> np.ndarray:
    """Read an infrared image as float32 H×W in [0, 255], whatever its bit depth.

    8-bit files (any mode) with ``ir_range`` ``None``/``"auto"`` are read exactly as
    :func:`read_gray` reads them. 16-bit, 32-bit integer and float files are mapped to [0, 1]
    by ``ir_range`` (``auto``: 1st–99th percentile stretch; see :mod:`dfsfuse.data.irrange`)
    and multiplied by 255 (not rounded). An explicit ``ir_range`` also applies to 8-bit files
    (to their luma). NaN/Inf pixels raise :class:`DatasetError`.
    """
    path = Path(path)
    spec = parse_ir_range(ir_range)
    raw = _read_high_depth(path)
    if raw is None:
        luma = read_gray(path)
        if spec.method == "auto":
            return luma
        raw = luma.astype(np.float64)
    return spec.normalize(raw) * np.float32(255.0)


def rgb_to_luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an H×W×3 array in float32, rounded half-to-even (the metrics' grey image)."""
    rgb = rgb.astype(np.float32)
    y = _LUMA[0] * rgb[..., 0] + _LUMA[1] * rgb[..., 1] + _LUMA[2] * rgb[..., 2]
    return np.round(y).astype(np.float32)


def read_gray(path: PathLike) -> np.ndarray:
    """Read an image as float32 H×W grey values in [0, 255], exactly as the standard evaluator does."""
    return rgb_to_luma(read_rgb(path))


@dataclass
class ImagePair:
    """One IR/VIS pair as float32 arrays in [0, 255].

    ``ir`` and ``vis_y`` are H×W luma (the metrics' convention); ``vis_cbcr`` is 2×H×W chroma
    of the visible image, kept to colour the fused result.
    """

    ir: np.ndarray
    vis_y: np.ndarray
    vis_cbcr: np.ndarray


def rgb_to_cbcr(rgb: np.ndarray) -> np.ndarray:
    """BT.601 full-range Cb and Cr of an H×W×3 array as float32 2×H×W in [0, 255].

    The offset is 127.5 (not JPEG's 128) so that ``cbcr / 255`` is exactly the chroma of
    :func:`dfsfuse.data.color.rgb_to_ycbcr`, where grey is 0.5.
    """
    coeffs = np.asarray(RGB_TO_YCBCR_ROWS[1:], dtype=np.float64)
    cbcr = np.einsum("hwc,kc->khw", rgb.astype(np.float64), coeffs) + 127.5
    return cbcr.astype(np.float32)


def read_pair(ir_path: PathLike, vis_path: PathLike, ir_range: Union[str, IrRange, None] = None) -> ImagePair:
    """Read an IR/VIS pair; raises :class:`DatasetError` naming the file if sizes differ.

    The IR image is read by :func:`read_ir` with ``ir_range`` (16-bit and float IR accepted);
    the visible image must be 8-bit.
    """
    ir = read_ir(ir_path, ir_range)
    vis_rgb = read_rgb(vis_path)
    if ir.shape != vis_rgb.shape[:2]:
        raise DatasetError(
            f"{vis_path}: size {vis_rgb.shape[1]}x{vis_rgb.shape[0]} does not match "
            f"IR {ir_path} ({ir.shape[1]}x{ir.shape[0]})"
        )
    return ImagePair(ir=ir, vis_y=rgb_to_luma(vis_rgb), vis_cbcr=rgb_to_cbcr(vis_rgb))


def read_label(path: PathLike, num_classes: int = 9, ignore_index: int = 255) -> np.ndarray:
    """Read a class-index label PNG as int64 H×W; values outside ``[0, num_classes)`` other
    than ``ignore_index`` raise :class:`DatasetError`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: label file not found")
    try:
        with Image.open(path) as img:
            if img.mode in ("RGB", "RGBA"):
                arr = np.asarray(img.convert("RGB"))
                if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                    raise DatasetError(f"{path}: colour label image; expected one class index per pixel")
                arr = arr[..., 0]
            else:
                arr = np.asarray(img)
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt label ({exc})") from None
    label = arr.astype(np.int64)
    bad = (label >= num_classes) & (label != ignore_index) | (label < 0)
    if bad.any():
        values = sorted(set(np.unique(label[bad]).tolist()))[:5]
        raise DatasetError(f"{path}: label has classes {values} outside 0..{num_classes - 1}")
    return label


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round half-to-even and clip float values in [0, 255] to uint8, as a fused image is stored."""
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_image(path: PathLike, image: np.ndarray, png_level: Optional[int] = None) -> None:
    """Write an H×W (grey) or H×W×3 (RGB) image atomically: temp file in the same folder, then rename.

    ``png_level`` (0–9) sets the zlib level of a PNG (default: Pillow's, 6); the pixels are the
    same at every level, lower levels encode several times faster into slightly larger files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension {path.suffix!r}")
    options = {"compress_level": png_level} if png_level is not None and fmt == "PNG" else {}
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=fmt, **options)
