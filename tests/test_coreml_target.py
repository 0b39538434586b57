"""The Core ML target on a trained tiny BERT: every precision converts, the spec says what was declared.

Linux can convert and read packages but not run them (prediction needs macOS), so here parity is
``unverified on this host``; the macOS test below runs the packages and holds them to their tolerance.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from export_models import LABELS, SEQ, trained_classifier

from edge_distill.errors import DeviceError, ExportError
from edge_distill.profiles import COREML_DEPLOYMENT_TARGETS, load_profile
from edge_distill.targets import runner
from edge_distill.targets.base import TOLERANCES, UNVERIFIED, VERIFIED, get_target, verify
from edge_distill.targets.coreml import CoreMLTarget

ct = pytest.importorskip("coremltools")

# The tiny BERT's largest weights have 99 x 32 elements: below coremltools' default threshold (2048)
# only the embeddings would be compressed, so the tests compress every tensor above 256 elements.
THRESHOLD = 256
INPUTS = [{"name": n, "dtype": "int32", "shape": [1, SEQ]} for n in ("input_ids", "attention_mask")]
OUTPUTS = [{"name": "output", "dtype": "float32", "shape": [1, LABELS]}]
on_macos = pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction needs macOS")
off_macos = pytest.mark.skipif(sys.platform == "darwin", reason="macOS runs Core ML packages")


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One package per precision, exported side by side into one folder."""
    case, target = trained_classifier(), CoreMLTarget(weight_threshold=THRESHOLD)
    root, paths = tmp_path_factory.mktemp("coreml"), {}
    for precision in target.precisions:
        start = time.perf_counter()
        paths[precision] = target.export(case.model, case.example, root / precision, precision=precision)
        seconds = time.perf_counter() - start
        print(f"{precision}: {runner.artifact_size_bytes(paths[precision])} bytes in {seconds:.1f} s")
    return paths


def test_every_precision_exports_the_declared_signature(packages: dict[str, Path]) -> None:
    target = CoreMLTarget()
    assert target.precisions[0] == "fp16" and set(target.precisions) == {"fp16", "fp32", "int8", "palettized"}
    root = next(iter(packages.values())).parent.parent
    assert sorted(p.name for p in root.iterdir()) == sorted(packages)  # no temp dir left behind
    for precision, path in packages.items():
        assert path.name == "model.mlpackage" and path.is_dir()
        assert [p.name for p in path.parent.iterdir()] == ["model.mlpackage"]
        assert sorted(p.name for p in path.iterdir()) == ["Data", "Manifest.json"]  # no debug map
        facts = target.inspect(path)
        assert (facts["inputs"], facts["outputs"]) == (INPUTS, OUTPUTS)
        assert facts["format"] == "mlprogram" and facts["precision"] == precision
        assert (facts["deployment_target"], facts["specification_version"]) == ("iOS16", 7)
        assert {"linear", "layer_norm", "softmax", "gather"} <= set(facts["ops"])


def test_precision_is_visible_in_the_spec(packages: dict[str, Path]) -> None:
    facts = {precision: CoreMLTarget().inspect(path) for precision, path in packages.items()}
    assert set(facts["fp32"]["weights"]) == {"float32"} and not facts["fp32"]["compressed"]
    assert set(facts["fp16"]["weights"]) == {"float16"} and not facts["fp16"]["compressed"]
    assert facts["int8"]["compressed"]["constexpr_affine_dequantize"] >= 14  # 12 linear + 2 embeddings
    assert facts["int8"]["quantized_dtypes"] == ["int8"] and facts["int8"]["palette_bits"] == []
    assert facts["palettized"]["compressed"]["constexpr_lut_to_dense"] >= 14
    assert facts["palettized"]["palette_bits"] == [6]  # 64-entry look-up tables


def test_compressed_packages_are_smaller(packages: dict[str, Path]) -> None:
    size = {precision: runner.artifact_size_bytes(path) for precision, path in packages.items()}
    assert size["int8"] < size["fp16"] < size["fp32"]
    assert size["palettized"] < size["fp16"]
    assert CoreMLTarget().inspect(packages["int8"])["size_bytes"] == size["int8"]


@off_macos
def test_verify_is_unverified_here_with_the_reason(packages: dict[str, Path]) -> None:
    case, target = trained_classifier(), CoreMLTarget()
    for precision, path in packages.items():
        result = verify(target, path, case.model, case.held_out, precision=precision, metric=case.metric)
        assert result.status == UNVERIFIED and not result.verified and result.max_abs_diff is None
        assert "needs macOS" in result.reason and "unverified" in result.reason
    with pytest.raises(DeviceError, match=r"needs macOS.*model\.mlpackage"):
        target.load(packages["fp16"])
    with pytest.raises(runner.RunnerError, match="needs macOS"):
        runner.load_session(packages["fp16"])


