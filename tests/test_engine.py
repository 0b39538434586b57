"""The engine wires every loss family right, and the offline cache computes once, compactly and safely.

Each test trains (or evaluates) tiny random models and measures the quantity the loss is meant to move,
with a reference computed independently of the engine's own plumbing (``output_hidden_states``,
``output_attentions``, the loss classes called directly).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import (
    MLP,
    bert_config,
    count_rows,
    kl,
    learnable_data,
    max_difference,
    outputs,
    settings,
    student_model,
    teacher_model,
    token_data,
    weights,
)
from torch import nn
from transformers import BertForSequenceClassification

import edge_distill
from edge_distill import engine
from edge_distill.losses import AttentionKL, RelationGram, SoftTargetKL, create_loss
from edge_distill.objective import RESPONSE, Objective, ObjectiveError, Term
from edge_distill.offline import CacheSpec, compact, views_from_batch
from edge_distill.taps import TapError
from edge_distill.trainer import Trainable
from edge_distill.views import Adapter, Views

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher():
    return teacher_model()


@pytest.fixture(scope="module")
def train():
    return token_data(96, seed=1)


@pytest.fixture(scope="module")
def held():
    return token_data(64, seed=2)


@pytest.fixture()
def runs(monkeypatch):
    """Spy on ``fit``: each run with a deep copy of its objective (learned projections) before training."""
    captured = []
    real_fit = engine.fit

    def spy(run):
        captured.append(SimpleNamespace(run=run, initial=copy.deepcopy(run.trainable.objective)))
        return real_fit(run)

    monkeypatch.setattr(engine, "fit", spy)
    return captured


def _index(path: str) -> int:
    return int(path.rsplit(".", 1)[1])


# --- Objective wiring, without training ---------------------------------------------------------------------


@pytest.mark.parametrize("family", RESPONSE)
def test_per_token_response_terms_skip_padding(family: str) -> None:
    """Language-model logits (batch, seq, vocab): the divergence is over real tokens only."""
    generator = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=generator), 3 * torch.randn(2, 5, 11, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    objective = Objective.build({family: 1.0}, nn.Module(), nn.Module(), temperature=2.0)
    _, parts = objective(Views(logits=s), Views(logits=t), None, mask)
    options = {} if family == "logit_mse" else {"temperature": 2.0}
    real = mask.bool()
    torch.testing.assert_close(parts[family], create_loss(family, **options)(s[real], t[real]))
    assert not torch.allclose(parts[family], create_loss(family, **options)(s, t))  # pads would count


@pytest.mark.parametrize("family", RESPONSE)
def test_response_terms_call_their_loss_student_first(family: str) -> None:
    generator = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 7, generator=generator), 3 * torch.randn(6, 7, generator=generator)
    objective = Objective.build({family: 0.5}, nn.Module(), nn.Module(), temperature=3.0)
    total, parts = objective(Views(logits=s), Views(logits=t), None, None)
    options = {} if family == "logit_mse" else {"temperature": 3.0}
    expected = create_loss(family, **options)(s, t)
    torch.testing.assert_close(parts[family], expected)
    torch.testing.assert_close(total, 0.5 * expected)
    if family in ("kd", "reverse_kd"):  # asymmetric: called teacher first, they would differ
        assert not torch.allclose(expected, create_loss(family, **options)(t, s))


def test_t_squared_keeps_kd_gradient_scale_across_temperatures() -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(64, 10, generator=generator), torch.randn(64, 10, generator=generator)

    def grad_norm(temperature: float, *, undo_t_squared: bool = False) -> float:
        objective = Objective.build({"kd": 1.0}, nn.Module(), nn.Module(), temperature=temperature)
        logits = student.clone().requires_grad_(True)
        total, _ = objective(Views(logits=logits), Views(logits=teacher), None, None)
        (total / temperature**2 if undo_t_squared else total).backward()
        return float(logits.grad.norm())

    ratio = grad_norm(1.0) / grad_norm(4.0)
    assert 0.5 < ratio < 2.0, ratio
    # the counterfactual: without T² the gradients at T=4 are ~16x smaller than at T=1
    assert grad_norm(1.0, undo_t_squared=True) / grad_norm(4.0, undo_t_squared=True) > 8.0


def test_terms_take_the_temperature_from_the_settings(runs, teacher, train) -> None:
    spec = {"kd": 1.0, "jsd": {"weight": 1.0, "temperature": 5.0}}
    edge_distill.distill(teacher, student_model(), train, spec, settings=settings(epochs=1, temperature=3.0))
    kd, jsd = runs[0].run.trainable.objective.terms
    assert kd.losses[0].temperature == 3.0
    assert jsd.losses[0].temperature == 5.0  # an explicit option wins


def test_unknown_loss_name_suggests_the_closest() -> None:
    with pytest.raises(ObjectiveError, match="did you mean 'kd'"):
        Objective.build({"kdd": 1.0}, nn.Module(), nn.Module())


# --- Each loss family, trained alone, moves what it is meant to move ----------------------------------------


def _divergence(family: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    options = {} if family == "logit_mse" else {"temperature": 2.0}
    return float(create_loss(family, **options)(student_logits, teacher_logits))


@pytest.mark.parametrize("family", RESPONSE)
def test_response_loss_alone_moves_student_toward_teacher(family: str, teacher, train, held) -> None:
    student = student_model()
    before = outputs(student, held).logits
    target = outputs(teacher, held).logits
    edge_distill.distill(teacher, student, train, {family: 1.0}, settings=settings())
    after = outputs(student, held).logits
    # on held-out inputs: the loss's own divergence and the forward KL both fall by well over half
    assert _divergence(family, after, target) < 0.4 * _divergence(family, before, target)
    assert kl(after, target) < 0.4 * kl(before, target)


def test_ce_alone_fits_labels_and_ignores_the_teacher(teacher) -> None:
    data, held = learnable_data(96, seed=1), learnable_data(64, seed=2)
    student = student_model()
    before = kl(outputs(student, held).logits, outputs(teacher, held).logits)
    edge_distill.distill(teacher, student, data, {"ce": 1.0}, settings=settings(epochs=6))
    logits = outputs(student, held).logits
    assert float((logits.argmax(-1) == held["labels"]).float().mean()) > 0.8
    assert kl(logits, outputs(teacher, held).logits) > 0.7 * before  # the labels taught it, not the teacher


def test_ce_without_labels_is_a_clear_error(teacher, train) -> None:
    unlabeled = {k: v for k, v in train.items() if k != "labels"}
    with pytest.raises(ObjectiveError, match="labels"):
        edge_distill.distill(teacher, student_model(), unlabeled, {"ce": 1.0}, settings=settings(epochs=1))


def _hidden_distance(term, student, teacher, data) -> float:
    """The term's loss on held-out data, the layers read with output_hidden_states (not the taps)."""
    s = outputs(student, data, output_hidden_states=True).hidden_states
    t = outputs(teacher, data, output_hidden_states=True).hidden_states
    with torch.no_grad():
        values = [
            float(loss(s[_index(sp) + 1], t[_index(tp) + 1], data["attention_mask"]))
            for loss, (sp, tp) in zip(term.losses, term.pairs, strict=True)
        ]
    return sum(values) / len(values)


