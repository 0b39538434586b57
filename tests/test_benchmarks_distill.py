"""benchmarks/distill.py smoke-runs on tiny random models and reports every mode (no speed is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "distill.py"


def test_distill_benchmark_tiny_json_reports_three_modes_and_the_cache_size() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    envelope = json.loads(done.stdout)  # stdout holds the envelope alone; chatter goes to stderr
    assert envelope["schema"] == 1 and envelope["benchmark"] == "distill"
    result = envelope["result"]
    modes = result["modes"]
    assert set(modes) == {"cached", "online", "hf_trainer"}
    for mode in modes.values():
        assert mode["samples_per_s"] > 0
        assert all(v > 0 for v in mode["runs_samples_per_s"])
    # Same data and batch size in every mode: the same number of steps.
    assert len({tuple(mode["steps_per_epoch"]) for mode in modes.values()}) == 1
    assert result["cache"]["bytes_per_example"] > 0
    assert result["ratios"]["cached_over_online"] > 0 and result["ratios"]["cached_over_hf_trainer"] > 0
