"""Student vs teacher speed: params, MACs, latency p50/p95, throughput and peak memory per mode.

The same code as ``dfsfuse bench`` (:mod:`dfsfuse.bench`), with results written to
``benchmarks/results/`` by default::

    python benchmarks/speed.py                 # quick (minutes): teacher eager vs students eager/ONNX Runtime, batch 1
    python benchmarks/speed.py --full          # every model and mode, batch 1 and 4 -> speed_cpu_full.{json,png}
    python benchmarks/speed.py --threads 2 --modes eager channels_last compile onnxruntime bf16
    python benchmarks/speed.py --device cuda --json benchmarks/results/speed_cuda.json
    python benchmarks/speed.py --models teacher runs/distill/student --student-widths 8 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dfsfuse.commands.bench import add_arguments, run  # noqa: E402

RESULTS = HERE / "results"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the ``dfsfuse bench`` options (JSON defaults to benchmarks/results/speed_<device>[_full].json) and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.json is None:
        args.json = RESULTS / f"speed_{args.device.split(':')[0]}{'_full' if args.full else ''}.json"
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
