"""`edge-distill profile`: a bundle timed on this host, the prediction made before it, and calibration.

The runner runs for real in a fresh process (the `local` device); SSH is tested in test_ssh_device.py
against a real sshd, ADB on its command lines and real output samples in test_adb_device.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from export_models import classifier_ship_data

from edge_distill.cli import main
from edge_distill.shipping import ship


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, data = classifier_ship_data()
    out = tmp_path_factory.mktemp("profile-cli")
    ship(model, "onnx", "fp32", out, data)
    return out / "onnx-fp32"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(["profile", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_profile_measures_then_calibrates_the_next_prediction(
    bundle: Path, tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.setenv("EDGE_DISTILL_CACHE", str(tmp_path / "cache"))  # an empty calibration file
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["cost"]["flops"] > 0 and meta["cost"]["weight_bytes"] > 0  # the bundle carries its cost
    code, first, err = run(capsys, str(bundle), "--runs", "20")
    assert code == 0, err
    result = first["result"]
    assert first["command"] == "profile" and result["latency_source"] == "measured-host"
    lat = result["latency_ms"]
    assert result["runs"] >= 20 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    low, high = result["p50_ci95_ms"]
    assert low <= lat["p50"] <= high and result["first_ms"] > 0 and result["load_ms"] > 0
    assert result["conditions"]["threads"] == result["threads"] and "governor" in result["conditions"]
    assert result["prediction"]["source"].endswith("uncalibrated")
    assert result["calibration"]["stored"] and result["calibration"]["points"] == 1
    assert Path(result["calibration"]["file"]).is_file()
    code, second, _ = run(capsys, str(bundle / "model.onnx"), "--runs", "20")  # the file inside the bundle
    assert code == 0
    again = second["result"]
    assert again["prediction"]["source"].startswith("calibrated on 1 measurement")
    # calibrated on the same model, the prediction lands near the new measurement
    assert abs(again["prediction"]["p50_error"]) < abs(result["prediction"]["p50_error"]) + 0.5
    assert again["calibration"]["points"] == 2


def test_profile_checks_the_profiles_budget_and_threads(bundle: Path, capsys) -> None:
    code, envelope, _ = run(capsys, str(bundle), "--profile", "host", "--runs", "10")
    result = envelope["result"]
    assert code == 0 and result["budget"]["fits"] and result["budget"]["profile"] == "host"
    assert set(result["budget"]["checks"]) == {"latency_ms", "memory_mb", "size_mb"}
    code, envelope, _ = run(capsys, str(bundle), "--profile", "esp32-s3", "--runs", "10")
    assert code == 3 and not envelope["result"]["budget"]["fits"]  # over a microcontroller's budget
    assert envelope["result"]["threads"] == 2  # the ESP32-S3 profile's two cores


def test_profile_prints_a_table(bundle: Path, capsys) -> None:
    assert main(["profile", str(bundle), "--runs", "10"]) == 0
    out = capsys.readouterr().out
    assert "p50 / p90 / p99" in out and "peak memory" in out and "Calibration: stored" in out


def test_a_bare_model_file_needs_inputs_and_does_not_calibrate(bundle: Path, tmp_path: Path, capsys) -> None:
    bare = tmp_path / "model.onnx"
    shutil.copy(bundle / "model.onnx", bare)
    code, envelope, _ = run(capsys, str(bare))
    assert code == 2 and "--inputs" in envelope["error"]
    code, envelope, _ = run(capsys, str(bare), "--inputs", str(bundle / "inputs.npz"), "--runs", "10")
    assert code == 0 and not envelope["result"]["calibration"]["stored"]
    assert envelope["result"]["prediction"] is None


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--device", "bluetooth://phone"], ["Unknown device", "ssh://"]),
        (["--device", "adb://emulator-5554"], ["--runner-binary"]),
        (["--profile", "no-such-board"], ["no-such-board"]),
    ],
)
def test_bad_devices_are_one_sentence(bundle: Path, capsys, argv: list[str], words: list[str]) -> None:
    code, envelope, _ = run(capsys, str(bundle), *argv)
    assert code == 2 and not envelope["ok"]
    assert all(w in envelope["error"] for w in words) and "\n" not in envelope["error"]


def test_missing_artifact_is_one_sentence(tmp_path: Path, capsys) -> None:
    code, envelope, _ = run(capsys, str(tmp_path / "nope.onnx"))
    assert code == 2 and "does not exist" in envelope["error"]
