"""`edge-distill export`: a student folder to verified bundles, and each bad input's one-sentence exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_distill.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_writes_a_verified_bundle_per_precision(
    tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "dist"
    args = [str(tiny_teacher_dir), "--target", "onnx", "--precision", "all", "--data", str(tiny_csv)]
    code, stdout, err = run(capsys, *args, "--out", str(out), "--seq-len", "16", "--json")
    assert code == 0, err
    envelope = json.loads(stdout)
    assert envelope["command"] == "export" and envelope["ok"] and envelope["result"]["out"] == str(out)
    shipped = {(a["target"], a["precision"]): a for a in envelope["result"]["artifacts"]}
    assert set(shipped) == {("onnx", "fp32"), ("onnx", "int8-dynamic"), ("onnx", "int8")}
    for (_, precision), meta in shipped.items():
        bundle = out / f"onnx-{precision}"
        assert meta["verification"]["status"] == "verified" and meta["verification"]["metric"] == "accuracy"
        assert json.loads((bundle / "metadata.json").read_text()) == meta
        assert meta["preprocess"]["sequence_length"] == 16 and meta["labels"] == ["alpha", "beta", "gamma"]
        assert (bundle / "tokenizer" / "tokenizer.json").is_file() and (bundle / "runner.py").is_file()
    assert shipped[("onnx", "int8")]["size_bytes"] < shipped[("onnx", "fp32")]["size_bytes"]
    assert sorted(p.name for p in out.iterdir()) == ["onnx-fp32", "onnx-int8", "onnx-int8-dynamic"]


def test_export_prints_a_table(tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "dist"
    code, stdout, err = run(
        capsys, str(tiny_teacher_dir), "--target", "onnx", "--data", str(tiny_csv), "--out", str(out),
        "--seq-len", "16",
    )  # fmt: skip
    assert code == 0, err
    assert "Exporting onnx fp32" in stdout and "verified" in stdout and "model.onnx" in stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "onx"], "did you mean 'onnx'"),
        (["--target", "onnx", "--precision", "fp16"], "has no 'fp16' precision; use one of fp32"),
        (["--target", "all", "--precision", "int4"], "No target offers precision int4"),
    ],
)
def test_bad_target_or_precision_exits_2_before_loading(
    tiny_teacher_dir: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    code, _, err = run(capsys, str(tiny_teacher_dir), *extra, "--out", str(tmp_path / "dist"))
    assert code == 2 and message in err and err.count("error:") == 1
    assert not (tmp_path / "dist").exists()


def test_missing_data_and_missing_student_are_one_sentence(
    tiny_teacher_dir: Path, tmp_path: Path, capsys
) -> None:
    code, _, err = run(capsys, str(tiny_teacher_dir), "--target", "onnx", "--out", str(tmp_path / "d"))
    assert code == 2 and "does not record its data; pass --data FILE" in err
    code, _, err = run(capsys, str(tmp_path / "nope"), "--target", "onnx")
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "d").exists()
