"""ADB profiling: the parsers on every sample in tests/data/adb, the exact adb command lines, the error
sentences, and ``AdbDevice.profile`` end to end through a fake ``adb``.

No Android device is used. The fake ``adb`` is a script written into tmp_path that records its argv and
answers with the samples, so these tests exercise the command lines and the parsing, not a real device,
a real adb or a real executor_runner/benchmark_model. tests/data/adb/README.md says where each sample
comes from and which ones were assembled from the tools' format strings rather than captured.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_distill.adb import (
    AdbDevice,
    adb_argv,
    adb_error,
    cleanup_script,
    device_facts_script,
    run_script,
    serial_from_url,
    tool_for,
)
from edge_distill.adb_output import (
    parse_benchmark_model,
    parse_device_facts,
    parse_executor_runner,
    split_exit,
)
from edge_distill.adb_results import tool_failure
from edge_distill.errors import DeviceError

DATA = Path(__file__).parent / "data" / "adb"
SERIAL = "R58M31XABCD"
WORK = "/data/local/tmp/edge-distill"
INPUTS = {"input_ids": np.ones((1, 8), np.int64)}
FACTS_SCRIPT = (
    'echo "model=$(getprop ro.product.model)"; echo "android=$(getprop ro.build.version.release)"; '
    'echo "abi=$(getprop ro.product.cpu.abi)"; echo "cpus=$(nproc)"; '
    'echo "governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null)"'
)
RUNNER_SCRIPT = (
    "T=; /system/bin/time -v true >/dev/null 2>&1 && T='/system/bin/time -v'; "
    "S=$(date '+%m-%d %H:%M:%S.000'); $T /data/local/tmp/edge-distill/executor_runner "
    "--model_path=/data/local/tmp/edge-distill/model.pte --num_executions=8 --print_output=none "
    '--cpu_threads=4 2>&1; echo EDGE_DISTILL_EXIT=$?; logcat -d -v threadtime -T "$S" -s ExecuTorch '
    "2>/dev/null; true"
)


def sample(name: str) -> str:
    return (DATA / name).read_text()


# --- parsers on the samples -----------------------------------------------------------------------------


def test_benchmark_model_mi11_cpu_sample() -> None:
    out = parse_benchmark_model(sample("benchmark_model_yolov5s_mi11_cpu_fp32.txt"))
    assert out.timed is not None and out.warmup is None
    assert (out.timed.count, out.timed.first_us, out.timed.min_us, out.timed.max_us) == (
        50,
        207897,
        206675,
        231957,
    )
    assert (out.timed.avg_us, out.timed.std_us, out.timed.median_us) == (220000, 6795, None)
    assert (out.init_us, out.first_inference_us, out.memory_delta_mb) == (1430, 247583, 140.508)
    assert (out.peak_memory_mb, out.threads, out.error) == (None, None, None)


def test_benchmark_model_mi11_failed_sample() -> None:
    out = parse_benchmark_model(sample("benchmark_model_yolov5s_mi11_nnapi_failed.txt"))
    assert out.timed is None and out.init_us is None and out.threads == 4
    assert out.error == "NN API returned error ANEURALNETWORKS_BAD_DATA at line 1068 while adding operation."


def test_benchmark_model_qemuriscv64_sample_skips_op_profiling_lines() -> None:
    out = parse_benchmark_model(sample("benchmark_model_meta_tflite_qemuriscv64.txt"))
    assert out.warmup is not None and out.timed is not None
    assert (out.warmup.count, out.warmup.first_us, out.warmup.std_us) == (
        1,
        3512391,
        0.0,
    )  # "count=1 curr=.."
    assert (out.timed.count, out.timed.first_us, out.timed.avg_us) == (
        50,
        2990275,
        2.95034e06,
    )  # not the op table's
    assert (out.timed.min_us, out.timed.max_us, out.timed.std_us) == (2727568, 3189954, 109798)
    assert (out.init_us, out.first_inference_us, out.memory_delta_mb, out.threads) == (
        17187,
        3512391,
        46.0859,
        4,
    )


def test_benchmark_model_litert_readme_samples() -> None:
    old = parse_benchmark_model(sample("benchmark_model_litert_readme_op_profiling.txt"))
    assert old.timed is None  # only "Timings (microseconds): count=.." op-profiling lines
    assert (old.init_us, old.first_inference_us) == (38467, None)  # the old summary line
    logcat = parse_benchmark_model(sample("benchmark_model_litert_android_readme_logcat.txt"))
    assert (logcat.init_us, logcat.first_inference_us) == (1007529, 4098)


def test_benchmark_model_percentiles_sample() -> None:
    out = parse_benchmark_model(sample("benchmark_model_percentiles_assembled.txt"))
    assert out.warmup is not None and out.timed is not None
    assert (out.warmup.count, out.warmup.first_us, out.warmup.median_us) == (27, 24512, 9135)
    timed = out.timed
    assert (timed.count, timed.avg_us, timed.p5_us, timed.median_us, timed.p95_us) == (
        108,
        9203.5,
        8931,
        9112,
        9874,
    )
    assert (out.init_us, out.first_inference_us, out.memory_delta_mb, out.threads) == (12345, 24512, 31.25, 4)


def test_executor_runner_logcat_sample() -> None:
    out = parse_executor_runner(sample("executor_runner_logcat_assembled.txt"))
    assert out.iterations_ms == (
        41.503219,
        19.8125,
        18.104167,
        17.90625,
        18.020833,
        17.875,
        18.3125,
        17.96875,
    )
    assert (out.executions, out.load_ms, out.total_ms) == (8, 35.21875, 169.503219)
    assert (out.threads, out.max_rss_kib, out.error) == (4, 61440, None)


def test_executor_runner_ignores_an_earlier_run_in_the_logcat_window() -> None:
    """logcat -T takes the lines since the run's start second: a run just before may show up first."""
    earlier = "".join(
        f"04-10 12:27:00.{i:03d}  4300  4300 I ExecuTorch: Iteration {i} of 10: 99.000000 ms\n"
        for i in range(1, 11)
    )
    out = parse_executor_runner(earlier + sample("executor_runner_logcat_assembled.txt"))
    assert (
        out.iterations_ms
        == parse_executor_runner(sample("executor_runner_logcat_assembled.txt")).iterations_ms
    )


