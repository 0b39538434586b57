"""The budget loop checks every target of the profile on an untrained student before training.

Each target's own failures (an op it cannot lower, named in one sentence) are tested on real models in
tests/test_<target>_target.py; here one target's exporter is made to fail that way, to check what the loop
does with it: drop the target before training and ship the others, or stop when the target the loop
measures latency with cannot export.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_distill.cli import main
from edge_distill.errors import ExportError

FAST = ["--epochs", "1", "--seq-len", "16", "--max-rounds", "1", "--no-vocab-trim"]


def refusing(target: str):
    def export(self, model, example, out_dir, **options):
        raise ExportError(
            f"The {target} target cannot lower op aten.fake_op.default (RuntimeError: no lowering); replace "
            "it in the model with supported ops."
        )

    return export


def run_host(capsys, teacher: Path, data: Path, out_dir: Path) -> tuple[int, str, str]:
    args = ["--profile", "host", "--teacher", str(teacher), "--data", str(data), "--out", str(out_dir)]
    code = main([*args, "--latency-ms", "1000", *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_target_that_cannot_export_is_dropped_before_training(
    monkeypatch: pytest.MonkeyPatch, tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys
) -> None:
    from edge_distill.targets.tflite import TfliteTarget

    monkeypatch.setattr(TfliteTarget, "export", refusing("tflite"))
    out_dir = tmp_path / "run"
    code, out, err = run_host(capsys, tiny_teacher_dir, tiny_csv, out_dir)
    assert code == 0, err
    dropped = out.index("target dropped before training: The tflite target cannot lower op aten.fake_op")
    assert dropped < out.index("Round 1")  # found before any training
    assert "Targets: onnx, executorch export this architecture" in out
    shipped = json.loads((out_dir / "report.json").read_text())["result"]["artifacts"]
    assert {a["target"] for a in shipped} == {"onnx", "executorch"}
    assert not (out_dir / "artifacts" / "tflite-fp32").exists()


def test_the_measuring_target_failing_is_one_sentence_and_nothing_written(
    monkeypatch: pytest.MonkeyPatch, tiny_teacher_dir: Path, tiny_csv: Path, tmp_path: Path, capsys
) -> None:
    from edge_distill.targets.onnx import OnnxTarget

    monkeypatch.setattr(OnnxTarget, "export", refusing("onnx"))
    out_dir = tmp_path / "run"
    code, out, err = run_host(capsys, tiny_teacher_dir, tiny_csv, out_dir)
    assert code == 2
    assert err.startswith("error: The onnx target cannot lower op aten.fake_op.default")
    assert len(err.strip().splitlines()) == 1 and "Round 1" not in out
    assert not out_dir.exists() and not list(tmp_path.glob(".*partial"))
