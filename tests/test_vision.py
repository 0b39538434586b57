"""Image teachers: the digits dataset, ViT and CNN students cut from a trained teacher, distillation, ONNX."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTForImageClassification

import edge_distill
from edge_distill.evaluation import predict
from edge_distill.students import StudentSpec, student_config, teacher_spec
from edge_distill.trainer import TrainSettings
from edge_distill.views import auto_adapter
from edge_distill.vision import (
    ImageLogitsOnly,
    SmallCNN,
    accuracy,
    cnn_student,
    digits_images,
    fit_classifier,
    vit_layer_pairs,
    vit_space,
    vit_student,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CHANCE = 0.1  # ten balanced digit classes
SMALL = StudentSpec(layers=2, hidden=16, heads=2, intermediate=32)
SETTINGS = TrainSettings(epochs=3, batch_size=32, lr=3e-3, mixed_precision="no")


def tiny_vit_config() -> ViTConfig:
    return ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=10,
    )


@pytest.fixture(scope="module")
def digits() -> tuple[dict, dict, dict]:
    return digits_images(0)


@contextmanager
def single_thread() -> Iterator[None]:
    """Module-scoped teachers train before the function-scoped ``one_thread`` fixture applies."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vit_teacher(digits) -> ViTForImageClassification:
    torch.manual_seed(0)
    with single_thread():
        return fit_classifier(ViTForImageClassification(tiny_vit_config()), digits[0], epochs=8, lr=1e-3)


@pytest.fixture(scope="module")
def cnn_teacher(digits) -> SmallCNN:
    torch.manual_seed(0)
    with single_thread():
        return fit_classifier(SmallCNN(channels=(16, 32)), digits[0], epochs=3, lr=3e-3)


def kl_to_teacher(teacher: torch.nn.Module, student: torch.nn.Module, examples: dict) -> float:
    """KL(teacher || student) per example, on ``examples``."""
    t = predict(teacher, auto_adapter(teacher), examples).log_softmax(-1)  # (n, classes)
    s = predict(student, auto_adapter(student), examples).log_softmax(-1)  # (n, classes)
    return float(F.kl_div(s, t, log_target=True, reduction="batchmean"))


def test_digits_images_shapes_splits_and_determinism() -> None:
    train, val, test = digits_images(0)
    assert train["pixel_values"].shape == (1437, 3, 16, 16) and train["pixel_values"].dtype == torch.float32
    assert train["labels"].dtype == torch.long and set(train["labels"].tolist()) == set(range(10))
    assert (len(val["labels"]), len(test["labels"])) == (179, 181)
    assert float(train["pixel_values"].min()) >= -1.0 and float(train["pixel_values"].max()) <= 1.0
    again = digits_images(0)
    assert all(torch.equal(a[k], b[k]) for a, b in zip((train, val, test), again, strict=True) for k in a)
    assert not torch.equal(digits_images(1)[0]["labels"], train["labels"])
    assert digits_images(0, size=8)[0]["pixel_values"].shape == (1437, 3, 8, 8)


def test_digits_splits_are_disjoint() -> None:
    from sklearn.datasets import load_digits

    train, val, test = digits_images(0, size=8)
    assert sum(len(s["labels"]) for s in (train, val, test)) == len(load_digits().target)
    # rows identified by their pixels: duplicates in the raw data aside, no image is in two splits
    keys = [{tuple(x.flatten().tolist()) for x in s["pixel_values"]} for s in (train, val, test)]
    raw = {tuple(x.flatten().tolist()) for x in torch.cat([s["pixel_values"] for s in (train, val, test)])}
    assert len(keys[0] & keys[1]) + len(keys[0] & keys[2]) + len(keys[1] & keys[2]) <= 1797 - len(raw)


def test_teachers_beat_chance(vit_teacher, cnn_teacher, digits) -> None:
    assert accuracy(vit_teacher, digits[1]) > 0.5
    assert accuracy(cnn_teacher, digits[1]) > 0.5


def test_vit_space_is_strictly_smaller_and_sorted() -> None:
    config = tiny_vit_config()
    space = vit_space(config)
    full = teacher_spec(config)
    assert full not in space and len(space) == 4 * 4 - 1
    assert all(s.hidden // s.heads == 8 and s.layers <= 4 for s in space)
    sizes = [s.layers * s.hidden for s in space]
    assert sizes == sorted(sizes, reverse=True)


def test_vit_student_with_the_teachers_spec_reproduces_the_teacher(vit_teacher, digits) -> None:
    x = digits[1]["pixel_values"][:16]
    clone = vit_student(vit_teacher, teacher_spec(vit_teacher.config))
    with torch.no_grad():
        assert torch.equal(clone(pixel_values=x).logits, vit_teacher(pixel_values=x).logits)


def test_vit_student_shape_and_save_reload(vit_teacher, digits, tmp_path: Path) -> None:
    student = vit_student(vit_teacher, SMALL)
    fresh = ViTForImageClassification(student_config(vit_teacher.config, SMALL))
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in fresh.parameters())
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 16
    # slicing: the patch projection keeps the teacher's first 16 output channels
    teacher_w = vit_teacher.vit.embeddings.patch_embeddings.projection.weight
    assert torch.equal(student.vit.embeddings.patch_embeddings.projection.weight, teacher_w[:16])
    student.save_pretrained(tmp_path)
    reloaded = ViTForImageClassification.from_pretrained(tmp_path).eval()
    x = digits[1]["pixel_values"][:8]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, student(pixel_values=x).logits)


def test_vit_student_rejects_another_head_size(vit_teacher) -> None:
    with pytest.raises(edge_distill.errors.TeacherError, match="head size 8"):
        vit_student(vit_teacher, StudentSpec(layers=2, hidden=24, heads=2, intermediate=32))