def test_executor_runner_stderr_sample() -> None:
    out = parse_executor_runner(sample("executor_runner_stderr_assembled.txt"))
    assert out.iterations_ms == (36.201172, 17.139893, 16.798828, 16.88208, 16.651123)
    assert (out.executions, out.load_ms, out.total_ms, out.max_rss_kib) == (5, 28.871094, 103.673096, None)


def test_executor_runner_docs_sample_predates_per_iteration_times() -> None:
    out = parse_executor_runner(sample("executor_runner_executorch_docs_mv2.txt"))
    assert (out.iterations_ms, out.executions, out.total_ms, out.load_ms) == ((), 1, 15.013292, None)


def test_executor_runner_failure_samples() -> None:
    missing = parse_executor_runner(sample("executor_runner_missing_operator_assembled.txt"))
    assert (missing.error, missing.iterations_ms, missing.max_rss_kib) == (
        "Missing operator: [3] aten::native_dropout.out",
        (),
        9216,
    )
    killed = parse_executor_runner(sample("executor_runner_killed_assembled.txt"))
    assert (killed.error, killed.max_rss_kib, killed.load_ms) == (None, 2811904, None)


def test_device_facts_and_exit_marker() -> None:
    facts = parse_device_facts(sample("device_facts_assembled.txt"))
    assert facts == {
        "model": "Pixel 8",
        "android": "14",
        "abi": "arm64-v8a",
        "cpus": "9",
        "governor": "sched_pixel",
        "runner": "present",
    }
    text, status = split_exit(sample("executor_runner_missing_operator_assembled.txt"))
    assert status == 6 and "EDGE_DISTILL_EXIT" not in text
    assert split_exit("no marker") == ("no marker", None)


# --- command lines --------------------------------------------------------------------------------------


