"""The related methods as variants: what defines each idea, checked on small hand-made inputs.

- SSPFusion: Sobel structural signals, the structure loss, structure-guided fusion weights.
- SSCM-Fusion: CBAM attention maps and CMDFC's use of the modality difference.
- SSVIF: cross-segmentation consistency, the warm-up switch, dynamic weights, no label read.
- Each shipped variant config runs end to end (slow).
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import load_script
from PIL import Image
from torch import Tensor, nn

import dfsfuse.data.pairs
from dfsfuse.losses import (
    FusionLoss,
    cross_seg_consistency,
    sobel_structure,
    structure_loss,
    structure_magnitude,
)
from dfsfuse.models import (
    FusionModel,
    FusionOutput,
    SegmentationModel,
    SegmentationOutput,
    create_model,
    list_models,
)
from dfsfuse.models.sscm import CBAM, CMDFC, ChannelGate, SpatialGate
from dfsfuse.models.sspfusion import SPFLevel, SSPFusion, SSPFusionOutput
from dfsfuse.train.config import LossConfig, load_config
from dfsfuse.train.data import build_train_dataset, collate_samples
from dfsfuse.train.objectives import TeacherObjective
from dfsfuse.train.ssvif import (
    SSVIF_CONFIG_KEYS,
    SSVIF_TERMS,
    FeatureSegHead,
    SSVIFObjective,
    ssvif_dynamic_weights,
)
from dfsfuse.train.tracking import read_log

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs"
K = 9


def _step_edge(height: int = 8, width: int = 10, column: int = 5) -> Tensor:
    """1×1×H×W image: 0 left of ``column``, 1 from ``column`` on (a vertical step edge)."""
    image = torch.zeros(1, 1, height, width)
    image[..., column:] = 1.0
    return image


# --- SSPFusion ----------------------------------------------------------------------------------


def test_sobel_structure_of_a_vertical_step_edge() -> None:
    signal = sobel_structure(_step_edge(column=5))
    assert signal.shape == (1, 2, 8, 10)
    gx, gy = signal[0, 0], signal[0, 1]
    # The two columns beside the step see it fully: (1 + 2 + 1) · 1; everything else is flat.
    torch.testing.assert_close(gx[:, 4:6], torch.full((8, 2), 4.0), rtol=0, atol=0)
    assert gx[:, :4].abs().max() == 0 and gx[:, 6:].abs().max() == 0
    assert gy.abs().max() == 0
    torch.testing.assert_close(structure_magnitude(signal), gx.abs()[None, None] + gy.abs()[None, None])


def test_sobel_structure_keeps_channels_and_axes_apart() -> None:
    horizontal_edge = torch.zeros(1, 1, 8, 10)
    horizontal_edge[..., 4:, :] = 1.0
    x = torch.cat([_step_edge(), horizontal_edge], dim=1)
    signal = sobel_structure(x)
    assert signal.shape == (1, 4, 8, 10)
    torch.testing.assert_close(signal[:, :2], sobel_structure(x[:, :1]))
    torch.testing.assert_close(signal[:, 2:], sobel_structure(x[:, 1:]))
    assert signal[:, 3].abs().max() > 0 and signal[:, 2].abs().max() == 0  # horizontal edge: gy only


def test_structure_loss_is_zero_only_for_the_source_structure() -> None:
    source = torch.rand(2, 1, 16, 12, generator=torch.Generator().manual_seed(0))
    exact = sobel_structure(source)
    assert structure_loss(exact, source) == 0
    assert structure_loss(exact + 0.1, source) == pytest.approx(0.1)
    assert structure_loss(sobel_structure(source.flip(-1)), source) > 0
    with pytest.raises(ValueError, match="does not match"):
        structure_loss(exact[:, :1], source)


def test_sspfusion_signals_are_sobel_of_the_extracted_features() -> None:
    torch.manual_seed(0)
    model = SSPFusion(width=4, depth=1).eval()
    ir, vis = torch.rand(2, 1, 24, 32), torch.rand(2, 1, 24, 32)  # divisible by the stride: no padding
    with torch.no_grad():
        out = model(ir, vis)
        expected = sobel_structure(model.sfe_ir.to_structure(model.sfe_ir.features(ir)))
    assert isinstance(out, SSPFusionOutput) and isinstance(out, FusionOutput)
    assert list(out.signals) == ["structure_ir", "structure_vis"]
    torch.testing.assert_close(out.signals["structure_ir"], expected)
    assert model.feature_channels == {"enc_ir": 4, "enc_vis": 4, "fusion": 4, "decoder": 4}


def test_sspfusion_structure_loss_through_auxiliary_losses() -> None:
    torch.manual_seed(0)
    model = SSPFusion(width=4, depth=1, structure_weight=0.3)
    ir, vis = torch.rand(1, 1, 21, 27), torch.rand(1, 1, 21, 27)  # odd size: signals cropped back
    out = model(ir, vis)
    assert out.signals["structure_vis"].shape == (1, 2, 21, 27)
    terms = model.auxiliary_losses(out, ir, vis)
    expected = (
        0.3 * (structure_loss(out.signals["structure_ir"], ir) + structure_loss(out.signals["structure_vis"], vis)) / 2
    )
    assert set(terms) == {"structure"}
    torch.testing.assert_close(terms["structure"], expected)
    assert SSPFusion(width=4, depth=1, structure_weight=0.0).auxiliary_losses(out, ir, vis) == {}

    # The training objective picks the term up, and minimising it aligns the signals with the inputs.
    objective = TeacherObjective(model, None, LossConfig(intensity=0.0, gradient=0.0, seg_ce=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    values = []
    for _ in range(3):
        terms = objective({"ir": ir, "vis_y": vis})
        assert set(terms) == {"aux_structure"}
        values.append(terms["aux_structure"].detach().item())
        optimizer.zero_grad()
        terms["aux_structure"].backward()
        optimizer.step()
    assert values[-1] < values[0]


def test_spf_weights_follow_the_structural_signals() -> None:
    torch.manual_seed(0)
    level = SPFLevel(width=3)
    with torch.no_grad():
        level.gate[-1].weight.zero_()  # no learned correction: the signals alone decide
    f_ir, f_vis = torch.rand(1, 3, 6, 8), torch.rand(1, 3, 6, 8)
    strength = torch.zeros(1, 2, 6, 8)
    strength[:, 0, :, :4] = 2.0  # IR has the edges on the left, VIS on the right
    strength[:, 1, :, 4:] = 2.0
    weights = level.weights(f_ir, f_vis, strength)
    assert weights.shape == (1, 2, 6, 8)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(1, 6, 8))
    assert (weights[:, 0, :, :4] > 0.85).all() and (weights[:, 1, :, 4:] > 0.85).all()


def test_sspfusion_scales_set_the_padding_stride() -> None:
    assert SSPFusion(scales=(1, 2, 4)).stride == 4 and SSPFusion(scales=(1, 3)).stride == 3
    with pytest.raises(ValueError, match="scales"):
        SSPFusion(scales=(0, 2))


# --- SSCM-Fusion --------------------------------------------------------------------------------


def test_cbam_attention_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 11) * 5
    channel, spatial = ChannelGate(8), SpatialGate()
    mc, ms = channel(x), spatial(x)
    assert mc.shape == (2, 8, 1, 1) and ms.shape == (2, 1, 9, 11)
    for w in (mc, ms):
        assert (w >= 0).all() and (w <= 1).all()
    cbam = CBAM(8)
    refined = x * cbam.channel(x)
    torch.testing.assert_close(cbam(x), refined * cbam.spatial(refined))
    assert torch.equal(cbam(torch.zeros(2, 8, 9, 11)), torch.zeros(2, 8, 9, 11))


def test_cmdfc_compensates_with_the_modality_difference() -> None:
    torch.manual_seed(0)
    module = CMDFC(6)
    f_ir, f_vis = torch.randn(2, 6, 7, 9), torch.randn(2, 6, 7, 9)

    # Each modality receives CBAM of (other − itself).
    c_ir, c_vis = module.compensation(f_ir, f_vis)
    torch.testing.assert_close(c_ir, module.to_ir(f_vis - f_ir))
    torch.testing.assert_close(c_vis, module.to_vis(f_ir - f_vis))
    out_ir, out_vis = module(f_ir, f_vis)
    torch.testing.assert_close(out_ir, f_ir + c_ir)
    torch.testing.assert_close(out_vis, f_vis + c_vis)

    # Identical features: zero difference, CBAM(0) = 0, nothing is added.
    same_ir, same_vis = module(f_ir, f_ir)
    assert torch.equal(same_ir, f_ir) and torch.equal(same_vis, f_ir)

    # Only the difference matters: a content shared by both modalities adds nothing.
    shared = torch.randn(2, 6, 7, 9)
    for before, after in zip(module.compensation(f_ir, f_vis), module.compensation(f_ir + shared, f_vis + shared)):
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

    # With tied CBAMs, swapping the modalities swaps the compensations.
    module.to_vis.load_state_dict(module.to_ir.state_dict())
    a_ir, a_vis = module.compensation(f_ir, f_vis)
    b_ir, b_vis = module.compensation(f_vis, f_ir)
    torch.testing.assert_close(b_ir, a_vis)
    torch.testing.assert_close(b_vis, a_ir)


def test_sscm_runs_cmdfc_at_every_stage() -> None:
    torch.manual_seed(0)
    model = create_model("sscm", widths=[4, 6, 8])
    calls = []
    for stage in model.stages:
        stage.cmdfc.register_forward_hook(lambda m, inputs, output: calls.append(inputs[0].shape[1]))
    out = model(torch.rand(1, 1, 13, 17), torch.rand(1, 1, 13, 17))
    assert calls == [6, 8]
    assert model.feature_channels == {"enc_ir": 8, "enc_vis": 8, "fusion": 8, "decoder": 4}
    assert out.features["decoder"].shape == (1, 4, 13, 17)


def test_variants_are_registered_fusion_models_usable_as_teacher_or_student() -> None:
    assert {"sspfusion", "sscm"} <= set(list_models("fusion"))
    cfg = load_config(overrides=["model.teacher=sscm", "model.student=sspfusion", "model.student_kwargs={width: 8}"])
    assert (cfg.model.teacher, cfg.model.student) == ("sscm", "sspfusion")
    student = create_model(cfg.model.student, **cfg.model.student_kwargs)
    assert student.arch_config() == {
        "architecture": "sspfusion",
        "kwargs": {"width": 8, "depth": 2, "scales": [1, 2, 4], "structure_weight": 0.5, "head": "region"},
    }


# --- SSVIF ----------------------------------------------------------------------------------------


class _PixelFusion(FusionModel):
    """Stand-in fusion model: fused = mean of the inputs, ``features["fusion"]`` = the fused image."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.tensor(0.5))

    @property
    def feature_channels(self) -> dict[str, int]:
        return {"enc_ir": 1, "enc_vis": 1, "fusion": 1, "decoder": 1}

    def forward(self, ir: Tensor, vis_y: Tensor) -> FusionOutput:
        fused = self.mix * ir + (1 - self.mix) * vis_y
        return FusionOutput(fused, OrderedDict(enc_ir=ir, enc_vis=vis_y, fusion=fused, decoder=fused))


