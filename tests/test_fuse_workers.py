"""``dfsfuse fuse`` with decoding workers and writing threads: the same bytes, summary and errors as inline."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfsfuse import cli
from dfsfuse.data.bundled import BUNDLED_TEST, bundled_msrs_root
from dfsfuse.export import save_pretrained
from dfsfuse.fuse import FuseOptions, fuse_folder
from dfsfuse.models import create_model


def _folders(root: Path) -> tuple[Path, Path]:
    """Bundled MSRS test pairs, an odd-size colour pair, a missing partner and a corrupt image."""
    ir, vi = root / "ir", root / "vi"
    ir.mkdir(parents=True)
    vi.mkdir()
    src = bundled_msrs_root() / "test"
    for stem in BUNDLED_TEST:
        shutil.copy(src / "ir" / f"{stem}.png", ir)
        shutil.copy(src / "vi" / f"{stem}.png", vi)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8)).save(ir / "odd.png")
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(vi / "odd.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(ir / "alone.png")
    (ir / "corrupt.png").write_bytes(b"not a png")
    shutil.copy(src / "vi" / f"{BUNDLED_TEST[0]}.png", vi / "corrupt.png")
    return ir, vi


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("student_fast").eval().reparameterize()


@pytest.mark.parametrize("gray,batch", [(False, 2), (True, 1)])
def test_workers_write_identical_bytes_and_summary(tmp_path, model, gray, batch):
    ir, vi = _folders(tmp_path / "data")
    results = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        summary = fuse_folder(model, ir, vi, out, FuseOptions(gray=gray, batch_size=batch, workers=workers))
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        results[workers] = (summary, files)
    (s0, f0), (s2, f2) = results[0], results[2]
    assert sorted(f0) == sorted(f"{s}.png" for s in (*BUNDLED_TEST, "odd"))
    assert f2 == f0  # byte for byte
    assert s2.fused == s0.fused and s2.skipped == s0.skipped == []
    assert [(f.name, f.message) for f in s2.failed] == [(f.name, f.message) for f in s0.failed]
    assert [f.name for f in s0.failed] == ["alone", "corrupt"]
    assert s2.pairs_per_second > 0 and "pairs/s" in s2.line()


def test_workers_keep_skip_overwrite_and_write_errors(tmp_path, model):
    ir, vi = _folders(tmp_path / "data")
    out = tmp_path / "out"
    first = fuse_folder(model, ir, vi, out, FuseOptions(workers=2))
    assert len(first.fused) == 5
    again = fuse_folder(model, ir, vi, out, FuseOptions(workers=2))
    assert again.fused == [] and sorted(again.skipped) == sorted(first.fused)
    (out / "odd.png").unlink()
    (out / "odd.png").mkdir()  # a folder where the output file should go: the write fails, the rest go on
    forced = fuse_folder(model, ir, vi, out, FuseOptions(overwrite=True, workers=2))
    assert sorted(forced.fused) == sorted(BUNDLED_TEST)
    assert [f.name for f in forced.failed] == ["alone", "corrupt", "odd"]
    assert "cannot write" in forced.failed[-1].message and str(out / "odd.png") in forced.failed[-1].message
    assert not any(p.name.startswith(".") or p.suffix == ".tmp" for p in out.iterdir())  # atomic: no leftovers


def test_cli_workers_flag(tmp_path, model, capsys):
    ir, vi = _folders(tmp_path / "data")
    folder = save_pretrained(model, tmp_path / "model")
    args = ["fuse", "--model", str(folder), "--ir", str(ir), "--vi", str(vi), "--device", "cpu"]
    assert cli.main([*args, "--out", str(tmp_path / "a"), "--workers", "0"]) == 1  # 2 pairs fail
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert out.count("fused 5, skipped 0 (already there), failed 2") == 2 and "pairs/s" in out
    for name in (*BUNDLED_TEST, "odd"):
        assert (tmp_path / "a" / f"{name}.png").read_bytes() == (tmp_path / "b" / f"{name}.png").read_bytes()
    assert cli.main([*args, "--out", str(tmp_path / "c"), "--workers", "-1"]) == 2


def test_png_level_changes_bytes_not_pixels(tmp_path, model):
    ir, vi = _folders(tmp_path / "data")
    for level in (1, 9):
        fuse_folder(model, ir, vi, tmp_path / f"l{level}", FuseOptions(png_level=level, workers=1))
    for name in (*BUNDLED_TEST, "odd"):
        fast, small = tmp_path / "l1" / f"{name}.png", tmp_path / "l9" / f"{name}.png"
        assert np.array_equal(np.asarray(Image.open(fast)), np.asarray(Image.open(small)))
    assert sum(p.stat().st_size for p in (tmp_path / "l9").iterdir()) < sum(
        p.stat().st_size for p in (tmp_path / "l1").iterdir())
    with pytest.raises(ValueError, match="PNG level"):
        FuseOptions(png_level=10)
