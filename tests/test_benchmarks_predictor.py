"""benchmarks/predictor.py smoke-runs on tiny shapes: the envelope's shape and the evaluation's bookkeeping.

No accuracy is asserted here: timings on a shared 2-core host are the benchmark's business, not a test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "predictor.py"


def test_tiny_run_calibrates_on_three_and_predicts_the_rest(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--tiny", "--json", "--targets", "onnx", "--threads", "1"]
    done = subprocess.run(
        [*command, "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    envelope = json.loads(done.stdout)
    assert envelope["schema"] == 1 and envelope["benchmark"] == "predictor"
    (result,) = envelope["result"]["targets"]
    assert result["target"] == "onnx" and result["threads"] == 1 and len(result["calibrated_on"]) == 3
    shapes = envelope["result"]["workload"]["shapes"]
    assert len(result["rows"]) == shapes - 3  # every other shape is predicted, none it was calibrated on
    assert not {r["student"] for r in result["rows"]} & set(result["calibrated_on"])
    for row in result["rows"]:
        assert row["p50_ms"] > 0 and row["predicted_p50_ms"] > 0 and row["memory_mb"] > 0
        assert abs(row["latency_error"] - (row["predicted_p50_ms"] / row["p50_ms"] - 1)) < 0.01
    summary = result["summary"]
    assert summary["students"] == len(result["rows"]) and 0 <= summary["latency_within_15pct"] <= 1
    assert set(summary["latency_abs_error"]) == {"median", "p90", "max"}
    assert (tmp_path / "tiny" / "measurements.json").is_file()
