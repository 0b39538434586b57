"""The ExecuTorch targets on a trained tiny BERT: XNNPACK .pte verified in fp32, int8 and int8-dynamic;
Core ML lowered and inspected but unverified off Apple; failures named in one sentence."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from export_models import ExportCase, trained_classifier

from edge_distill.errors import ExportError
from edge_distill.profiles import KNOWN_TARGETS
from edge_distill.targets import runner
from edge_distill.targets.base import UNVERIFIED, VERIFIED, get_target, verify

pytest.importorskip("executorch")

LINEARS = 14  # 2 layers x (query, key, value, attention output, intermediate, output) + pooler + classifier


@pytest.fixture(scope="module")
def case() -> ExportCase:
    return trained_classifier()


@pytest.fixture(scope="module", params=["fp32", "int8", "int8-dynamic"])
def exported(
    request: pytest.FixtureRequest, case: ExportCase, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """One XNNPACK export per precision (the model's weights must come out untouched)."""
    before = {name: value.clone() for name, value in case.model.state_dict().items()}
    out_dir = tmp_path_factory.mktemp(request.param) / "artifact"
    artifact = get_target("executorch").export(
        case.model, case.example, out_dir, precision=request.param, calibration=case.calibration
    )
    assert all(torch.equal(before[name], value) for name, value in case.model.state_dict().items())
    return request.param, artifact


def test_xnnpack_pte_verifies_at_its_precision(exported: tuple[str, Path], case: ExportCase) -> None:
    precision, artifact = exported
    assert [p.name for p in artifact.parent.parent.iterdir()] == ["artifact"]  # no temp dir left behind
    assert [p.name for p in artifact.parent.iterdir()] == ["model.pte"]
    target = get_target("executorch")
    result = verify(target, artifact, case.model, case.held_out, precision=precision, metric=case.metric)
    assert result.status == VERIFIED and result.n == 128
    if precision == "fp32":
        assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 1.0
    assert result.metric_artifact >= result.metric_pytorch - 0.01  # accuracy within 1 point of fp32


def test_inspect_reads_delegated_and_portable_ops_from_the_pte(exported: tuple[str, Path]) -> None:
    precision, artifact = exported
    info = json.loads(json.dumps(get_target("executorch").inspect(artifact)))  # JSON-able
    assert info["inputs"] == [
        {"name": "input_ids", "dtype": "int64", "shape": [1, 16]},
        {"name": "attention_mask", "dtype": "int64", "shape": [1, 16]},
    ]
    assert info["outputs"] == [{"name": "output", "dtype": "float32", "shape": [1, 3]}]
    assert info["precision"] == precision
    xnnpack = info["delegated"]["XnnpackBackend"]
    assert xnnpack["subgraphs"] >= 1 and xnnpack["ops"]["aten.linear.default"] == LINEARS
    if precision == "int8":
        assert xnnpack["ops"]["quantized_decomposed.quantize_per_tensor.default"] > 0
    assert info["portable"]["aten::embedding.out"] >= 1  # the embeddings stay in the portable kernels
    assert "aten::linear.out" not in info["portable"]


def test_int8_stores_the_embedding_tables_int8(exported: tuple[str, Path], case: ExportCase) -> None:
    """int8 and int8-dynamic keep the word and position tables int8, with a float32 scale per row."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    precision, artifact = exported
    plans = deserialize_pte_binary(artifact.read_bytes()).program.execution_plan
    forward = next(plan for plan in plans if plan.name == "forward")
    constants = Counter(
        (runner.EXECUTORCH_DTYPES.get(int(v.val.scalar_type)), tuple(v.val.sizes))
        for v in forward.values
        if type(v.val).__name__ == "Tensor" and v.val.data_buffer_idx > 0  # a constant in the program
    )
    embeddings = case.model.model.bert.embeddings
    for table in (embeddings.word_embeddings, embeddings.position_embeddings):
        shape = tuple(table.weight.shape)
        stored = np.float32 if precision == "fp32" else np.int8
        assert (
            constants[(stored, shape)] == 1 and sum(n for (_, s), n in constants.items() if s == shape) == 1
        )
        if precision != "fp32":
            assert constants[(np.float32, (shape[0], 1))] >= 1  # the scales


def test_pte_runs_in_the_runner_at_any_batch(exported: tuple[str, Path], case: ExportCase) -> None:
    _, artifact = exported
    session = runner.load_session(artifact, threads=1)
    assert session.input_names == ["input_ids", "attention_mask"] and session.threads_applied
    for rows in (1, 5):
        feed = {name: value[:rows].numpy().astype(np.int32) for name, value in case.held_out.items()}
        assert runner.run_session(session, feed).shape == (rows, 3)  # cast back to int64 by the runner
    assert runner.runtime_version("executorch") != "unknown"


def test_coreml_lowers_and_inspects_but_is_unverified_off_apple(
    case: ExportCase, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    if sys.platform == "darwin":
        pytest.skip("the Core ML delegate may run here")
    target = get_target("executorch-coreml")
    artifact = target.export(case.model, case.example, tmp_path / "artifact", precision="fp16")
    assert capfd.readouterr() == ("", "")  # coremltools' progress bars and warnings stay off the console
    result = verify(target, artifact, case.model, case.held_out, precision="fp16")
    assert result.status == UNVERIFIED and "Apple" in result.reason and result.max_abs_diff is None
    info = target.inspect(artifact)
    assert info["delegated"]["CoreMLBackend"]["subgraphs"] == 1
    assert info["delegated"]["CoreMLBackend"]["ops"]["aten.linear.default"] == LINEARS
    assert info["inputs"][0]["name"] == "input_ids" and info["precision"] == "fp16"


class QrHead(torch.nn.Module):
    """aten.linalg_qr is not in the Core ATen opset that ExecuTorch's kernels implement."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.qr(x)[0]


class Pool3d(torch.nn.Module):
    """aten.avg_pool3d is core ATen but neither XNNPACK nor the runtime's kernels implement it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool3d(x, 2)


class BranchOnValue(torch.nn.Module):
    """Python control flow on a tensor value cannot be traced by torch.export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 0:
            return x * 2
        return x


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (QrHead(), r"executorch target cannot lower op aten\.linalg_qr\.default: .*Core ATen.*; replace"),
        (Pool3d(), r"executorch target lowered the model but op aten::avg_pool3d\.out has no kernel"),
        (BranchOnValue(), r"executorch target cannot trace the model with torch\.export .*\.item\(\)"),
    ],
    ids=["not-core-aten", "no-kernel", "data-dependent"],
)
def test_unexportable_model_raises_and_leaves_nothing(
    module: torch.nn.Module, expected: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ExportError, match=expected):
        get_target("executorch").export(module, {"x": torch.randn(1, 2, 4, 4, 4)}, tmp_path / "artifact")
    assert list(tmp_path.iterdir()) == []  # neither out_dir nor a temp dir
    assert capfd.readouterr() == ("", "")  # the exporters' chatter stays off the console


