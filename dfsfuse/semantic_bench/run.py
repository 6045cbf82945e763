"""A whole semantic-benchmark run: every kind rendered, one segmenter trained and scored per kind and
seed (in this process or in spawned worker processes), or one trained segmenter scored on every kind
(quick mode); the settings record with the hardware the numbers come from."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..metrics.segmentation import FalsePositiveDistance
from .data import LabelledSplit, check_labelled_folder, load_labelled_split
from .kinds import InputKind, segmenter_inputs
from .results import KindResult, SegBenchResult
from .settings import IGNORE_INDEX, SegBenchSettings
from .training import evaluate_segmenter, train_segmenter

__all__ = ["pick_picture_index", "Reporter", "Scores", "run_benchmark", "run_quick"]


def pick_picture_index(split: LabelledSplit, name: Optional[str] = None) -> int:
    """The test image shown in the picture: ``name``, else the one with the most distinct
    labelled classes (then the most labelled foreground pixels)."""
    if name is not None:
        if name not in split.names:
            raise ValueError(f"picture image {name!r} is not in {split.root}")
        return split.names.index(name)

    def score(i: int) -> Tuple[int, int]:
        y = split.labels[i]
        fg = y[(y != 0) & (y != IGNORE_INDEX)]
        return len(torch.unique(fg)), int(fg.numel())

    return max(range(len(split)), key=lambda i: (score(i), -i))


def _hardware(settings: SegBenchSettings) -> Dict[str, Any]:
    """Where the numbers come from. A seed's numbers repeat bit for bit only with the same thread
    count, CPU kernels (torch's ``cpu_capability``: two CPUs sold under one model name can differ) and
    library versions (timm sets the initial weights), so all of them are recorded."""
    import timm

    from ..bench import cpu_model

    device = torch.device(settings.device)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # CUDA segmenters train under deterministic_kernels (new in session 23); files without this key
        # did not, and their seeds do not repeat
        **({"cuda_determinism": True} if device.type == "cuda" else {}),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _base_settings(settings: SegBenchSettings, kinds: Sequence[InputKind], skipped: Dict[str, str],
                   mode: str) -> Dict[str, Any]:
    record = asdict(settings)
    record["size"] = list(settings.size) if settings.size else "native"
    record["crop"] = list(settings.crop) if settings.crop else "whole image"
    record.update({
        "mode": mode,
        "kinds": {k.name: k.describe() for k in kinds},
        "skipped": dict(skipped),
        "resize": "area for images (before fusing), nearest for labels; fusions rounded to 8 bits",
        "miou": "one confusion matrix over the whole test folder; mean over classes present in labels or "
                "predictions, unlabeled (class 0) included",
        "false_positives_far": "a class's false positives farther than 5% of the short side (Chebyshev) from "
                               "any pixel labelled with it, over all its false positives, pooled over seeds",
        **_hardware(settings),
    })
    return record


Reporter = Callable[[str], None]


def _render_kind(kind: InputKind, train: LabelledSplit, test: LabelledSplit, settings: SegBenchSettings,
                 pic: int, say: Reporter) -> Tuple[List[Tensor], List[Tensor], KindResult]:
    """``kind``'s training and test images, and its (empty) result holding the picture image and the
    rendering time."""
    t0 = time.time()
    say(f"{kind.name}: rendering {len(train)} train + {len(test)} test pairs")
    train_images, test_images = segmenter_inputs(kind, train, settings), segmenter_inputs(kind, test, settings)
    return train_images, test_images, KindResult(kind.name, picture_image=test_images[pic], seconds=time.time() - t0)


def _train_and_score(train_images: Sequence[Tensor], test_images: Sequence[Tensor], train_labels: Sequence[Tensor],
                     test_labels: Sequence[Tensor], settings: SegBenchSettings, seed: int, weights: Sequence[float],
                     pic: int, on_step: Optional[Callable[[int, float], None]] = None
                     ) -> Tuple[float, List[float], Tensor, List[List[int]], List[List[int]]]:
    """One segmenter from scratch on ``train_images``, scored on ``test_images``:
    (mIoU, per-class IoU, prediction of the picture image, confusion matrix, false positives near/far)."""
    model = train_segmenter(train_images, train_labels, settings, seed, weights, on_step)
    return _score(model, test_images, test_labels, settings, pic)


def _score(model: nn.Module, images: Sequence[Tensor], labels: Sequence[Tensor], settings: SegBenchSettings,
           pic: int) -> Tuple[float, List[float], Tensor, List[List[int]], List[List[int]]]:
    """A trained segmenter's (mIoU, per-class IoU, prediction of the picture image, confusion matrix,
    false positives near/far) on whole test images: one seed's :meth:`KindResult.add` arguments."""
    fp = FalsePositiveDistance(getattr(model, "num_classes", 9), ignore_index=IGNORE_INDEX)
    cm, kept = evaluate_segmenter(model, images, labels, settings.eval_batch, keep=[pic], false_positives=fp)
    return cm.miou(), cm.iou().tolist(), kept[pic], cm.matrix.tolist(), fp.counts.tolist()


