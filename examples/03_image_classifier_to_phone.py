"""An image classifier for a phone: distil a CNN on digits, ship it to ExecuTorch and LiteRT for a Pixel 8.

Run: python examples/03_image_classifier_to_phone.py [--out DIR]   (offline; about 25 s on 2 cores)
     python examples/03_image_classifier_to_phone.py --quick       (fewer epochs, fp32 only: 15 s; CI)

The command line reads text only, so image models go through the Python API, step by step:

1. data: scikit-learn's 1,797 8x8 handwritten digits, upsampled to 16x16 and split 80/10/10
   (``edge_distill.vision.digits_images``);
2. teacher: a plain-torch CNN (``SmallCNN``, 16-32-64 channels) trained here with cross-entropy;
3. student: the same CNN at a quarter of the width (``cnn_student``: the teacher's first channels of every
   block), distilled with ``edge_distill.distill`` from the teacher's soft targets, the labels, and the
   last block's feature map (a learned projection from 16 to 64 channels, compared at every position);
4. shipping: ``edge_distill.shipping.ship`` exports the student to ExecuTorch (``.pte``, XNNPACK) and LiteRT
   (``.tflite``), in fp32 and int8 (static, calibrated on validation images), each loaded back in its
   runtime and checked against PyTorch on the test split (fp32 within 1e-4, int8 within 1 point of
   accuracy; a bundle that does not verify is not written);
5. the budget: each bundle's size against the ``pixel-8`` profile's, and its latency and peak memory
   **predicted** for the phone from the profile's published throughput (``edge_distill.predictor``; no
   phone was connected, so nothing here was timed on one).

It prints the accuracy of teacher and student, their parameters, each bundle's size and verification,
the predicted latency and memory on the Pixel 8 against its budget, and (``--json``) one JSON object.
Measured on 2 shared cores (full run, 25 s): teacher 0.967 and student 0.972 test accuracy (181 images) with
14x fewer parameters (24,346 vs 1,774); all four bundles verified at 0.972; p90 0.14 ms predicted on the
Pixel 8 (a per-call overhead, mostly: the model is tiny), 13 KB: within its 20 ms, 256 MB, 50 MB budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import edge_distill
from edge_distill.predictor import Predictor, model_features, prior_for
from edge_distill.profiles import DeviceProfile, load_profile
from edge_distill.shipping import ShipData, ship
from edge_distill.targets.base import Metric
from edge_distill.trainer import TrainSettings
from edge_distill.vision import (
    DIGITS_MEAN,
    DIGITS_STD,
    SmallCNN,
    accuracy,
    cnn_student,
    digits_images,
    fit_classifier,
)

PROFILE = "pixel-8"
TARGETS = ("executorch", "tflite")  # both among pixel-8's targets
SIZE = 16  # pixels per side after upsampling the 8x8 digits
PRESETS = {
    "full": {"teacher_epochs": 8, "epochs": 20, "precisions": ("fp32", "int8")},
    "quick": {"teacher_epochs": 4, "epochs": 6, "precisions": ("fp32",)},
}


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_pair(epochs: tuple[int, int], seed: int) -> tuple[SmallCNN, SmallCNN, dict, dict]:
    """A trained teacher and the student distilled from it; the val and test splits."""
    train, val, test = digits_images(seed, size=SIZE)  # pixel_values (n, 3, 16, 16), labels (n,)
    torch.manual_seed(seed)
    teacher = fit_classifier(SmallCNN(channels=(16, 32, 64)), train, epochs=epochs[0], lr=3e-3, seed=seed)
    student = cnn_student(teacher, 0.25)  # channels 4-8-16, initialised from the teacher's first channels
    edge_distill.distill(
        teacher,
        student,
        train,
        losses={
            "kd": {"weight": 0.7, "temperature": 4.0},
            "ce": 0.3,
            # the last block's map: student (16 ch) -> teacher (64 ch) through a learned projection
            "hidden_mse": {"weight": 0.2, "layers": [("blocks.2", "blocks.2")]},
        },
        val_data=val,
        settings=TrainSettings(epochs=epochs[1], batch_size=32, lr=1e-2, seed=seed, mixed_precision="no"),
        cache=False,  # the teacher's outputs are kept in memory: the data is tiny
    )
    return teacher.eval(), student.eval(), val, test


def ship_data(val: dict, test: dict) -> ShipData:
    """What every bundle shares: calibration rows from val, verification on test with its accuracy."""
    labels = test["labels"].numpy()
    return ShipData(
        example={"pixel_values": test["pixel_values"][:1]},  # (1, 3, 16, 16)
        calibration={"pixel_values": val["pixel_values"][:64]},
        held_out={"pixel_values": test["pixel_values"]},
        metric=Metric("accuracy", lambda out: float(np.mean(np.argmax(out, axis=-1) == labels))),
        preprocess={
            "kind": "image",
            "size": [SIZE, SIZE],
            "channels": "grey replicated to RGB, values in [0, 1]",
            "normalize": {"mean": DIGITS_MEAN, "std": DIGITS_STD},
        },
        label_names=tuple(str(d) for d in range(10)),
    )


def predicted(student: torch.nn.Module, profile: DeviceProfile, target: str, precision: str) -> dict:
    """Latency and peak memory on the phone, predicted from the profile's figures (not measured)."""
    features = model_features(student, {"pixel_values": torch.zeros(1, 3, SIZE, SIZE)}, precision)
    predictor = Predictor(f"profile:{profile.name}", target, precision, prior_for(profile, precision), None)
    guess = predictor.predict(features)
    return {
        "p90_ms": round(guess.p90_ms, 3),
        "memory_mb": round(guess.memory_mb, 1),
        "error": guess.latency_error,
        "source": f"predicted ({guess.source})",
    }


