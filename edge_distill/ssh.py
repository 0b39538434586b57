"""A device reached over SSH: copy the artifact and the torch-free runner there, time it, clean up.

The system ``ssh`` and ``scp`` do the work, so ``~/.ssh/config`` (aliases, keys, jump hosts) applies.
They run with ``BatchMode=yes``: no password or host-key prompt ever waits for input, and a host key that
is unknown or has changed fails instead of being accepted. One profile() call opens one connection and
shares it between its steps (ControlMaster); the remote temp dir it makes is always removed.

Example:
    >>> device = SshDevice("ssh://pi@raspberrypi.local?python=/home/pi/venv/bin/python")
    >>> profile = device.profile(Path("artifacts/onnx-int8/model.onnx"), {"input_ids": ids})
    >>> profile.conditions["machine"]
    'aarch64'
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_distill.errors import DeviceError
from edge_distill.targets import runner
from edge_distill.targets.runner import LatencyProfile

__all__ = ["SshDevice", "SshUrl", "parse_ssh_url"]

URL_EXAMPLE = "ssh://pi@raspberrypi.local:22?python=/home/pi/venv/bin/python"
_UNREACHABLE = (
    "connection refused", "timed out", "could not resolve", "no route to host", "network is unreachable",
    "name or service not known", "temporary failure in name resolution", "connection reset",
    "connection closed by remote host", "kex_exchange_identification",
)  # fmt: skip
_HOST_KEY = ("host key verification failed", "remote host identification has changed")
_AUTH = ("permission denied (", "too many authentication failures", "no more authentication methods")
# What a process that ran out of memory leaves on stderr when the runner could not say it itself
# (a failed dlopen, OpenBLAS's own check, a MemoryError before the runner's handlers, std::bad_alloc).
_OUT_OF_MEMORY = (
    "memoryerror", "bad_alloc", "out of memory", "cannot allocate memory", "memory allocation",
    "failed to map segment",
)  # fmt: skip
_KILLED = (137, -9)  # SIGKILL through the remote shell (128 + 9), or of ssh itself


@dataclass(frozen=True)
class SshUrl:
    """``ssh://[user@]host[:port][?python=...]`` taken apart; ``None`` leaves the choice to ssh_config."""

    host: str
    user: str | None = None
    port: int | None = None
    python: str | None = None

    def destination(self, *, for_scp: bool = False) -> str:
        """``user@host``; an IPv6 address is bracketed for scp, whose ``host:path`` needs it."""
        host = f"[{self.host}]" if for_scp and ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host


def parse_ssh_url(url: str) -> SshUrl:
    """Take an SSH device URL apart; anything else is a DeviceError that shows a good one.

    Example:
        >>> parse_ssh_url("ssh://pi@[fe80::1]:2222?python=/usr/bin/python3")
        SshUrl(host='fe80::1', user='pi', port=2222, python='/usr/bin/python3')
    """
    bad = f"{url!r} is not an SSH device URL; write it as ssh://[user@]host[:port], e.g. {URL_EXAMPLE}."
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError: not a number, or out of range
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise DeviceError(bad) from None
    python = query.pop("python", [None])  # one non-empty value, or none
    well_formed = parts.scheme == "ssh" and parts.hostname and parts.path in ("", "/") and port != 0
    extras = parts.password is not None or parts.fragment or query
    if not well_formed or extras or len(python) != 1 or python == [""]:
        raise DeviceError(bad)
    user = urllib.parse.unquote(parts.username) if parts.username else None
    return SshUrl(host=parts.hostname, user=user, port=port, python=python[0])


