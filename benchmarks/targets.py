"""Every export target x precision of the demo student against PyTorch eager fp32, side by side in one run.

Run: python benchmarks/targets.py [--student DIR] [--targets ...] [--precisions ...] [--threads N] [--json]

Without ``--student`` the demo job runs once (``fit_to_device("raspberry-pi")`` into ``runs/targets-demo/``,
reused when its student is there). Each (target, precision) is shipped as the product ships it
(``shipping.ship``: exported, calibrated on the validation split, verified on the test split, bundled); one
that fails is a row with its error. Every runnable artifact's session is loaded once, then in each of
``--rounds`` rounds, for each artifact in an order rotated per round, ``--runs`` batch-1 calls of PyTorch
eager and then of the artifact are timed (after a warm-up each); a speed-up is the median over rounds of
PyTorch ms / artifact ms, at p50 and at p90. One thread count for all: torch.set_num_threads, onnxruntime
intra_op_num_threads (inter-op 1), LiteRT num_threads, ExecuTorch's thread pool. Size is over the fp32
weights (model.safetensors); the metric is test accuracy on the artifact's own outputs (its verification).
Core ML and ExecuTorch's Core ML delegate run only on Apple hosts: size and status only here. ``--tiny``:
the same code on a 2x32 BERT trained in seconds on a synthetic task (offline); a smoke test.

Measured 2026-11-22 on the demo job's student (``runs/targets-demo``, 500 s to make: 3 layers x 192, 6
heads, FFN 768, the full 30522-id vocabulary, whose table is 5.86M of its 7.33M params; 27.98 MB; 128
tokens; PyTorch test accuracy 0.9731 on 223 BBC News texts, one text = 0.45 points), 2-core AMD EPYC
(x86-64), torch 2.13 CPU, onnxruntime 1.31.1, ai-edge-litert 2.3.0, executorch 1.5.1, coremltools 9.0.
``2 threads``: ``python benchmarks/targets.py --student runs/targets-demo/student``, load average 1.85 at
start and 2.32 at end, 156 s, eager p50 4.0 ms; ``1 thread``: the same with ``--threads 1``, load 3.3 ->
2.8, 176 s, eager p50 4.7 ms. Speed-ups p50/p90 (PyTorch eager ms / artifact ms; above 1 is faster):

  target            precision       MB  size  2 threads   1 thread     acc Δ pts max diff  status
  coreml            fp16         14.01 0.50x  macOS only  macOS only       -     -        -  unverified
  coreml            fp32         27.96 1.00x  macOS only  macOS only       -     -        -  unverified
  coreml            int8          7.16 0.26x  macOS only  macOS only       -     -        -  unverified
  coreml            palettized    5.30 0.19x  macOS only  macOS only       -     -        -  unverified
  executorch        fp32         28.03 1.00x  0.83/0.82  0.93/0.91  0.9731 +0.00  1.1e-05  verified
  executorch        int8          7.30 0.26x  -          1.24/1.53  0.9731 +0.00      2.3  verified
  executorch        int8-dynamic  7.23 0.26x  -          1.12/1.14  0.9731 +0.00     0.20  verified
  executorch-coreml fp16         14.03 0.50x  macOS only  macOS only       -     -        -  unverified
  executorch-coreml fp32         27.90 1.00x  macOS only  macOS only       -     -        -  unverified
  onnx              fp32         28.22 1.01x  1.72/1.80  1.71/1.71  0.9731 +0.00  1.7e-05  verified
  onnx              int8-dynamic  7.26 0.26x  2.43/2.73  2.58/2.58  0.9731 +0.00     0.51  verified
  onnx              int8          7.30 0.26x  2.02/1.97  2.56/2.58  0.9731 +0.00     0.81  verified
  tflite            fp32         27.93 1.00x  2.89/3.81  2.56/2.55  0.9731 +0.00  8.6e-06  verified
  tflite            fp16         14.16 0.51x  3.00/3.07  2.54/2.52  0.9731 +0.00   0.0031  verified
  tflite            int8-dynamic  7.67 0.27x  5.00/3.94  5.10/5.03  0.9731 +0.00     0.27  verified
  tflite            int8          7.75 0.28x  -          5.65/5.62  0.9686 -0.45      2.0  verified

The embedding table decides size: every int8 artifact stores it int8 (0.26-0.28x the fp32 weights).
Two rows were re-measured alone at 1 thread after their recipes changed: LiteRT int8 (load 1.0; every
op int8 had lost 1.8 points, 4 of 223 texts, and was refused by verification; now only the linear layers
compute in int8) and ExecuTorch int8 / int8-dynamic (load 2.7; their tables had stayed fp32, 0.85x).
LiteRT int8 and int8-dynamic are the fastest here (5.3-5.7x eager); ExecuTorch fp32 is slower than eager
(0.83-0.95x).

What these are: ratios on this x86 host with the runtimes' x86 kernels. What they are not: a Raspberry
Pi's: its Cortex-A72 cores have other int8 and fp16 kernels, caches and memory bandwidth, so the order
of the rows may differ there; time the shipped bundles on the device (``python runner.py``). Nor are they
load-proof: a third run at 2 threads under a load rising from 1.2 to 4.5 (other jobs on the 2 cores) put
eager at 22 ms and the speed-ups at 1.9-24x: eager's two OpenMP threads lose far more to a busy core than
the runtimes' pools, which timing side by side cannot cancel. Take 2-thread ratios on a quiet host only;
at 1 thread they held under a load of 3.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch  # after the environment above, which transformers reads at import
from rich.console import Console
from rich.table import Table
from torch import nn

from edge_distill.errors import EdgeDistillError
from edge_distill.exporting import accuracy_metric
from edge_distill.families import get_family
from edge_distill.profiles import DeviceProfile, load_profile
from edge_distill.shipping import ShipData, ship
from edge_distill.targets.base import TARGETS, VERIFIED, get_target
from edge_distill.targets.runner import Session, load_session, run_session

SCHEMA = 1
DEMO_RUN = Path("runs/targets-demo")
NEEDS_MACOS = "needs macOS"
WARMUP = 5  # untimed calls before each timed block (lazy kernel set-up, caches)


@dataclass
class Workload:
    """The PyTorch model every artifact is compared with, what ships with it, and its fp32 weight bytes."""

    name: str
    model: nn.Module  # forward(**example) -> (1, labels): what the exporters see
    shipment: ShipData
    weights_bytes: int  # the fp32 weights as safetensors
    profile: DeviceProfile | None


def tiny_workload() -> Workload:
    """A 2x32 BERT trained (about 2 s) to tell which third of a 99-id vocabulary most tokens come from.

    Example:
        >>> tiny_workload().shipment.held_out["input_ids"].shape
        torch.Size([128, 16])
    """
    from safetensors.torch import save_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    model = get_family("sequence-classification").export_module(BertForSequenceClassification(config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(120):
        inputs, labels = synthetic_rows(64, seed=1000 + step)
        nn.functional.cross_entropy(model(**inputs), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    held_out, labels = synthetic_rows(128, seed=2)
    shipment = ShipData(
        example={k: v[:1] for k, v in held_out.items()}, calibration=synthetic_rows(64, seed=1)[0],
        held_out=held_out, metric=accuracy_metric(labels.numpy()), preprocess={"kind": "synthetic ids"},
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, f"{tmp}/model.safetensors")
        weights = Path(f"{tmp}/model.safetensors").stat().st_size
    return Workload("tiny 2x32 BERT (synthetic)", model.eval(), shipment, weights, None)


def synthetic_rows(rows: int, seed: int, seq: int = 16) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Ids drawn 70% from the label's third of 99 ids, right-padded to ``seq``; and the labels (rows,)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (rows,), generator=g)
    own = 1 + labels[:, None] * 33 + torch.randint(0, 33, (rows, seq), generator=g)
    noise = torch.randint(1, 99, (rows, seq), generator=g)
    ids = torch.where(torch.rand(rows, seq, generator=g) < 0.7, own, noise).clamp(max=98)
    mask = (torch.arange(seq)[None, :] < torch.randint(seq // 2, seq + 1, (rows, 1), generator=g)).long()
    return {"input_ids": ids * mask, "attention_mask": mask}, labels  # (rows, seq) each


def demo_student(run_dir: Path, say: Callable[[str], None]) -> Path:
    """The demo job's student folder: ``run_dir/student`` if a run already wrote it, else the job is run.

    Example:
        >>> demo_student(Path("runs/targets-demo"), print)  # doctest: +SKIP
        PosixPath('runs/targets-demo/student')
    """
    from edge_distill.api import fit_to_device
    from edge_distill.exporting import RECORD

    student = run_dir / "student"
    if not (student / RECORD).is_file():
        say(f"running the demo job into {run_dir} (minutes) ...")
        fit_to_device("raspberry-pi", out_dir=run_dir)
    return student


def student_workload(student_dir: Path) -> Workload:
    """A run's student, with its data as ``edge-distill export`` rebuilds it (calibrate val, verify test).

    Example:
        >>> student_workload(Path("runs/targets-demo/student")).shipment.metric.name  # doctest: +SKIP
        'accuracy'
    """
    from edge_distill.cut import export_module
    from edge_distill.exporting import load_data, read_record, sequence_length, text_ship_data
    from edge_distill.teachers import load_teacher

    student, record = load_teacher(student_dir), read_record(student_dir)
    family = get_family(student.task)
    profile = load_profile(record.get("profile") or "raspberry-pi")
    seq_len = sequence_length(record, profile, student.model.config, None)
    data = load_data(record, None, "text", None, student.label_names, family)
    inputs = {
        name: family.encode(student.tokenizer, getattr(data, name).texts, seq_len) for name in ("val", "test")
    }
    shipment = text_ship_data(
        family, inputs, labels=np.asarray(data.test.labels) if data.labeled else None,
        tokenizer=student.tokenizer, seq_len=seq_len, label_names=student.label_names,
        trimmed=bool(getattr(student.model.config, "trimmed_vocab", None)),
    )  # fmt: skip
    weights = (student_dir / "model.safetensors").stat().st_size
    return Workload(str(student_dir), export_module(family, student.model), shipment, weights, profile)


def wanted_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``--pairs`` as given, else every registered target (or ``--targets``) x every precision it offers
    (or those of ``--precisions``).

    Example:
        >>> wanted_pairs(parse_args(["--targets", "onnx", "--precisions", "fp32", "int8"]))
        [('onnx', 'fp32'), ('onnx', 'int8')]
    """
    if args.pairs:
        return [(target, precision) for target, _, precision in (p.partition(":") for p in args.pairs)]
    names, precisions = args.targets or TARGETS.names(), args.precisions
    return [(t, p) for t in names for p in get_target(t).precisions if not precisions or p in precisions]


