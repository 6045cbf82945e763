"""dfsfuse.metrics against an independent numpy/scipy/scikit-image/scikit-learn evaluator.

The oracle is ``benchmarks/reference_metrics.py`` (scipy ``convolve2d``, ``skimage``
``structural_similarity`` with data_range 2, ``sklearn`` ``mutual_info_score``, numpy
formulas), run on real pairs from every dataset for the avg, max and vis fusions.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dfsfuse.baselines import baseline_fusion
from dfsfuse.data.io import read_gray
from dfsfuse.metrics import (
    METRIC_NAMES,
    MIN_SIDE,
    MetricAccumulator,
    fusion_metrics,
    fusion_metrics_batch,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reference_metrics  # noqa: E402

RTOL = 1e-4

# A few pairs per dataset (the scipy reference takes ~1.7 s per 640×480 image): MSRS 640×480 PNG
# (night, day), TNO odd sizes (575×475, 595×328, 360×270) stored as RGB grey, RoadScene JPEG
# (496×301, 446×259, 483×227).
PAIRS = {
    "msrs/test": ("00004N.png", "00107D.png"),
    "tno": ("05.png", "08.png", "19.png"),
    "roadscene": ("FLIR_00211.jpg", "FLIR_04722.jpg", "FLIR_05064.jpg"),
}
FUSIONS = ("avg", "max", "vis")
CASES = [(d, n, m) for d, names in PAIRS.items() for n in names for m in FUSIONS]

# docs/metrics.md: MSRS test pair 00004N, F = round_half_even((A + B) / 2).
WORKED_EXAMPLE = dict(
    EN=5.347274,
    SD=17.297302,
    SF=3.639889,
    AG=1.126593,
    MI=1.704100,
    SCD=1.152036,
    VIF=0.615984,
    Qabf=0.331317,
    SSIM=0.966029,
    CC=0.719996,
    MSE=328.933533,
    PSNR=21.517994,
)


@functools.lru_cache(maxsize=None)
def _pair(root: Path, dataset: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    return read_gray(root / dataset / "ir" / name), read_gray(root / dataset / "vi" / name)


def _triple(root: Path, dataset: str, name: str, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = _pair(root, dataset, name)
    return baseline_fusion(a, b, method).astype(np.float32), a, b


def _reference(root: Path, dataset: str, name: str, method: str) -> dict[str, float]:
    return reference_metrics.reference_metrics(*_triple(root, dataset, name, method))


def _assert_matches(got: dict[str, float], expected: dict[str, float], rtol: float = RTOL, atol: float = 0.0) -> None:
    assert list(got) == list(METRIC_NAMES)
    for key in METRIC_NAMES:
        if math.isnan(expected[key]):
            assert math.isnan(got[key]), f"{key}: expected NaN, got {got[key]}"
        else:
            np.testing.assert_allclose(got[key], expected[key], rtol=rtol, atol=atol, err_msg=key)


@pytest.mark.parametrize(
    "dataset,name,method", CASES, ids=[f"{d.split('/')[0]}-{n.split('.')[0]}-{m}" for d, n, m in CASES]
)
def test_matches_reference_on_real_pairs(shared_data: Path, dataset: str, name: str, method: str) -> None:
    f, a, b = _triple(shared_data, dataset, name, method)
    _assert_matches(fusion_metrics(f, a, b), _reference(shared_data, dataset, name, method))


def test_worked_example_from_conventions(shared_data: Path) -> None:
    f, a, b = _triple(shared_data, "msrs/test", "00004N.png", "avg")
    _assert_matches(fusion_metrics(f, a, b), WORKED_EXAMPLE, atol=5e-7)  # table rounded to 6 decimals


@pytest.mark.parametrize("method", ["vis", "ir"])
def test_scd_is_nan_when_fused_copies_an_input(shared_data: Path, method: str) -> None:
    f, a, b = _triple(shared_data, "msrs/test", "00004N.png", method)
    values = fusion_metrics(f, a, b)
    assert math.isnan(values["SCD"])
    assert all(math.isfinite(values[k]) for k in METRIC_NAMES if k != "SCD")


def test_batched_equals_per_image(shared_data: Path) -> None:
    triples = [_triple(shared_data, "msrs/test", "00004N.png", m) for m in FUSIONS]
    f, a, b = (torch.from_numpy(np.stack(x))[:, None] for x in zip(*triples))
    batched = fusion_metrics_batch(f, a, b)
    assert list(batched) == list(METRIC_NAMES)
    for i, triple in enumerate(triples):
        single = fusion_metrics(*triple)
        for key in METRIC_NAMES:
            assert batched[key].shape == (3,) and batched[key].dtype == torch.float64
            np.testing.assert_allclose(batched[key][i].item(), single[key], rtol=1e-12, err_msg=key)


def test_input_types_give_the_same_values(shared_data: Path) -> None:
    f, a, b = _triple(shared_data, "tno", "19.png", "avg")
    expected = fusion_metrics(f, a, b)
    as_uint8 = fusion_metrics(f.astype(np.uint8), a.astype(np.uint8), b.astype(np.uint8))
    as_tensor = fusion_metrics(*(torch.from_numpy(x) for x in (f, a, b)))
    as_float64 = fusion_metrics(*(x.astype(np.float64) for x in (f, a, b)))
    for values in (as_uint8, as_tensor, as_float64):
        for key in METRIC_NAMES:
            assert values[key] == pytest.approx(expected[key], rel=1e-12), key


def test_metric_subset_keeps_canonical_order() -> None:
    rng = np.random.default_rng(0)
    f, a, b = (rng.integers(0, 256, (48, 50)).astype(np.float32) for _ in range(3))
    values = fusion_metrics(f, a, b, metrics=["PSNR", "EN", "VIF"])
    assert list(values) == ["EN", "VIF", "PSNR"]
    assert values["VIF"] == pytest.approx(reference_metrics.vif(f, a, b), rel=RTOL)


def _smallest(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return tuple(rng.integers(0, 256, shape).astype(np.float32) for _ in range(3))


def test_smallest_vif_image_matches_reference_and_smaller_is_refused() -> None:
    side = MIN_SIDE["VIF"]
    f, a, b = _smallest((side, side + 3))
    assert fusion_metrics(f, a, b, metrics=["VIF"])["VIF"] == pytest.approx(reference_metrics.vif(f, a, b), rel=RTOL)
    f, a, b = _smallest((side - 1, 60))
    with pytest.raises(ValueError, match="VIF needs images of at least"):
        fusion_metrics(f, a, b)
    assert set(fusion_metrics(f, a, b, metrics=["EN", "SSIM", "MI"])) == {"EN", "MI", "SSIM"}


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda f, a, b: (f, a[:-1], b), "same shape"),
        (lambda f, a, b: (f[None], a[None], b[None]), "one H×W image"),
        (lambda f, a, b: (f / 255 - 0.5, a, b), "in \\[0, 255\\]"),
        (lambda f, a, b: (f, np.where(a > 100, np.nan, a), b), "finite"),
        (lambda f, a, b: (f, a, b.astype(bool)), "dtype"),
        (lambda f, a, b: (f.tolist(), a, b), "H×W image"),
    ],
    ids=["shape-mismatch", "3d", "out-of-range", "nan", "bool", "list"],
)
def test_bad_inputs_raise_value_error(change, match) -> None:
    f, a, b = _smallest((48, 48))
    with pytest.raises(ValueError, match=match):
        fusion_metrics(*change(f, a, b))


def test_batch_layout_is_checked() -> None:
    x = torch.zeros(2, 3, 48, 48)
    with pytest.raises(ValueError, match="B×1×H×W"):
        fusion_metrics_batch(x, x, x)
    with pytest.raises(ValueError, match="unknown metric"):
        fusion_metrics_batch(x[:, :1], x[:, :1], x[:, :1], metrics=["EN", "Q_abf"])


@pytest.mark.filterwarnings("ignore:Clustering metrics expects discrete values")
def test_mutual_information_matches_sklearn_for_non_integer_values() -> None:
    rng = np.random.default_rng(2)
    levels = rng.uniform(0, 255, 40)  # a few distinct non-integer grey values
    f, a, b = (rng.choice(levels, (60, 70)) for _ in range(3))
    expected = reference_metrics.mi(f, a, b)
    assert fusion_metrics(f, a, b, metrics=["MI"])["MI"] == pytest.approx(expected, rel=1e-10)
    integer = np.round(f)  # the fast 256-bin path agrees with the general one
    assert fusion_metrics(integer, a, b, metrics=["MI"])["MI"] == pytest.approx(
        reference_metrics.mi(integer, a, b), rel=1e-10
    )


def _synthetic(seed: int, shape: tuple[int, int], kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = shape
    if kind == "noise":
        return rng.integers(0, 256, shape).astype(np.float32)
    if kind == "blocks":  # flat regions: zero local variance, equal gradients
        cells = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1))
        return np.kron(cells, np.ones((8, 8)))[:h, :w].astype(np.float32)
    ramp = np.add.outer(np.arange(h), np.arange(w)) * rng.uniform(0.2, 3)
    return np.clip(ramp, 0, 255).round().astype(np.float32)  # saturates: flat corner at 255


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    h=st.integers(MIN_SIDE["VIF"], 72),
    w=st.integers(MIN_SIDE["VIF"], 72),
    kinds=st.tuples(*(st.sampled_from(["noise", "blocks", "ramp"]),) * 2),
    method=st.sampled_from(["avg", "max", "vis", "ir"]),
)
def test_matches_reference_on_synthetic_images(seed: int, h: int, w: int, kinds: tuple[str, str], method: str) -> None:
    a = _synthetic(seed, (h, w), kinds[0])
    b = _synthetic(seed + 1, (h, w), kinds[1])
    f = baseline_fusion(a, b, method).astype(np.float32)
    _assert_matches(fusion_metrics(f, a, b), reference_metrics.reference_metrics(f, a, b), atol=1e-12)


def test_constant_reference_scores_vif_one_like_the_evaluator() -> None:
    a = np.full((48, 48), 7, np.float32)
    b = _smallest((48, 48))[1]
    f = baseline_fusion(a, b, "avg").astype(np.float32)
    got = fusion_metrics(f, a, b)
    assert got["VIF"] == pytest.approx(reference_metrics.vif(f, a, b), rel=RTOL)
    assert math.isnan(got["CC"]) == math.isnan(reference_metrics.cc(f, a, b))


def test_metric_accumulator_means_and_nan() -> None:
    acc = MetricAccumulator()
    acc.update({"EN": 1.0, "SCD": 2.0})
    acc.update({"EN": torch.tensor([2.0, 3.0]), "SCD": torch.tensor([float("nan"), 4.0])})
    assert acc.count == 3
    mean = acc.mean()
    assert mean["EN"] == pytest.approx(2.0) and math.isnan(mean["SCD"])
    assert acc.mean(skip_nan=True)["SCD"] == pytest.approx(3.0)
    other = MetricAccumulator()
    other.update({"SCD": 0.0, "EN": 6.0})
    assert list(acc.merge(other).mean()) == ["EN", "SCD"] and acc.count == 4
    assert acc.mean()["EN"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="differ"):
        acc.update({"EN": 1.0})
    with pytest.raises(ValueError, match="same number"):
        acc.update({"EN": [1.0, 2.0], "SCD": [1.0]})
    acc.reset()
    assert acc.count == 0 and acc.mean() == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(shared_data: Path) -> None:
    f, a, b = _triple(shared_data, "tno", "08.png", "max")
    cpu = fusion_metrics(f, a, b)
    gpu = fusion_metrics(*(torch.from_numpy(x).cuda() for x in (f, a, b)))
    _assert_matches(gpu, cpu, rtol=1e-6)


def test_filters_match_scipy() -> None:
    from scipy.signal import convolve2d

    from dfsfuse.metrics._filters import (
        gaussian_taps,
        separable_valid,
        sobel_valid,
        strip_sums,
    )

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (37, 45)).astype(np.float64)
    t = torch.from_numpy(x)[None, None]
    for size in (17, 9, 5, 3):
        window = reference_metrics.gaussian_window(size)
        np.testing.assert_allclose(torch.outer(gaussian_taps(size), gaussian_taps(size)).numpy(), window, rtol=1e-13)
        expected = convolve2d(x, np.rot90(window, 2), mode="valid")
        np.testing.assert_allclose(separable_valid(t, gaussian_taps(size))[0, 0].numpy(), expected, rtol=1e-12)
    gx, gy = sobel_valid(torch.nn.functional.pad(t.float(), (1, 1, 1, 1)))
    np.testing.assert_array_equal(gx[0, 0].numpy(), convolve2d(x, reference_metrics._SOBEL_X, mode="same"))
    np.testing.assert_array_equal(gy[0, 0].numpy(), convolve2d(x, reference_metrics._SOBEL_Y, mode="same"))

    def fn(strip: torch.Tensor) -> torch.Tensor:
        return separable_valid(strip, gaussian_taps(5)).sum((-2, -1))

    whole = fn(t)
    for rows in (1, 4, 32):
        assert torch.allclose(strip_sums(fn, t, 5, rows=rows), whole, rtol=1e-13)
