"""The loop's decisions (edge_distill.search): cheap levers first, then shrink or grow, floors judged."""

from __future__ import annotations

import math

import pytest

from edge_distill.cost import LatencyModel, Measurement
from edge_distill.planner import Candidate, Option, misses
from edge_distill.profiles import Budget
from edge_distill.rounds import accelerator_share
from edge_distill.search import Accuracy, Search
from edge_distill.students import StudentSpec

FP32, INT8 = Option("onnx", "fp32"), Option("onnx", "int8")
TEACHER_FLOPS = 200_000_000


def candidate(layers: int, params: int, flops: int) -> Candidate:
    return Candidate(StudentSpec(layers, 64 * layers, 2, 128), params, flops)


LARGE, MEDIUM, SMALL = (
    candidate(6, 10_000_000, 100_000_000),
    candidate(4, 5_000_000, 50_000_000),
    candidate(2, 1_000_000, 10_000_000),
)


def search(latency_ms: float = 60.0, size_mb: float = 100.0, min_retention: float = 0.95) -> Search:
    """Unmeasured latency is FLOPs at 1 GFLOPS (fp32) and 2 GFLOPS (int8): 1 ms per MFLOP at fp32."""
    latencies = {FP32: LatencyModel(device_gflops=None), INT8: LatencyModel(device_gflops=None)}
    latencies[INT8].device_gflops = 2.0
    budget = Budget(latency_ms, 1000.0, size_mb, {}, min_retention=min_retention)
    return Search([LARGE, MEDIUM, SMALL], [FP32, INT8], latencies, Accuracy(TEACHER_FLOPS), budget)


def finished(s: Search, index: int, cand: Candidate, option: Option, **values: float) -> dict:
    """Record a measured round the way the loop does (its latency measured on this host)."""
    costs = {"latency_ms": values["latency_ms"], "memory_mb": 100.0, "size_mb": values.get("size_mb", 1.0)}
    costs["retention"] = values["retention"]
    missed = misses(costs, s.budget)
    record = {
        "round": index,
        "action": values.get("action", "distill"),
        "student_dir": f"rounds/round-{index}/student",
        "student": {**cand.spec.as_dict(), "params": cand.params},
        "retention": values["retention"],
        "fits_budget": not [m for m in missed if not m.floor],
        "fits": not missed,
        "misses": [m.as_dict() for m in missed],
        "miss_sentences": [m.sentence for m in missed],
        "budget_used": 0.3,
    }
    measurement = Measurement(cand.flops, values["latency_ms"], 100.0, costs["size_mb"], 0.0, cand.params)
    s.latencies[option].observe(measurement)
    s.tried.add(cand.spec, option, record, cand)
    s.accuracy.observe(cand, option.precision, values["retention"])
    return record


def test_first_round_has_the_best_predicted_accuracy_per_budget() -> None:
    # LARGE misses at fp32 (100 ms) but fits at int8 (50 ms): one point of int8 costs less accuracy than
    # halving the student, so the larger student at int8 comes first
    action = search().next_action()
    assert (action.kind, action.candidate, action.option) == ("distill", LARGE, INT8)
    assert action.predicted["retention"] > search().forecast(MEDIUM, FP32)["retention"]
    assert "predicted" in action.why


def test_a_measured_miss_takes_the_cheap_lever_before_retraining() -> None:
    s = search(latency_ms=120.0)
    assert s.next_action().option == FP32  # LARGE fits at fp32 by prediction
    finished(s, 1, LARGE, FP32, latency_ms=130.0, retention=0.99)  # measured: over by 10 ms
    action = s.next_action()
    assert (action.kind, action.candidate, action.option, action.from_round) == (
        "lower-precision", LARGE, INT8, 1,
    )  # fmt: skip
    assert action.predicted["retention"] == pytest.approx(0.98)  # measured fp32 minus int8's point
    assert "round 1" in action.why and "over" in action.why


def test_with_no_cheap_lever_left_the_loop_shrinks() -> None:
    s = search(latency_ms=120.0)
    s.options = [FP32]
    finished(s, 1, LARGE, FP32, latency_ms=130.0, retention=0.99)
    action = s.next_action()
    assert (action.kind, action.candidate) == ("shrink", MEDIUM)


def test_a_fitting_student_under_the_floor_with_room_to_spare_grows() -> None:
    s = search(latency_ms=120.0)
    s.options = [FP32]
    s.tried.ceilings[FP32] = {"flops": LARGE.flops}  # LARGE was ruled out at fp32 earlier
    finished(s, 1, SMALL, FP32, latency_ms=10.0, retention=0.9)
    action = s.next_action()
    assert (action.kind, action.candidate) == ("grow", MEDIUM)
    assert "under the 95% floor" in action.why


def test_nothing_left_that_could_beat_what_fits_ends_the_search() -> None:
    s = search(latency_ms=15.0)
    s.options = [FP32]
    finished(s, 1, SMALL, FP32, latency_ms=10.0, retention=0.9)
    assert s.next_action() is None  # the others are predicted to miss latency
    assert s.best_fitting() == pytest.approx(0.9)


def test_retention_prior_is_refitted_on_measured_students() -> None:
    accuracy = Accuracy(TEACHER_FLOPS)
    before = accuracy.predict(SMALL, "fp32")
    accuracy.observe(MEDIUM, "fp32", 0.80)  # far worse than the prior says
    after = accuracy.predict(SMALL, "fp32")
    assert after < before and after < 0.80  # smaller still: predicted worse than the measured one
    assert accuracy.predict(MEDIUM, "int8") == pytest.approx(0.79)


def test_floors_miss_below_and_say_by_how_much() -> None:
    budget = Budget(10.0, 100.0, 10.0, {}, min_retention=0.95, accelerator_share=0.8)
    values = {"latency_ms": 5.0, "memory_mb": 50.0, "size_mb": 5.0, "retention": 0.9}
    values["accelerator_share"] = 0.5
    found = misses(values, budget)
    assert [m.budget for m in found] == ["retention", "accelerator_share"]
    assert found[0].sentence == "retention 90.0% is under the 95% floor by 5.0%"
    assert found[0].as_dict()["under_by"] == pytest.approx(0.05)
    values["accelerator_share"] = None  # a target that does not report it is not judged on it
    assert [m.budget for m in misses(values, budget)] == ["retention"]


def test_a_floor_missed_by_a_hair_does_not_read_as_missed_by_nothing() -> None:
    budget = Budget(10.0, 100.0, 10.0, {}, min_retention=0.5)
    values = {"latency_ms": 5.0, "memory_mb": 50.0, "size_mb": 5.0, "retention": 0.4996}
    (miss,) = misses(values, budget)
    assert miss.sentence == "retention 49.96% is under the 50% floor by less than 0.1%"
    budget = Budget(10.0, 100.0, 10.0, {}, min_retention=0.945)
    (miss,) = misses({**values, "retention": 0.93}, budget)
    assert miss.sentence == "retention 93.0% is under the 94.5% floor by 1.5%"


def test_accelerator_share_counts_ops_delegated_to_an_accelerator() -> None:
    coreml = {"delegated": {"CoreMLBackend": {"ops": {"aten.linear.default": 6, "aten.add.Tensor": 2}}}}
    coreml["portable"] = {"aten::embedding.out": 2}
    assert accelerator_share(coreml) == pytest.approx(0.8)
    cpu_only = {"delegated": {"XnnpackBackend": {"ops": {"aten.linear.default": 6}}}, "portable": {}}
    assert accelerator_share(cpu_only) is None and accelerator_share({}) is None
    assert math.isfinite(accelerator_share(coreml))
