"""Fuse folders of IR/VIS pairs with a fusion model: colour kept, any size, bad pairs reported.

Pairs are matched by file stem. The visible image is split into luminance and chroma
(BT.601, the convention of :mod:`dfsfuse.data.io`); the model fuses the luminance with IR and
the visible Cb/Cr are put back, so the output is a colour picture (or the fused luminance
alone with ``gray=True``). Pairs of equal size are fused in batches. Every output is written
atomically as ``<stem>.png``. With ``workers`` > 0, decoding runs in that many DataLoader worker
processes and PNG encoding/writing in that many threads, overlapping with the model's forward
passes; the outputs are byte-identical to ``workers=0`` (everything in the calling thread).
A pair that cannot be fused (missing partner, size mismatch, unreadable file) is recorded
with a one-line message naming the file; the others still fuse.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from .data.color import colorize
from .data.errors import DatasetError
from .data.irrange import IrRange, parse_ir_range
from .data.io import (
    IMAGE_EXTENSIONS,
    ImagePair,
    PathLike,
    read_pair,
    to_uint8,
    write_image,
)

OUTPUT_SUFFIX = ".png"


@dataclass(frozen=True)
class FuseJob:
    """One pair to fuse: its name (the shared stem), source files and output file."""

    name: str
    ir: Path
    vis: Path
    out: Path


@dataclass(frozen=True)
class FuseFailure:
    """A pair that could not be fused; ``message`` starts with the offending file's path."""

    name: str
    message: str


@dataclass(frozen=True)
class FuseOptions:
    """How to fuse: ``gray`` writes luminance only; ``batch_size`` equal-size pairs per forward;
    ``overwrite`` replaces existing outputs (otherwise they are skipped); ``ir_range`` maps
    16-bit/float IR to [0, 1] (text or :class:`IrRange`, see :mod:`dfsfuse.data.irrange`;
    8-bit IR is read as value / 255 unless an explicit range is given); ``workers`` decoding
    processes and encoding threads run beside the model (0: everything in the calling thread);
    ``png_level`` is the PNG zlib level (1: fast, about 4× quicker to encode than Pillow's
    default 6 for ~10% larger files; the pixels are the same at every level)."""

    gray: bool = False
    batch_size: int = 1
    overwrite: bool = False
    ir_range: Union[str, IrRange, None] = None
    workers: int = 0
    png_level: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}")
        if not 0 <= self.png_level <= 9:
            raise ValueError(f"PNG level must be 0 to 9, got {self.png_level}")
        object.__setattr__(self, "ir_range", parse_ir_range(self.ir_range))