class _PixelSegmenter(SegmentationModel):
    """Stand-in segmenter: a 1×1 conv from the image to K logits."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = K
        self.classify = nn.Conv2d(1, K, 1)

    @property
    def feature_channels(self) -> dict[str, int]:
        return {}

    def forward(self, image: Tensor) -> SegmentationOutput:
        return SegmentationOutput(self.classify(image))


class _SameAsSegmenter(nn.Module):
    """A feature head that segments the fused features exactly as the segmenter segments the image."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, features: Tensor) -> Tensor:
        return self.segmenter(features).logits


def _toy_objective(warmup: int = 0) -> SSVIFObjective:
    torch.manual_seed(0)
    return SSVIFObjective(_PixelFusion(), _PixelSegmenter(), FusionLoss(), consistency=0.5, warmup=warmup)


def _toy_batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"ir": torch.rand(2, 1, 16, 16, generator=g), "vis_y": torch.rand(2, 1, 16, 16, generator=g)}


def test_ssvif_consistency_is_zero_for_identical_segmentations_positive_otherwise() -> None:
    objective = _toy_objective()
    terms = objective(_toy_batch())
    assert list(terms) == ["fusion", "consistency"]
    assert terms["consistency"] > 0  # an untrained feature head disagrees with the segmenter

    objective.feature_head = _SameAsSegmenter(objective.segmenter)
    assert objective(_toy_batch())["consistency"] == 0

    batch = _toy_batch()
    out = objective.fusion(batch["ir"], batch["vis_y"])
    pixel = objective.segmenter(out.fused).logits
    torch.testing.assert_close(
        _toy_objective()(batch)["consistency"],
        0.5 * cross_seg_consistency(_toy_objective().feature_head(out.features["fusion"]), pixel),
    )


