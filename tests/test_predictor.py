"""The cost model's counts, its calibrated fit, and the calibration file every measurement goes into."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from edge_distill import predictor as pred
from edge_distill.cost import count_flops
from edge_distill.predictor import CalibrationStore, Features, Point, Predictor, Prior, model_features

SEQ = 16


def bert(vocab: int, hidden: int = 32, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=4 * hidden, max_position_embeddings=64, num_labels=3,
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


def example() -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.randint(5, 90, (1, SEQ)),
        "attention_mask": torch.ones(1, SEQ, dtype=torch.long),
    }


def test_features_count_flops_weights_and_only_the_gathered_embedding_rows() -> None:
    small, large = bert(100), bert(20_000)
    f_small, f_large = model_features(small, example()), model_features(large, example())
    assert f_small.flops == count_flops(small, example())
    params = sum(p.numel() for p in small.parameters())
    assert f_small.params == params and f_small.weight_bytes == params * 4
    # the bigger table is 19,900 x 32 fp32 more weights, but a lookup of 16 tokens reads 16 rows of either
    extra_table = (20_000 - 100) * 32 * 4
    assert f_large.weight_bytes - f_small.weight_bytes == extra_table
    assert abs(f_large.moved_bytes - f_small.moved_bytes) < extra_table / 100
    assert f_small.moved_bytes > f_small.weight_bytes - 100 * 32 * 4  # every other weight is read once
    assert 0 < f_small.peak_activation_bytes < f_small.moved_bytes
    int8 = model_features(small, example(), "int8")
    assert (
        int8.weight_bytes == params and int8.flops == f_small.flops and int8.moved_bytes < f_small.moved_bytes
    )


def features(gflops: float, moved_mb: float, weights_mb: float = 10.0, kernels: int = 0) -> Features:
    moved = int(moved_mb * 1e6)  # all of it activations: the weights read are in the FLOPs' kernels here
    return Features(int(gflops * 1e9), moved, int(weights_mb * 2**20), 2**20, 1000, kernels, moved)


def truth(f: Features) -> float:
    """A device with 100 GFLOPS and 20 GB/s for activations."""
    return f.flops / 1e8 + f.activation_bytes / 2e7


def point(f: Features, device: str = "dev", p50: float | None = None, memory: float | None = None) -> Point:
    p50 = truth(f) if p50 is None else p50
    memory = 40 + 1.5 * f.weight_bytes / 2**20 + 1 if memory is None else memory
    return Point(device, "onnx", "fp32", f, p50, p50 * 1.2, memory, "measured-host")


def test_three_measurements_calibrate_a_far_off_prior() -> None:
    prior = Prior(gflops=10.0, bandwidth_gbs=2.0)  # 10x too slow on both
    model = Predictor("dev", "onnx", "fp32", prior, store=None)
    unseen = features(0.7, 30, 40)
    before = model.predict(unseen)
    assert before.source.endswith("uncalibrated") and before.latency_error == pred.UNCALIBRATED_ERROR
    assert before.p50_ms > 3 * truth(unseen)
    for f in (features(0.1, 5, 5), features(0.5, 50, 20), features(2.0, 20, 80)):
        model.observe(point(f))
    after = model.predict(unseen)
    assert after.p50_ms == pytest.approx(truth(unseen), rel=1e-6)
    assert after.p90_ms == pytest.approx(after.p50_ms * 1.2, rel=1e-6)  # the measured p90/p50 spread
    assert after.memory_mb == pytest.approx(40 + 1.5 * 40 + 1, rel=0.02)  # weights x 1.5 + activations
    assert after.source == "calibrated on 3 measurements of dev"
    assert after.latency_error == pred.UNCALIBRATED_ERROR  # too few points for a leave-one-out interval
    coefficients = model.coefficients()
    assert coefficients["effective_gflops"] == pytest.approx(100, rel=1e-6)
    assert coefficients["activation_bandwidth_gbs"] == pytest.approx(20, rel=1e-6)
    for f in (features(1.0, 10, 30), features(0.3, 30, 10)):
        model.observe(point(f, p50=truth(f) * 1.04))  # a little timing noise
    assert 0.05 <= model.predict(unseen).latency_error < 0.2  # now from leave-one-out errors


def test_coefficients_are_earned_one_point_at_a_time() -> None:
    prior = Prior(gflops=50.0, bandwidth_gbs=10.0)
    model = Predictor("dev", "onnx", "fp32", prior, store=None)
    first = features(0.5, 20, kernels=60)
    model.observe(point(first, p50=7.0))
    assert model.predict(first).p50_ms == pytest.approx(7.0)  # one point: the prior's shape, scaled to it
    assert model.coefficients()["per_kernel_ms"] > 0
    model.observe(point(features(1.0, 20, kernels=60), p50=12.0))
    two = model.coefficients()  # two points: FLOPs alone, one point more than unknowns
    assert two["per_kernel_ms"] == 0 and two["overhead_ms"] == 0
    assert two["activation_bandwidth_gbs"] == math.inf and two["effective_gflops"] > 0


def test_a_fit_never_goes_negative() -> None:
    model = Predictor("dev", "onnx", "fp32", Prior(gflops=50.0, bandwidth_gbs=10.0), store=None)
    # noisy measurements where the larger model came out faster: no coefficient may turn negative
    model.observe(point(features(0.2, 10), p50=5.0))
    model.observe(point(features(1.0, 10), p50=4.0))
    assert all(v >= 0 for v in model.coefficients().values())
    assert model.predict(features(0.5, 10)).p50_ms > 0


def test_store_keeps_points_per_key_across_processes(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "calibration.json"
    store = CalibrationStore(path)
    store.add(point(features(0.1, 5)))
    store.add(point(features(0.2, 5), device="other"))
    again = CalibrationStore(path)  # a later run reads what the earlier one stored
    assert [p.features for p in again.points("dev", "onnx", "fp32")] == [features(0.1, 5)]
    assert len(again.points("other", "onnx", "fp32")) == 1 and not again.points("dev", "tflite", "fp32")
    assert json.loads(path.read_text())["schema"] == pred.SCHEMA
    monkeypatch.setattr(pred, "KEEP_PER_KEY", 2)
    for gflops in (0.3, 0.4, 0.5):
        store.add(point(features(gflops, 5)))
    kept = [p.features.flops for p in store.points("dev", "onnx", "fp32")]
    assert kept == [int(0.4e9), int(0.5e9)]  # the newest per key; the other key untouched
    assert len(store.points("other", "onnx", "fp32")) == 1


def test_a_damaged_calibration_file_calibrates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text("{not json")
    store = CalibrationStore(path)
    assert store.points("dev", "onnx", "fp32") == []
    store.add(point(features(0.1, 5)))  # and the next measurement replaces it with a good one
    assert len(CalibrationStore(path).points("dev", "onnx", "fp32")) == 1


def test_predictor_writes_through_its_store(tmp_path: Path) -> None:
    store = CalibrationStore(tmp_path / "calibration.json")
    model = Predictor("dev", "onnx", "fp32", Prior(gflops=50.0, bandwidth_gbs=10.0), store)
    model.observe(point(features(0.1, 5)))
    fresh = Predictor(
        "dev", "onnx", "fp32", Prior(gflops=50.0, bandwidth_gbs=10.0), CalibrationStore(store.path)
    )
    assert fresh.predict(features(0.2, 5)).points == 1
    with pytest.raises(ValueError):
        model.observe(point(features(0.1, 5), device="elsewhere"))
