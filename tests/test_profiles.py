"""Device profiles: every built-in validates, bad files fail with the file and key named, budgets resolve."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from edge_distill.errors import ProfileError
from edge_distill.profiles import (
    KNOWN_TARGETS,
    MEASURED_SOURCE,
    Budget,
    DeviceProfile,
    _index,
    available_profiles,
    load_profile,
    resolve_budget,
)
from edge_distill.profiles_view import profile_detail, profiles_table

BUILTIN_NAMES = [p.name for p in available_profiles()]

# A minimal valid user profile; the bad cases below each change one thing.
VALID = """\
schema = 1
name = "my-board"
aliases = ["mine"]
description = "A test board"
targets = ["onnx", "tflite"]

[cpu]
arch = "arm64"
cores = 4
clock_ghz = 1.5
source = "datasheet"

[memory]
ram_mb = 2048
ram_mb_source = "datasheet"

[budget]
latency_ms = 40
memory_mb = 256
size_mb = 64

[[throughput]]
runtime = "onnxruntime"
precision = "fp32"
gflops = 20.0
reference = "MobileNet V1 1.0 224 float: 57 ms"
source = "my own run"
"""


def write(tmp_path: Path, text: str, name: str = "my-board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def replace(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new)


def test_there_are_builtins() -> None:
    expected = {"raspberry-pi-4", "raspberry-pi-5", "raspberry-pi-zero-2w", "jetson-orin-nano", "pixel-8"}
    expected |= {"galaxy-s24", "iphone-15-pro", "mac-m2", "esp32-s3", "stm32h7", "host"}
    assert expected <= set(BUILTIN_NAMES)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_loads_and_validates(name: str) -> None:
    profile = load_profile(name)
    assert isinstance(profile, DeviceProfile)
    assert profile.name == name == profile.path.stem
    assert profile.targets and set(profile.targets) <= set(KNOWN_TARGETS)
    assert profile.cores > 0 and profile.ram_mb > 0
    assert profile.budget.latency_ms > 0 and profile.budget.memory_mb > 0 and profile.budget.size_mb > 0
    assert profile.budget_reason.strip()
    for figure in ("arch", "cores", "ram_mb"):
        assert profile.sources[figure].strip()
    for alias in profile.aliases:
        assert load_profile(alias) is profile
    json.dumps(profile.as_dict())  # JSON-ready


@pytest.mark.parametrize("name", [n for n in BUILTIN_NAMES if n != "host"])
def test_non_host_profiles_have_sourced_fp32_throughput(name: str) -> None:
    profile = load_profile(name)
    assert not profile.measured
    fp32 = profile.throughput_for("fp32")
    assert fp32 is not None and fp32.gflops > 0
    for entry in profile.throughput:
        assert entry.source.strip() and entry.reference.strip()
    for figure in ("clock_ghz", "storage_gb", "memory_bandwidth_gbs"):
        if getattr(profile, figure) is not None:
            assert profile.sources[figure].strip()


def test_alias_raspberry_pi_is_the_pi_4_with_the_demo_budget() -> None:
    profile = load_profile("raspberry-pi")
    assert profile.name == "raspberry-pi-4"
    assert (profile.budget.latency_ms, profile.budget.memory_mb, profile.budget.size_mb) == (50, 512, 100)
    assert profile.budget.sources["latency_ms"] == "profile raspberry-pi-4 (default budget)"
    assert load_profile("rpi4") is profile
    assert load_profile("Raspberry_Pi") is profile


def test_host_is_measured_on_this_machine() -> None:
    host = load_profile("host")
    assert host.measured and host.throughput == ()
    assert host.throughput_for("fp32") is None
    assert host.cores == (os.cpu_count() or 1)
    assert host.ram_mb == psutil.virtual_memory().total // 2**20
    assert host.storage_gb is not None and host.storage_gb > 0
    assert host.sources["cores"] == host.sources["ram_mb"] == MEASURED_SOURCE


def test_user_profile_by_path(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, VALID, name="anything.toml"))
    assert profile.name == "my-board" and profile.aliases == ("mine",)
    assert profile.sources["ram_mb"] == "datasheet" and profile.sources["cores"] == "datasheet"
    assert (profile.sequence_length, profile.image_size) == (128, 224)
    assert load_profile(str(profile.path)).name == "my-board"


def test_coreml_deployment_target_is_optional_and_read(tmp_path: Path) -> None:
    assert load_profile(write(tmp_path, VALID)).coreml_deployment_target is None
    text = replace("schema = 1", 'schema = 1\ncoreml_deployment_target = "macOS14"')
    profile = load_profile(write(tmp_path, text, name="apple.toml"))
    assert profile.coreml_deployment_target == "macOS14"
    assert profile.as_dict()["coreml_deployment_target"] == "macOS14"
    assert load_profile("iphone-15-pro").coreml_deployment_target == "iOS17"
    assert load_profile("mac-m2").coreml_deployment_target == "macOS13"


def test_did_you_mean() -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("raspbery-pi")
    message = str(info.value)
    assert "did you mean 'raspberry-pi'" in message
    assert "raspberry-pi-5" in message and ".toml" in message


def test_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ProfileError, match="does not exist") as info:
        load_profile(missing)
    assert str(missing) in str(info.value)


def test_malformed_toml_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, replace("cores = 4", "cores = = 4"))
    with pytest.raises(ProfileError, match=r"line \d+, column \d+") as info:
        load_profile(path)
    assert str(path) in str(info.value)


BAD_CASES = {
    "unknown top-level key": (replace("schema = 1", 'schema = 1\ncolour = "red"'), "'colour'", "use one of"),
    "unknown key in a table": (replace("cores = 4", "cores = 4\nturbo = true"), "'cpu.turbo'", "clock_ghz"),
    "missing required key": (replace("cores = 4\n", ""), "'cpu.cores'", "missing"),
    "missing budget": (VALID.split("[budget]")[0], "'budget'", "missing"),
    "wrong type": (replace("cores = 4", 'cores = "four"'), "'cpu.cores'", "expected an integer"),
    "bool is not an integer": (replace("cores = 4", "cores = true"), "'cpu.cores'", "expected an integer"),
    "zero": (replace("ram_mb = 2048", "ram_mb = 0"), "'memory.ram_mb'", "positive"),
    "negative throughput": (replace("gflops = 20.0", "gflops = -1.0"), "'throughput[0].gflops'", "positive"),
    "negative budget": (replace("latency_ms = 40", "latency_ms = -40"), "'budget.latency_ms'", "positive"),
    "figure without a source": (replace('1.5\nsource = "datasheet"', "1.5"), "'cpu.arch'", "no source"),
    "throughput without a source": (
        replace('source = "my own run"\n', ""),
        "'throughput[0].source'",
        "missing",
    ),
    "unknown target": (replace('["onnx", "tflite"]', '["onnx", "tensorrt"]'), "'targets'", "coreml"),
    "unknown precision": (
        replace('precision = "fp32"', 'precision = "int4"'),
        "'throughput[0].precision'",
        "fp16",
    ),
    "no fp32 entry": (replace('precision = "fp32"', 'precision = "int8"'), "'throughput'", "fp32"),
    "unknown arch": (replace('arch = "arm64"', 'arch = "aarch64"'), "'cpu.arch'", "arm64"),
    "schema version": (replace("schema = 1", "schema = 2"), "'schema'", "schema = 1"),
    "bad name": (replace('name = "my-board"', 'name = "My Board"'), "'name'", "lowercase"),
    "unknown coreml deployment target": (
        replace("schema = 1", 'schema = 1\ncoreml_deployment_target = "iOS14"'),
        "'coreml_deployment_target'",
        "iOS16",
    ),
    "coreml deployment target not a string": (
        replace("schema = 1", "schema = 1\ncoreml_deployment_target = 17"),
        "'coreml_deployment_target'",
        "expected a string",
    ),
    "hardware in a measured profile": (
        replace("schema = 1", "schema = 1\nmeasured = true"),
        "'cpu'",
        "remove",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_profile_names_file_and_key(tmp_path: Path, case: str) -> None:
    text, key, hint = BAD_CASES[case]
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert str(path) in message and key in message and hint in message
    assert message.endswith(".") and ". " not in message  # one sentence


def test_duplicate_alias_across_builtins(tmp_path: Path) -> None:
    other = replace('name = "my-board"', 'name = "other-board"')
    files = [(tmp_path / "my-board.toml", VALID), (tmp_path / "other-board.toml", other)]
    with pytest.raises(ProfileError) as info:
        _index(files)
    message = str(info.value)
    assert "other-board.toml" in message and "'aliases'" in message and "'mine'" in message


def test_builtin_file_named_unlike_its_profile(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="'name'"):
        _index([(tmp_path / "wrong.toml", VALID)])


def test_budget_precedence_and_sources() -> None:
    pi = load_profile("raspberry-pi")
    budget = resolve_budget(
        pi, latency_ms=30, config={"latency_ms": 40, "memory_mb": 300}, config_source="run.toml [budget]"
    )
    assert isinstance(budget, Budget)
    assert (budget.latency_ms, budget.memory_mb, budget.size_mb) == (30, 300, 100)
    assert budget.sources == {
        "latency_ms": "command line (--latency-ms)",
        "memory_mb": "run.toml [budget] (memory_mb)",
        "size_mb": "profile raspberry-pi-4 (default budget)",
    }
    assert budget.as_dict()["memory_mb"] == {"value": 300.0, "source": "run.toml [budget] (memory_mb)"}
    assert resolve_budget(pi) == pi.budget


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"latency_ms": 0}, "latency_ms.*command line"),
        ({"size_mb": -1.0}, "size_mb.*command line"),
        ({"config": {"memory_mb": 0}}, "memory_mb.*config file"),
        ({"config": {"latency": 10}}, "unknown budget key 'latency'"),
    ],
)
def test_bad_budget_overrides(kwargs: dict, match: str) -> None:
    with pytest.raises(ProfileError, match=match):
        resolve_budget(load_profile("raspberry-pi"), **kwargs)


def test_throughput_for_rejects_unknown_precision() -> None:
    with pytest.raises(ProfileError, match="fp16"):
        load_profile("raspberry-pi").throughput_for("int4")


def test_profiles_table_and_detail_render() -> None:
    console = Console(record=True, width=200)
    console.print(profiles_table(available_profiles()))
    text = console.export_text()
    assert "raspberry-pi-4" in text and "stm32h7" in text and "measured at run time" in text
    for name in BUILTIN_NAMES:
        console.print(profile_detail(load_profile(name)))
    detail = console.export_text()
    assert "TB: tensorflow/tensorflow lite/g3doc/performance/benchmarks.md" in detail
    assert MEASURED_SOURCE in detail