@pytest.mark.parametrize("family", ["hidden_mse", "hidden_cosine"])
def test_hidden_term_alone_reduces_mapped_hidden_distance(family, runs, teacher, train, held) -> None:
    student = student_model()
    untrained = copy.deepcopy(student)
    edge_distill.distill(teacher, student, train, {family: 1.0}, settings=settings())
    term, initial = runs[0].run.trainable.objective.terms[0], runs[0].initial.terms[0]
    assert term.pairs == [
        ("bert.encoder.layer.0", "bert.encoder.layer.1"),
        ("bert.encoder.layer.1", "bert.encoder.layer.3"),
    ]
    for learned, start in zip(term.losses, initial.losses, strict=True):
        assert isinstance(learned.projection, nn.Linear)  # width 16 -> 32
        assert not torch.equal(learned.projection.weight, start.projection.weight)  # it was optimized
    before = _hidden_distance(initial, untrained, teacher, held)
    after = _hidden_distance(term, student, teacher, held)
    assert after < 0.5 * before, (before, after)


def test_explicit_layer_pairs_by_dotted_path(runs, teacher, train, held) -> None:
    pair = ("bert.encoder.layer.1", "bert.encoder.layer.2")
    student = student_model()
    untrained = copy.deepcopy(student)
    spec = {"hidden_mse": {"weight": 1.0, "layers": [pair]}}
    edge_distill.distill(teacher, student, train, spec, settings=settings())
    term, initial = runs[0].run.trainable.objective.terms[0], runs[0].initial.terms[0]
    assert term.pairs == [pair]
    assert _hidden_distance(term, student, teacher, held) < 0.5 * _hidden_distance(
        initial, untrained, teacher, held
    )


