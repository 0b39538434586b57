"""Device profiles: what a device is, how fast it runs a reference workload, and its default budget.

Profiles are data: one TOML file per device (``profiles/*.toml``, installed as
``edge_distill.builtin_profiles``) or a user's own file given by path. Every hardware figure carries a
source, unknown keys and wrong types are errors naming the file and the key, and nothing is executed.

Example:
    >>> pi = load_profile("raspberry-pi")
    >>> pi.name, pi.budget.latency_ms
    ('raspberry-pi-4', 50.0)
    >>> resolve_budget(pi, latency_ms=30).sources["latency_ms"]
    'command line (--latency-ms)'
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import math
import os
import platform
import re
import shutil
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from edge_distill.errors import ProfileError

SCHEMA_VERSION = 1
# Kept here rather than read from the targets registry so that loading a profile imports no backend.
KNOWN_TARGETS = ("onnx", "executorch", "executorch-coreml", "tflite", "coreml")
PRECISIONS = ("fp32", "fp16", "int8")
ARCHES = ("arm64", "armv7", "armv7e-m", "armv8-m", "riscv32", "riscv64", "x86_64", "xtensa")
MEASURED_SOURCE = "measured on this host"


def latency_where(source: str | None, device: str | None, profile: str) -> str:
    """Where a reported latency comes from, as the console says it ("measured on this host", ...)."""
    if source == "measured-host":
        return MEASURED_SOURCE
    if source == "measured-device":
        return f"measured on {device}"
    return f"predicted on {profile}"


BUDGET_FIELDS = ("latency_ms", "memory_mb", "size_mb")
# Floors a student must stay above: accuracy retained from the teacher, and (phones) the share of the
# graph's ops a target runs on the accelerator, where the target reports it. Both are fractions in (0, 1].
FLOOR_FIELDS = ("min_retention", "accelerator_share")
DEFAULT_MIN_RETENTION = 0.95
FIGURES = ("arch", "cores", "clock_ghz", "ram_mb", "storage_gb", "memory_bandwidth_gbs")  # hardware fields
# coremltools' ``ct.target`` names that yield an ML Program (iOS15/macOS12 and later), kept here so that
# loading a profile never imports coremltools; tests check each one against ``ct.target``.
COREML_DEPLOYMENT_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "iOS26")
COREML_DEPLOYMENT_TARGETS += ("macOS12", "macOS13", "macOS14", "macOS15", "macOS26")

# Table -> {key: (kind, required)}; "" is the top level. Every key of a hardware table needs a source.
_SPEC: dict[str, dict[str, tuple[str, bool]]] = {
    "": {"schema": ("int", True), "name": ("str", True), "description": ("str", True)}
    | {"aliases": ("list", False), "targets": ("list", True), "measured": ("bool", False)}
    | {"coreml_deployment_target": ("str", False)},
    "cpu": {"arch": ("str", True), "cores": ("int", True), "clock_ghz": ("float", False)},
    "memory": {"ram_mb": ("int", True), "bandwidth_gbs": ("float", False)},
    "storage": {"storage_gb": ("float", True)},
    "budget": {k: ("float", True) for k in BUDGET_FIELDS}
    | {"reason": ("str", False)}
    | {k: ("float", False) for k in FLOOR_FIELDS},
    "inputs": {"sequence_length": ("int", False), "image_size": ("int", False)},
    "throughput": {"runtime": ("str", True), "precision": ("str", True), "threads": ("int", False)}
    | {"gflops": ("float", True), "reference": ("str", True), "source": ("str", True)},
}
_CHOICES = {"cpu.arch": ARCHES, "precision": PRECISIONS}  # string keys limited to known values
_CHOICES["coreml_deployment_target"] = COREML_DEPLOYMENT_TARGETS
_HARDWARE = ("cpu", "memory", "storage")
_FIELD_NAMES = {"bandwidth_gbs": "memory_bandwidth_gbs"}  # TOML key -> DeviceProfile field
_KIND_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
_KIND_WORDS["list"] = "a list of strings"
_EXAMPLES = {"int": "4", "float": "1.5", "str": '"text"', "bool": "true", "list": '["a", "b"]'}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class Throughput:
    """Effective speed of one runtime at one precision on a reference workload (GFLOPS = FLOPs / latency)."""

    runtime: str
    precision: str
    gflops: float
    threads: int | None
    reference: str
    source: str


@dataclass(frozen=True)
class Budget:
    """What a student must meet, each value with where it came from (command line, config, profile).

    Example:
        >>> Budget(50.0, 512.0, 100.0, dict.fromkeys(BUDGET_FIELDS, "profile")).as_dict()["size_mb"]
        {'value': 100.0, 'source': 'profile'}
    """

    latency_ms: float  # p90 at batch 1
    memory_mb: float  # runtime peak memory
    size_mb: float  # artifact size on disk
    sources: Mapping[str, str] = field(hash=False)
    min_retention: float = DEFAULT_MIN_RETENTION  # student metric / teacher metric must reach this
    accelerator_share: float | None = None  # share of ops on the accelerator, where a target reports it

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-ready ``{field: {"value": ..., "source": ...}}``."""
        default = {"min_retention": f"default ({DEFAULT_MIN_RETENTION:g})", "accelerator_share": "not set"}
        return {
            k: {"value": getattr(self, k), "source": self.sources.get(k, default.get(k))}
            for k in (*BUDGET_FIELDS, *FLOOR_FIELDS)
        }


