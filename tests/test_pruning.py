"""Width pruning by activation importance: shapes, exact plumbing, importance-driven choices, reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    ElectraConfig,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
)

from edge_distill.errors import TeacherError
from edge_distill.pruning import build_pruned_student, importance, pruning_plan
from edge_distill.students import StudentSpec, build_student, teacher_spec

TINY = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_labels": 3,
    "max_position_embeddings": 32,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
FAMILIES: dict[str, PretrainedConfig] = {
    "bert": BertConfig(**TINY),
    "roberta": RobertaConfig(**TINY),  # classifier.dense + out_proj, no pooler
    "electra": ElectraConfig(**TINY, embedding_size=16),  # embeddings_project into the hidden space
}


def tiny_teacher(config: PretrainedConfig | None = None, *, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config or BertConfig(**TINY)).eval()


def tokens(seed: int, batch: int = 48, seq: int = 16) -> dict[str, torch.Tensor]:
    """Random calibration tokens (ids 3..99: clear of RoBERTa's padding id), the last rows padded."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (batch, seq), generator=generator)  # (batch, seq)
    mask = torch.ones_like(ids)
    mask[batch // 2 :, seq // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits  # (batch, labels)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def test_importance_shapes_and_values() -> None:
    teacher, calibration = tiny_teacher(), tokens(0)
    scores = importance(teacher, calibration)
    assert scores.heads.shape == (4, 4)
    assert scores.neurons.shape == (4, 64)
    assert scores.hidden.shape == (32,)
    for values in (scores.heads, scores.neurons, scores.hidden):
        assert bool((values >= 0).all()) and bool((values > 0).any())
    # batching does not change the means, and padded positions do not count whatever they hold
    rebatched = importance(teacher, calibration, batch_size=7)
    torch.testing.assert_close(rebatched.neurons, scores.neurons, rtol=1e-4, atol=1e-6)
    repadded = dict(
        calibration, input_ids=calibration["input_ids"].masked_fill(calibration["attention_mask"] == 0, 5)
    )
    torch.testing.assert_close(importance(teacher, repadded).heads, scores.heads, rtol=1e-4, atol=1e-6)
    assert not teacher.training


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_keeping_everything_reproduces_the_teacher(family: str) -> None:
    teacher, calibration = tiny_teacher(FAMILIES[family]), tokens(1)
    student = build_pruned_student(teacher, teacher_spec(teacher.config), importance(teacher, calibration))
    held_out = tokens(2)
    torch.testing.assert_close(logits(student, held_out), logits(teacher, held_out), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_prunes_to_a_working_student(family: str) -> None:
    teacher = tiny_teacher(FAMILIES[family])
    student = build_pruned_student(teacher, StudentSpec(2, 24, 3, 40), importance(teacher, tokens(1)))
    assert logits(student, tokens(2)).shape == (48, 3)


def test_useless_heads_neurons_and_channels_are_dropped() -> None:
    teacher = tiny_teacher()
    dead_neurons = [5, 17, 40]
    with torch.no_grad():
        for layer in teacher.bert.encoder.layer:
            value = layer.attention.self.value
            value.weight[8:16], value.bias[8:16] = 0.0, 0.0  # head 1 outputs zeros
            layer.intermediate.dense.weight[dead_neurons], layer.intermediate.dense.bias[dead_neurons] = 0, 0
        for module in teacher.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight[7], module.bias[7] = 0.0, 0.0  # hidden channel 7 is zero everywhere
    scores = importance(teacher, tokens(3))
    plan = pruning_plan(teacher.config, StudentSpec(4, 24, 3, 61), scores)
    assert [h.tolist() for h in plan.heads] == [[0, 2, 3]] * 4
    assert all(set(n.tolist()) == set(range(64)) - set(dead_neurons) for n in plan.neurons)
    assert 7 not in plan.hidden.tolist()
    # the student holds exactly those rows/columns of the teacher
    student = build_pruned_student(teacher, StudentSpec(4, 24, 3, 61), scores)
    kept_rows = torch.cat([torch.arange(0, 8), torch.arange(16, 32)])
    key = "bert.encoder.layer.2.attention.self.query.weight"
    expected = teacher.state_dict()[key][kept_rows][:, plan.hidden]
    assert torch.equal(student.state_dict()[key], expected)
    # dropping only the dead neurons loses nothing; first-k drops live ones (61, 62, 63) instead
    ffn_only = StudentSpec(4, 32, 4, 61)
    held_out = tokens(4)
    reference = logits(teacher, held_out)
    pruned = logits(build_pruned_student(teacher, ffn_only, scores), held_out)
    torch.testing.assert_close(pruned, reference, rtol=0, atol=1e-5)
    assert mse(logits(build_student(teacher, ffn_only), held_out), reference) > 1e-10  # measured 1.8e-9


def teacher_with_important_units_last(seed: int) -> PreTrainedModel:
    """A teacher whose first heads, FFN neurons and hidden channels are shrunk tenfold (near-useless)."""
    teacher = tiny_teacher(BertConfig(**TINY, initializer_range=0.1), seed=seed)
    with torch.no_grad():
        for layer in teacher.bert.encoder.layer:
            value, ffn = layer.attention.self.value, layer.intermediate.dense
            value.weight[:16] *= 0.1  # heads 0 and 1
            value.bias[:16] *= 0.1
            ffn.weight[:32] *= 0.1  # neurons 0..31
            ffn.bias[:32] *= 0.1
        for module in teacher.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight[:16] *= 0.1  # hidden channels 0..15
                module.bias[:16] *= 0.1
    return teacher


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_importance_pruning_beats_first_k(seed: int) -> None:
    teacher = teacher_with_important_units_last(seed)
    scores = importance(teacher, tokens(5))
    held_out = tokens(6)
    reference = logits(teacher, held_out)
    half = StudentSpec(4, 16, 2, 32)
    plan = pruning_plan(teacher.config, half, scores)
    assert [h.tolist() for h in plan.heads] == [[2, 3]] * 4
    assert all(n.tolist() == list(range(32, 64)) for n in plan.neurons)
    assert plan.hidden.tolist() == list(range(16, 32))
    by_importance = mse(logits(build_pruned_student(teacher, half, scores), held_out), reference)
    first_k = mse(logits(build_student(teacher, half), held_out), reference)
    assert by_importance < 0.8 * first_k  # measured ratios 0.40, 0.60, 0.72
    ffn_only = StudentSpec(4, 32, 4, 32)
    by_importance = mse(logits(build_pruned_student(teacher, ffn_only, scores), held_out), reference)
    first_k = mse(logits(build_student(teacher, ffn_only), held_out), reference)
    assert by_importance < 0.1 * first_k  # measured ratios 0.006, 0.004, 0.013


def test_pruned_student_saves_reloads_and_is_fully_sized(tmp_path: Path) -> None:
    teacher = tiny_teacher()
    spec = StudentSpec(2, 16, 2, 24)
    student = build_pruned_student(teacher, spec, importance(teacher, tokens(7)))
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    fresh = AutoModelForSequenceClassification.from_config(student.config)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in fresh.parameters())
    assert (reloaded.config.hidden_size, reloaded.config.num_attention_heads) == (16, 2)
    assert (reloaded.config.num_hidden_layers, reloaded.config.intermediate_size) == (2, 24)
    held_out = tokens(8)
    torch.testing.assert_close(logits(reloaded, held_out), logits(student, held_out), rtol=0, atol=0)


def test_spec_must_keep_the_teacher_head_size() -> None:
    teacher = tiny_teacher()
    with pytest.raises(TeacherError, match="head size"):
        build_pruned_student(teacher, StudentSpec(4, 32, 2, 64), importance(teacher, tokens(0)))
