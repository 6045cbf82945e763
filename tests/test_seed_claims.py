"""Paired and strict (unpaired) seed-spread checks over semantic-benchmark results, and their script."""

from __future__ import annotations

import json

import numpy as np

import pytest

from conftest import REPO, load_script
from dfsfuse.seed_claims import compare_kinds, merge_results, per_seed_miou

SETTINGS = {"size": [240, 320], "crop": [160, 224], "steps": 900, "batch_size": 8, "lr": 0.002,
            "weight_decay": 1e-4, "warmup_steps": 20, "segmenter": "segmenter:backbone=x", "seg_loss": "weighted",
            "hflip": True, "ema": 0.0, "class_crops": 0.0,
            "train_dir": "/a/msrs/train", "test_dir": "/a/msrs/val"}


def doc(miou_per_seed, seeds, **settings):
    """A segbench --json document with these per-seed mIoUs."""
    out = {"settings": {**SETTINGS, **settings}, "seeds": seeds,
           "miou": {k: sum(v) / len(v) for k, v in miou_per_seed.items()}}
    if len(seeds) > 1:
        out["miou_per_seed"] = miou_per_seed
    return out


def test_per_seed_reads_one_seed_and_several():
    assert per_seed_miou(doc({"ir": [0.2]}, [3])) == {"ir": {3: 0.2}}
    assert per_seed_miou(doc({"ir": [0.2, 0.3]}, [0, 1])) == {"ir": {0: 0.2, 1: 0.3}}
    with pytest.raises(ValueError, match="quick"):
        per_seed_miou({"settings": {}, "seeds": [], "miou": {"ir": 0.2}})


def test_merge_joins_kinds_and_seeds_from_several_runs():
    merged, protocol = merge_results([
        ("a.json", doc({"ir": [0.15, 0.16], "vis": [0.14, 0.17]}, [0, 1])),
        ("b.json", doc({"student": [0.18, 0.19]}, [0, 1])),
        ("c.json", doc({"ir": [0.155]}, [2], train_dir="/elsewhere/msrs/train")),  # same folder name: same data
    ])
    assert merged == {"ir": {0: 0.15, 1: 0.16, 2: 0.155}, "vis": {0: 0.14, 1: 0.17}, "student": {0: 0.18, 1: 0.19}}
    assert protocol["steps"] == 900 and protocol["test_dir"] == "val"


def test_merge_refuses_other_protocols_and_conflicting_numbers_naming_the_file():
    base = ("a.json", doc({"ir": [0.15]}, [0]))
    with pytest.raises(ValueError, match=r"b\.json: steps is 300, a\.json has 900"):
        merge_results([base, ("b.json", doc({"vis": [0.14]}, [0], steps=300))])
    # Grey and RGB (--color) segmenters learn different things: not comparable.
    with pytest.raises(ValueError, match=r"c\.json: color is True, a\.json has False"):
        merge_results([base, ("c.json", doc({"vis": [0.14]}, [0], color=True))])
    # An older file without the ema or color key means ema 0, grey input: still comparable.
    old = doc({"vis": [0.14]}, [0])
    del old["settings"]["ema"]
    assert merge_results([base, ("old.json", old)])[0]["vis"] == {0: 0.14}
    with pytest.raises(ValueError, match=r"b\.json: ir seed 0 is 0\.1600, a\.json has 0\.1500"):
        merge_results([base, ("b.json", doc({"ir": [0.16]}, [0]))])