def test_layer_path_typo_suggests_the_closest(teacher, train) -> None:
    spec = {"hidden_mse": {"layers": [("bert.encoder.layr.1", "bert.encoder.layer.2")]}}
    with pytest.raises(TapError, match=r"'bert\.encoder\.layer\.1'"):
        edge_distill.distill(teacher, student_model(), train, spec, settings=settings(epochs=1))


class FirstStep(Exception):
    """Stops a run after its first optimizer step."""


def _stop_after_first_step(step: int, total: int, parts: dict[str, float]) -> None:
    raise FirstStep


def test_terms_read_the_mapped_layers_of_both_models(monkeypatch, teacher, train) -> None:
    """Each feature, attention and embedding term's value equals its loss on the right layers, read
    independently (output_hidden_states, output_attentions, a masked mean of the last layer)."""
    student = student_model()
    reference = copy.deepcopy(student)
    reference.set_attn_implementation("eager")
    spec = {
        "hidden_mse": {"weight": 1.0, "layers": "uniform"},
        "attention_kl": {"weight": 1.0, "layers": "first_last"},
        "embedding_cosine": 1.0,
    }
    batches, checked = [], {}
    real_trainable, real_term = Trainable.forward, Term.forward

    def trainable(self, batch, teacher_views):
        batches.append(batch)
        return real_trainable(self, batch, teacher_views)

    def term(self, s, t, labels, mask):
        value = real_term(self, s, t, labels, mask)
        if self.name not in checked:
            checked[self.name] = (float(value.detach()), _expected(self, reference, teacher, batches[-1]))
        return value

    monkeypatch.setattr(Trainable, "forward", trainable)
    monkeypatch.setattr(Term, "forward", term)
    padded = {**train, "attention_mask": train["attention_mask"].clone()}
    padded["attention_mask"][::2, -3:] = 0  # every other row padded: the masks must be applied
    with pytest.raises(FirstStep):
        edge_distill.distill(teacher, student, padded, spec, scheme="online", settings=settings(epochs=1),
                             on_step=_stop_after_first_step)  # fmt: skip
    assert set(checked) == set(spec)
    for name, (value, expected) in checked.items():
        assert value == pytest.approx(expected, rel=1e-4), name


@torch.no_grad()
def _expected(term, student, teacher, batch) -> float:
    s = outputs(student, batch, output_hidden_states=True, output_attentions=True)
    t = outputs(teacher, batch, output_hidden_states=True, output_attentions=True)
    mask = batch["attention_mask"]
    if term.family == "embedding_cosine":
        return float(term.losses[0](_pooled(student, batch), _pooled(teacher, batch)))
    values = []
    for loss, (sp, tp) in zip(term.losses, term.pairs, strict=True):
        if term.family == "hidden_mse":
            values.append(loss(s.hidden_states[_index(sp) + 1], t.hidden_states[_index(tp) + 1], mask))
        else:
            values.append(loss(s.attentions[_index(sp)], t.attentions[_index(tp)], mask))
    return float(torch.stack(values).mean())


def _attention_kl(student, teacher, pairs, data) -> float:
    s = outputs(student, data, output_attentions=True).attentions
    t = outputs(teacher, data, output_attentions=True).attentions
    loss = AttentionKL()
    values = [float(loss(s[_index(sp)], t[_index(tp)], data["attention_mask"])) for sp, tp in pairs]
    return sum(values) / len(values)


@pytest.mark.parametrize("family", ["attention_kl", "attention_mse"])
def test_attention_term_alone_reduces_attention_kl(family, runs, teacher, train, held) -> None:
    student = student_model()  # 2 heads against the teacher's 4
    untrained = copy.deepcopy(student)
    untrained.set_attn_implementation("eager")
    said: list[str] = []
    result = edge_distill.distill(
        teacher, student, train, {family: 1.0}, settings=settings(), say=said.append
    )
    pairs = runs[0].run.trainable.objective.terms[0].pairs
    assert len(pairs) == 2
    before = _attention_kl(untrained, teacher, pairs, held)
    after = _attention_kl(student, teacher, pairs, held)
    assert after < 0.6 * before, (before, after)
    # attention maps are never cached: the offline default switched to a live teacher, and said so
    assert result.scheme == "online"
    assert any("online" in line and "ttention" in line for line in said)