def ship_row(work: Workload, target: str, precision: str, out: Path) -> dict[str, Any]:
    """Ship one bundle; its row of sizes and verification, or ``error``: the failure's first line."""
    row: dict[str, Any] = {"target": target, "precision": precision}
    try:
        meta = ship(work.model, target, precision, out, work.shipment, profile=work.profile)
    except EdgeDistillError as error:
        return row | {"error": str(error).strip().splitlines()[0]}
    except Exception as error:  # a library bug, not an expected failure: named with its type
        return row | {"error": f"unexpected {type(error).__name__}: {str(error).strip().splitlines()[0]}"}
    v = meta["verification"]
    pt, art = v["metric_pytorch"], v["metric_artifact"]
    return row | {
        "path": str(out / f"{target}-{precision}" / meta["file"]), "size_bytes": meta["size_bytes"],
        "size_mb": meta["size_mb"], "size_ratio": round(meta["size_bytes"] / work.weights_bytes, 4),
        "status": v["status"], "metric": v["metric"], "metric_artifact": art, "metric_pytorch": pt,
        "metric_diff_points": None if pt is None or art is None else round(100 * (art - pt), 2),
        "max_abs_diff": v["max_abs_diff"],
        "latency": None if v["status"] == VERIFIED else NEEDS_MACOS,
    }  # fmt: skip