class SshDevice:
    """A device that ``ssh`` reaches: a Raspberry Pi, a phone running sshd, a build box.

    The device needs ``sh``, ``mktemp``, Python 3 with numpy, and the artifact's runtime (onnxruntime,
    tflite-runtime, ...); ``python`` (or the URL's ``?python=``) names the interpreter to use there.

    Example:
        >>> SshDevice("ssh://pi@raspberrypi.local").profile(Path("model.onnx"), inputs, runs=20).runs >= 20
        True
    """

    def __init__(
        self,
        url: str,
        *,
        python: str = "python3",
        config_file: Path | None = None,
        connect_timeout_s: int = 10,
        timeout_s: float = 900.0,
    ) -> None:
        self.url = parse_ssh_url(url)
        self.name = url
        self.python = self.url.python or python
        self.config_file = Path(config_file) if config_file is not None else None
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s

    def profile(
        self,
        artifact: Path,
        inputs: dict[str, np.ndarray],
        *,
        warmup: int = 10,
        runs: int = 50,
        threads: int | None = None,
    ) -> LatencyProfile:
        """Time batch-1 inference of ``artifact`` on the device; every failure is one DeviceError sentence."""
        artifact = Path(artifact)
        if not artifact.exists():
            raise DeviceError(
                f"Artifact {artifact} does not exist; export the model first or check the path."
            )
        with tempfile.TemporaryDirectory(prefix="ed-ssh-", dir=_short_temp_root()) as tmp:
            npz = Path(tmp) / "inputs.npz"
            np.savez(npz, **{name: np.asarray(array)[:1] for name, array in inputs.items()})  # (1, ...)
            connection = _Connection(self, Path(tmp) / "cm")
            try:
                remote = connection.make_temp_dir()
                try:
                    connection.copy([*_artifact_files(artifact), Path(runner.__file__), npz], remote)
                    stdout = connection.run_runner(
                        remote, artifact, warmup=warmup, runs=runs, threads=threads
                    )
                finally:
                    connection.remove(remote)
            finally:
                connection.close()
        return self._parse(stdout, artifact)

    def reach(self) -> None:
        """Log in once and run ``true``: an unreachable device, a refused login or an unknown host key fails
        here, in one DeviceError sentence, before a run loads or trains anything.

        Example:
            >>> SshDevice("ssh://pi@raspberrypi.local").reach()  # doctest: +SKIP
        """
        with tempfile.TemporaryDirectory(prefix="ed-ssh-", dir=_short_temp_root()) as tmp:
            connection = _Connection(self, Path(tmp) / "cm")
            try:
                done = connection.ssh("true", timeout_s=connection._short_timeout())
            finally:
                connection.close()
        if done.returncode != 0:
            raise DeviceError(
                f"Cannot log in to {self.name} ({_last_line(done.stderr)}); "
                f"try `{self.try_command()}` by hand."
            )

    def try_command(self) -> str:
        """The plain ``ssh`` command that reaches this device, to check it by hand."""
        port = f"-p {self.url.port} " if self.url.port else ""
        config = f"-F {shlex.quote(str(self.config_file))} " if self.config_file else ""
        return f"ssh {config}{port}{self.url.destination()}"

    def _connection_error(self, stderr: str) -> DeviceError | None:
        """The DeviceError for what ssh says when it cannot connect or log in; None for anything else."""
        lowered = stderr.lower()
        if any(mark in lowered for mark in _HOST_KEY):
            return self._host_key_error(changed="remote host identification has changed" in lowered)
        if any(mark in lowered for mark in _AUTH):
            port = f"-p {self.url.port} " if self.url.port else ""
            return DeviceError(
                f"{self.name} refused the SSH login ({_last_line(stderr)}); install your key there with "
                f"`ssh-copy-id {port}{self.url.destination()}` or name it in ~/.ssh/config (IdentityFile)."
            )
        if any(mark in lowered for mark in _UNREACHABLE):
            return DeviceError(
                f"Cannot reach {self.name} ({_last_line(stderr)}); check that the device is on and sshd "
                f"runs, try `{self.try_command()}`."
            )
        return None

    def _host_key_error(self, *, changed: bool) -> DeviceError:
        # BatchMode never asks, so an unknown key fails: the user checks the fingerprint once, by hand
        known = f"[{self.url.host}]:{self.url.port}" if self.url.port else self.url.host
        forget = (
            f", after `ssh-keygen -R {shlex.quote(known)}` if the device was reinstalled" if changed else ""
        )
        state = "not the one known" if changed else "unknown"
        return DeviceError(
            f"The host key of {self.name} is {state} (Host key verification failed); run "
            f"`{self.try_command()}` once to check its fingerprint and accept it{forget}."
        )

    def _runner_error(self, done: subprocess.CompletedProcess[str], artifact: Path) -> DeviceError:
        """The DeviceError for a runner that exited non-zero on the device."""
        line, lowered = _last_line(done.stderr), done.stderr.lower()
        if done.returncode in (126, 127):
            return DeviceError(
                f"{self.name} has no Python at `{self.python}` ({line}); install Python 3 on the device or "
                f"pass its path, e.g. ?python=/usr/bin/python3 in the URL."
            )
        if "no module named 'numpy'" in lowered:
            return DeviceError(
                f"The Python on {self.name} ({self.python}) lacks numpy, which the runner needs; install it "
                f"on the device with `{self.python} -m pip install numpy`."
            )
        if "ran out of memory" in lowered or done.returncode in _KILLED or _oom_line(done.stderr):
            return self._out_of_memory(done, artifact)
        if done.returncode == 2 and "; install it with " in line:  # the runner's "X needs R; install it ..."
            on_device = f"; install it on the device, for {self.python}, with "
            return DeviceError(f"On {self.name}, {line.replace('; install it with ', on_device)}")
        return DeviceError(
            f"Profiling {artifact.name} on {self.name} failed (exit {done.returncode}): {line}"
        )

    def _out_of_memory(self, done: subprocess.CompletedProcess[str], artifact: Path) -> DeviceError:
        if done.returncode in _KILLED:
            evidence = " (the runner was killed with SIGKILL, as the kernel's OOM killer does)"
        else:
            found = _oom_line(done.stderr)
            evidence = f" ({found.rstrip('.')[:160]})" if found and "ran out of memory" not in found else ""
        return DeviceError(
            f"{artifact.name} ran out of memory on {self.name} while loading or running{evidence}; pick a "
            "smaller student or a lower precision (int8), or free memory on the device."
        )

    def _parse(self, stdout: str, artifact: Path) -> LatencyProfile:
        try:
            return LatencyProfile.from_dict(json.loads(_last_line(stdout)))
        except (ValueError, TypeError) as exc:
            raise DeviceError(
                f"The runner on {self.name} printed no valid profile for {artifact.name} ({exc}); run it by "
                f"hand there: `{self.try_command()}`, then `{self.python} runner.py {artifact.name} ...`."
            ) from None


