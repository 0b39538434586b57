"""The distillation schemes: online, mutual, self (EMA and snapshot), multi-teacher and progressive chains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import (
    VOCAB,
    count_rows,
    kl,
    max_difference,
    outputs,
    settings,
    student_model,
    teacher_model,
    token_data,
    weights,
)

import edge_distill
from edge_distill import engine
from edge_distill.errors import EdgeDistillError
from edge_distill.schemes import MultiTeacher, SelfTeacher, TeacherSource
from edge_distill.trainer import CHECKPOINT
from edge_distill.views import Adapter, Need, Views

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train():
    return token_data(64, seed=1)


@pytest.fixture(scope="module")
def held():
    return token_data(64, seed=2)


# --- Online -------------------------------------------------------------------------------------------------


def test_online_teacher_runs_at_every_step(train) -> None:
    teacher = teacher_model()
    rows = count_rows(teacher)
    result = edge_distill.distill(teacher, student_model(), train, {"kd": 1.0}, scheme="online",
                                  settings=settings(epochs=2))  # fmt: skip
    assert result.scheme == "online" and result.train.steps == 8  # 64 rows / 16 a batch, twice
    assert rows == [2] + [16] * 8  # the probe batch, then one pass per step
    assert all(p.requires_grad for p in teacher.parameters())  # the user's model is left as it came


def test_several_teachers_cache_every_class_even_with_a_small_top_k(train) -> None:
    """Mixing distributions needs each teacher's full distribution, so top-k folding is off for them."""
    result = edge_distill.distill([teacher_model(0), teacher_model(7)], student_model(), train, {"kd": 1.0},
                                  top_k=2, settings=settings(epochs=1))  # fmt: skip
    assert [info["stored"] for info in result.cache["teachers"]] == [["logits"], ["logits"]]


class Augment:
    """Replaces the last token with one drawn from the trainer's generator; remembers what it made."""

    def __init__(self) -> None:
        self.made: list[torch.Tensor] = []

    def __call__(self, batch, generator: torch.Generator):
        ids = batch["input_ids"].clone()
        ids[:, -1] = torch.randint(1, VOCAB, (len(ids),), generator=generator)
        self.made.append(ids)
        return {**batch, "input_ids": ids}


def _seen_ids(model) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True)
    return seen


def test_augment_reaches_teacher_and_student_and_replays(train) -> None:
    runs = []
    for _ in range(2):
        teacher, student, augment = teacher_model(), student_model(), Augment()
        t_seen, s_seen = _seen_ids(teacher), _seen_ids(student)
        edge_distill.distill(teacher, student, train, {"kd": 1.0}, scheme="online", augment=augment,
                             settings=settings(epochs=2))  # fmt: skip
        assert len(augment.made) == 8
        for made, by_teacher, by_student in zip(augment.made, t_seen[1:], s_seen[1:], strict=True):
            assert torch.equal(made, by_teacher) and torch.equal(made, by_student)
        runs.append(torch.cat(augment.made))
    assert torch.equal(runs[0], runs[1])  # the generator is seeded: augmentations replay exactly


def test_offline_with_augment_runs_the_teacher_live(train) -> None:
    said: list[str] = []
    teacher, augment = teacher_model(), Augment()
    seen = _seen_ids(teacher)
    result = edge_distill.distill(teacher, student_model(), train, {"kd": 1.0}, augment=augment,
                                  settings=settings(epochs=1), say=said.append)  # fmt: skip
    assert result.scheme == "online" and any("ugment" in line for line in said)
    assert torch.equal(seen[-1], augment.made[-1])  # the teacher saw the augmented batch, not a cached one


# --- Mutual -------------------------------------------------------------------------------------------------