def time_ms(step: Callable[[], object], runs: int) -> tuple[float, float]:
    """(p50, p90) ms of ``runs`` calls of ``step`` after WARMUP untimed ones."""
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - start))
    p50, p90 = np.percentile(times, [50, 90])
    return float(p50), float(p90)


def load_sessions(rows: list[dict[str, Any]], threads: int) -> dict[int, Session]:
    """Row index -> session for each runnable row; a row whose artifact cannot load says why instead."""
    sessions = {}
    for i, row in enumerate(rows):
        if row.get("status") != VERIFIED:
            continue
        try:
            sessions[i] = load_session(Path(row["path"]), threads=threads)
        except Exception as error:
            row["latency"] = f"load failed: {str(error).strip().splitlines()[0]}"
        else:
            row["threads_applied"] = getattr(sessions[i], "threads_applied", True)
    return sessions


@torch.no_grad()
def measure_latency(work: Workload, rows: list[dict[str, Any]], args: argparse.Namespace) -> list[float]:
    """Fill each runnable row's ``p50_speedup``/``p90_speedup`` (PyTorch ms / artifact ms, median over
    rounds, each artifact timed right after PyTorch); returns every PyTorch p50 ms taken."""
    example = work.shipment.example  # (1, seq) each
    feed = {k: v.numpy() for k, v in example.items()}
    sessions = load_sessions(rows, args.threads)  # once, outside the timed loop
    ratios: dict[int, list[tuple[float, float]]] = {i: [] for i in sessions}
    eager_ms = []
    keys = list(sessions)
    for r in range(args.rounds):
        shift = r % len(keys) if keys else 0
        for i in keys[shift:] + keys[:shift]:  # rotated: no artifact always runs first or last
            eager = time_ms(lambda: work.model(**example), args.runs)
            artifact = time_ms(lambda i=i: run_session(sessions[i], feed), args.runs)
            ratios[i].append((eager[0] / artifact[0], eager[1] / artifact[1]))
            eager_ms.append(eager[0])
    for i, values in ratios.items():
        rows[i]["p50_speedup"] = round(statistics.median(v[0] for v in values), 3)
        rows[i]["p90_speedup"] = round(statistics.median(v[1] for v in values), 3)
        rows[i]["latency"] = "measured"
    return eager_ms