def test_adb_argv_and_urls() -> None:
    assert adb_argv("adb", SERIAL, ["get-state"]) == ["adb", "-s", SERIAL, "get-state"]
    assert serial_from_url("adb://R58M31XABCD") == SERIAL
    assert serial_from_url("adb://192.168.1.42:5555") == "192.168.1.42:5555"
    for bad in ("adb://", "ssh://pi", "R58M31XABCD", "adb://a/b"):
        with pytest.raises(DeviceError, match="is not an ADB device URL; use adb://SERIAL"):
            serial_from_url(bad)


def test_scripts() -> None:
    assert device_facts_script(None) == FACTS_SCRIPT
    assert device_facts_script("/data/local/tmp/benchmark_model") == (
        FACTS_SCRIPT + "; if [ -x /data/local/tmp/benchmark_model ]; then echo runner=present; "
        "else echo runner=missing; fi"
    )
    runner, model = f"{WORK}/executor_runner", f"{WORK}/model.pte"
    assert run_script("executor_runner", runner, model, warmup=2, runs=5, threads=4) == RUNNER_SCRIPT
    no_threads = run_script("executor_runner", runner, model, warmup=2, runs=5, threads=None)
    assert no_threads == RUNNER_SCRIPT.replace(" --cpu_threads=4", "")
    assert run_script(
        "benchmark_model",
        "/data/local/tmp/benchmark_model",
        f"{WORK}/m.tflite",
        warmup=10,
        runs=50,
        threads=2,
    ) == (
        f"/data/local/tmp/benchmark_model --graph={WORK}/m.tflite --warmup_runs=11 --num_runs=50 "
        "--num_threads=2 2>&1; echo EDGE_DISTILL_EXIT=$?"
    )
    assert cleanup_script([f"{WORK}/my model.pte"]) == f"rm -f '{WORK}/my model.pte'"


def test_scripts_are_valid_shell(tmp_path: Path) -> None:
    """The scripts run under a POSIX sh here (the device's is mksh): the runner gets its flags and the
    exit marker carries its status."""
    runner = tmp_path / "runner"
    runner.write_text('#!/bin/sh\necho "args: $*"\nexit 3\n')
    runner.chmod(0o755)
    script = run_script("executor_runner", str(runner), "/w/m.pte", warmup=0, runs=2, threads=None)
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    text, status = split_exit(done.stdout)
    assert status == 3 and "args: --model_path=/w/m.pte --num_executions=3 --print_output=none" in text
    facts = subprocess.run(["sh", "-c", device_facts_script(str(runner))], capture_output=True, text=True)
    assert parse_device_facts(facts.stdout)["runner"] == "present"


def test_tool_for_names_the_supported_kinds() -> None:
    assert tool_for(Path("m.pte")) == "executor_runner"
    with pytest.raises(DeviceError) as error:
        tool_for(Path("m.onnx"))
    assert str(error.value) == (
        "ADB profiling supports .pte (ExecuTorch executor_runner) and .tflite (LiteRT benchmark_model) "
        "artifacts, not m.onnx; profile it on the host instead."
    )


# --- error sentences ------------------------------------------------------------------------------------

UNAUTHORIZED = (  # transport.cpp's message as `adb` prints it ("error: %s")
    "error: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
    "Try 'adb kill-server' if that seems wrong.\nOtherwise check for a confirmation dialog on your device.\n"
)


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        (
            f"error: device '{SERIAL}' not found\n",
            f"No Android device with serial {SERIAL} is connected (adb: device '{SERIAL}' not found); plug "
            "it in with USB debugging on and check `adb devices`.",
        ),
        (
            "error: no devices/emulators found\n",
            f"No Android device with serial {SERIAL} is connected (adb: no devices/emulators found); plug "
            "it in with USB debugging on and check `adb devices`.",
        ),
        (
            UNAUTHORIZED,
            f"The Android device {SERIAL} has not authorized this computer (adb: device unauthorized); "
            "unlock it and accept the USB debugging prompt, then retry.",
        ),
        (
            "error: device offline\n",
            f"The Android device {SERIAL} is offline (adb: device offline); reconnect it or run "
            "`adb reconnect`, then retry.",
        ),
        (
            "adb: error: failed to copy 'model.pte' to '/data/local/tmp/edge-distill/model.pte': remote "
            "No space left on device\n",
            f"Pushing model.pte on adb://{SERIAL} failed (failed to copy 'model.pte' to "
            "'/data/local/tmp/edge-distill/model.pte': remote No space left on device); check the device "
            f"with `adb -s {SERIAL} shell`.",
        ),
    ],
)
def test_adb_error_sentences(text: str, sentence: str) -> None:
    assert adb_error(SERIAL, "Pushing model.pte", text) == sentence


