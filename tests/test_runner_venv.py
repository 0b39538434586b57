"""The shipped runner times an artifact in a fresh venv that has only numpy and one runtime, as on a Pi.

Each case uses a virtual environment (one per runtime and session: ``device_venv.shared_venv``) with
numpy and the runtime pip-installed (from the package registry, or pip's cache), checks that torch cannot
be imported, and runs the bundle's own ``runner.py`` on the bundle's ``inputs.npz``: what an app
developer does after copying ``artifacts/<target>-<p>/`` to a device.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from device_venv import shared_venv
from export_models import classifier_ship_data

from edge_distill.shipping import ship

# target -> the runtime a device would have (pinned as in pyproject.toml)
RUNTIMES = {
    "onnx": [f"onnxruntime=={importlib.metadata.version('onnxruntime')}"],
    "tflite": [f"ai-edge-litert=={importlib.metadata.version('ai-edge-litert')}"],
}


@pytest.mark.parametrize("target", sorted(RUNTIMES))
def test_runner_times_a_bundle_in_a_venv_without_torch(
    target: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model, data = classifier_ship_data()
    meta = ship(model, target, "fp32", tmp_path / "artifacts", data)
    bundle = tmp_path / "artifacts" / f"{target}-fp32"
    python = shared_venv(tmp_path_factory, RUNTIMES[target])
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, check=False)
    assert no_torch.returncode != 0, "the device venv must not have torch"
    command = [str(python), "runner.py", meta["file"], "--inputs", "inputs.npz", "--runs", "20", "--json"]
    done = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-1500:]
    profile = json.loads(done.stdout.strip().splitlines()[-1])
    assert profile["runs"] >= 20 and 0 < profile["p50_ms"] <= profile["p90_ms"] <= profile["p99_ms"]
    assert profile["size_mb"] > 0 and profile["runtime_version"] != "unknown"
    # the usage line metadata.json gives is the command that just ran
    assert meta["run"].startswith(f"python runner.py {meta['file']} --inputs inputs.npz")
    missing = subprocess.run(
        [str(python), "runner.py", "nope" + Path(meta["file"]).suffix, "--inputs", "inputs.npz"],
        cwd=bundle, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert sys.executable != str(python)
