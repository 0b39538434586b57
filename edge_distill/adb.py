"""Profile an exported artifact on an Android device over ADB, addressed as ``adb://SERIAL``.

A ``.pte`` runs in ExecuTorch's ``executor_runner`` (examples/portable/executor_runner, or its XNNPACK
build ``xnn_executor_runner``; ExecuTorch 1.3 or later), a ``.tflite`` in LiteRT's ``benchmark_model``.
You build the binary for the device and pass ``runner_binary``: a file on this machine is pushed and made
executable, an absolute path that exists on the device is used as it is. Everything pushed is removed
at the end, also when profiling fails.

What the numbers are:

* executor_runner logs each execution's ``method->execute()`` time ("Iteration i of N: X ms"). One
  ``adb shell`` call runs it once with ``--num_executions=1+warmup+runs`` in one process: iteration 1 is
  ``first_ms``, the next ``warmup`` are dropped, and p50/p90/p99, the mean and the p50's 95% interval
  are taken over the last ``runs`` per-execution times, as on the host. ``load_ms`` is its "Model loaded
  in" (program and method load). Peak memory is the runner process's maximum resident set from toybox
  ``time -v`` where the device has it, else NaN (unknown). It feeds all-ones inputs.
* benchmark_model prints no per-run times: only count/first/min/max/avg/std and, in current builds,
  p5/median/p95 of the timed runs. ``p50_ms`` is its median; ``p90_ms`` is its p95 and ``p99_ms`` its
  max, upper bounds of the true p90 and p99, so a budget check on them errs on the safe side; there is
  no interval (``p50_ci95_ms`` None). ``load_ms`` is its Init, ``first_ms`` its first inference, peak
  memory its "Memory footprint delta from the start of the tool" (max-RSS growth). It feeds random
  inputs (0-99 for integer ids). A build that prints no median is refused.

Neither tool reads the ``inputs`` values: the exports have a fixed batch-1 shape, so the timing is of the
same computation. Every failure is a DeviceError with one sentence (``adb_error``, and
``adb_results.tool_failure`` for the runner's own failures).

Example:
    >>> device = AdbDevice("adb://R58M31XABCD", runner_binary="cmake-out-android/executor_runner")
    >>> profile = device.profile(Path("artifacts/executorch/model.pte"), inputs, runs=50, threads=4)
    >>> profile.conditions["device_model"], profile.p50_ms <= profile.p99_ms
    ('Pixel 8', True)
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np

from edge_distill.adb_output import (
    EXIT_MARKER,
    parse_benchmark_model,
    parse_device_facts,
    parse_executor_runner,
    split_exit,
)
from edge_distill.adb_results import (
    ProfileContext,
    benchmark_model_profile,
    executor_runner_profile,
    tool_failure,
)
from edge_distill.errors import DeviceError
from edge_distill.targets.runner import LatencyProfile

__all__ = [
    "DEFAULT_WORK_DIR",
    "TOOLS",
    "AdbDevice",
    "adb_argv",
    "adb_error",
    "cleanup_script",
    "device_facts_script",
    "run_script",
    "serial_from_url",
    "tool_for",
]

DEFAULT_WORK_DIR = "/data/local/tmp/edge-distill"
TOOLS = {".pte": "executor_runner", ".tflite": "benchmark_model"}  # the runner each artifact kind needs
_TIME_V = "/system/bin/time -v"  # toybox (toys/posix/time.c): "Max RSS (KiB): N" on stderr
_NO_DEVICE = re.compile(r"^(?:device '.*' not found|device not found|no devices/emulators found)$")


class AdbDevice:
    """An Android device reached with ``adb -s SERIAL``; implements the ``Device`` protocol."""

    def __init__(
        self,
        url: str,
        *,
        runner_binary: str | Path,
        adb: str = "adb",
        work_dir: str = DEFAULT_WORK_DIR,
        timeout_s: float = 900.0,
    ) -> None:
        self.serial = serial_from_url(url)
        self.name = f"adb://{self.serial}"
        self.runner_binary = str(runner_binary)
        self.adb = adb
        self.work_dir = work_dir.rstrip("/") or "/"
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
        """Time batch-1 inference of ``artifact`` on the device with its kind's runner binary."""
        artifact = Path(artifact)
        tool = tool_for(artifact)
        _check_counts(warmup, runs)
        if not artifact.is_file():
            raise DeviceError(f"{artifact} does not exist; export it before profiling it on {self.name}.")
        self.reach()
        facts = self._facts()
        pushed: list[str] = []
        try:
            runner, model = self._install(artifact, pushed)
            script = run_script(tool, runner, model, warmup=warmup, runs=runs, threads=threads)
            stdout = self._call(["shell", script], f"Profiling {artifact.name}", runs_hint=True)
        finally:
            self._cleanup(pushed)
        text, status = split_exit(stdout)
        failure = tool_failure(tool, text, status, artifact=artifact.name, where=self.name)
        if failure:
            raise DeviceError(failure)
        conditions = self._conditions(tool, facts)
        context = ProfileContext(artifact, tool, self.name, warmup, runs, threads, conditions, text)
        if tool == "executor_runner":
            return executor_runner_profile(parse_executor_runner(text), context)
        return benchmark_model_profile(parse_benchmark_model(text), context)

    def reach(self) -> None:
        """Check that adb runs and the device answers; one DeviceError sentence (no adb, no such device,
        unauthorized, offline) before a run loads or trains anything.

        Example:
            >>> AdbDevice("adb://R58M", runner_binary="executor_runner").reach()  # doctest: +SKIP
        """
        self._check_adb()
        self._call(["get-state"], "Reaching the device")

    # --- steps -------------------------------------------------------------------------------------

    def _check_adb(self) -> None:
        if shutil.which(self.adb) is None:
            raise DeviceError(
                f"adb ({self.adb!r}) is not on PATH; install Android platform-tools and put adb on PATH, "
                "or pass adb=/path/to/adb."
            )

    def _remote_runner(self) -> str | None:
        """The runner's device path when it is already there, None when it is pushed from here."""
        return None if Path(self.runner_binary).is_file() else self.runner_binary

    def _facts(self) -> dict[str, str | None]:
        """The device's model, Android version, ABI, CPUs and governor; checks a device-side runner."""
        remote = self._remote_runner()
        if remote is not None and not remote.startswith("/"):
            raise DeviceError(self._runner_missing(remote))
        facts = parse_device_facts(self._call(["shell", device_facts_script(remote)], "Reading the device"))
        if remote is not None and facts.get("runner") != "present":
            raise DeviceError(self._runner_missing(remote))
        return facts

    def _runner_missing(self, remote: str) -> str:
        return (
            f"The runner binary {remote} is neither a file on this machine nor an executable on "
            f"{self.name}; pass the path of executor_runner or benchmark_model built for Android "
            "(arm64-v8a), here or on the device."
        )

    def _install(self, artifact: Path, pushed: list[str]) -> tuple[str, str]:
        self._call(["shell", f"mkdir -p {shlex.quote(self.work_dir)}"], "Creating the work folder")
        runner = self._remote_runner()
        if runner is None:
            runner = self._push(Path(self.runner_binary), pushed)
            self._call(["shell", f"chmod +x {shlex.quote(runner)}"], "Making the runner executable")
        return runner, self._push(artifact, pushed)

    def _push(self, local: Path, pushed: list[str]) -> str:
        remote = f"{self.work_dir}/{local.name}"
        pushed.append(remote)  # before the push: a half-written file is removed too
        self._call(["push", str(local), remote], f"Pushing {local.name}")
        return remote

    def _cleanup(self, pushed: list[str]) -> None:
        if not pushed:
            return
        argv = adb_argv(self.adb, self.serial, ["shell", cleanup_script(pushed)])
        # best effort: a failed cleanup must not hide the profile or the error that got us here
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                argv, capture_output=True, text=True, timeout=min(self.timeout_s, 120), check=False
            )

    def _call(self, args: list[str], what: str, *, runs_hint: bool = False) -> str:
        """Run ``adb -s SERIAL *args``; its stdout, or a DeviceError in one sentence."""
        argv = adb_argv(self.adb, self.serial, args)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            fix = "lower --runs" if runs_hint else "check the USB connection"
            raise DeviceError(
                f"{what} on {self.name} took over {self.timeout_s:.0f} s; {fix}, or raise timeout_s "
                "for a slow device."
            ) from None
        except OSError as exc:
            raise DeviceError(
                f"adb ({self.adb!r}) could not be started: {exc.strerror}; reinstall Android platform-tools."
            ) from None
        if done.returncode != 0:
            raise DeviceError(adb_error(self.serial, what, done.stderr + done.stdout))
        return done.stdout

    def _conditions(self, tool: str, facts: dict[str, str | None]) -> dict[str, object]:
        cpus = facts.get("cpus")
        return {
            "device": self.name,
            "device_model": facts.get("model"),
            "android_version": facts.get("android"),
            "abi": facts.get("abi"),
            "cpu_count": int(cpus) if cpus and cpus.isdigit() else None,
            "governor": facts.get("governor"),
            "runner": self.runner_binary,
            "tool": tool,
        }