@dataclass(frozen=True)
class DeviceProfile:
    """One device: sourced hardware figures, effective throughput, targets, default budget, input shapes.

    Example:
        >>> load_profile("rpi4").throughput_for("fp32").runtime
        'tflite-xnnpack'
    """

    name: str
    description: str
    aliases: tuple[str, ...]
    path: Path
    arch: str
    cores: int
    clock_ghz: float | None
    ram_mb: int
    storage_gb: float | None
    memory_bandwidth_gbs: float | None
    throughput: tuple[Throughput, ...]
    targets: tuple[str, ...]
    budget: Budget
    sequence_length: int
    image_size: int
    measured: bool  # True for host: figures read from this machine, throughput measured at run time
    sources: Mapping[str, str] = field(hash=False)  # field name -> source text
    budget_reason: str = ""
    coreml_deployment_target: str | None = None  # a ct.target name, e.g. "iOS17"; None: the target's default

    def throughput_for(self, precision: str = "fp32") -> Throughput | None:
        """The first entry at ``precision`` (profiles list the most representative CPU entry first)."""
        if precision not in PRECISIONS:
            raise ProfileError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
        return next((t for t in self.throughput if t.precision == precision), None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict; every hardware figure is ``{"value": ..., "source": ...}``."""
        keys = ("name", "description", "measured", "budget_reason", "coreml_deployment_target")
        plain = {k: getattr(self, k) for k in keys}
        return plain | {
            "aliases": list(self.aliases),
            "path": str(self.path),
            "hardware": {f: {"value": getattr(self, f), "source": self.sources.get(f)} for f in FIGURES},
            "throughput": [asdict(t) for t in self.throughput],
            "targets": list(self.targets),
            "budget": self.budget.as_dict(),
            "inputs": {"sequence_length": self.sequence_length, "image_size": self.image_size},
        }


class _Checker:
    """Validates one parsed file; every failure is one sentence naming the file, the key and the fix."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str, fix: str) -> ProfileError:
        return ProfileError(f"Profile {self.path}: key '{key}' {problem}; {fix}.")

    def section(self, table: Any, name: str, allowed: Iterable[str] = ()) -> dict[str, Any]:
        """Check ``table`` (the ``name`` table, or an entry of it) and return its typed values."""
        where = f"{name}." if name else ""
        if table is None:
            raise self.fail(name, "is missing", f"add a [{name}] table")
        if not isinstance(table, dict):
            raise self.fail(name, f"expected a table but got {table!r}", f"write it as a [{name}] table")
        spec = _SPEC[name.split("[")[0]]
        allowed = sorted({*spec, *allowed})
        for key in table:
            if key not in allowed:
                raise self.fail(f"{where}{key}", "is not a known key", f"use one of: {', '.join(allowed)}")
        for key, (kind, required) in spec.items():
            if required and key not in table:
                raise self.fail(f"{where}{key}", "is missing", f"add {key} = {_EXAMPLES[kind]}")
        return {k: self.typed(f"{where}{k}", table[k], kind) for k, (kind, _) in spec.items() if k in table}

    def typed(self, key: str, value: Any, kind: str) -> Any:
        """``value`` checked against ``kind``; numbers must be positive, strings non-empty."""
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "list": isinstance(value, list) and all(isinstance(v, str) for v in value),
        }[kind]
        if not ok:
            fix = f"write it like {key.rsplit('.', 1)[-1]} = {_EXAMPLES[kind]}"
            raise self.fail(key, f"expected {_KIND_WORDS[kind]} but got {value!r}", fix)
        if kind in ("int", "float") and not (math.isfinite(value) and value > 0):
            raise self.fail(key, f"must be a positive number but is {value!r}", "use a value greater than 0")
        if kind == "str" and not value.strip():
            raise self.fail(key, "is empty", "write a non-empty string")
        choices = _CHOICES.get(key, _CHOICES.get(key.rsplit(".", 1)[-1], ()))
        if choices and value not in choices:
            raise self.fail(key, f"is {value!r}", f"use one of {', '.join(choices)}")
        return float(value) if kind == "float" else value


