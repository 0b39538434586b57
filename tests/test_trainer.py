"""The trainer: determinism, accumulation, the LR schedule, precision, early stopping, checkpoints, resume.

Tolerances: on CPU in fp32 with one thread, a run is bit-for-bit reproducible, so runs that should match
(same seed; resumed vs uninterrupted, in-process or after a killed process) are compared with tolerance
0. Gradient accumulation sums two half-batch means instead of one full-batch mean: equal up to float32
rounding (1e-6 relative).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny_models import max_difference, settings, student_model, teacher_model, token_data, weights

import edge_distill
from edge_distill import atomic
from edge_distill.errors import EdgeDistillError
from edge_distill.trainer import CHECKPOINT, _Loop

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).parent
# a spec that exercises every kind of state: a learned projection (hidden), soft and hard targets
SPEC = {"kd": 1.0, "ce": 1.0, "hidden_mse": {"weight": 0.5, "layers": "last"}}


@pytest.fixture(scope="module")
def train():
    return token_data(64, seed=1)


@pytest.fixture(scope="module")
def held():
    return token_data(32, seed=2)


def _run(train, held, *, scheme="offline", student=None, teacher=None, **kwargs):
    """Three epochs of a dropout student (the RNG matters) with validation and the full SPEC."""
    options = {"settings": settings(epochs=3, lr=3e-3), "cache": False, "val_data": held, **kwargs}
    if scheme == "self":
        teacher = None
    elif teacher is None:
        teacher = teacher_model()
    student = student if student is not None else student_model(dropout=0.1)
    spec = SPEC if scheme != "self" else {"kd": 1.0, "ce": 1.0}
    return edge_distill.distill(teacher, student, train, spec, scheme=scheme, **options)


def test_same_seed_same_run_whatever_the_global_rng(train, held) -> None:
    first = _run(train, held)
    student, teacher = student_model(dropout=0.1), teacher_model()
    torch.rand(123)  # the global RNG in another state: the run (its projection's init) must not depend on it
    second = _run(train, held, student=student, teacher=teacher)
    assert max_difference(weights(first.student), weights(second.student)) == 0.0
    assert first.metrics == second.metrics
    assert first.train.epoch_losses == second.train.epoch_losses
    assert first.train.val_metrics == second.train.val_metrics
    other_seed = _run(train, held, settings=settings(epochs=3, lr=3e-3, seed=1))
    assert max_difference(weights(first.student), weights(other_seed.student)) > 1e-4


@pytest.fixture()
def steps(monkeypatch):
    """Record, at every optimizer step, the learning rate and the student's accumulated gradients."""
    seen = []
    real = _Loop.optimizer_step

    def spy(loop):
        grads = {k: p.grad.clone() for k, p in loop.student.named_parameters() if p.grad is not None}
        seen.append({"lr": loop.optimizer.param_groups[0]["lr"], "grads": grads})
        real(loop)

    monkeypatch.setattr(_Loop, "optimizer_step", spy)
    return seen


class FirstStep(Exception):
    """Stops a run after its first optimizer step."""


def _first_step(train, steps, **overrides):
    student = student_model()  # no dropout: micro-batches and the full batch compute the same function

    def stop(step, total, parts):
        raise FirstStep

    with pytest.raises(FirstStep):
        edge_distill.distill(teacher_model(), student, train, SPEC, cache=False, on_step=stop,
                             settings=settings(epochs=1, lr=1e-3, **overrides))  # fmt: skip
    return steps.pop(), weights(student)


def test_grad_accumulation_matches_one_larger_batch(train, steps) -> None:
    small, small_weights = _first_step(train, steps, batch_size=8, grad_accum=2, max_grad_norm=None)
    large, large_weights = _first_step(train, steps, batch_size=16, grad_accum=1, max_grad_norm=None)
    assert small["grads"].keys() == large["grads"].keys() and small["grads"]
    for name, grad in large["grads"].items():
        torch.testing.assert_close(small["grads"][name], grad, rtol=1e-5, atol=1e-7)
    assert max_difference(small_weights, large_weights) < 1e-6
    # the counterfactual: one micro-batch alone is a different gradient
    half, _ = _first_step(train, steps, batch_size=8, grad_accum=1, max_grad_norm=None)
    assert max(float((half["grads"][k] - g).abs().max()) for k, g in large["grads"].items()) > 1e-4


