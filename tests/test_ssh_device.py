"""SshDevice against a real OpenSSH server on 127.0.0.1 whose Python is a venv with numpy and onnxruntime
only (no torch), as on a Raspberry Pi; each failure a user meets is one DeviceError sentence with the fix.

The server (``sshd.running_sshd``) and the device venv are built once per session. Every session on the
server gets its own TMPDIR, so a test can see that the device's temp dir is gone afterwards.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from device_venv import shared_venv
from export_models import classifier_ship_data
from sshd import Sshd, free_port, require_sshd, running_sshd

from edge_distill.errors import DeviceError
from edge_distill.shipping import ship
from edge_distill.ssh import SshDevice

ORT = [f"onnxruntime=={importlib.metadata.version('onnxruntime')}"]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    require_sshd()
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def device_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The device's interpreter: a venv with numpy and onnxruntime, and no torch."""
    python = shared_venv(tmp_path_factory, ORT)
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, check=False)
    assert no_torch.returncode != 0, "the device venv must not have torch"
    return python


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shipped fp32 ONNX bundle of the tiny trained classifier: model.onnx and inputs.npz."""
    model, data = classifier_ship_data()
    out = tmp_path_factory.mktemp("ssh-artifacts")
    ship(model, "onnx", "fp32", out, data)
    return out / "onnx-fp32"


def bundle_inputs(bundle: Path) -> dict[str, np.ndarray]:
    with np.load(bundle / "inputs.npz") as data:
        return {name: data[name] for name in data.files}


def wrapper(path: Path, body: str) -> str:
    """An executable sh script standing in for the device's python."""
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def assert_remote_clean(sshd: Sshd) -> None:
    # only our dirs: importing onnxruntime leaves a `.ses` file of its own in $TMPDIR
    left = sorted(p.name for p in sshd.remote_tmp.glob("edge-distill.*"))
    assert left == [], f"the device's temp dir was not removed: {left}"


def profile_error(device: SshDevice, artifact: Path, inputs: dict[str, np.ndarray], **kwargs: int) -> str:
    with pytest.raises(DeviceError) as caught:
        device.profile(artifact, inputs, warmup=1, runs=5, **kwargs)
    message = str(caught.value)
    assert device.name in message and "\n" not in message, message
    return message


