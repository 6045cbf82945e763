"""The trained models shipped in the package: they load, are what the docs say, and fuse sensibly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dfsfuse.baselines import baseline_fusion
from dfsfuse.data import bundled_msrs_root
from dfsfuse.export import (SHIPPED_SEGMENTER, SHIPPED_SEMANTIC, SHIPPED_SEMANTIC_TONE, SHIPPED_STUDENT, SHIPPED_TEACHER,
                            from_pretrained)
from dfsfuse.metrics import fusion_metrics_batch


@pytest.mark.parametrize("folder,architecture,kind,storage", [
    (SHIPPED_STUDENT, "student_fast", "fusion", None),
    (SHIPPED_TEACHER, "teacher", "fusion", "float16"),
    (SHIPPED_SEGMENTER, "segmenter", "segmentation", "float16"),
    (SHIPPED_SEMANTIC / "student", "student_fast", "fusion", None),
    (SHIPPED_SEMANTIC / "teacher", "teacher", "fusion", "float16"),
    (SHIPPED_SEMANTIC / "segmenter", "segmenter", "segmentation", "float16"),
    (SHIPPED_SEMANTIC_TONE / "student", "student_fast", "fusion", None),
    (SHIPPED_SEMANTIC_TONE / "teacher", "teacher", "fusion", None),
    (SHIPPED_SEMANTIC_TONE / "segmenter", "segmenter", "segmentation", "float16"),
])
def test_shipped_model_loads_in_float32_with_a_card(folder, architecture, kind, storage):
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == architecture and config["kind"] == kind
    assert config.get("storage") == storage
    model = from_pretrained(folder)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    card = (folder / "README.md").read_text()
    assert "msrs_train" in card  # what it was trained on
    if kind == "fusion":
        semantic = folder.parent in (SHIPPED_SEMANTIC, SHIPPED_SEMANTIC_TONE)
        assert config["kwargs"]["head"] == ("region-contrast" if semantic else "region")
        assert config["kwargs"].get("vis_tone", 0.0) == (0.4 if folder.parent == SHIPPED_SEMANTIC_TONE else 0.0)
        assert "| max |" in card.replace("`", "")  # held-out numbers next to the max rule


def test_shipped_student_and_teacher_fuse_a_bundled_pair_above_max_on_vif():
    """On a held-out bundled MSRS pair (never trained on) both shipped fusion networks keep
    more visual information than the max rule, and stay close to each other."""
    root = bundled_msrs_root() / "test"
    name = "00081D.png"
    ir = np.asarray(Image.open(root / "ir" / name).convert("L"), np.float64)
    vis = np.asarray(Image.open(root / "vi" / name).convert("L"), np.float64)
    a, b = (torch.from_numpy(x / 255).float()[None, None] for x in (ir, vis))
    fused = {}
    with torch.inference_mode():
        for label, folder in (("student", SHIPPED_STUDENT), ("teacher", SHIPPED_TEACHER)):
            out = from_pretrained(folder)(a, b).fused[0, 0].double().numpy()
            fused[label] = np.clip(np.round(out * 255), 0, 255)
    fused["max"] = baseline_fusion(ir, vis, "max").astype(np.float64)
    vif = {k: float(fusion_metrics_batch(f, ir, vis, metrics=("VIF",))["VIF"][0]) for k, f in fused.items()}
    assert vif["teacher"] > vif["max"] and vif["student"] > vif["max"]
    assert np.abs(fused["student"] - fused["teacher"]).mean() < 6  # grey levels


def test_shipped_semantic_student_brightens_warm_objects_and_leaves_the_rest_near_region_max():
    """On a held-out bundled MSRS pair, the segmentation-friendly student adds brightness over
    region-max where IR is warmer than its surroundings (the top 2% of relu(G2*ir − G8*ir)), and
    little elsewhere: what it was trained to do, and what the shipped metric student does not."""
    from dfsfuse.baselines import region_max_fusion, warm_contrast_map

    root = bundled_msrs_root() / "test"
    name = "00081D.png"
    ir = np.asarray(Image.open(root / "ir" / name).convert("L"), np.float64)
    vis = np.asarray(Image.open(root / "vi" / name).convert("L"), np.float64)
    a, b = (torch.from_numpy(x / 255).float()[None, None] for x in (ir, vis))
    warm = warm_contrast_map(ir)
    hot = warm >= np.quantile(warm, 0.98)
    offset = {}
    with torch.inference_mode():
        for label, folder in (("semantic", SHIPPED_SEMANTIC / "student"), ("student", SHIPPED_STUDENT)):
            d = from_pretrained(folder)(a, b).fused[0, 0].double().numpy() * 255 - region_max_fusion(ir, vis)
            offset[label] = (d[hot].mean(), np.abs(d[~hot]).mean())
    assert offset["semantic"][0] > 8 > offset["student"][0]          # grey levels on warm blobs
    assert offset["semantic"][0] > 3 * offset["semantic"][1]          # far more than anywhere else


def test_segbench_semantic_kinds_are_the_shipped_semantic_models():
    from dfsfuse.semantic_bench import resolve_kinds

    names = ["semantic-teacher", "semantic-student", "tone-teacher", "tone-student"]
    kinds, skipped = resolve_kinds(names)
    assert not skipped and [k.name for k in kinds] == names
    torch.manual_seed(0)
    ir, vis = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48)
    folders = (SHIPPED_SEMANTIC / "teacher", SHIPPED_SEMANTIC / "student",
               SHIPPED_SEMANTIC_TONE / "teacher", SHIPPED_SEMANTIC_TONE / "student")
    for kind, folder in zip(kinds, folders):
        assert str(folder) in kind.source
        with torch.no_grad():
            assert torch.equal(kind.model(ir, vis).fused, from_pretrained(folder)(ir, vis).fused)


def test_shipped_tone_student_lifts_a_night_scene_and_keeps_its_warm_objects_brightest():
    """On held-out bundled pairs (never trained on) the student trained with the night brightened lifts
    a night scene (00008N, visible mean 45 of 255) well above ``region-max`` away from warm objects,
    darkens a day scene's background (00081D, mean 109) a little, and keeps warm objects (the top 2% of
    IR's warm contrast) brighter still than their surroundings in both: people stand out by night and day."""
    from dfsfuse.baselines import region_max_fusion, warm_contrast_map

    root = bundled_msrs_root() / "test"
    model = from_pretrained(SHIPPED_SEMANTIC_TONE / "student")
    offsets = {}
    for name in ("00008N.png", "00081D.png"):
        ir = np.asarray(Image.open(root / "ir" / name).convert("L"), np.float64)
        vis = np.asarray(Image.open(root / "vi" / name).convert("L"), np.float64)
        a, b = (torch.from_numpy(x / 255).float()[None, None] for x in (ir, vis))
        warm = warm_contrast_map(ir)
        hot = warm >= np.quantile(warm, 0.98)
        with torch.inference_mode():
            d = model(a, b).fused[0, 0].double().numpy() * 255 - region_max_fusion(ir, vis)
        offsets[name] = (d[hot].mean(), d[~hot].mean(), vis.mean())
    night_hot, night_rest, night_vis = offsets["00008N.png"]
    day_hot, day_rest, day_vis = offsets["00081D.png"]
    assert night_vis < 50 < day_vis
    assert night_rest > 20 and day_rest < 0                  # grey levels over region-max
    assert night_hot > night_rest + 10 and day_hot > 30     # warm objects stand out most
