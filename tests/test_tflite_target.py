"""The LiteRT (.tflite) target on the tiny trained BERT: precisions verified, inspect, runner, failures."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from export_models import SEQ, ExportCase, trained_classifier

from edge_distill.errors import ExportError
from edge_distill.profiles import load_profile
from edge_distill.targets import runner
from edge_distill.targets.base import TARGETS, TOLERANCES, get_target, verify
from edge_distill.targets.tflite import TfliteTarget

# Not importorskip: importing litert-torch at collection would print its import-time logs.
pytestmark = pytest.mark.skipif(not TfliteTarget().available(), reason="litert-torch is not installed here")

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")


@pytest.fixture(scope="module")
def case() -> ExportCase:
    return trained_classifier()


@pytest.fixture(scope="module")
def artifacts(case: ExportCase, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One export per precision (about 5-8 s each on 2 cores); export times go to the test log."""
    root = tmp_path_factory.mktemp("tflite")
    target, paths = get_target("tflite"), {}
    for precision in PRECISIONS:
        start = time.perf_counter()
        paths[precision] = target.export(
            case.model, case.example, root / precision, precision=precision, calibration=case.calibration
        )
        print(f"tflite {precision}: {time.perf_counter() - start:.1f} s, {paths[precision].stat().st_size} B")
    return paths


def test_registered_with_the_runner_runtime() -> None:
    target = get_target("tflite")
    assert "tflite" in TARGETS.names() and isinstance(target, TfliteTarget)
    assert (target.extension, target.runtime) == (".tflite", runner.RUNTIME_BY_EXTENSION[".tflite"])
    assert target.available() and target.unverifiable_reason() is None
    assert runner.runtime_version(target.runtime) == version("ai-edge-litert")


def test_for_profile_takes_the_litert_thread_count() -> None:
    assert get_target("tflite", profile=load_profile("pixel-8")).threads == 4


def test_fp32_matches_pytorch(artifacts: dict[str, Path], case: ExportCase) -> None:
    target = get_target("tflite")
    result = verify(target, artifacts["fp32"], case.model, case.held_out, metric=case.metric)
    assert result.verified and result.n == len(case.labels)
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 1.0  # XNNPACK measured ~1e-6
    assert result.metric_artifact == result.metric_pytorch


@pytest.mark.parametrize("precision", ["fp16", "int8-dynamic", "int8"])
def test_reduced_precisions_keep_accuracy(
    precision: str, artifacts: dict[str, Path], case: ExportCase
) -> None:
    target = get_target("tflite")
    result = verify(
        target, artifacts[precision], case.model, case.held_out, precision=precision, metric=case.metric
    )
    assert result.verified and result.metric == "accuracy"
    assert result.metric_pytorch - result.metric_artifact <= 0.01  # verify enforces it; stated here
    assert result.tolerance == TOLERANCES[precision].as_dict()
    assert artifacts[precision].stat().st_size < artifacts["fp32"].stat().st_size
    if precision == "int8":  # measured 0.29; int8 logits clipped to the calibrated range were off by 1.89
        assert result.max_abs_diff < 0.6


