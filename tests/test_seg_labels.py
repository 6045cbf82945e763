"""Reading segmentation labels: bad labels are one-line DatasetErrors naming the file; real MSRS labels.

(Out-of-range class 12 and a missing label are in test_data.py; the confusion matrix against numpy
and a hand case are in test_segmentation_metrics.py.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfsfuse.data import DatasetError, PairedImages, read_label
from dfsfuse.metrics import ConfusionMatrix


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)
    return path


def _folder(root: Path, names=("a", "b"), h: int = 12, w: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        _save(root / "ir" / f"{name}.png", rng.integers(0, 256, (h, w), dtype=np.uint8))
        _save(root / "vi" / f"{name}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        _save(root / "Segmentation_labels" / f"{name}.png", rng.integers(0, 9, (h, w), dtype=np.uint8))
    return root


def _one_line_error(root: Path, pattern: str) -> None:
    with pytest.raises(DatasetError, match=pattern) as info:
        dataset = PairedImages(root)
        for i in range(len(dataset)):
            dataset[i]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [9, 100, 254])
def test_class_just_outside_0_8_names_the_file(tmp_path, value):
    root = _folder(tmp_path)
    label = np.zeros((12, 16), np.uint8)
    label[2, 3] = value
    _save(root / "Segmentation_labels" / "b.png", label)
    _one_line_error(root, rf"Segmentation_labels/b\.png: label has classes \[{value}\] outside 0\.\.8")


def test_ignore_value_255_is_kept_as_ignore(tmp_path):
    root = _folder(tmp_path)
    label = np.full((12, 16), 8, np.uint8)
    label[0] = 255
    _save(root / "Segmentation_labels" / "a.png", label)
    got = PairedImages(root)[0]["label"]
    assert got.dtype == torch.int64 and set(got.unique().tolist()) == {8, 255}


def test_sixteen_bit_label_out_of_range_names_the_file(tmp_path):
    root = _folder(tmp_path)
    label = np.zeros((12, 16), np.uint16)
    label[1, 1] = 300
    _save(root / "Segmentation_labels" / "a.png", label)
    _one_line_error(root, r"Segmentation_labels/a\.png: label has classes \[300\]")


@pytest.mark.parametrize("shape", [(12, 15), (11, 16), (24, 32)])
def test_label_of_the_wrong_size_names_the_file(tmp_path, shape):
    root = _folder(tmp_path)
    _save(root / "Segmentation_labels" / "b.png", np.zeros(shape, np.uint8))
    _one_line_error(root, rf"Segmentation_labels/b\.png: label size {shape[1]}x{shape[0]} does not match "
                          r"the pair's 16x12")


def test_missing_label_in_a_labelled_folder_names_the_pair(tmp_path):
    root = _folder(tmp_path, names=("a", "b", "c"))
    (root / "Segmentation_labels" / "c.png").unlink()
    _one_line_error(root, r"ir/c\.png: no label named c\.\* in .*Segmentation_labels")
    # without labels the folder is fine
    assert len(PairedImages(root, labels=False)) == 3


def test_colour_and_corrupt_labels_name_the_file(tmp_path):
    root = _folder(tmp_path)
    colour = np.zeros((12, 16, 3), np.uint8)
    colour[..., 0] = 1
    _save(root / "Segmentation_labels" / "a.png", colour)
    _one_line_error(root, r"Segmentation_labels/a\.png: colour label image")
    (root / "Segmentation_labels" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _one_line_error(root, r"Segmentation_labels/a\.png: unreadable or corrupt label")
    # a grey label stored as RGB with equal channels is accepted
    grey = np.repeat(np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)[..., None] % 9, 3, axis=-1)
    _save(root / "Segmentation_labels" / "a.png", grey)
    np.testing.assert_array_equal(PairedImages(root)[0]["label"].numpy(), grey[..., 0])


def test_real_msrs_labels_read_in_range_and_score_themselves_perfectly(shared_data):
    for split in ("train", "val", "test"):
        folder = shared_data / "msrs" / split / "Segmentation_labels"
        if not folder.is_dir():
            pytest.skip(f"{folder} missing")
        files = sorted(folder.glob("*.png"))[:3]
        cm = ConfusionMatrix()
        for path in files:
            label = torch.from_numpy(read_label(path))
            assert label.shape == (480, 640) and 0 <= int(label.min()) and int(label.max()) <= 8
            cm.update(label[None], label[None])
        assert cm.miou() == 1.0 and int(cm.matrix.sum()) == 480 * 640 * len(files)


def test_confusion_matrix_three_class_hand_case():
    """Written out by hand: rows = targets, columns = predictions."""
    target = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 255]])
    pred = torch.tensor([[0, 0, 1, 1, 2, 2, 2, 0, 1]])
    cm = ConfusionMatrix(num_classes=3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    # IoU_k = TP / (TP + FP + FN): 0 → 2/(2+1+1), 1 → 1/(1+1+1), 2 → 2/(2+1+1)
    assert cm.iou().tolist() == pytest.approx([0.5, 1 / 3, 0.5])
    assert cm.miou() == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 8)
