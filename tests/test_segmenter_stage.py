"""Stage 0 of the recipe: the segmenter pre-trained alone on labelled pairs fused by a rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dfsfuse.baselines import baseline_fusion
from dfsfuse.data import DatasetError
from dfsfuse.export import from_pretrained
from dfsfuse.models import create_model
from dfsfuse.run_layout import RunLayout
from dfsfuse.train.config import ConfigError, load_config
from dfsfuse.train.segmenter_stage import labelled_training_pairs, pretrain_segmenter

SMALL_SEGMENTER = {"backbone": "mobilenetv3_small_100", "fpn_dim": 16}


class _OneProcess:
    """The two things stage 0 asks of an Accelerator, for one CPU process."""

    is_main_process = True
    device = torch.device("cpu")

    def wait_for_everyone(self) -> None:
        pass


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Three 64×80 MSRS-layout pairs with labels: a bright 'person' block on IR, a 'car' on VIS."""
    root = tmp_path_factory.mktemp("labelled")
    for sub in ("ir", "vi", "Segmentation_labels"):
        (root / sub).mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        ir = rng.integers(20, 60, (64, 80)).astype(np.uint8)
        vis = rng.integers(40, 90, (64, 80)).astype(np.uint8)
        label = np.zeros((64, 80), np.uint8)
        ir[10 + i:30 + i, 10:20] = 220
        label[10 + i:30 + i, 10:20] = 2
        vis[40:56, 40 + i:70 + i] = 200
        label[40:56, 40 + i:70 + i] = 1
        Image.fromarray(ir).save(root / "ir" / f"{i:05d}.png")
        Image.fromarray(np.stack([vis] * 3, -1)).save(root / "vi" / f"{i:05d}.png")
        Image.fromarray(label).save(root / "Segmentation_labels" / f"{i:05d}.png")
    return root


def _cfg(root, *extra):
    return load_config(None, [f"data.train=[{{root: '{root}', name: tiny}}]", "data.synthetic=0",
                              "segmenter.steps=6", "segmenter.batch_size=2", "segmenter.crop=[48,64]",
                              "segmenter.warmup_steps=1", "loss.seg_loss=weighted", *extra])


def test_pairs_are_fused_by_the_rule_with_their_labels(labelled):
    images, labels, used = labelled_training_pairs(_cfg(labelled), "region-max")
    assert used == ["tiny"] and len(images) == len(labels) == 3
    ir = np.asarray(Image.open(labelled / "ir" / "00000.png"), np.float32)
    vis = np.asarray(Image.open(labelled / "vi" / "00000.png").convert("L"), np.float32)
    np.testing.assert_array_equal(images[0][0].numpy(), baseline_fusion(ir, vis, "region-max"))
    assert images[0].dtype == torch.uint8 and labels[0].shape == (64, 80)
    assert set(labels[0].unique().tolist()) == {0, 1, 2}


def test_pairs_at_a_size_are_shrunk_before_fusing_as_the_benchmark_does(labelled):
    """``size``: sources area-resized and rounded to 8 bits, then fused (not fused then resized),
    labels nearest: pixel for pixel the semantic benchmark's training images for that rule."""
    import torch.nn.functional as F
    from dfsfuse.semantic_bench import InputKind, load_labelled_split, render

    images, labels, _ = labelled_training_pairs(_cfg(labelled), "region-max", size=(32, 40))
    assert images[0].shape == (1, 32, 40) and labels[0].shape == (32, 40)
    split = load_labelled_split(labelled, size=(32, 40))
    bench = render(InputKind("region-max", rule="region-max"), split)
    for ours, theirs in zip(images, bench):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    # Independently: a 2x average pool of the sources, rounded, then the rule; labels every second pixel.
    ir = torch.from_numpy(np.asarray(Image.open(labelled / "ir" / "00000.png"), np.float32) / 255.0)
    vis = torch.from_numpy(np.asarray(Image.open(labelled / "vi" / "00000.png").convert("L"), np.float32) / 255.0)
    small = [torch.round(F.avg_pool2d(x[None, None], 2)[0, 0] * 255.0).numpy() for x in (ir, vis)]
    np.testing.assert_allclose(images[0][0].numpy().astype(np.float32), baseline_fusion(*small, "region-max"), atol=1)
    label = np.asarray(Image.open(labelled / "Segmentation_labels" / "00000.png"))
    np.testing.assert_array_equal(labels[0].numpy(), label[::2, ::2])


def test_pretraining_trains_saves_and_is_skipped_on_resume(labelled, tmp_path):
    cfg = _cfg(labelled)
    torch.manual_seed(0)
    segmenter = create_model("segmenter", **SMALL_SEGMENTER)
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    pretrain_segmenter(_OneProcess(), cfg, segmenter, tmp_path)
    saved = RunLayout(tmp_path).segmenter_init
    config = from_pretrained(saved).arch_config()
    assert config["architecture"] == "segmenter"
    changed = [k for k, v in segmenter.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "stage 0 left every weight as initialised"
    # Resumed: the saved stage is loaded into a fresh segmenter, not trained again.
    mtime = (saved / "model.safetensors").stat().st_mtime_ns
    fresh = create_model("segmenter", **SMALL_SEGMENTER)
    pretrain_segmenter(_OneProcess(), cfg, fresh, tmp_path, resume=True)
    assert (saved / "model.safetensors").stat().st_mtime_ns == mtime
    for k, v in segmenter.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)


def test_pretraining_is_off_by_default_and_needs_labels(labelled, tmp_path):
    segmenter = create_model("segmenter", **SMALL_SEGMENTER)
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    pretrain_segmenter(_OneProcess(), load_config(None, []), segmenter, tmp_path)  # segmenter.steps = 0
    assert all(torch.equal(v, before[k]) for k, v in segmenter.state_dict().items())
    assert not RunLayout(tmp_path).segmenter_init.exists()
    unlabelled = tmp_path / "unlabelled"
    for sub in ("ir", "vi"):
        (unlabelled / sub).mkdir(parents=True)
        for f in (labelled / sub).iterdir():
            (unlabelled / sub / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DatasetError, match="no set in data.train has segmentation labels"):
        pretrain_segmenter(_OneProcess(), _cfg(unlabelled), segmenter, tmp_path / "run")


def test_config_rejects_unknown_rule_and_bad_crop():
    with pytest.raises(ConfigError, match="segmenter.input"):
        load_config(None, ["segmenter.input=median"])
    with pytest.raises(ConfigError, match="segmenter.crop"):
        load_config(None, ["segmenter.crop=[0,64]"])


def test_frozen_segmenter_stays_in_eval_mode_and_only_the_fusion_learns():
    from dfsfuse.train.config import LossConfig
    from dfsfuse.train.objectives import TeacherObjective

    fusion, segmenter = create_model("student", width=4), create_model("segmenter", **SMALL_SEGMENTER)
    objective = TeacherObjective(fusion, segmenter, LossConfig(seg_ce=1.0), train_segmenter=False).train()
    assert objective.fusion.training and not objective.segmenter.training
    assert not any(p.requires_grad for p in segmenter.parameters())
    stats = {k: v.clone() for k, v in segmenter.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batch = {"ir": torch.rand(2, 1, 32, 32, generator=g), "vis_y": torch.rand(2, 1, 32, 32, generator=g),
             "label": torch.randint(0, 9, (2, 32, 32), generator=g)}
    terms = objective(batch)
    sum(terms.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())
    for k, v in segmenter.state_dict().items():  # BatchNorm running statistics untouched
        torch.testing.assert_close(v, stats[k])
