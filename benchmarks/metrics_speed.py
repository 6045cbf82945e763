"""How much faster dfsfuse.metrics is than the numpy/scipy/scikit evaluator papers run.

Times every metric of ``benchmarks/reference_metrics.py`` (the straightforward evaluator) and of
:func:`dfsfuse.metrics.fusion_metrics_batch` on 640×480 avg fusions of real MSRS pairs (synthetic
images when the shared data is absent), checks that both agree, prints a rich table and writes
JSON with the settings::

    python benchmarks/metrics_speed.py                   # CPU, torch's default thread count
    python benchmarks/metrics_speed.py --device cuda --json benchmarks/results/metrics_speed_cuda.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import reference_metrics  # noqa: E402

from dfsfuse.baselines import baseline_fusion  # noqa: E402
from dfsfuse.data.io import read_gray  # noqa: E402
from dfsfuse.data.shared import shared_data_root  # noqa: E402
from dfsfuse.metrics import METRIC_NAMES, fusion_metrics_batch  # noqa: E402

UNARY = {"EN", "SD", "SF", "AG"}


def load_images(data: Path, count: int) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], str]:
    """Up to ``count`` (F, A, B) triples: avg fusions of MSRS test pairs, else synthetic 480×640."""
    ir_dir, vi_dir = data / "msrs" / "test" / "ir", data / "msrs" / "test" / "vi"
    names = sorted(p.name for p in ir_dir.glob("*.png")) if ir_dir.is_dir() else []
    triples = []
    for name in names[:count]:
        a, b = read_gray(ir_dir / name), read_gray(vi_dir / name)
        triples.append((baseline_fusion(a, b, "avg").astype(np.float32), a, b))
    if triples:
        return triples, f"MSRS test pairs ({data / 'msrs' / 'test'}), avg fusion"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    for i in range(count):
        smooth = 128 + 60 * np.sin(x / (20 + 5 * i)) * np.cos(y / 30)
        a = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).round().astype(np.float32)
        b = np.clip(255 - smooth + rng.normal(0, 20, smooth.shape), 0, 255).round().astype(np.float32)
        triples.append((baseline_fusion(a, b, "avg").astype(np.float32), a, b))
    return triples, "synthetic 480×640 (shared data not found)"


def _best_ms(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def time_reference(triples, repeats: int) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Best ms per metric over the given images (each timed ``repeats`` times), and the values."""
    per_metric: dict[str, list[float]] = {n: [] for n in METRIC_NAMES}
    values = []
    for f, a, b in triples:
        row = {}
        for name in METRIC_NAMES:
            fn = getattr(reference_metrics, name.lower())
            args = (f,) if name in UNARY else (f, a, b)
            for _ in range(repeats):
                start = time.perf_counter()
                row[name] = fn(*args)
                per_metric[name].append((time.perf_counter() - start) * 1000)
        values.append(row)
    return {n: min(t) for n, t in per_metric.items()}, values


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def settings(args: argparse.Namespace, source: str, shape: tuple[int, int], device: torch.device) -> dict:
    """Everything needed to reproduce or compare the numbers."""
    import scipy
    import skimage
    import sklearn

    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min_at_start": args.load_average,
        "images": source,
        "image_size_hw": list(shape),
        "batch": args.batch,
        "repeats": args.repeats,
        "reference_images": args.reference_images,
        "reference_repeats": 1,
        "timer": "best (min) wall time of time.perf_counter() over repeats after one warm-up (cuda: synchronised); "
        "reference: best over its images, one run each",
    }


def _max_rel_diff(got: dict[str, float], ref: dict[str, float]) -> float:
    if math.isnan(ref) or math.isnan(got):
        return 0.0 if math.isnan(ref) and math.isnan(got) else math.inf
    return abs(got - ref) / max(abs(ref), 1e-300)


