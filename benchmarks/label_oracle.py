"""A label-oracle fusion for the semantic benchmark: the visible image with IR pasted on the labelled people.

What is the most a single-channel fusion could give a segmenter trained on it? This writes,
for every labelled pair of the given folders, ``VIS luminance`` everywhere except on the
(dilated) pixels labelled with ``--classes`` (default: person), where it shows IR — the fusion
a perfect person detector would make from "VIS sees cars and road marks, IR sees people". It
uses the *labels*, so it is a diagnostic ceiling, never a method: feed it to the benchmark with
``--fused`` and compare with IR and VIS alone::

    python benchmarks/label_oracle.py --out /tmp/oracle            # writes /tmp/oracle/{train,val}
    dfsfuse segbench --kinds ir vis max --fused oracle=/tmp/oracle --seeds 3

The images are derived from MSRS pairs whose licence is unstated: write them outside the
repository (nothing here commits them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dfsfuse.atomic import atomic_path  # noqa: E402
from dfsfuse.data.errors import DatasetError  # noqa: E402
from dfsfuse.data import CLASS_NAMES, PairedImages  # noqa: E402  (CLASS_NAMES: MSRS/MFNet, 0 = unlabeled)
from dfsfuse.semantic_bench import default_data_root  # noqa: E402


def oracle_fusion(ir: np.ndarray, vis: np.ndarray, label: np.ndarray, classes: Sequence[int],
                  dilate: int = 3) -> np.ndarray:
    """``vis`` with ``ir`` on the pixels labelled ``classes``, the mask grown by ``dilate`` px
    (city-block distance), rounded to 8 bits."""
    mask = torch.from_numpy(np.isin(label, list(classes))).float()[None, None]
    for _ in range(dilate):  # grow by the 4-neighbourhood: a diamond of radius `dilate`
        mask = torch.maximum(F.max_pool2d(mask, (3, 1), stride=1, padding=(1, 0)),
                             F.max_pool2d(mask, (1, 3), stride=1, padding=(0, 1)))
    fused = np.where(mask[0, 0].numpy() > 0, ir, vis)
    return np.clip(np.round(fused), 0, 255).astype(np.uint8)


def write_folder(src: Path, out: Path, classes: Sequence[int], dilate: int) -> int:
    """Write the oracle fusion of every labelled pair of ``src`` to ``out/<stem>.png``; the pair count."""
    pairs = PairedImages(src, labels=True)
    if not pairs.has_labels:
        raise DatasetError(f"{src}: no Segmentation_labels/ folder, the oracle needs labels")
    out.mkdir(parents=True, exist_ok=True)
    for sample in pairs:
        ir = sample["ir"][0].numpy() * 255.0
        vis = sample["vis_y"][0].numpy() * 255.0
        fused = oracle_fusion(ir, vis, sample["label"].numpy(), classes, dilate)
        with atomic_path(out / f"{sample['name']}.png", suffix=".png") as tmp:
            Image.fromarray(fused).save(tmp, format="PNG")
    return len(pairs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the oracle fusion of the train and test folders."""
    default_data = default_data_root() / "msrs"  # the semantic benchmark's own default train/test folders
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", nargs="+", type=Path, default=[default_data / "train", default_data / "val"],
                        help="labelled folders (ir/, vi/, Segmentation_labels/); default msrs/train and msrs/val")
    parser.add_argument("--out", type=Path, required=True, help="output folder: one sub-folder per input folder")
    parser.add_argument("--classes", nargs="+", default=["person"], choices=CLASS_NAMES[1:],
                        help="classes shown from IR (default: person)")
    parser.add_argument("--dilate", type=int, default=3, help="grow each mask by this many pixels (default 3)")
    args = parser.parse_args(argv)
    classes = [CLASS_NAMES.index(c) for c in args.classes]
    try:
        for folder in args.folders:
            n = write_folder(folder, args.out / folder.name, classes, args.dilate)
            print(f"{folder}: {n} pairs → {args.out / folder.name}")
    except (DatasetError, FileNotFoundError) as exc:
        print(f"label_oracle.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
