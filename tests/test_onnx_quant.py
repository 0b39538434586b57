"""The onnx target's int8 precisions: fp32 vs int8-dynamic vs int8 (static QDQ) on trained tiny models.

Quantized artifacts are judged by accuracy (within 1 point of PyTorch fp32, ``verify``) on models trained
in seconds: the tiny BERT of export_models, and a DistilBERT and a ViT trained here, so that the recipe is
not BERT-specific.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from export_models import ExportCase, accuracy_metric, synthetic_batch, trained_classifier
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)

from edge_distill.errors import ExportError
from edge_distill.targets import onnx_quant
from edge_distill.targets.base import get_target, verify

onnx = pytest.importorskip("onnx")

QUANTIZED = ("int8-dynamic", "int8")
Batches = Callable[[int, int], tuple[dict[str, torch.Tensor], torch.Tensor]]


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """One torch thread for the module's training and exports: a shared 2-core host thrashes with more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bert_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained tiny BERT exported once in each precision the onnx target offers."""
    case, target = trained_classifier(), get_target("onnx")
    root = tmp_path_factory.mktemp("bert")
    return {
        precision: target.export(
            case.model, case.example, root / precision, precision=precision, calibration=case.calibration
        )
        for precision in target.precisions
    }


@pytest.mark.parametrize("precision", ["fp32", *QUANTIZED])
def test_bert_verifies_on_accuracy(bert_artifacts: dict[str, Path], precision: str) -> None:
    case = trained_classifier()
    artifact = bert_artifacts[precision]
    assert [p.name for p in artifact.parent.iterdir()] == ["model.onnx"]  # no quantizer leftovers
    result = verify(
        get_target("onnx"), artifact, case.model, case.held_out, precision=precision, metric=case.metric
    )
    assert result.verified and result.metric_pytorch >= 0.95
    assert result.metric_artifact >= result.metric_pytorch - 0.01
    assert result.max_abs_diff < (1e-4 if precision == "fp32" else 0.5)


def test_quantized_files_and_weights_are_smaller(bert_artifacts: dict[str, Path]) -> None:
    target = get_target("onnx")
    fp32 = bert_artifacts["fp32"]
    fp32_weights = target.inspect(fp32)["weights"]["float32"]["bytes"]
    for precision in QUANTIZED:
        weights = target.inspect(bert_artifacts[precision])["weights"]
        assert bert_artifacts[precision].stat().st_size < fp32.stat().st_size
        assert weights["int8"]["bytes"] < fp32_weights / 3  # the matrices, one byte per weight
        assert weights["float32"]["bytes"] < fp32_weights / 3  # biases, norms, scales


def test_quantized_graphs_hold_quantize_ops(bert_artifacts: dict[str, Path]) -> None:
    target = get_target("onnx")
    fp32, dynamic, static = (target.inspect(bert_artifacts[p]) for p in ("fp32", *QUANTIZED))
    assert fp32["quantization_ops"] == {} and "int8" not in fp32["weights"]
    assert dynamic["quantization_ops"]["DynamicQuantizeLinear"] > 0
    # every weight MatMul and Gemm; the 2 layers x 2 attention products (activation @ activation) stay float
    assert dynamic["quantization_ops"]["MatMulInteger"] == fp32["ops"]["MatMul"] - 4 + fp32["ops"]["Gemm"]
    assert static["quantization_ops"]["QuantizeLinear"] > 0
    assert static["quantization_ops"]["DequantizeLinear"] > static["quantization_ops"]["QuantizeLinear"]
    for info in (dynamic, static):  # float ops stay, the signature is unchanged
        assert info["ops"]["Softmax"] == fp32["ops"]["Softmax"]
        assert info["ops"]["LayerNormalization"] == fp32["ops"]["LayerNormalization"]
        assert (info["inputs"], info["outputs"]) == (fp32["inputs"], fp32["outputs"])


def test_int8_without_calibration_is_an_export_error(tmp_path: Path) -> None:
    case = trained_classifier()
    for calibration in (None, {name: value[:0] for name, value in case.calibration.items()}):
        with pytest.raises(ExportError, match="needs calibration examples for int8"):
            get_target("onnx").export(
                case.model, case.example, tmp_path / "a", precision="int8", calibration=calibration
            )
    assert list(tmp_path.iterdir()) == []


def test_unknown_precision_lists_the_onnx_precisions(tmp_path: Path) -> None:
    case = trained_classifier()
    with pytest.raises(ExportError, match=r"no 'fp16' precision; use one of fp32, int8-dynamic, int8\."):
        get_target("onnx").export(case.model, case.example, tmp_path / "a", precision="fp16")
    assert list(tmp_path.iterdir()) == []


def test_quantizer_failure_is_one_sentence_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("[ShapeInferenceError] bad\n shape (op_type:Gemm, node name: node_linear)")

    monkeypatch.setattr(onnx_quant, "_quantize_dynamic", broken)
    linear = torch.nn.Linear(4, 2)
    with pytest.raises(ExportError) as info:
        get_target("onnx").export(
            linear, {"input": torch.randn(2, 4)}, tmp_path / "a", precision="int8-dynamic"
        )
    assert str(info.value).startswith(
        "The onnx target cannot quantize op Gemm to int8-dynamic (RuntimeError: "
    )
    assert "\n" not in str(info.value) and str(info.value).endswith("or int8 with calibration rows.")
    assert list(tmp_path.iterdir()) == []  # neither out_dir nor a temp dir
    assert capfd.readouterr() == ("", "")


