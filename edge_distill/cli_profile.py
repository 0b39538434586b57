"""`edge-distill profile ARTIFACT --device ...`: time an artifact on this host or a connected device.

Example:
    $ edge-distill profile runs/x/artifacts/onnx-fp32 --device ssh://pi@raspberrypi.local --profile rpi4
    $ edge-distill profile model.tflite --inputs in.npz --device adb://R58M12 --runner-binary benchmark_model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def profile_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-distill profile",
        description="Time an exported artifact (a bundle folder from `edge-distill export`, or a model file "
        "with --inputs) on this host or a connected device; the measurement calibrates the predictor.",
    )
    parser.add_argument("artifact", type=Path, help="bundle folder (artifacts/onnx-fp32) or model file")
    parser.add_argument(
        "--device", default="local", help="local (default), ssh://user@host[:port] or adb://SERIAL"
    )
    parser.add_argument("--profile", help="device profile: threads = its cores, and its budget is checked")
    parser.add_argument("--inputs", type=Path, help=".npz with one array per input (a bundle has its own)")
    parser.add_argument("--runs", type=int, default=50, help="at least this many timed runs (default 50)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device-python", help="ssh: the device's Python with the runtime (default python3)")
    parser.add_argument("--ssh-config", type=Path, help="ssh: a config file instead of ~/.ssh/config")
    parser.add_argument(
        "--runner-binary",
        help="adb: executor_runner (.pte) or benchmark_model (.tflite), a local path or one on the device",
    )
    parser.add_argument("--adb", default="adb", help="adb: the adb executable")
    parser.add_argument("--json", action="store_true")
    return parser


def profile_command(args: argparse.Namespace, console: Console) -> int:
    from edge_distill.cli import envelope
    from edge_distill.devices import open_device
    from edge_distill.profiles import load_profile
    from edge_distill.profiling import profile

    device_profile = load_profile(args.profile) if args.profile else None
    device = open_device(
        args.device, python=args.device_python, ssh_config=args.ssh_config,
        runner_binary=args.runner_binary, adb=args.adb,
    )  # fmt: skip
    if not args.json:
        console.print(f"Profiling {args.artifact} on {device.name} ...", highlight=False)
    result = profile(
        args.artifact, device, profile=device_profile, inputs=args.inputs, warmup=args.warmup, runs=args.runs
    )
    fits = result["budget"] is None or result["budget"]["fits"]
    code = 0 if fits else 3
    if args.json:
        print(json.dumps(envelope("profile", result, code=code)))
        return code
    console.print(profile_table(result))
    for line in summary_lines(result):
        console.print(line, highlight=False, soft_wrap=True)
    return code


def profile_table(result: dict[str, Any]) -> Table:
    lat = result["latency_ms"]
    table = Table(title=f"{Path(result['artifact']).name} on {result['device']}", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    ci = result["p50_ci95_ms"]
    rows = [
        ("p50 / p90 / p99", f"{lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f} ms"),
        ("p50 95% interval", f"{ci[0]:.3f} - {ci[1]:.3f} ms" if ci else "-"),
        ("runs (warm-up)", f"{result['runs']} ({result['warmup']})"),
        ("load / first inference", f"{_ms(result['load_ms'])} / {_ms(result['first_ms'])}"),
        (
            "peak memory",
            f"{result['peak_memory_mb']:.1f} MB" if result["peak_memory_mb"] is not None else "not reported",
        ),
        ("size", f"{result['size_mb']:.2f} MB"),
        ("runtime", f"{result['runtime']} {result['runtime_version']}, {result['threads']} threads"),
        ("governor", str(result["conditions"].get("governor") or "not readable")),
        ("cpu", str(result["conditions"].get("cpu") or result["conditions"].get("model") or "-")),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    predicted = result["prediction"]
    if predicted:
        memory_error = f" ({predicted['memory_error']:+.0%})" if predicted["memory_error"] is not None else ""
        lines.append(
            f"Predicted before measuring: p50 {predicted['p50_ms']:.2f} ms ({predicted['p50_error']:+.0%}), "
            f"peak {predicted['memory_mb']:.0f} MB{memory_error}; {predicted['source']}"
        )
    calibration = result["calibration"]
    if calibration["stored"]:
        lines.append(
            f"Calibration: stored ({calibration['points']} points for this device) in {calibration['file']}"
        )
    else:
        lines.append("Calibration: not stored (a bare model file has no FLOPs or bytes; profile a bundle)")
    if result["budget"]:
        budget = result["budget"]
        verdicts = [
            f"{name} {c['value']:g} vs {c['limit']:g} {'ok' if c['fits'] else 'OVER'}"
            if c["value"] is not None
            else f"{name} not reported"
            for name, c in budget["checks"].items()
        ]
        lines.append(f"Budget of {budget['profile']}: " + ", ".join(verdicts))
    return lines


def _ms(value: float | None) -> str:
    return f"{value:.3f} ms" if value is not None else "not reported"