@dataclass
class FuseSummary:
    """What :func:`fuse_folder` did: names fused and skipped, failures, wall time."""

    fused: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[FuseFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no pair failed."""
        return not self.failed

    @property
    def pairs_per_second(self) -> float:
        """Fused pairs per second of wall time, decoding and writing included (0 when nothing was fused)."""
        return len(self.fused) / self.seconds if self.fused and self.seconds > 0 else 0.0

    images_per_second = pairs_per_second  # the name before pairs_per_second; one output image per pair

    def line(self) -> str:
        """One-line human summary."""
        return (f"fused {len(self.fused)}, skipped {len(self.skipped)} (already there), failed {len(self.failed)} "
                f"in {self.seconds:.1f} s ({self.pairs_per_second:.2f} pairs/s)")



def resolve_device(name: Optional[str] = None) -> torch.device:
    """``name`` as a torch device (validated); ``None`` means CUDA when available, else CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r}: not a torch device (try cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    return device


def _index(folder: Path, role: str, failures: List[FuseFailure]) -> Dict[str, Path]:
    """Stem → image file directly in ``folder``; an ambiguous stem becomes a failure."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {role} folder not found")
    found: Dict[str, Path] = {}
    clashes: Dict[str, List[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
            if path.stem in found:
                clashes.setdefault(path.stem, [found[path.stem]]).append(path)
            else:
                found[path.stem] = path
    for stem, paths in clashes.items():
        del found[stem]
        failures.append(FuseFailure(stem, f"{paths[1]}: same stem as {paths[0].name}; "
                                          f"cannot tell which {role} image to use"))
    return found


def plan_jobs(ir_dir: PathLike, vis_dir: PathLike, out_dir: PathLike) -> Tuple[List[FuseJob], List[FuseFailure]]:
    """Match IR and VIS files by stem: the jobs (sorted by name) and the files without a partner.

    Raises :class:`DatasetError` when a folder is missing, both are empty, or the output
    folder is one of the input folders (outputs would replace inputs).
    """
    ir_dir, vis_dir, out_dir = Path(ir_dir), Path(vis_dir), Path(out_dir)
    for source in (ir_dir, vis_dir):
        if out_dir.exists() and source.exists() and out_dir.resolve() == source.resolve():
            raise DatasetError(f"{out_dir}: the output folder is an input folder; choose another --out")
    failures: List[FuseFailure] = []
    irs = _index(ir_dir, "IR", failures)
    viss = _index(vis_dir, "VIS", failures)
    if not irs and not viss and not failures:
        raise DatasetError(f"{ir_dir}: no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    for stem in sorted(set(irs) - set(viss)):
        failures.append(FuseFailure(stem, f"{irs[stem]}: no visible partner named {stem}.* in {vis_dir}"))
    for stem in sorted(set(viss) - set(irs)):
        failures.append(FuseFailure(stem, f"{viss[stem]}: no infrared partner named {stem}.* in {ir_dir}"))
    jobs = [FuseJob(stem, irs[stem], viss[stem], out_dir / f"{stem}{OUTPUT_SUFFIX}")
            for stem in sorted(set(irs) & set(viss))]
    return jobs, sorted(failures, key=lambda f: f.name)


def image_size(path: Path) -> Tuple[int, int]:
    """(height, width) from the file header; :class:`DatasetError` naming the file if unreadable."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt image ({exc})") from None
    return height, width


def _model_device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


@torch.inference_mode()
def fuse_arrays(model: nn.Module, pairs: Sequence[ImagePair], gray: bool = False) -> np.ndarray:
    """Fuse same-size pairs in one forward pass.

    Returns uint8 B×H×W (``gray``) or B×H×W×3 RGB: the fused luminance with the visible
    chroma put back.
    """
    device = _model_device(model)
    to_tensor = lambda arrays: torch.from_numpy(np.stack(arrays) / np.float32(255.0)).to(device)  # noqa: E731
    ir = to_tensor([p.ir[None] for p in pairs])
    vis_y = to_tensor([p.vis_y[None] for p in pairs])
    fused = model(ir, vis_y).fused.float()
    if gray:
        return to_uint8(fused[:, 0].cpu().numpy() * 255.0)
    rgb = colorize(fused, to_tensor([p.vis_cbcr for p in pairs]))
    return to_uint8(rgb.permute(0, 2, 3, 1).cpu().numpy() * 255.0)


def _batches(jobs: Sequence[FuseJob], sizes: Dict[str, Tuple[int, int]], batch_size: int) -> Iterator[List[FuseJob]]:
    """Jobs grouped by image size (then name) into runs of at most ``batch_size``."""
    ordered = sorted(jobs, key=lambda j: (sizes[j.name], j.name))
    batch: List[FuseJob] = []
    for job in ordered:
        if batch and (sizes[job.name] != sizes[batch[0].name] or len(batch) == batch_size):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch


class _Run:
    """Bookkeeping of one :func:`fuse_folder` call (summary, progress, failure lines)."""

    def __init__(self, summary: FuseSummary, console, bar, task) -> None:
        self.summary, self.console, self.bar, self.task = summary, console, bar, task

    def fail(self, failure: FuseFailure) -> None:
        self.summary.failed.append(failure)
        if self.console is not None:
            self.console.print(f"error: {failure.message}", soft_wrap=True, markup=False, highlight=False)
        self.bar.advance(self.task)

    def done(self, name: str, skipped: bool = False) -> None:
        (self.summary.skipped if skipped else self.summary.fused).append(name)
        self.bar.advance(self.task)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


