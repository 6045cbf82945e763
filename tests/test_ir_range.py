"""Thermal images as cameras write them: 16-bit PNG and float TIFF IR, normalised to [0, 1]."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfsfuse import cli
from dfsfuse.data import DatasetError, PairedImages, read_gray, read_ir
from dfsfuse.data.io import read_rgb, to_uint8
from dfsfuse.data.irrange import IrRange, ir_range_arg, parse_ir_range
from dfsfuse.export import SHIPPED_STUDENT, from_pretrained

BUNDLED_IR = Path(__file__).resolve().parents[1] / "dfsfuse" / "assets" / "msrs" / "test" / "ir" / "00008N.png"
RAMP = (np.arange(101, dtype=np.uint16) * 100).reshape(1, 101)  # 0, 100, …, 10000


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text, expected", [
    (None, IrRange("auto", 1, 99)),
    ("auto", IrRange("auto", 1, 99)),
    ("minmax", IrRange("minmax")),
    ("percentile", IrRange("percentile", 1, 99)),
    ("percentile:2,98", IrRange("percentile", 2, 98)),
    ("fixed:0,65535", IrRange("fixed", 0, 65535)),
    (" FIXED:-20.5,40 ", IrRange("fixed", -20.5, 40)),
])
def test_parse_ir_range(text, expected):
    assert parse_ir_range(text) == expected
    assert parse_ir_range(str(expected)) == expected  # str() round-trips


@pytest.mark.parametrize("text, message", [
    ("gamma", "unknown IR range"),
    ("fixed", "fixed:LO,HI"),
    ("fixed:5,5", "LO < HI"),
    ("fixed:1,nan", "finite"),
    ("percentile:99,1", "P1 < P2"),
    ("percentile:0,101", "P1 < P2"),
    ("percentile:1", "two numbers"),
    ("minmax:0,1", "no numbers"),
])
def test_bad_ir_range_is_one_line_error(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_ir_range(text)
    assert "\n" not in str(info.value)
    with pytest.raises(argparse.ArgumentTypeError):
        ir_range_arg(text)


# ------------------------------------------------------------------ each normalisation by hand


def test_minmax_by_hand(tmp_path):
    a = np.array([[100, 200], [300, 1100]], dtype=np.uint16)
    got = read_ir(_save(tmp_path / "ir.png", a), "minmax") / 255
    np.testing.assert_allclose(got, [[0.0, 0.1], [0.2, 1.0]], atol=1e-6)


def test_percentile_by_hand(tmp_path):
    path = _save(tmp_path / "ir.png", RAMP)
    # 101 values 0..10000 step 100: the p-th percentile (linear interpolation) is exactly 100·p.
    got = read_ir(path, "percentile:10,90")[0] / 255
    hand = np.clip((RAMP[0] - 1000.0) / 8000.0, 0, 1)
    np.testing.assert_allclose(got, hand, atol=1e-6)
    assert got[:11].max() == 0 and got[90:].min() == pytest.approx(1.0)
    # auto on a 16-bit image = percentile 1..99: 100 → 0, 9900 → 1.
    auto = read_ir(path)[0] / 255
    np.testing.assert_allclose(auto, np.clip((RAMP[0] - 100.0) / 9800.0, 0, 1), atol=1e-6)


def test_percentile_ignores_a_hot_pixel_unlike_minmax(tmp_path):
    a = np.full((20, 20), 1000, dtype=np.uint16)
    a[:, 10:] = 2000
    a[0, 0] = 65535  # one dead/hot pixel
    path = _save(tmp_path / "ir.png", a)
    agc = read_ir(path, "percentile") / 255
    stretched = read_ir(path, "minmax") / 255
    assert agc[5, 15] == pytest.approx(1.0) and agc[5, 5] == 0.0
    assert stretched[5, 15] == pytest.approx(1000 / 64535, abs=1e-6)


def test_fixed_by_hand_on_a_float_tiff(tmp_path):
    temps = np.array([[-30.0, -20.0, 10.0], [25.0, 40.0, 55.5]], dtype=np.float32)  # °C
    got = read_ir(_save(tmp_path / "ir.tif", temps), "fixed:-20,40") / 255
    np.testing.assert_allclose(got, [[0.0, 0.0, 0.5], [0.75, 1.0, 1.0]], atol=1e-6)
    raw16 = np.array([[0, 65535], [13107, 32768]], dtype=np.uint16)
    got16 = read_ir(_save(tmp_path / "raw.png", raw16), "fixed:0,65535") / 255
    np.testing.assert_allclose(got16, raw16 / 65535.0, atol=1e-6)


@pytest.mark.parametrize("spec", ["auto", "minmax", "percentile:5,95"])
@pytest.mark.parametrize("array", [np.full((8, 9), 4242, np.uint16), np.full((8, 9), 36.6, np.float32)],
                         ids=["uint16", "float32"])
def test_constant_image_does_not_divide_by_zero(tmp_path, spec, array):
    path = _save(tmp_path / ("ir.png" if array.dtype == np.uint16 else "ir.tif"), array)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/0 would warn
        got = read_ir(path, spec)
    assert got.shape == (8, 9) and got.dtype == np.float32 and not got.any()


def test_eight_bit_ir_is_read_exactly_as_before_unless_a_range_is_given(tmp_path):
    gray = read_gray(BUNDLED_IR)
    assert np.array_equal(read_ir(BUNDLED_IR), gray)
    assert np.array_equal(read_ir(BUNDLED_IR, "auto"), gray)
    lo, hi = gray.min(), gray.max()
    np.testing.assert_allclose(read_ir(BUNDLED_IR, "minmax"), (gray - lo) / (hi - lo) * 255, atol=1e-3)


def test_non_finite_float_ir_is_refused_naming_the_file(tmp_path):
    temps = np.zeros((4, 4), np.float32)
    temps[1, 2] = np.nan
    path = _save(tmp_path / "ir.tif", temps)
    with pytest.raises(DatasetError, match=r"ir\.tif: 1 pixel\(s\) are NaN"):
        read_ir(path)


def test_visible_images_stay_eight_bit(tmp_path):
    path = _save(tmp_path / "vis.png", RAMP)
    with pytest.raises(DatasetError, match=r"vis\.png: 16-bit image \(mode I;16\)"):
        read_rgb(path)


# ------------------------------------------------------------------ datasets and the CLI


def _thermal_folder(root: Path, size=(40, 52)) -> tuple[Path, dict]:
    """ir/ with a 16-bit PNG and a float TIFF, vi/ with 8-bit colour partners; returns raw IR arrays."""
    rng = np.random.default_rng(0)
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir()
    raw = {
        "a16": rng.integers(7000, 9000, size=size).astype(np.uint16),  # 14-bit-camera-like counts
        "bfloat": rng.normal(20.0, 5.0, size=size).astype(np.float32),  # temperatures
    }
    _save(root / "ir" / "a16.png", raw["a16"])
    _save(root / "ir" / "bfloat.tif", raw["bfloat"])
    for name in raw:
        _save(root / "vi" / f"{name}.png", rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))
    return root, raw


def _hand(raw: np.ndarray, spec: str) -> np.ndarray:
    x = raw.astype(np.float64)
    if spec == "minmax":
        lo, hi = x.min(), x.max()
    else:
        lo, hi = np.percentile(x, [1, 99])
    return np.clip((x - lo) / (hi - lo), 0, 1)


def test_paired_images_reads_sixteen_bit_and_float_ir(tmp_path):
    root, raw = _thermal_folder(tmp_path / "data")
    for spec in ("auto", "minmax"):
        ds = PairedImages(root, labels=False, ir_range=spec)
        for sample in ds:
            ir = sample["ir"]
            assert ir.shape == (1, 40, 52) and ir.dtype == torch.float32
            np.testing.assert_allclose(ir[0].numpy(), _hand(raw[sample["name"]], spec), atol=1e-6)
    with pytest.raises(ValueError, match="unknown IR range"):
        PairedImages(root, labels=False, ir_range="loud")


@pytest.mark.parametrize("spec", ["auto", "minmax"])
def test_fuse_cli_end_to_end_on_sixteen_bit_png_and_float_tiff(tmp_path, capsys, spec):
    root, raw = _thermal_folder(tmp_path / "data")
    out = tmp_path / "fused"
    code = cli.main(["fuse", "--ir", str(root / "ir"), "--vi", str(root / "vi"), "--out", str(out),
                     "--gray", "--device", "cpu", "--ir-range", spec])
    assert code == 0, capsys.readouterr().err
    assert "fused 2, skipped 0" in capsys.readouterr().out
    model = from_pretrained(SHIPPED_STUDENT).eval()
    for name, array in raw.items():
        fused = np.asarray(Image.open(out / f"{name}.png"))
        ir = torch.from_numpy(_hand(array, spec).astype(np.float32))[None, None]
        vis_y = torch.from_numpy(read_gray(root / "vi" / f"{name}.png") / np.float32(255))[None, None]
        with torch.no_grad():
            expected = to_uint8(model(ir, vis_y).fused[0, 0].numpy() * 255)
        assert fused.shape == (40, 52) and fused.dtype == np.uint8
        assert np.abs(fused.astype(int) - expected.astype(int)).max() <= 1  # float32 rounding of IR·255/255


def test_fuse_cli_rejects_a_bad_range_before_starting(tmp_path, capsys):
    root, _ = _thermal_folder(tmp_path / "data")
    with pytest.raises(SystemExit) as info:
        cli.main(["fuse", "--ir", str(root / "ir"), "--vi", str(root / "vi"), "--out", str(tmp_path / "o"),
                  "--ir-range", "fixed:9,1"])
    assert info.value.code == 2
    assert "--ir-range" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_refuses_sixteen_bit_ir_unless_converted(tmp_path, capsys):
    root, raw = _thermal_folder(tmp_path / "data", size=(48, 52))  # VIF needs at least 41×41
    fused = tmp_path / "fused"
    assert cli.main(["fuse", "--ir", str(root / "ir"), "--vi", str(root / "vi"), "--out", str(fused),
                     "--device", "cpu"]) == 0
    capsys.readouterr()
    args = ["eval", "--fused", str(fused), "--ir", str(root / "ir"), "--vi", str(root / "vi")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a16.png" in err and "--ir-range" in err and "8-bit" in err
    json_path = tmp_path / "m.json"
    assert cli.main(args + ["--ir-range", "auto", "--json", str(json_path)]) == 0
    assert json_path.is_file()

    from dfsfuse.commands.eval import read_ir_8bit

    converted = read_ir_8bit(root / "ir" / "a16.png", IrRange())
    np.testing.assert_array_equal(converted, np.round(_hand(raw["a16"], "auto") * 255))
    assert np.array_equal(read_ir_8bit(BUNDLED_IR, IrRange("minmax")), read_gray(BUNDLED_IR))  # 8-bit: as published