def test_tool_failure_sentences() -> None:
    where = f"adb://{SERIAL}"
    text, status = split_exit(sample("executor_runner_missing_operator_assembled.txt"))
    assert tool_failure("executor_runner", text, status, artifact="model.pte", where=where) == (
        f"executor_runner failed on model.pte on {where} (exit 6): Missing operator: [3] "
        "aten::native_dropout.out."
    )
    text, status = split_exit(sample("executor_runner_killed_assembled.txt"))
    assert tool_failure("executor_runner", text, status, artifact="model.pte", where=where) == (
        f"model.pte ran out of memory on {where} (killed, exit 9); pick a smaller student or a lower "
        "precision (int8), or close apps on the device."
    )
    oom = "F 00:00:00.1 executorch:executor_runner.cpp:617] In function main(), assert failed (method.ok()): "
    oom += "Loading of method forward failed with status 0x21"
    assert "ran out of memory" in tool_failure("executor_runner", oom, 6, artifact="m.pte", where=where)
    failed = sample("benchmark_model_yolov5s_mi11_nnapi_failed.txt")
    assert tool_failure("benchmark_model", failed, 1, artifact="m.tflite", where=where) == (
        f"benchmark_model failed on m.tflite on {where} (exit 1): NN API returned error "
        "ANEURALNETWORKS_BAD_DATA at line 1068 while adding operation."
    )
    exec_error = (
        "/system/bin/sh: /data/local/tmp/edge-distill/executor_runner: not executable: 32-bit ELF file"
    )
    assert tool_failure("executor_runner", exec_error, 126, artifact="m.pte", where=where) == (
        f"{where} cannot execute executor_runner ({exec_error}); build it for the device's ABI (arm64-v8a) "
        "and pass that."
    )
    flag = "ERROR: unknown command line flag 'print_output'"
    assert tool_failure("executor_runner", flag, 1, artifact="m.pte", where=where) == (
        f"executor_runner on {where} rejected a flag ({flag}); use an executor_runner from ExecuTorch 1.3 "
        "or later (this project pins 1.5.1)."
    )
    assert "ended without an exit status" in tool_failure(
        "benchmark_model", "", None, artifact="m", where=where
    )
    assert (
        tool_failure(
            "executor_runner", sample("executor_runner_stderr_assembled.txt"), 0, artifact="m", where=where
        )
        is None
    )


# --- profile() end to end through a fake adb ------------------------------------------------------------

FAKE_ADB = """#!{python}
import json, pathlib, sys, time
config = json.loads(pathlib.Path({config!r}).read_text())
with open(config["log"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
line = " ".join(sys.argv[1:])
for rule in config["rules"]:
    if rule["match"] in line:
        time.sleep(rule.get("sleep", 0))
        sys.stdout.write(rule.get("stdout", ""))
        sys.stderr.write(rule.get("stderr", ""))
        sys.exit(rule.get("rc", 0))
"""


class FakeAdb:
    """An ``adb`` executable in tmp_path: it logs its argv and answers the first rule whose text occurs
    in its arguments (default: exit 0, no output, as mkdir/push/chmod/rm do)."""

    def __init__(self, folder: Path, rules: list[dict[str, object]]) -> None:
        self.path, self.log = folder / "adb", folder / "adb-calls.jsonl"
        config = folder / "adb-config.json"
        config.write_text(json.dumps({"log": str(self.log), "rules": rules}))
        self.path.write_text(FAKE_ADB.format(python=sys.executable, config=str(config)))
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


