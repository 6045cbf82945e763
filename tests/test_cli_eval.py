"""``dfsfuse baseline`` and ``dfsfuse eval`` end to end on temporary folders, including bad input."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfsfuse.baselines import baseline_fusion
from dfsfuse.cli import main
from dfsfuse.data.io import read_gray
from dfsfuse.metrics import METRIC_NAMES, fusion_metrics

# A TNO pair of odd size stored as RGB grey PNG, and a RoadScene JPEG pair.
REAL = (("tno", "19.png"), ("roadscene", "FLIR_04722.jpg"))


@pytest.fixture
def real_pairs(shared_data: Path, tmp_path: Path) -> Path:
    """tmp/{ir,vi} holding two real pairs with their original names and formats."""
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for dataset, name in REAL:
            shutil.copy(shared_data / dataset / sub / name, tmp_path / sub / name)
    return tmp_path


def _grey(path: Path, shape=(48, 56), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    """tmp/{ir,vi,fused} with two small 8-bit pairs ``a`` and ``b`` and their fusions."""
    for i, stem in enumerate(("a", "b")):
        _grey(tmp_path / "ir" / f"{stem}.png", seed=i)
        _grey(tmp_path / "vi" / f"{stem}.bmp", seed=i + 10)
        _grey(tmp_path / "fused" / f"{stem}.png", seed=i + 20)
    return tmp_path


def _eval_args(root: Path, fused: str = "fused") -> list[str]:
    return [
        "eval",
        "--fused",
        str(root / fused),
        "--ir",
        str(root / "ir"),
        "--vi",
        str(root / "vi"),
        "--json",
        str(root / "out" / "m.json"),
        "--csv",
        str(root / "out" / "m.csv"),
    ]


@pytest.mark.parametrize("method", ["avg", "max", "vis"])
def test_baseline_then_eval_end_to_end(real_pairs: Path, method: str, capsys) -> None:
    root = real_pairs
    assert (
        main(
            [
                "baseline",
                "--method",
                method,
                "--ir",
                str(root / "ir"),
                "--vi",
                str(root / "vi"),
                "--out",
                str(root / "fused"),
            ]
        )
        == 0
    )
    written = sorted(p.name for p in (root / "fused").iterdir())
    assert written == ["19.png", "FLIR_04722.png"]
    for _, name in REAL:
        stem = Path(name).stem
        a, b = read_gray(root / "ir" / name), read_gray(root / "vi" / name)
        with Image.open(root / "fused" / f"{stem}.png") as img:
            assert img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), baseline_fusion(a, b, method))

    assert main([*_eval_args(root), "--per-image"]) == 0
    out = capsys.readouterr().out
    assert "FLIR_04722" in out and "mean" in out and "Qabf" in out

    doc = json.loads((root / "out" / "m.json").read_text())
    assert doc["count"] == 2 and list(doc["per_image"]) == ["19", "FLIR_04722"]
    for _, name in REAL:
        stem = Path(name).stem
        expected = fusion_metrics(
            read_gray(root / "fused" / f"{stem}.png"), read_gray(root / "ir" / name), read_gray(root / "vi" / name)
        )
        got = doc["per_image"][stem]
        assert list(got) == list(METRIC_NAMES)
        for key in METRIC_NAMES:
            if math.isnan(expected[key]):
                assert got[key] is None  # undefined (SCD of the vis copy) is null in strict JSON
            else:
                assert got[key] == pytest.approx(expected[key], rel=1e-12)
    for key in METRIC_NAMES:
        values = [doc["per_image"][s][key] for s in doc["per_image"]]
        if None in values:
            assert doc["mean"][key] is None
        else:
            assert doc["mean"][key] == pytest.approx(np.mean(values), rel=1e-12)

    with open(root / "out" / "m.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image", *METRIC_NAMES]
    assert [r[0] for r in rows[1:]] == ["19", "FLIR_04722", "mean"]
    assert float(rows[1][1]) == pytest.approx(doc["per_image"]["19"]["EN"], rel=1e-12)
    assert not any(p.name.endswith(".tmp") for p in (root / "out").iterdir())


def test_eval_prints_only_the_mean_without_per_image(synthetic: Path, capsys) -> None:
    assert (
        main(
            ["eval", "--fused", str(synthetic / "fused"), "--ir", str(synthetic / "ir"), "--vi", str(synthetic / "vi")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "mean" in out and "PSNR" in out and " a " not in out
    assert not (synthetic / "out").exists()


def _break_missing_ir(root: Path) -> Path:
    return _grey(root / "fused" / "c.png")


def _break_missing_vis(root: Path) -> Path:
    _grey(root / "ir" / "c.png")
    return _grey(root / "fused" / "c.png")


def _break_fused_size(root: Path) -> Path:
    return _grey(root / "fused" / "b.png", shape=(40, 56))


def _break_vis_size(root: Path) -> Path:
    return _grey(root / "vi" / "b.bmp", shape=(48, 50))


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"\x89PNG not an image")
    return path


def _break_unreadable(root: Path) -> Path:
    return _corrupt(root / "fused" / "b.png")


def _break_duplicate_stem(root: Path) -> Path:
    _grey(root / "fused" / "b.jpg")
    return root / "fused" / "b.png"  # sorted after b.jpg: the one reported


def _break_empty(root: Path) -> Path:
    shutil.rmtree(root / "fused")
    (root / "fused").mkdir()
    (root / "fused" / "notes.txt").write_text("no images here")
    return root / "fused"


def _break_no_folder(root: Path) -> Path:
    shutil.rmtree(root / "vi")
    return root / "vi"


@pytest.mark.parametrize(
    "breaker,match",
    [
        (_break_missing_ir, "no IR image named c"),
        (_break_missing_vis, "no VIS image named c"),
        (_break_fused_size, "size 56x40 does not match IR"),
        (_break_vis_size, "size 50x48 does not match IR"),
        (_break_unreadable, "unreadable"),
        (_break_duplicate_stem, "also used by b.jpg"),
        (_break_empty, "no images"),
        (_break_no_folder, "folder not found"),
    ],
    ids=lambda v: v.__name__.removeprefix("_break_") if callable(v) else "",
)
def test_eval_bad_input_exits_2_naming_the_file(synthetic: Path, breaker, match: str, capsys) -> None:
    culprit = breaker(synthetic)
    assert main(_eval_args(synthetic)) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfsfuse eval: error: ") and err.count("\n") == 1
    assert str(culprit) in err and match in err
    assert not (synthetic / "out").exists()


@pytest.mark.parametrize(
    "breaker,match",
    [
        (lambda root: (root / "vi" / "b.bmp").unlink() or root / "ir" / "b.png", "no visible partner named b"),
        (_break_vis_size, "size 50x48 does not match IR"),
        (lambda root: _corrupt(root / "ir" / "b.png"), "unreadable"),
    ],
    ids=["missing-vis", "size", "unreadable"],
)
def test_baseline_bad_input_exits_2_and_writes_nothing(synthetic: Path, breaker, match: str, capsys) -> None:
    culprit = breaker(synthetic)
    out = synthetic / "baseline"
    assert main(["baseline", "--ir", str(synthetic / "ir"), "--vi", str(synthetic / "vi"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(culprit) in err and match in err
    assert not out.exists()


def test_bad_options_exit_2(synthetic: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["baseline", "--method", "median", "--ir", "x", "--vi", "y", "--out", "z"])
    assert exc.value.code == 2
    assert main([*_eval_args(synthetic), "--batch-size", "0"]) == 2
    assert main([*_eval_args(synthetic), "--device", "nonsense"]) == 2
    assert main([*_eval_args(synthetic), "--threads", "-1"]) == 2


def test_batch_size_does_not_change_results(synthetic: Path) -> None:
    results = []
    for batch_size in ("1", "2"):
        assert main([*_eval_args(synthetic), "--batch-size", batch_size, "--threads", "1"]) == 0
        results.append(json.loads((synthetic / "out" / "m.json").read_text()))
    one, two = results
    assert one["count"] == two["count"] == 2
    for stem in ("a", "b"):
        assert one["per_image"][stem] == pytest.approx(two["per_image"][stem], rel=1e-12)


def test_baseline_fusion_rules() -> None:
    a = np.array([[0, 1, 3, 254]], dtype=np.float32)
    b = np.array([[1, 2, 4, 255]], dtype=np.float32)
    np.testing.assert_array_equal(baseline_fusion(a, b, "avg"), [[0, 2, 4, 254]])  # half to even
    np.testing.assert_array_equal(baseline_fusion(a, b, "max"), [[1, 2, 4, 255]])
    np.testing.assert_array_equal(baseline_fusion(a, b, "ir"), a.astype(np.uint8))
    assert baseline_fusion(a, b, "vis").dtype == np.uint8
    with pytest.raises(ValueError, match="unknown baseline method"):
        baseline_fusion(a, b, "median")
    with pytest.raises(ValueError, match="same size"):
        baseline_fusion(a, b[:, :3], "avg")