def test_mutual_trains_both_peers_toward_each_other(train, held) -> None:
    teacher, student = teacher_model(), student_model()
    teacher_before, student_before = weights(teacher), weights(student)
    gap_before = kl(outputs(student, held).logits, outputs(teacher, held).logits)
    result = edge_distill.distill(teacher, student, train, {"kd": 1.0}, scheme="mutual", val_data=held,
                                  settings=settings(epochs=3, lr=3e-3))  # fmt: skip
    assert result.scheme == "mutual"
    assert max_difference(weights(teacher), teacher_before) > 1e-3  # the peer learned, in place
    assert max_difference(weights(student), student_before) > 1e-3
    assert all("peer" in epoch for epoch in result.train.epoch_losses)
    assert kl(outputs(student, held).logits, outputs(teacher, held).logits) < 0.5 * gap_before
    # the report describes the peer as trained, not as it was before
    t = outputs(teacher, held).logits.argmax(-1)
    assert result.metrics["teacher"] == pytest.approx(float((t == held["labels"]).float().mean()))


def test_mutual_with_feature_terms_only(train) -> None:
    teacher, student = teacher_model(), student_model()
    result = edge_distill.distill(teacher, student, train, {"hidden_mse": 1.0}, scheme="mutual",
                                  settings=settings(epochs=1))  # fmt: skip
    assert {"hidden_mse", "peer"} <= set(result.train.epoch_losses[0])


def test_mutual_takes_exactly_one_teacher(train) -> None:
    with pytest.raises(EdgeDistillError, match="one"):
        edge_distill.distill([teacher_model(), teacher_model(1)], student_model(), train, scheme="mutual")


# --- Self ---------------------------------------------------------------------------------------------------


def test_self_ema_teacher_is_the_moving_average_of_the_student(tmp_path: Path, train) -> None:
    student = student_model()
    initial = {k: v.float() for k, v in weights(student).items()}
    after_steps: list[dict[str, torch.Tensor]] = []

    def on_step(step: int, total: int, parts: dict[str, float]) -> None:
        after_steps.append(weights(student))

    decay = 0.6
    edge_distill.distill(None, student, train, {"kd": 1.0, "ce": 1.0}, scheme="self", on_step=on_step,
                         settings=settings(epochs=2, ema_decay=decay), checkpoint_dir=tmp_path)  # fmt: skip
    ema = torch.load(tmp_path / CHECKPOINT, weights_only=False)["source"]["model"]
    expected = dict(initial)
    for state in after_steps:  # e_t = decay * e_(t-1) + (1 - decay) * s_t, after every optimizer step
        expected = {k: decay * expected[k] + (1 - decay) * state[k].float() for k in expected}
    params = dict(student.named_parameters())
    assert max_difference({k: ema[k] for k in params}, {k: expected[k] for k in params}) < 1e-5
    assert max_difference({k: ema[k] for k in params}, {k: after_steps[-1][k] for k in params}) > 1e-3


def test_self_snapshot_is_the_student_at_the_end_of_the_last_epoch(tmp_path: Path, train) -> None:
    student = student_model()
    ends: list[dict[str, torch.Tensor]] = []

    def on_step(step: int, total: int, parts: dict[str, float]) -> None:
        if step % 4 == 0:  # 4 steps an epoch
            ends.append(weights(student))

    edge_distill.distill(None, student, train, {"kd": 1.0, "ce": 1.0}, scheme="self", self_teacher="snapshot",
                         on_step=on_step, settings=settings(epochs=2), checkpoint_dir=tmp_path)  # fmt: skip
    payload = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert len(ends) == 2
    assert max_difference(payload["source"]["model"], ends[-1]) == 0.0


def test_snapshot_teacher_changes_only_at_epoch_ends() -> None:
    student = student_model()
    source = SelfTeacher(student, Adapter(), Need(), mode="snapshot", decay=0.9)
    start = weights(source.model)
    with torch.no_grad():
        student.classifier.bias.add_(1.0)
    source.after_step(student)
    assert max_difference(weights(source.model), start) == 0.0
    source.after_epoch(student)
    assert max_difference(weights(source.model), weights(student)) == 0.0


def test_self_distillation_without_labels_or_teacher_to_measure(train, held) -> None:
    unlabeled = {k: v for k, v in train.items() if k != "labels"}
    val = {k: v for k, v in held.items() if k != "labels"}
    result = edge_distill.distill(None, student_model(), unlabeled, scheme="self", val_data=val,
                                  settings=settings(epochs=2))  # fmt: skip
    # nothing to measure on val: no early stopping or best-epoch choice, and no metric is made up
    assert result.train.val_metrics == [] and result.train.best_epoch is None
    assert set(result.metrics.values()) == {None}