def _pooled(model, data) -> torch.Tensor:
    last = outputs(model, data, output_hidden_states=True).hidden_states[-1]  # (batch, seq, dim)
    mask = data["attention_mask"][..., None].float()
    return (last * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("family", ["embedding_mse", "embedding_cosine"])
def test_embedding_term_alone_reduces_pooled_distance(family, runs, teacher, train, held) -> None:
    student = student_model()
    untrained = copy.deepcopy(student)
    edge_distill.distill(teacher, student, train, {family: 1.0}, settings=settings())
    term, initial = runs[0].run.trainable.objective.terms[0], runs[0].initial.terms[0]
    with torch.no_grad():
        before = float(initial.losses[0](_pooled(untrained, held), _pooled(teacher, held)))
        after = float(term.losses[0](_pooled(student, held), _pooled(teacher, held)))
    assert after < 0.5 * before, (before, after)


def test_relation_term_alone_reduces_gram_distance(teacher) -> None:
    # inputs with class structure: the teacher's similarities between held-out examples can be learned
    train, held = learnable_data(96, seed=1), learnable_data(64, seed=2)
    student = student_model()
    untrained = copy.deepcopy(student)
    edge_distill.distill(teacher, student, train, {"relation": 1.0}, settings=settings())
    gram = RelationGram()
    before = float(gram(_pooled(untrained, held), _pooled(teacher, held)))
    after = float(gram(_pooled(student, held), _pooled(teacher, held)))
    assert after < 0.5 * before, (before, after)


# --- The offline cache --------------------------------------------------------------------------------------


def test_second_run_reads_the_cache_instead_of_the_teacher(tmp_path: Path, train) -> None:
    teacher = teacher_model()
    rows = count_rows(teacher)
    first = edge_distill.distill(teacher, student_model(), train, {"kd": 1.0}, settings=settings(epochs=1),
                                 cache=tmp_path)  # fmt: skip
    assert first.cache["cache"] == "computed" and sum(rows) >= len(train["labels"])
    rows.clear()
    second = edge_distill.distill(teacher, student_model(), train, {"kd": 1.0}, settings=settings(epochs=1),
                                  cache=tmp_path)  # fmt: skip
    assert second.cache["cache"] == "hit"
    assert sum(rows) <= 2, rows  # only the probe batch that sizes the projections, never the data
    assert max_difference(weights(first.student), weights(second.student)) == 0.0


def _entries(root: Path) -> dict[str, dict]:
    return {m.parent.name: json.loads(m.read_text()) for m in root.glob("*/manifest.json")}


def test_topk_cache_stores_fp16_top_k_and_one_folded_bucket(tmp_path: Path) -> None:
    teacher = teacher_model(labels=20)
    data, held = token_data(96, seed=1, labels=20), token_data(64, seed=2, labels=20)
    student = student_model(labels=20)
    before = kl(outputs(student, held).logits, outputs(teacher, held).logits)
    result = edge_distill.distill(teacher, student, data, {"kd": 1.0}, settings=settings(), cache=tmp_path,
                                  top_k=4)  # fmt: skip
    assert result.cache["stored"] == ["topk_indices", "topk_rest", "topk_values"]
    (entry,) = _entries(tmp_path)
    tensors = {k: v for part in (tmp_path / entry).glob("*.safetensors") for k, v in load_file(part).items()}
    assert tensors["teacher.topk_values"].dtype == torch.float16
    assert tensors["teacher.topk_values"].shape == (96, 4)
    assert tensors["teacher.topk_rest"].dtype == torch.float16
    assert tensors["teacher.topk_rest"].shape == (96,)
    assert tensors["teacher.topk_indices"].dtype == torch.int16
    # 4 fp16 values + 4 int16 indices + 1 fp16 bucket = 18 bytes a row, plus headers and the manifest
    assert 18 <= result.cache["bytes_per_example"] < 18 + 2000 / 96
    assert result.cache["bytes_per_example"] == pytest.approx(result.cache["bytes"] / 96, abs=0.1)
    # and the student learned the full 20-class distribution from the folded one
    assert kl(outputs(student, held).logits, outputs(teacher, held).logits) < 0.5 * before


@pytest.mark.parametrize("family", ["kd", "reverse_kd", "jsd"])
def test_folded_divergence_equals_full_when_one_class_is_folded(family: str) -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 20, generator=generator), 3 * torch.randn(8, 20, generator=generator)
    spec = CacheSpec(top_k=19, temperature=2.0)
    cached = views_from_batch(compact(Views(logits=teacher), spec), spec)
    assert cached.topk is not None and cached.logits is None
    objective = Objective.build({family: 1.0}, nn.Module(), nn.Module(), temperature=2.0)
    folded, _ = objective(Views(logits=student), cached, None, None)
    full = create_loss(family, temperature=2.0)(student, teacher.half().float())
    torch.testing.assert_close(folded, full, rtol=2e-3, atol=1e-4)


