"""What a model costs: params, FLOPs, the reference workload, and its latency on a device.

The latency model, stated plainly:

1. A model measured on the device (``--device``) costs what was measured there.
2. A model measured on this host is carried to the device by a reference workload (MobileNet V1 1.0 at
   224, the model device tables publish latencies for), exported to ONNX (once, cached) and timed on this
   host right beside the model: ``host_ref_gflops = FLOPs / time``. A profile gives the device's effective
   throughput on the same workload, ``device_gflops``; the model is predicted to take
   ``t_host * host_ref_gflops / device_gflops`` on the device.
3. A model not measured at all is predicted by ``edge_distill.predictor`` from its FLOPs, bytes and
   kernels: calibrated on the device's own measurements when there are any, else on this host's and
   scaled as in 2. Every measurement refines it.

Example:
    >>> model = LatencyModel(device_gflops=40.5, host=host_predictor)
    >>> model.observe(Measurement(flops, host_ms=30.0, memory_mb=180, size_mb=90, ref_gflops=81.0),
    ...               features, host=timing)                                # doctest: +SKIP
    >>> round(model.measured_ms(model.measurements[-1]), 1)  # the device half as fast as this host
    60.0
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edge_distill.predictor import Features, Point, Prediction, Predictor

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1, "int8-dynamic": 1, "palettized": 0.75}
REFERENCE_NAME = "MobileNet V1 1.0 224"
# An ONNX Runtime session's own footprint before any weights: used until the first measurement.
DEFAULT_MEMORY_RATIO = 2.0


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_flops(model: nn.Module, example: dict[str, torch.Tensor]) -> int:
    """FLOPs of one forward pass on ``example`` (a multiply-add counts as two), by torch's counter."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**example)
    return int(counter.get_total_flops())


def artifact_mb(params: int, precision: str = "fp32") -> float:
    """Predicted artifact size: the weights at ``precision`` (graph overhead is small beside them)."""
    return params * BYTES_PER_PARAM[precision] / 2**20


class MobileNetV1(nn.Module):
    """MobileNet V1 1.0 (Howard et al., 2017) built from plain torch layers: the reference workload.

    Random weights: only its cost matters. No torchvision needed.
    """

    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5
    BLOCKS += ((1024, 2), (1024, 1))

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 32, 3, 2, groups=1)]
        width = 32
        for out, stride in self.BLOCKS:
            layers += [
                *_conv_bn(width, width, 3, stride, groups=width),
                *_conv_bn(width, out, 1, 1, groups=1),
            ]
            width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (batch, 3, 224, 224) -> (batch, classes)
        return self.fc(self.features(pixels))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, *, groups: int) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout), nn.ReLU()]


@dataclass(frozen=True)
class HostReference:
    """This host's measured speed on the reference workload."""

    gflops: float
    p50_ms: float
    flops: int
    runtime: str
    machine: str

    def as_dict(self) -> dict[str, object]:
        return {
            "workload": REFERENCE_NAME,
            "gflops": round(self.gflops, 2),
            "p50_ms": round(self.p50_ms, 3),
            "flops": self.flops,
            "runtime": self.runtime,
            "machine": self.machine,
        }


def machine_signature() -> str:
    """This host's CPU and thread count, recorded beside the measurement."""
    cpu = _cpu_model_name() or platform.processor() or platform.machine()
    return f"{cpu}|{torch.get_num_threads()} threads"


def _cpu_model_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def measure_host_reference(cache_dir: Path, *, runs: int = 50) -> HostReference:
    """Time the reference workload in ONNX Runtime on this host, now.

    The exported reference is cached (it only depends on the exporter's version); the timing is taken
    in every run, so that it shares the conditions (load, thermals) of the models it is compared with.
    """
    from edge_distill.devices import profile_on_host

    artifact, flops = reference_artifact(cache_dir / "reference" / f"mobilenet-v1-torch-{torch.__version__}")
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    # 25 warm-up runs: the first timings in a fresh process run cold (seen here: 190 vs 330 GFLOPS)
    timing = profile_on_host(artifact, {"pixels": pixels}, warmup=25, runs=runs)
    return HostReference(
        gflops=flops / (timing.p50_ms * 1e6),
        p50_ms=timing.p50_ms,
        flops=flops,
        runtime=f"{timing.runtime} {timing.runtime_version}",
        machine=machine_signature(),
    )


