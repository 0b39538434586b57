"""Profile one artifact on a device, compare it with the prediction, and calibrate the predictor with it.

An artifact is a bundle folder made by ``edge-distill export`` (``artifacts/onnx-fp32/``: the model,
``inputs.npz`` and ``metadata.json`` with the model's cost) or a bare model file with ``--inputs``. A
bundle's measurement is stored in the calibration file, so the next prediction for that device, target and
precision rests on it; a bare file is timed but cannot calibrate (its FLOPs and bytes are not known).

Example:
    >>> result = profile(Path("runs/x/artifacts/onnx-fp32"), open_device("local"), profile=None)
    >>> result["latency_source"], result["latency_ms"]["p50"] > 0
    ('measured-host', True)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_distill.devices import Device, HostDevice, device_key, device_source
from edge_distill.errors import DeviceError
from edge_distill.predictor import CalibrationStore, Features, Point, Predictor, prior_for
from edge_distill.profiles import DeviceProfile
from edge_distill.targets.runner import LatencyProfile

TARGET_BY_EXTENSION = {".onnx": "onnx", ".pte": "executorch", ".tflite": "tflite", ".mlpackage": "coreml"}


@dataclass(frozen=True)
class Artifact:
    """What is profiled: the model file, its inputs, and (for a bundle) its target, precision and cost."""

    path: Path
    inputs: dict[str, np.ndarray]
    target: str
    precision: str
    features: Features | None


def resolve_artifact(path: Path, inputs: Path | None = None) -> Artifact:
    """A bundle folder, a model file inside one, or a bare model file with an ``inputs`` .npz."""
    path = Path(path)
    if not path.exists():
        raise DeviceError(f"Artifact {path} does not exist; pass a model file or a bundle folder.")
    bundle = path if (path / "metadata.json").is_file() else None
    if bundle is None and (path.parent / "metadata.json").is_file():
        bundle = path.parent
    meta = json.loads((bundle / "metadata.json").read_text()) if bundle else {}
    model = bundle / meta["file"] if bundle and path.is_dir() else path
    target = meta.get("target") or TARGET_BY_EXTENSION.get(model.suffix)
    if target is None:
        kinds = ", ".join(sorted(TARGET_BY_EXTENSION))
        raise DeviceError(
            f"{model.name} is not a model file this tool profiles ({kinds}), nor a bundle folder."
        )
    npz = inputs or (bundle / "inputs.npz" if bundle else None)
    if npz is None or not Path(npz).is_file():
        raise DeviceError(
            f"No inputs for {model.name}; pass --inputs FILE.npz (one array per model input) or profile a "
            "bundle folder made by `edge-distill export`."
        )
    with np.load(npz, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    cost = meta.get("cost")
    features = Features(**cost) if cost else None
    return Artifact(model, arrays, target, meta.get("precision", "fp32"), features)


def profile(
    path: Path,
    device: Device,
    *,
    profile: DeviceProfile | None,
    inputs: Path | None = None,
    warmup: int = 10,
    runs: int = 50,
    store: CalibrationStore | None = None,
) -> dict[str, Any]:
    """Time ``path`` on ``device``, predict it first, then calibrate the predictor with the measurement.

    Threads: the profile's cores; without a profile this host's CPU count, or the runner's default on a
    device (its CPU count, recorded in the result).
    """
    artifact = resolve_artifact(path, inputs)
    threads = profile.cores if profile else (os.cpu_count() if isinstance(device, HostDevice) else None)
    predictor = make_predictor(device, artifact, profile, threads, store)
    predicted = predictor.predict(artifact.features) if artifact.features else None
    timing = device.profile(artifact.path, artifact.inputs, warmup=warmup, runs=runs, threads=threads)
    if artifact.features is not None:
        predictor.observe(make_point(predictor, artifact, timing, device_source(device), profile))
    return {
        "artifact": str(artifact.path),
        "device": device.name,
        "target": artifact.target,
        "precision": artifact.precision,
        **measured_fields(timing, device_source(device)),
        "prediction": prediction_fields(predicted, timing) if predicted else None,
        "calibration": {
            "stored": artifact.features is not None,
            "file": str(predictor.store.path) if predictor.store else None,
            "points": len(predictor.points()),
            "key": predictor.device,
        },
        "budget": budget_fields(timing, profile) if profile else None,
    }


def make_predictor(
    device: Device,
    artifact: Artifact,
    profile: DeviceProfile | None,
    threads: int | None,
    store: CalibrationStore | None,
) -> Predictor:
    from edge_distill.profiles import load_profile

    key = calibration_key(device_key(device), threads)
    prior = prior_for(profile or load_profile("host"), artifact.precision)
    return Predictor(key, artifact.target, artifact.precision, prior, store or CalibrationStore.default())


def calibration_key(device: str, threads: int | None) -> str:
    """Measurements calibrate one device at one thread count."""
    return f"{device}|{threads if threads is not None else 'default'} threads"


def make_point(
    predictor: Predictor,
    artifact: Artifact,
    timing: LatencyProfile,
    source: str,
    profile: DeviceProfile | None,
) -> Point:
    assert artifact.features is not None
    return Point(
        device=predictor.device, target=predictor.target, precision=predictor.precision,
        features=artifact.features, p50_ms=timing.p50_ms, p90_ms=timing.p90_ms,
        peak_memory_mb=timing.peak_memory_mb, source=source, runtime_version=timing.runtime_version,
        threads=timing.threads, label=artifact.path.parent.name, profile=profile.name if profile else "",
    )  # fmt: skip


def measured_fields(timing: LatencyProfile, source: str) -> dict[str, Any]:
    low, high = timing.p50_ci95_ms or (None, None)
    return {
        "latency_source": source,
        "latency_ms": {
            "p50": round(timing.p50_ms, 3),
            "p90": round(timing.p90_ms, 3),
            "p99": round(timing.p99_ms, 3),
            "mean": round(timing.mean_ms, 3),
        },
        "p50_ci95_ms": [round(low, 3), round(high, 3)] if low is not None else None,
        "converged": timing.converged,
        "runs": timing.runs,
        "warmup": timing.warmup,
        "load_ms": known(timing.load_ms, 1),
        "first_ms": known(timing.first_ms, 3),
        "peak_memory_mb": known(timing.peak_memory_mb, 1),
        "size_mb": round(timing.size_mb, 2),
        "threads": timing.threads,
        "runtime": timing.runtime,
        "runtime_version": timing.runtime_version,
        "conditions": timing.conditions,
    }


def prediction_fields(predicted: Any, timing: LatencyProfile) -> dict[str, Any]:
    """What was predicted before this measurement, and how far off it was."""
    return {
        **predicted.as_dict(),
        "p50_error": round(predicted.p50_ms / timing.p50_ms - 1, 4) if timing.p50_ms > 0 else None,
        "memory_error": (
            round(predicted.memory_mb / timing.peak_memory_mb - 1, 4) if timing.peak_memory_mb > 0 else None
        ),  # NaN > 0 is False: no error against a figure the device did not report
    }


def budget_fields(timing: LatencyProfile, profile: DeviceProfile) -> dict[str, Any]:
    budget = profile.budget
    checks = {
        "latency_ms": (timing.p90_ms, budget.latency_ms),
        "memory_mb": (timing.peak_memory_mb, budget.memory_mb),
        "size_mb": (timing.size_mb, budget.size_mb),
    }
    # a figure the device does not report (NaN, e.g. memory without `time -v` on Android) is not judged
    return {
        "profile": profile.name,
        "checks": {
            k: {"value": known(v, 3), "limit": lim, "fits": None if math.isnan(v) else v <= lim}
            for k, (v, lim) in checks.items()
        },
        "fits": all(v <= lim for v, lim in checks.values() if not math.isnan(v)),
    }


def known(value: float | None, digits: int) -> float | None:
    """``value`` rounded; None where the device did not report it (None or NaN)."""
    return None if value is None or math.isnan(value) else round(value, digits)
