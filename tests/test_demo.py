"""The real demo path (all-MiniLM-L6-v2 teacher, BBC News, Raspberry Pi 4 budget) on a reduced data size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_distill.cli import main


@pytest.mark.slow
def test_demo_on_raspberry_pi_fits_the_budget_it_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 100 articles per class: a 50-article test split, where one article is 2% of accuracy. At 40 per class
    # (20 test articles, 5% each) a sound student missed the 95% floor by one article.
    out_dir = tmp_path / "run"
    code = main(
        [
            "--profile",
            "raspberry-pi",
            "--max-per-class",
            "100",
            "--epochs",
            "3",
            "--quick",
            "--out",
            str(out_dir),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "alias of raspberry-pi-4" in out and "built-in demo" in out and "Fits: round" in out
    report = json.loads((out_dir / "report.json").read_text())
    budget = {name: entry["value"] for name, entry in report["budget"].items()}
    assert budget == {
        "latency_ms": 50.0, "memory_mb": 512.0, "size_mb": 100.0, "min_retention": 0.95,
        "accelerator_share": None,
    }  # fmt: skip
    assert report["teacher"]["params"] == pytest.approx(22.7e6, rel=0.01)
    assert report["teacher"]["latency_source"] == "predicted"
    # --quick predicts the teacher's cost before anything is measured, then again once students are:
    # the report does not call the teacher faster than a student with at most its FLOPs.
    assert "this run" in report["teacher"]["calibration"]
    chosen = next(r for r in report["rounds"] if r["round"] == report["result"]["round"])
    # The reported student fits the budget it reports, by the figures it reports.
    assert chosen["fits"] and chosen["latency_ms"]["p90"] <= budget["latency_ms"]
    assert chosen["peak_memory_mb"] <= budget["memory_mb"] and chosen["size_mb"] <= budget["size_mb"]
    assert chosen["student"]["params"] < report["teacher"]["params"]
    assert chosen["student"]["flops"] <= report["teacher"]["flops"]
    assert report["teacher"]["latency_ms"]["p90"] >= 0.7 * chosen["latency_ms"]["p90"]
    assert chosen["verification"]["status"] == "verified" and chosen["meets_floor"]
    assert chosen["retention"] >= 0.95 and (out_dir / "report.html").is_file()
    # 5 classes: well above chance (0.2) on 80 training examples per class
    assert chosen["metric"]["value"] > 0.5
    assert (out_dir / report["result"]["artifact"]).is_file()
    student = json.loads((out_dir / "student" / "config.json").read_text())
    assert student["id2label"] == {
        "0": "business",
        "1": "entertainment",
        "2": "politics",
        "3": "sports",
        "4": "tech",
    }


def test_quickstart_example_runs() -> None:
    """examples/quickstart.py runs the step-by-step demo (tests/test_examples.py runs that one, reduced)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    shown = " ".join(result.stdout.split())  # argparse wraps the description to the terminal's width
    assert "step by step through the Python API" in shown
    assert all(flag in shown for flag in ("--quick", "--max-per-class", "--out"))
