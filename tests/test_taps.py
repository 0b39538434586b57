"""Distillation taps: hooks capture the right tensors, are removed, and paths are checked."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from edge_distill.students import layer_map
from edge_distill.taps import TapError, Taps, encoder_layer_paths, map_layers

HIDDEN = 32


def tiny_bert(layers: int) -> BertForSequenceClassification:
    torch.manual_seed(layers)
    config = BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def teacher() -> BertForSequenceClassification:
    return tiny_bert(4)


@pytest.fixture(scope="module")
def student() -> BertForSequenceClassification:
    return tiny_bert(2)


@pytest.fixture()
def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 100, (3, 7), generator=generator)  # (batch, seq)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def hooks_left(model: torch.nn.Module, paths: list[str]) -> int:
    modules = dict(model.named_modules())
    return sum(len(modules[p]._forward_hooks) for p in paths)


def test_taps_equal_hidden_states(teacher: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    paths = encoder_layer_paths(teacher)
    with torch.no_grad(), Taps(teacher, paths) as taps:
        hidden_states = teacher(**batch, output_hidden_states=True).hidden_states
    assert list(taps.outputs) == paths
    for i, path in enumerate(paths):
        assert taps.outputs[path].shape == (3, 7, HIDDEN)  # (batch, seq, hidden)
        torch.testing.assert_close(taps.outputs[path], hidden_states[i + 1], rtol=0, atol=0)


def test_tap_on_submodule_and_clear(teacher: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    path = "bert.encoder.layer.1.attention.output"
    taps = Taps(teacher, [path])
    with torch.no_grad(), taps:
        teacher(**batch)
    assert taps.outputs[path].shape == (3, 7, HIDDEN)
    taps.clear()
    assert taps.outputs == {}


def test_student_taps_keep_gradients(student: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    path = encoder_layer_paths(student)[-1]
    with Taps(student, [path]) as taps:
        student(**batch)
    assert taps.outputs[path].requires_grad


# transformers installs its own lasting hooks when asked for hidden states, so these use a fresh model.
def test_hooks_removed_on_exit(batch: dict[str, torch.Tensor]) -> None:
    model = tiny_bert(2)
    paths = encoder_layer_paths(model)
    with torch.no_grad(), Taps(model, paths):
        assert hooks_left(model, paths) == len(paths)
        model(**batch)
    assert hooks_left(model, paths) == 0


def test_hooks_removed_on_exception() -> None:
    model = tiny_bert(2)
    paths = encoder_layer_paths(model)
    with pytest.raises(RuntimeError, match="boom"), Taps(model, paths):
        raise RuntimeError("boom")
    assert hooks_left(model, paths) == 0


def test_taps_cannot_be_entered_twice(teacher: torch.nn.Module) -> None:
    taps = Taps(teacher, encoder_layer_paths(teacher))
    with taps, pytest.raises(TapError, match="already active"), taps:
        pass


def test_unknown_path_suggests_closest(teacher: torch.nn.Module) -> None:
    with pytest.raises(TapError) as info:
        Taps(teacher, ["bert.encoder.layers.3"])
    message = str(info.value)
    assert "'bert.encoder.layers.3'" in message
    assert "closest valid name is 'bert.encoder.layer.3'" in message
    assert "named_modules()" in message


def test_encoder_layer_paths(teacher: torch.nn.Module, student: torch.nn.Module) -> None:
    assert encoder_layer_paths(teacher) == [f"bert.encoder.layer.{i}" for i in range(4)]
    assert encoder_layer_paths(student.bert) == ["encoder.layer.0", "encoder.layer.1"]
    with pytest.raises(TapError, match=r"encoder\.layer"):
        encoder_layer_paths(torch.nn.Linear(2, 2))


def test_map_layers_uniform_follows_layer_map(teacher: torch.nn.Module, student: torch.nn.Module) -> None:
    assert layer_map(4, 2) == [1, 3]
    assert map_layers(teacher, student) == [
        ("bert.encoder.layer.0", "bert.encoder.layer.1"),
        ("bert.encoder.layer.1", "bert.encoder.layer.3"),
    ]


def test_map_layers_last_and_first_last(teacher: torch.nn.Module, student: torch.nn.Module) -> None:
    assert map_layers(teacher, student, strategy="last") == [("bert.encoder.layer.1", "bert.encoder.layer.3")]
    assert map_layers(teacher, student, strategy="first_last") == [
        ("bert.encoder.layer.0", "bert.encoder.layer.0"),
        ("bert.encoder.layer.1", "bert.encoder.layer.3"),
    ]
    one = tiny_bert(1)
    assert map_layers(teacher, one, strategy="first_last") == [
        ("bert.encoder.layer.0", "bert.encoder.layer.3")
    ]


def test_map_layers_unknown_strategy(teacher: torch.nn.Module, student: torch.nn.Module) -> None:
    with pytest.raises(TapError, match="did you mean 'first_last'"):
        map_layers(teacher, student, strategy="firstlast")


def test_map_layers_overrides_replace_and_extend(teacher: torch.nn.Module, student: torch.nn.Module) -> None:
    overrides = {
        "bert.encoder.layer.0": "bert.encoder.layer.2",
        "bert.encoder.layer.1.attention.self": "bert.encoder.layer.3.attention.self",
    }
    assert map_layers(teacher, student, overrides=overrides) == [
        ("bert.encoder.layer.0", "bert.encoder.layer.2"),
        ("bert.encoder.layer.1", "bert.encoder.layer.3"),
        ("bert.encoder.layer.1.attention.self", "bert.encoder.layer.3.attention.self"),
    ]


@pytest.mark.parametrize(
    ("overrides", "bad", "close"),
    [
        ({"bert.encoder.layer.5": "bert.encoder.layer.3"}, "bert.encoder.layer.5", "bert.encoder.layer.1"),
        ({"bert.encoder.layer.1": "bert.encoder.layr.3"}, "bert.encoder.layr.3", "bert.encoder.layer.3"),
    ],
)
def test_map_layers_overrides_checked(
    teacher: torch.nn.Module, student: torch.nn.Module, overrides: dict[str, str], bad: str, close: str
) -> None:
    with pytest.raises(TapError) as info:
        map_layers(teacher, student, overrides=overrides)
    assert f"no module named {bad!r}" in str(info.value)
    assert f"closest valid name is {close!r}" in str(info.value)
