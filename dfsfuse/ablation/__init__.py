"""Ablation of the distilled semantic loss, and quality per multiply-add (library behind ``benchmarks/ablation.py``).

The same student architecture, data, steps and seeds are trained as *variants* that differ
only in the ``loss.*`` weights of the student stage (:data:`VARIANT_TERMS`):

* ``alone``    – the student's own fusion loss only, no teacher term;
* ``output``   – + output distillation ``|F_s − F_t|``;
* ``features`` – + feature (1×1 adapters) and wavelet sub-band distillation;
* ``full``     – the full distilled semantic loss: the above weighted per pixel by the
  segmenter's semantic map, + seg KL (student vs teacher segmentation), + seg CE on labels;
* ``ssvif``    – ``full`` with SSVIF's label-free cross-segmentation consistency instead of
  the labels (``loss.student_consistency``: a feature-level segmentation of the student's
  features must agree with the frozen segmenter on its fusion; no seg CE, no label read).

Every run goes through the recipe's own machinery — :func:`dfsfuse.train.stages.build_models`
and :func:`~dfsfuse.train.stages.distill_student` with an exported teacher folder (stage 1
skipped), the loop's checkpoints and its ``log.jsonl`` — never a second training loop. The
held-out fidelity curve is read back from the checkpoints the loop writes every
``curve_every`` steps (``train.checkpoint_every``, ``train.keep_checkpoints=0`` keeps them all).

Definitions (on held-out pairs never trained on, fusions rounded to 8 bits as saved):

* ``fidelity_psnr``: mean over pairs of ``10·log10(1 / MSE)`` between the student's and the
  teacher's fused luminance in [0, 1] (peak 1; an MSE below 1e-10 counts as 100 dB);
* ``fidelity_ssim``: mean over pairs of the mean of :func:`dfsfuse.losses.ssim_map` (Gaussian
  window 11, σ 1.5, data range 1) of student vs teacher;
* standard metrics (``VIF``, ``Qabf``, …): :func:`dfsfuse.train.evaluate.evaluate_fusion`, the
  mean over the held-out sets of each set's mean (every set weighs the same); ``SET/METRIC`` per set;
* ``miou``: the teacher's segmenter fed with the student's fusion on the labelled ``miou_set``
  (MSRS val), segmented by the same :func:`~dfsfuse.train.evaluate.evaluate_fusion` call on the
  8-bit fusions it scores (``segmenter=``; the numbers of ``evaluate_segmentation_real``);
* ``steps_to_95``: the first evaluated step ``s`` (0 = the initial weights, then every
  ``curve_every`` steps) from which the fidelity PSNR on the first ``curve_images`` held-out
  pairs stays at or above ``P(0) + 0.95·(P(final) − P(0))``: 95% of the final fidelity gain
  (null when the final PSNR is not above the initial one).

Modules (one concern each): :mod:`~dfsfuse.ablation.settings` (the variant catalogue,
:class:`AblationSettings` and its presets), :mod:`~dfsfuse.ablation.variants` (variants → config
overrides, expected and logged loss terms), :mod:`~dfsfuse.ablation.heldout` (held-out pairs and
fidelity), :mod:`~dfsfuse.ablation.runs` (one run trained, scored and recorded),
:mod:`~dfsfuse.ablation.benchmark` (the plan, time estimate, reference metrics, :func:`run_benchmark`),
:mod:`~dfsfuse.ablation.report` (table and charts).
"""

from .benchmark import (
    CURVE_SECONDS_PER_PAIR,
    EVAL_SECONDS_PER_PAIR,
    LATENCY_SIZE,
    MIOU_SECONDS_PER_IMAGE,
    SETUP_SECONDS_PER_PAIR,
    STEP_SECONDS,
    estimate_seconds,
    finished_runs,
    planned_runs,
    reference_metrics,
    result_key,
    run_benchmark,
    summarise,
    write_json,
)
from .heldout import PSNR_CAP_DB, HeldoutPair, fidelity, load_heldout, open_eval_sets, psnr_ssim, steps_to_fraction
from .report import MAIN_METRICS, plot_curves, plot_quality_per_mac, results_table
from .runs import (
    RunOutcome,
    TrainedRun,
    evaluate_student,
    fidelity_curve,
    teacher_digest,
    train_and_score,
    train_variant,
)
from .settings import (
    DEFAULT_SIZES,
    NOT_RUN,
    SEMANTIC_WEIGHTING,
    SIZE_VARIANTS,
    VARIANT_DESCRIPTIONS,
    VARIANT_TERMS,
    AblationSettings,
    fast_settings,
    full_settings,
)
from .variants import (
    DISTILL_TERMS,
    TERM_WEIGHTS_WHEN_ON,
    expected_terms,
    logged_terms,
    run_config,
    run_overrides,
    student_overrides,
    variant_overrides,
)

__all__ = [
    # settings
    "VARIANT_TERMS", "SEMANTIC_WEIGHTING", "VARIANT_DESCRIPTIONS", "NOT_RUN", "DEFAULT_SIZES", "SIZE_VARIANTS",
    "AblationSettings", "fast_settings", "full_settings",
    # variants
    "DISTILL_TERMS", "TERM_WEIGHTS_WHEN_ON", "variant_overrides", "expected_terms", "logged_terms",
    "student_overrides", "run_overrides", "run_config",
    # heldout
    "PSNR_CAP_DB", "HeldoutPair", "open_eval_sets", "load_heldout", "psnr_ssim", "fidelity", "steps_to_fraction",
    # runs
    "RunOutcome", "teacher_digest", "evaluate_student", "TrainedRun", "train_variant", "fidelity_curve",
    "train_and_score",
    # benchmark
    "LATENCY_SIZE", "planned_runs", "STEP_SECONDS", "EVAL_SECONDS_PER_PAIR", "MIOU_SECONDS_PER_IMAGE",
    "CURVE_SECONDS_PER_PAIR", "SETUP_SECONDS_PER_PAIR", "finished_runs", "estimate_seconds", "summarise",
    "reference_metrics", "result_key", "run_benchmark", "write_json",
    # report
    "MAIN_METRICS", "results_table", "plot_curves", "plot_quality_per_mac",
]