def test_profiles_an_onnx_bundle_over_ssh(sshd: Sshd, device_python: Path, bundle: Path) -> None:
    device = SshDevice(f"{sshd.url}?python={device_python}", config_file=sshd.config_file)
    profile = device.profile(bundle / "model.onnx", bundle_inputs(bundle), warmup=2, runs=20)
    assert profile.runs >= 20 and 0 < profile.p50_ms <= profile.p90_ms <= profile.p99_ms
    assert profile.runtime == "onnxruntime" and profile.runtime_version == ORT[0].split("==")[1]
    assert profile.size_mb > 0 and profile.load_ms > 0
    version = subprocess.run(
        [str(device_python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert profile.conditions["python"] == version
    assert device.name == f"{sshd.url}?python={device_python}"
    assert_remote_clean(sshd)


def test_a_closed_port_is_unreachable_quickly(tmp_path: Path) -> None:
    require_sshd()
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n  UserKnownHostsFile {tmp_path / 'known_hosts'}\n")
    port = free_port()
    device = SshDevice(f"ssh://127.0.0.1:{port}", config_file=config, connect_timeout_s=5)
    (tmp_path / "model.onnx").write_bytes(b"never copied")
    start = time.monotonic()
    message = profile_error(device, tmp_path / "model.onnx", {"x": np.zeros((1, 4), np.float32)})
    assert time.monotonic() - start < 5
    assert message.startswith(f"Cannot reach ssh://127.0.0.1:{port}") and "Connection refused" in message
    assert f"-p {port} 127.0.0.1`" in message


@pytest.mark.parametrize("known", ["empty", "another key"])
def test_an_unknown_or_changed_host_key_fails(sshd: Sshd, bundle: Path, tmp_path: Path, known: str) -> None:
    lines = ""
    if known == "another key":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
        lines = f"[127.0.0.1]:{sshd.port} {(tmp_path / 'k.pub').read_text()}"
    device = SshDevice(sshd.url, config_file=sshd.client_config(tmp_path / "ssh_config", known_hosts=lines))
    message = profile_error(device, bundle / "model.onnx", bundle_inputs(bundle))
    assert "host key" in message and "Host key verification failed" in message
    assert f"run `ssh -F {tmp_path / 'ssh_config'} device` once" in message
    assert ("ssh-keygen -R" in message) == (known == "another key")


def test_a_refused_login_suggests_ssh_copy_id(sshd: Sshd, bundle: Path, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    config = sshd.client_config(tmp_path / "ssh_config")
    config.write_text(config.read_text().replace(str(sshd.folder / "client_key"), str(tmp_path / "k")))
    message = profile_error(
        SshDevice(sshd.url, config_file=config), bundle / "model.onnx", bundle_inputs(bundle)
    )
    assert "refused the SSH login" in message and "ssh-copy-id device" in message


def test_a_device_without_onnxruntime_says_install_it_there(
    sshd: Sshd, bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    numpy_only = shared_venv(tmp_path_factory, [])
    device = SshDevice(sshd.url, python=str(numpy_only), config_file=sshd.config_file)
    message = profile_error(device, bundle / "model.onnx", bundle_inputs(bundle))
    assert message.startswith(f"On {sshd.url}, model.onnx needs onnxruntime; install it on the device"), (
        message
    )
    assert "`pip install onnxruntime`" in message
    assert_remote_clean(sshd)


def test_a_missing_device_python_is_named(sshd: Sshd, bundle: Path) -> None:
    device = SshDevice(sshd.url, python="/nonexistent/python3", config_file=sshd.config_file)
    message = profile_error(device, bundle / "model.onnx", bundle_inputs(bundle))
    assert "has no Python at `/nonexistent/python3`" in message and "install Python 3" in message
    assert_remote_clean(sshd)


def big_matmul_model(path: Path, n: int = 4096) -> dict[str, np.ndarray]:
    """y = x @ w with a (n, n) float32 weight (64 MiB at 4096): far more than the memory limit leaves."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((n, n), 0.01, np.float32), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return {"x": np.ones((1, n), np.float32)}


def import_peak_kb(python: Path) -> int:
    """Peak address space (kB) of ``python`` once numpy and onnxruntime are imported, one OpenBLAS thread."""
    probe = (
        "import numpy, onnxruntime; print(open('/proc/self/status').read().split('VmPeak:')[1].split()[0])"
    )
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"}
    return int(subprocess.check_output([str(python), "-c", probe], env=env, text=True))


def test_out_of_memory_on_the_device_is_named(sshd: Sshd, device_python: Path, tmp_path: Path) -> None:
    if sys.platform != "linux":
        pytest.skip("ulimit -v limits the address space only on Linux")
    import onnxruntime

    inputs = big_matmul_model(tmp_path / "model.onnx")
    onnxruntime.InferenceSession(str(tmp_path / "model.onnx")).run(None, inputs)  # it runs without a limit
    # python, numpy and onnxruntime import under the limit, and 24 MiB are left: too few for the 64 MiB weight
    limit_kb = import_peak_kb(device_python) + 24 * 1024
    body = f'ulimit -v {limit_kb}\nexport OPENBLAS_NUM_THREADS=1\nexec {device_python} "$@"'
    device = SshDevice(sshd.url, python=wrapper(tmp_path / "python", body), config_file=sshd.config_file)
    message = profile_error(device, tmp_path / "model.onnx", inputs, threads=1)
    assert message.startswith(f"model.onnx ran out of memory on {sshd.url} while loading or running;"), (
        message
    )
    assert_remote_clean(sshd)


def test_a_runner_killed_with_sigkill_reads_as_out_of_memory(
    sshd: Sshd, bundle: Path, tmp_path: Path
) -> None:
    python = wrapper(tmp_path / "python", "kill -KILL $$")  # what the kernel's OOM killer does
    device = SshDevice(sshd.url, python=python, config_file=sshd.config_file)
    message = profile_error(device, bundle / "model.onnx", bundle_inputs(bundle))
    assert "ran out of memory" in message and "SIGKILL" in message
    assert_remote_clean(sshd)


def test_a_runner_that_hangs_times_out(sshd: Sshd, bundle: Path, tmp_path: Path) -> None:
    python = wrapper(tmp_path / "python", "sleep 10")
    device = SshDevice(sshd.url, python=python, config_file=sshd.config_file, timeout_s=2)
    start = time.monotonic()
    message = profile_error(device, bundle / "model.onnx", bundle_inputs(bundle))
    assert "took over 2 s" in message and time.monotonic() - start < 8
    assert_remote_clean(sshd)


@pytest.mark.parametrize(
    "url",
    [
        "pi@raspberrypi.local",
        "http://pi@host",
        "ssh://",
        "ssh://host:99999",
        "ssh://host/path",
        "ssh://host?py=x",
    ],
)
def test_a_bad_url_shows_a_good_one(url: str) -> None:
    with pytest.raises(
        DeviceError,
        match=r"is not an SSH device URL; write it as ssh://\[user@\]host\[:port\], e\.g\. ssh://pi@",
    ):
        SshDevice(url)


# --- the CLI and the main job over the same real sshd -------------------------------------------------------

FAST = ["--epochs", "1", "--seq-len", "16", "--max-rounds", "1", "--no-vocab-trim"]
ROOMY = ["--latency-ms", "1000", "--memory-mb", "4000", "--size-mb", "1000"]


def test_profile_command_over_ssh_calibrates_the_device(
    sshd: Sshd, device_python: Path, bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import json

    from edge_distill.cli import main

    monkeypatch.setenv("EDGE_DISTILL_CACHE", str(tmp_path / "cache"))
    argv = ["profile", str(bundle), "--device", sshd.url, "--ssh-config", str(sshd.config_file)]
    argv += ["--device-python", str(device_python), "--profile", "raspberry-pi-4", "--runs", "20", "--json"]
    assert main(argv) in (0, 3)
    result = json.loads(capsys.readouterr().out)["result"]
    assert result["latency_source"] == "measured-device" and result["device"] == sshd.url
    assert result["threads"] == 4 and result["conditions"]["threads"] == 4  # the Pi 4 profile's cores
    assert result["calibration"]["stored"] and result["calibration"]["key"].startswith(f"{sshd.url}|4")
    main(argv)
    again = json.loads(capsys.readouterr().out)["result"]
    assert again["prediction"]["source"].startswith(f"calibrated on 1 measurement of {sshd.url}")


def test_the_main_job_decides_on_the_device_measurement(
    sshd: Sshd, device_python: Path, tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys
) -> None:
    import json

    from edge_distill.cli import main

    out_dir = tmp_path / "run"
    device = [
        "--device",
        sshd.url,
        "--ssh-config",
        str(sshd.config_file),
        "--device-python",
        str(device_python),
    ]
    argv = ["--profile", "raspberry-pi-4", "--teacher", str(tiny_teacher_dir), "--data", str(tiny_csv)]
    code = main([*argv, "--out", str(out_dir), *device, *ROOMY, *FAST])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["device"] == {"name": sshd.url}
    assert report["teacher"]["latency_source"] == "measured-device"
    winner = report["rounds"][-1]
    assert winner["latency_source"] == "measured-device" and winner["memory_source"] == "measured-device"
    assert winner["device"] == sshd.url and winner["device_conditions"]["threads"] == 4
    assert f"measured on {sshd.url}" in out
    assert report["calibration"]["device_predictor"]["points"] >= 2  # the teacher and the round at least


def test_a_device_that_stops_answering_leaves_rounds_not_measured(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A device unreachable at the start fails the run before anything loads (tests/test_bad_inputs.py);
    one that stops answering after that leaves its rounds predicted, and the job goes on."""
    import json

    from edge_distill.cli import main

    monkeypatch.setattr(SshDevice, "reach", lambda self: None)  # it answered when the run started
    port = free_port()  # nothing listens there
    config = tmp_path / "ssh_config"
    config.write_text("")
    out_dir = tmp_path / "run"
    device = ["--device", f"ssh://127.0.0.1:{port}", "--ssh-config", str(config)]
    argv = ["--profile", "raspberry-pi-4", "--teacher", str(tiny_teacher_dir), "--data", str(tiny_csv)]
    code = main([*argv, "--out", str(out_dir), *device, *ROOMY, *FAST])
    out, err = capsys.readouterr()
    assert code == 0, err  # the job goes on with predictions
    assert f"not measured on ssh://127.0.0.1:{port}: " in out
    report = json.loads((out_dir / "report.json").read_text())
    winner = report["rounds"][-1]
    assert winner["latency_source"] == "predicted" and "cannot reach" in winner["device_error"].lower()
    assert winner["latency_interval_ms"][0] < winner["latency_ms"]["p90"] < winner["latency_interval_ms"][1]
