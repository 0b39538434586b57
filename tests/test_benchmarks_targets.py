"""benchmarks/targets.py smoke-runs on a tiny trained classifier: the envelope's shape, no timing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "targets.py"
SHIPPED = {("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32")}
PAIRS = [f"{t}:{p}" for t, p in sorted(SHIPPED)] + ["onnx:palettized"]  # the last one onnx does not offer


@pytest.fixture(scope="module")
def result() -> dict:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--json", "--pairs", *PAIRS],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    envelope = json.loads(done.stdout)  # stdout holds the envelope alone; chatter goes to stderr
    assert envelope["schema"] == 1 and envelope["benchmark"] == "targets"
    return envelope["result"]


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_pair_is_a_row_in_order(result: dict) -> None:
    assert [f"{r['target']}:{r['precision']}" for r in result["rows"]] == PAIRS
    assert result["workload"]["threads"] == 1 and result["workload"]["rounds"] >= 1
    assert positive(result["wall_seconds"]) and set(result["workload"]["load_average_1min"]) == {
        "start",
        "end",
    }


def test_shipped_rows_are_verified_with_positive_ratios(result: dict) -> None:
    pytorch = result["pytorch"]
    assert positive(pytorch["weights_bytes"]) and 0.9 <= pytorch["metric_value"] <= 1.0
    for row in result["rows"]:
        if (row["target"], row["precision"]) not in SHIPPED:
            continue
        assert row["status"] == "verified" and row["latency"] == "measured", row
        for key in ("size_bytes", "size_ratio", "p50_speedup", "p90_speedup"):
            assert positive(row[key]), (key, row)
        assert row["size_ratio"] == pytest.approx(row["size_bytes"] / pytorch["weights_bytes"], rel=1e-3)
        assert row["metric_pytorch"] == pytorch["metric_value"] and 0.0 <= row["metric_artifact"] <= 1.0
        assert row["metric_diff_points"] == pytest.approx(
            100 * (row["metric_artifact"] - row["metric_pytorch"]), abs=0.01
        )
        assert row["max_abs_diff"] >= 0.0


def test_a_pair_that_cannot_ship_is_a_row_with_its_error(result: dict) -> None:
    failed = result["rows"][-1]
    assert set(failed) == {"target", "precision", "error", "ship_seconds"}
    assert "palettized" in failed["error"] and "\n" not in failed["error"]