def test_int8_without_calibration_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="executorch target needs calibration examples for int8"):
        get_target("executorch").export(
            torch.nn.Linear(4, 2), {"input": torch.randn(1, 4)}, tmp_path / "a", precision="int8"
        )
    with pytest.raises(ExportError, match="no 'int4' precision; use one of fp32, int8, int8-dynamic"):
        get_target("executorch").export(torch.nn.Linear(4, 2), {}, tmp_path / "a", precision="int4")
    assert list(tmp_path.iterdir()) == []


def test_targets_are_registered_and_read_a_profile() -> None:
    from edge_distill.profiles import load_profile

    assert {"executorch", "executorch-coreml"} <= set(KNOWN_TARGETS)
    assert get_target("executorch").extension == ".pte"
    assert get_target("executorch-coreml").precisions == ("fp16", "fp32")
    profile = load_profile("iphone-15-pro")
    target = get_target("executorch-coreml", profile=profile)
    assert target.deployment_target == profile.coreml_deployment_target


def test_runner_names_why_a_pte_cannot_load(tmp_path: Path) -> None:
    broken = tmp_path / "model.pte"
    broken.write_bytes(b"\0" * 64)
    with pytest.raises(runner.RunnerError, match=r"ExecuTorch cannot load model\.pte: Program identifier"):
        runner.load_session(broken)