def reference_artifact(folder: Path) -> tuple[Path, int]:
    """The reference workload exported to ONNX (built once into ``folder``), and its FLOPs."""
    from edge_distill.atomic import write_json_atomic
    from edge_distill.targets.base import get_target

    meta = folder / "reference.json"
    if meta.exists() and (folder / "model.onnx").exists():
        return folder / "model.onnx", int(json.loads(meta.read_text())["flops"])
    model = MobileNetV1().eval()
    example = {"pixels": torch.randn(1, 3, 224, 224)}
    artifact = get_target("onnx").export(model, example, folder)
    flops = count_flops(model, example)
    write_json_atomic(meta, {"workload": REFERENCE_NAME, "flops": flops})
    return artifact, flops


@dataclass(frozen=True)
class Measurement:
    """One model timed on this host: FLOPs, p90 latency, peak memory, artifact size, and the reference
    workload's speed measured beside it (so that load on the host cancels out of the device prediction);
    with a device connected, the device's own p90 and peak memory too."""

    flops: int
    host_ms: float
    memory_mb: float
    size_mb: float
    ref_gflops: float
    params: int | None = None  # with FLOPs, names the shape (a trimmed vocabulary has the same FLOPs)
    device_p90_ms: float | None = None  # measured on the connected device
    device_memory_mb: float | None = None


