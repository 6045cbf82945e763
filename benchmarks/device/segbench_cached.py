"""``benchmarks/semantic.py`` with ``msrs/train`` and ``msrs/val`` read from the cache of
``make_cache.py`` (``$SEGBENCH_CACHE``, default ``.gpu/msrs240.npz``) instead of image folders: the
same tensors, so the same protocol, on a machine without ``../shared``. Fast setting sizes only.

    python benchmarks/device/segbench_cached.py --device cuda --workers 10 --threads 1 \\
        --kinds max semantic-student --seeds 5 --json out.json
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import numpy as np
import torch

import dfsfuse.semantic_bench as sb
import dfsfuse.semantic_bench.run as sb_run


def cache() -> np.lib.npyio.NpzFile:
    """The cache named by ``$SEGBENCH_CACHE`` (default ``.gpu/msrs240.npz``)."""
    return np.load(os.environ.get("SEGBENCH_CACHE", ".gpu/msrs240.npz"))


def load(root, size=None) -> sb.LabelledSplit:
    """The cached split named like ``root`` (``train`` or ``val``), at the cached size only."""
    split, arrays = Path(root).name, cache()
    ir = arrays[f"{split}_ir"]
    cached = tuple(ir.shape[-2:])
    if size is None or tuple(size) != cached:
        raise ValueError(f"the cache holds {cached[0]}x{cached[1]} images, not {size}")
    names = [str(n) for n in arrays[f"{split}_names"]]
    return sb.LabelledSplit(
        Path(root), names,
        [torch.from_numpy(a.copy()) for a in ir],
        [torch.from_numpy(a.copy()) for a in arrays[f"{split}_vis"]],
        [torch.full((2, *cached), 0.5) for _ in names],  # neutral chroma: pictures come out grey
        [torch.from_numpy(a.astype(np.int64)) for a in arrays[f"{split}_labels"]],
        [tuple(int(v) for v in n) for n in arrays[f"{split}_native"]])


def main() -> None:
    """The benchmark's command line, reading the cache: ``--train``/``--test`` are the cached splits."""
    # run_benchmark (dfsfuse.semantic_bench.run) looks both up in its own module
    sb_run.load_labelled_split = load
    sb_run.check_labelled_folder = lambda root: len(cache()[f"{Path(root).name}_names"])
    sys.argv = ["benchmarks/semantic.py", "--train", "msrs/train", "--test", "msrs/val", *sys.argv[1:]]
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "semantic.py"), run_name="__main__")


if __name__ == "__main__":
    main()