# Worker processes (``workers > 1``): the rendered kinds and the splits are handed over once per
# worker, by the pool initializer, and each task is one (kind, seed) pair. Module-level so spawned
# processes find them.
_WORKER_DATA: Dict[str, Any] = {}


def _init_worker(data: Dict[str, Any], threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER_DATA.clear()
    _WORKER_DATA.update(data)


def _worker_task(kind_index: int, seed: int) -> Tuple[Tuple[Any, ...], float]:
    """:func:`_train_and_score` for one kind and seed in a worker, and its seconds."""
    d = _WORKER_DATA
    t0 = time.time()
    train_images, test_images = d["rendered"][kind_index]
    scores = _train_and_score(train_images, test_images, d["train_labels"], d["test_labels"], d["settings"], seed,
                              d["weights"], d["pic"])
    return scores, time.time() - t0


Scores = Tuple[Tuple[Any, ...], float]
"""One segmenter's :meth:`KindResult.add` arguments and its seconds."""


def _assemble(rendered: Sequence[KindResult], scores: Mapping[Tuple[int, int], Scores],
              seeds: Sequence[int]) -> List[KindResult]:
    """Per-kind results of ``seeds`` (in order) from the finished segmenters ``scores[(kind index, seed)]``;
    ``rendered`` holds each kind's picture image and rendering time. ``seconds`` of a kind: its rendering
    plus its segmenters' time (summed, not wall time, with workers)."""
    results = []
    for k, r in enumerate(rendered):
        result = KindResult(r.name, picture_image=r.picture_image, seconds=r.seconds)
        for seed in seeds:
            seed_scores, seconds = scores[(k, seed)]
            result.add(*seed_scores)
            result.seconds += seconds
        results.append(result)
    return results


def run_benchmark(settings: SegBenchSettings, kinds: Sequence[InputKind], skipped: Optional[Dict[str, str]] = None,
                  picture_name: Optional[str] = None, say: Reporter = lambda _: None,
                  progress: Optional[Callable[..., Any]] = None, workers: int = 1,
                  worker_threads: int = 1,
                  checkpoint: Optional[Callable[[SegBenchResult], None]] = None) -> Tuple[SegBenchResult, LabelledSplit]:
    """Train one segmenter per kind and seed, score each on the test folder.

    Every kind is rendered first; then the segmenters run seed-major (seed 0 of every kind, then
    seed 1, ...), so a run stopped early has finished whole seeds, paired across kinds.
    ``checkpoint(result)``, when given, is called after each segmenter but the last once at least one
    seed is finished for every kind, with a result holding those seeds only (``settings["partial"]``
    says how many segmenters were done): write it to keep a stopped run's finished seeds.

    ``progress(description, total)`` returns a context manager with ``update(step, loss)``
    (e.g. :class:`dfsfuse.train.progress.StageProgress`); with ``workers > 1`` it is called once,
    as ``progress("segmenters", n, metric="mIoU", unit="segmenter")``, and updated as segmenters
    finish. ``say`` prints notes.

    ``workers > 1`` trains the (kind, seed) segmenters in that many spawned processes of
    ``worker_threads`` torch threads each. Each segmenter's numbers equal a one-process run with
    ``worker_threads`` threads: on a 2-core CPU, two one-thread workers train 1.6× as many segmenters
    per hour as one two-thread process.
    """
    from ..losses import class_weights_from_labels

    settings.validate()
    if not kinds:
        raise ValueError("no input kind to benchmark")
    if workers < 1 or worker_threads < 1:
        raise ValueError(f"workers and worker threads must be at least 1, got {workers} and {worker_threads}")
    started = time.time()
    for folder in (settings.train_dir, settings.test_dir):  # list both (cheap) before reading either
        check_labelled_folder(folder)
    say(f"reading {settings.train_dir} and {settings.test_dir}")
    train = load_labelled_split(settings.train_dir, settings.size)
    test = load_labelled_split(settings.test_dir, settings.size)
    weights = list(class_weights_from_labels(torch.cat([y.flatten() for y in train.labels]), c=settings.weight_c))
    pic = pick_picture_index(test, picture_name)
    record = _base_settings(settings, kinds, skipped or {}, "train")
    record.update({"class_weights": weights, "train_pairs": len(train), "test_pairs": len(test),
                   "picture_image": test.names[pic]})
    rendered_images, rendered = [], []
    for kind in kinds:
        train_images, test_images, result = _render_kind(kind, train, test, settings, pic, say)
        rendered_images.append((train_images, test_images))
        rendered.append(result)
    tasks = [(k, seed) for seed in settings.seeds for k in range(len(kinds))]
    scores: Dict[Tuple[int, int], Scores] = {}

    def finished(k: int, seed: int, entry: Scores) -> None:
        scores[(k, seed)] = entry
        say(f"{kinds[k].name} seed {seed}: mIoU {entry[0][0]:.4f}")
        if checkpoint is None or len(scores) == len(tasks):
            return
        done = [s for s in settings.seeds if all((i, s) in scores for i in range(len(kinds)))]
        if done:
            partial = {**record, "partial": f"{len(scores)} of {len(tasks)} segmenters finished; "
                                            f"seeds {', '.join(map(str, done))} of every kind kept",
                       "wall_time_s": round(time.time() - started, 1)}
            checkpoint(SegBenchResult(partial, _assemble(rendered, scores, done), done))

    if workers == 1:
        for k, seed in tasks:
            bar = progress(f"{kinds[k].name} seed {seed}", settings.steps) if progress else None
            t0 = time.time()
            with bar if bar is not None else contextlib.nullcontext():
                out = _train_and_score(*rendered_images[k], train.labels, test.labels, settings, seed, weights, pic,
                                       bar.update if bar is not None else None)
            finished(k, seed, (out, time.time() - t0))
    else:
        workers = min(workers, len(tasks))  # processes actually started
        record.update({"workers": workers, "torch_threads": worker_threads})
        _run_in_workers(settings, tasks, rendered_images, train, test, weights, pic, say, progress, workers,
                        worker_threads, finished)
    results = _assemble(rendered, scores, settings.seeds)
    record.update({"seconds_per_kind": {r.name: round(r.seconds, 1) for r in results},
                   "wall_time_s": round(time.time() - started, 1)})
    return SegBenchResult(record, results, list(settings.seeds)), test


def _run_in_workers(settings: SegBenchSettings, tasks: Sequence[Tuple[int, int]],
                    rendered: Sequence[Tuple[List[Tensor], List[Tensor]]], train: LabelledSplit, test: LabelledSplit,
                    weights: Sequence[float], pic: int, say: Reporter, progress: Optional[Callable[..., Any]],
                    workers: int, threads: int, finished: Callable[[int, int, Scores], None]) -> None:
    """Train and score every (kind index, seed) of ``tasks`` in a pool of ``workers`` processes,
    submitted in order; ``finished(k, seed, scores)`` as each ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    data = {"rendered": list(rendered), "train_labels": train.labels, "test_labels": test.labels,
            "settings": settings, "weights": list(weights), "pic": pic}
    say(f"training {len(tasks)} segmenters in {workers} processes of {threads} thread(s)")
    bar = progress("segmenters", len(tasks), metric="mIoU", unit="segmenter") if progress else None
    done = 0
    with bar if bar is not None else contextlib.nullcontext(), \
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                                initargs=(data, threads)) as pool:
        futures = {pool.submit(_worker_task, k, seed): (k, seed) for k, seed in tasks}
        for future in as_completed(futures):
            k, seed = futures[future]
            try:
                entry = future.result()
            except BaseException:
                for other in futures:  # do not start the rest; running ones end with the pool
                    other.cancel()
                raise
            finished(k, seed, entry)
            done += 1
            if bar is not None:
                bar.update(done, entry[0][0])


def run_quick(segmenter_dir: os.PathLike, settings: SegBenchSettings, kinds: Sequence[InputKind],
              skipped: Optional[Dict[str, str]] = None, picture_name: Optional[str] = None,
              say: Reporter = lambda _: None) -> Tuple[SegBenchResult, LabelledSplit]:
    """Score one trained segmenter (an exported folder) on every kind of the test folder, no training."""
    from ..export import from_pretrained

    started = time.time()
    if not kinds:
        raise ValueError("no input kind to benchmark")
    segmenter = from_pretrained(segmenter_dir, device=settings.device)
    if getattr(segmenter, "kind", "") != "segmentation":
        raise ValueError(f"{segmenter_dir}: {getattr(segmenter, 'arch_name', '?')!r} is not a segmentation model")
    reads = getattr(segmenter, "in_chans", 1)
    if reads != settings.in_chans:
        raise ValueError(f"{segmenter_dir}: the segmenter reads {reads} channel(s), "
                         f"{'--color' if settings.color else 'grey input'} needs {settings.in_chans}")
    say(f"reading {settings.test_dir}")
    test = load_labelled_split(settings.test_dir, settings.size)
    pic = pick_picture_index(test, picture_name)
    results: List[KindResult] = []
    for kind in kinds:
        t0 = time.time()
        images = segmenter_inputs(kind, test, settings)
        result = KindResult(kind.name, picture_image=images[pic])
        result.add(*_score(segmenter, images, test.labels, settings, pic))
        result.seconds = time.time() - t0
        results.append(result)
        say(f"{kind.name}: mIoU {results[-1].miou[0]:.4f}")
    record = _base_settings(settings, kinds, skipped or {}, "quick")
    for key in ("train_dir", "crop", "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "seg_loss",
                "hflip", "ema", "class_crops", "weight_c"):
        record.pop(key, None)
    record.update({"segmenter": str(Path(segmenter_dir).resolve()), "segmenter_arch": segmenter.arch_config(),
                   "test_pairs": len(test), "picture_image": test.names[pic],
                   "wall_time_s": round(time.time() - started, 1)})
    return SegBenchResult(record, results, []), test