def test_ssvif_warmup_switch() -> None:
    objective = _toy_objective(warmup=2)
    batch = _toy_batch()
    for step, joint in ((0, False), (1, False), (2, True), (5, True)):
        objective.set_step(step)
        assert objective.joint is joint
        objective.zero_grad(set_to_none=True)
        terms = objective(batch)
        terms["consistency"].backward()
        grads = {n: p.grad for n, p in objective.named_parameters()}
        # Every parameter takes part in every step (DDP), ...
        assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
        if joint:  # ... the consistency trains the fusion only in the joint stage.
            assert terms["consistency"] > 0 and grads["fusion.mix"].abs() > 0
        else:
            assert terms["consistency"] == 0 and all(g.abs().sum() == 0 for g in grads.values())


def test_ssvif_dynamic_weights_wait_for_the_joint_stage() -> None:
    cfg = SimpleNamespace(consistency_dynamic=True, consistency_warmup=3, dynamic_temperature=2.0)
    dynamic = ssvif_dynamic_weights(cfg)
    assert dynamic.names == list(SSVIF_TERMS)
    history = [{"fusion": 1.0 - 0.1 * s, "consistency": 0.0 if s < 3 else 1.0 / (s - 1) ** 2} for s in range(7)]
    for step, values in enumerate(history):
        if step < 3 + 2:
            assert dynamic.weights == {"fusion": 1.0, "consistency": 1.0}, step
        dynamic.update(values)
    weights = dynamic.weights
    assert weights["fusion"] + weights["consistency"] == pytest.approx(2.0)
    assert weights["fusion"] > weights["consistency"]  # the consistency drops faster here
    assert ssvif_dynamic_weights(SimpleNamespace(consistency_dynamic=False)) is None


