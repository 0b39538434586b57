"""From what a device-side runner printed to a LatencyProfile, or to a one-sentence DeviceError.

Pure functions over the parsed output of ``adb_output``; ``adb.AdbDevice`` calls them after the run.
What each number is for each tool is spelled out in ``edge_distill/adb.py``.

Example:
    >>> out = parse_executor_runner(Path("tests/data/adb/executor_runner_logcat_assembled.txt").read_text())
    >>> profile = executor_runner_profile(out, ProfileContext(Path("model.pte"), "executor_runner",
    ...                                                       "adb://R58", warmup=2, runs=5, threads=4))
    >>> profile.runs
    5
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_distill.adb_output import (
    BenchmarkModelOutput,
    ExecutorRunnerOutput,
    parse_benchmark_model,
    parse_executor_runner,
)
from edge_distill.errors import DeviceError
from edge_distill.targets.runner import RUNTIME_BY_EXTENSION, LatencyProfile, median_interval

__all__ = [
    "CI_TARGET",
    "ProfileContext",
    "benchmark_model_profile",
    "executor_runner_profile",
    "tool_failure",
]

CI_TARGET = 0.02  # the host runner's criterion for "converged": the p50's 95% interval within 2%
_KILLED = (9, 137)  # SIGKILL (the low-memory killer): 9 from toybox time, 128 + 9 from the shell
_NOT_EXECUTABLE = (126, 127)
_OOM_MARKERS = ("bad_alloc", "out of memory", "failed to allocate", "cannot allocate", "status 0x21")
_OLD_RUNNER_FIX = "use an executor_runner from ExecuTorch 1.3 or later (this project pins 1.5.1)"


def tool_failure(tool: str, text: str, status: int | None, *, artifact: str, where: str) -> str | None:
    """The one-sentence error for a run that failed, or None when the tool exited 0.

    Killed by signal 9 or an allocation failure ("status 0x21" is ExecuTorch's MemoryAllocationFailed)
    is out of memory; exit 126/127 is a binary the device cannot execute; else the tool's error line.

    Example:
        >>> tool_failure("executor_runner", "", 137, artifact="m.pte", where="adb://R58")[:39]
        'm.pte ran out of memory on adb://R58 (k'
    """
    if status is None:
        return (
            f"{tool} on {where} ended without an exit status (the adb connection dropped); reconnect the "
            "device and retry."
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    error = _error_line(tool, text)
    if status in _KILLED or "Killed" in lines or any(m in text.lower() for m in _OOM_MARKERS):
        return (
            f"{artifact} ran out of memory on {where} ({error or f'killed, exit {status}'}); pick a smaller "
            "student or a lower precision (int8), or close apps on the device."
        )
    if status in _NOT_EXECUTABLE:
        return (
            f"{where} cannot execute {tool} ({lines[-1] if lines else 'not executable'}); build it for the "
            "device's ABI (arm64-v8a) and pass that."
        )
    if "unknown command line flag" in text:
        return f"{tool} on {where} rejected a flag ({error}); {_OLD_RUNNER_FIX}."
    if status != 0:
        line = error or (lines[-1] if lines else "no output")
        return f"{tool} failed on {artifact} on {where} (exit {status}): {line.rstrip('.')}."
    return None


def _error_line(tool: str, text: str) -> str | None:
    if tool == "benchmark_model":
        return parse_benchmark_model(text).error
    plain = [line.strip() for line in text.splitlines() if line.strip().startswith("ERROR: ")]  # gflags
    return parse_executor_runner(text).error or (plain[0] if plain else None)


@dataclass(frozen=True)
class ProfileContext:
    """What a profile needs besides the parsed output: the run's settings and the device's facts."""

    artifact: Path
    tool: str
    where: str  # adb://SERIAL
    warmup: int
    runs: int
    threads: int | None
    conditions: dict[str, object] = field(default_factory=dict)
    output: str = ""  # the tool's output, quoted in the error sentence

    def unparsable(self, what: str, fix: str = "run it by hand with `adb shell` to see why") -> DeviceError:
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        last = lines[-1] if lines else "nothing"
        return DeviceError(
            f"{self.tool} on {self.where} printed no {what} for {self.artifact.name} "
            f"(its last line: {last!r}); {fix}."
        )

    def size_mb(self) -> float:
        return self.artifact.stat().st_size / 2**20 if self.artifact.is_file() else 0.0


def executor_runner_profile(out: ExecutorRunnerOutput, context: ProfileContext) -> LatencyProfile:
    """The profile from executor_runner's per-execution times: the first is ``first_ms``, the next
    ``warmup`` are dropped, and the percentiles, mean and p50 interval are over the rest.

    Example:
        >>> executor_runner_profile(out, context).first_ms  # iteration 1 of the run
        41.503219
    """
    if not out.iterations_ms and out.total_ms is not None:
        raise context.unparsable("per-iteration times (it predates ExecuTorch 1.3)", _OLD_RUNNER_FIX)
    if not out.iterations_ms:
        raise context.unparsable("timings ('Iteration i of N' lines, on stderr or in logcat)")
    timed = np.asarray(out.iterations_ms[1 + context.warmup :], dtype=float)  # (runs,) ms
    if timed.size == 0:
        raise context.unparsable(f"timed iterations after the first and {context.warmup} warmup")
    p50, p90, p99 = (float(v) for v in np.percentile(timed, [50, 90, 99]))
    low, high = median_interval(timed)
    threads = out.threads if out.threads is not None else context.threads
    rss = out.max_rss_kib
    conditions = {
        **context.conditions,
        "threads": threads,
        "timing": "executor_runner's per-execution method->execute() times, in one process",
        "inputs": "all ones (executor_runner's own)",
        "peak_memory": "max RSS of the runner process (toybox time -v)" if rss is not None else "unknown",
    }
    return LatencyProfile(
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(timed.mean()),
        runs=int(timed.size),
        warmup=context.warmup,
        load_ms=_or_nan(out.load_ms),
        peak_memory_mb=_or_nan(rss and rss / 1024),
        size_mb=context.size_mb(),
        threads=threads,
        runtime=RUNTIME_BY_EXTENSION[".pte"],
        runtime_version="unknown",
        first_ms=out.iterations_ms[0],
        p50_ci95_ms=(low, high),
        converged=bool(max(p50 - low, high - p50) <= CI_TARGET * p50),
        conditions=conditions,
    )


def benchmark_model_profile(out: BenchmarkModelOutput, context: ProfileContext) -> LatencyProfile:
    """The profile from benchmark_model's statistics: p50 its median, p90 its p95 and p99 its max (upper
    bounds of the true p90/p99), mean its avg; no interval, since it prints no per-run times.

    Example:
        >>> text = Path("tests/data/adb/benchmark_model_percentiles_assembled.txt").read_text()
        >>> out = parse_benchmark_model(text)
        >>> benchmark_model_profile(out, context).p50_ms  # its median=9112 (us)
        9.112
    """
    timed = out.timed
    if timed is None:
        raise context.unparsable("timing statistics (no 'count=' line)")
    if timed.median_us is None or timed.p95_us is None:
        raise DeviceError(
            f"benchmark_model on {context.where} printed no median for {context.artifact.name} (builds "
            "before its p5/median/p95 output print only avg/min/max); use a current LiteRT benchmark_model."
        )
    first_us = out.first_inference_us if out.first_inference_us is not None else _warmup_first(out)
    threads = out.threads if out.threads is not None else context.threads
    conditions: dict[str, object] = {
        **context.conditions,
        "threads": threads,
        "timing": "benchmark_model's statistics: p50 its median, p90 its p95, p99 its max (upper bounds)",
        "inputs": "random (benchmark_model's own)",
        "peak_memory": "max-RSS growth since the tool started (its memory footprint delta)"
        if out.memory_delta_mb is not None
        else "unknown",
    }
    if out.peak_memory_mb is not None:
        conditions["peak_rss_mb"] = out.peak_memory_mb
    return LatencyProfile(
        p50_ms=timed.median_us / 1e3,
        p90_ms=timed.p95_us / 1e3,
        p99_ms=timed.max_us / 1e3,
        mean_ms=timed.avg_us / 1e3,
        runs=timed.count,
        warmup=out.warmup.count - 1 if out.warmup else context.warmup,
        load_ms=_or_nan(out.init_us and out.init_us / 1e3),
        peak_memory_mb=_or_nan(out.memory_delta_mb),
        size_mb=context.size_mb(),
        threads=threads,
        runtime=RUNTIME_BY_EXTENSION[".tflite"],
        runtime_version="unknown",
        first_ms=None if first_us is None else first_us / 1e3,
        conditions=conditions,
    )


def _warmup_first(out: BenchmarkModelOutput) -> float | None:
    return out.warmup.first_us if out.warmup else None


def _or_nan(value: float | None) -> float:
    """LatencyProfile's float fields carry an unknown figure as NaN."""
    return math.nan if value is None else float(value)
