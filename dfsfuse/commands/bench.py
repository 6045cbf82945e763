"""``dfsfuse bench``: student vs teacher speed — params, MACs, latency p50/p95, throughput, memory.

A thin front end over :mod:`dfsfuse.bench` (``benchmarks/speed.py`` uses the same parser and
``run``): prints a rich table and the speed-up over the teacher, and optionally writes the JSON
records and a PNG chart.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional


def add_arguments(parser: argparse.ArgumentParser, json_default: Optional[Path] = None) -> None:
    """Add the benchmark options to ``parser`` (shared by the CLI and ``benchmarks/speed.py``)."""
    from ..options import BENCH_DEFAULT_MODELS as DEFAULT_MODELS
    from ..options import BENCH_MODES as MODES

    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="SPEC",
                        help="registered names with optional kwargs (student:width=8), exported model folders, "
                             f"or 'all' for every registered model (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--student-widths", nargs="+", type=int, default=[], metavar="W",
                        help="also benchmark student:width=W for each W")
    parser.add_argument("--modes", nargs="+", choices=MODES, metavar="MODE",
                        help=f"any of {', '.join(MODES)} (default: all on CUDA; on CPU all but bf16/fp16)")
    parser.add_argument("--sizes", nargs="+", default=["480x640"], metavar="HxW", help="input sizes (default 480x640)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4], metavar="B", help="batch sizes (default 1 4)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--threads", type=int, help="intra-op threads for torch and ONNX Runtime (default: torch's)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up forwards per measurement (default 3)")
    parser.add_argument("--runs", type=int, default=30, help="timed forwards per measurement, at most (default 30)")
    parser.add_argument("--max-seconds", type=float, default=20.0,
                        help="stop timing once the timed runs add up to this (default 20; at least 1 run)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="kill a measurement's worker process after this many seconds (default 300)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="measure in this process (faster to start; no timeout, shared allocator state)")
    parser.add_argument("--reference", help="model the others are compared with (default: the teacher)")
    parser.add_argument("--note", default="", help="free text saved in the JSON settings (e.g. 'CPU shared')")
    parser.add_argument("--json", type=Path, default=json_default, help="write settings + records to this JSON file")
    parser.add_argument("--png", type=Path, help="write the chart here (default: the --json path with .png)")


def config_from_args(args: argparse.Namespace):
    """The :class:`dfsfuse.bench.BenchConfig` for parsed arguments."""
    from ..bench import BenchConfig, parse_size
    from ..models import list_models

    models = list_models() if args.models == ["all"] else list(args.models)
    models += [f"student:width={w}" for w in args.student_widths]
    return BenchConfig(
        models=models, modes=args.modes, sizes=[parse_size(s) for s in args.sizes], batches=args.batches,
        device=args.device, threads=args.threads, warmup=args.warmup, runs=args.runs, max_seconds=args.max_seconds,
        timeout_s=args.timeout, isolate=args.isolate, reference=args.reference, note=args.note,
    )


def run(args: argparse.Namespace) -> int:
    """Benchmark, print the tables, write JSON and chart when asked."""
    from rich.console import Console

    from ..bench import print_report, run_benchmark, save_chart

    config = config_from_args(args)
    console = Console()

    def progress(r) -> None:
        done = f"{r.latency_ms_p50:,.1f} ms p50 ({r.runs} runs)" if r.ok else f"{r.status}: {r.reason}"
        console.print(f"[dim]{r.model} · {r.mode} · batch {r.batch} · {r.height}×{r.width}: {done}[/]")

    result = run_benchmark(config, on_record=progress)
    print_report(result, console)
    if args.json:
        console.print(f"wrote {result.save_json(args.json)}")
    png = args.png or (args.json.with_suffix(".png") if args.json else None)
    if png:
        console.print(f"wrote {save_chart(result, png)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="speed of teacher, student and segmenter: params, MACs, latency, throughput, memory",
        description=(
            "Measure models (registry names or exported folders) in several modes (eager, channels_last, compile, "
            "bf16, fp16, onnxruntime) at given sizes and batches; print the student-vs-teacher speed-up."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
