"""benchmarks/students.py smoke-runs on tiny random models: the envelope's shape and sanity (no ordering)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "students.py"
ARMS = {"depth", "pruned", "first_k"}


@pytest.fixture(scope="module")
def result() -> dict:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    envelope = json.loads(done.stdout)  # stdout holds the envelope alone; chatter goes to stderr
    assert envelope["schema"] == 1 and envelope["benchmark"] == "students"
    return envelope["result"]


def in_unit(value: float) -> bool:
    return 0.0 <= value <= 1.0


def test_paired_arms_have_equal_params_and_the_shapes_they_claim(result: dict) -> None:
    assert len(result["pairs"]) == 2
    teacher = result["teacher"]["spec"]
    for pair in result["pairs"]:
        arms = pair["arms"]
        assert set(arms) == ARMS
        params = [arm["params"] for arm in arms.values()]
        assert max(params) / min(params) - 1 == pytest.approx(pair["params_gap"], abs=1e-4)
        assert pair["params_gap"] <= 0.03
        depth, pruned, first_k = arms["depth"]["spec"], arms["pruned"]["spec"], arms["first_k"]["spec"]
        assert depth["hidden"] == teacher["hidden"] and depth["layers"] < teacher["layers"]
        assert pruned == first_k and pruned["hidden"] < teacher["hidden"]
        assert all(arm["params"] < result["teacher"]["params"] and arm["flops"] > 0 for arm in arms.values())


def test_every_score_is_a_fraction(result: dict) -> None:
    keys = ("cut_accuracy", "cut_agreement", "test_accuracy", "agreement", "trimmed_accuracy", "spread")
    for pair in result["pairs"]:
        for arm in pair["arms"].values():
            assert all(in_unit(arm[key]) for key in keys), arm
            assert all(in_unit(v) for v in arm["test_accuracy_runs"] + arm["trimmed_accuracy_runs"])
            assert len(arm["test_accuracy_runs"]) == len(result["workload"]["recipe"]["seeds"])
            assert arm["retention"] >= 0 and arm["latency_ratio"] > 0


def test_trimming_shrinks_every_model_and_changes_no_logit_without_unk(result: dict) -> None:
    vocab = result["vocab"]
    assert 0 < vocab["kept"] < vocab["original"]
    assert vocab["fraction_kept"] == pytest.approx(vocab["kept"] / vocab["original"], abs=1e-4)
    assert in_unit(vocab["test_tokens_outside"]) and in_unit(vocab["test_examples_with_unk"])
    models = [result["teacher"]] + [arm for pair in result["pairs"] for arm in pair["arms"].values()]
    for model in models:
        saving = model["vocab"]
        assert saving["vocab_after"] == vocab["kept"] and saving["params_before"] == model["params"]
        assert saving["params_after"] == saving["params_after_measured"] < saving["params_before"]
        assert saving["mb_fp32_after"] < saving["mb_fp32_before"]
        assert in_unit(saving["fraction_saved"]) and in_unit(model["trimmed_accuracy"])
        assert model["max_logit_change_without_unk"] <= 1e-4