@dataclass
class LatencyModel:
    """Predicts device latency (and runtime memory): measured figures for measured shapes, else the
    calibrated predictor (``edge_distill.predictor``).

    ``host`` is this host's predictor (calibrated by every host measurement, this run's and earlier
    runs'); ``device`` the connected device's (calibrated by its measurements). With no device measured,
    a host prediction is scaled to the device by the reference workload's speed on each (see the module
    docstring); ``device_gflops=None`` means the device is this host (no scaling).
    """

    device_gflops: float | None
    host: Predictor | None = None
    device: Predictor | None = None
    measurements: list[Measurement] = field(default_factory=list)
    # the reference workload's speed on this host at every timing of the run: shared by the models of
    # one run's targets and precisions, so that one never timed yet still scales to the device
    references: list[float] = field(default_factory=list)
    # this run's measured models (features, host p90): a prediction is scaled by how far off it was for
    # the measured model nearest in FLOPs, so stored calibration of very different models cannot mislead
    # a run for long
    observed: list[tuple[Features, float]] = field(default_factory=list)

    def observe(
        self, measurement: Measurement, features: Features | None = None, **point: Any
    ) -> Measurement:
        """Record a measurement of this run; with ``features``, it calibrates the predictors too.

        ``point`` holds the LatencyProfile fields the calibration file keeps (p50s, threads, version).
        """
        self.measurements.append(measurement)
        if measurement.ref_gflops > 0:  # 0: a profile of this host, nothing carried to a device
            self.references.append(measurement.ref_gflops)
        if features is not None and self.host is not None:
            self.host.observe(self._point(self.host, features, "measured-host", point["host"]))
            self.observed.append((features, measurement.host_ms))
        if features is not None and self.device is not None and point.get("device") is not None:
            self.device.observe(self._point(self.device, features, "measured-device", point["device"]))
        return measurement

    @staticmethod
    def _point(predictor: Predictor, features: Features, source: str, timing: Any) -> Point:
        return Point(
            device=predictor.device, target=predictor.target, precision=predictor.precision,
            features=features, p50_ms=timing.p50_ms, p90_ms=timing.p90_ms,
            peak_memory_mb=timing.peak_memory_mb, source=source, runtime_version=timing.runtime_version,
            threads=timing.threads,
        )  # fmt: skip

    def exact(self, flops: int, params: int | None = None) -> Measurement | None:
        """The latest measurement of this very model: same FLOPs, and same params when both are known."""
        for m in reversed(self.measurements):
            if m.flops == flops and (params is None or m.params is None or m.params == params):
                return m
        return None

    def device_ms(self, host_ms: float, ref_gflops: float) -> float:
        """A host latency scaled to the device by the reference workload's speed on each."""
        return host_ms if self.device_gflops is None else host_ms * ref_gflops / self.device_gflops

    def measured_ms(self, m: Measurement) -> float:
        """A measured model's p90 on the device: measured there, else its host p90 scaled."""
        return m.device_p90_ms if m.device_p90_ms is not None else self.device_ms(m.host_ms, m.ref_gflops)

    def measured_memory_mb(self, m: Measurement) -> float:
        return m.device_memory_mb if m.device_memory_mb is not None else m.memory_mb

    def _reference_gflops(self) -> float | None:
        refs = self.references or [m.ref_gflops for m in self.measurements if m.ref_gflops > 0]
        return statistics.median(refs) if refs else None

    def predict(self, features: Features) -> dict[str, Any]:
        """p90 latency and peak memory on the device, with the source and error interval they rest on."""
        if self.device is not None and self.device.points():
            p = self.device.predict(features)
            return {
                "latency_ms": p.p90_ms,
                "memory_mb": p.memory_mb,
                **_provenance(p.p90_ms, p, p.source, 0.0),
            }
        if self.host is None:  # nothing to calibrate with: FLOPs at the device's reference throughput
            return {"latency_ms": features.flops / ((self.device_gflops or 1.0) * 1e6), "memory_mb": 0.0,
                    "source": "FLOPs at the profile's throughput", "latency_error": 1.0}  # fmt: skip
        p = self._host_prediction(features)
        ref = self._reference_gflops()
        if self.device_gflops is None or ref is None:
            return {
                "latency_ms": p.p90_ms,
                "memory_mb": p.memory_mb,
                **_provenance(p.p90_ms, p, p.source, 0.0),
            }
        speeds = f"{ref:.1f} host / {self.device_gflops} device GFLOPS"
        source = f"{p.source}, scaled by the reference workload ({speeds})"
        latency = self.device_ms(p.p90_ms, ref)
        return {
            "latency_ms": latency,
            "memory_mb": p.memory_mb,
            **_provenance(latency, p, source, TRANSFER_ERROR),
        }

    def _host_prediction(self, features: Features) -> Prediction:
        """The host predictor's prediction, scaled by its error on this run's nearest measured model."""
        p = self.host.predict(features)
        if not self.observed:
            return p

        def distance(entry: tuple[Features, float]) -> float:
            return abs(math.log(max(entry[0].flops, 1) / max(features.flops, 1)))

        nearest, measured = min(self.observed, key=distance)
        predicted = self.host.predict(nearest).p90_ms
        correction = measured / predicted if predicted > 0 else 1.0
        if abs(correction - 1.0) < 0.02:
            return p
        source = f"{p.source}, x{correction:.2f} as measured on this run's nearest model"
        return dataclasses.replace(
            p, p50_ms=p.p50_ms * correction, p90_ms=p.p90_ms * correction, source=source
        )

    def calibration(self, measurement: Measurement | None = None) -> dict[str, object]:
        """What a `predicted` latency rests on: for one measurement, or the run as a whole."""
        ref = measurement.ref_gflops if measurement else self._reference_gflops()
        info: dict[str, object] = {
            "method": "host latency x host/device throughput on the reference workload, timed beside it",
            "reference_workload": REFERENCE_NAME,
            "host_reference_gflops": round(ref, 2) if ref else None,
            "device_gflops": self.device_gflops,
            "host_measurements": len(self.measurements),
            "transfer_error": TRANSFER_ERROR,
        }
        for name, predictor in (("host_predictor", self.host), ("device_predictor", self.device)):
            if predictor is not None:
                info[name] = {"key": predictor.device, "points": len(predictor.points()),
                              "coefficients": predictor.coefficients()}  # fmt: skip
        return info


# A host timing carried to another device by the reference workload's speed ratio: how far off that can be
# is not known until the device is measured; this is the interval the report states until then.
TRANSFER_ERROR = 0.3


def _provenance(latency: float, p: Prediction, source: str, extra_error: float) -> dict[str, Any]:
    """Where a prediction comes from and its error interval (relative error to expect either side)."""
    error = p.latency_error + extra_error
    return {
        "source": source,
        "latency_error": round(error, 3),
        "memory_error": round(p.memory_error, 3),
        "latency_interval_ms": [round(latency * (1 - min(error, 0.99)), 3), round(latency * (1 + error), 3)],
    }
