"""The teacher's reported cost: a --quick run predicts it again from its measured students; a full run,
which timed the teacher like a student, keeps that timing."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest

from edge_distill.loop import repredict_teacher


def context(quick: bool, said: list[str]) -> Any:
    teacher_info = {
        "name": "teacher", "params": 22_700_000, "flops": 2_700_000_000,
        "latency_ms": {"p50": 90.0, "p90": 15.0, "p99": 99.0}, "latency_source": "predicted",
        "calibration": "stored calibration", "metric": {"name": "accuracy", "value": 0.98},
    }  # fmt: skip

    def predict(features: Any) -> dict[str, Any]:
        return {
            "latency_ms": 98.0,
            "memory_mb": 160.0,
            "source": "x2.6 as measured on this run's nearest model",
        }

    job = SimpleNamespace(
        quick=quick,
        teacher=SimpleNamespace(name="teacher", path="/teacher"),
        budget=SimpleNamespace(latency_ms=50.0),
    )
    return SimpleNamespace(
        job=job,
        teacher_info=teacher_info,
        teacher_features=SimpleNamespace(params=22_700_000, flops=2_700_000_000),
        latency=SimpleNamespace(observed=[object()], predict=predict),
        reporter=SimpleNamespace(say=said.append),
    )


def test_quick_run_predicts_the_teacher_again_from_its_measured_students() -> None:
    said: list[str] = []
    ctx = context(quick=True, said=said)
    repredict_teacher(ctx)
    assert ctx.teacher_info["latency_ms"] == {"p90": 98.0}
    assert "this run" in ctx.teacher_info["calibration"] and ctx.teacher_info["metric"]["value"] == 0.98
    assert said == [
        "Teacher p90 predicted again from this run's measured students: 98 ms (was 15 ms before any "
        "measurement) -> over budget"
    ]


@pytest.mark.parametrize("observed", [True, False])
def test_a_timed_teacher_or_a_run_with_nothing_measured_keeps_its_figures(observed: bool) -> None:
    said: list[str] = []
    ctx = context(quick=not observed, said=said)  # a full run timed the teacher; a quick one measured nothing
    if not observed:
        ctx.latency.observed = []
    before = copy.deepcopy(ctx.teacher_info)
    repredict_teacher(ctx)
    assert ctx.teacher_info == before and not said