def _hardware(check: _Checker, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Figures of [cpu], [memory], [storage] and their sources (``<key>_source`` wins over ``source``)."""
    values, sources = {}, {}
    for name in _HARDWARE:
        if name not in data and name == "storage":  # optional: most devices publish no fixed capacity
            continue
        table = data.get(name)
        source_keys = [*(f"{k}_source" for k in _SPEC[name]), "source"]
        for key, value in check.section(table, name, source_keys).items():
            source_key = f"{key}_source" if f"{key}_source" in table else "source"
            if source_key not in table:
                fix = f'add {key}_source = "KEY: where it comes from" (or one source = "..." for [{name}])'
                raise check.fail(f"{name}.{key}", "has no source", fix)
            source = check.typed(f"{name}.{source_key}", table[source_key], "str")
            values[_FIELD_NAMES.get(key, key)], sources[_FIELD_NAMES.get(key, key)] = value, source
    return values, sources


def _throughput(check: _Checker, data: Mapping[str, Any], measured: bool) -> tuple[Throughput, ...]:
    """The ``[[throughput]]`` entries; a profile that is not measured needs an fp32 one."""
    entries = data.get("throughput", [])
    if not isinstance(entries, list):
        raise check.fail("throughput", "expected an array of tables", "write each entry as [[throughput]]")
    result = tuple(
        Throughput(**{"threads": None} | check.section(e, f"throughput[{i}]")) for i, e in enumerate(entries)
    )
    if not measured and not any(t.precision == "fp32" for t in result):
        raise check.fail("throughput", "has no fp32 entry", 'add a [[throughput]] with precision = "fp32"')
    return result


def _identity(check: _Checker, data: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level keys: schema, name, description, aliases, targets, measured, coreml_deployment_target."""
    top = {"aliases": [], "measured": False} | check.section(data, "", [k for k in _SPEC if k])
    if top["schema"] != SCHEMA_VERSION:
        raise check.fail("schema", f"is {top['schema']}", f"this version reads schema = {SCHEMA_VERSION}")
    for key, names in (("name", [top["name"]]), ("aliases", top["aliases"])):
        for name in names:
            if not _NAME_RE.match(name):
                raise check.fail(key, f"has {name!r}", "use lowercase letters, digits, '.', '_' and '-'")
    for target in top["targets"]:
        if target not in KNOWN_TARGETS:
            raise check.fail("targets", f"has unknown target {target!r}", f"use {', '.join(KNOWN_TARGETS)}")
    if not top["targets"] or len(set(top["targets"])) != len(top["targets"]):
        raise check.fail("targets", "is empty or repeats a name", "list each target once, best first")
    return top


def _measured_figures(check: _Checker, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Hardware figures read from this machine, for a ``measured = true`` profile."""
    for key in (*_HARDWARE, "throughput"):
        if key in data:
            raise check.fail(key, "is set in a measured profile", "remove it: it is read from this machine")
    machine = platform.machine().lower()
    values = {
        # The shipped profiles say "arm64" (macOS's name) for what Linux calls "aarch64".
        "arch": {"aarch64": "arm64", "amd64": "x86_64"}.get(machine, machine),
        "cores": os.cpu_count() or 1,
        "ram_mb": psutil.virtual_memory().total // 2**20,
        "storage_gb": round(shutil.disk_usage(Path.cwd()).total / 1e9, 1),
    }
    return values, dict.fromkeys(values, MEASURED_SOURCE)


def _from_data(path: Path, data: Mapping[str, Any]) -> DeviceProfile:
    """Validate a parsed TOML document and build the profile."""
    check = _Checker(path)
    top = _identity(check, data)
    values, sources = (_measured_figures if top["measured"] else _hardware)(check, data)
    budget = check.section(data.get("budget"), "budget")
    reason = budget.pop("reason", "")
    for key in FLOOR_FIELDS:
        if key in budget and budget[key] > 1:
            raise check.fail(f"budget.{key}", f"is {budget[key]!r}", "give a fraction between 0 and 1")
    inputs = {"sequence_length": 128, "image_size": 224} | check.section(data.get("inputs", {}), "inputs")
    return DeviceProfile(
        **dict.fromkeys(FIGURES) | values,
        **inputs,
        name=top["name"],
        description=top["description"],
        aliases=tuple(top["aliases"]),
        path=path,
        throughput=_throughput(check, data, top["measured"]),
        targets=tuple(top["targets"]),
        budget=Budget(**budget, sources=dict.fromkeys(budget, f"profile {top['name']} (default budget)")),
        measured=top["measured"],
        sources=sources,
        budget_reason=reason,
        coreml_deployment_target=top.get("coreml_deployment_target"),
    )


def _from_text(path: Path, text: str) -> DeviceProfile:
    """Parse TOML text (never executed) and validate it."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message carries "(at line L, column C)"
        raise ProfileError(f"Profile {path} is not valid TOML: {exc}; fix the syntax there.") from None
    return _from_data(path, data)


def _builtin_files() -> list[tuple[Path, str]]:
    """(path, text) of each shipped profile."""
    try:
        root = importlib.resources.files("edge_distill.builtin_profiles")
    except ModuleNotFoundError:  # a source checkout on PYTHONPATH, not pip-installed: read the folder
        root = Path(__file__).resolve().parent.parent / "profiles"
    files = sorted((f for f in root.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
    return [(Path(str(f)), f.read_text(encoding="utf-8")) for f in files]


def _index(files: Iterable[tuple[Path, str]]) -> dict[str, DeviceProfile]:
    """Profiles by name; a name or alias claimed twice, or a file named unlike its profile, is an error."""
    profiles: dict[str, DeviceProfile] = {}
    owners: dict[str, Path] = {}
    for path, text in files:
        profile = _from_text(path, text)
        if profile.name != path.stem:
            raise _Checker(path).fail("name", f"is {profile.name!r}", f"set name = {path.stem!r}")
        for key in (profile.name, *profile.aliases):
            if key in owners:
                raise _Checker(path).fail("aliases", f"repeats {key!r} of {owners[key]}", "rename one")
            owners[key] = path
        profiles[profile.name] = profile
    return profiles


@functools.cache
def _builtins() -> dict[str, DeviceProfile]:
    return _index(_builtin_files())


def _lookup() -> dict[str, str]:
    """Name or alias -> profile name."""
    return {key: p.name for p in _builtins().values() for key in (p.name, *p.aliases)}


def available_profiles() -> list[DeviceProfile]:
    """The built-in profiles, sorted by name.

    Example:
        >>> "raspberry-pi-4" in [p.name for p in available_profiles()]
        True
    """
    return sorted(_builtins().values(), key=lambda p: p.name)


def _load_path(path: Path) -> DeviceProfile:
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise ProfileError(f"Profile file {path} {problem}; give a .toml file's path or a built-in name.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"Profile file {path} cannot be read ({exc}); check its permissions.") from None
    return _from_text(path, text)


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A built-in profile by name or alias, or a user's profile from a ``.toml`` path.

    Example:
        >>> load_profile("raspberry-pi").name
        'raspberry-pi-4'
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or os.sep in text:
        return _load_path(Path(name_or_path))
    lookup = _lookup()
    key = text.strip().lower().replace("_", "-")
    if key in lookup:
        return _builtins()[lookup[key]]
    close = difflib.get_close_matches(key, list(lookup), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    names = ", ".join(sorted(_builtins()))
    raise ProfileError(f"Unknown profile {text!r}{hint}; use one of {names} (or an alias), or a .toml path.")


def _positive(value: Any, source: str, key: str) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key in FLOOR_FIELDS:
        if not (number and math.isfinite(value) and 0 < value <= 1):
            raise ProfileError(f"Budget {key} from {source} is {value!r}; give a fraction between 0 and 1.")
        return float(value)
    if not (number and math.isfinite(value) and value > 0):
        unit = "milliseconds" if key == "latency_ms" else "megabytes"
        raise ProfileError(f"Budget {key} from {source} is {value!r}; give a positive number of {unit}.")
    return float(value)


def resolve_budget(
    profile: DeviceProfile,
    *,
    latency_ms: float | None = None,
    memory_mb: float | None = None,
    size_mb: float | None = None,
    min_retention: float | None = None,
    accelerator_share: float | None = None,
    config: Mapping[str, float] | None = None,
    config_source: str = "config file",
) -> Budget:
    """The budget by precedence command line > config mapping > profile default, each with its source.

    Example:
        >>> b = resolve_budget(load_profile("rpi4"), memory_mb=256, config={"latency_ms": 40})
        >>> b.latency_ms, b.sources["latency_ms"], b.sources["size_mb"]
        (40.0, 'config file (latency_ms)', 'profile raspberry-pi-4 (default budget)')
    """
    config = dict(config or {})
    keys = (*BUDGET_FIELDS, *FLOOR_FIELDS)
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise ProfileError(f"{config_source}: unknown budget key {unknown[0]!r}; use {', '.join(keys)}.")
    cli = {"latency_ms": latency_ms, "memory_mb": memory_mb, "size_mb": size_mb}
    cli |= {"min_retention": min_retention, "accelerator_share": accelerator_share}
    values, sources = {}, {}
    for key in keys:
        if cli[key] is not None:
            value, source = cli[key], f"command line (--{key.replace('_', '-')})"
        elif config.get(key) is not None:
            value, source = config[key], f"{config_source} ({key})"
        elif key in profile.budget.sources:
            value, source = getattr(profile.budget, key), profile.budget.sources[key]
        else:  # a floor the profile leaves to its default
            continue
        values[key], sources[key] = _positive(value, source, key), source
    return Budget(**values, sources=sources)
