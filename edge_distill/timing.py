"""Timing in the budget loop: on this host beside the reference workload, on the connected device, and
what a report says about each latency (where it comes from, what a prediction rests on).

Example:
    >>> timed = time_unsaved(ctx, student, features)  # exported to a temporary file  # doctest: +SKIP
    >>> latency_fields(ctx, timed)["latency_source"]                                # doctest: +SKIP
    'measured-device'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from edge_distill.cache import cache_root
from edge_distill.cost import TRANSFER_ERROR, HostReference, LatencyModel, Measurement, measure_host_reference
from edge_distill.cut import export_module
from edge_distill.devices import HostDevice, LatencyProfile, device_key, profile_on_host
from edge_distill.errors import DeviceError
from edge_distill.predictor import CalibrationStore, Features, Predictor, prior_for
from edge_distill.profiles import load_profile
from edge_distill.profiling import calibration_key
from edge_distill.targets.base import get_target

if TYPE_CHECKING:
    from edge_distill.loop import Context, Job
    from edge_distill.planner import Option


class Timed(NamedTuple):
    """A host timing, the connected device's timing (or why there is none), and the measurement the
    latency model recorded for them."""

    profile: LatencyProfile
    measurement: Measurement
    device: LatencyProfile | None = None
    device_error: str | None = None


def latency_models(job: Job, options: list[Option]) -> dict[Option, LatencyModel]:
    """One latency model per (target, precision): measured figures, else predictions calibrated for this
    host and for the connected device. They share the reference workload's timings, so a target not timed
    yet is still carried to the device at this run's host speed."""
    throughput = job.profile.throughput_for("fp32")
    store = CalibrationStore.default()
    host_key = calibration_key(HostDevice().key, os.cpu_count())
    host_prior = prior_for(load_profile("host"))
    device_key_ = calibration_key(device_key(job.device), job.profile.cores) if job.device else None
    references: list[float] = []
    models = {}
    for option in options:
        target, precision = option.target, option.precision
        device = None
        if device_key_ is not None:
            device = Predictor(device_key_, target, precision, prior_for(job.profile, precision), store)
        models[option] = LatencyModel(
            device_gflops=None if job.profile.measured or throughput is None else throughput.gflops,
            host=Predictor(host_key, target, precision, host_prior, store),
            device=device,
            references=references,
        )
    return models


def time_on_host(
    ctx: Context, artifact: Path, features: Features, latency: LatencyModel | None = None
) -> Timed:
    """Time ``artifact`` at batch 1 on this host, between two timings of the reference workload, and on
    the connected device when there is one.

    Without a device the device latency is predicted from the ratio of the two, so the reference is timed
    right beside the model: load on the host (other processes, thermals) then slows both alike and
    cancels out. A device that fails to time it leaves the round not measured (its sentence is kept).
    """
    before = host_reference(ctx)
    timing = profile_on_host(
        artifact, numpy_batch_one(ctx), runs=ctx.job.profile_runs, threads=os.cpu_count()
    )
    after = host_reference(ctx)
    device, error = time_on_device(ctx, artifact)
    ref_gflops = (before.gflops + after.gflops) / 2 if before and after else 0.0
    measurement = Measurement(
        flops=features.flops, host_ms=timing.p90_ms, memory_mb=timing.peak_memory_mb, size_mb=timing.size_mb,
        ref_gflops=ref_gflops, params=features.params,
        device_p90_ms=device.p90_ms if device else None,
        device_memory_mb=device.peak_memory_mb if device else None,
    )  # fmt: skip
    (latency or ctx.latency).observe(measurement, features, host=timing, device=device)
    ctx.references += [r.as_dict() for r in {id(r): r for r in (before, after) if r}.values()]
    return Timed(timing, measurement, device, error)


def host_reference(ctx: Context) -> HostReference | None:
    """The reference workload timed now, to carry a host timing to the device; None when the profile is
    this host (nothing to carry). A quick run (fewer timing runs) times it once and reuses it."""
    if ctx.job.profile.measured:
        return None
    if ctx.job.quick and ctx.last_reference is not None:
        return ctx.last_reference
    ctx.last_reference = measure_host_reference(cache_root())
    return ctx.last_reference


def time_on_device(ctx: Context, artifact: Path) -> tuple[LatencyProfile | None, str | None]:
    """The connected device's timing of ``artifact`` (threads = the profile's cores), or why there is none."""
    device = ctx.job.device
    if device is None:
        return None, None
    try:
        timing = device.profile(
            artifact, numpy_batch_one(ctx), runs=ctx.job.profile_runs, threads=ctx.job.profile.cores
        )
        return timing, None
    except DeviceError as error:
        ctx.reporter.say(f"  not measured on {device.name}: {error}")
        return None, str(error)


def time_unsaved(
    ctx: Context, model: torch.nn.Module, features: Features, option: Option | None = None
) -> Timed:
    """Export ``model`` to a temporary artifact at ``option`` (default: the measuring target at fp32) and
    time it (the teacher, an untrained probe); a quantized export calibrates on the validation split."""
    target = option.target if option else ctx.job.target
    precision = option.precision if option else "fp32"
    calibration = {k: v[:64] for k, v in model_inputs(ctx.inputs["val"]).items()}
    with tempfile.TemporaryDirectory() as tmp:
        module = export_module(ctx.job.family, model)
        artifact = get_target(target, profile=ctx.job.profile).export(
            module, batch_one(ctx), Path(tmp), precision=precision, calibration=calibration
        )
        return time_on_host(ctx, artifact, features, ctx.latencies.get(option) if option else None)


def latency_fields(ctx: Context, timed: Timed, latency: LatencyModel | None = None) -> dict[str, Any]:
    """Latency on the device with where it comes from, and the host measurement it rests on."""
    latency = latency or ctx.latency
    timing = timed.profile
    host = {"p50": timing.p50_ms, "p90": timing.p90_ms, "p99": timing.p99_ms}
    if timed.device is not None:
        measured = timed.device
        return {
            "latency_ms": rounded({"p50": measured.p50_ms, "p90": measured.p90_ms, "p99": measured.p99_ms}),
            "latency_source": "measured-device",
            "device": ctx.job.device.name if ctx.job.device else None,
            "device_conditions": measured.conditions,
            "host_latency_ms": rounded(host),
        }
    not_measured = {"device_error": timed.device_error} if timed.device_error else {}
    if ctx.job.profile.measured:
        return {
            "latency_ms": rounded(host),
            "latency_source": "measured-host",
            "host_latency_ms": rounded(host),
            **not_measured,
        }
    device = {k: latency.device_ms(v, timed.measurement.ref_gflops) for k, v in host.items()}
    error = TRANSFER_ERROR
    return {
        "latency_ms": rounded(device),
        "latency_source": "predicted",
        "calibration": latency.calibration(timed.measurement),
        "latency_interval_ms": [round(device["p90"] * (1 - error), 3), round(device["p90"] * (1 + error), 3)],
        "host_latency_ms": rounded(host),
        **not_measured,
    }


def rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()}


def batch_one(ctx: Context) -> dict[str, torch.Tensor]:
    return {k: v[:1] for k, v in model_inputs(ctx.inputs["test"]).items()}


def model_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The columns an exported artifact takes (a causal LM's next-token labels are not among them)."""
    return {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}


def numpy_batch_one(ctx: Context) -> dict[str, Any]:
    return {k: v.numpy() for k, v in batch_one(ctx).items()}