def measure(work: Workload, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Ship every pair, then time every runnable artifact beside PyTorch eager: the result object."""
    pairs = wanted_pairs(args)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        rows = []
        for target, precision in pairs:
            started = time.perf_counter()
            rows.append(ship_row(work, target, precision, out))
            rows[-1]["ship_seconds"] = round(time.perf_counter() - started, 1)
            say(f"{target} {precision}: {rows[-1].get('status') or rows[-1]['error']} "
                f"({rows[-1]['ship_seconds']:.0f} s)")  # fmt: skip
        say(f"timing {args.rounds} rounds x {args.runs} runs beside PyTorch eager ...")
        eager_ms = measure_latency(work, rows, args)
    metric = work.shipment.metric
    pytorch = {
        "weights_bytes": work.weights_bytes,
        "metric": metric.name if metric else "top-1 agreement",
        "metric_value": next(
            (r["metric_pytorch"] for r in rows if r.get("metric_pytorch") is not None), None
        ),
        "eager_p50_ms_median": round(statistics.median(eager_ms), 3) if eager_ms else None,
    }
    return {"workload": workload_info(work, args), "pytorch": pytorch, "rows": rows}


def workload_info(work: Workload, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "student": work.name, "profile": work.profile.name if work.profile else None,
        "example_shape": {k: list(v.shape) for k, v in work.shipment.example.items()},
        "verified_on": len(next(iter(work.shipment.held_out.values()))),
        "threads": args.threads, "rounds": args.rounds, "runs": args.runs,
        "latency": "batch 1; per round each artifact right after PyTorch eager fp32, order rotated; "
        "median over rounds of PyTorch ms / artifact ms",
        "host": host_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
    }  # fmt: skip


def host_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(result: dict[str, Any], console: Console) -> None:
    """The table: one row per (target, precision), ratios to PyTorch eager fp32."""
    w, pt = result["workload"], result["pytorch"]
    table = Table(
        title=f"Targets vs PyTorch eager fp32: {w['student']}, {w['threads']} threads, {w['rounds']} rounds "
        f"x {w['runs']} runs",
        caption=f"PyTorch fp32: {pt['weights_bytes'] / 2**20:.2f} MB, {pt['metric']} "
        f"{cell(pt['metric_value'], '.4f')}, eager p50 {cell(pt['eager_p50_ms_median'], '.2f')} ms; "
        f"speed-up = PyTorch ms / artifact ms (> 1: faster); {w['host']}; {result['wall_seconds']:.0f} s",
    )  # fmt: skip
    for column in ("target", "precision", "MB", "size", "p50 speed-up", "p90 speed-up", "metric", "Δ pts",
                   "max abs diff", "status"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("target", "precision", "status") else "right")
    errors = [r for r in result["rows"] if "error" in r]
    for r in result["rows"]:
        if "error" in r:
            table.add_row(r["target"], r["precision"], *["-"] * 7, f"failed [{errors.index(r) + 1}]")
            continue
        measured = r["latency"] == "measured"
        table.add_row(
            r["target"], r["precision"], f"{r['size_mb']:.2f}", f"{r['size_ratio']:.2f}x",
            f"{r['p50_speedup']:.2f}x" if measured else r["latency"],
            f"{r['p90_speedup']:.2f}x" if measured else r["latency"],
            cell(r["metric_artifact"], ".4f"), cell(r["metric_diff_points"], "+.2f"),
            cell(r["max_abs_diff"], ".2g"), r["status"],
        )  # fmt: skip
    console.print(table)
    for i, r in enumerate(errors, 1):
        console.print(f"[{i}] {r['target']} {r['precision']}: {r['error']}", highlight=False, markup=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--student", type=Path, help="a run's student folder (default: the demo job's)")
    parser.add_argument("--run-dir", type=Path, default=DEMO_RUN, help="where the demo job runs, if needed")
    parser.add_argument("--targets", nargs="+", help="default: every registered target")
    parser.add_argument("--precisions", nargs="+", help="default: every precision each target offers")
    parser.add_argument("--pairs", nargs="+", metavar="TARGET:PRECISION", help="exactly these pairs")
    parser.add_argument("--rounds", type=int, help="rotated timing rounds (default 5; --tiny: 2)")
    parser.add_argument("--runs", type=int, help="timed calls per block (default 30; --tiny: 5)")
    parser.add_argument("--threads", type=int, help="one thread count for all (default: cores; --tiny: 1)")
    parser.add_argument("--out", type=Path, help="keep the bundles here (default: a temporary folder)")
    parser.add_argument("--tiny", action="store_true", help="a tiny trained model: a smoke run in seconds")
    parser.add_argument("--json", action="store_true", help="print a JSON envelope instead of the table")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.tiny else 5)
    args.runs = args.runs or (5 if args.tiny else 30)
    args.threads = args.threads or (1 if args.tiny else os.cpu_count() or 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    width = None if sys.stdout.isatty() else 160  # a pipe or a file: rich would wrap at 80 columns
    console, status = Console(stderr=args.json, width=width), Console(stderr=True)
    started, load = time.perf_counter(), os.getloadavg()[0]
    say = lambda text: status.print(text, highlight=False)  # noqa: E731
    # Library chatter goes to stderr, so that --json leaves stdout to the envelope alone.
    with contextlib.redirect_stdout(sys.stderr):
        if args.tiny:
            work = tiny_workload()
        else:
            work = student_workload(args.student or demo_student(args.run_dir, say))
        result = measure(work, args, say)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["workload"]["load_average_1min"] = {"start": round(load, 2), "end": round(os.getloadavg()[0], 2)}
    if args.json:
        print(json.dumps({"schema": SCHEMA, "benchmark": "targets", "result": result}, indent=2))
    else:
        render(result, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
