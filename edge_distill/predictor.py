"""Latency and peak-memory prediction per (device, target, precision), calibrated by every measurement.

The cost model, stated plainly. For one forward pass at batch 1 a model has

- ``flops``: by ``torch.utils.flop_counter`` (a multiply-add counts as two);
- ``kernels`` (``ops``): the aten ops that are not views, each one dispatch of a runtime kernel;
- ``activation_bytes``: the activations every op reads and writes;
- ``moved_bytes``: those plus the weights each op reads, at the artifact's precision (an embedding lookup
  reads only the rows it gathers; views move nothing);
- ``weight_bytes``: the weights at the artifact's precision (the artifact's size);
- ``peak_activation_bytes``: the largest bytes one op holds live (its activation inputs and outputs).

and on one device, target and precision::

    p50_ms    = overhead_ms + kernels * per_kernel_ms + flops / effective_gflops
                + activation_bytes / activation_bandwidth + weight_bytes_read / weight_bandwidth
    memory_mb = runtime_mb + weight_factor * weight_bytes + peak_activation_bytes

The coefficients start from the device profile's figures (throughput, memory bandwidth) and are refitted
from every measurement stored for that device, target and precision in ``calibration.json`` in the user's
cache (latency: the first n - 1 of LATENCY_RANK from n points; memory: least squares pulled toward the
prior): predictions improve with use.
Each prediction says what it rests on (``source``) and carries an error interval from the calibration's
leave-one-out errors (or a wide default before any measurement).

Example:
    >>> store = CalibrationStore(tmp / "calibration.json")
    >>> predictor = Predictor("host:AMD EPYC|1 threads", "onnx", "fp32", prior_for(profile), store)
    >>> predictor.observe(point)              # a Point: one measurement of one model on this device
    >>> predictor.predict(features).p50_ms    # now calibrated by it               # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import fcntl
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from edge_distill.atomic import write_json_atomic

if TYPE_CHECKING:
    from edge_distill.profiles import DeviceProfile

SCHEMA = 1
KEEP_PER_KEY = 200  # the newest measurements kept per (device, target, precision)
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int8-dynamic": 1.0, "palettized": 0.75}
# Before any measurement: a per-call overhead and a runtime footprint (an ONNX Runtime session in a
# fresh process adds about 20-40 MB before weights here), and wide error intervals.
PRIOR_OVERHEAD_MS = 0.05
PRIOR_PER_OP_MS = 0.005  # a runtime's dispatch of one kernel: a few microseconds
PRIOR_RUNTIME_MB = 30.0
PRIOR_WEIGHT_FACTOR = 1.0
UNCALIBRATED_ERROR = 0.5  # +-50% until enough measurements calibrate the device
LOO_POINTS = 4  # leave-one-out errors need at least this many points
# How strongly the memory fit is pulled toward the prior (relative units): weak, so that measurements
# decide, but enough to keep the 2-coefficient fit on one point from going wild.
PRIOR_WEIGHT = 1e-4


@dataclass(frozen=True)
class Features:
    """What a model costs per batch-1 inference, independent of the device."""

    flops: int
    moved_bytes: int
    weight_bytes: int
    peak_activation_bytes: int
    params: int
    ops: int = 0  # kernels run (aten ops that are not views): each costs the runtime a dispatch
    activation_bytes: int = 0  # the part of moved_bytes that is activations (read and written)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def model_features(
    model: torch.nn.Module, example: dict[str, torch.Tensor], precision: str = "fp32"
) -> Features:
    """Count FLOPs and bytes of one forward pass of ``model`` on ``example`` (batch 1)."""
    scale = BYTES_PER_WEIGHT[precision] / 4.0  # weights are counted at the artifact's precision
    params = {id(p): p for p in model.parameters()}.values()
    counter = _ByteCounter({p.untyped_storage().data_ptr() for p in params}, scale)
    flops = FlopCounterMode(display=False)
    with torch.no_grad(), flops, counter:
        model(**example)
    n_params = sum(p.numel() for p in params)
    weight_bytes = int(sum(p.numel() * p.element_size() for p in params) * scale)
    return Features(
        flops=int(flops.get_total_flops()),
        moved_bytes=int(counter.moved),
        weight_bytes=weight_bytes,
        peak_activation_bytes=int(counter.peak_live),
        params=n_params,
        ops=counter.ops,
        activation_bytes=int(counter.activations),
    )


class _ByteCounter(TorchDispatchMode):
    """Counts bytes each aten op reads and writes, and the most activation bytes one op holds live."""

    def __init__(self, weight_storages: set[int], weight_scale: float) -> None:
        super().__init__()
        self.weights, self.scale = weight_storages, weight_scale
        self.moved = 0.0
        self.activations = 0
        self.peak_live = 0
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # a view reads and writes nothing
            return out
        self.ops += 1
        written = sum(_nbytes(t) for t in _tensors(out))
        activations = weights = 0
        for t in _tensors((args, kwargs)):
            if t.untyped_storage().data_ptr() in self.weights:
                weights += _nbytes(t)
            else:
                activations += _nbytes(t)
        if func is torch.ops.aten.embedding.default:  # a lookup reads the gathered rows only
            weights = written
        self.moved += activations + weights * self.scale + written
        self.activations += activations + written
        self.peak_live = max(self.peak_live, activations + written)
        return out


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    return (t for t in tree_leaves(tree) if isinstance(t, torch.Tensor))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# --- calibration store ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One measurement of one model on one device, target and precision."""

    device: str  # e.g. "host:AMD EPYC|2 threads", "ssh://pi@raspberrypi.local", "profile:raspberry-pi-4"
    target: str
    precision: str
    features: Features
    p50_ms: float
    p90_ms: float
    peak_memory_mb: float
    source: str  # measured-host | measured-device
    runtime_version: str = ""
    threads: int | None = None
    when: str = ""
    label: str = ""
    profile: str = ""  # the device profile it was measured for, when one was named

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["when"] = self.when or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Point:
        return cls(**{**data, "features": Features(**data["features"])})

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.device, self.target, self.precision)


