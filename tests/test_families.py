"""Every teacher family end to end on tiny random models built here (offline): the teacher loads from a
saved folder, a student is cut from it, one distillation epoch runs, the family's metric is computed, and
the student saves and reloads with ``from_pretrained``. Plus any ``nn.Module`` with the user's builder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from family_models import (
    VOCAB,
    classifier_folder,
    embedding_folder,
    gpt2_folder,
    llama_folder,
    texts,
    vit_folder,
)
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

import edge_distill
from edge_distill.cut import Cutter, export_module
from edge_distill.families import FAMILIES, Fit, get_family
from edge_distill.students import teacher_spec
from edge_distill.targets.base import check_parity, get_target
from edge_distill.teachers import load_teacher
from edge_distill.trainer import TrainSettings
from edge_distill.vision import digits_images

pytestmark = pytest.mark.usefixtures("one_thread")

SEQ = 16
ONE_EPOCH = TrainSettings(epochs=1, batch_size=16, lr=1e-3, mixed_precision="no")


# family -> (folder builders, the student cut, whether the vocabulary is trimmed)
CASES: dict[str, list[Callable[[Path], Path]]] = {
    "sequence-classification": [classifier_folder],
    "sentence-embedding": [embedding_folder],
    "causal-lm": [llama_folder, gpt2_folder],
    "image-classification": [vit_folder],
}


def test_every_registered_family_has_a_case() -> None:
    assert set(CASES) == set(FAMILIES.names())


def family_inputs(family_name: str, tokenizer) -> tuple[dict, dict, torch.Tensor | None, torch.Tensor | None]:
    """(train inputs, test inputs, train labels, test labels) as the family takes them."""
    if family_name == "image-classification":
        train, _, test = digits_images(0)
        train = {k: v[:96] for k, v in train.items()}
        test = {k: v[:48] for k, v in test.items()}
        return (
            {"pixel_values": train["pixel_values"]},
            {"pixel_values": test["pixel_values"]},
            *(
                train["labels"],
                test["labels"],
            ),
        )
    family = get_family(family_name)
    (train_texts, train_labels), (test_texts, test_labels) = texts(96, 0), texts(48, 1)
    train, test = family.encode(tokenizer, train_texts, SEQ), family.encode(tokenizer, test_texts, SEQ)
    if family_name == "causal-lm":
        return train, test, None, None
    return train, test, train_labels, test_labels


def smaller_spec(cutter: Cutter):
    """A student half as deep, narrower where the family allows, vocabulary-trimmed where it allows."""
    full = teacher_spec(cutter.teacher.config)
    space = cutter.space()
    half = [s for s in space if s.layers == full.layers // 2]
    narrow = [s for s in half if s.hidden < full.hidden] or half
    trimmed = [s for s in narrow if s.vocab is not None] or narrow
    return trimmed[0]


@pytest.mark.parametrize(
    "build", [build for builds in CASES.values() for build in builds], ids=lambda b: b.__name__
)
def test_family_end_to_end(build: Callable[[Path], Path], tmp_path: Path) -> None:
    teacher = load_teacher(build(tmp_path / "teacher"))
    family = get_family(teacher.task)
    assert (build in CASES[teacher.task]) and teacher.params > 0
    train, test, train_labels, test_labels = family_inputs(teacher.task, teacher.tokenizer)
    cutter = Cutter.for_data(teacher.model, family, train, tokenizer=teacher.tokenizer)
    spec = smaller_spec(cutter)
    student = cutter.cut(spec)
    assert sum(p.numel() for p in student.parameters()) < teacher.params

    data = dict(train) if train_labels is None else {**train, "labels": train_labels}
    result = edge_distill.distill(
        teacher.model, student, data, family.losses(train_labels is not None), settings=ONE_EPOCH,
        adapter=family.adapter(student), teacher_adapter=family.adapter(teacher.model), cache=False,
    )  # fmt: skip
    losses = result.train.epoch_losses
    assert len(losses) == 1 and all(torch.isfinite(torch.tensor(v)) for v in losses[0].values())

    t_test, s_test = family.reference(teacher.model, test), family.reference(student, test)
    fit = None
    if family.needs_train_reference(True):
        fit = Fit(family.reference(student, train), train_labels, family.reference(teacher.model, train))
    measured = family.measure(s_test, t_test, test_labels, fit)
    assert measured["name"] == family.metric and measured["value"] == measured["value"]  # not NaN
    assert measured["value"] > 0

    shipped = cutter.finish(student, spec)
    if spec.vocab is not None:  # trimmed after training: the table shrank, the outputs did not change
        assert shipped.get_input_embeddings().num_embeddings == spec.vocab < VOCAB
    module = export_module(family, shipped)
    inputs = {k: v[:4] for k, v in test.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        before = module(*inputs.values())
    shipped.save_pretrained(tmp_path / "student")
    reloaded = family.loader().from_pretrained(tmp_path / "student").eval()
    family.prepare(reloaded, None)
    with torch.no_grad():
        after = export_module(family, reloaded)(*inputs.values())
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize(
    "build", [classifier_folder, embedding_folder, llama_folder], ids=lambda b: b.__name__
)
def test_students_export_to_onnx_and_take_the_original_ids(build, tmp_path: Path) -> None:
    teacher = load_teacher(build(tmp_path / "teacher"))
    family = get_family(teacher.task)
    train, test, *_ = family_inputs(teacher.task, teacher.tokenizer)
    cutter = Cutter.for_data(teacher.model, family, train, tokenizer=teacher.tokenizer)
    spec = smaller_spec(cutter)
    assert (spec.vocab is not None) == family.vocab  # encoders are trimmed; decoders are not (yet)
    shipped = cutter.finish(cutter.cut(spec), spec)
    module = export_module(family, shipped)
    inputs = {k: v[:8] for k, v in test.items() if k in ("input_ids", "attention_mask")}
    target = get_target("onnx")
    artifact = target.export(module, {k: v[:1] for k, v in inputs.items()}, tmp_path / "onnx")
    assert check_parity(target, artifact, module, inputs).max_abs_diff < 1e-4


def test_unlabelled_classifier_data_is_scored_against_the_teacher() -> None:
    family = get_family("sequence-classification")
    teacher = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    student = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 1.0]])
    measured = family.measure(student, teacher, None)
    assert measured["labels"] == "teacher" and measured["value"] == pytest.approx(2 / 3)


def test_embedding_probe_and_cosine_agreement_of_a_rotated_copy() -> None:
    """A student whose embeddings are a rotation of the teacher's agrees fully and probes as well."""
    family = get_family("sentence-embedding")
    torch.manual_seed(0)
    centers = torch.randn(3, 8) * 3
    labels = torch.arange(60) % 3
    teacher = centers[labels] + torch.randn(60, 8)
    rotation = torch.linalg.qr(torch.randn(8, 8))[0]
    student = teacher @ rotation
    fit = Fit(student[:40], labels[:40], teacher[:40])
    measured = family.measure(student[40:], teacher[40:], labels[40:], fit)
    teacher_measured = family.measure(
        teacher[40:], teacher[40:], labels[40:], Fit(teacher[:40], labels[:40], teacher[:40])
    )
    assert measured["agreement"] == pytest.approx(1.0, abs=1e-6)
    assert measured["value"] == pytest.approx(teacher_measured["value"])
    unlabeled = family.measure(student[40:], teacher[40:], None, Fit(student[:40], None, teacher[:40]))
    assert unlabeled["name"] == "cosine agreement" and unlabeled["value"] == pytest.approx(1.0, abs=1e-6)


