"""Data layer: reading convention, pairing, labels, transforms, synthetic scenes, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfsfuse.data import (
    DatasetError,
    PairedImages,
    PairedRandomCrop,
    PairedRandomFlip,
    PairedRescale,
    SyntheticScenes,
    bundled_msrs_root,
    colorize,
    read_gray,
    read_pair,
    rgb_to_ycbcr,
    train_transform,
    write_image,
    ycbcr_to_rgb,
)
from dfsfuse.data.bundled import BUNDLED_TEST, BUNDLED_TRAIN


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rng_image(rng, h, w, channels=3):
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _make_pair_folder(root: Path, names, h=20, w=30, ext=".png", seed=0, labels=None):
    rng = np.random.default_rng(seed)
    for name in names:
        _save(root / "ir" / f"{name}{ext}", _rng_image(rng, h, w, 1))
        _save(root / "vi" / f"{name}{ext}", _rng_image(rng, h, w, 3))
        if labels is not None:
            _save(root / "Segmentation_labels" / f"{name}.png", rng.integers(0, labels, (h, w), dtype=np.uint8))
    return root


# --- reading convention -------------------------------------------------------------------

def test_read_gray_matches_float32_bt601_formula(tmp_path):
    rng = np.random.default_rng(1)
    rgb = _rng_image(rng, 17, 23)
    rgb[0, 0] = (1, 1, 2)  # 0.299 + 0.587 + 0.228 = 1.114 → 1
    path = _save(tmp_path / "x.png", rgb)
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    expected = np.round(np.float32(0.299) * r + np.float32(0.587) * g + np.float32(0.114) * b)
    got = read_gray(path)
    assert got.dtype == np.float32 and got.shape == (17, 23)
    np.testing.assert_array_equal(got, expected)


def test_read_gray_of_grey_file_is_identity(tmp_path):
    grey = _rng_image(np.random.default_rng(2), 9, 11, 1)
    np.testing.assert_array_equal(read_gray(_save(tmp_path / "g.png", grey)), grey.astype(np.float32))


def test_round_half_to_even(tmp_path):
    # R=G=B=v gives 0.999999...·v in float32; craft values whose luma lands on .5 exactly.
    rgb = np.zeros((1, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (0, 0, 0)
    rgb[0, 1] = (5, 0, 0)  # 1.495 → 1
    out = read_gray(_save(tmp_path / "h.png", rgb))
    assert out[0, 1] == np.round(np.float32(0.299) * np.float32(5))


def test_read_pair_gives_luma_and_chroma(tmp_path):
    rng = np.random.default_rng(3)
    ir = _save(tmp_path / "ir.png", _rng_image(rng, 8, 10, 1))
    vis_rgb = _rng_image(rng, 8, 10)
    vis = _save(tmp_path / "vis.png", vis_rgb)
    pair = read_pair(ir, vis)
    assert pair.ir.shape == pair.vis_y.shape == (8, 10) and pair.vis_cbcr.shape == (2, 8, 10)
    # Chroma + unrounded luma reconstruct the visible RGB.
    y = torch.from_numpy(vis_rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    ycc = torch.cat([y[None], torch.from_numpy(pair.vis_cbcr.astype(np.float64))]) / 255.0
    rgb = ycbcr_to_rgb(ycc).permute(1, 2, 0).numpy() * 255
    np.testing.assert_allclose(rgb, vis_rgb, atol=1e-3)


def test_ycbcr_round_trip_and_grey_has_neutral_chroma():
    rgb = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb)
    grey = torch.full((3, 4, 4), 0.3)
    ycc = rgb_to_ycbcr(grey)
    torch.testing.assert_close(ycc[1:], torch.full((2, 4, 4), 0.5))
    torch.testing.assert_close(colorize(ycc[:1], ycc[1:]), grey)


def test_write_image_is_atomic_and_round_trips(tmp_path):
    img = _rng_image(np.random.default_rng(4), 6, 5, 1)
    out = tmp_path / "sub" / "o.png"
    write_image(out, img.astype(np.float32) + 0.4)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), img)
    assert [p.name for p in out.parent.iterdir()] == ["o.png"]


# --- datasets -------------------------------------------------------------------------------

def test_msrs_split_of_shared_data_has_20_pairs(shared_data):
    ds = PairedImages(shared_data / "msrs", split="test")
    # shared/ now carries the 20 test labels (DECFusion's MSRS test labels).
    assert len(ds) == 20 and ds.has_labels
    s = ds[0]
    assert s["label"].shape == (480, 640) and int(s["label"].max()) <= 8
    assert s["ir"].shape == s["vis_y"].shape == (1, 480, 640) and s["vis_cbcr"].shape == (2, 480, 640)
    assert s["name"] == "00004N"
    np.testing.assert_allclose(s["vis_y"][0].numpy() * 255, read_gray(shared_data / "msrs/test/vi/00004N.png"),
                               atol=1e-4)


def test_plain_folders_with_odd_sizes_and_grey_as_rgb(shared_data):
    tno = PairedImages(shared_data / "tno")
    assert len(tno) == 20
    s = tno[4]  # 05.png: 575×475, grey stored as RGB
    assert s["name"] == "05" and s["ir"].shape == (1, 475, 575)
    torch.testing.assert_close(s["vis_cbcr"], torch.full_like(s["vis_cbcr"], 0.5))
    road = PairedImages(shared_data / "roadscene")
    assert len(road) == 20 and road[0]["ir"].shape[-2:] == road[0]["vis_y"].shape[-2:]


def test_bundled_msrs_subset_is_split_and_disjoint():
    root = bundled_msrs_root()
    train, test = PairedImages(root, split="train"), PairedImages(root, split="test")
    assert [p.name for p in train.pairs] == sorted(BUNDLED_TRAIN)
    assert [p.name for p in test.pairs] == sorted(BUNDLED_TEST)
    assert not set(BUNDLED_TRAIN) & set(BUNDLED_TEST)


def test_pairs_matched_by_stem_across_extensions(tmp_path):
    rng = np.random.default_rng(5)
    _save(tmp_path / "ir" / "a.png", _rng_image(rng, 10, 12, 1))
    _save(tmp_path / "vi" / "a.bmp", _rng_image(rng, 10, 12))
    _save(tmp_path / "ir" / "b.jpg", _rng_image(rng, 10, 12, 1))
    _save(tmp_path / "vi" / "b.png", _rng_image(rng, 10, 12))
    ds = PairedImages(tmp_path)
    assert [p.name for p in ds.pairs] == ["a", "b"]
    assert ds[1]["ir"].shape == (1, 10, 12)


def test_msrs_layout_with_labels(tmp_path):
    _make_pair_folder(tmp_path / "train", ["x", "y"], labels=9)
    ds = PairedImages(tmp_path, split="train")
    assert ds.has_labels
    s = ds[0]
    expected = np.asarray(Image.open(tmp_path / "train/Segmentation_labels/x.png")).astype(np.int64)
    np.testing.assert_array_equal(s["label"].numpy(), expected)
    assert "label" not in PairedImages(tmp_path, split="train", labels=False)[0]


def test_labels_false_never_opens_label_files(tmp_path, monkeypatch):
    _make_pair_folder(tmp_path / "train", ["x"], labels=9)
    import dfsfuse.data.pairs as pairs

    def boom(*a, **k):
        raise AssertionError("label file opened")

    monkeypatch.setattr(pairs, "read_label", boom)
    ds = PairedImages(tmp_path, split="train", labels=False)
    assert "label" not in ds[0]


# --- transforms -----------------------------------------------------------------------------

def test_crop_and_flip_keep_ir_vis_label_aligned():
    h, w = 40, 50
    coords = torch.arange(h * w, dtype=torch.float64).view(1, h, w)
    sample = {"ir": coords.clone(), "vis_y": coords.clone() * 2, "vis_cbcr": torch.cat([coords, -coords]),
              "label": coords[0].long() % 9 + 100 * (coords[0].long() // 9), "name": "s"}
    tf = train_transform(crop=16, hflip=0.5, vflip=0.5)
    torch.manual_seed(0)
    for _ in range(20):
        out = tf(sample)
        ir = out["ir"][0]
        assert ir.shape == (16, 16)
        torch.testing.assert_close(out["vis_y"][0], ir * 2)
        torch.testing.assert_close(out["vis_cbcr"][0], ir)
        torch.testing.assert_close(out["vis_cbcr"][1], -ir)
        idx = ir.long()
        assert torch.equal(out["label"], idx % 9 + 100 * (idx // 9))


def test_flip_really_flips_and_crop_pads_small_images():
    x = torch.arange(6.0).view(1, 2, 3)
    out = PairedRandomFlip(p_horizontal=1.0)({"ir": x, "label": x[0].long()})
    assert torch.equal(out["ir"], x.flip(-1)) and torch.equal(out["label"], x[0].long().flip(-1))
    small = {"ir": torch.rand(1, 5, 6), "label": torch.zeros(5, 6, dtype=torch.long)}
    out = PairedRandomCrop(8)(small)
    assert out["ir"].shape == (1, 8, 8) and (out["label"] == 255).sum() == 64 - 30


def test_rescale_averages_2x2_blocks_and_takes_each_blocks_top_left_label():
    """scale 0.5: images are 2x2 block means (area), labels the block's top-left pixel (nearest),
    as the semantic benchmark shrinks its sources; odd sizes round; bad scales are refused."""
    ir = torch.rand(1, 6, 8, dtype=torch.float64)
    label = torch.randint(0, 9, (6, 8))
    cbcr = torch.rand(2, 6, 8, dtype=torch.float64)
    out = PairedRescale(0.5)({"ir": ir, "vis_y": 1 - ir, "vis_cbcr": cbcr, "label": label, "name": "s"})
    blocks = ir.view(1, 3, 2, 4, 2).mean(dim=(2, 4))
    torch.testing.assert_close(out["ir"], blocks)
    torch.testing.assert_close(out["vis_y"], 1 - blocks)
    torch.testing.assert_close(out["vis_cbcr"], cbcr.view(2, 3, 2, 4, 2).mean(dim=(2, 4)))
    assert out["ir"].dtype == torch.float64 and out["label"].dtype == label.dtype
    assert torch.equal(out["label"], label[::2, ::2]) and out["name"] == "s"
    assert PairedRescale(0.5)({"ir": torch.rand(1, 7, 9)})["ir"].shape == (1, 4, 4)  # round(3.5)=4, round(4.5)=4
    assert PairedRescale(1.0)({"ir": ir})["ir"] is ir
    with pytest.raises(ValueError, match="scale"):
        PairedRescale(0)
    sizes = [PairedRescale(0.5, 1.0)({"ir": torch.rand(1, 40, 40)}, generator=torch.Generator().manual_seed(i))
             ["ir"].shape[-1] for i in range(20)]
    assert len(set(sizes)) > 5 and 20 <= min(sizes) and max(sizes) <= 40   # a factor per draw in [0.5, 1]
    assert sizes == [PairedRescale(0.5, 1.0)({"ir": torch.rand(1, 40, 40)}, generator=torch.Generator().manual_seed(i))
                     ["ir"].shape[-1] for i in range(20)]                    # from the generator alone
    with pytest.raises(ValueError, match="scale_max"):
        PairedRescale(0.5, 0.4)
    tf = train_transform(crop=2, hflip=0.0, scale=0.5)  # rescale first: the one 2x2 window is the whole
    x = torch.rand(1, 4, 4, dtype=torch.float64)         # rescaled image, not 4 raw pixels
    torch.testing.assert_close(tf({"ir": x})["ir"], x.view(1, 2, 2, 2, 2).mean(dim=(2, 4)))


# --- synthetic scenes -----------------------------------------------------------------------

def test_synthetic_scenes_are_deterministic_and_order_free():
    a, b = SyntheticScenes(4, (48, 64), seed=3), SyntheticScenes(4, (48, 64), seed=3)
    for i in (3, 0, 2):
        for key in ("ir", "vis_y", "vis_cbcr", "label"):
            assert torch.equal(a[i][key], b[i][key])
    assert not torch.equal(a[0]["ir"], SyntheticScenes(4, (48, 64), seed=4)[0]["ir"])


def test_synthetic_scenes_mimic_the_fusion_problem():
    ds = SyntheticScenes(24, (96, 128), seed=0)
    labels = torch.stack([ds[i]["label"] for i in range(len(ds))])
    ir = torch.stack([ds[i]["ir"][0] for i in range(len(ds))])
    vis = torch.stack([ds[i]["vis_y"][0] for i in range(len(ds))])
    present = set(labels.unique().tolist())
    assert present <= set(range(9)) and {0, 1, 2, 4} <= present
    for x in (ir, vis):
        assert x.min() >= 0 and x.max() <= 1
    warm = (labels == 2) | (labels == 1)
    background = labels == 0
    # People and cars stand out in IR far more than in VIS.
    ir_contrast = ir[warm].mean() - ir[background].mean()
    vis_contrast = (vis[warm].mean() - vis[background].mean()).abs()
    assert ir_contrast > 0.2 and ir_contrast > 2 * vis_contrast
    # Fine detail: VIS has much more high-frequency energy than IR.
    def hf(x):
        return (x[:, :, 1:] - x[:, :, :-1]).abs().mean()
    assert hf(vis) > 1.5 * hf(ir)


def test_synthetic_labels_can_be_dropped_and_sizes_any():
    s = SyntheticScenes(1, (37, 53), labels=False)[0]
    assert "label" not in s and s["ir"].shape == (1, 37, 53)
    with pytest.raises(IndexError):
        SyntheticScenes(1, 32)[1]


# --- bad input ------------------------------------------------------------------------------

def test_missing_partner_names_the_file(tmp_path):
    _make_pair_folder(tmp_path, ["a", "b"])
    (tmp_path / "vi" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"b\.png.*no visible partner"):
        PairedImages(tmp_path)


def test_size_mismatch_names_the_file(tmp_path):
    _make_pair_folder(tmp_path, ["a"])
    _save(tmp_path / "vi" / "a.png", _rng_image(np.random.default_rng(0), 21, 30))
    with pytest.raises(DatasetError, match=r"vi/a\.png: size 30x21 does not match"):
        PairedImages(tmp_path)[0]


def test_corrupt_image_names_the_file(tmp_path):
    _make_pair_folder(tmp_path, ["a"])
    (tmp_path / "ir" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match=r"ir/a\.png: unreadable or corrupt"):
        PairedImages(tmp_path)[0]


def test_empty_folder_and_missing_folders(tmp_path):
    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        PairedImages(tmp_path)
    with pytest.raises(DatasetError, match="expected sub-folders ir/ and vi/"):
        PairedImages(tmp_path / "ir")
    with pytest.raises(DatasetError, match="no split 'val'"):
        PairedImages(tmp_path, split="val")


def test_label_out_of_range_names_the_file(tmp_path):
    _make_pair_folder(tmp_path / "test", ["a"], labels=9)
    bad = np.zeros((20, 30), dtype=np.uint8)
    bad[3, 4] = 12
    _save(tmp_path / "test" / "Segmentation_labels" / "a.png", bad)
    with pytest.raises(DatasetError, match=r"Segmentation_labels/a\.png: label has classes \[12\]"):
        PairedImages(tmp_path, split="test")[0]


def test_missing_label_and_duplicate_stems(tmp_path):
    _make_pair_folder(tmp_path / "test", ["a", "b"], labels=9)
    (tmp_path / "test" / "Segmentation_labels" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"ir/b\.png: no label"):
        PairedImages(tmp_path, split="test")
    _save(tmp_path / "test" / "ir" / "a.jpg", _rng_image(np.random.default_rng(0), 20, 30, 1))
    with pytest.raises(DatasetError, match=r"stem 'a' also used"):
        PairedImages(tmp_path, split="test", labels=False)


def test_shared_data_root_one_rule_env_then_checkout_then_working_directory(tmp_path, monkeypatch):
    """Every script and command finds ../shared/data by the same rule (dfsfuse.data.shared)."""
    from dfsfuse.data import shared
    from dfsfuse.semantic_bench import default_data_root

    monkeypatch.setenv("DFSFUSE_SHARED_DATA", str(tmp_path / "elsewhere"))
    assert shared.shared_data_root() == tmp_path / "elsewhere" == default_data_root()
    monkeypatch.delenv("DFSFUSE_SHARED_DATA")
    assert shared.CHECKOUT_SHARED_DATA == Path(__file__).resolve().parents[2] / "shared" / "data"
    checkout = tmp_path / "repo_parent" / "shared" / "data"
    checkout.mkdir(parents=True)
    monkeypatch.setattr(shared, "CHECKOUT_SHARED_DATA", checkout)
    monkeypatch.chdir(tmp_path)
    assert shared.shared_data_root() == checkout  # found from any working directory
    monkeypatch.setattr(shared, "CHECKOUT_SHARED_DATA", tmp_path / "not_a_checkout" / "shared" / "data")
    assert shared.shared_data_root() == Path("..") / "shared" / "data"  # installed package: cwd-relative
