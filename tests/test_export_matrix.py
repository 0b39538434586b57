"""Every registered target x every precision it offers, on tiny models of each family: what ships is verified.

The trained tiny classifier goes through every precision (quantized ones are judged by accuracy within
1 point of fp32). The other families, random and untrained, go through each target's default precision:
their near-tie outputs say nothing about quantization. Runtimes that cannot run on this host are listed
explicitly in CANNOT_RUN_HERE: their artifacts must come back ``unverified on this host``, never verified.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from export_models import classifier_ship_data
from family_models import embedding_folder, llama_folder, texts, vit_folder

from edge_distill.cut import export_module
from edge_distill.families import get_family
from edge_distill.shipping import ShipData, ship
from edge_distill.targets.base import TARGETS, UNVERIFIED, VERIFIED, get_target
from edge_distill.teachers import load_teacher

# target -> the precisions it must offer (the first is its default). Every registered target needs one.
CASES = {
    "onnx": ("fp32", "int8-dynamic", "int8"),
    "executorch": ("fp32", "int8", "int8-dynamic"),
    "executorch-coreml": ("fp16", "fp32"),
    "tflite": ("fp32", "fp16", "int8-dynamic", "int8"),
    "coreml": ("fp16", "fp32", "int8", "palettized"),
}
# The expected failures: targets whose runtime runs only on the named platform (Core ML needs macOS).
CANNOT_RUN_HERE = {"coreml": "darwin", "executorch-coreml": "darwin"}
SEQ = 16


def runs_here(target: str) -> bool:
    return CANNOT_RUN_HERE.get(target, sys.platform) == sys.platform


@pytest.mark.parametrize("name", TARGETS.names())
def test_every_registered_target_has_a_case(name: str) -> None:
    assert name in CASES, f"add the registered target {name!r} to CASES with its precisions"
    assert get_target(name).precisions == CASES[name]


def test_every_case_is_registered() -> None:
    assert set(CASES) <= set(TARGETS.names())


def check_shipped(meta: dict, target: str, precision: str, bundle: Path) -> None:
    verification = meta["verification"]
    if runs_here(target):
        assert verification["status"] == VERIFIED, verification
    else:  # an expected failure: the runtime cannot run here, and the artifact says so
        assert verification["status"] == UNVERIFIED and verification["reason"]
        assert verification["max_abs_diff"] is None
    assert (bundle / meta["file"]).exists() and meta["size_bytes"] > 0
    assert json.loads((bundle / "metadata.json").read_text())["precision"] == precision
    assert meta["signature"]["inputs"] and meta["signature"]["outputs"]


CLASSIFIER_PAIRS = [(t, p) for t in CASES for p in CASES[t]]
CLASSIFIER_IDS = [f"{t}-{p}" for t, p in CLASSIFIER_PAIRS]


@pytest.mark.parametrize(("target", "precision"), CLASSIFIER_PAIRS, ids=CLASSIFIER_IDS)
def test_classifier_ships_verified(target: str, precision: str, tmp_path: Path) -> None:
    if not get_target(target).available():
        pytest.fail(f"{target}'s exporter is not installed: the project's dependencies install it")
    model, data = classifier_ship_data()
    meta = ship(model, target, precision, tmp_path, data)
    bundle = tmp_path / f"{target}-{precision}"
    check_shipped(meta, target, precision, bundle)
    verification = meta["verification"]
    if verification["status"] == VERIFIED:
        assert verification["metric"] == "accuracy"
        assert verification["metric_artifact"] >= verification["metric_pytorch"] - 0.01
        if precision == "fp32":
            assert verification["max_abs_diff"] <= 1e-4 and verification["top1_agreement"] == 1.0
    assert json.loads((bundle / "labels.json").read_text()) == ["low", "mid", "high"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{target}-{precision}"]  # nothing else left


def text_family_shipment(folder: Path) -> tuple[torch.nn.Module, ShipData]:
    teacher = load_teacher(folder)
    family = get_family(teacher.task)
    words, _ = texts(24, seed=3)
    inputs = family.encode(teacher.tokenizer, words, SEQ)
    inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    data = ShipData(
        example={k: v[:1] for k, v in inputs.items()},
        calibration={k: v[:8] for k, v in inputs.items()},
        held_out={k: v[8:] for k, v in inputs.items()},
        metric=None,
        preprocess={"kind": "text", "sequence_length": SEQ},
        tokenizer=teacher.tokenizer,
        top1=family.name != "sentence-embedding",
    )
    return export_module(family, teacher.model), data


def vit_shipment(folder: Path) -> tuple[torch.nn.Module, ShipData]:
    teacher = load_teacher(folder)
    pixels = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # (n, C, H, W)
    data = ShipData(
        example={"pixel_values": pixels[:1]},
        calibration={"pixel_values": pixels[:4]},
        held_out={"pixel_values": pixels[4:]},
        metric=None,
        preprocess={"kind": "image", "size": [16, 16]},
    )
    return export_module(get_family(teacher.task), teacher.model), data


FAMILIES = {
    "sentence-embedding": lambda d: text_family_shipment(embedding_folder(d)),
    "causal-lm": lambda d: text_family_shipment(llama_folder(d)),
    "image-classification": lambda d: vit_shipment(vit_folder(d)),
}
FAMILY_PAIRS = [(f, t) for f in FAMILIES for t in CASES]


@pytest.mark.parametrize(("family", "target"), FAMILY_PAIRS, ids=[f"{f}-{t}" for f, t in FAMILY_PAIRS])
def test_other_families_ship_in_the_default_precision(family: str, target: str, tmp_path: Path) -> None:
    model, data = FAMILIES[family](tmp_path / "teacher")
    precision = CASES[target][0]
    meta = ship(model, target, precision, tmp_path / "out", data)
    check_shipped(meta, target, precision, tmp_path / "out" / f"{target}-{precision}")
    verification = meta["verification"]
    if verification["status"] == VERIFIED and precision == "fp32":
        assert verification["max_abs_diff"] <= 1e-4
    if family == "sentence-embedding" and verification["status"] == VERIFIED:
        assert verification["top1_agreement"] is None and verification["metric"] == "cosine similarity"
        assert np.isclose(verification["metric_artifact"], 1.0, atol=1e-3)
