"""Explicit modes: ``train.stage1`` names what stage 1 trains; objectives name their own loss terms
(dynamic weighting of stage 2 balances ``StudentObjective.term_names``)."""

from __future__ import annotations

import pytest

from dfsfuse.models import create_model
from dfsfuse.train.config import ConfigError, load_config
from dfsfuse.train.objectives import StudentObjective


@pytest.mark.parametrize("overrides, mode", [
    ([], "fusion_seg"),                                      # old configs: inferred from loss.consistency
    (["loss.consistency=0.5"], "ssvif"),
    (["train.stage1=ssvif", "loss.consistency=0.5"], "ssvif"),
    (["train.stage1=fusion_seg"], "fusion_seg"),
])
def test_stage1_mode(overrides, mode) -> None:
    assert load_config(None, overrides).stage1_mode == mode


@pytest.mark.parametrize("overrides, message", [
    (["train.stage1=ssvif"], "train.stage1=ssvif needs loss.consistency > 0"),
    (["train.stage1=fusion_seg", "loss.consistency=0.5"], "contradicts loss.consistency=0.5"),
    (["train.stage1=seg"], "train.stage1 must be one of fusion_seg, ssvif"),
])
def test_stage1_contradictions_are_one_line_errors(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_unset_stage1_stays_unset_in_the_saved_config() -> None:
    assert load_config(None, ["loss.consistency=0.5"]).to_dict()["train"]["stage1"] is None


@pytest.mark.parametrize("overrides", [
    [],
    ["loss.feature=0", "loss.seg_ce=0"],
    ["loss.student_fusion=0.5", "loss.frequency=0"],
    ["loss.output=0", "loss.seg_kl=0", "loss.student_fusion=1", "loss.ssim=0"],
])
def test_student_term_names_come_from_the_objective(overrides) -> None:
    cfg = load_config(None, overrides)
    student = create_model("student", width=4)
    teacher_channels = dict(create_model("teacher", dim=8, bottleneck_depth=1).feature_channels)
    objective = StudentObjective(student, teacher_channels, cfg.loss)
    expected = [n for n, w in (("output", cfg.loss.output), ("feature", cfg.loss.feature),
                               ("frequency", cfg.loss.frequency), ("seg_kl", cfg.loss.seg_kl),
                               ("seg_ce", cfg.loss.seg_ce)) if w]
    if cfg.loss.student_fusion:
        expected += [f"fusion_{n}" for n in objective.fusion_loss.term_names]
    assert objective.term_names == expected
