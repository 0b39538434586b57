"""Target backends: export, parity, profiling and failure paths, on a tiny random BERT built offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from export_models import LogitsOnly
from transformers import BertConfig, BertForSequenceClassification

from edge_distill.devices import profile_on_host
from edge_distill.errors import DeviceError, ExportError, ParityError
from edge_distill.targets import runner
from edge_distill.targets.base import Parity, check_parity, get_target

SEQ = 16  # fixed sequence length of the export
VOCAB = 100
LABELS = 3


@dataclass(frozen=True)
class TargetCase:
    """What a target must achieve on the tiny BERT in fp32."""

    atol: float = 1e-4
    min_top1: float = 1.0


# The ONNX target's own cases (test_export_matrix.py holds the case every registered target needs).
TARGET_CASES = {"onnx": TargetCase()}


def tiny_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        num_labels=LABELS,
    )
    return LogitsOnly(BertForSequenceClassification(config)).eval()


def batch(rows: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random token ids with right padding of varying length in attention_mask."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (rows, SEQ), generator=generator)  # (rows, seq)
    lengths = torch.randint(2, SEQ + 1, (rows,), generator=generator)
    lengths[0] = SEQ  # one row without padding
    attention_mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()  # (rows, seq)
    input_ids = input_ids * attention_mask  # pad id 0 where masked
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_bert()


@pytest.fixture(scope="module", params=sorted(TARGET_CASES))
def exported(
    request: pytest.FixtureRequest, model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory
):
    name = request.param
    if name not in TARGET_CASES:
        pytest.fail(f"target {name!r} has no case in TARGET_CASES")
    target = get_target(name)
    if not target.available():
        pytest.skip(f"{name} is not installed here")
    out_dir = tmp_path_factory.mktemp(name) / "artifact"
    artifact = target.export(model, batch(2, seed=0), out_dir)
    return target, artifact, TARGET_CASES[name]


def test_export_writes_one_artifact_with_a_dynamic_batch(exported) -> None:
    target, artifact, _ = exported
    assert artifact.name == f"model{target.extension}" and artifact.is_file()
    assert sorted(p.name for p in artifact.parent.iterdir()) == [artifact.name]  # weights embedded
    assert [p.name for p in artifact.parent.parent.iterdir()] == ["artifact"]  # no temp dir left behind
    session = target.load(artifact)
    for rows in (1, 5):
        assert target.run(session, {k: v.numpy() for k, v in batch(rows).items()}).shape == (rows, LABELS)


def test_parity_within_tolerance_with_padding(exported, model: torch.nn.Module) -> None:
    target, artifact, case = exported
    parity = check_parity(target, artifact, model, batch(10), atol=case.atol, batch_size=4)  # 3 chunks
    assert isinstance(parity, Parity) and parity.ok
    assert parity.max_abs_diff <= case.atol
    assert parity.top1_agreement >= case.min_top1
    assert parity.n == 10
    assert json.loads(json.dumps(parity.as_dict()))["n"] == 10


def test_tampered_artifact_fails_parity(exported, model: torch.nn.Module, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    target, artifact, _ = exported
    proto = onnx.load(str(artifact))
    weight = next(t for t in proto.graph.initializer if t.name.endswith("classifier.weight"))
    perturbed = numpy_helper.to_array(weight).copy()
    perturbed[0] += 0.5  # shifts the logit of label 0
    weight.CopyFrom(numpy_helper.from_array(perturbed, weight.name))
    tampered = tmp_path / "model.onnx"
    onnx.save(proto, str(tampered))
    with pytest.raises(ParityError, match=r"output 'output' differs by up to .* \(atol 0.0001\)") as info:
        check_parity(target, tampered, model, batch(6))
    assert info.value.parity.max_abs_diff > 1e-4


def test_profile_on_host_gives_sane_numbers(exported) -> None:
    _, artifact, _ = exported
    inputs = {k: v.numpy() for k, v in batch(3).items()}  # only the first row is timed
    profile = profile_on_host(artifact, inputs, warmup=2, runs=20)
    assert profile.p50_ms <= profile.p90_ms <= profile.p99_ms
    assert profile.mean_ms > 0 and profile.load_ms > 0
    assert profile.size_mb > 0 and profile.peak_memory_mb >= 0
    # at least the runs asked for (more until the p50 settles); threads default to this host's CPU count
    assert profile.runs >= 20 and (profile.warmup, profile.threads) == (2, os.cpu_count())
    assert profile.p50_ci95_ms[0] <= profile.p50_ms <= profile.p50_ci95_ms[1] and profile.first_ms > 0
    assert profile.conditions["threads"] == os.cpu_count() and "governor" in profile.conditions
    assert profile.runtime == "onnxruntime" and profile.runtime_version


class QrHead(torch.nn.Module):
    """aten.linalg_qr has no ONNX translation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.qr(x)[0]