def device_rules(run_stdout: str, *, facts: str | None = None) -> list[dict[str, object]]:
    return [
        {"match": "get-state", "stdout": "device\n"},
        {"match": "getprop", "stdout": facts if facts is not None else sample("device_facts_assembled.txt")},
        {"match": "EDGE_DISTILL_EXIT", "stdout": run_stdout},
    ]


@pytest.fixture
def pte(tmp_path: Path) -> Path:
    path = tmp_path / "model.pte"
    path.write_bytes(b"\0" * 2048)
    return path


@pytest.fixture
def local_runner(tmp_path: Path) -> Path:
    path = tmp_path / "executor_runner"
    path.write_bytes(b"\x7fELF")
    return path


def shell(*args: str) -> list[str]:
    return ["-s", SERIAL, *args]


def test_profile_executor_runner_command_lines_and_numbers(
    tmp_path: Path, pte: Path, local_runner: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeAdb(tmp_path, device_rules(sample("executor_runner_logcat_assembled.txt")))
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")  # `adb` is the fake
    device = AdbDevice(f"adb://{SERIAL}", runner_binary=local_runner)
    profile = device.profile(pte, INPUTS, warmup=2, runs=5, threads=4)
    assert fake.calls() == [
        shell("get-state"),
        shell("shell", FACTS_SCRIPT),
        shell("shell", f"mkdir -p {WORK}"),
        shell("push", str(local_runner), f"{WORK}/executor_runner"),
        shell("shell", f"chmod +x {WORK}/executor_runner"),
        shell("push", str(pte), f"{WORK}/model.pte"),
        shell("shell", RUNNER_SCRIPT),
        shell("shell", f"rm -f {WORK}/executor_runner {WORK}/model.pte"),
    ]
    timed = [17.90625, 18.020833, 17.875, 18.3125, 17.96875]  # iterations 4-8: after the first and 2 warmup
    assert (profile.runs, profile.warmup, profile.first_ms, profile.load_ms) == (5, 2, 41.503219, 35.21875)
    assert profile.p50_ms == pytest.approx(np.percentile(timed, 50))
    assert profile.p90_ms == pytest.approx(np.percentile(timed, 90))
    assert profile.p99_ms == pytest.approx(np.percentile(timed, 99))
    assert profile.mean_ms == pytest.approx(np.mean(timed))
    assert profile.p50_ci95_ms == (17.875, 18.3125)  # ranks 1 and 5 of 5: 0.34 ms, within 2% of 17.97
    assert profile.converged is True
    assert (profile.peak_memory_mb, profile.threads, profile.runtime) == (60.0, 4, "executorch")
    assert profile.size_mb == pytest.approx(2048 / 2**20)
    assert profile.conditions["device_model"] == "Pixel 8" and profile.conditions["android_version"] == "14"
    assert profile.conditions["governor"] == "sched_pixel" and profile.conditions["cpu_count"] == 9
    assert profile.conditions["runner"] == str(local_runner)


def test_profile_executor_runner_posix_log_without_time(
    tmp_path: Path, pte: Path, local_runner: Path
) -> None:
    fake = FakeAdb(tmp_path, device_rules(sample("executor_runner_stderr_assembled.txt")))
    device = AdbDevice(f"adb://{SERIAL}", runner_binary=local_runner, adb=str(fake.path))
    profile = device.profile(pte, INPUTS, warmup=1, runs=3)
    assert "--num_executions=5 --print_output=none 2>&1" in fake.calls()[6][-1]  # no --cpu_threads
    assert profile.runs == 3 and profile.p50_ms == pytest.approx(16.798828)
    assert profile.first_ms == 36.201172 and profile.threads == 4  # the runner's own threadpool size
    assert math.isnan(profile.peak_memory_mb) and profile.conditions["peak_memory"] == "unknown"


def test_profile_benchmark_model_on_device_runner(tmp_path: Path) -> None:
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"TFL3")
    remote = "/data/local/tmp/benchmark_model"
    check = f"if [ -x {remote} ]; then echo runner=present; else echo runner=missing; fi"
    fake = FakeAdb(tmp_path, device_rules(sample("benchmark_model_percentiles_assembled.txt")))
    device = AdbDevice(f"adb://{SERIAL}", runner_binary=remote, adb=str(fake.path))
    profile = device.profile(tflite, INPUTS, warmup=10, runs=50, threads=4)
    assert fake.calls() == [
        shell("get-state"),
        shell("shell", f"{FACTS_SCRIPT}; {check}"),
        shell("shell", f"mkdir -p {WORK}"),
        shell("push", str(tflite), f"{WORK}/model.tflite"),
        shell(
            "shell",
            f"{remote} --graph={WORK}/model.tflite --warmup_runs=11 --num_runs=50 --num_threads=4 "
            "2>&1; echo EDGE_DISTILL_EXIT=$?",
        ),
        shell("shell", f"rm -f {WORK}/model.tflite"),
    ]
    assert (profile.p50_ms, profile.p90_ms, profile.p99_ms, profile.mean_ms) == (9.112, 9.874, 12.011, 9.2035)
    assert (profile.runs, profile.warmup, profile.load_ms, profile.first_ms) == (108, 26, 12.345, 24.512)
    assert (profile.peak_memory_mb, profile.threads, profile.runtime) == (31.25, 4, "tflite-runtime")
    assert profile.p50_ci95_ms is None and profile.converged is None