class _Connection:
    """The ssh/scp commands of one profile() call, sharing one SSH connection through ``control``."""

    def __init__(self, device: SshDevice, control: Path) -> None:
        self.device = device
        self.control = control

    def options(self) -> list[str]:
        """Options that ssh and scp share; the port goes as ``-o Port`` since scp spells ``-p`` ``-P``."""
        device = self.device
        options = ["-F", str(device.config_file)] if device.config_file else []
        options += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={device.connect_timeout_s}"]
        if sys.platform != "win32":  # Windows' OpenSSH has no connection sharing
            options += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}"]
            options += ["-o", "ControlPersist=60"]  # idle seconds; close() ends it sooner
        return options + (["-o", f"Port={device.url.port}"] if device.url.port else [])

    def ssh(self, script: str, *, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in ``sh`` on the device (whatever the login shell); ssh errors raise."""
        destination, remote_command = self.device.url.destination(), f"sh -c {shlex.quote(script)}"
        command = ["ssh", *self.options(), "--", destination, remote_command]
        done = self._run(command, timeout_s, f"Running a command on {self.device.name}")
        if done.returncode == 255:
            error = self.device._connection_error(done.stderr)
            if error is not None:
                raise error
        return done

    def make_temp_dir(self) -> str:
        done = self.ssh('mktemp -d "${TMPDIR:-/tmp}/edge-distill.XXXXXX"', timeout_s=self._short_timeout())
        remote = _last_line(done.stdout)
        if done.returncode != 0 or not remote.startswith("/"):
            raise DeviceError(
                f"Cannot make a temp dir on {self.device.name} ({_last_line(done.stderr)}); check that "
                f"`{self.device.try_command()} mktemp -d` works and that /tmp has free space."
            )
        return remote

    def copy(self, sources: list[Path], remote: str) -> None:
        """scp the files (and folders: a .mlpackage) into ``remote``."""
        target = f"{self.device.url.destination(for_scp=True)}:{remote}/"
        command = ["scp", "-q", "-r", *self.options(), "--", *map(str, sources), target]
        done = self._run(command, self.device.timeout_s, f"Copying {sources[0].name} to {self.device.name}")
        if done.returncode != 0:
            error = self.device._connection_error(done.stderr)
            raise error or DeviceError(
                f"Copying {sources[0].name} to {self.device.name} failed ({_last_line(done.stderr)}); check "
                "the free space in the device's temp dir (`df -h /tmp`)."
            )

    def run_runner(self, remote: str, artifact: Path, *, warmup: int, runs: int, threads: int | None) -> str:
        """Run the runner in ``remote``; its stdout, whose last line is the profile's JSON."""
        args = [artifact.name, "--inputs", "inputs.npz", "--warmup", str(warmup), "--runs", str(runs)]
        args += ["--threads", str(threads)] if threads is not None else []
        command = " ".join([_shell_path(self.device.python), "runner.py", *map(shlex.quote, args), "--json"])
        # `; exit $?` keeps sh from exec-ing python, so a SIGKILL shows as exit 137 rather than ssh's 255
        script = f"cd {shlex.quote(remote)} && {command}; exit $?"
        done = self.ssh(script, timeout_s=self.device.timeout_s)
        if done.returncode != 0:
            raise self.device._runner_error(done, artifact)
        return done.stdout

    def remove(self, remote: str) -> None:
        """Remove the remote temp dir; a failure here must not hide the error that got us here."""
        with contextlib.suppress(DeviceError):
            self.ssh(f"rm -rf {shlex.quote(remote)}", timeout_s=self._short_timeout())

    def close(self) -> None:
        """End the shared connection now rather than after ControlPersist's idle time."""
        if sys.platform == "win32" or not self.control.exists():
            return
        command = ["ssh", *self.options(), "-O", "exit", "--", self.device.url.destination()]
        subprocess.run(command, capture_output=True, text=True, timeout=self._short_timeout(), check=False)

    def _short_timeout(self) -> float:
        return min(self.device.timeout_s, 3 * self.device.connect_timeout_s + 30)

    def _run(self, command: list[str], timeout_s: float, step: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise DeviceError(
                f"{step} took over {timeout_s:.0f} s; lower --runs or raise the timeout, and check that the "
                f"device answers (`{self.device.try_command()}`) and that the artifact runs at all."
            ) from None
        except FileNotFoundError:
            raise DeviceError(
                f"No `{command[0]}` command on this machine, which {self.device.name} needs; install the "
                "OpenSSH client (`apt-get install openssh-client`)."
            ) from None


def _artifact_files(artifact: Path) -> list[Path]:
    """The artifact and, for an .onnx, its external weights (``model.onnx.data``) when beside it."""
    data = artifact.with_name(f"{artifact.name}.data")
    return [artifact, data] if artifact.suffix == ".onnx" and data.is_file() else [artifact]


def _shell_path(python: str) -> str:
    """``python`` quoted for sh, leaving a leading ``~/`` to the shell (``?python=~/venv/bin/python``)."""
    return f'"$HOME"/{shlex.quote(python[2:])}' if python.startswith("~/") else shlex.quote(python)


def _short_temp_root() -> str | None:
    """/tmp where it exists: a ControlPath must fit a Unix socket name (about 104 bytes), and macOS's
    $TMPDIR alone is about 50."""
    return "/tmp" if Path("/tmp").is_dir() else None


def _oom_line(stderr: str) -> str | None:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if any(m in line.lower() for m in _OUT_OF_MEMORY)), None)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else "no output"
