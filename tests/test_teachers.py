"""Teachers: loading tiny random classifiers, every TeacherError, fingerprints, evaluate, the demo build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel, BertTokenizer

from edge_distill import demo_teacher, teachers
from edge_distill.data import Split, load_demo_data
from edge_distill.demo_teacher import DEMO_TEACHER_NAME, METRICS_FILE, build_demo_teacher, fit_linear_head
from edge_distill.errors import TeacherError
from edge_distill.teachers import Teacher, evaluate, load_teacher

LABELS = ("red", "green", "blue")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [*SPECIAL, "the", "a", "sky", "grass", "sea", "apple", "leaf", "water", "##s", "is"]


def _tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def _config(**overrides: object) -> BertConfig:
    settings: dict[str, object] = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=len(WORDS), max_position_embeddings=32, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )  # fmt: skip
    settings.update(overrides)
    return BertConfig(**settings)


def _save(folder: Path, model: torch.nn.Module, **kwargs: object) -> Path:
    model.save_pretrained(folder, **kwargs)
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def small_teacher(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return _save(tmp_path / "teacher", BertForSequenceClassification(_config()))


# -------------------- loading --------------------


def test_load_teacher_from_folder(small_teacher: Path) -> None:
    teacher = load_teacher(small_teacher)
    assert teacher.label_names == LABELS
    assert teacher.task == "sequence-classification"
    assert teacher.path == small_teacher and teacher.name == str(small_teacher)
    assert not teacher.model.training
    assert teacher.params == sum(p.numel() for p in teacher.model.parameters()) > 0
    assert teacher.tokenizer("the sky")["input_ids"] == [2, 5, 7, 3]


def test_load_teacher_accepts_pickled_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, folder = BertForSequenceClassification(_config()), tmp_path / "bin"
    model.config.architectures = ["BertForSequenceClassification"]
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # transformers 5 always writes safetensors
    _tokenizer().save_pretrained(folder)
    teacher = load_teacher(folder)  # transformers reads .bin with torch.load(weights_only=True)
    assert torch.equal(teacher.model.classifier.weight, model.classifier.weight)
    assert len(teacher.fingerprint()) == 64  # hashes the .bin when there is no safetensors file


def test_load_is_quiet(small_teacher: Path, capfd: pytest.CaptureFixture) -> None:
    load_teacher(small_teacher)
    captured = capfd.readouterr()  # fd level: transformers' handler holds the real stderr
    assert "Loading weights" not in captured.err + captured.out


@pytest.mark.parametrize("path", ["./no-such-teacher", "~/no-such-teacher-here", "a/b/c"])
def test_missing_folder(path: str) -> None:
    with pytest.raises(TeacherError, match=r"does not exist; pass a folder with config\.json"):
        load_teacher(path)


def test_missing_absolute_folder(tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match="does not exist"):
        load_teacher(tmp_path / "missing")


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match=r"no config\.json"):
        load_teacher(tmp_path)


def test_file_instead_of_folder(small_teacher: Path) -> None:
    with pytest.raises(TeacherError, match="is a file"):
        load_teacher(small_teacher / "config.json")


def test_hub_id_unavailable_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(TeacherError) as info:
        load_teacher("nobody-here/no-such-model")
    message = str(info.value)
    assert "could not be found" in message
    assert "huggingface-cli download nobody-here/no-such-model --local-dir DIR" in message
    assert "--teacher DIR" in message


def test_a_family_no_one_supports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = _save(tmp_path / "mlm", BertForMaskedLM(_config()))
    with pytest.raises(TeacherError, match="is a BertForMaskedLM, which no supported family covers"):
        load_teacher(folder)


def test_a_base_encoder_loads_as_a_sentence_embedding_teacher(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = _save(tmp_path / "encoder", BertModel(_config()))
    assert load_teacher(folder).task == "sentence-embedding"
    with pytest.raises(TeacherError, match=r"no trained weights for .*classifier"):
        load_teacher(folder, task="sequence-classification")


def test_classifier_config_without_head_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = _save(tmp_path / "headless", BertModel(_config()))
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherError, match=r"no trained weights for .*classifier"):
        load_teacher(folder)


def test_config_without_weights(small_teacher: Path) -> None:
    for weights in small_teacher.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(TeacherError, match="no loadable weights"):
        load_teacher(small_teacher)


def test_config_with_default_labels_and_no_architecture(tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("architectures", None)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherError, match=r"no architectures or labels in config\.json"):
        load_teacher(folder)


@pytest.mark.parametrize(
    ("source", "is_path"),
    [("org/model", False), ("model", False), ("./m", True), ("~/m", True), ("/m", True), ("a/b/c", True)],
)
def test_hub_ids_are_not_paths(source: str, is_path: bool) -> None:
    assert teachers._looks_like_path(source) is is_path


# -------------------- fingerprint and evaluate --------------------


def test_fingerprint_stable_and_sensitive_to_weights(small_teacher: Path) -> None:
    first = load_teacher(small_teacher)
    assert first.fingerprint() == load_teacher(small_teacher).fingerprint()
    assert len(first.fingerprint()) == 64
    with torch.no_grad():
        first.model.classifier.bias.add_(1.0)
    first.model.save_pretrained(small_teacher)
    assert load_teacher(small_teacher).fingerprint() != first.fingerprint()


def test_evaluate_gives_exact_fp32_logits(small_teacher: Path) -> None:
    teacher = load_teacher(small_teacher)
    split = Split(("the sky", "a sea", "grass is", "the apple leaf"), np.array([0, 1, 2, 0], dtype=np.int64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # must not leak into evaluate
        accuracy, logits = evaluate(teacher, None, split, seq_len=8, batch_size=3)
    assert logits.shape == (4, 3) and logits.dtype == np.float32
    batch = teacher.tokenizer(list(split.texts), padding="max_length", max_length=8, return_tensors="pt")
    with torch.no_grad():
        expected = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert accuracy == float((expected.argmax(1).numpy() == split.labels).mean())
    same, _ = evaluate(teacher.model, teacher.tokenizer, split, seq_len=8)
    assert same == accuracy


def test_evaluate_empty_split(small_teacher: Path) -> None:
    accuracy, logits = evaluate(
        load_teacher(small_teacher), None, Split((), np.zeros(0, np.int64)), seq_len=8
    )
    assert np.isnan(accuracy) and logits.shape == (0, 3)


def test_fit_linear_head_separates_separable_data() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % 3
    features = torch.randn(90, 8, generator=gen) + 5 * torch.nn.functional.one_hot(labels, 8)
    weight, bias = fit_linear_head(features, labels, 3)
    assert ((features @ weight.T + bias).argmax(1) == labels).all()
    again = fit_linear_head(features, labels, 3)
    assert torch.equal(again[0], weight) and torch.equal(again[1], bias)  # deterministic


# -------------------- the demo teacher --------------------


def test_build_demo_teacher_builds_caches_and_rebuilds(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = load_demo_data(max_per_class=8)
    calls: list[tuple[str, int, int]] = []
    teacher = build_demo_teacher(data, seq_len=32, cache_dir=tmp_path, progress=lambda *a: calls.append(a))
    console = "".join(capfd.readouterr())
    assert (
        "MISSING" not in console and "newly initialized" not in console and "Loading weights" not in console
    )
    assert isinstance(teacher, Teacher) and teacher.name == DEMO_TEACHER_NAME
    assert teacher.label_names == data.label_names
    assert type(teacher.model).__name__ == "BertForSequenceClassification"
    assert calls and all(done <= total for _, done, total in calls)
    assert set(teacher.metrics) >= {"val_accuracy", "test_accuracy"}
    entries = [p for p in tmp_path.iterdir()]
    assert [p.name for p in entries] == [teacher.path.name] and teacher.path.name.startswith("demo-")
    record = json.loads((teacher.path / METRICS_FILE).read_text())
    assert record["metrics"] == teacher.metrics and record["seq_len"] == 32
    test_accuracy, _ = evaluate(teacher, None, data.test, seq_len=32)
    assert test_accuracy == pytest.approx(teacher.metrics["test_accuracy"])

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the cached teacher should have been reused")

    monkeypatch.setattr(demo_teacher, "_train_demo", no_rebuild)
    cached = build_demo_teacher(data, seq_len=32, cache_dir=tmp_path)
    assert cached.path == teacher.path and cached.fingerprint() == teacher.fingerprint()
    assert cached.metrics == teacher.metrics
    monkeypatch.undo()

    (teacher.path / "model.safetensors").unlink()  # a corrupt entry is rebuilt
    rebuilt = build_demo_teacher(data, seq_len=32, cache_dir=tmp_path)
    assert (rebuilt.path / "model.safetensors").is_file()
    assert rebuilt.fingerprint() == teacher.fingerprint()  # seeded build: the same weights again
    assert [p.name for p in tmp_path.iterdir()] == [teacher.path.name]  # no leftovers


def test_demo_cache_key_depends_on_data_and_seq_len() -> None:
    data = load_demo_data(max_per_class=4)
    key = demo_teacher.demo_fingerprint(data, 32)
    assert key == demo_teacher.demo_fingerprint(load_demo_data(max_per_class=4), 32)
    assert key != demo_teacher.demo_fingerprint(data, 64)
    assert key != demo_teacher.demo_fingerprint(load_demo_data(max_per_class=4, seed=1), 32)
