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
    """Add the benchmark options to ``parser`` (shared by the CLI and ``benchmarks/speed.py``).

    Options left out take the preset's value: the quick default (:data:`dfsfuse.bench.records.QUICK`)
    or, with ``--full``, the full sweep (:data:`dfsfuse.bench.records.FULL`).
    """
    from ..bench.records import FULL, QUICK
    from ..options import BENCH_MODES as MODES

    parser.add_argument("--full", action="store_true",
                        help=f"the full sweep: {' '.join(FULL.models)} in every default mode (on CPU all but "
                             f"bf16/fp16), batches {' '.join(map(str, FULL.batches))}, {FULL.runs} runs "
                             f"(default: quick: {' '.join(QUICK.models)}, the teacher in eager fp32 only, the "
                             "students in eager fp32 + ONNX Runtime (+ bf16 where native), batch 1)")
    parser.add_argument("--models", nargs="+", metavar="SPEC",
                        help="registered names with optional kwargs (student:width=8), exported model folders, "
                             "or 'all' for every registered model (default: the preset's)")
    parser.add_argument("--student-widths", nargs="+", type=int, default=[], metavar="W",
                        help="also benchmark student:width=W for each W")
    parser.add_argument("--modes", nargs="+", choices=MODES, metavar="MODE",
                        help=f"any of {', '.join(MODES)} (default: the preset's)")
    parser.add_argument("--reference-modes", nargs="+", choices=MODES, metavar="MODE",
                        help="modes of the reference model (default: the same as --modes when given, "
                             "else quick: eager only; --full: every mode)")
    parser.add_argument("--sizes", nargs="+", default=["480x640"], metavar="HxW", help="input sizes (default 480x640)")
    parser.add_argument("--batches", nargs="+", type=int, metavar="B",
                        help=f"batch sizes (default: quick {' '.join(map(str, QUICK.batches))}, "
                             f"--full {' '.join(map(str, FULL.batches))})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--threads", type=int, help="intra-op threads for torch and ONNX Runtime (default: torch's)")
    parser.add_argument("--warmup", type=int, help=f"warm-up forwards per measurement (default {QUICK.warmup}, "
                                                   f"--full {FULL.warmup})")
    parser.add_argument("--runs", type=int,
                        help=f"timed forwards per measurement, at most (default {QUICK.runs}, --full {FULL.runs})")
    parser.add_argument("--max-seconds", type=float,
                        help=f"stop timing once the timed runs add up to this (default {QUICK.max_seconds:g}, "
                             f"--full {FULL.max_seconds:g}; at least 1 run)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="kill a measurement's worker process after this many seconds (default 300)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="measure in this process (faster to start; no timeout, shared allocator state)")
    parser.add_argument("--reference", help="model the others are compared with (default: the teacher)")
    parser.add_argument("--note", default="", help="free text saved in the JSON settings (e.g. 'CPU shared')")
    parser.add_argument("--json", type=Path, default=json_default, help="write settings + records to this JSON file")
    parser.add_argument("--png", type=Path, help="write the chart here (default: the --json path with .png)")


def config_from_args(args: argparse.Namespace):
    """The :class:`dfsfuse.bench.BenchConfig` for parsed arguments (preset values where options are missing)."""
    from ..bench import FULL, QUICK, BenchConfig, parse_size, quick_modes
    from ..models import list_models

    preset = FULL if getattr(args, "full", False) else QUICK
    pick = lambda value, default: default if value is None else value  # noqa: E731
    models = list(pick(args.models, preset.models))
    models = list_models() if models == ["all"] else models
    models += [f"student:width={w}" for w in args.student_widths]
    modes = args.modes or preset.modes or (quick_modes(args.device) if preset is QUICK else None)
    return BenchConfig(
        models=models, modes=modes,
        # Modes asked for explicitly apply to the reference too, unless --reference-modes says otherwise.
        reference_modes=args.reference_modes or (None if args.modes else preset.reference_modes),
        sizes=[parse_size(s) for s in args.sizes], batches=pick(args.batches, preset.batches),
        device=args.device, threads=args.threads, warmup=pick(args.warmup, preset.warmup),
        runs=pick(args.runs, preset.runs), max_seconds=pick(args.max_seconds, preset.max_seconds),
        timeout_s=args.timeout, isolate=args.isolate, reference=args.reference, note=args.note,
    )


def torch_device_type(device: str) -> str:
    """``"cuda"`` for ``cuda``/``cuda:N``, else the name before any ``:``."""
    return device.split(":")[0]


def run(args: argparse.Namespace) -> int:
    """Benchmark, print the tables, write JSON and chart when asked."""
    from rich.console import Console

    from ..bench import native_bf16, print_report, run_benchmark, save_chart

    config = config_from_args(args)
    console = Console()
    if not args.full and args.modes is None and torch_device_type(args.device) == "cpu" and not native_bf16():
        console.print("[dim]bf16 autocast not measured: this CPU has no native bf16 (avx512_bf16/amx_bf16), "
                      "so it is emulated and slower than fp32; ask for it with --modes ... bf16[/]")

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
        help="speed of teacher and students (--full: + segmenter, all modes): params, MACs, latency, memory",
        description=(
            "Measure models (registry names or exported folders) in several modes (eager, channels_last, compile, "
            "bf16, fp16, onnxruntime) at given sizes and batches; print the student-vs-teacher speed-up."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