def test_distil_vit_into_a_sliced_student(vit_teacher, digits) -> None:
    train, val, _ = digits
    student = vit_student(vit_teacher, SMALL)
    kl_before = kl_to_teacher(vit_teacher, student, val)
    losses = {
        "kd": 0.5,
        "ce": 0.5,
        "hidden_mse": {"weight": 1.0, "layers": vit_layer_pairs(vit_teacher, student)},
    }
    result = edge_distill.distill(vit_teacher, student, train, losses, val_data=val, settings=SETTINGS)
    assert len(result.train.epoch_losses) == SETTINGS.epochs
    assert set(result.metrics) == {"teacher", "student", "retention", "agreement"}
    assert result.metrics["student"] > 2 * CHANCE
    assert kl_to_teacher(vit_teacher, result.student, val) < kl_before


def test_uniform_layer_strategy_finds_vit_blocks(vit_teacher, digits) -> None:
    train, val, _ = digits
    losses = {"kd": 1.0, "hidden_mse": {"weight": 1.0, "layers": "uniform"}}
    result = edge_distill.distill(
        vit_teacher, vit_student(vit_teacher, SMALL), train, losses, val_data=val, settings=SETTINGS
    )
    first, last = result.train.epoch_losses[0]["hidden_mse"], result.train.epoch_losses[-1]["hidden_mse"]
    assert last < first  # the uniform pairs found ViT's `vit.layers` blocks and their distance fell


def test_cnn_student_slices_the_teacher(cnn_teacher, digits) -> None:
    x = digits[1]["pixel_values"][:8]
    with torch.no_grad():
        assert torch.equal(cnn_student(cnn_teacher, 1.0)(pixel_values=x), cnn_teacher(pixel_values=x))
    half = cnn_student(cnn_teacher, 0.5)
    assert [b[0].out_channels for b in half.blocks] == [8, 16]
    assert torch.equal(half.blocks[1][0].weight, cnn_teacher.blocks[1][0].weight[:16, :8])
    assert torch.equal(half.blocks[1][1].running_var, cnn_teacher.blocks[1][1].running_var[:16])


def test_distil_cnn_into_a_half_width_student(cnn_teacher, digits) -> None:
    train, val, _ = digits
    student = cnn_student(cnn_teacher, 0.5)
    kl_before = kl_to_teacher(cnn_teacher, student, val)
    # scheme "offline" fingerprints the teacher's weights, which fails on BatchNorm's 0-dim counters
    # (see test_offline_scheme_with_a_batchnorm_teacher); "online" runs the teacher at every step
    result = edge_distill.distill(
        cnn_teacher, student, train, {"kd": 0.5, "ce": 0.5}, val_data=val, settings=SETTINGS, scheme="online"
    )
    assert len(result.train.epoch_losses) == SETTINGS.epochs
    assert set(result.metrics) == {"teacher", "student", "retention", "agreement"}
    assert result.metrics["student"] > 2 * CHANCE
    assert kl_to_teacher(cnn_teacher, result.student, val) < kl_before


def test_cnn_feature_maps_are_matched_channel_wise_through_a_projection(cnn_teacher, digits) -> None:
    """FitNets on conv maps: (B, C, H, W) features become (B, H*W, C) tokens; a learned projection maps
    the student's channels to the teacher's at every position, and the feature loss falls."""
    train, val, _ = digits
    losses = {"kd": 1.0, "hidden_mse": {"weight": 1.0, "layers": [("blocks.1", "blocks.1")]}}
    settings = TrainSettings(epochs=2, batch_size=64, lr=3e-3, mixed_precision="no")
    student = cnn_student(cnn_teacher, 0.5)
    result = edge_distill.distill(
        cnn_teacher, student, train, losses, val_data=val, settings=settings, scheme="online"
    )
    first, last = (
        epoch["hidden_mse"] for epoch in (result.train.epoch_losses[0], result.train.epoch_losses[-1])
    )
    assert last < first
    assert result.metrics["student"] > 2 * CHANCE


def test_small_cnn_saves_and_reloads_with_from_pretrained(cnn_teacher, digits, tmp_path: Path) -> None:
    student = cnn_student(cnn_teacher, 0.5).eval()
    student.save_pretrained(tmp_path / "cnn")
    reloaded = SmallCNN.from_pretrained(tmp_path / "cnn").eval()
    x = digits[1]["pixel_values"][:4]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), student(x))


def test_offline_scheme_with_a_batchnorm_teacher(cnn_teacher, digits) -> None:
    train, val, _ = digits
    settings = TrainSettings(epochs=1, batch_size=64, lr=3e-3, mixed_precision="no")
    student = cnn_student(cnn_teacher, 0.5)
    result = edge_distill.distill(cnn_teacher, student, train, {"kd": 1.0}, val_data=val, settings=settings)
    assert result.scheme == "offline" and result.cache["bytes_per_example"] > 0  # BatchNorm state hashed
    assert result.metrics["student"] is not None


def test_onnx_export_of_a_vit_student_passes_parity(vit_teacher, digits, tmp_path: Path) -> None:
    from edge_distill.targets.base import check_parity
    from edge_distill.targets.onnx import OnnxTarget

    target = OnnxTarget()
    if not target.available():
        pytest.skip("onnx is not installed here")
    module = ImageLogitsOnly(vit_student(vit_teacher, SMALL)).eval()
    x = digits[1]["pixel_values"][:10]  # (10, 3, 16, 16)
    artifact = target.export(module, {"pixel_values": x[:1]}, tmp_path / "artifact")
    parity = check_parity(target, artifact, module, {"pixel_values": x}, batch_size=4)
    assert parity.ok and parity.n == 10