def test_steps_count_optimizer_steps_with_accumulation(train) -> None:
    calls = []
    result = edge_distill.distill(teacher_model(), student_model(), train, {"kd": 1.0}, cache=False,
                                  on_step=lambda step, total, parts: calls.append((step, total)),
                                  settings=settings(epochs=2, batch_size=8, grad_accum=3))  # fmt: skip
    # 8 micro-batches an epoch in groups of 3, 3, 2: 3 optimizer steps an epoch
    assert calls == [(i, 6) for i in range(1, 7)] and result.train.steps == 6


def test_learning_rate_warms_up_then_decays_linearly(train, steps) -> None:
    edge_distill.distill(teacher_model(), student_model(), train, {"kd": 1.0}, cache=False,
                         settings=settings(epochs=2, lr=1e-3, warmup_ratio=0.25))  # fmt: skip
    lrs = [step["lr"] for step in steps]
    # 8 steps, 2 of warm-up (HF's schedule: the first step runs at 0), then a linear decay to 0
    expected = [0.0, 0.5e-3, 1e-3, 5 / 6 * 1e-3, 4 / 6 * 1e-3, 3 / 6 * 1e-3, 2 / 6 * 1e-3, 1 / 6 * 1e-3]
    assert lrs == pytest.approx(expected)


def test_mixed_precision_autocasts_the_student(train) -> None:
    dtypes = {}
    for precision in ("bf16", "no", "bf16"):  # one process may switch precision between runs
        student = student_model()
        seen = []
        student.classifier.register_forward_hook(lambda m, a, out, seen=seen: seen.append(out.dtype))
        result = edge_distill.distill(teacher_model(), student, train, {"kd": 1.0, "ce": 1.0}, cache=False,
                                      settings=settings(epochs=1, mixed_precision=precision))  # fmt: skip
        dtypes[precision] = set(seen[1:])  # after the probe (outside the trainer)
        assert all(v == v for epoch in result.train.epoch_losses for v in epoch.values())  # no NaN
    assert dtypes == {"bf16": {torch.bfloat16}, "no": {torch.float32}}


def test_early_stopping_keeps_the_best_epoch(train, held) -> None:
    student = student_model()
    script = iter([0.9, 0.5, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])  # teacher, then one value per epoch
    states = []

    def metric(logits, labels) -> float:
        states.append(weights(student))
        return next(script)

    result = edge_distill.distill(teacher_model(), student, train, {"kd": 1.0}, val_data=held, metric=metric,
                                  cache=False, settings=settings(epochs=8, patience=2))  # fmt: skip
    # epochs: 0.5, 0.7 (best), 0.6, 0.4 -> two epochs without improvement: stop after epoch 4 of 8
    assert result.train.val_metrics == [0.5, 0.7, 0.6, 0.4]
    assert result.train.stopped_early and result.train.best_epoch == 2
    assert max_difference(weights(student), states[2]) == 0.0  # the student as it was after epoch 2
    assert max_difference(states[2], states[4]) > 1e-4  # (and it did change afterwards)


def test_a_checkpoint_after_every_epoch_written_atomically(tmp_path: Path, train, monkeypatch) -> None:
    written = []
    real = atomic.os.replace

    def replace(src, dst):
        if Path(dst).name == CHECKPOINT:
            written.append(torch.load(src, weights_only=False)["epoch"])
            if len(written) == 3:
                raise OSError("disk full")  # the third write fails after its temporary file is written
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        edge_distill.distill(teacher_model(), student_model(), train, {"kd": 1.0}, cache=False,
                             settings=settings(epochs=3), checkpoint_dir=tmp_path)  # fmt: skip
    assert written == [0, 1, 2]
    # the failed write left the previous checkpoint whole and no temporary file behind
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["epoch"] == 1


