"""Torch-free constants that command-line parsers need (choices, defaults).

``dfsfuse --help`` must stay fast, so building the parsers imports nothing heavy (no torch,
numpy or models). A subcommand whose options list choices defined next to heavy code keeps
those choices here, and the heavy module imports them from here (one source of truth).
``tests/test_cli_help.py`` fails if building the parsers imports torch.
"""

from __future__ import annotations

from typing import Dict, Tuple

BENCH_MODES: Tuple[str, ...] = ("eager", "channels_last", "compile", "bf16", "fp16", "onnxruntime")
"""Every mode :func:`dfsfuse.bench.run_benchmark` knows: fp32 eager, channels-last memory format,
``torch.compile``, bf16 / fp16 autocast, and the model exported to ONNX (``dynamo=False``) run by
ONNX Runtime."""

BENCH_DEFAULT_MODELS: Tuple[str, ...] = ("teacher", "student", "segmenter")
"""Models ``dfsfuse bench`` measures when ``--models`` is not given."""

BASELINE_METHODS: Tuple[str, ...] = ("avg", "max", "ir", "vis", "max-gain", "poisson", "region-max", "laplacian",
                                     "ir-contrast", "region-contrast", "gamma-contrast")
"""Every method :func:`dfsfuse.baselines.baseline_fusion` accepts."""

STRETCH_MODES: Tuple[str, ...] = ("none", "minmax")
"""Scoring conventions for fused images (:func:`dfsfuse.metrics.stretch.apply_stretch`): as saved, or
min–max stretched per image as many papers' test scripts do."""

HEAD_CONVERSIONS: Dict[Tuple[str, str], Tuple[int, ...]] = {("region-contrast", "region-gain"): (0, 2)}
"""Output-head conversions :func:`dfsfuse.models.convert.convert_head` supports: (trained head, new
head) → the trained head's maps kept, in the new head's order (``region-contrast`` maps z, r, g)."""