def test_folded_kd_approximates_full_kd_from_below() -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 50, generator=generator), 4 * torch.randn(8, 50, generator=generator)
    spec = CacheSpec(top_k=8, temperature=1.0)
    cached = views_from_batch(compact(Views(logits=teacher), spec), spec)
    objective = Objective.build({"kd": 1.0}, nn.Module(), nn.Module(), temperature=1.0)
    folded = float(objective(Views(logits=student), cached, None, None)[0])
    full = float(SoftTargetKL(temperature=1.0)(student, teacher))
    # folding classes together can only lose information (data processing), and little of it here
    assert 0.8 * full < folded <= full + 1e-3, (folded, full)


def test_dense_cache_when_top_k_covers_every_class() -> None:
    teacher = torch.randn(4, 5)
    spec = CacheSpec(top_k=5, temperature=2.0)
    stored = compact(Views(logits=teacher), spec)
    assert set(stored) == {"teacher.logits"} and stored["teacher.logits"].dtype == torch.float16


def test_corrupt_cache_part_is_recomputed_not_used(tmp_path: Path, train) -> None:
    teacher = teacher_model()
    rows = count_rows(teacher)
    run = dict(settings=settings(epochs=1), cache=tmp_path)
    first = edge_distill.distill(teacher, student_model(), train, {"kd": 1.0}, **run)
    (entry,) = _entries(tmp_path)
    (part,) = (tmp_path / entry).glob("*.safetensors")
    blob = bytearray(part.read_bytes())
    blob[-3] ^= 0xFF  # flip bits inside the stored tensor data
    part.write_bytes(bytes(blob))
    rows.clear()
    second = edge_distill.distill(teacher, student_model(), train, {"kd": 1.0}, **run)
    assert second.cache["cache"] == "computed"
    assert sum(rows) >= len(train["labels"])  # the teacher ran over the data again
    assert max_difference(weights(first.student), weights(second.student)) == 0.0
    third = edge_distill.distill(teacher, student_model(), train, {"kd": 1.0}, **run)
    assert third.cache["cache"] == "hit"  # the rewritten entry verifies


def test_cache_key_follows_teacher_weights_data_and_temperature(tmp_path: Path, train) -> None:
    teacher = teacher_model()

    def run(model=teacher, data=train, temperature=2.0) -> str:
        result = edge_distill.distill(model, student_model(), data, {"kd": 1.0}, cache=tmp_path,
                                      settings=settings(epochs=1, temperature=temperature))  # fmt: skip
        return result.cache["cache"]

    assert run() == "computed"
    assert run() == "hit"
    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        changed.classifier.bias[0] += 0.5
    assert run(model=changed) == "computed"
    other = {k: v.clone() for k, v in train.items()}
    other["input_ids"][0, 3] = (other["input_ids"][0, 3] + 1) % 100
    assert run(data=other) == "computed"
    assert run(temperature=3.0) == "computed"
    # equal weights under another config compute other outputs: 2 heads of width 16 instead of 4 of 8
    two_heads = BertForSequenceClassification(bert_config(32, 4, 2))
    two_heads.load_state_dict(teacher.state_dict())
    assert run(model=two_heads) == "computed"
    assert len(_entries(tmp_path)) == 5
    relabeled = {**train, "labels": torch.zeros_like(train["labels"])}
    assert run(data=relabeled) == "hit"  # labels are not teacher inputs