def test_self_scheme_rejects_a_teacher_and_unknown_modes(train) -> None:
    with pytest.raises(EdgeDistillError, match="teacher=None"):
        edge_distill.distill(teacher_model(), student_model(), train, scheme="self")
    with pytest.raises(EdgeDistillError, match="ema"):
        edge_distill.distill(None, student_model(), train, scheme="self", self_teacher="mean")


# --- Several teachers ---------------------------------------------------------------------------------------


class Fixed(TeacherSource):
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def views(self, batch) -> Views:
        return Views(logits=self.logits.clone())


def test_multi_teacher_mixes_probabilities_by_weight() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = 3 * torch.randn(4, 6, generator=generator), 3 * torch.randn(4, 6, generator=generator)
    mixed = MultiTeacher([Fixed(a), Fixed(b)], [2.0, 1.0], temperature=2.0).views({}).logits
    expected = 2 / 3 * (a / 2.0).softmax(-1) + 1 / 3 * (b / 2.0).softmax(-1)
    torch.testing.assert_close((mixed / 2.0).softmax(-1), expected)
    only_a = MultiTeacher([Fixed(a), Fixed(b)], [1.0, 0.0], temperature=2.0).views({}).logits
    torch.testing.assert_close((only_a / 2.0).softmax(-1), (a / 2.0).softmax(-1))


@pytest.mark.parametrize("scheme", ["offline", "online"])
def test_weights_one_zero_equal_distilling_from_the_first_alone(scheme: str, train, held) -> None:
    first, second = teacher_model(0), teacher_model(7)
    run = dict(val_data=held, settings=settings(epochs=2), scheme=scheme, cache=False)
    mixed = edge_distill.distill([first, second], student_model(), train, {"kd": 1.0}, teacher_weights=[1, 0],
                                 **run)  # fmt: skip
    alone = edge_distill.distill(first, student_model(), train, {"kd": 1.0}, **run)
    # mixing adds a log-sum-exp in float32: the same training up to rounding
    assert max_difference(weights(mixed.student), weights(alone.student)) < 1e-4
    assert mixed.metrics["teacher"] == alone.metrics["teacher"]
    assert mixed.metrics["agreement"] == alone.metrics["agreement"]
    other = edge_distill.distill([first, second], student_model(), train, {"kd": 1.0}, teacher_weights=[0, 1],
                                 **run)  # fmt: skip
    assert max_difference(weights(other.student), weights(alone.student)) > 1e-3


def test_several_teachers_mix_at_the_run_temperature_only(train) -> None:
    spec = {"kd": {"weight": 1.0, "temperature": 4.0}}
    with pytest.raises(EdgeDistillError, match="temperature"):
        edge_distill.distill([teacher_model(0), teacher_model(7)], student_model(), train, spec,
                             settings=settings(epochs=1, temperature=2.0))  # fmt: skip


# --- Progressive chains -------------------------------------------------------------------------------------


def test_progressive_chain_teaches_each_student_with_the_previous(monkeypatch, tmp_path: Path, held) -> None:
    teachers_seen, gaps = [], []
    real = engine.distill

    def spy(teacher, student, *args, **kwargs):
        teachers_seen.append(teacher)
        gaps.append(kl(outputs(student, held).logits, outputs(teacher, held).logits))
        return real(teacher, student, *args, **kwargs)

    monkeypatch.setattr(engine, "distill", spy)
    teacher, middle, small = teacher_model(), student_model(1), student_model(2)
    results = edge_distill.distill_progressive(teacher, [middle, small], token_data(96, seed=1), {"kd": 1.0},
                                               settings=settings(), checkpoint_dir=tmp_path)  # fmt: skip
    assert len(results) == 2
    assert teachers_seen == [teacher, middle] and results[0].student is middle
    assert (tmp_path / "link-1" / CHECKPOINT).exists() and (tmp_path / "link-2" / CHECKPOINT).exists()
    # the second student learned from the first as the first was after its own training
    assert kl(outputs(small, held).logits, outputs(middle, held).logits) < 0.4 * gaps[1]