def test_causal_lm_perplexity_is_exp_of_the_models_loss(tmp_path: Path) -> None:
    teacher = load_teacher(llama_folder(tmp_path / "lm"))
    family = get_family("causal-lm")
    examples = family.encode(teacher.tokenizer, texts(8, 0)[0], SEQ)
    reference = family.reference(teacher.model, examples)
    labels = examples["input_ids"].masked_fill(examples["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = teacher.model(**{k: examples[k] for k in ("input_ids", "attention_mask")}, labels=labels).loss
    assert family.score(reference, None) == pytest.approx(float(loss.exp()), rel=1e-4)
    assert family.retention(20.0, 10.0) == pytest.approx(0.5)  # lower is better: teacher / student


class UserNet(nn.Module, PyTorchModelHubMixin):
    """Any user module: an MLP over 8x8 digits that saves and reloads with from_pretrained (the mixin)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, width), nn.ReLU())
        self.head = nn.Linear(width, 10)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(pixel_values))


def test_any_module_with_a_user_student_builder(tmp_path: Path) -> None:
    train, _, test = digits_images(0)
    torch.manual_seed(0)
    teacher = UserNet(128).eval()

    def build_student(teacher: UserNet) -> UserNet:  # the user's own cut: half the width
        return UserNet(teacher.head.in_features // 2)

    student = build_student(teacher)
    result = edge_distill.distill(teacher, student, train, settings=ONE_EPOCH, val_data=test, cache=False)
    assert len(result.train.epoch_losses) == 1 and 0.0 <= result.metrics["student"] <= 1.0
    student.save_pretrained(tmp_path / "user-student")
    reloaded = UserNet.from_pretrained(tmp_path / "user-student").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(test["pixel_values"][:4]), student.eval()(test["pixel_values"][:4])
        )