def test_int8_computes_only_the_linear_layers_in_int8(artifacts: dict[str, Path]) -> None:
    """FULLY_CONNECTED int8 x int8, an int8 embedding table; other ops and the output float."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(artifacts["int8"]))
    dtypes = {d["index"]: np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}
    output = interpreter.get_output_details()[0]["index"]
    seen: dict[str, set[tuple[tuple[str, ...], tuple[str, ...]]]] = {}
    for op in interpreter._get_ops_details():
        name = "logits " + op["op_name"] if output in op["outputs"] else op["op_name"]
        ins = tuple(dtypes[i] for i in op["inputs"] if i >= 0)
        seen.setdefault(name, set()).add((ins, tuple(dtypes[i] for i in op["outputs"])))
    assert seen["FULLY_CONNECTED"] == {(("int8", "int8", "int32"), ("int8",))}  # activation, weight, bias
    assert seen["BATCH_MATMUL"] == {(("float32", "float32"), ("float32",))}  # Q @ K^T and P @ V
    assert seen["EMBEDDING_LOOKUP"] == {(("int32", "int8"), ("float32",))}
    assert seen["logits FULLY_CONNECTED"] == {(("float32", "int8", "float32"), ("float32",))}  # dynamic
    for op in ("SOFTMAX", "GELU", "TANH", "SELECT_V2", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "ADD", "MUL"):
        assert {outs for _, outs in seen[op]} == {("float32",)}, op


def test_inspect_gives_signature_and_ops(artifacts: dict[str, Path]) -> None:
    target = get_target("tflite")
    facts = {precision: target.inspect(path) for precision, path in artifacts.items()}
    for info in facts.values():
        assert json.loads(json.dumps(info)) == info
        assert info["inputs"] == [
            {"name": "input_ids", "dtype": "int32", "shape": [1, SEQ]},  # int64 narrowed by litert-torch
            {"name": "attention_mask", "dtype": "int32", "shape": [1, SEQ]},
        ]
        assert info["outputs"][0]["shape"] == [1, 3]
        assert {"FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX", "GELU"} <= set(info["ops"])
        assert info["xnnpack_partitions"] >= 1
    assert "quantization" not in facts["fp32"]["outputs"][0]
    assert facts["fp16"]["ops"]["DEQUANTIZE"] >= facts["fp32"]["ops"]["FULLY_CONNECTED"]  # fp16 weights
    assert facts["int8"]["outputs"][0] == {"name": "output_0", "dtype": "float32", "shape": [1, 3]}
    assert facts["int8"]["ops"]["QUANTIZE"] >= 1  # float -> int8 edges in front of the linear layers


def test_runner_runs_batch_1_and_5(artifacts: dict[str, Path], case: ExportCase) -> None:
    for precision in ("fp32", "int8"):
        session = runner.load_session(artifacts[precision], threads=1)
        assert session.input_names == ["input_ids", "attention_mask"]
        for rows in (1, 5):
            feed = {name: value[:rows].numpy() for name, value in case.held_out.items()}  # int64
            out = runner.run_session(session, feed)
            assert out.shape == (rows, 3) and out.dtype == np.float32
            expected = case.model(**{k: v[:rows] for k, v in case.held_out.items()}).detach().numpy()
            np.testing.assert_array_equal(out.argmax(-1), expected.argmax(-1))


def test_runner_names_an_input_of_the_wrong_length(artifacts: dict[str, Path]) -> None:
    session = runner.load_session(artifacts["fp32"])
    feed = {"input_ids": np.ones((2, SEQ - 4), np.int64), "attention_mask": np.ones((2, SEQ - 4), np.int64)}
    with pytest.raises(runner.RunnerError, match=r"Input 'input_ids' has shape \(1, 12\) .* \(1, 16\)"):
        runner.run_session(session, feed)


def test_runner_runs_tflite_without_torch(artifacts: dict[str, Path]) -> None:
    code = (
        "import json, sys, numpy as np; from edge_distill.targets import runner; "
        f"s = runner.load_session(runner.Path({str(artifacts['int8'])!r})); "
        f"out = runner.run_session(s, {{n: np.ones((2, {SEQ}), np.int64) for n in s.input_names}}); "
        "print(json.dumps([list(out.shape), 'torch' in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [[2, 3], False]
    assert done.stderr == ""  # the interpreter's XNNPACK INFO line is kept off the console


class QrHead(torch.nn.Module):
    """aten.linalg_qr has no litert-torch lowering."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.qr(x)[0]


def test_unconvertible_op_names_it_and_leaves_nothing(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    with pytest.raises(
        ExportError, match=r"tflite target cannot convert op aten\.linalg_qr\.default .*replace"
    ):
        get_target("tflite").export(QrHead(), {"x": torch.randn(1, 4, 4)}, tmp_path / "artifact")
    assert list(tmp_path.iterdir()) == []  # neither out_dir nor a temp dir
    assert capfd.readouterr() == ("", "")  # the converter's chatter (progress, absl) stays off the console


def test_int8_without_calibration_is_an_export_error(tmp_path: Path, case: ExportCase) -> None:
    target = get_target("tflite")
    for calibration in (None, {name: value[:0] for name, value in case.calibration.items()}):
        with pytest.raises(ExportError, match="tflite target needs calibration examples for int8"):
            target.export(case.model, case.example, tmp_path / "a", precision="int8", calibration=calibration)
    with pytest.raises(ExportError, match="no 'palettized' precision; use one of fp32, fp16"):
        target.export(case.model, case.example, tmp_path / "a", precision="palettized")
    assert list(tmp_path.iterdir()) == []


def test_runner_quantizes_a_float_fed_to_a_quantized_input() -> None:
    detail = {"dtype": np.int8, "shape": np.array([1, 3]), "quantization": (0.5, 3)}
    row = runner._to_litert("x", np.array([[0.5, -1.0, 100.0]], np.float32), detail)
    np.testing.assert_array_equal(row, np.array([[4, 1, 127]], np.int8))  # round(v / 0.5) + 3, clipped