def test_paired_and_strict_claims_against_a_hand_computation():
    per_seed = {"student": {0: 0.18, 1: 0.17, 2: 0.165},
                "max": {0: 0.175, 1: 0.16, 2: 0.15},     # below in every seed, but seed 0 above 0.165
                "ir": {0: 0.16, 1: 0.159, 2: 0.158},     # ranges apart
                "teacher": {0: 0.17, 1: 0.17, 2: 0.17}}
    claims = compare_kinds(per_seed, "student", ["max", "ir"], teacher="teacher")
    by = {v.kind: v for v in claims.versus}
    assert by["max"].differences == pytest.approx([0.005, 0.01, 0.015])
    assert by["max"].paired and not by["max"].unpaired and by["max"].margin == pytest.approx(0.165 - 0.175)
    assert by["ir"].paired and by["ir"].unpaired and by["ir"].margin == pytest.approx(0.165 - 0.16)
    assert claims.teacher_ratio == pytest.approx((0.515 / 3) / 0.17)
    assert claims.paired and not claims.unpaired
    # differences 0.005, 0.01, 0.015: mean 0.01, sd 0.005, bound 0.01 - 2.920 * 0.005 / sqrt(3)
    assert by["max"].mean_difference == pytest.approx(0.01)
    assert by["max"].lower_bound == pytest.approx(0.01 - 2.920 * 0.005 / 3 ** 0.5)
    # Both bounds are above zero (ir: differences 0.02, 0.011, 0.007), so the mean lead holds.
    assert by["ir"].lower_bound > 0 and claims.bounded and claims.to_dict()["bounded"] is True
    assert by["ir"].bounded and by["max"].bounded
    # A positive mean with a noisy difference (0.02, -0.01, 0.0: bound < 0) does not.
    noisy = {"student": {0: 0.18, 1: 0.17, 2: 0.165}, "vis": {0: 0.16, 1: 0.18, 2: 0.165}}
    (v,) = compare_kinds(noisy, "student", ["vis"]).versus
    assert v.mean_difference > 0 and v.lower_bound < 0 and not v.bounded
    assert not compare_kinds(noisy, "student", ["vis"]).bounded
    # One common seed has no bound: not claimed.
    assert not compare_kinds({"student": {0: 0.2}, "ir": {0: 0.1}}, "student", ["ir"]).bounded
    # A teacher well above the student breaks every claim.
    per_seed["teacher"] = {0: 0.2, 1: 0.2, 2: 0.2}
    worse = compare_kinds(per_seed, "student", ["ir"], teacher="teacher")
    assert not worse.paired and not worse.bounded


def test_t_quantiles_match_a_numerical_integration_of_the_density():
    """The table behind the confidence bound: P(T <= q) = 0.95 for each listed df, by Simpson's rule
    on Student's density (an independent computation)."""
    from math import gamma, pi, sqrt

    from dfsfuse.seed_claims import T95_ONE_SIDED, mean_lower_bound

    for df, q in enumerate(T95_ONE_SIDED, start=1):
        x = np.linspace(0.0, q, 20001)
        pdf = gamma((df + 1) / 2) / (sqrt(df * pi) * gamma(df / 2)) * (1 + x ** 2 / df) ** (-(df + 1) / 2)
        h = x[1] - x[0]
        area = h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())
        assert 0.5 + area == pytest.approx(0.95, abs=2e-4), df
    assert mean_lower_bound([0.1]) is None
    assert mean_lower_bound([0.1, 0.1, 0.1]) == pytest.approx(0.1)


def test_only_common_seeds_are_compared_and_unknown_kinds_are_errors():
    per_seed = {"student": {0: 0.2, 1: 0.1}, "ir": {0: 0.15, 5: 0.3}}
    (v,) = compare_kinds(per_seed, "student", ["ir"]).versus
    assert v.seeds == [0] and v.paired and v.unpaired
    with pytest.raises(ValueError, match="no results for kind 'vis'"):
        compare_kinds(per_seed, "student", ["vis"])
    with pytest.raises(ValueError, match="share no seed"):
        compare_kinds({"student": {1: 0.2}, "ir": {0: 0.1}}, "student", ["ir"])


