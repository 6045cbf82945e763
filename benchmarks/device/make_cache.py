"""Cache ``msrs/train`` and ``msrs/val`` at the fast setting's 240×320 for a machine that cannot see
``../shared`` (e.g. a lent GPU that receives only the repository, 64 MiB at most).

The arrays are exactly what :func:`dfsfuse.semantic_bench.load_labelled_split` keeps (8-bit IR and
VIS luminance, labels); the visible chroma is left out (pictures only). The labelled MSRS pairs state
no licence: write the cache to a git-ignored folder (default ``.gpu/``), never commit or ship it.

    python benchmarks/device/make_cache.py                       # -> .gpu/msrs240.npz (23 MB)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from dfsfuse.semantic_bench import default_data_root, fast_settings, load_labelled_split

SIZE = fast_settings().size  # the fast setting's working resolution, 240×320


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_root() / "msrs")
    parser.add_argument("--out", type=Path, default=Path(".gpu") / "msrs240.npz")
    args = parser.parse_args()
    arrays = {}
    for split in ("train", "val"):
        s = load_labelled_split(args.data / split, SIZE)
        arrays[f"{split}_names"] = np.array(s.names)
        arrays[f"{split}_ir"] = torch.stack(s.ir).numpy()
        arrays[f"{split}_vis"] = torch.stack(s.vis).numpy()
        arrays[f"{split}_labels"] = torch.stack(s.labels).to(torch.uint8).numpy()  # 0-8 and ignore 255
        arrays[f"{split}_native"] = np.array(s.native)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
