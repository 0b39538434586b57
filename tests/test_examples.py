"""The Python API example runs as documented (reduced: fewer epochs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_distill_api_example_runs_and_reports_the_evaluation() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "distill_api.py"), "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    teacher = float(re.search(r"teacher: [\d,]+ params, val accuracy ([\d.]+)", out).group(1))
    student = float(re.search(r"student: [\d,]+ params, val accuracy ([\d.]+)", out).group(1))
    assert teacher > 0.9 and student > 0.5  # a trained teacher; a student far above chance (0.1)
    assert "retention" in out and "agreement" in out
    assert all(term in out for term in ("kd ", "ce ", "hidden_mse ", "relation "))
