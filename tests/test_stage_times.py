"""bench/stage_times.py: the per-stage table of a `make run` (the budget figure)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("stage_times", ROOT / "bench/stage_times.py")
stage_times = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(stage_times)


def test_a_stage_lasts_until_the_next_one_starts():
    # dvc repro's lines (dvc/stage/run.py logs "Running stage '%s':"), at 30 s, 150 s and 510 s; the run ends at 600 s
    events = [(1.0, "pip install ..."), (30.0, "Running stage 'download':"), (31.0, "> python -m stages.download"),
              (150.0, "Running stage 'evaluate@redial':"), (400.0, "Stage 'summarize' didn't change, skipping"),
              (510.0, "Running stage 'summarize':"), (590.0, "Updating lock file 'dvc.lock'")]
    assert stage_times.stage_minutes(events, 600.0) == {"setup": 0.5, "download": 2.0, "evaluate@redial": 6.0,
                                                        "summarize": 1.5}
    assert stage_times.stage_minutes([(0.0, "Running stage 'a':")], 60.0) == {"a": 1.0}  # no setup line at all


def test_the_command_is_timed_and_its_failure_passed_on(tmp_path):
    out = tmp_path / "t.json"
    script = "echo setting up; sleep 1; echo \"Running stage 'a':\"; sleep 1; echo \"Running stage 'b':\"; exit 3"
    done = subprocess.run([sys.executable, str(ROOT / "bench/stage_times.py"), "--out", str(out), "--no-calibrate", "--", "sh", "-c", script],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 3, done.stderr
    result = json.loads(out.read_text())
    assert list(result["stages"]) == ["setup", "a", "b"] and result["returncode"] == 3
    assert 0.01 < result["stages"]["a"] < 0.1 and result["total_minutes"] >= 0.03  # ~1 s of 'a' (sleep 1), ~2 s in all
    assert "| a |" in done.stdout and "Running stage 'b'" in done.stdout  # the table; the output passed through
