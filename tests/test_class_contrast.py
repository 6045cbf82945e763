"""benchmarks/class_contrast.py: per-class brightness offsets of a fusion from region-max."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dfsfuse.baselines import baseline_fusion, region_max_fusion
from dfsfuse.data import CLASS_NAMES
from dfsfuse.export import save_pretrained
from dfsfuse.models import create_model

from conftest import REPO, load_script

script = load_script(REPO / "benchmarks" / "class_contrast.py", "class_contrast")


def _folder(root: Path, n: int = 2, h: int = 30, w: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        for sub, arr in (("ir", rng.integers(0, 256, (h, w), dtype=np.uint8)),
                         ("vi", rng.integers(0, 256, (h, w), dtype=np.uint8)),
                         ("Segmentation_labels", rng.integers(0, 3, (h, w), dtype=np.uint8))):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / f"p{i}.png")
    return root


def test_accumulator_is_the_per_class_mean_over_all_images():
    acc = script.OffsetAccumulator()
    ref = np.zeros((2, 3))
    acc.add(np.array([[1.0, 2, 3], [4, 5, 6]]), ref, np.array([[0, 0, 1], [1, 2, 2]]))
    acc.add(np.array([[10.0, 0, 0], [0, 0, 0]]), ref, np.array([[1, 0, 0], [0, 0, 0]]))
    off = acc.offsets()
    assert off["unlabeled"] == (1 + 2 + 0 + 0 + 0 + 0 + 0) / 7
    assert off["car"] == (3 + 4 + 10) / 3
    assert off["person"] == (5 + 6) / 2
    assert off["bump"] is None
    assert acc.psnr[1] == 10 * np.log10(255 ** 2 / (100 / 6))


def test_script_scores_rules_and_models_against_an_independent_computation(tmp_path, capsys):
    data = _folder(tmp_path / "val")
    torch.manual_seed(0)
    save_pretrained(create_model("student", width=4), tmp_path / "student")   # untrained: region-max exactly
    out = tmp_path / "cc.json"
    assert script.main(["--data", str(data), "--rules", "max", "--model", f"s={tmp_path / 'student'}",
                        "--threads", "1", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert set(rec["offset"]) == {"max", "s"} and rec["settings"]["pairs"] == 2
    sums, counts = np.zeros(len(CLASS_NAMES)), np.zeros(len(CLASS_NAMES))
    for i in range(2):
        ir = np.asarray(Image.open(data / "ir" / f"p{i}.png"), np.float64)
        vis = np.asarray(Image.open(data / "vi" / f"p{i}.png").convert("RGB"), np.float64)
        y = 0.299 * vis[..., 0] + 0.587 * vis[..., 1] + 0.114 * vis[..., 2]   # grey PNG: y == the grey value
        lab = np.asarray(Image.open(data / "Segmentation_labels" / f"p{i}.png"))
        d = baseline_fusion(ir, y, "max").astype(np.float64) - region_max_fusion(ir, y)
        for c in range(3):
            sums[c] += d[lab == c].sum()
            counts[c] += (lab == c).sum()
    for c in range(3):
        assert abs(rec["offset"]["max"][CLASS_NAMES[c]] - sums[c] / counts[c]) < 1e-3
    # The untrained student is the region-max rule, rounded to 8 bits: offsets within rounding.
    assert all(abs(rec["offset"]["s"][CLASS_NAMES[c]]) < 0.5 for c in range(3))
    assert rec["offset"]["s"]["bump"] is None


def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    data = _folder(tmp_path / "val")
    out = tmp_path / "cc.json"
    assert script.main(["--data", str(data), "--rules", "nope", "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("class_contrast.py: error:") and "nope" in err and "\n" not in err
    assert script.main(["--data", str(tmp_path / "missing"), "--json", str(out)]) == 2
    assert not out.exists()


def test_without_residual_adds_the_model_with_r_dropped(tmp_path):
    from dfsfuse.models.convert import convert_head

    data = _folder(tmp_path / "val", h=48, w=56)
    torch.manual_seed(2)
    model = create_model("student_fast", width=4, head="region-contrast")
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
        model.head.bias.normal_(0, 0.1)
    save_pretrained(model, tmp_path / "s")
    out = tmp_path / "cc.json"
    assert script.main(["--data", str(data), "--rules", "--model", f"s={tmp_path / 's'}", "--without-residual", "s",
                        "--vif", "--threads", "1", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert set(rec["offset"]) == {"s", "s-r0"} and rec["vif"]["s"] != rec["vif"]["s-r0"]
    converted = convert_head(model.eval(), "region-gain")
    sums, counts = np.zeros(3), np.zeros(3)
    for i in range(2):
        ir = np.asarray(Image.open(data / "ir" / f"p{i}.png"), np.float64)
        y = np.asarray(Image.open(data / "vi" / f"p{i}.png"), np.float64)
        with torch.no_grad():
            fused = converted(*(torch.from_numpy(x / 255).float()[None, None] for x in (ir, y))).fused[0, 0].numpy()
        d = np.round(fused.astype(np.float64) * 255) - region_max_fusion(ir, y)
        lab = np.asarray(Image.open(data / "Segmentation_labels" / f"p{i}.png"))
        for c in range(3):
            sums[c] += d[lab == c].sum()
            counts[c] += (lab == c).sum()
    for c in range(3):
        assert abs(rec["offset"]["s-r0"][CLASS_NAMES[c]] - sums[c] / counts[c]) < 1e-3
    assert script.main(["--data", str(data), "--rules", "--without-residual", "s", "--json", str(out)]) == 2


def test_vif_column_is_the_metric_of_each_fusion(tmp_path):
    from dfsfuse.metrics import fusion_metrics

    data = _folder(tmp_path / "val", h=48, w=56)
    out = tmp_path / "cc.json"
    assert script.main(["--data", str(data), "--rules", "max", "avg", "--vif", "--threads", "1", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    for rule in ("max", "avg"):
        values = []
        for i in range(2):
            ir = np.asarray(Image.open(data / "ir" / f"p{i}.png"), np.float64)
            y = np.asarray(Image.open(data / "vi" / f"p{i}.png"), np.float64)
            values.append(float(fusion_metrics(baseline_fusion(ir, y, rule), ir, y, metrics=("VIF",))["VIF"]))
        assert abs(rec["vif"][rule] - np.mean(values)) < 1e-6
