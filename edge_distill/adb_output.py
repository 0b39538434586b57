"""Pure parsers for what ADB profiling reads back: executor_runner, benchmark_model, the device facts.

The formats are the tools' own format strings, read from their sources:

* ExecuTorch ``examples/portable/executor_runner/executor_runner.cpp`` (1.3 and later; unchanged through
  1.4.1 and main): "Model loaded in %f ms.", "Iteration %u of %u: %f ms", "Model executed successfully
  %u time(s) in %f ms.", "Resetting threadpool with num threads = %d". ``ET_LOG`` writes them to stderr
  as "I 00:00:00.043703 executorch:executor_runner.cpp:379] ..." with the posix PAL and to logcat, tag
  ``ExecuTorch``, with the android PAL (``runtime/platform/default/{posix,android}.cpp``); both shapes
  parse. A failed ``ET_CHECK_MSG`` logs at level F: "In function main(), assert failed (...): ...".
* LiteRT ``tflite/tools/benchmark/benchmark_model.cc`` and tsl ``stats_calculator.h``: one
  "count=N first=F curr=C min=A max=B avg=M std=S[ p5=.. median=.. p95=..]" line per phase (warmup, then
  the timed runs; "count=1 curr=C" when all runs took the same time), "Inference timings in us: Init: ..,
  First inference: .., Warmup (avg): .., Inference (avg): ..", "Memory footprint delta from the start of
  the tool (MB): init=.. overall=.." and, with --report_peak_memory_footprint, "Overall peak memory
  footprint (MB) via periodic monitoring: ..". Current builds prefix lines with "INFO: "; older ones did
  not, and older still printed "Average inference timings in us: Warmup: .., Init: .., Inference: ..".
* toybox ``time -v`` (toys/posix/time.c): "Max RSS (KiB): N".

Example:
    >>> text = Path("tests/data/adb/benchmark_model_yolov5s_mi11_cpu_fp32.txt").read_text()
    >>> out = parse_benchmark_model(text)
    >>> out.timed.avg_us, out.init_us
    (220000.0, 1430.0)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "EXIT_MARKER",
    "BenchmarkModelOutput",
    "ExecutorRunnerOutput",
    "RunStats",
    "parse_benchmark_model",
    "parse_device_facts",
    "parse_executor_runner",
    "split_exit",
]

EXIT_MARKER = "EDGE_DISTILL_EXIT="  # the run script echoes the tool's exit status after it
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"  # ostream prints 2.95034e+06 for big averages

# --- benchmark_model --------------------------------------------------------------------------------

_STAT = re.compile(
    rf"^count=(?P<count>\d+)(?: first=(?P<first>{_NUM}))? curr=(?P<curr>{_NUM})"
    rf"(?: min=(?P<min>{_NUM}) max=(?P<max>{_NUM}) avg=(?P<avg>{_NUM}) std=(?P<std>{_NUM}))?"
    rf"(?:\(all same\))?(?: p5=(?P<p5>{_NUM}) median=(?P<median>{_NUM}) p95=(?P<p95>{_NUM}))?\s*$"
)
_SUMMARY = re.compile(
    rf"Inference timings in us: Init: (?P<init>{_NUM}), First inference: (?P<first>{_NUM}), "
    rf"Warmup \(avg\): (?P<warmup>{_NUM}), Inference \(avg\): (?P<avg>{_NUM})"
)
_OLD_SUMMARY = re.compile(rf"Average inference timings in us: Warmup: {_NUM}, Init: (?P<init>{_NUM}),")
_MEMORY = re.compile(
    rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
    rf"init=(?P<init>{_NUM}) overall=(?P<overall>{_NUM})"
)
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: (?P<peak>{_NUM})")
_TFLITE_THREADS = re.compile(r"#threads used for CPU inference: \[(\d+)\]")
# "INFO: " (current builds), or a logcat prefix ("... I tflite  : ") as the LiteRT READMEs show
_TFLITE_PREFIX = re.compile(r"^(?:(?:INFO|WARN|VERBOSE): |.*?\btflite\s*: )")


@dataclass(frozen=True)
class RunStats:
    """One benchmark_model statistics line, in microseconds; percentiles are None where not printed."""

    count: int
    first_us: float
    min_us: float
    max_us: float
    avg_us: float
    std_us: float
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None


@dataclass(frozen=True)
class BenchmarkModelOutput:
    """What one benchmark_model run printed; None where the line is absent."""

    timed: RunStats | None  # the timed runs (the last statistics line)
    warmup: RunStats | None  # the warmup runs (the line before it)
    init_us: float | None
    first_inference_us: float | None
    memory_delta_mb: float | None  # "overall" max-RSS growth since the tool started
    peak_memory_mb: float | None  # periodic monitoring, only with --report_peak_memory_footprint
    threads: int | None
    error: str | None  # its first ERROR line, or "Benchmarking failed."


def parse_benchmark_model(text: str) -> BenchmarkModelOutput:
    """Read benchmark_model's output (stdout and stderr together).

    Example:
        >>> parse_benchmark_model("count=1 curr=3512391\\n").timed.first_us
        3512391.0
    """
    stats = [_run_stats(m) for m in map(_STAT.match, _tflite_messages(text)) if m]
    summary = _search(_SUMMARY, text)
    old_summary = _search(_OLD_SUMMARY, text)
    memory, peak, threads = _search(_MEMORY, text), _search(_PEAK, text), _search(_TFLITE_THREADS, text)
    init = summary or old_summary
    return BenchmarkModelOutput(
        timed=stats[-1] if stats else None,
        warmup=stats[-2] if len(stats) > 1 else None,
        init_us=float(init["init"]) if init else None,
        first_inference_us=float(summary["first"]) if summary else None,
        memory_delta_mb=float(memory["overall"]) if memory else None,
        peak_memory_mb=float(peak["peak"]) if peak else None,
        threads=int(threads[1]) if threads else None,
        error=_tflite_error(text),
    )


def _tflite_messages(text: str) -> Iterator[str]:
    for line in text.splitlines():
        yield _TFLITE_PREFIX.sub("", line.strip(), count=1)


def _run_stats(match: re.Match[str]) -> RunStats:
    curr = float(match["curr"])
    if match["min"] is None:  # "count=N curr=C": every run took C
        values = {"first_us": curr, "min_us": curr, "max_us": curr, "avg_us": curr, "std_us": 0.0}
    else:
        names = ("first", "min", "max", "avg", "std")
        values = {f"{name}_us": float(match[name] or curr) for name in names}
    percentiles = {f"{name}_us": _opt_float(match[name]) for name in ("p5", "median", "p95")}
    return RunStats(count=int(match["count"]), **values, **percentiles)


def _tflite_error(text: str) -> str | None:
    failed = None
    for line in (raw.strip() for raw in text.splitlines()):
        message = re.sub(r"^(?:ERROR|FATAL): ", "", line)
        if message == "Benchmarking failed.":
            failed = message
        elif message != line and message:
            return message
    return failed


# --- executor_runner --------------------------------------------------------------------------------

_ET_POSIX = re.compile(r"^(?P<level>[DIEF]) \d+:\d\d:\d\d\.\d+ executorch:[^\]]*\] ?(?P<msg>.*)$")
_ET_LOGCAT = re.compile(  # threadtime ("04-10 12:27:01.120  4321  4321 I ExecuTorch: ...") or brief
    r"^(?:\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+)?(?P<level>[VDIWEF])[ /]ExecuTorch\s*"
    r"(?:\(\s*\d+\))?\s*: ?(?P<msg>.*)$"
)
_ITERATION = re.compile(rf"^Iteration (\d+) of (\d+): ({_NUM}) ms$")
_LOADED = re.compile(rf"^Model loaded in ({_NUM}) ms\.$")
_EXECUTED = re.compile(rf"^Model executed successfully (\d+) time\(s\) in ({_NUM}) ms\.$")
_ET_THREADS = re.compile(r"^Resetting threadpool with num threads = (-?\d+)$")
_MAX_RSS = re.compile(r"^Max RSS \(KiB\): (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class ExecutorRunnerOutput:
    """What one executor_runner run printed; None where the line is absent."""

    iterations_ms: tuple[float, ...]  # per-execution method->execute() times, by iteration number
    executions: int | None  # the N of "Iteration i of N" / "executed successfully N time(s)"
    load_ms: float | None  # program + method load
    total_ms: float | None  # the sum over all executions
    threads: int | None  # the threadpool size it set
    max_rss_kib: int | None  # toybox time -v, when the run was wrapped in it
    error: str | None  # its first E-level log line, else its F-level (failed check) line


def parse_executor_runner(text: str) -> ExecutorRunnerOutput:
    """Read executor_runner's log lines (stderr with the posix PAL, logcat with the android PAL).

    Example:
        >>> out = parse_executor_runner(
        ...     "I 00:00:00.1 executorch:executor_runner.cpp:781] Iteration 1 of 1: 2.5 ms\\n")
        >>> out.iterations_ms
        (2.5,)
    """
    iterations: dict[int, float] = {}
    found: dict[str, re.Match[str]] = {}
    errors: dict[str, str] = {}
    for level, message in _et_messages(text):
        if match := _ITERATION.match(message):
            if "iteration" in found and found["iteration"][2] != match[2]:
                iterations = {}  # logcat since the run's start second may hold an earlier run's lines
            iterations[int(match[1])] = float(match[3])  # a later line for the same iteration wins
            found["iteration"] = match
        for key, pattern in (("load", _LOADED), ("total", _EXECUTED), ("threads", _ET_THREADS)):
            if match := pattern.match(message):
                found[key] = match
        if level in "EF" and message:
            errors.setdefault(level, message)
    rss = _MAX_RSS.search(text)
    total = found.get("total")
    executions = found["iteration"][2] if "iteration" in found else (total[1] if total else None)
    return ExecutorRunnerOutput(
        iterations_ms=tuple(iterations[i] for i in sorted(iterations)),
        executions=int(executions) if executions is not None else None,
        load_ms=float(found["load"][1]) if "load" in found else None,
        total_ms=float(total[2]) if total else None,
        threads=int(found["threads"][1]) if "threads" in found else None,
        max_rss_kib=int(rss[1]) if rss else None,
        error=errors.get("E") or errors.get("F"),
    )


def _et_messages(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        match = _ET_POSIX.match(line.strip()) or _ET_LOGCAT.match(line.strip())
        if match:
            yield match["level"], match["msg"].strip()


# --- the device facts and the exit marker -----------------------------------------------------------


def parse_device_facts(text: str) -> dict[str, str | None]:
    """``key=value`` lines (see ``adb.device_facts_script``) to a dict; an empty value is None.

    Example:
        >>> parse_device_facts("model=Pixel 8\\ngovernor=\\n")
        {'model': 'Pixel 8', 'governor': None}
    """
    facts: dict[str, str | None] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.isidentifier():
            facts[key] = value.strip() or None
    return facts


def split_exit(text: str) -> tuple[str, int | None]:
    """The output without the exit marker line, and the exit status it carries (None if absent).

    Example:
        >>> split_exit("ok\\nEDGE_DISTILL_EXIT=137\\n")
        ('ok', 137)
    """
    kept, status = [], None
    for line in text.splitlines():
        if line.strip().startswith(EXIT_MARKER) and line.strip()[len(EXIT_MARKER) :].isdigit():
            status = int(line.strip()[len(EXIT_MARKER) :])
        else:
            kept.append(line)
    return "\n".join(kept), status


def _search(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = list(pattern.finditer(text))
    return matches[-1] if matches else None  # the last report wins (a log may hold earlier runs)


def _opt_float(value: str | None) -> float | None:
    return None if value is None else float(value)
