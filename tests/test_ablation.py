"""The distillation ablation (dfsfuse/ablation/, benchmarks/ablation.py): each variant switches
exactly the loss terms it names (read back from the run's log.jsonl), the definitions of the
fidelity numbers, and the JSON schema of a tiny end-to-end ablation. No ../shared/data needed:
a tiny teacher is built here, training uses synthetic scenes, held-out pairs are crops of the
bundled MSRS test pairs with made-up labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
from PIL import Image

from dfsfuse.ablation import (
    VARIANT_TERMS,
    AblationSettings,
    psnr_ssim,
    steps_to_fraction,
    train_variant,
    variant_overrides,
)
from dfsfuse.train.config import LossConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes" / "configs" / "default.yaml"
# default.yaml's student fusion loss: intensity 0.5, ssim 1, qabf 1, vif 0.2 (gradient 0).
FUSION = {"fusion_intensity", "fusion_ssim", "fusion_qabf", "fusion_vif"}
EXPECTED = {
    "alone": FUSION,
    "output": FUSION | {"output"},
    "features": FUSION | {"output", "feature", "frequency"},
    "full": FUSION | {"output", "feature", "frequency", "seg_kl", "seg_ce"},
    "ssvif": FUSION | {"output", "feature", "frequency", "seg_kl", "student_consistency"},
}
# Tiny and fast: synthetic scenes only, 32-px crops, batch 2, the smallest student.
TINY = ["data.train=[]", "data.synthetic=4", "data.synthetic_size=40", "data.repeat_real=1",
        "model.student_kwargs={width: 4}", "train.log_every=1", "train.deterministic=true"]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """An exported (untrained) tiny teacher with its segmenter in teacher/segmenter/, as stage 1 writes it."""
    import torch

    from dfsfuse.export import save_pretrained
    from dfsfuse.models import create_model

    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    torch.manual_seed(0)
    save_pretrained(create_model("teacher", dim=8, bottleneck_depth=1), folder, role="teacher")
    save_pretrained(create_model("segmenter", backbone="mobilenetv3_small_100", fpn_dim=16),
                    folder / "segmenter", role="segmenter")
    return folder


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> Path:
    """96×128 crops of two bundled held-out MSRS pairs with made-up labels (classes 0–8)."""
    from dfsfuse.data import bundled_msrs_root

    root = tmp_path_factory.mktemp("heldout")
    rng = np.random.default_rng(0)
    for sub in ("ir", "vi", "Segmentation_labels"):
        (root / sub).mkdir()
    for src in sorted((bundled_msrs_root() / "test" / "ir").glob("*.png"))[:2]:
        for sub in ("ir", "vi"):
            with Image.open(bundled_msrs_root() / "test" / sub / src.name) as img:
                img.crop((200, 150, 328, 246)).save(root / sub / src.name)
        label = np.zeros((96, 128), np.uint8)
        label[20:60, 30:90] = rng.integers(1, 9)
        Image.fromarray(label, mode="L").save(root / "Segmentation_labels" / src.name)
    return root


def _settings(tiny_teacher: Path, heldout: Path, work: Path, **kw) -> AblationSettings:
    base = dict(teacher=str(tiny_teacher), config=str(CONFIG), overrides=list(TINY), seeds=[0], steps=2,
                batch_size=2, crop=32, curve_every=1, curve_images=1, max_images=1,
                eval_sets={"heldout": str(heldout)}, miou_set="heldout", work_dir=str(work))
    base.update(kw)
    return AblationSettings(**base)


@pytest.mark.parametrize("variant", list(VARIANT_TERMS))
def test_each_variant_switches_exactly_its_terms(variant, tiny_teacher, heldout, tmp_path):
    settings = _settings(tiny_teacher, heldout, tmp_path)
    run = train_variant(settings, variant, seed=0, run_dir=tmp_path / variant, check_terms=False)
    logged = set()
    for line in (run.run_dir / "log.jsonl").read_text().splitlines():
        logged |= {k.split("/", 1)[1] for k in json.loads(line) if k.startswith("student/")}
    assert logged - {"loss", "lr"} == EXPECTED[variant]
    assert run.cfg.loss.semantic_weighting is (variant in ("full", "ssvif"))
    assert run.cfg.stage_steps("student") == 2
    # the loop kept every checkpoint (one per step): the fidelity curve reads them back
    assert sorted(p.name for p in (run.run_dir / "checkpoints" / "student").iterdir()) == \
        ["step_000001", "step_000002"]


def test_variant_overrides_switch_terms_on_even_when_the_base_has_them_off():
    base = load_config(CONFIG, ["loss.output=0", "loss.seg_kl=0", "loss.student_fusion=0"]).loss
    full = load_config(CONFIG, ["loss.output=0", "loss.seg_kl=0", "loss.student_fusion=0",
                                *variant_overrides("full", base)]).loss
    defaults = LossConfig()
    assert full.output == defaults.output > 0 and full.seg_kl == defaults.seg_kl > 0
    assert full.student_fusion == defaults.student_fusion > 0
    assert full.feature == load_config(CONFIG).loss.feature  # the base's own weight is kept
    alone = load_config(CONFIG, variant_overrides("alone", base)).loss
    assert (alone.output, alone.feature, alone.frequency, alone.seg_kl, alone.seg_ce) == (0, 0, 0, 0, 0)
    assert alone.semantic_weighting is False and alone.student_fusion > 0
    ssvif = load_config(CONFIG, variant_overrides("ssvif", base)).loss
    assert ssvif.seg_ce == 0 and ssvif.student_consistency > 0 and ssvif.semantic_weighting is True
    assert (full.student_consistency, alone.student_consistency) == (0, 0)
    with pytest.raises(ValueError, match="unknown variant"):
        AblationSettings(variants=["nope"]).validate()


def test_time_estimate_covers_every_variant():
    from dfsfuse.ablation import estimate_seconds

    settings = AblationSettings(variants=list(VARIANT_TERMS), seeds=[0])
    per_variant = {v: estimate_seconds(AblationSettings(variants=[v], seeds=[0]), 3, 1) for v in VARIANT_TERMS}
    assert all(t > 0 for t in per_variant.values())
    base = 3 * 5.0  # the setup is counted once
    assert estimate_seconds(settings, 3, 1) == pytest.approx(sum(t - base for t in per_variant.values()) + base)


def test_fidelity_definitions():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (48, 64)).astype(np.float32)
    assert psnr_ssim(a, a) == (100.0, pytest.approx(1.0, abs=1e-6))
    b = np.clip(a + 10, 0, 255)
    mse = np.mean(((a - b) / 255.0) ** 2)
    psnr, ssim = psnr_ssim(a, b)
    assert psnr == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)  # images scaled in float32
    assert 0 < ssim < 1
    curve = [(0, 20.0), (10, 29.0), (20, 28.0), (30, 29.6), (40, 30.0)]
    assert steps_to_fraction(curve) == 30          # 29.5 = 20 + 0.95·10; step 10 dips below later
    assert math.isnan(steps_to_fraction([(0, 30.0), (10, 25.0)]))   # no gain: undefined


def test_tiny_end_to_end_ablation_json_schema_and_reuse(tiny_teacher, heldout, tmp_path):
    script = load_script(REPO / "benchmarks" / "ablation.py", "ablation_bench")
    out = tmp_path / "ablation.json"
    argv = [*TINY, "--teacher", str(tiny_teacher), "--config", str(CONFIG), "--variants", "alone", "output",
            "--seeds", "1", "--steps", "2", "--batch-size", "2", "--crop", "32", "--curve-every", "1",
            "--curve-images", "1", "--max-images", "1", "--eval-set", f"heldout={heldout}", "--miou-set", "heldout",
            "--work", str(tmp_path / "work"), "--json", str(out), "--threads", "1"]
    assert script.main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"settings", "results"}
    assert set(report["results"]) == {"alone", "output"}
    for variant, metrics in report["results"].items():
        assert {"fidelity_psnr", "fidelity_ssim", "VIF", "Qabf", "miou", "steps_to_95"} <= set(metrics)
        assert all(isinstance(v, list) and len(v) == 1 for v in metrics.values())
        assert 0 < metrics["fidelity_ssim"][0] <= 1 and metrics["steps_to_95"][0] in (0, 1, 2, None)
        assert [c[0] for c in report["settings"]["curves"][variant]["0"]] == [0, 1, 2]
    assert set(report["settings"]["logged_terms"]["output"]) == EXPECTED["output"]
    assert {"teacher", "max", "avg"} <= set(report["settings"]["references"])
    assert out.with_suffix(".png").stat().st_size > 0
    # a second invocation reuses the finished runs (same fingerprint) and reports the same numbers
    assert script.main(argv) == 0
    assert json.loads(out.read_text())["results"] == report["results"]


def test_miou_comes_from_the_scoring_pass_with_the_numbers_of_a_separate_pass(tiny_teacher, heldout, tmp_path):
    """evaluate_student / reference_metrics segment the labelled miou_set inside evaluate_fusion
    (segmenter=..., that set only) and get exactly what evaluate_segmentation_real gives."""
    import shutil

    import torch

    from dfsfuse.ablation import evaluate_student, load_heldout, open_eval_sets, reference_metrics
    from dfsfuse.models import create_model
    from dfsfuse.train.evaluate import evaluate_fusion, evaluate_segmentation_real
    from dfsfuse.train.stages import load_teacher

    other = tmp_path / "other"  # a second labelled set that is not the miou_set: never segmented
    shutil.copytree(heldout, other)
    settings = _settings(tiny_teacher, heldout, tmp_path, max_images=2,
                         eval_sets={"heldout": str(heldout), "other": str(other)})
    device = torch.device("cpu")
    teacher, segmenter = load_teacher(tiny_teacher, device)
    datasets = open_eval_sets(settings.eval_sets)
    pairs = load_heldout(datasets, teacher, settings.max_images)
    torch.manual_seed(0)
    student = create_model("student", width=4).eval()
    separate = evaluate_segmentation_real(segmenter, {"student": student, "teacher": teacher},
                                          {"heldout": datasets["heldout"]}, device, max_images=2,
                                          show_progress=False)["heldout"]["miou"]

    metrics = evaluate_student(student, segmenter, datasets, pairs, settings, device)
    assert metrics["miou"] == separate["student"]
    assert "other/VIF" in metrics
    report = evaluate_fusion({"student": student}, datasets, device, max_images=1, show_progress=False,
                             baselines=(), segmenter=segmenter, segment_sets=("heldout",))
    assert set(report.segmentation) == {"heldout"}  # "other" is labelled too, but not asked for
    references = reference_metrics(teacher, segmenter, datasets, pairs, settings, device)
    for kind in ("teacher", "max", "ir", "vis"):
        assert references[kind]["miou"] == separate[kind], kind
    assert "miou" not in evaluate_student(student, None, datasets, pairs, settings, device)
