"""Semantic benchmark: mIoU of the same segmenter trained from scratch on each kind of input.

The same code as ``dfsfuse segbench`` (:mod:`dfsfuse.semantic_bench`), with results written to
``benchmarks/results/`` by default (``semantic.json`` + ``semantic.png``; ``semantic_full`` with
``--full``, ``semantic_quick`` with ``--quick``)::

    python benchmarks/semantic.py                                       # fast CPU setting, ~21 min on 2 cores
    python benchmarks/semantic.py --full --seeds 3                         # GPU setting
    python benchmarks/semantic.py --model mine=runs/x/student --fused psfusion=/data/psfusion_msrs
    python benchmarks/semantic.py --quick runs/x/teacher/segmenter          # score one segmenter, no training
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dfsfuse.commands.segbench import add_arguments, run  # noqa: E402
from dfsfuse.data.errors import DatasetError  # noqa: E402

RESULTS = HERE / "results"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the ``dfsfuse segbench`` options (JSON defaults to benchmarks/results/semantic*.json) and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.json is None:
        suffix = "_quick" if args.quick is not None else "_full" if args.full else ""
        args.json = RESULTS / f"semantic{suffix}.json"
    try:
        return run(args)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"semantic.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
