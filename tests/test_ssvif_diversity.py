"""SSVIF without collapse: the batch class-diversity term, per-pixel entropy, and scoring a
label-free segmenter by Hungarian matching of its clusters to real classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dfsfuse.losses import FusionLoss, batch_class_diversity, cross_seg_consistency, pixel_entropy
from dfsfuse.metrics.clusters import cluster_confusion, match_clusters
from dfsfuse.train.config import LossConfig
from dfsfuse.train.ssvif import SSVIF_CONFIG_KEYS, SSVIFObjective

K = 9


def _onehot_logits(classes: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(classes, K).permute(0, 3, 1, 2).float() * scale


def test_collapsed_pair_is_penalised_more_than_a_diverse_consistent_pair() -> None:
    torch.manual_seed(0)
    collapsed = _onehot_logits(torch.full((2, 16, 16), 3))
    diverse = _onehot_logits(torch.arange(2 * 16 * 16).reshape(2, 16, 16) % K)
    # both pairs are perfectly consistent, so consistency alone cannot tell them apart ...
    assert cross_seg_consistency(collapsed, collapsed) == 0 and cross_seg_consistency(diverse, diverse) == 0
    # ... the diversity term can: log K for the collapse, ~0 for the diverse pair
    assert batch_class_diversity(collapsed).item() == pytest.approx(math.log(K), abs=1e-4)
    assert batch_class_diversity(diverse).item() < 1e-3
    assert batch_class_diversity(collapsed) > batch_class_diversity(diverse) + 2.0


def test_diversity_is_zero_for_a_uniform_batch_distribution_and_never_negative() -> None:
    assert batch_class_diversity(torch.zeros(3, K, 8, 8)).abs().item() < 1e-6
    # per-pixel confident but the classes evenly used over the batch: still 0
    even = _onehot_logits(torch.arange(K).view(K, 1, 1).expand(K, 4, 4).contiguous())
    assert batch_class_diversity(even).abs().item() < 1e-5
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        assert batch_class_diversity(torch.randn(2, K, 6, 6, generator=g) * 4) >= -1e-6


def test_pixel_entropy_is_low_for_confident_pixels_and_log_k_for_uniform() -> None:
    assert pixel_entropy(torch.zeros(1, K, 4, 4)).item() == pytest.approx(math.log(K), rel=1e-6)
    assert pixel_entropy(_onehot_logits(torch.zeros(1, 4, 4, dtype=torch.long))).item() < 1e-4


def test_diversity_gradient_pushes_a_collapsed_segmentation_apart() -> None:
    logits = (_onehot_logits(torch.full((1, 8, 8), 2), scale=2.0) + 0.01 * torch.randn(1, K, 8, 8)).requires_grad_()
    before = batch_class_diversity(logits)
    before.backward()
    with torch.no_grad():
        after = batch_class_diversity(logits - 1.0 * logits.grad)
    assert after < before


class _Fusion(torch.nn.Module):
    feature_channels = {"fusion": 2}

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(2, 2, 1)

    def forward(self, ir, vis_y):
        from types import SimpleNamespace

        f = self.mix(torch.cat([ir, vis_y], 1))
        return SimpleNamespace(fused=f[:, :1].sigmoid(), features={"fusion": f})


class _Seg(torch.nn.Module):
    num_classes = K

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, K, 3, padding=1)

    def forward(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.conv(x))


def test_ssvif_objective_adds_diversity_and_confidence_terms_from_config() -> None:
    assert {"consistency_diversity", "consistency_confidence"} <= set(SSVIF_CONFIG_KEYS)
    cfg = LossConfig(consistency=0.5, consistency_warmup=1, consistency_confidence=0.1)
    assert cfg.consistency_diversity > 0  # on by default whenever SSVIF is on
    torch.manual_seed(0)
    obj = SSVIFObjective.from_config(_Fusion(), _Seg(), cfg)
    batch = {"ir": torch.rand(2, 1, 16, 16), "vis_y": torch.rand(2, 1, 16, 16)}
    obj.set_step(0)  # warm-up: computed (DDP) but weight 0
    terms = obj(batch)
    assert list(terms) == ["fusion", "consistency", "diversity", "confidence"]
    assert terms["diversity"] == 0 and terms["confidence"] == 0
    obj.set_step(1)
    terms = obj(batch)
    assert terms["diversity"] > 0 and terms["confidence"] > 0
    # the class used as a building block keeps its old terms unless asked
    plain = SSVIFObjective(_Fusion(), _Seg(), FusionLoss(), consistency=0.5)
    assert list(plain(batch)) == ["fusion", "consistency"]
    with pytest.raises(ValueError, match="diversity"):
        SSVIFObjective(_Fusion(), _Seg(), FusionLoss(), diversity=-1.0)


def test_hungarian_matching_on_a_hand_case() -> None:
    # 3 classes, 4 clusters; cluster 2 ≈ class 0, cluster 0 ≈ class 1, cluster 3 = class 2, cluster 1 spurious
    target = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 255]])
    pred = torch.tensor([[2, 2, 2, 1, 0, 0, 2, 3, 3, 0]])
    conf = cluster_confusion(pred, target, num_classes=3, num_clusters=4)
    assert conf.tolist() == [[0, 1, 3, 0], [2, 0, 1, 0], [0, 0, 0, 2]]
    m = match_clusters(conf)
    assert m.mapping == {2: 0, 0: 1, 3: 2}
    # class 0: tp 3, true 4, predicted (cluster 2) 4 → 3/5; class 1: tp 2, true 3, pred 2 → 2/3; class 2: 1
    assert m.iou == pytest.approx([3 / 5, 2 / 3, 1.0])
    assert m.miou == pytest.approx((3 / 5 + 2 / 3 + 1.0) / 3)
    assert m.pixel_accuracy == pytest.approx(7 / 9)
    # a relabelling of the truth scores 1; a constant prediction scores only its matched class
    perm = torch.tensor([2, 0, 1])
    t = torch.tensor([[0, 1, 2, 2, 1, 0]])
    assert match_clusters(cluster_confusion(perm[t], t, 3, 3)).miou == pytest.approx(1.0)
    const = match_clusters(cluster_confusion(torch.zeros_like(t), t, 3, 3))
    assert const.iou == pytest.approx([2 / 6, 0.0, 0.0])  # one class matched (IoU 2/6), the others missed
    assert const.miou == pytest.approx(2 / 18)
    absent = match_clusters(np.array([[3, 0], [0, 0]]))  # class 1 neither true nor predicted: NaN, left out
    assert np.isnan(absent.iou[1]) and absent.miou == 1.0
