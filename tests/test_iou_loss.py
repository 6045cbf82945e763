"""The Lovász-softmax IoU surrogate (dfsfuse.losses.iou) and the stage-2 option that uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfsfuse.losses.iou import lovasz_grad, lovasz_softmax
from dfsfuse.train.config import ConfigError, load_config

K = 9


def _one_hot_logits(pred: torch.Tensor, k: int = K) -> torch.Tensor:
    return F.one_hot(pred, k).permute(0, 3, 1, 2).float() * 50.0


def _one_minus_iou(pred: np.ndarray, label: np.ndarray, ignore: int = 255) -> float:
    """Mean over the classes present among labelled pixels of 1 − TP / (TP + FP + FN), by counting."""
    keep = label != ignore
    p, y = pred[keep], label[keep]
    values = []
    for c in np.unique(y):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        values.append(1.0 - tp / (tp + fp + fn))
    return float(np.mean(values))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_hot_predictions_give_exactly_one_minus_miou(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (2, 11, 13), generator=g)
    pred = torch.randint(0, 6, (2, 11, 13), generator=g)  # class 5 is predicted but never labelled
    labels[0, :3] = 255
    got = lovasz_softmax(_one_hot_logits(pred), labels).item()
    assert got == pytest.approx(_one_minus_iou(pred.numpy(), labels.numpy()), abs=1e-5)


def test_hand_computed_case_and_perfect_prediction():
    # 1×1×2×2: labels [[0, 1], [1, 1]], prediction [[0, 0], [1, 1]]:
    # class 0: TP 1, FP 1, FN 0 → IoU 1/2; class 1: TP 2, FN 1 → IoU 2/3; loss = (1/2 + 1/3) / 2
    labels = torch.tensor([[[0, 1], [1, 1]]])
    pred = torch.tensor([[[0, 0], [1, 1]]])
    assert lovasz_softmax(_one_hot_logits(pred, 2), labels).item() == pytest.approx(5 / 12, abs=1e-6)
    assert lovasz_softmax(_one_hot_logits(labels, 2), labels).item() == pytest.approx(0.0, abs=1e-6)
    # the weights are the Jaccard loss's increments as ever more pixels are wrong:
    # J(1) = 1 − 1/2 (one of two foreground pixels missed), J(2) = 1 − 1/3 (plus one false pixel),
    # J(3) = 1 (both missed), J(4) = 1; they sum to J(all wrong) = 1
    fg = torch.tensor([1.0, 0.0, 1.0, 0.0])
    torch.testing.assert_close(lovasz_grad(fg), torch.tensor([0.5, 1 / 6, 1 / 3, 0.0]))


def test_a_false_rare_class_pixel_costs_and_a_step_lowers_the_loss():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:4, 2:4] = 2  # a "person"
    clean = labels.clone()
    lamp = labels.clone()
    lamp[0, 6, 6] = 2  # the prediction calls one background pixel a person
    assert lovasz_softmax(_one_hot_logits(lamp), labels) > lovasz_softmax(_one_hot_logits(clean), labels)

    logits = torch.randn(1, K, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    before = lovasz_softmax(logits, labels)
    before.backward()
    with torch.no_grad():
        after = lovasz_softmax(logits - 0.5 * logits.grad, labels)
    assert after < before


def test_ignored_pixels_and_bad_shapes():
    logits = torch.randn(2, K, 6, 6, requires_grad=True)
    ignored = torch.full((2, 6, 6), 255, dtype=torch.long)
    zero = lovasz_softmax(logits, ignored)
    assert zero.item() == 0.0
    zero.backward()
    assert logits.grad is not None
    labels = torch.randint(0, K, (2, 6, 6))
    masked = labels.clone()
    masked[1] = 255
    torch.testing.assert_close(lovasz_softmax(logits, masked), lovasz_softmax(logits[:1], labels[:1]))
    with pytest.raises(ValueError, match="B×K×H×W logits and B×H×W labels"):
        lovasz_softmax(logits, labels[:, :5])


def test_config_option_adds_the_term_to_stage_two():
    from dfsfuse.models import create_model
    from dfsfuse.train.objectives import StudentObjective

    assert load_config().loss.seg_iou == 0.0
    with pytest.raises(ConfigError, match="loss.seg_iou"):
        load_config(overrides=["loss.seg_iou=-1"])
    cfg = load_config(overrides=["loss.seg_iou=2.5", "loss.seg_loss=weighted"])
    torch.manual_seed(0)
    student = create_model("student", width=4)
    objective = StudentObjective(student, student.feature_channels, cfg.loss)
    segmenter = create_model("segmenter", fpn_dim=8).eval()
    batch = {"ir": torch.rand(2, 1, 32, 32), "vis_y": torch.rand(2, 1, 32, 32),
             "label": torch.randint(0, K, (2, 32, 32), generator=torch.Generator().manual_seed(1))}
    with torch.no_grad():
        teacher_out = student(batch["ir"], batch["vis_y"])
        seg_teacher = segmenter(teacher_out.fused).logits
    terms = objective(batch, teacher_out, seg_teacher, segmenter)
    assert "seg_iou" in objective.term_names and "seg_ce" in terms
    with torch.no_grad():
        expected = 2.5 * lovasz_softmax(segmenter(student(batch["ir"], batch["vis_y"]).fused).logits, batch["label"])
    torch.testing.assert_close(terms["seg_iou"], expected)
    terms["seg_iou"].backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