# --- pure pieces: URLs, argv, scripts ------------------------------------------------------------------


def serial_from_url(url: str) -> str:
    """``adb://SERIAL`` to SERIAL (a USB serial, or host:port for adb over TCP).

    Example:
        >>> serial_from_url("adb://192.168.1.42:5555")
        '192.168.1.42:5555'
    """
    serial = url.removeprefix("adb://") if url.startswith("adb://") else ""
    if not serial or "/" in serial or any(c.isspace() for c in serial):
        raise DeviceError(
            f"{url!r} is not an ADB device URL; use adb://SERIAL with a serial from `adb devices`."
        )
    return serial


def tool_for(artifact: Path) -> str:
    """The runner an artifact kind needs on the device; other kinds are a DeviceError.

    Example:
        >>> tool_for(Path("model.tflite"))
        'benchmark_model'
    """
    tool = TOOLS.get(artifact.suffix)
    if tool is None:
        raise DeviceError(
            f"ADB profiling supports .pte (ExecuTorch executor_runner) and .tflite (LiteRT benchmark_model) "
            f"artifacts, not {artifact.name}; profile it on the host instead."
        )
    return tool


def adb_argv(adb: str, serial: str, args: list[str]) -> list[str]:
    """The command line of one adb call on one device.

    Example:
        >>> adb_argv("adb", "R58M31XABCD", ["get-state"])
        ['adb', '-s', 'R58M31XABCD', 'get-state']
    """
    return [adb, "-s", serial, *args]