class CalibrationStore:
    """Every measurement, in one small JSON file in the user's cache (``cache_root()/calibration.json``).

    Writes are atomic and serialised with a lock file, so parallel runs do not lose each other's points.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._read: tuple[tuple[int, int], list[Point]] | None = None  # (mtime, size) -> points

    @classmethod
    def default(cls) -> CalibrationStore:
        from edge_distill.cache import cache_root

        return cls(cache_root() / "calibration.json")

    def points(self, device: str, target: str, precision: str) -> list[Point]:
        """The stored measurements of one device, target and precision, oldest first (the file is read
        again only when it changed: the loop asks for hundreds of predictions per decision)."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            return []
        if self._read is None or self._read[0] != stamp:
            self._read = (stamp, self._load())
        return [p for p in self._read[1] if p.key == (device, target, precision)]

    def add(self, point: Point) -> None:
        """Store ``point``; the oldest points of its key beyond KEEP_PER_KEY are dropped."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            points = [*self._load(), point]
            same = [p for p in points if p.key == point.key]
            drop = {id(p) for p in same[: max(0, len(same) - KEEP_PER_KEY)]}
            kept = [p.as_dict() for p in points if id(p) not in drop]
            write_json_atomic(self.path, {"schema": SCHEMA, "points": kept})

    def _load(self) -> list[Point]:
        try:
            data = json.loads(self.path.read_text())
            return (
                [Point.from_dict(p) for p in data.get("points", [])] if data.get("schema") == SCHEMA else []
            )
        except FileNotFoundError:
            return []
        except (ValueError, TypeError, KeyError, AttributeError):  # a damaged file calibrates nothing
            return []

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


# --- the model ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """A predicted p50/p90 latency and peak memory, with what it rests on and its error interval."""

    p50_ms: float
    p90_ms: float
    memory_mb: float
    source: str  # "calibrated on N measurements" / "profile figures, uncalibrated" / "scaled from ..."
    latency_error: float  # relative: the truth is expected within p50 * (1 -+ error)
    memory_error: float
    points: int

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("p50_ms", "p90_ms", "memory_mb"):
            data[key] = round(data[key], 3)
        low, high = self.p50_ms * (1 - self.latency_error), self.p50_ms * (1 + self.latency_error)
        data["latency_interval_ms"] = [round(low, 3), round(high, 3)]
        return data


@dataclass(frozen=True)
class Prior:
    """The device's figures before any measurement: effective compute, bandwidth, per-call overhead."""

    gflops: float
    bandwidth_gbs: float
    overhead_ms: float = PRIOR_OVERHEAD_MS
    per_op_ms: float = PRIOR_PER_OP_MS
    runtime_mb: float = PRIOR_RUNTIME_MB
    weight_factor: float = PRIOR_WEIGHT_FACTOR
    source: str = "profile figures"

    def latency_coefficients(self) -> np.ndarray:  # ms per (call, 100 kernels, GFLOP, GB act., GB weights)
        per_gb = 1e3 / self.bandwidth_gbs
        return np.array([self.overhead_ms, 100 * self.per_op_ms, 1e3 / self.gflops, per_gb, per_gb])

    def memory_coefficients(self) -> np.ndarray:  # MB per (1, weight MB)
        return np.array([self.runtime_mb, self.weight_factor])