def judge(meta: dict, guess: dict, profile: DeviceProfile) -> dict[str, Any]:
    """The bundle against the profile's budget: size from the file, latency and memory predicted."""
    budget = profile.budget
    checks = {
        "size_mb": (meta["size_mb"], budget.size_mb),
        "latency_ms": (guess["p90_ms"], budget.latency_ms),
        "memory_mb": (guess["memory_mb"], budget.memory_mb),
    }
    return {k: {"value": v, "limit": limit, "fits": v <= limit} for k, (v, limit) in checks.items()}


def shipped(
    student: torch.nn.Module,
    target: str,
    precision: str,
    shipment: ShipData,
    profile: DeviceProfile,
    out: Path,
) -> dict[str, Any]:
    """Ship one bundle (exported, reloaded in its runtime, verified) and judge it against the budget."""
    meta = ship(student, target, precision, out, shipment, profile=profile)
    guess = predicted(student, profile, target, precision)
    checks = judge(meta, guess, profile)
    verification = meta["verification"]
    return {
        "target": target,
        "precision": precision,
        "path": str(out / f"{target}-{precision}" / meta["file"]),
        "size_mb": meta["size_mb"],
        "verification": {k: verification[k] for k in ("status", "max_abs_diff", "n")}
        | {"accuracy": verification["metric_artifact"], "pytorch": verification["metric_pytorch"]},
        "predicted": guess,
        "budget": checks,
        "fits": all(c["fits"] for c in checks.values()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    torch.set_num_threads(1)  # convolutions this small run several times faster on one thread
    preset = PRESETS["quick" if args.quick else "full"]
    profile = load_profile(PROFILE)
    teacher, student, val, test = train_pair((preset["teacher_epochs"], preset["epochs"]), args.seed)
    shipment = ship_data(val, test)
    bundles = [
        shipped(student, target, precision, shipment, profile, args.out)
        for target in TARGETS
        for precision in preset["precisions"]
    ]
    return {
        "profile": PROFILE,
        "budget": {k: v["value"] for k, v in profile.budget.as_dict().items()},
        "teacher": {"params": params(teacher), "test_accuracy": round(accuracy(teacher, test), 4)},
        # the student's accuracy on the same test images the bundles were verified on
        "student": {
            "params": params(student),
            "test_accuracy": round(bundles[0]["verification"]["pytorch"], 4),
        },
        "bundles": bundles,
        "seconds": round(time.perf_counter() - started, 1),
    }


def summary(result: dict[str, Any]) -> str:
    t, s = result["teacher"], result["student"]
    lines = [
        f"teacher: SmallCNN 16-32-64, {t['params']:,} params, test accuracy {t['test_accuracy']:.3f}",
        f"student: SmallCNN 4-8-16, {s['params']:,} params ({t['params'] / s['params']:.0f}x fewer), "
        f"test accuracy {s['test_accuracy']:.3f}",
    ]
    for b in result["bundles"]:
        v, p, c = b["verification"], b["predicted"], b["budget"]
        lines.append(
            f"{b['target']} {b['precision']}: {b['path']} {b['size_mb']:.3f} MB, {v['status']} on {v['n']} "
            f"test images (max abs diff {v['max_abs_diff']:.1e}, accuracy {v['accuracy']:.3f})"
        )
        lines.append(
            f"  on {result['profile']}: p90 {p['p90_ms']:.3f} ms (+-{p['error']:.0%}) and "
            f"{p['memory_mb']:.0f} MB {p['source']}; budget {c['latency_ms']['limit']:g} ms, "
            f"{c['memory_mb']['limit']:g} MB, {c['size_mb']['limit']:g} MB -> "
            f"{'fits' if b['fits'] else 'misses'}"
        )
    return "\n".join([*lines, f"wall time {result['seconds']} s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs (CI)")
    parser.add_argument("--out", type=Path, default=Path("runs/image-pixel-8"), help="where the bundles go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} already holds files; pass another --out")
    result = run(args)
    print(json.dumps(result) if args.json else summary(result))


if __name__ == "__main__":
    main()