def device_facts_script(remote_runner: str | None) -> str:
    """One shell line that prints the device's model, Android version, ABI, CPU count and governor (and
    whether a runner already on the device is executable) as ``key=value`` lines.

    Example:
        >>> "getprop ro.product.model" in device_facts_script(None)
        True
    """
    lines = [
        'echo "model=$(getprop ro.product.model)"',
        'echo "android=$(getprop ro.build.version.release)"',
        'echo "abi=$(getprop ro.product.cpu.abi)"',
        'echo "cpus=$(nproc)"',
        'echo "governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null)"',
    ]
    if remote_runner:
        runner = shlex.quote(remote_runner)
        lines.append(f"if [ -x {runner} ]; then echo runner=present; else echo runner=missing; fi")
    return "; ".join(lines)


def run_script(tool: str, runner: str, model: str, *, warmup: int, runs: int, threads: int | None) -> str:
    """The shell line that runs the tool once and echoes its exit status after its output.

    executor_runner runs under toybox ``time -v`` where the device has it (its peak RSS), and its log is
    read from logcat too (the lines since the run started), since an android-PAL build logs there and not
    to stderr. The line always exits 0: the marker carries the tool's status, adb's own is adb's.

    Example:
        >>> run_script("benchmark_model", "/w/bm", "/w/m.tflite", warmup=2, runs=50, threads=None)
        '/w/bm --graph=/w/m.tflite --warmup_runs=3 --num_runs=50 2>&1; echo EDGE_DISTILL_EXIT=$?'
    """
    exit_echo = f"echo {EXIT_MARKER}$?"
    if tool == "benchmark_model":
        flags = [f"--graph={model}", f"--warmup_runs={warmup + 1}", f"--num_runs={runs}"]
        flags += [f"--num_threads={threads}"] if threads is not None else []
        return f"{shlex.join([runner, *flags])} 2>&1; {exit_echo}"
    flags = [f"--model_path={model}", f"--num_executions={1 + warmup + runs}", "--print_output=none"]
    flags += [f"--cpu_threads={threads}"] if threads is not None else []
    return (
        f"T=; {_TIME_V} true >/dev/null 2>&1 && T='{_TIME_V}'; S=$(date '+%m-%d %H:%M:%S.000'); "
        f"$T {shlex.join([runner, *flags])} 2>&1; {exit_echo}; "
        'logcat -d -v threadtime -T "$S" -s ExecuTorch 2>/dev/null; true'
    )


def cleanup_script(pushed: list[str]) -> str:
    """Remove exactly the files this profile pushed (never a folder it did not make).

    Example:
        >>> cleanup_script(["/w/executor_runner", "/w/m.pte"])
        'rm -f /w/executor_runner /w/m.pte'
    """
    return shlex.join(["rm", "-f", *pushed])


# --- pure pieces: error sentences ---------------------------------------------------------------------


def adb_error(serial: str, what: str, text: str) -> str:
    """One sentence for a failed adb call, from adb's own messages (packages/modules/adb transport.cpp:
    "device '%s' not found", "no devices/emulators found", "device unauthorized.", "device offline").

    Example:
        >>> adb_error("R58", "Reaching the device", "error: device offline")[:52]
        'The Android device R58 is offline (adb: device offli'
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = re.sub(r"^(?:adb: )?(?:error: )?", "", lines[0]) if lines else "no output"
    if _NO_DEVICE.match(first):
        return (
            f"No Android device with serial {serial} is connected (adb: {first}); plug it in with USB "
            "debugging on and check `adb devices`."
        )
    if first.startswith(("device unauthorized", "device still authorizing")):
        return (
            f"The Android device {serial} has not authorized this computer (adb: {first.rstrip('.')}); "
            "unlock it and accept the USB debugging prompt, then retry."
        )
    if first.startswith(("device offline", "device still connecting")):
        return (
            f"The Android device {serial} is offline (adb: {first}); reconnect it or run `adb reconnect`, "
            "then retry."
        )
    detail = first.rstrip(".")
    return f"{what} on adb://{serial} failed ({detail}); check the device with `adb -s {serial} shell`."


def _check_counts(warmup: int, runs: int) -> None:
    if runs < 1 or warmup < 0:
        raise DeviceError(
            f"Need runs >= 1 and warmup >= 0 to profile over ADB, got runs={runs}, warmup={warmup}."
        )