class BranchOnValue(torch.nn.Module):
    """Python control flow on a tensor value cannot be traced by torch.export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 0:
            return x * 2
        return x


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (QrHead(), r"cannot export op aten\.linalg_qr\.default .*custom_translation_table"),
        (BranchOnValue(), r"cannot trace the model with torch\.export .*\.item\(\)"),
    ],
)
def test_unexportable_model_raises_and_leaves_nothing(
    module: torch.nn.Module, expected: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "artifact"
    with pytest.raises(ExportError, match=expected) as info:
        get_target("onnx").export(module, {"x": torch.randn(4, 4)}, out_dir)
    assert "onnx" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither out_dir nor a temp dir
    assert capfd.readouterr() == ("", "")  # the exporter's chatter stays off the console


def test_reexport_replaces_the_artifact_in_place(tmp_path: Path) -> None:
    target, out_dir = get_target("onnx"), tmp_path / "artifact"
    example = {
        "input": torch.randn(1, 4)
    }  # Linear.forward(input); batch 1: the batch dimension must still come out dynamic
    for bias in (0.0, 1.0):
        linear = torch.nn.Linear(4, 2)
        torch.nn.init.constant_(linear.bias, bias)
        artifact = target.export(linear, example, out_dir)
    out = target.run(target.load(artifact), {"input": np.zeros((3, 4), np.float32)})
    np.testing.assert_allclose(out, np.ones((3, 2)))
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
    assert [p.name for p in out_dir.iterdir()] == ["model.onnx"]


def test_unknown_target_suggests_the_closest() -> None:
    with pytest.raises(ExportError, match="did you mean 'onnx'"):
        get_target("onx")


def _imports_in_fresh_python(module: str) -> dict[str, bool]:
    code = (
        f"import json, sys, {module}; "
        "print(json.dumps({m: m in sys.modules for m in ('torch', 'transformers', 'onnx', 'onnxruntime')}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_runner_import_is_torch_free() -> None:
    loaded = _imports_in_fresh_python("edge_distill.targets.runner")
    assert not loaded["torch"] and not loaded["transformers"]


def test_base_import_is_light() -> None:
    loaded = _imports_in_fresh_python("edge_distill.targets.base")
    assert not any(loaded.values()), loaded


def test_runner_failure_is_a_device_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    with pytest.raises(DeviceError, match=r"missing\.onnx on host failed .*does not exist; export the model"):
        profile_on_host(missing, {"x": np.zeros((1, 4), np.float32)}, runs=1)


def test_runner_names_the_known_kinds_for_an_unknown_artifact(tmp_path: Path) -> None:
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"\0")
    with pytest.raises(runner.RunnerError, match=r"Unknown artifact kind '\.bin'.*\.onnx.*\.pte.*\.tflite"):
        runner.load_session(artifact)


def test_large_weights_go_to_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_distill.targets.onnx as onnx_target

    monkeypatch.setattr(onnx_target, "_EMBED_LIMIT_BYTES", 0)  # treat any model as over the 2 GB limit
    linear = torch.nn.Linear(64, 64)
    target = get_target("onnx")
    artifact = target.export(linear, {"input": torch.randn(2, 64)}, tmp_path / "artifact")
    assert sorted(p.name for p in artifact.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert runner.artifact_size_bytes(artifact) > 64 * 64 * 4 > artifact.stat().st_size
    assert check_parity(target, artifact, linear, {"input": torch.randn(5, 64)}).ok