def test_a_run_mapping_other_layers_reuses_the_layers_cached(tmp_path: Path, train) -> None:
    teacher = teacher_model()
    rows = count_rows(teacher)

    def run(layers: str) -> dict:
        spec = {"kd": 1.0, "hidden_mse": {"weight": 1.0, "layers": layers}}
        return edge_distill.distill(teacher, student_model(), train, spec, settings=settings(epochs=1),
                                    cache=tmp_path).cache  # fmt: skip

    assert run("last")["computed"] == ["outputs", "hidden.bert.encoder.layer.3"]
    rows.clear()
    info = run("uniform")  # teacher layers 1 and 3: only layer 1 is new
    assert info["computed"] == ["hidden.bert.encoder.layer.1"]
    assert sum(rows) == 2 + len(train["labels"])  # the probe, then one pass for the missing layer
    assert "hidden.bert.encoder.layer.3" in info["stored"]


def test_cache_false_still_runs_the_teacher_once(train) -> None:
    teacher = teacher_model()
    rows = count_rows(teacher)
    result = edge_distill.distill(teacher, student_model(), train, {"kd": 1.0}, settings=settings(epochs=2),
                                  cache=False)  # fmt: skip
    assert result.cache == {"cache": "memory"}
    assert sum(rows) <= len(train["labels"]) + 2  # the data once, plus the probe


# --- Any model pair, any data container ---------------------------------------------------------------------


def _features(n: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, 8, generator=generator),
        "labels": torch.randint(0, 4, (n,), generator=generator),
    }


def test_plain_modules_distil_with_the_default_adapter() -> None:
    teacher, student = MLP(8, 64, 4, seed=0), MLP(8, 16, 4, seed=1)
    with torch.no_grad():
        teacher.head.weight.mul_(5.0)
    data, held = _features(128, 1), _features(64, 2)
    before = kl(student(held["x"]).detach(), teacher(held["x"]).detach())
    edge_distill.distill(teacher, student, data, {"kd": 1.0}, settings=settings(epochs=6))
    assert kl(student(held["x"]).detach(), teacher(held["x"]).detach()) < 0.5 * before


class Scorer(nn.Module):
    """A model no default adapter can call: two arguments in, a dict out."""

    def __init__(self, hidden: int, seed: int) -> None:
        super().__init__()
        self.mlp = MLP(8, hidden, 4, seed)

    def forward(self, features: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        return {"scores": scale * self.mlp(features)}


def test_custom_adapter_calls_the_model_and_reads_its_logits() -> None:
    teacher, student = Scorer(64, seed=0), Scorer(16, seed=1)
    adapter = Adapter(
        forward=lambda model, batch: model(batch["x"], scale=3.0), logits=lambda out: out["scores"]
    )
    data, held = _features(128, 1), _features(64, 2)
    with torch.no_grad():
        before = kl(student(held["x"], 3.0)["scores"], teacher(held["x"], 3.0)["scores"])
    edge_distill.distill(teacher, student, data, {"kd": 1.0}, adapter=adapter, teacher_adapter=adapter,
                         settings=settings(epochs=6))  # fmt: skip
    with torch.no_grad():
        assert kl(student(held["x"], 3.0)["scores"], teacher(held["x"], 3.0)["scores"]) < 0.5 * before
    with pytest.raises(TypeError, match="Adapter"):  # and without the adapter, a clear message
        edge_distill.distill(teacher, Scorer(16, seed=1), data, {"kd": 1.0}, settings=settings(epochs=1))


def test_datasets_dataset_trains_exactly_like_a_dict(teacher, train) -> None:
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict({k: v.tolist() for k, v in train.items()})
    from_dict = edge_distill.distill(teacher, student_model(), train, {"kd": 1.0, "ce": 1.0},
                                     settings=settings(epochs=1), cache=False)  # fmt: skip
    from_table = edge_distill.distill(teacher, student_model(), table, {"kd": 1.0, "ce": 1.0},
                                      settings=settings(epochs=1), cache=False)  # fmt: skip
    assert max_difference(weights(from_dict.student), weights(from_table.student)) == 0.0


def test_evaluation_reports_teacher_student_retention_agreement(teacher, train, held) -> None:
    result = edge_distill.distill(teacher, student_model(), train, val_data=held, settings=settings(epochs=2))
    t = outputs(teacher, held).logits.argmax(-1)
    s = outputs(result.student, held).logits.argmax(-1)
    teacher_acc = float((t == held["labels"]).float().mean())
    student_acc = float((s == held["labels"]).float().mean())
    assert result.metrics["teacher"] == pytest.approx(teacher_acc)
    assert result.metrics["student"] == pytest.approx(student_acc)
    assert result.metrics["retention"] == pytest.approx(student_acc / teacher_acc)
    assert result.metrics["agreement"] == pytest.approx(float((s == t).float().mean()))