def expect_error(fake: FakeAdb, artifact: Path, runner: Path | str, sentence: str, **kwargs: object) -> None:
    device = AdbDevice(f"adb://{SERIAL}", runner_binary=runner, adb=str(fake.path), **kwargs)
    with pytest.raises(DeviceError) as error:
        device.profile(artifact, INPUTS, warmup=2, runs=5, threads=4)
    assert str(error.value) == sentence


def test_profile_refuses_a_benchmark_model_without_median(tmp_path: Path, local_runner: Path) -> None:
    tflite = tmp_path / "yolov5s.tflite"
    tflite.write_bytes(b"TFL3")
    fake = FakeAdb(
        tmp_path, device_rules(sample("benchmark_model_yolov5s_mi11_cpu_fp32.txt") + "EDGE_DISTILL_EXIT=0\n")
    )
    expect_error(
        fake,
        tflite,
        local_runner,
        f"benchmark_model on adb://{SERIAL} printed no median for yolov5s.tflite (builds before its "
        "p5/median/p95 output print only avg/min/max); use a current LiteRT benchmark_model.",
    )
    assert fake.calls()[-1] == shell("shell", f"rm -f {WORK}/executor_runner {WORK}/yolov5s.tflite")


def test_profile_runner_failure_is_its_error_line_and_cleans_up(tmp_path: Path, local_runner: Path) -> None:
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"TFL3")
    failed = sample("benchmark_model_yolov5s_mi11_nnapi_failed.txt") + "EDGE_DISTILL_EXIT=1\n"
    fake = FakeAdb(tmp_path, device_rules(failed))
    expect_error(
        fake,
        tflite,
        local_runner,
        f"benchmark_model failed on m.tflite on adb://{SERIAL} (exit 1): NN API returned error "
        "ANEURALNETWORKS_BAD_DATA at line 1068 while adding operation.",
    )
    assert fake.calls()[-1] == shell("shell", f"rm -f {WORK}/executor_runner {WORK}/m.tflite")


def test_profile_out_of_memory(tmp_path: Path, pte: Path, local_runner: Path) -> None:
    fake = FakeAdb(tmp_path, device_rules(sample("executor_runner_killed_assembled.txt")))
    expect_error(
        fake,
        pte,
        local_runner,
        f"model.pte ran out of memory on adb://{SERIAL} (killed, exit 9); pick a smaller student or a lower "
        "precision (int8), or close apps on the device.",
    )
    assert fake.calls()[-1][2:] == ["shell", f"rm -f {WORK}/executor_runner {WORK}/model.pte"]


def test_profile_old_executor_runner(tmp_path: Path, pte: Path, local_runner: Path) -> None:
    fake = FakeAdb(
        tmp_path, device_rules(sample("executor_runner_executorch_docs_mv2.txt") + "EDGE_DISTILL_EXIT=0\n")
    )
    expect_error(
        fake,
        pte,
        local_runner,
        f"executor_runner on adb://{SERIAL} printed no per-iteration times (it predates ExecuTorch 1.3) for "
        "model.pte (its last line: '])'); use an executor_runner from ExecuTorch 1.3 or later (this project "
        "pins 1.5.1).",
    )