Decoded = List[Tuple[FuseJob, Optional[ImagePair], str]]
"""One batch after decoding: each job with its pair, or ``None`` and the one-line error."""

_Shared = List[Tuple[FuseJob, Optional[Tuple[torch.Tensor, ...]], str]]
"""A decoded batch as it crosses from a worker process: the arrays as tensors, which the
DataLoader hands over in shared memory instead of pickling ~5 MB per 480×640 pair."""


def _to_shared(batch: Decoded) -> _Shared:
    return [(job, None if pair is None else (torch.from_numpy(pair.ir), torch.from_numpy(pair.vis_y),
                                             torch.from_numpy(pair.vis_cbcr)), error) for job, pair, error in batch]


def _from_shared(batch: _Shared) -> Decoded:
    return [(job, None if arrays is None else ImagePair(*(t.numpy() for t in arrays)), error)
            for job, arrays, error in batch]


class _DecodedBatches(torch.utils.data.Dataset):
    """Item ``i`` is batch ``i`` decoded (what DataLoader workers run); unreadable pairs carry their error."""

    def __init__(self, batches: Sequence[List[FuseJob]], ir_range: Optional[IrRange]) -> None:
        self.batches, self.ir_range = list(batches), ir_range

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Decoded:
        decoded: Decoded = []
        for job in self.batches[index]:
            try:
                decoded.append((job, read_pair(job.ir, job.vis, self.ir_range), ""))
            except DatasetError as exc:
                decoded.append((job, None, str(exc)))
        return decoded


def _decoded_batches(batches: Sequence[List[FuseJob]], ir_range: Optional[IrRange], workers: int) -> Iterator[Decoded]:
    """Decoded batches in order: in ``workers`` DataLoader processes (prefetching ahead), or inline for 0."""
    dataset = _DecodedBatches(batches, ir_range)
    if workers == 0 or len(dataset) == 0:
        return (dataset[i] for i in range(len(dataset)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, collate_fn=_to_shared,
                                         num_workers=min(workers, len(dataset)), prefetch_factor=2)
    return map(_from_shared, loader)


class _Writer:
    """Writes fused images atomically, inline or in a thread pool; results are recorded in submission
    order from the calling thread (so summaries and messages come out as with ``workers=0``)."""

    def __init__(self, run: _Run, threads: int, png_level: Optional[int] = None) -> None:
        self.run, self.png_level = run, png_level
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="dfsfuse-write") if threads else None
        self.pending: deque[Tuple[FuseJob, Future]] = deque()

    def submit(self, job: FuseJob, image: np.ndarray) -> None:
        if self.pool is None:
            self._record(job, self._write(job, image))
        else:
            self.pending.append((job, self.pool.submit(self._write, job, image)))
            self.drain(block=False)

    def _write(self, job: FuseJob, image: np.ndarray) -> str:
        try:
            write_image(job.out, image, self.png_level)
        except OSError as exc:
            return f"{job.out}: cannot write ({_one_line(exc)})"
        return ""

    def _record(self, job: FuseJob, error: str) -> None:
        if error:
            self.run.fail(FuseFailure(job.name, error))
        else:
            self.run.done(job.name)

    def drain(self, block: bool = True) -> None:
        """Record finished writes in order (all of them when ``block``)."""
        while self.pending and (block or self.pending[0][1].done()):
            job, future = self.pending.popleft()
            self._record(job, future.result())

    def close(self) -> None:
        """Wait for every write and stop the threads."""
        try:
            self.drain(block=True)
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)