def test_ssvif_term_names_are_what_forward_returns_and_dynamic_weighting_balances() -> None:
    objective = _toy_objective()
    assert objective.term_names == list(SSVIF_TERMS) == ["fusion", "consistency"]
    assert list(objective(_toy_batch())) == objective.term_names  # no aux/diversity/confidence terms here
    cfg = SimpleNamespace(consistency_dynamic=True, consistency_warmup=0, dynamic_temperature=2.0)
    assert ssvif_dynamic_weights(cfg).names == objective.term_names


def test_ssvif_objective_validates_its_settings() -> None:
    for kwargs, match in (
        ({"consistency": 0.0}, "consistency"),
        ({"warmup": -1}, "warmup"),
        ({"temperature": 0.0}, "temperature"),
    ):
        with pytest.raises(ValueError, match=match):
            SSVIFObjective(_PixelFusion(), _PixelSegmenter(), FusionLoss(), **kwargs)


def test_feature_seg_head_gives_full_size_logits() -> None:
    head = FeatureSegHead(5, K, width=8)
    assert head(torch.rand(2, 5, 13, 19)).shape == (2, K, 13, 19)


@pytest.fixture()
def labelled_msrs(tmp_path: Path) -> Path:
    """A tiny MSRS-layout dataset (train split) that HAS segmentation label files."""
    rng = np.random.default_rng(0)
    for sub in ("ir", "vi", "Segmentation_labels"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    for name in ("00001D", "00002N"):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(tmp_path / "train" / "ir" / f"{name}.png")
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            tmp_path / "train" / "vi" / f"{name}.png"
        )
        Image.fromarray(rng.integers(0, K, (40, 48), dtype=np.uint8)).save(
            tmp_path / "train" / "Segmentation_labels" / f"{name}.png"
        )
    return tmp_path