class Predictor:
    """Predicts latency and peak memory for one device, target and precision from its calibration."""

    def __init__(
        self, device: str, target: str, precision: str, prior: Prior, store: CalibrationStore | None
    ) -> None:
        self.device, self.target, self.precision, self.prior, self.store = (
            device, target, precision, prior, store
        )  # fmt: skip
        self._extra: list[Point] = []  # points added without a store (tests, benchmarks)

    def points(self) -> list[Point]:
        stored = self.store.points(self.device, self.target, self.precision) if self.store else []
        return [*stored, *self._extra]

    def observe(self, point: Point) -> None:
        """Record a measurement of this device, target and precision: later predictions fit it."""
        if point.key != (self.device, self.target, self.precision):
            raise ValueError(f"Point for {point.key} given to the predictor of {self.device}.")
        if self.store is not None:
            self.store.add(point)
        else:
            self._extra.append(point)

    def _fitted(self, points: list[Point]) -> tuple[np.ndarray, np.ndarray, float, float, float]:
        """The fitted coefficients, p90/p50 ratio and errors, refitted only when the points changed."""
        stamp = self.store._read[0] if self.store is not None and self.store._read else None
        signature = (stamp, len(self._extra), len(points))
        cached = getattr(self, "_fit", None)
        if cached is None or cached[0] != signature:
            fits = (
                fit_latency(points, self.prior), fit_memory(points, self.prior), _p90_ratio(points),
                _error(points, self.prior, "latency"), _error(points, self.prior, "memory"),
            )  # fmt: skip
            self._fit = (signature, fits)
        return self._fit[1]

    def predict(self, features: Features) -> Prediction:
        points = self.points()
        lat, mem, ratio, latency_error, memory_error = self._fitted(points)
        p50 = float(_latency_row(features) @ lat)
        memory = float(_memory_row(features) @ mem) + features.peak_activation_bytes / 2**20
        if points:
            source = (
                f"calibrated on {len(points)} measurement{'s' if len(points) > 1 else ''} of {self.device}"
            )
        else:
            source = f"{self.prior.source}, uncalibrated"
        return Prediction(
            p50_ms=p50,
            p90_ms=p50 * ratio,
            memory_mb=memory,
            source=source,
            latency_error=latency_error,
            memory_error=memory_error,
            points=len(points),
        )

    def coefficients(self) -> dict[str, float]:
        """The fitted model in readable units."""
        lat = fit_latency(self.points(), self.prior)
        mem = fit_memory(self.points(), self.prior)
        return {
            "overhead_ms": round(float(lat[0]), 4),
            "per_kernel_ms": round(float(lat[1]) / 100, 5),
            "effective_gflops": round(1e3 / float(lat[2]), 2) if lat[2] > 0 else math.inf,
            "activation_bandwidth_gbs": round(1e3 / float(lat[3]), 2) if lat[3] > 0 else math.inf,
            "weight_bandwidth_gbs": round(1e3 / float(lat[4]), 2) if lat[4] > 0 else math.inf,
            "runtime_mb": round(float(mem[0]), 2),
            "weight_factor": round(float(mem[1]), 3),
        }


def _latency_row(f: Features) -> np.ndarray:
    weights_read = f.moved_bytes - f.activation_bytes
    return np.array([1.0, f.ops / 100, f.flops / 1e9, f.activation_bytes / 1e9, weights_read / 1e9])


def _memory_row(f: Features) -> np.ndarray:
    return np.array([1.0, f.weight_bytes / 2**20])


# The latency coefficients in the order the measurements earn them: FLOPs and activation bytes explain
# most of a model's time; kernels, the per-call overhead and weight reads refine it once there are points
# enough. (On this host, 13 BERT students at 1 thread: FLOPs + activation bytes alone fit all 13 within
# 16%; fitting all five from 3 points interpolated the timing noise instead.)
LATENCY_RANK = (2, 3, 1, 0, 4)  # indices into _latency_row