def test_session_runs_rows_one_by_one_in_the_declared_dtypes(packages: dict[str, Path]) -> None:
    """The macOS path of the runner with predict stubbed: what Core ML would be fed, row by row."""
    model, fed = ct.models.MLModel(str(packages["fp16"]), skip_model_load=True), []

    def predict(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fed.append({name: (value.dtype, value.shape) for name, value in feed.items()})
        return {"output": np.full((1, LABELS), len(fed), np.float32)}

    model.predict = predict
    session = runner.CoreMLSession(model)
    rows = {name: value[:3].numpy() for name, value in trained_classifier().held_out.items()}  # int64
    out = runner.run_session(session, rows)
    assert out.shape == (3, LABELS) and out[:, 0].tolist() == [1, 2, 3]
    assert fed[0] == {name: (np.dtype(np.int32), (1, SEQ)) for name in ("input_ids", "attention_mask")}


@on_macos
def test_packages_predict_within_their_tolerance_on_macos(packages: dict[str, Path]) -> None:
    case, target = trained_classifier(), CoreMLTarget()
    with torch.no_grad():
        expected = case.model(**case.held_out).numpy()  # (128, LABELS)
    feed = {name: value.numpy() for name, value in case.held_out.items()}
    actual = target.run(target.load(packages["fp16"]), feed)
    assert actual.shape == expected.shape
    assert np.max(np.abs(actual - expected)) <= TOLERANCES["fp16"].atol
    for precision, path in packages.items():
        result = verify(target, path, case.model, case.held_out, precision=precision, metric=case.metric)
        assert result.status == VERIFIED


class QrHead(torch.nn.Module):
    """aten.linalg_qr has no Core ML conversion."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.qr(x)[0]


class BranchOnValue(torch.nn.Module):
    """Python control flow on a tensor value cannot be traced by torch.export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum().item() > 0 else x


@pytest.mark.parametrize(
    ("module", "precision", "expected"),
    [
        (QrHead(), "fp16", r"coreml target cannot convert op linalg_qr .*@register_torch_op"),
        (BranchOnValue(), "fp16", r"coreml target cannot trace the model with torch\.export"),
        (torch.nn.Linear(4, 2), "int8", r"compressed no weight to int8: no weight tensor has more than 2048"),
    ],
)
def test_failed_export_names_the_cause_and_leaves_nothing(
    module: torch.nn.Module, precision: str, expected: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    example = {"input" if isinstance(module, torch.nn.Linear) else "x": torch.randn(1, 4)}
    with pytest.raises(ExportError, match=expected):
        CoreMLTarget().export(module, example, tmp_path / "a", precision=precision)
    assert list(tmp_path.iterdir()) == []  # neither the package nor a temp dir
    assert capfd.readouterr() == ("", "")  # the converter's chatter stays off the console


def test_compressed_weights_need_ios16(tmp_path: Path) -> None:
    linear, example = torch.nn.Linear(4, 2), {"input": torch.randn(1, 4)}
    with pytest.raises(ExportError, match=r"palettized weights for iOS15, .* iOS16 \(macOS13\) or later"):
        CoreMLTarget(deployment_target="iOS15").export(linear, example, tmp_path, precision="palettized")
    with pytest.raises(ExportError, match="no deployment target 'iOS14'; use iOS15"):
        CoreMLTarget(deployment_target="iOS14")
    with pytest.raises(ExportError, match="has no 'int8-dynamic' precision"):
        CoreMLTarget().export(linear, example, tmp_path, precision="int8-dynamic")
    assert list(tmp_path.iterdir()) == []


def test_profile_sets_the_deployment_target(tmp_path: Path) -> None:
    iphone = get_target("coreml", profile=load_profile("iphone-15-pro"))
    assert isinstance(iphone, CoreMLTarget) and iphone.deployment_target == "iOS17"
    assert get_target("coreml", profile=load_profile("mac-m2")).deployment_target == "macOS13"
    assert get_target("coreml", profile=load_profile("raspberry-pi-4")).deployment_target == "iOS16"
    for _ in range(2):  # re-exporting swaps the package in place
        path = iphone.export(torch.nn.Linear(4, 2), {"input": torch.randn(3, 4)}, tmp_path / "out")
    facts = iphone.inspect(path)
    assert (facts["deployment_target"], facts["specification_version"], facts["opset"]) == (
        "iOS17",
        8,
        "CoreML7",
    )
    assert facts["inputs"] == [{"name": "input", "dtype": "float32", "shape": [1, 4]}]  # batch fixed at 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_inspect_rejects_a_package_unlike_its_declaration(packages: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    tampered = tmp_path / "model.mlpackage"
    shutil.copytree(packages["fp16"], tampered)
    spec = ct.utils.load_spec(str(tampered))
    spec.description.output[0].name = "logits"
    spec_file = next(tampered.rglob("model.mlmodel"))
    spec_file.write_bytes(spec.SerializeToString())
    with pytest.raises(
        ExportError, match=r"model\.mlpackage declares .* re-export it with the coreml target"
    ):
        CoreMLTarget().inspect(tampered)
    with pytest.raises(ExportError, match="not a Core ML package"):
        CoreMLTarget().inspect(tmp_path)


def test_profile_deployment_targets_are_coremltools_targets() -> None:
    for name in COREML_DEPLOYMENT_TARGETS:
        assert getattr(ct.target, name) >= ct.target.iOS15  # an ML Program target
