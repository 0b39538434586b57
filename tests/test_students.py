"""Student space, layer mapping, teacher initialisation, and cost figures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, GPT2Config

from edge_distill.cost import LatencyModel, Measurement, MobileNetV1, artifact_mb, count_flops, count_params
from edge_distill.cut import Cutter
from edge_distill.devices import LatencyProfile
from edge_distill.errors import TeacherError
from edge_distill.families import get_family
from edge_distill.planner import cost_candidates, model_cost
from edge_distill.predictor import Features, Predictor, Prior
from edge_distill.students import build_student, layer_map, student_space, teacher_spec


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir: Path) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()


def test_layer_map_spreads_and_keeps_last() -> None:
    assert layer_map(6, 3) == [1, 3, 5]
    assert layer_map(6, 2) == [2, 5]
    assert layer_map(6, 1) == [5]
    assert layer_map(4, 4) == [0, 1, 2, 3]


def test_space_is_strictly_smaller_and_sorted(teacher: torch.nn.Module) -> None:
    space = student_space(teacher.config)
    full = teacher_spec(teacher.config)
    assert full not in space
    assert all(s.layers <= full.layers and s.hidden <= full.hidden for s in space)
    assert all(s.hidden % s.heads == 0 and s.hidden // s.heads == full.hidden // full.heads for s in space)
    sizes = [s.layers * s.hidden for s in space]
    assert sizes == sorted(sizes, reverse=True)


def test_full_width_student_copies_teacher_layers(teacher: torch.nn.Module) -> None:
    spec = next(s for s in student_space(teacher.config) if s.hidden == 64 and s.layers == 2)
    student = build_student(teacher, spec)
    t, s = teacher.state_dict(), student.state_dict()
    # student layer 1 is teacher layer 3 (layer_map(4, 2) == [1, 3])
    assert torch.equal(
        s["bert.encoder.layer.1.output.dense.weight"], t["bert.encoder.layer.3.output.dense.weight"]
    )
    assert torch.equal(
        s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"]
    )
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])


def test_narrow_student_is_sliced_from_teacher(teacher: torch.nn.Module) -> None:
    spec = next(s for s in student_space(teacher.config) if s.hidden == 32 and s.layers == 4)
    student = build_student(teacher, spec)
    t, s = teacher.state_dict(), student.state_dict()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert s[key].shape == (32, 32)
    assert torch.equal(s[key], t[key][:32, :32])
    out = student(input_ids=torch.ones(2, 8, dtype=torch.long)).logits
    assert out.shape == (2, 3)


def test_unsupported_family_is_a_clear_error() -> None:
    with pytest.raises(TeacherError, match="gpt2"):
        student_space(GPT2Config())


def test_flops_counted_by_torch_counter() -> None:
    linear = torch.nn.Sequential(torch.nn.Linear(10, 20, bias=False))
    assert count_flops(linear, {"input": torch.ones(3, 10)}) == 2 * 3 * 10 * 20


def test_reference_workload_is_mobilenet_v1_sized() -> None:
    model = MobileNetV1().eval()
    flops = count_flops(model, {"pixels": torch.randn(1, 3, 224, 224)})
    assert 4.1e6 < count_params(model) < 4.3e6  # the paper's 4.2M
    assert 1.1e9 < flops < 1.2e9  # 569M multiply-adds, two FLOPs each


def test_candidates_cost_fewer_flops_and_params_than_teacher(teacher: torch.nn.Module) -> None:
    features = model_cost(teacher, 32)
    params, flops = features.params, features.flops
    keep = torch.arange(0, teacher.config.vocab_size, 3)  # a domain using a third of the vocabulary
    cutter = Cutter(teacher, get_family("sequence-classification"), keep=keep, unk_id=0)
    candidates = cost_candidates(cutter, seq_len=32)
    assert all(c.params < params and c.flops <= flops for c in candidates)
    assert all(c.features is not None and c.features.flops == c.flops for c in candidates)
    assert any(c.spec.vocab == len(keep) for c in candidates)
    assert artifact_mb(params) == pytest.approx(params * 4 / 2**20)


def test_candidate_costs_are_read_back_from_their_cache(
    teacher: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge_distill.planner as planner

    cutter = Cutter(teacher, get_family("sequence-classification"))
    cache = tmp_path / "costs.json"
    counted = cost_candidates(cutter, seq_len=32, cache=cache)
    monkeypatch.setattr(planner, "model_cost", lambda *a: pytest.fail("traced again despite the cache"))
    assert cost_candidates(cutter, seq_len=32, cache=cache) == counted


def timing(p50: float, p90: float, memory: float) -> LatencyProfile:
    return LatencyProfile(p50, p90, p90 * 1.1, p50, 50, 10, 5.0, memory, 1.0, 2, "onnxruntime", "1.31.1")


def test_latency_model_uses_measurements_then_scaled_calibrated_predictions() -> None:
    host = Predictor("host:test|2 threads", "onnx", "fp32", Prior(gflops=50.0, bandwidth_gbs=10.0), None)
    model = LatencyModel(device_gflops=40.0, host=host)
    # flops, bytes moved, weight bytes, peak activation bytes, params
    big = Features(2_000_000_000, 200_000_000, 100 * 2**20, 0, 25_000_000)
    small = Features(1_000_000_000, 100_000_000, 50 * 2**20, 0, 12_500_000)
    measured = Measurement(big.flops, 20.0, 200.0, 100.0, 80.0, big.params)
    model.observe(measured, big, host=timing(18.0, 20.0, 200.0))
    assert host.points() and host.points()[0].p50_ms == 18.0  # the host predictor is calibrated by it
    # measured model: host p90 x (host reference speed / device speed)
    assert model.measured_ms(measured) == pytest.approx(40.0)
    # unmeasured: the host predictor's p90, scaled to the device by the reference ratio, with its source
    predicted = model.predict(small)
    assert predicted["latency_ms"] == pytest.approx(host.predict(small).p90_ms * 80.0 / 40.0)
    assert (
        "calibrated on 1 measurement" in predicted["source"] and "reference workload" in predicted["source"]
    )
    low, high = predicted["latency_interval_ms"]
    assert low < predicted["latency_ms"] < high
    # a later, exact measurement of the same shape wins over any prediction
    model.observe(
        Measurement(small.flops, 15.0, 90.0, 50.0, 60.0, small.params), small, host=timing(14, 15, 90)
    )
    assert model.exact(small.flops, small.params).host_ms == 15.0
    # a device's own measurements take over from the host's once there are any
    device = Predictor("ssh://pi@pi|4 threads", "onnx", "fp32", Prior(gflops=40.0, bandwidth_gbs=8.0), None)
    with_device = LatencyModel(device_gflops=40.0, host=host, device=device)
    with_device.observe(Measurement(big.flops, 20.0, 200.0, 100.0, 80.0, big.params, 55.0, 190.0), big,
                        host=timing(18, 20, 200), device=timing(50, 55, 190))  # fmt: skip
    assert with_device.measured_ms(with_device.measurements[-1]) == 55.0
    assert "ssh://pi@pi" in with_device.predict(small)["source"]
    # the host itself: no scaling
    assert LatencyModel(device_gflops=None).device_ms(12.0, 80.0) == 12.0


def test_a_run_corrects_predictions_by_its_nearest_measured_model() -> None:
    from edge_distill.predictor import Point

    host = Predictor("host:test|2 threads", "onnx", "fp32", Prior(gflops=50.0, bandwidth_gbs=10.0), None)
    for i in range(1, 6):  # calibration from earlier runs: tiny models, each as fast as the prior says
        tiny = Features(10_000_000 * i, 1_000_000 * i, 2**20 * i, 0, 100_000 * i)
        p = host.predict(tiny)
        host.observe(Point("host:test|2 threads", "onnx", "fp32", tiny, p.p50_ms, p.p90_ms, 50.0,
                           "measured-host", "1.31.1", 2))  # fmt: skip
    model = LatencyModel(device_gflops=None, host=host)
    big = Features(4_000_000_000, 400_000_000, 80 * 2**20, 0, 20_000_000)
    near = Features(3_000_000_000, 300_000_000, 60 * 2**20, 0, 15_000_000)
    before = model.predict(near)["latency_ms"]
    measured = 3 * host.predict(big).p90_ms  # this run's big model is three times slower than predicted
    model.observe(Measurement(big.flops, measured, 300.0, 80.0, 0.0, big.params), big,
                  host=timing(measured / 1.1, measured, 300.0))  # fmt: skip
    after = model.predict(near)
    ratio = measured / host.predict(big).p90_ms  # the error left on the measured model after refitting
    assert after["latency_ms"] == pytest.approx(host.predict(near).p90_ms * ratio, rel=1e-6)
    assert after["latency_ms"] > 1.5 * before and "as measured on this run's nearest model" in after["source"]
