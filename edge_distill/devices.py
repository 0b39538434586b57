"""Where an artifact runs: this host now; a device over SSH or ADB later, behind the same protocol.

Every device runs the torch-free runner (``edge_distill/targets/runner.py``) in a process of its own, so
the peak memory it reports is the runtime's, not the training process's.

Example:
    >>> inputs = {"input_ids": ids, "attention_mask": mask}  # numpy, (1, seq)
    >>> profile = profile_on_host(Path("artifacts/onnx/model.onnx"), inputs)
    >>> profile.p50_ms <= profile.p99_ms
    True
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_distill.errors import DeviceError
from edge_distill.targets import runner
from edge_distill.targets.runner import LatencyProfile

__all__ = ["Device", "HostDevice", "LatencyProfile", "open_device", "profile_on_host"]

DEVICE_FORMS = "`local`, `ssh://user@host[:port]` or `adb://SERIAL`"


class Device(Protocol):
    """A machine that can time an artifact; an SSH or ADB device copies the runner there and runs it."""

    name: str

    def profile(
        self,
        artifact: Path,
        inputs: dict[str, np.ndarray],
        *,
        warmup: int = 10,
        runs: int = 50,
        threads: int | None = None,
    ) -> LatencyProfile: ...


class HostDevice:
    """This machine: the runner runs in a fresh ``sys.executable`` subprocess."""

    name = "host"
    source = "measured-host"

    def __init__(self, *, timeout_s: float = 600.0) -> None:
        self.timeout_s = timeout_s

    @property
    def key(self) -> str:
        """Names this machine in the calibration file: its CPU (a copied cache must not mix hosts)."""
        return f"host:{runner._cpu_name() or 'unknown cpu'}"

    def profile(
        self,
        artifact: Path,
        inputs: dict[str, np.ndarray],
        *,
        warmup: int = 10,
        runs: int = 50,
        threads: int | None = None,
    ) -> LatencyProfile:
        """Time batch-1 inference of ``artifact``; raises DeviceError with the runner's last error line."""
        artifact = Path(artifact)
        with tempfile.TemporaryDirectory(prefix="edge-distill-profile-") as tmp:
            npz = Path(tmp) / "inputs.npz"
            np.savez(npz, **{name: np.asarray(array)[:1] for name, array in inputs.items()})  # (1, ...)
            command = _runner_command(artifact, npz, warmup=warmup, runs=runs, threads=threads)
            stdout = self._run(command, artifact)
        return _parse_profile(stdout, artifact, self.name)

    def _run(self, command: list[str], artifact: Path) -> str:
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise DeviceError(
                f"Profiling {artifact.name} on {self.name} took over {self.timeout_s:.0f} s; "
                "lower --runs or check that the artifact runs at all."
            ) from None
        if done.returncode != 0:
            raise DeviceError(
                f"Profiling {artifact.name} on {self.name} failed (runner exit {done.returncode}): "
                f"{_last_line(done.stderr)}"
            )
        return done.stdout


def open_device(
    spec: str,
    *,
    python: str | None = None,
    ssh_config: Path | None = None,
    runner_binary: str | None = None,
    adb: str = "adb",
) -> Device:
    """The device a ``--device`` string names: ``local``, ``ssh://user@host[:port]`` or ``adb://SERIAL``.

    An SSH or ADB device is reached once here, so that one that is off or unreachable fails in one sentence
    before anything is loaded or trained (a device that fails later leaves its round not measured).

    Example:
        >>> open_device("local").name
        'host'
        >>> open_device("ssh://pi@raspberrypi.local").name   # doctest: +SKIP
        'ssh://pi@raspberrypi.local'
    """
    if spec in ("local", "host"):
        return HostDevice()
    if spec.startswith("ssh://"):
        from edge_distill.ssh import SshDevice

        device = SshDevice(spec, python=python or "python3", config_file=ssh_config)
        device.reach()  # an unreachable device fails now, not after minutes of loading and training
        return device
    if spec.startswith("adb://"):
        from edge_distill.adb import AdbDevice

        if not runner_binary:
            raise DeviceError(
                f"Profiling on {spec} needs the runtime's benchmark binary; pass --runner-binary with "
                "ExecuTorch's executor_runner (for .pte) or LiteRT's benchmark_model (for .tflite)."
            )
        device = AdbDevice(spec, runner_binary=runner_binary, adb=adb)
        device.reach()
        return device
    raise DeviceError(f"Unknown device {spec!r}; use {DEVICE_FORMS}.")


def device_key(device: Device) -> str:
    """The name a device's measurements are calibrated under."""
    return str(getattr(device, "key", device.name))


def device_source(device: Device) -> str:
    """How a report labels this device's latencies: measured-host or measured-device."""
    return str(getattr(device, "source", "measured-device"))


def profile_on_host(
    artifact: Path,
    inputs: dict[str, np.ndarray],
    *,
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
) -> LatencyProfile:
    """Time batch-1 inference of ``artifact`` on this machine in a separate process.

    Example:
        >>> profile_on_host(Path("model.onnx"), {"x": np.zeros((1, 8), np.float32)}, runs=20).runs
        20
    """
    return HostDevice().profile(artifact, inputs, warmup=warmup, runs=runs, threads=threads)


def _runner_command(artifact: Path, npz: Path, *, warmup: int, runs: int, threads: int | None) -> list[str]:
    # Run the runner as a standalone script, as on a device: no edge_distill package import, and -P keeps
    # targets/ (which holds a module named onnx.py) off sys.path so `import onnx` finds the real package.
    command = [sys.executable, "-P", runner.__file__, str(artifact), "--inputs", str(npz)]
    command += ["--warmup", str(warmup), "--runs", str(runs), "--json"]
    if threads is not None:
        command += ["--threads", str(threads)]
    return command


def _parse_profile(stdout: str, artifact: Path, device: str) -> LatencyProfile:
    try:
        return LatencyProfile.from_dict(json.loads(_last_line(stdout)))
    except (ValueError, TypeError) as exc:
        raise DeviceError(
            f"The runner on {device} printed no valid profile for {artifact.name} ({exc}); "
            "run `python -m edge_distill.targets.runner` by hand to see its output."
        ) from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else "no output"
