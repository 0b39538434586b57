"""What a model costs: params, bytes, FLOPs, memory, and its latency on a device.

The latency model, stated plainly:

1. A reference workload (MobileNet V1 1.0 at 224, the model device tables publish latencies for) is
   exported to ONNX (once, cached) and timed on this host in every run: ``host_ref_gflops = FLOPs / time``.
2. A profile gives the device's effective throughput on the same workload: ``device_gflops``.
3. A model measured on this host at ``t_host`` (with the reference timed right beside it, so that load on
   the host cancels out) is predicted to take ``t_host * host_ref_gflops / device_gflops`` on the device.
4. A model not yet measured gets ``t_host = FLOPs / host_family_gflops``, where ``host_family_gflops`` is
   the throughput of the measured model of its family with the nearest FLOPs (the teacher at first):
   the calibration that every measurement refines.

Example:
    >>> model = LatencyModel(device_gflops=40.5)
    >>> _ = model.observe(flops=2_700_000_000, host_ms=30.0, memory_mb=180, size_mb=90, ref_gflops=81.0)
    >>> round(model.predict_device_ms(1_800_000_000), 1)  # 20 ms on the host, the device half as fast
    40.0
"""

from __future__ import annotations

import json
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1}
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
    workload's speed measured beside it (so that load on the host cancels out of the device prediction)."""

    flops: int
    host_ms: float
    memory_mb: float
    size_mb: float
    ref_gflops: float
    params: int | None = None  # with FLOPs, names the shape (a trimmed vocabulary has the same FLOPs)


@dataclass
class LatencyModel:
    """Predicts device latency (and runtime memory) from host measurements and FLOPs.

    See the module docstring; ``device_gflops=None`` means the device is this host (no scaling).
    Every ``observe`` refines later predictions.
    """

    device_gflops: float | None
    measurements: list[Measurement] = field(default_factory=list)

    def observe(
        self,
        *,
        flops: int,
        host_ms: float,
        memory_mb: float,
        size_mb: float,
        ref_gflops: float,
        params: int | None = None,
    ) -> Measurement:
        """Record a host measurement; later predictions calibrate on it."""
        self.measurements.append(Measurement(flops, host_ms, memory_mb, size_mb, ref_gflops, params))
        return self.measurements[-1]

    def nearest(self, flops: int) -> Measurement | None:
        """The latest measurement of the model with the nearest FLOPs (an exact match is that model)."""
        if not self.measurements:
            return None
        return min(reversed(self.measurements), key=lambda m: abs(m.flops - flops))

    def exact(self, flops: int, params: int | None = None) -> Measurement | None:
        """The latest measurement of this very model: same FLOPs, and same params when both are known."""
        for m in reversed(self.measurements):
            if m.flops == flops and (params is None or m.params is None or m.params == params):
                return m
        return None

    def device_ms(self, host_ms: float, ref_gflops: float) -> float:
        """A host latency scaled to the device by the reference workload's speed on each."""
        return host_ms if self.device_gflops is None else host_ms * ref_gflops / self.device_gflops

    def predict_device_ms(self, flops: int) -> float:
        """Scale the nearest measured model's latency by FLOPs, then to the device."""
        nearest = self.nearest(flops)
        if nearest is None:  # nothing measured yet: FLOPs at the device's reference throughput
            return flops / ((self.device_gflops or 1.0) * 1e6)
        return self.device_ms(flops * nearest.host_ms / nearest.flops, nearest.ref_gflops)

    def predict_memory_mb(self, size_mb: float, flops: int) -> float:
        """Runtime peak memory: size times the memory/size ratio of the nearest measured model."""
        nearest = self.nearest(flops)
        ratio = (
            nearest.memory_mb / nearest.size_mb if nearest and nearest.size_mb > 0 else DEFAULT_MEMORY_RATIO
        )
        return size_mb * ratio

    def calibration(self, measurement: Measurement | None = None) -> dict[str, object]:
        """What a `predicted` latency rests on: for one measurement, or the run as a whole."""
        refs = [m.ref_gflops for m in self.measurements]
        ref = measurement.ref_gflops if measurement else (statistics.median(refs) if refs else None)
        return {
            "method": "host latency x host/device throughput on the reference workload, timed beside it",
            "reference_workload": REFERENCE_NAME,
            "host_reference_gflops": round(ref, 2) if ref else None,
            "device_gflops": self.device_gflops,
            "host_measurements": len(self.measurements),
        }
