"""Class-imbalance-aware segmentation CE: ENet class weights, OHEM, modes and the config switch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from PIL import Image

from dfsfuse.losses import (
    MSRS_CLASS_WEIGHTS,
    MSRS_TRAIN_CLASS_PIXELS,
    SegmentationCE,
    class_weights_from_labels,
    enet_class_weights,
    label_pixel_counts,
    ohem_ce,
    segmentation_ce,
)
from dfsfuse.train.config import load_config

K = 9


def _logits_labels(seed: int = 0, shape=(2, 9, 13)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], K, *shape[1:], generator=g)
    labels = torch.randint(0, K, shape, generator=g)
    labels[:, :2] = 255
    return logits, labels


def test_enet_weights_by_hand_and_msrs_table():
    w = enet_class_weights([90, 9, 1, 0])
    assert w == pytest.approx([1 / math.log(1.02 + 0.9), 1 / math.log(1.02 + 0.09), 1 / math.log(1.03),
                               1 / math.log(1.02)])
    assert enet_class_weights([2, 0], c=1.1)[1] == pytest.approx(1 / math.log(1.1))
    p = np.asarray(MSRS_TRAIN_CLASS_PIXELS) / sum(MSRS_TRAIN_CLASS_PIXELS)
    np.testing.assert_allclose(MSRS_CLASS_WEIGHTS, 1 / np.log(1.02 + p))
    assert MSRS_CLASS_WEIGHTS[0] == min(MSRS_CLASS_WEIGHTS) and max(MSRS_CLASS_WEIGHTS) < 1 / math.log(1.02)
    for bad in ([], [0, 0], [1, -1]):
        with pytest.raises(ValueError):
            enet_class_weights(bad)
    with pytest.raises(ValueError, match="greater than 1"):
        enet_class_weights([1, 1], c=1.0)


def test_pixel_counts_from_folder_files_and_tensor(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 4, (6, 7), dtype=np.uint8) for _ in range(3)]
    arrays[0][0, :3] = 255  # ignored
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    expected = np.zeros(K, dtype=np.int64)
    for a in arrays:
        expected += np.bincount(a[a != 255].ravel(), minlength=256)[:K]
    np.testing.assert_array_equal(label_pixel_counts(tmp_path), expected)
    np.testing.assert_array_equal(label_pixel_counts(sorted(tmp_path.iterdir())), expected)
    tensor = torch.from_numpy(np.stack(arrays).astype(np.int64))
    np.testing.assert_array_equal(label_pixel_counts(tensor), expected)
    assert class_weights_from_labels(tmp_path) == pytest.approx(enet_class_weights(expected))


def test_msrs_table_matches_the_label_files(shared_data):
    counts = label_pixel_counts(shared_data / "msrs" / "train" / "Segmentation_labels")
    assert tuple(counts.tolist()) == MSRS_TRAIN_CLASS_PIXELS


@pytest.mark.parametrize("ignore_index", [255, -100])
def test_weighted_matches_torch_cross_entropy(ignore_index):
    logits, labels = _logits_labels()
    labels[labels == 255] = ignore_index
    cw = torch.linspace(0.3, 3.0, K)
    got = segmentation_ce(logits, labels, ignore_index=ignore_index, class_weights=cw, mode="weighted")
    torch.testing.assert_close(got, F.cross_entropy(logits, labels, weight=cw, ignore_index=ignore_index))
    # no weights given: the MSRS table
    msrs = torch.tensor(MSRS_CLASS_WEIGHTS, dtype=torch.float32)
    torch.testing.assert_close(segmentation_ce(logits, labels, ignore_index=ignore_index, mode="weighted"),
                               F.cross_entropy(logits, labels, weight=msrs, ignore_index=ignore_index))
    torch.testing.assert_close(segmentation_ce(logits, labels, ignore_index=ignore_index, mode="plain"),
                               F.cross_entropy(logits, labels, ignore_index=ignore_index))


def test_ohem_hand_computed_tiny_case():
    # 1 image, 2 classes, 6 pixels; logit of the true class minus the other one sets p(true).
    margins = torch.tensor([3.0, 2.0, 0.5, 0.0, -1.0, 0.2])
    labels = torch.tensor([[[0, 1, 0, 1, 255, 0]]])
    logits = torch.zeros(1, 2, 1, 6)
    for i, (m, y) in enumerate(zip(margins.tolist(), labels.flatten().tolist())):
        logits[0, y if y != 255 else 0, 0, i] = m
    loss = F.softplus(-margins)  # -log sigmoid(margin) = CE of two classes
    # thresh 0.7: hard when p(true) < 0.7, i.e. margin < logit(0.7) = 0.847: pixels 2, 3, 5 (4 is ignored)
    expected = loss[[2, 3, 5]].mean()
    torch.testing.assert_close(ohem_ce(logits, labels, thresh=0.7, min_kept=0.2), expected)
    torch.testing.assert_close(segmentation_ce(logits, labels, mode="ohem", ohem_thresh=0.7, ohem_min_kept=0.2),
                               expected)
    # at least 4 of 5 labelled pixels: the 4 largest losses (pixel 0 is the easiest, dropped)
    torch.testing.assert_close(ohem_ce(logits, labels, thresh=0.7, min_kept=0.8), loss[[1, 2, 3, 5]].mean())
    # thresh 1.0 keeps every labelled pixel whose loss is > 0 = all: the plain mean
    torch.testing.assert_close(ohem_ce(logits, labels, thresh=1.0, min_kept=0.2), loss[[0, 1, 2, 3, 5]].mean())
    # class weights: Σ w·l / Σ w over the kept pixels
    w = torch.tensor([1.0, 3.0])
    wk = w[labels.flatten()[[2, 3, 5]]]
    torch.testing.assert_close(ohem_ce(logits, labels, thresh=0.7, min_kept=0.2, class_weights=w),
                               (loss[[2, 3, 5]] * wk).sum() / wk.sum())


def test_ohem_against_a_sort_reference_and_gradient():
    logits, labels = _logits_labels(3, (3, 17, 19))
    logits.requires_grad_()
    flat = F.cross_entropy(logits, labels, ignore_index=255, reduction="none").flatten()
    valid = flat[(labels != 255).flatten()]
    ordered = valid.sort(descending=True).values
    for thresh, frac in ((0.7, 1 / 16), (0.05, 0.5), (0.99, 0.01)):
        n_min = math.ceil(frac * valid.numel())
        above = ordered[ordered > -math.log(thresh)]
        expected = above.mean() if above.numel() >= n_min else ordered[:n_min].mean()
        torch.testing.assert_close(ohem_ce(logits, labels, thresh, frac), expected)
    ohem_ce(logits, labels).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["plain", "weighted", "ohem"])
def test_all_ignored_is_zero_with_gradient(mode):
    logits = torch.randn(2, K, 5, 6, requires_grad=True)
    zero = segmentation_ce(logits, torch.full((2, 5, 6), 255), mode=mode)
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    assert logits.grad.abs().sum() == 0


def test_bad_modes_and_weights():
    logits, labels = _logits_labels()
    with pytest.raises(ValueError, match="unknown segmentation loss mode 'focal'"):
        segmentation_ce(logits, labels, mode="focal")
    with pytest.raises(ValueError, match="not 'plain'"):
        segmentation_ce(logits, labels, mode="plain", class_weights=[1.0] * K)
    with pytest.raises(ValueError, match="need 9 values"):
        segmentation_ce(logits, labels, mode="weighted", class_weights=[1.0] * 3)
    for kwargs in ({"thresh": 0.0}, {"thresh": 1.5}, {"min_kept": 0.0}, {"min_kept": 2.0}):
        with pytest.raises(ValueError, match="OHEM"):
            ohem_ce(logits, labels, **kwargs)
    with pytest.raises(ValueError, match="OHEM"):
        SegmentationCE("ohem", ohem_min_kept=0)


def test_module_matches_function_and_has_no_state():
    logits, labels = _logits_labels(5)
    crit = SegmentationCE("ohem", class_weights=MSRS_CLASS_WEIGHTS, ohem_thresh=0.6, ohem_min_kept=0.25)
    torch.testing.assert_close(crit(logits, labels),
                               ohem_ce(logits, labels, 0.6, 0.25, class_weights=MSRS_CLASS_WEIGHTS))
    assert SegmentationCE("weighted").class_weights == MSRS_CLASS_WEIGHTS
    assert crit.state_dict() == {} and "ohem" in repr(crit)


def test_config_selects_the_segmentation_loss():
    from dfsfuse.models import create_model
    from dfsfuse.train.objectives import StudentObjective, TeacherObjective, seg_criterion_from

    assert load_config().loss.seg_loss == "plain"  # default: today's behaviour
    cfg = load_config(overrides=["loss.seg_loss=ohem", "loss.seg_ohem_thresh=0.5", "loss.seg_ohem_min_kept=0.25"])
    crit = seg_criterion_from(cfg.loss)
    assert (crit.mode, crit.ohem_thresh, crit.ohem_min_kept) == ("ohem", 0.5, 0.25)
    weighted = load_config(overrides=["loss.seg_loss=weighted", "loss.seg_class_weights=[1,2,3,4,5,6,7,8,9]"])
    assert seg_criterion_from(weighted.loss).class_weights == tuple(float(i) for i in range(1, 10))
    with pytest.raises(ValueError, match="loss.seg_loss: unknown segmentation loss 'dice'"):
        seg_criterion_from(load_config(overrides=["loss.seg_loss=dice"]).loss)

    # both stages compute seg_ce with the configured criterion
    torch.manual_seed(0)
    teacher = TeacherObjective(create_model("student", width=4), create_model("segmenter", fpn_dim=8), cfg.loss)
    batch = {"ir": torch.rand(2, 1, 32, 32), "vis_y": torch.rand(2, 1, 32, 32),
             "label": torch.randint(0, K, (2, 32, 32))}
    terms = teacher(batch)
    seg = teacher.segmenter(teacher.fusion(batch["ir"], batch["vis_y"]).fused).logits
    torch.testing.assert_close(terms["seg_ce"], cfg.loss.seg_ce * ohem_ce(seg, batch["label"], 0.5, 0.25))
    student = StudentObjective(create_model("student", width=4), create_model("student", width=4).feature_channels,
                               cfg.loss)
    assert student.distill.seg_criterion.mode == "ohem"


def test_student_consistency_is_label_free_and_trains_student_and_head():
    """SSVIF's cross-segmentation consistency in stage 2: the term equals the symmetric KL between
    the feature head's segmentation (resized) and the frozen segmenter on the student's fusion,
    needs no label, and its gradient reaches both the student and the feature head."""
    from dfsfuse.losses import cross_seg_consistency
    from dfsfuse.models import create_model
    from dfsfuse.train.objectives import StudentObjective, freeze

    torch.manual_seed(0)
    cfg = load_config(overrides=["loss.student_consistency=0.3", "loss.seg_ce=0", "loss.seg_kl=0",
                                 "loss.output=0", "loss.feature=0", "loss.frequency=0", "loss.student_fusion=0",
                                 "loss.semantic_weighting=false"])
    segmenter = freeze(create_model("segmenter", fpn_dim=8))
    student_net = create_model("student_fast", width=4)
    objective = StudentObjective(student_net, student_net.feature_channels, cfg.loss, num_classes=segmenter.num_classes)
    assert objective.term_names == ["student_consistency"]
    batch = {"ir": torch.rand(2, 1, 32, 32), "vis_y": torch.rand(2, 1, 32, 32)}  # no "label"
    with torch.no_grad():
        teacher_out = create_model("student_fast", width=4)(batch["ir"], batch["vis_y"])
    terms = objective(batch, teacher_out, None, segmenter)
    assert set(terms) == {"student_consistency"}
    out = student_net(batch["ir"], batch["vis_y"])
    pixel = segmenter(out.fused).logits
    feature = F.interpolate(objective.feature_head(out.features["fusion"]), size=pixel.shape[-2:],
                            mode="bilinear", align_corners=False)
    torch.testing.assert_close(terms["student_consistency"], 0.3 * cross_seg_consistency(feature, pixel))
    terms["student_consistency"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.feature_head.parameters()
               if p.requires_grad)
    assert student_net.encoder_ir.stem.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="segmenter"):
        objective(batch, teacher_out, None, None)


def test_cotrained_segmenter_learns_with_the_student():
    """SeAFusion's joint training in stage 2 (``loss.seg_ce_cotrain``): the term equals the weighted
    seg CE of the co-trained segmenter on the student's fusion, its gradient reaches both that
    segmenter and the student, the segmenter is checkpointed with the objective, and the option
    refuses a missing segmenter and a negative weight."""
    from dfsfuse.losses import SegmentationCE
    from dfsfuse.models import create_model
    from dfsfuse.train.config import ConfigError
    from dfsfuse.train.objectives import StudentObjective

    torch.manual_seed(0)
    cfg = load_config(overrides=["loss.seg_ce_cotrain=0.7", "loss.seg_ce=0", "loss.seg_kl=0", "loss.output=0",
                                 "loss.feature=0", "loss.frequency=0", "loss.student_fusion=0",
                                 "loss.semantic_weighting=false", "loss.seg_loss=weighted"])
    cotrain = create_model("segmenter", fpn_dim=8)
    student_net = create_model("student_fast", width=4)
    objective = StudentObjective(student_net, student_net.feature_channels, cfg.loss, cotrain_segmenter=cotrain)
    assert objective.term_names == ["seg_ce_cotrain"]
    assert any(k.startswith("cotrain_segmenter.") for k in objective.state_dict())
    batch = {"ir": torch.rand(2, 1, 32, 32), "vis_y": torch.rand(2, 1, 32, 32),
             "label": torch.randint(0, 9, (2, 32, 32))}
    with torch.no_grad():
        teacher_out = create_model("student_fast", width=4)(batch["ir"], batch["vis_y"])
    objective.eval()  # BatchNorm on running statistics, so the independent recomputation matches
    terms = objective(batch, teacher_out, None, None)
    assert set(terms) == {"seg_ce_cotrain"}
    logits = cotrain(student_net(batch["ir"], batch["vis_y"]).fused).logits
    expected = 0.7 * SegmentationCE(mode="weighted", ignore_index=255)(logits, batch["label"])
    torch.testing.assert_close(terms["seg_ce_cotrain"], expected)
    terms["seg_ce_cotrain"].backward()
    assert all(p.grad is not None for p in cotrain.parameters() if p.requires_grad)
    assert sum(p.grad.abs().sum() for p in cotrain.classifier.parameters()) > 0
    assert sum(p.grad.abs().sum() for p in student_net.parameters() if p.grad is not None) > 0
    with pytest.raises(ValueError, match="seg_ce_cotrain"):
        StudentObjective(student_net, student_net.feature_channels, cfg.loss)
    with pytest.raises(ConfigError, match="seg_ce_cotrain"):
        load_config(overrides=["loss.seg_ce_cotrain=-1"])
    with pytest.raises(ConfigError, match="data.labels"):
        load_config(overrides=["loss.seg_ce_cotrain=1", "data.labels=false"])


def test_restarting_the_cotrained_segmenter_gives_fresh_weights_and_optimizer_state():
    """``loss.seg_ce_cotrain_reset``: a restart loads the weights and BN statistics a seeded
    ``create_model`` builds, drops only that segmenter's AdamW state, leaves the global RNG where
    it was (a seeded run is not shifted), and the option refuses bad values."""
    from dfsfuse.models import create_model
    from dfsfuse.train.config import ConfigError
    from dfsfuse.train.objectives import restart_cotrained_segmenter

    torch.manual_seed(0)
    segmenter = create_model("segmenter", fpn_dim=8)
    other = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW([*segmenter.parameters(), *other.parameters()], lr=1e-2)
    for _ in range(2):  # train a little: weights, BN statistics and optimizer state all move
        loss = segmenter(torch.rand(2, 1, 32, 32)).logits.square().mean() + other(torch.rand(4, 3)).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    before = torch.get_rng_state()
    restart_cotrained_segmenter(segmenter, optimizer, "segmenter", {"fpn_dim": 8}, seed=123)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(123)
    expected = create_model("segmenter", fpn_dim=8).state_dict()
    got = segmenter.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    assert all(p not in optimizer.state for p in segmenter.parameters())
    assert all("exp_avg" in optimizer.state[p] for p in other.parameters())
    optimizer.step()  # AdamW starts the dropped parameters afresh
    with pytest.raises(ConfigError, match="seg_ce_cotrain_reset"):
        load_config(overrides=["loss.seg_ce_cotrain=1", "loss.seg_ce_cotrain_reset=-5"])
    with pytest.raises(ConfigError, match="needs loss.seg_ce_cotrain"):
        load_config(overrides=["loss.seg_ce_cotrain_reset=100"])


def test_class_segmenter_reads_its_classes_for_the_seg_ce(tmp_path):
    """``loss.seg_ce_class_segmenter``: the seg CE reads the class segmenter's logits on the pixels
    labelled ``seg_ce_classes`` and the stage-2 segmenter's elsewhere (one weighted CE over both,
    checked against an independent mix), the gradient reaches the student through both, ``seg_kl``
    keeps the stage-2 segmenter, and bad values fail early with a one-line error."""
    from dfsfuse.export import save_pretrained
    from dfsfuse.models import create_model
    from dfsfuse.train.config import ConfigError
    from dfsfuse.train.objectives import StudentObjective, freeze
    from dfsfuse.train.stages import load_class_segmenter

    torch.manual_seed(0)
    cfg = load_config(overrides=["loss.seg_ce=2", "loss.seg_kl=0.5", "loss.output=0", "loss.feature=0",
                                 "loss.frequency=0", "loss.student_fusion=0", "loss.semantic_weighting=false",
                                 "loss.seg_loss=weighted", "loss.seg_ce_classes=[person, bike]",
                                 f"loss.seg_ce_class_segmenter={tmp_path / 'seg'}"])
    assert cfg.loss.seg_ce_class_ids == [2, 3]
    segmenter = freeze(create_model("segmenter", fpn_dim=8))
    class_segmenter = create_model("segmenter", fpn_dim=8)
    save_pretrained(class_segmenter, tmp_path / "seg", role="segmenter")
    loaded = load_class_segmenter(cfg, torch.device("cpu"))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    student_net = create_model("student_fast", width=4)
    objective = StudentObjective(student_net, student_net.feature_channels, cfg.loss).eval()
    labels = torch.randint(0, 9, (2, 32, 32))
    labels[0, :8] = 255
    batch = {"ir": torch.rand(2, 1, 32, 32), "vis_y": torch.rand(2, 1, 32, 32), "label": labels}
    with torch.no_grad():
        teacher_out = create_model("student_fast", width=4)(batch["ir"], batch["vis_y"])
        seg_t = segmenter(teacher_out.fused).logits
    terms = objective(batch, teacher_out, seg_t, segmenter, loaded)
    fused = student_net(batch["ir"], batch["vis_y"]).fused
    main, other = segmenter(fused).logits, loaded(fused).logits
    mixed = main.clone()
    for b, y, x in ((labels == 2) | (labels == 3)).nonzero().tolist():  # pixel by pixel
        mixed[b, :, y, x] = other[b, :, y, x]
    ce = SegmentationCE(mode="weighted", ignore_index=255)
    torch.testing.assert_close(terms["seg_ce"], 2 * ce(mixed, labels))
    assert not torch.allclose(terms["seg_ce"], 2 * ce(main, labels))
    plain = objective(batch, teacher_out, seg_t, segmenter)  # without it: the stage-2 segmenter alone
    torch.testing.assert_close(plain["seg_ce"], 2 * ce(main, labels))
    torch.testing.assert_close(terms["seg_kl"], plain["seg_kl"])
    terms["seg_ce"].backward()
    assert sum(p.grad.abs().sum() for p in student_net.parameters() if p.grad is not None) > 0
    with pytest.raises(ConfigError, match="seg_ce_classes"):
        load_config(overrides=["loss.seg_ce_classes=[pedestrian]"])
    with pytest.raises(ConfigError, match="seg_ce > 0"):
        load_config(overrides=["loss.seg_ce=0", "loss.seg_ce_class_segmenter=x"])
    with pytest.raises(FileNotFoundError, match="no exported model"):
        load_class_segmenter(load_config(overrides=[f"loss.seg_ce_class_segmenter={tmp_path / 'none'}"]),
                             torch.device("cpu"))
    save_pretrained(create_model("student_fast", width=4), tmp_path / "fusion", role="student")
    with pytest.raises(ValueError, match="not a segmentation model"):
        load_class_segmenter(load_config(overrides=[f"loss.seg_ce_class_segmenter={tmp_path / 'fusion'}"]),
                             torch.device("cpu"))
