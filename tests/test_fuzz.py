"""Property-based tests (hypothesis): the data layer and the metrics on random sizes, dtypes and
values never fail other than with their documented errors, and the metrics keep their invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dfsfuse.data import DatasetError, PairedRandomCrop, SyntheticScenes, read_gray
from dfsfuse.metrics import fusion_metrics

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

sizes = st.integers(min_value=1, max_value=40)
modes = st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1", "LA", "CMYK"])


@FAST
@given(h=sizes, w=sizes, mode=modes, seed=st.integers(0, 2**16), ext=st.sampled_from([".png", ".bmp", ".tif"]))
def test_read_gray_any_image_reads_or_raises_dataset_error(tmp_path_factory, h, w, mode, seed, ext):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(
        rng.integers(0, 65535, size=(h, w), dtype=np.uint16))
    path = tmp_path_factory.mktemp("img") / f"x{ext}"
    try:
        img.save(path)
    except (OSError, ValueError, KeyError):
        return  # this format cannot hold this mode: nothing to read
    try:
        out = read_gray(path)
    except DatasetError as exc:
        assert str(path) in str(exc)
        return
    assert out.shape == (h, w) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255 and np.array_equal(out, np.round(out))


@FAST
@given(data=st.binary(min_size=0, max_size=300), ext=st.sampled_from([".png", ".jpg", ".bmp"]))
def test_garbage_files_raise_dataset_error_naming_the_file(tmp_path_factory, data, ext):
    path = tmp_path_factory.mktemp("bad") / f"g{ext}"
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=str(path).replace(".", r"\.")):
        read_gray(path)


@FAST
@given(h=sizes, w=sizes, crop=st.integers(1, 48), seed=st.integers(0, 1000))
def test_crop_always_gives_the_crop_size_and_keeps_alignment(h, w, crop, seed):
    x = torch.arange(h * w, dtype=torch.float32).view(1, h, w)
    sample = {"ir": x, "vis_y": x * 2, "vis_cbcr": torch.cat([x, x]), "label": torch.zeros(h, w, dtype=torch.long)}
    out = PairedRandomCrop(crop)(sample, generator=torch.Generator().manual_seed(seed))
    assert out["ir"].shape == (1, crop, crop) and out["label"].shape == (crop, crop)
    torch.testing.assert_close(out["vis_y"], out["ir"] * 2)
    assert set(out["label"].unique().tolist()) <= {0, 255}


@FAST
@given(h=st.integers(8, 64), w=st.integers(8, 64), seed=st.integers(0, 10**6))
def test_synthetic_scenes_any_size_in_range(h, w, seed):
    s = SyntheticScenes(1, (h, w), seed=seed)[0]
    for key in ("ir", "vis_y", "vis_cbcr"):
        assert s[key].shape[-2:] == (h, w) and torch.isfinite(s[key]).all()
        assert s[key].min() >= 0 and s[key].max() <= 1
    assert s["label"].min() >= 0 and s["label"].max() <= 8


# VIF's four valid-convolution scales need at least 41×41 pixels (smaller → documented ValueError).
images = st.tuples(st.integers(41, 64), st.integers(41, 64), st.integers(0, 2**16))


def _img(h, w, seed, levels=256):
    rng = np.random.default_rng(seed)
    return rng.integers(0, levels, size=(h, w)).astype(np.float64)


@FAST
@given(shape=images, levels=st.sampled_from([2, 16, 256]))
def test_metric_invariants(shape, levels):
    h, w, seed = shape
    f, a, b = _img(h, w, seed, levels), _img(h, w, seed + 1, levels), _img(h, w, seed + 2, levels)
    m = fusion_metrics(f, a, b)
    assert 0.0 <= m["EN"] <= 8.0 + 1e-9
    assert m["SD"] >= 0 and m["SF"] >= 0 and m["AG"] >= 0 and m["MSE"] >= 0
    assert m["MI"] >= -1e-9
    swapped = fusion_metrics(f, b, a)  # symmetric in the two inputs: MI, SSIM, CC, MSE, VIF, SCD, Qabf
    for name in ("MI", "SSIM", "CC", "MSE", "VIF", "SCD", "Qabf"):
        assert swapped[name] == pytest.approx(m[name], rel=1e-9, abs=1e-12, nan_ok=True)


@FAST
@given(shape=images)
def test_fusing_an_image_with_itself(shape):
    h, w, seed = shape
    f = _img(h, w, seed)
    m = fusion_metrics(f, f, f)
    assert m["SSIM"] == pytest.approx(2.0, abs=1e-9)  # ssim(F, A) + ssim(F, B), each 1
    assert m["CC"] == pytest.approx(1.0, abs=1e-9)
    assert m["MSE"] == 0.0 and math.isnan(m["SCD"])
    assert m["VIF"] == pytest.approx(2.0, rel=1e-6)


@FAST
@given(shape=images, dtype=st.sampled_from([np.uint8, np.float32, np.float64, np.int32]))
def test_metrics_accept_any_numeric_dtype_alike(shape, dtype):
    h, w, seed = shape
    f, a, b = (_img(h, w, seed + i) for i in range(3))
    ref = fusion_metrics(f, a, b)
    got = fusion_metrics(f.astype(dtype), a.astype(dtype), b.astype(dtype))
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-6, nan_ok=True)


@FAST
@given(h=st.integers(1, 40), w=st.integers(1, 40))
def test_images_too_small_for_vif_raise_value_error(h, w):
    x = np.zeros((h, w))
    with pytest.raises(ValueError, match=r"needs images of at least \d+×\d+ pixels"):
        fusion_metrics(x, x, x)


@FAST
@given(h=st.integers(1, 30), w=st.integers(1, 30), dh=st.integers(1, 3))
def test_metrics_reject_mismatched_shapes_with_value_error(h, w, dh):
    with pytest.raises(ValueError):
        fusion_metrics(np.zeros((h, w)), np.zeros((h + dh, w)), np.zeros((h, w)))