@pytest.mark.parametrize(
    ("stderr", "start"),
    [
        ("error: device offline\n", f"The Android device {SERIAL} is offline"),
        (UNAUTHORIZED, f"The Android device {SERIAL} has not authorized this computer"),
        (f"error: device '{SERIAL}' not found\n", f"No Android device with serial {SERIAL} is connected"),
    ],
)
def test_profile_unreachable_device(
    tmp_path: Path, pte: Path, local_runner: Path, stderr: str, start: str
) -> None:
    fake = FakeAdb(tmp_path, [{"match": "get-state", "stderr": stderr, "rc": 1}])
    device = AdbDevice(f"adb://{SERIAL}", runner_binary=local_runner, adb=str(fake.path))
    with pytest.raises(DeviceError, match=f"^{start}"):
        device.profile(pte, INPUTS)
    assert fake.calls() == [shell("get-state")]  # nothing pushed, nothing to clean up


def test_profile_push_failure_cleans_up(tmp_path: Path, pte: Path, local_runner: Path) -> None:
    no_space = f"adb: error: failed to copy '{pte}' to '{WORK}/model.pte': remote No space left on device\n"
    rules = [{"match": "model.pte " + WORK, "stderr": no_space, "rc": 1}, *device_rules("")]
    fake = FakeAdb(tmp_path, rules)
    expect_error(
        fake,
        pte,
        local_runner,
        f"Pushing model.pte on adb://{SERIAL} failed (failed to copy '{pte}' to '{WORK}/model.pte': "
        f"remote No space left on device); check the device with `adb -s {SERIAL} shell`.",
    )
    assert fake.calls()[-1] == shell("shell", f"rm -f {WORK}/executor_runner {WORK}/model.pte")


def test_profile_timeout_cleans_up(tmp_path: Path, pte: Path, local_runner: Path) -> None:
    rules = device_rules("")
    rules[-1]["sleep"] = 5
    fake = FakeAdb(tmp_path, rules)
    expect_error(
        fake,
        pte,
        local_runner,
        f"Profiling model.pte on adb://{SERIAL} took over 2 s; lower --runs, or raise timeout_s for a slow "
        "device.",
        timeout_s=2,
    )
    assert fake.calls()[-1] == shell("shell", f"rm -f {WORK}/executor_runner {WORK}/model.pte")


def test_profile_missing_runner_and_adb(tmp_path: Path, pte: Path, local_runner: Path) -> None:
    missing = sample("device_facts_assembled.txt").replace("runner=present", "runner=missing")
    fake = FakeAdb(tmp_path, device_rules("", facts=missing))
    expect_error(
        fake,
        pte,
        "/data/local/tmp/nowhere/executor_runner",
        "The runner binary /data/local/tmp/nowhere/executor_runner is neither a file on this machine nor "
        f"an executable on adb://{SERIAL}; pass the path of executor_runner or benchmark_model built for "
        "Android (arm64-v8a), here or on the device.",
    )
    assert all(call[2] != "push" for call in fake.calls())
    device = AdbDevice(f"adb://{SERIAL}", runner_binary=local_runner, adb=str(tmp_path / "no-adb"))
    with pytest.raises(DeviceError) as error:
        device.profile(pte, INPUTS)
    assert str(error.value) == (
        f"adb ({str(tmp_path / 'no-adb')!r}) is not on PATH; install Android platform-tools and put adb on "
        "PATH, or pass adb=/path/to/adb."
    )


def test_profile_refuses_other_kinds_before_calling_adb(tmp_path: Path, local_runner: Path) -> None:
    fake = FakeAdb(tmp_path, device_rules(""))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    device = AdbDevice(f"adb://{SERIAL}", runner_binary=local_runner, adb=str(fake.path))
    with pytest.raises(DeviceError, match=r"^ADB profiling supports \.pte"):
        device.profile(onnx, INPUTS)
    assert fake.calls() == []