def _graph(batch: int | str, path: Path) -> Path:
    """x (batch, 2) float, ids (batch, 2) int64 -> x + 1."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 2])
    ids = onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [batch, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 2])
    one = onnx.helper.make_tensor("one", onnx.TensorProto.FLOAT, [], [1.0])
    node = onnx.helper.make_node("Add", ["x", "one"], ["y"])
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x, ids], [y], [one])), path)
    return path


def test_calibration_batches_follow_the_graph_batch(tmp_path: Path) -> None:
    rows = {"x": np.zeros((10, 2), np.float64), "ids": np.zeros((10, 2), np.int32)}
    fixed = onnx_quant.CalibrationBatches(_graph(4, tmp_path / "fixed.onnx"), rows)
    batches = list(iter(fixed.get_next, None))
    assert [b["x"].shape[0] for b in batches] == [4, 4]  # rows past the last full batch are dropped
    assert (batches[0]["x"].dtype, batches[0]["ids"].dtype) == (np.float32, np.int64)
    dynamic = onnx_quant.CalibrationBatches(_graph("batch", tmp_path / "dynamic.onnx"), rows)
    assert [b["x"].shape[0] for b in iter(dynamic.get_next, None)] == [10]
    with pytest.raises(
        ExportError, match=r"lack the graph input\(s\) ids; pass calibration with the same keys"
    ):
        onnx_quant.CalibrationBatches(tmp_path / "fixed.onnx", {"x": rows["x"]})


# --- other families -------------------------------------------------------------------------------


class TextLogits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class ImageLogits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def image_batch(rows: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Noise images (rows, 3, 32, 32) whose label's colour channel is brighter."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (rows,), generator=generator)
    pixels = 0.5 * torch.randn(rows, 3, 32, 32, generator=generator)
    pixels[torch.arange(rows), labels] += 1.0
    return {"pixel_values": pixels}, labels


def _trained(model: torch.nn.Module, batches: Batches, steps: int = 40) -> ExportCase:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        inputs, labels = batches(32, 1000 + step)
        loss = torch.nn.functional.cross_entropy(model(**inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    calibration, _ = batches(64, 1)
    held_out, labels = batches(128, 2)
    example = {name: value[:1] for name, value in held_out.items()}
    return ExportCase(model, example, calibration, held_out, labels.numpy(), accuracy_metric(labels.numpy()))


@functools.cache
def family_case(family: str) -> ExportCase:
    torch.manual_seed(0)
    if family == "distilbert":
        config = DistilBertConfig(
            vocab_size=99,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=64,
            num_labels=3,
        )
        return _trained(TextLogits(DistilBertForSequenceClassification(config)), synthetic_batch)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3,
    )  # fmt: skip
    return _trained(ImageLogits(ViTForImageClassification(config)), image_batch)


@pytest.mark.parametrize("precision", QUANTIZED)
@pytest.mark.parametrize("family", ["distilbert", "vit"])
def test_other_families_quantize_and_verify(
    family: str, precision: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    case, target = family_case(family), get_target("onnx")
    capfd.readouterr()
    artifact = target.export(
        case.model, case.example, tmp_path / "a", precision=precision, calibration=case.calibration
    )
    assert capfd.readouterr() == ("", "")  # the quantizer's chatter stays off the console
    result = verify(target, artifact, case.model, case.held_out, precision=precision, metric=case.metric)
    assert result.verified and result.metric_pytorch >= 0.95
    info = target.inspect(artifact)
    assert info["weights"]["int8"]["tensors"] > 0 and sum(info["quantization_ops"].values()) > 0
    if family == "vit" and precision == "int8-dynamic":
        assert info["ops"]["ConvInteger"] == 1  # the patch embedding


@pytest.mark.parametrize("precision", QUANTIZED)
def test_large_quantized_weights_go_to_external_data(
    precision: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge_distill.targets.onnx as onnx_target

    monkeypatch.setattr(onnx_target, "_EMBED_LIMIT_BYTES", 0)  # treat any model as over the 2 GB limit
    torch.manual_seed(0)
    linear, target = torch.nn.Linear(64, 64).eval(), get_target("onnx")
    rows = {"input": torch.randn(16, 64)}
    artifact = target.export(linear, rows, tmp_path / "a", precision=precision, calibration=rows)
    assert sorted(p.name for p in artifact.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert target.inspect(artifact)["weights"]["int8"]["bytes"] == 64 * 64 + 64  # + per-channel zero points
    out = target.run(target.load(artifact), {"input": rows["input"].numpy()})
    np.testing.assert_allclose(out, linear(rows["input"]).detach().numpy(), atol=0.05)


def test_a_quantized_op_onnxruntime_cannot_run_is_named() -> None:
    message = (
        "onnxruntime cannot load model.onnx: [ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an "
        "implementation for ConvInteger(10) node with name 'node_conv_quant'."
    )
    sentence = onnx_quant.load_failure(message, "int8-dynamic")
    assert sentence.startswith(
        "The onnx target's int8-dynamic export produced op ConvInteger, which onnxruntime"
    )
    assert sentence.endswith("; export fp32, or int8 with calibration rows.")