def _assert_same_run(resumed, whole, resumed_dir: Path, whole_dir: Path) -> None:
    """Bit-identical: the returned (best-epoch) student, the last epoch's state, metrics and losses."""
    assert max_difference(weights(resumed.student), weights(whole.student)) == 0.0
    last = [torch.load(d / CHECKPOINT, weights_only=False) for d in (resumed_dir, whole_dir)]
    assert max_difference(last[0]["trainable"], last[1]["trainable"]) == 0.0  # not only the best epoch
    assert resumed.metrics == whole.metrics
    assert resumed.train.val_metrics == whole.train.val_metrics
    assert resumed.train.epoch_losses == whole.train.epoch_losses


class Interrupt:
    """on_step that raises KeyboardInterrupt (as Ctrl-C would) at one step."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, step: int, total: int, parts: dict[str, float]) -> None:
        if step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("scheme", ["offline", "self", "mutual"])
def test_resume_after_ctrl_c_ends_where_an_uninterrupted_run_does(scheme, tmp_path: Path, train, held):
    whole = _run(train, held, scheme=scheme, checkpoint_dir=tmp_path / "whole")
    # the same objects, interrupted in the middle of epoch 2 (4 steps an epoch), then resumed
    student, teacher = student_model(dropout=0.1), teacher_model()
    folder = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        _run(train, held, scheme=scheme, student=student, teacher=teacher, checkpoint_dir=folder,
             on_step=Interrupt(6))  # fmt: skip
    resumed = _run(train, held, scheme=scheme, student=student, teacher=teacher, checkpoint_dir=folder,
                   resume=True)  # fmt: skip
    assert resumed.train.resumed_from_epoch == 1
    _assert_same_run(resumed, whole, folder, tmp_path / "whole")
    assert resumed.train.steps == whole.train.steps == 12


KILLED_RUN = """
import sys, time
from pathlib import Path

import torch

sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from tiny_models import settings, student_model, teacher_model, token_data  # noqa: E402

import edge_distill  # noqa: E402

folder = Path(sys.argv[1])


def park(step, total, parts):
    if (folder / "checkpoint.pt").exists():
        print("parked", flush=True)
        time.sleep(600)  # wait here, after the first checkpoint, to be killed


edge_distill.distill(teacher_model(), student_model(dropout=0.1), token_data(64, seed=1), {spec!r},
                     val_data=token_data(32, seed=2), cache=False, checkpoint_dir=folder, on_step=park,
                     settings=settings(epochs=3, lr=3e-3))
print("finished", flush=True)
"""


def test_resume_after_a_killed_process_ends_where_an_uninterrupted_run_does(tmp_path: Path, train, held):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(KILLED_RUN.format(tests=str(TESTS), spec=SPEC)))
    folder = tmp_path / "checkpoints"
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    process = subprocess.Popen([sys.executable, str(script), str(folder)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (folder / CHECKPOINT).exists():
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        output = process.communicate()[0]
    assert process.returncode == -signal.SIGKILL and "finished" not in output
    assert torch.load(folder / CHECKPOINT, weights_only=False)["epoch"] == 0

    whole = _run(train, held, checkpoint_dir=tmp_path / "whole")
    resumed = _run(train, held, checkpoint_dir=folder, resume=True)
    assert resumed.train.resumed_from_epoch == 1
    _assert_same_run(resumed, whole, folder, tmp_path / "whole")


def test_resume_with_other_settings_is_a_clear_error(tmp_path: Path, train, held) -> None:
    _run(train, held, checkpoint_dir=tmp_path, settings=settings(epochs=1))
    with pytest.raises(EdgeDistillError, match="other settings"):
        _run(train, held, checkpoint_dir=tmp_path, resume=True, settings=settings(epochs=1, lr=5e-3))


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path: Path, train, held) -> None:
    result = _run(train, held, checkpoint_dir=tmp_path, resume=True, settings=settings(epochs=1))
    assert result.train.resumed_from_epoch is None and (tmp_path / CHECKPOINT).exists()


def test_torn_checkpoint_is_a_clear_error(tmp_path: Path, train, held) -> None:
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeDistillError, match="cannot be read"):
        _run(train, held, checkpoint_dir=tmp_path, resume=True, settings=settings(epochs=1))
