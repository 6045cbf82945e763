"""Semantic benchmark: how useful each kind of input is to a segmenter trained on it.

The protocol of task-driven fusion papers (SeAFusion, PSFusion): for every input kind — IR
alone, VIS alone (luminance), the ``avg`` and ``max`` rules, the teacher's and the student's
fusion, any exported fusion model or folder of fused images — render the labelled training
pairs with that input (each pair fused once, up front, kept in memory as 8-bit images like a
saved fusion), train the *same* segmenter from scratch with the same seed, data order, crops
and budget, and report mIoU and per-class IoU on a held-out labelled folder rendered the same way.
The quick mode scores one already trained segmenter on every kind without retraining.

Images are resized (area) to ``size`` before fusing, labels with nearest neighbour; ``size=None``
keeps the native resolution (the papers' setting, ``--full``). mIoU is computed from one
confusion matrix over the whole test folder (unlabeled class included, as the MSRS tables do).
Library behind ``dfsfuse segbench`` and ``benchmarks/semantic.py``.

Modules (one concern each): :mod:`~dfsfuse.semantic_bench.settings` (constants, paths,
:class:`SegBenchSettings` and its presets), :mod:`~dfsfuse.semantic_bench.data` (labelled splits),
:mod:`~dfsfuse.semantic_bench.kinds` (input kinds and rendering), :mod:`~dfsfuse.semantic_bench.training`
(one segmenter trained and scored), :mod:`~dfsfuse.semantic_bench.results` (per-kind and per-run results),
:mod:`~dfsfuse.semantic_bench.run` (a whole run, worker processes, quick mode),
:mod:`~dfsfuse.semantic_bench.report` (table and picture).
"""

from .data import LabelledSplit, check_labelled_folder, load_labelled_split, to_u8
from .kinds import InputKind, colour_images, load_fusion_model, parse_named, render, resolve_kinds, segmenter_inputs
from .report import print_table, save_picture
from .results import KindResult, SegBenchResult
from .run import Reporter, Scores, pick_picture_index, run_benchmark, run_quick
from .settings import (
    BUILTIN_KINDS,
    DEFAULT_KINDS,
    FAST_SEGMENTER,
    IGNORE_INDEX,
    PALETTE,
    RULE_KINDS,
    SegBenchSettings,
    Size,
    default_data_root,
    fast_settings,
    full_settings,
    package_asset,
)
from .training import build_segmenter, evaluate_segmenter, train_segmenter

__all__ = [
    # settings
    "Size", "IGNORE_INDEX", "BUILTIN_KINDS", "DEFAULT_KINDS", "RULE_KINDS", "PALETTE", "FAST_SEGMENTER",
    "default_data_root", "package_asset", "SegBenchSettings", "fast_settings", "full_settings",
    # data
    "LabelledSplit", "to_u8", "check_labelled_folder", "load_labelled_split",
    # kinds
    "InputKind", "load_fusion_model", "render", "colour_images", "segmenter_inputs", "parse_named", "resolve_kinds",
    # training
    "build_segmenter", "train_segmenter", "evaluate_segmenter",
    # results
    "KindResult", "SegBenchResult",
    # run
    "pick_picture_index", "Reporter", "Scores", "run_benchmark", "run_quick",
    # report
    "print_table", "save_picture",
]