def run(args: argparse.Namespace) -> dict:
    """Time both evaluators and return the JSON document."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    triples, source = load_images(Path(args.data), max(args.batch, args.reference_images))
    shape = triples[0][0].shape
    ref_ms, ref_values = time_reference(triples[: args.reference_images], repeats=1)

    stacked = [torch.from_numpy(np.stack(x))[:, None].to(device) for x in zip(*triples)]
    reps = (len(triples) + args.batch - 1) // len(triples)
    batch = [x.repeat(reps, 1, 1, 1)[: args.batch] for x in stacked]
    single = [x[:1] for x in stacked]

    torch_ms = {
        n: _best_ms(lambda n=n: fusion_metrics_batch(*single, metrics=[n]), args.repeats, sync) for n in METRIC_NAMES
    }
    full_single = _best_ms(lambda: fusion_metrics_batch(*single), args.repeats, sync)
    full_batch = _best_ms(lambda: fusion_metrics_batch(*batch), args.repeats, sync) / args.batch

    checked = fusion_metrics_batch(*[x[: args.reference_images] for x in stacked])
    max_rel = {
        n: max(_max_rel_diff(float(checked[n][i]), ref_values[i][n]) for i in range(len(ref_values)))
        for n in METRIC_NAMES
    }
    full_ref = sum(ref_ms.values())
    return {
        "settings": settings(args, source, shape, device),
        "per_metric_ms": {
            n: {"reference": ref_ms[n], "torch": torch_ms[n], "speedup": ref_ms[n] / torch_ms[n]} for n in METRIC_NAMES
        },
        "full_set_ms_per_image": {
            "reference": full_ref,
            "torch_single": full_single,
            f"torch_batch_{args.batch}": full_batch,
            "speedup_single": full_ref / full_single,
            f"speedup_batch_{args.batch}": full_ref / full_batch,
        },
        "max_relative_difference": max_rel,
    }


def print_report(doc: dict) -> None:
    """A rich table of the per-metric and full-set timings."""
    from rich.console import Console
    from rich.table import Table

    s = doc["settings"]
    table = Table(
        title=f"Fusion metrics: reference (numpy/scipy/skimage/sklearn) vs dfsfuse.metrics on {s['device']}",
        caption=f"{s['image_size_hw'][0]}×{s['image_size_hw'][1]}, {s['device_name']}, "
        f"{s['torch_threads']} torch threads, torch {s['torch']}; {s['images']}",
    )
    for col in ("metric", "reference ms", "torch ms", "speed-up", "max rel. diff"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, row in doc["per_metric_ms"].items():
        diff = doc["max_relative_difference"][name]
        table.add_row(name, f"{row['reference']:.1f}", f"{row['torch']:.2f}", f"{row['speedup']:.1f}×", f"{diff:.1e}")
    table.add_section()
    full = doc["full_set_ms_per_image"]
    batch_key = next(k for k in full if k.startswith("torch_batch_"))
    b = batch_key.rsplit("_", 1)[1]
    table.add_row(
        "all, 1 image",
        f"{full['reference']:.1f}",
        f"{full['torch_single']:.2f}",
        f"{full['speedup_single']:.1f}×",
        "",
        style="bold",
    )
    table.add_row(
        f"all, batch of {b} (per image)",
        f"{full['reference']:.1f}",
        f"{full[batch_key]:.2f}",
        f"{full[f'speedup_batch_{b}']:.1f}×",
        "",
        style="bold",
    )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device for dfsfuse.metrics (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=8, help="images per batched call (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each torch call (default 5)")
    parser.add_argument("--reference-images", type=int, default=3, help="images timed with the reference (default 3)")
    parser.add_argument(
        "--data", default=str(shared_data_root())
    )
    parser.add_argument("--json", type=Path, default=HERE / "results" / "metrics_speed.json", help="output JSON file")
    args = parser.parse_args(argv)
    if min(args.batch, args.repeats, args.reference_images) < 1:
        parser.error("--batch, --repeats and --reference-images must be at least 1")
    args.load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # others sharing the CPU?
    doc = run(args)
    print_report(doc)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(f".{args.json.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
