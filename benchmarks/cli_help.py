"""How long ``dfsfuse --help`` and every subcommand's ``--help`` take, each in a fresh process.

The goal is under 0.5 s: building the parsers must not import torch (see ``dfsfuse/options.py``).
Subcommands are discovered from the parser itself, so new ones are timed without editing this
script. Prints one line per command and a summary, and writes JSON::

    python benchmarks/cli_help.py                        # the `dfsfuse` on PATH, 5 runs each
    python benchmarks/cli_help.py --module --runs 10     # `python -m dfsfuse.cli` (no launcher script)
    python benchmarks/cli_help.py --json benchmarks/results/cli_help.json

Exit code 1 when a command fails or its median exceeds ``--limit`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dfsfuse.atomic import write_text_atomic  # noqa: E402
from dfsfuse.cli import build_parser  # noqa: E402


def subcommands() -> List[str]:
    """Names of the registered ``dfsfuse`` subcommands, in ``--help`` order."""
    parser = build_parser()
    for action in parser._actions:  # argparse offers no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def launcher(module: bool) -> List[str]:
    """The command that starts ``dfsfuse``: the console script on PATH, or ``python -m dfsfuse.cli``."""
    if module:
        return [sys.executable, "-m", "dfsfuse.cli"]
    script = shutil.which("dfsfuse")
    if script is None:
        raise SystemExit("cli_help.py: `dfsfuse` is not on PATH (pip install -e .), or use --module")
    return [script]


def time_command(argv: Sequence[str], runs: int) -> dict:
    """Wall seconds of ``runs`` fresh runs of ``argv`` (stdout discarded): min, median, max, exit code."""
    times = []
    code = 0
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            code = proc.returncode
            error = (proc.stderr.strip().splitlines() or [""])[-1]
            return {"ok": False, "returncode": code, "error": error, "seconds": times}
    return {"ok": True, "returncode": 0, "min_s": min(times), "median_s": statistics.median(times),
            "max_s": max(times), "seconds": times}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Time every ``--help``, print the results, write the JSON; 1 if any is too slow or fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (default 5)")
    parser.add_argument("--module", action="store_true", help="time `python -m dfsfuse.cli` instead of the script")
    parser.add_argument("--limit", type=float, default=0.5, help="median seconds allowed per command (default 0.5)")
    parser.add_argument("--json", type=Path, help="write settings and timings here")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    base = launcher(args.module)
    commands = [[]] + [[name] for name in subcommands()]
    results = {}
    worst = 0.0
    failed = False
    for sub in commands:
        label = " ".join(["dfsfuse", *sub, "--help"])
        r = time_command([*base, *sub, "--help"], args.runs)
        results[label] = r
        if r["ok"]:
            worst = max(worst, r["median_s"])
            verdict = "ok" if r["median_s"] < args.limit else "SLOW"
            failed |= verdict == "SLOW"
            print(f"{label:<32} median {r['median_s']:.3f} s  (min {r['min_s']:.3f}, max {r['max_s']:.3f})  {verdict}")
        else:
            failed = True
            print(f"{label:<32} FAILED (exit {r['returncode']}): {r['error']}")
    print(f"slowest median {worst:.3f} s over {len(commands)} commands, {args.runs} runs each "
          f"(limit {args.limit} s): {'FAIL' if failed else 'PASS'}")
    if args.json:
        doc = {
            "settings": {"launcher": base, "runs": args.runs, "limit_s": args.limit,
                         "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                         "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
            "results": results,
            "slowest_median_s": worst,
            "pass": not failed,
        }
        write_text_atomic(args.json, json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