def _fuse_batch(model: nn.Module, read: List[Tuple[FuseJob, ImagePair]], gray: bool, run: _Run,
                writer: _Writer) -> None:
    """Fuse one decoded batch and hand the images to ``writer``; per-pair failures are recorded."""
    if not read:
        return
    try:
        images = fuse_arrays(model, [pair for _, pair in read], gray=gray)
    except RuntimeError as exc:  # e.g. out of GPU memory: retry one by one, then give up per pair
        if len(read) > 1:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            for item in read:
                _fuse_batch(model, [item], gray, run, writer)
            return
        job = read[0][0]
        run.fail(FuseFailure(job.name, f"{job.ir}: fusion failed ({_one_line(exc)})"))
        return
    for (job, _), image in zip(read, images):
        writer.submit(job, image)


def fuse_folder(model: nn.Module, ir_dir: PathLike, vis_dir: PathLike, out_dir: PathLike,
                options: FuseOptions = FuseOptions(), console=None) -> FuseSummary:
    """Fuse every IR/VIS pair of two folders into ``out_dir/<stem>.png`` with fusion ``model``.

    The model runs where its parameters are. With a rich ``console``, a progress bar and one
    ``error: ...`` line per failed pair are printed on it as they happen; without, it is silent.
    Raises :class:`DatasetError` only for unusable folders; bad pairs end up in ``failed``.
    ``options.workers`` > 0 decodes in worker processes and writes in threads while the model
    runs (same files, same summary as 0).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    if getattr(model, "kind", "fusion") != "fusion":
        raise ValueError(f"{type(model).__name__} is a {model.kind} model; fusing needs a fusion model")
    start = time.perf_counter()
    jobs, failures = plan_jobs(ir_dir, vis_dir, out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.eval()
    summary = FuseSummary()
    columns = (TextColumn("fusing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=console is None, transient=True) as bar:
        run = _Run(summary, console, bar, bar.add_task("fusing", total=len(jobs) + len(failures)))
        for failure in failures:
            run.fail(failure)
        sizes: Dict[str, Tuple[int, int]] = {}
        todo: List[FuseJob] = []
        for job in jobs:
            if job.out.exists() and not options.overwrite:
                run.done(job.name, skipped=True)
                continue
            try:
                sizes[job.name] = image_size(job.ir)
            except DatasetError as exc:
                run.fail(FuseFailure(job.name, str(exc)))
                continue
            todo.append(job)
        writer = _Writer(run, options.workers, options.png_level)
        try:
            batches = list(_batches(todo, sizes, options.batch_size))
            for decoded in _decoded_batches(batches, options.ir_range, options.workers):
                read: List[Tuple[FuseJob, ImagePair]] = []
                for job, pair, error in decoded:
                    if pair is None:
                        run.fail(FuseFailure(job.name, error))
                    else:
                        read.append((job, pair))
                _fuse_batch(model, read, options.gray, run, writer)
        finally:
            writer.close()
    summary.failed.sort(key=lambda f: f.name)
    summary.seconds = time.perf_counter() - start
    return summary


def load_fusion_model(model: Optional[Union[str, PathLike]], device: torch.device) -> nn.Module:
    """``from_pretrained(model)``, or the shipped student when ``model`` is None; must be a fusion model."""
    from .export import CONFIG_NAME, SHIPPED_STUDENT, ModelLoadError, from_pretrained

    if model is None:
        if not (SHIPPED_STUDENT / CONFIG_NAME).is_file():
            raise ModelLoadError(f"{SHIPPED_STUDENT}: no pretrained student is shipped with this install; "
                                 "pass --model DIR_OR_HUB_ID (a folder written by `dfsfuse export` or a hub id)")
        model = SHIPPED_STUDENT
    loaded = from_pretrained(model, device=device)
    if getattr(loaded, "kind", "") != "fusion":
        raise ModelLoadError(f"{model}: {loaded.arch_name!r} is a {loaded.kind} model, not a fusion model")
    if callable(getattr(loaded, "reparameterize", None)):  # fold training-time branches: same output, faster
        loaded.reparameterize()
    return loaded