def test_script_merges_files_writes_json_and_fails_cleanly_on_bad_input(tmp_path, capsys):
    script = load_script(REPO / "benchmarks" / "semantic_claims.py", "semantic_claims")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(doc({"ir": [0.15, 0.16, 0.155], "vis": [0.14, 0.17, 0.15], "max": [0.16, 0.15, 0.14]},
                                [0, 1, 2])))
    b.write_text(json.dumps(doc({"student": [0.18, 0.175, 0.172]}, [0, 1, 2])))
    out = tmp_path / "claims.json"
    assert script.main([str(a), str(b), "--subject", "student", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["paired"] is True and record["unpaired"] is True
    assert [v["kind"] for v in record["versus"]] == ["ir", "vis", "max"]
    assert record["miou_per_seed"]["student"] == {"0": 0.18, "1": 0.175, "2": 0.172}
    assert "strict claim (ranges apart): holds" in capsys.readouterr().out
    # Seeds filter: seed 1 only.
    assert script.main([str(a), str(b), "--subject", "student", "--seeds", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["versus"][0]["seeds"] == [1]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert script.main([str(a), str(bad), "--subject", "student", "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("semantic_claims.py: error:") and "bad.json" in err and "\n" not in err
    assert json.loads(out.read_text())["versus"][0]["seeds"] == [1]  # not overwritten


def test_script_notes_mixed_thread_counts(tmp_path, capsys):
    """Files whose segmenters ran with different torch thread counts still merge (older files mixed
    them), but the script says so and the JSON records each file's count."""
    script = load_script(REPO / "benchmarks" / "semantic_claims.py", "semantic_claims")
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(doc({"ir": [0.15, 0.16], "vis": [0.14, 0.17], "max": [0.16, 0.15]}, [0, 1],
                                torch_threads=1)))
    b.write_text(json.dumps(doc({"student": [0.18, 0.175]}, [0, 1], torch_threads=2)))
    c.write_text(json.dumps(doc({"student": [0.18, 0.175]}, [0, 1], torch_threads=1)))
    out = tmp_path / "claims.json"
    assert script.main([str(a), str(b), "--subject", "student", "--json", str(out)]) == 0
    assert "different torch_threads 1 / 2" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["torch_threads"] == {str(a): 1, str(b): 2}
    assert record["environment_differences"] == {"torch_threads": [1, 2]}
    assert script.main([str(a), str(c), "--subject", "student"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_script_notes_files_from_different_cpu_kernels_and_libraries(tmp_path, capsys):
    """Same protocol and threads on two machines whose CPUs torch drives with different kernels (and
    another timm): merged, with a note; a file that does not record a key is not counted as different."""
    script = load_script(REPO / "benchmarks" / "semantic_claims.py", "semantic_claims")
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(doc({"ir": [0.15, 0.16], "vis": [0.14, 0.17], "max": [0.16, 0.15]}, [0, 1],
                                torch_threads=1, cpu_capability="AVX2",
                                timm="1.0.19")))
    b.write_text(json.dumps(doc({"student": [0.18, 0.175]}, [0, 1], torch_threads=1, cpu_capability="AVX512",
                                timm="1.0.31")))
    c.write_text(json.dumps(doc({"student": [0.18, 0.175]}, [0, 1], torch_threads=1)))
    assert script.main([str(a), str(b), "--subject", "student"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "different cpu_capability AVX2 / AVX512; timm 1.0.19 / 1.0.31" in printed
    assert script.main([str(a), str(c), "--subject", "student"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_script_rename_merges_one_model_measured_under_two_names(tmp_path, capsys):
    """A model benchmarked as ``--model v2=DIR`` for some seeds and as the built-in kind ``student``
    for others, while an older file uses ``student`` for another model: ``--rename`` on the one
    file merges the right rows; a conflicting number for a shared seed is still refused."""
    script = load_script(REPO / "benchmarks" / "semantic_claims.py", "semantic_claims")
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(doc({"ir": [0.15, 0.16, 0.155, 0.15], "vis": [0.14, 0.17, 0.15, 0.16],
                                 "max": [0.16, 0.15, 0.14, 0.17], "student": [0.1, 0.1, 0.1, 0.1]},
                                [0, 1, 2, 3])))  # "student" here is an older model
    b.write_text(json.dumps(doc({"v2": [0.18, 0.175, 0.172, 0.165]}, [0, 1, 2, 3])))
    c.write_text(json.dumps(doc({"student": [0.181, 0.166]}, [4, 5])))  # the same model as v2
    c_ir = tmp_path / "c_ir.json"
    c_ir.write_text(json.dumps(doc({"ir": [0.15, 0.15], "vis": [0.15, 0.16], "max": [0.15, 0.17]}, [4, 5])))
    out = tmp_path / "claims.json"
    assert script.main([str(a), str(b), str(c), str(c_ir), "--subject", "v2", "--rename", str(c), "student", "v2",
                        "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["miou_per_seed"]["v2"] == {"0": 0.18, "1": 0.175, "2": 0.172, "3": 0.165, "4": 0.181, "5": 0.166}
    assert record["miou_per_seed"]["student"] == {"0": 0.1, "1": 0.1, "2": 0.1, "3": 0.1}
    assert record["renames"] == {str(c): {"student": "v2"}}
    assert record["versus"][2]["seeds"] == [0, 1, 2, 3, 4, 5]
    assert record["versus"][2]["margin"] == pytest.approx(0.165 - 0.17)
    capsys.readouterr()
    # Renaming the wrong file (the older model) clashes with v2's own seeds: refused, naming the file.
    assert script.main([str(a), str(b), "--subject", "v2", "--rename", str(a), "student", "v2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "b.json" in err and "v2 seed 0" in err and "\n" not in err
    assert script.main([str(a), str(b), "--subject", "v2", "--rename", str(b), "nope", "v2"]) == 2
    assert "no kind 'nope' to rename" in capsys.readouterr().err
    assert script.main([str(a), str(b), "--subject", "v2", "--rename", str(c), "student", "v2"]) == 2
    assert "not among the results" in capsys.readouterr().err


def test_welch_bound_against_a_hand_computation():
    """Welch's bound: difference of means minus t(⌊df⌋) times the unpaired standard error."""
    from dfsfuse.seed_claims import T95_ONE_SIDED, welch_lower_bound

    a, b = [0.18, 0.17, 0.19, 0.175], [0.16, 0.15, 0.17]
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)  # 4.35 here
    want = (np.mean(a) - np.mean(b)) - T95_ONE_SIDED[int(df) - 1] * np.sqrt(va + vb)
    assert welch_lower_bound(a, b) == pytest.approx(want, abs=1e-12)
    assert welch_lower_bound([0.2], b) is None
    assert welch_lower_bound([0.2, 0.2], [0.1, 0.1]) == pytest.approx(0.1)
    # unlike the paired bound, shuffling one side's seeds changes nothing
    (v,) = compare_kinds({"s": dict(enumerate(a[:3])), "o": dict(enumerate(b))}, "s", ["o"]).versus
    (w,) = compare_kinds({"s": dict(enumerate(a[:3])), "o": dict(enumerate(b[::-1]))}, "s", ["o"]).versus
    assert v.welch_lower_bound == pytest.approx(w.welch_lower_bound) and v.lower_bound != w.lower_bound


def test_script_notes_cuda_files_whose_seeds_do_not_repeat(tmp_path, capsys):
    """A file from CUDA without the recorded cuda_determinism is named in a note and in the JSON; a CPU
    file and a CUDA file that trained deterministically are not."""
    script = load_script(REPO / "benchmarks" / "semantic_claims.py", "semantic_claims")
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(doc({"ir": [0.15, 0.16], "vis": [0.14, 0.17], "max": [0.16, 0.15]}, [0, 1],
                                device="cuda")))
    b.write_text(json.dumps(doc({"student": [0.18, 0.175]}, [0, 1], device="cpu")))
    c.write_text(json.dumps(doc({"ir": [0.15, 0.16], "vis": [0.14, 0.17], "max": [0.16, 0.15]}, [0, 1],
                                device="cuda:0", cuda_determinism=True)))
    out = tmp_path / "claims.json"
    assert script.main([str(a), str(b), "--subject", "student", "--json", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"note: {a} trained on CUDA without deterministic kernels" in printed
    assert "unpaired 95%" in printed
    assert json.loads(out.read_text())["unrepeatable_runs"] == [str(a)]
    assert script.main([str(c), str(b), "--subject", "student"]) == 0
    assert "note:" not in capsys.readouterr().out