def _ssvif_yaml() -> dict:
    return yaml.safe_load((CONFIGS / "ssvif.yaml").read_text())


def _ssvif_run_config(tmp_path: Path, root: Path):
    """ssvif.yaml's data section on ``root`` (tiny), as a validated RunConfig."""
    data = dict(
        _ssvif_yaml()["data"],
        train=[{"root": str(root), "split": "train", "name": "labelled"}],
        synthetic=4,
        synthetic_size=32,
        crop=32,
        repeat_real=1,
    )
    path = tmp_path / "ssvif_data.yaml"
    path.write_text(yaml.safe_dump({"data": data, "model": _ssvif_yaml()["model"]}))
    return load_config(path)


def _refuse_labels(*args, **kwargs):
    raise AssertionError("a segmentation label file was opened")


def test_labels_are_never_loaded_when_data_labels_is_false(labelled_msrs, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(dfsfuse.data.pairs, "read_label", _refuse_labels)
    cfg = _ssvif_run_config(tmp_path, labelled_msrs)
    assert cfg.data.labels is False
    dataset = build_train_dataset(cfg.data, seed=0)
    samples = [dataset[i] for i in range(len(dataset))]
    assert len(samples) == 2 + 4 and all("label" not in s for s in samples)
    assert "label" not in collate_samples(samples)

    # Control: with labels on, the same folder does open its label files.
    with pytest.raises(AssertionError, match="label file was opened"):
        build_train_dataset(dataclasses.replace(cfg.data, labels=True), seed=0)[0]


def test_ssvif_objective_on_a_label_free_training_batch(labelled_msrs, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(dfsfuse.data.pairs, "read_label", _refuse_labels)
    cfg = _ssvif_run_config(tmp_path, labelled_msrs)
    batch = collate_samples([build_train_dataset(cfg.data, seed=0)[i] for i in (0, 3)])
    assert "label" not in batch
    torch.manual_seed(0)
    fusion = create_model(cfg.model.teacher, **cfg.model.teacher_kwargs)
    segmenter = create_model(cfg.model.segmenter, **cfg.model.segmenter_kwargs)
    objective = SSVIFObjective.from_config(fusion, segmenter, load_config(CONFIGS / "ssvif.yaml").loss)
    assert objective.warmup == _ssvif_yaml()["loss"]["consistency_warmup"] and objective.w_consistency == 0.5
    objective.set_step(objective.warmup)
    terms = objective(batch)
    assert list(terms) == ["fusion", "consistency", "diversity"]  # ssvif.yaml: the anti-collapse term is on
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    sum(terms.values()).backward()
    assert objective.feature_head.classifier.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.fusion.parameters())


def test_ssvif_config_is_label_free_and_selects_ssvif() -> None:
    cfg = load_config(CONFIGS / "ssvif.yaml")
    assert cfg.data.labels is False and cfg.loss.seg_ce == 0 and cfg.loss.semantic_weighting is False
    assert cfg.loss.consistency > 0 and 0 < cfg.loss.consistency_warmup < cfg.teacher.steps
    assert set(SSVIF_CONFIG_KEYS) <= {f.name for f in dataclasses.fields(cfg.loss)}


# --- configs end to end ---------------------------------------------------------------------------

TINY = [
    "data.synthetic=8",
    "data.synthetic_size=48",
    "data.crop=32",
    "data.repeat_real=1",
    "eval.max_images=1",
    "eval.synthetic=2",
    "eval.synthetic_size=64",
    "eval.latency_runs=0",
    "teacher.steps=2",
    "student.steps=2",
    "teacher.batch_size=4",
    "student.batch_size=4",
    "teacher.warmup_steps=1",
    "student.warmup_steps=1",
    "train.log_every=1",
    "train.checkpoint_every=2",
]


@pytest.fixture(scope="module")
def small_heldout(tmp_path_factory) -> Path:
    """A 64×96 crop of one bundled held-out MSRS pair, as the tiny runs' evaluation set."""
    from dfsfuse.data import bundled_msrs_root

    root = tmp_path_factory.mktemp("heldout")
    for sub in ("ir", "vi"):
        (root / sub).mkdir()
        src = min((bundled_msrs_root() / "test" / sub).glob("*.png"))
        with Image.open(src) as img:
            img.crop((200, 150, 296, 214)).save(root / sub / src.name)
    return root


def _recipe():
    return load_script(REPO / "recipes" / "distill.py", "distill_recipe")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("sspfusion", []),
        ("sscm", []),
        ("sscm", ["model.student=sspfusion", "model.student_kwargs={width: 4, depth: 1}"]),
    ],
    ids=["sspfusion", "sscm", "sscm-to-sspfusion-student"],
)
def test_variant_config_runs_end_to_end(name: str, extra: list, small_heldout: Path, tmp_path: Path) -> None:
    config = CONFIGS / f"{name}.yaml"
    assert load_config(config).model.teacher == name
    out = tmp_path / name
    overrides = [*TINY, f"eval.sets=[{{root: '{small_heldout}', name: heldout}}]", *extra]
    assert _recipe().main(["--config", str(config), *overrides, "--output", str(out)]) == 0
    assert json.loads((out / "teacher" / "config.json").read_text())["architecture"] == name
    student = json.loads((out / "student" / "config.json").read_text())["architecture"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["teacher"]) == {"heldout"} and set(metrics["student"]) == {"heldout"}
    terms = {k for record in read_log(out / "log.jsonl") for k in record}
    assert "teacher/seg_ce" in terms and "student/output" in terms
    # SSPFusion's structure loss joins whichever stage trains it.
    assert ("teacher/aux_structure" in terms) == (name == "sspfusion")
    assert ("student/aux_structure" in terms) == (student == "sspfusion")


@pytest.mark.slow
def test_ssvif_config_runs_end_to_end_without_reading_labels(labelled_msrs, small_heldout, tmp_path,
                                                             monkeypatch) -> None:
    """Label files exist in the training folder, yet the SSVIF run never opens one."""
    monkeypatch.setattr(dfsfuse.data.pairs, "read_label", _refuse_labels)
    out = tmp_path / "ssvif"
    overrides = [*TINY, "teacher.steps=3", "loss.consistency_warmup=1",
                 f"data.train=[{{root: '{labelled_msrs}', split: train, name: labelled}}]",
                 f"eval.sets=[{{root: '{small_heldout}', name: heldout}}]"]
    assert _recipe().main(["--config", str(CONFIGS / "ssvif.yaml"), *overrides, "--output", str(out)]) == 0
    log = [r for r in read_log(out / "log.jsonl") if "teacher/loss" in r]
    assert all("teacher/fusion" in r and "teacher/consistency" in r and "teacher/seg_ce" not in r for r in log)
    # Warm-up: the consistency term is weighted 0 at step 1, then trains jointly.
    assert log[0]["teacher/consistency"] == 0.0 and log[-1]["teacher/consistency"] > 0
    assert (out / "student" / "model.safetensors").is_file()