def fit_latency(points: list[Point], prior: Prior) -> np.ndarray:
    """ms per (call, 100 kernels, GFLOP, GB of activations, GB of weights read).

    No points: the prior. One point: the prior scaled to it. n points: the first n - 1 coefficients of
    LATENCY_RANK by non-negative least squares on relative error (one point more than unknowns, so noise
    is averaged, not interpolated); the coefficients not yet earned are 0.
    """
    coefficients = prior.latency_coefficients()
    if not points:
        return coefficients
    rows = np.array([_latency_row(p.features) for p in points])  # (n, 5)
    targets = np.array([p.p50_ms for p in points])
    if len(points) == 1:
        return coefficients * targets[0] / float(rows[0] @ coefficients)
    fitted = list(LATENCY_RANK[: len(points) - 1])
    solution = _nonnegative_relative_fit(rows[:, fitted], targets)
    out = np.zeros(len(coefficients))
    out[fitted] = solution
    return out


def _nonnegative_relative_fit(rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Non-negative c minimising sum(((row . c) / y - 1)^2): drop a coefficient that comes out negative."""
    a = rows / targets[:, None]  # (n, k)
    b = np.ones(len(targets))
    active = a.any(axis=0)  # a feature every point has at 0 cannot be fitted
    x = np.zeros(rows.shape[1])
    for _ in range(rows.shape[1]):
        x = np.zeros(rows.shape[1])
        if active.any():
            x[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        if (x >= 0).all():
            break
        active &= x > 0
    return np.clip(x, 0, None)


def fit_memory(points: list[Point], prior: Prior) -> np.ndarray:
    """(runtime MB, weight factor): the measured peak less the largest live activations."""
    points = [p for p in points if math.isfinite(p.peak_memory_mb)]  # a device may not report memory
    rows = [_memory_row(p.features) for p in points]
    targets = [max(1.0, p.peak_memory_mb - p.features.peak_activation_bytes / 2**20) for p in points]
    return _fit(rows, targets, prior.memory_coefficients())


def _fit(rows: list[np.ndarray], targets: list[float], prior: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising sum(((row . c) / y - 1)^2) + w * sum((c / prior - 1)^2).

    Solved in the prior's units (c = prior * x), so every coefficient is pulled by the same weight.
    """
    if not rows:
        return prior
    a = np.array(rows) * prior / np.array(targets)[:, None]  # (n, k): relative error per unit of x
    b = np.ones(len(rows))
    a = np.vstack([a, math.sqrt(PRIOR_WEIGHT) * np.eye(len(prior))])
    b = np.concatenate([b, math.sqrt(PRIOR_WEIGHT) * np.ones(len(prior))])
    active = np.ones(len(prior), dtype=bool)
    for _ in range(len(prior)):  # drop coefficients that come out negative, refit the rest
        x = np.zeros(len(prior))
        x[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        if (x >= 0).all():
            break
        active &= x > 0
    return prior * np.clip(x, 0, None)


def _p90_ratio(points: list[Point]) -> float:
    """p90 / p50 of the measured models (the spread of one device's timings); 1.1 before any."""
    ratios = [p.p90_ms / p.p50_ms for p in points if p.p50_ms > 0]
    return float(np.median(ratios)) if ratios else 1.1


def _error(points: list[Point], prior: Prior, kind: str) -> float:
    """Relative error to expect: the largest leave-one-out error over the points (at least 5%), or
    UNCALIBRATED_ERROR with fewer than LOO_POINTS points (left one out, the rest would not pin the fit)."""
    if len(points) < LOO_POINTS:
        return UNCALIBRATED_ERROR
    errors = []
    for i, held in enumerate(points):
        rest = points[:i] + points[i + 1 :]
        if kind == "latency":
            predicted = float(_latency_row(held.features) @ fit_latency(rest, prior))
            errors.append(abs(predicted / held.p50_ms - 1))
        else:
            act = held.features.peak_activation_bytes / 2**20
            predicted = float(_memory_row(held.features) @ fit_memory(rest, prior)) + act
            measured = held.peak_memory_mb
            errors.append(abs(predicted / measured - 1) if math.isfinite(measured) and measured > 0 else 0.0)
    return max(0.05, float(np.max(errors)))


def prior_for(profile: DeviceProfile, precision: str = "fp32") -> Prior:
    """The profile's figures as a prior; this host's figures come from the reference workload."""
    from edge_distill.errors import ProfileError

    try:
        throughput = profile.throughput_for(
            {"int8-dynamic": "int8", "palettized": "fp16"}.get(precision, precision)
        )
    except ProfileError:
        throughput = None
    throughput = throughput or profile.throughput_for("fp32")
    gflops = throughput.gflops if throughput else 50.0
    bandwidth = profile.memory_bandwidth_gbs or 10.0
    return Prior(gflops=gflops, bandwidth_gbs=bandwidth, source=f"{profile.name} profile figures")
