"""The main command's launcher settings: `accelerate launch --config_file recipes/accelerate/one_process.yaml -q`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from accelerate.commands.config.config_args import load_config_from_file

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes" / "accelerate" / "one_process.yaml"
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "-q"]


def test_shipped_accelerate_config_is_one_process_fp32():
    config = load_config_from_file(str(CONFIG))  # unknown keys would raise here
    assert config.num_processes == 1 and config.num_machines == 1
    assert str(config.distributed_type).endswith("NO") and config.mixed_precision == "no"
    assert config.use_cpu is False  # the first GPU when there is one


def test_refusing_to_overwrite_a_run_is_one_line_without_launcher_notice_or_traceback(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("{}\n")
    proc = subprocess.run([*LAUNCH, str(REPO / "recipes" / "distill.py"), "--output", str(run)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode != 0
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert err == [f"distill: error: {run}: already holds a run; pass --resume to continue it or --overwrite "
                   "to start over"], proc.stderr
    assert "were not passed to `accelerate launch`" not in proc.stdout + proc.stderr
    assert (run / "log.jsonl").read_text() == "{}\n"  # nothing touched
