"""ConfusionMatrix / IoU / mIoU against a plain numpy confusion matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dfsfuse.metrics import ConfusionMatrix, FalsePositiveDistance

K = 9


def _numpy_confusion(pred: np.ndarray, target: np.ndarray, k: int = K, ignore: int = 255) -> np.ndarray:
    keep = target != ignore
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (target[keep], pred[keep]), 1)
    return m


def _batch(seed: int, shape=(2, 24, 32), classes=range(K)) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    target = rng.choice(list(classes), shape)
    target[rng.random(shape) < 0.1] = 255
    pred = np.where(rng.random(shape) < 0.6, np.where(target == 255, 0, target), rng.integers(0, K, shape))
    return torch.from_numpy(pred), torch.from_numpy(target)


def test_matrix_iou_and_miou_match_numpy_over_several_batches() -> None:
    cm = ConfusionMatrix(num_classes=K, ignore_index=255)
    expected = np.zeros((K, K), dtype=np.int64)
    for seed in range(4):
        pred, target = _batch(seed)
        cm.update(pred, target)
        expected += _numpy_confusion(pred.numpy(), target.numpy())
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    tp = np.diag(expected).astype(float)
    iou = tp / (expected.sum(0) + expected.sum(1) - tp)
    np.testing.assert_allclose(cm.iou().numpy(), iou, rtol=1e-12)
    assert cm.miou() == pytest.approx(iou.mean(), rel=1e-12)
    assert cm.pixel_accuracy() == pytest.approx(tp.sum() / expected.sum())


def test_miou_averages_only_classes_present_in_target_or_prediction() -> None:
    cm = ConfusionMatrix()
    target = torch.tensor([[0, 0, 1, 1, 255]])
    pred = torch.tensor([[0, 3, 1, 1, 7]])  # class 7 only under an ignored pixel: not counted
    cm.update(pred, target)
    iou = cm.iou()
    assert iou[0] == pytest.approx(0.5) and iou[1] == pytest.approx(1.0) and iou[3] == 0.0
    assert all(math.isnan(v) for i, v in enumerate(iou.tolist()) if i not in (0, 1, 3))
    assert cm.miou() == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # precision = TP / predicted, recall = TP / labelled: class 0 predicted once, right once, labelled
    # twice; class 3 predicted once, never labelled; class 1 both perfect
    precision, recall = cm.precision(), cm.recall()
    assert precision[0] == 1.0 and recall[0] == 0.5 and precision[1] == 1.0 and recall[1] == 1.0
    assert precision[3] == 0.0 and math.isnan(recall[3]) and math.isnan(precision[7])


def test_empty_matrix_is_nan_not_an_error() -> None:
    cm = ConfusionMatrix()
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())
    cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))
    assert int(cm.matrix.sum()) == 0 and math.isnan(cm.miou())


def test_logits_are_argmaxed() -> None:
    pred, target = _batch(5)
    logits = torch.nn.functional.one_hot(pred, K).permute(0, 3, 1, 2).float() + 0.01 * torch.rand(2, K, 24, 32)
    a, b = ConfusionMatrix(), ConfusionMatrix()
    a.update(logits, target)
    b.update(pred, target)
    assert torch.equal(a.matrix, b.matrix)


def test_reset_and_merge() -> None:
    whole, left, right = ConfusionMatrix(), ConfusionMatrix(), ConfusionMatrix()
    (p1, t1), (p2, t2) = _batch(1), _batch(2)
    whole.update(torch.cat([p1, p2]), torch.cat([t1, t2]))
    left.update(p1, t1)
    right.update(p2, t2)
    assert torch.equal(left.merge(right).matrix, whole.matrix)
    assert torch.equal(ConfusionMatrix().merge(whole.matrix).matrix, whole.matrix)
    with pytest.raises(ValueError, match="cannot merge"):
        whole.merge(ConfusionMatrix(num_classes=3))
    whole.reset()
    assert int(whole.matrix.sum()) == 0


@pytest.mark.parametrize(
    "pred,target,match",
    [
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long), "does not match"),
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 9), "target has class indices outside 0..8"),
        (torch.full((1, 4, 4), -1), torch.zeros(1, 4, 4, dtype=torch.long), "pred has class indices"),
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4), "integer class indices"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), "logits"),
    ],
    ids=["shape", "target-range", "pred-range", "float-target", "logit-classes"],
)
def test_bad_updates_raise(pred, target, match) -> None:
    with pytest.raises(ValueError, match=match):
        ConfusionMatrix().update(pred, target)


def test_no_ignore_index_counts_every_pixel() -> None:
    cm = ConfusionMatrix(num_classes=3, ignore_index=None)
    cm.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2]))
    np.testing.assert_array_equal(cm.matrix.numpy(), [[1, 0, 0], [0, 1, 1], [0, 0, 1]])


def _all_reduce_worker(rank: int, world_size: int, rendezvous: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        cm = ConfusionMatrix()
        cm.update(*_batch(rank))
        torch.save(cm.all_reduce().matrix, f"{out}.{rank}")
        dist.barrier()  # tear gloo down together: a rank exiting first can abort the other's teardown
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_processes(tmp_path) -> None:
    import torch.multiprocessing as mp

    cm = ConfusionMatrix()
    cm.update(*_batch(0))
    before = cm.matrix.clone()
    assert torch.equal(cm.all_reduce().matrix, before)  # no process group: a no-op
    cm.update(*_batch(1))
    out = str(tmp_path / "matrix")
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "rendezvous"), out), nprocs=2, join=True)
    for rank in range(2):
        assert torch.equal(torch.load(f"{out}.{rank}"), cm.matrix)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    pred, target = _batch(4)
    cpu, gpu = ConfusionMatrix(), ConfusionMatrix()
    cpu.update(pred, target)
    gpu.update(pred.cuda(), target.cuda())
    assert gpu.matrix.device.type == "cuda"
    assert torch.equal(gpu.matrix.cpu(), cpu.matrix)


def test_false_positives_near_an_object_or_far_from_any() -> None:
    # 1×40×60 (short side 40, radius 0.05 → 2 px): a person at rows 10-12, columns 10-12
    target = torch.zeros(1, 40, 60, dtype=torch.long)
    target[0, 10:13, 10:13] = 2
    target[0, 30, 50] = 255  # ignored: never a false positive
    pred = target.clone()
    pred[0, 30, 50] = 2
    pred[0, 14, 12] = 2       # 2 px below the person (Chebyshev): drawn too big
    pred[0, 10, 15] = 2       # 3 px right of it: already far
    pred[0, 35, 5] = 2        # far from any person
    pred[0, 11, 11] = 0       # a missed person pixel is a false *background* pixel, near the background
    fp = FalsePositiveDistance(radius=0.05)
    fp.update(pred, target)
    assert fp.counts[:, 2].tolist() == [1, 2] and fp.counts[:, 0].tolist() == [1, 0]
    far = fp.far_fraction()
    assert far[2] == pytest.approx(2 / 3) and far[0] == 0.0 and math.isnan(far[5])
    # near + far is every false positive the confusion matrix counts
    cm = ConfusionMatrix()
    cm.update(pred, target)
    m = cm.matrix
    assert (fp.counts.sum(0) == m.sum(0) - m.diagonal()).all()
    with pytest.raises(ValueError, match="B×H×W"):
        fp.update(pred[0], target[0])
    with pytest.raises(ValueError, match="radius"):
        FalsePositiveDistance(radius=0)
