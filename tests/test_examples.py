"""The runnable examples run as documented, each in its reduced form (``--quick``), and say true things.

Each runs as a user runs it: a subprocess of ``python examples/<file>``, offline, with this session's
cache (``EDGE_DISTILL_CACHE``, inherited). The assertions read what the example printed (its ``--json``
line) and the files it wrote (report.json, bundles), not just its exit code.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from device_venv import shared_venv
from sshd import Sshd, require_sshd, running_sshd

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ORT = [f"onnxruntime=={importlib.metadata.version('onnxruntime')}"]


def run_example(name: str, *args: str, timeout: int = 600) -> str:
    """Run ``examples/<name>`` with ``args``; its stdout (a failure shows the end of its stderr)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object an example prints as its last line with ``--json``."""
    return json.loads(stdout.strip().splitlines()[-1])


def test_distill_api_example_runs_and_reports_the_evaluation() -> None:
    out = run_example("distill_api.py", "--epochs", "3")
    teacher = float(re.search(r"teacher: [\d,]+ params, val accuracy ([\d.]+)", out).group(1))
    student = float(re.search(r"student: [\d,]+ params, val accuracy ([\d.]+)", out).group(1))
    assert teacher > 0.9 and student > 0.5  # a trained teacher; a student far above chance (0.1)
    assert "retention" in out and "agreement" in out
    assert all(term in out for term in ("kd ", "ce ", "hidden_mse ", "relation "))


def check_shipped(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """The chosen round of a report that fits: its artifact exists and every shipped bundle verified."""
    result = report["result"]
    assert result["fits"] and (out / result["artifact"]).is_file()
    assert result["artifacts"], "no bundle shipped"
    for bundle in result["artifacts"]:
        assert bundle["verification"] == "verified", bundle
        assert (out / bundle["path"]).is_file()
    return next(r for r in report["rounds"] if r["round"] == result["round"])


def test_01_demo_step_by_step(tmp_path: Path) -> None:
    out = tmp_path / "run"
    stdout = run_example("01_demo_step_by_step.py", "--quick", "--out", str(out), "--json")
    steps = [f"\n{n}. " for n in range(1, 7)]
    assert all(step in stdout for step in steps), stdout  # every step of the walk-through printed
    assert "latency_ms = 30  (command line (--latency-ms))" in stdout
    report = json.loads((out / "report.json").read_text())
    chosen = check_shipped(report, out)
    assert chosen["student"]["params"] < report["teacher"]["params"]
    assert chosen["latency_ms"]["p90"] <= report["budget"]["latency_ms"]["value"] == 30
    assert chosen["latency_source"] == "predicted"  # no Pi connected: carried over from this host
    printed = last_json(stdout)
    bundle = printed["bundle"]
    assert 0 < bundle["runner"]["p50_ms"] <= bundle["runner"]["p90_ms"]  # the bundle's runner.py timed it
    labels = json.loads((out / Path(report["result"]["artifact"]).parent / "labels.json").read_text())
    assert labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert bundle["predicted"] in labels


def test_02_own_csv_and_teacher_folder_to_a_pi_5(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = last_json(run_example("02_own_data_and_teacher.py", "--quick", "--out", str(out), "--json"))
    inputs = tmp_path / "run-inputs"
    header = (inputs / "news.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "headline_and_body,section"  # not text/label: the call had to name the columns
    assert (inputs / "teacher" / "config.json").is_file()  # a save_pretrained folder
    report = json.loads((out / "report.json").read_text())
    assert report["profile"]["name"] == "raspberry-pi-5"
    assert report["data"]["source"].endswith("news.csv") and report["data"]["labeled"]
    chosen = check_shipped(report, out)
    assert chosen["student"]["params"] < report["teacher"]["params"]
    assert result["teacher"]["accuracy"] > 0.5 and result["student"]["accuracy"] > 0.3  # chance: 0.2
    assert result["fits"] and result["artifact"] == str(out / report["result"]["artifact"])


def test_03_image_classifier_ships_to_executorch_and_litert(tmp_path: Path) -> None:
    out = tmp_path / "bundles"
    result = last_json(run_example("03_image_classifier_to_phone.py", "--quick", "--out", str(out), "--json"))
    teacher, student = result["teacher"], result["student"]
    assert student["params"] * 4 < teacher["params"]
    assert teacher["test_accuracy"] > 0.8 and student["test_accuracy"] > 0.5  # chance: 0.1
    assert [b["target"] for b in result["bundles"]] == ["executorch", "tflite"]
    for bundle in result["bundles"]:
        verification = bundle["verification"]
        assert verification["status"] == "verified" and verification["max_abs_diff"] <= 1e-4
        assert Path(bundle["path"]).is_file() and Path(bundle["path"]).suffix in (".pte", ".tflite")
        meta = json.loads((Path(bundle["path"]).parent / "metadata.json").read_text())
        assert meta["profile"]["name"] == "pixel-8" and meta["preprocess"]["kind"] == "image"
        assert bundle["predicted"]["source"].startswith("predicted (pixel-8 profile figures")
        assert bundle["budget"]["size_mb"]["limit"] == 50 and bundle["fits"]


def test_04_causal_lm_through_the_main_loop(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = last_json(run_example("04_causal_lm_to_jetson.py", "--quick", "--out", str(out), "--json"))
    report = json.loads((out / "report.json").read_text())
    assert report["profile"]["name"] == "jetson-orin-nano" and not report["data"]["labeled"]
    chosen = check_shipped(report, out)
    assert chosen["metric"]["name"] == "perplexity"
    teacher, student = result["teacher"], result["student"]
    assert math.isfinite(student["perplexity"]) and student["perplexity"] > 1
    assert student["retention"] == pytest.approx(teacher["perplexity"] / student["perplexity"], rel=1e-3)
    assert student["params"] < teacher["params"] and teacher["name"] == "tiny Llama (trained here)"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    require_sshd()
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def test_05_custom_profile_profiled_over_ssh(
    sshd: Sshd, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    python = shared_venv(tmp_path_factory, ORT)  # the device: numpy and onnxruntime, no torch
    out = tmp_path / "board"
    device = ["--device", sshd.url, "--ssh-config", str(sshd.config_file), "--device-python", str(python)]
    args = ["--quick", "--run-job", *device, "--out", str(out), "--json"]
    result = last_json(run_example("05_custom_profile_over_ssh.py", *args))
    profile = result["profile"]
    assert profile["name"] == "acme-a55-board" and Path(profile["path"]) == out / "acme-a55-board.toml"
    assert all(figure["source"] for figure in profile["hardware"].values() if figure["value"] is not None)
    assert "key 'memory.ram_mb' has no source" in result["sourceless_figure_refused"]
    measured = result["measurement"]
    # the numbers came from the device: the runner ran there, in the device venv's Python
    assert measured["latency_source"] == "measured-device" and measured["device"] == sshd.url
    version = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert measured["conditions"]["python"] == version
    assert measured["threads"] == 4  # the custom profile's cores
    assert 0 < measured["latency_ms"]["p50"] <= measured["latency_ms"]["p90"]
    budget = measured["budget"]
    assert budget["profile"] == "acme-a55-board" and budget["checks"]["size_mb"]["limit"] == 20
    assert budget["checks"]["latency_ms"]["value"] == pytest.approx(measured["latency_ms"]["p90"], rel=1e-3)
    job = result["job"]  # the fit loop for the custom profile, every round timed on the device
    assert job["fits"] and job["latency_source"] == "measured-device" and job["device"] == sshd.url
    assert job["student"]["params"] < job["teacher_params"] and Path(job["artifact"]).is_file()
    report = json.loads((out / "run" / "report.json").read_text())
    assert report["profile"]["name"] == "acme-a55-board" and report["device"] == {"name": sshd.url}
    assert list(sshd.remote_tmp.glob("edge-distill.*")) == []  # the device's temp dirs were removed
