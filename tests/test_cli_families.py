"""The budget loop from the command line on every text family: embeddings, causal LMs, unlabelled data,
and a size budget that only vocabulary-trimmed students meet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from family_models import classifier_folder, embedding_folder, llama_folder, texts

from edge_distill.cli import main
from edge_distill.cut import export_module
from edge_distill.families import get_family
from edge_distill.teachers import load_teacher
from edge_distill.vocab import id_map

FAST = ["--profile", "host", "--epochs", "1", "--seq-len", "16", "--max-rounds", "2", "--lr", "1e-3"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def text_file(path: Path, *, labels: bool) -> Path:
    rows, topics = texts(60, 0)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"] if labels else ["text"])
        for text, topic in zip(rows, topics.tolist(), strict=True):
            writer.writerow([text, ("alpha", "beta", "gamma")[topic]] if labels else [text])
    return path


def test_embedding_teacher_under_a_size_budget_only_trimmed_students_meet(tmp_path: Path, capsys) -> None:
    teacher = embedding_folder(tmp_path / "teacher")
    data = text_file(tmp_path / "data.csv", labels=True)
    out = tmp_path / "run"
    # 30522 x 32 embeddings alone are 3.7 MB: only students trimmed to the data's tokens fit in 2 MB
    args = [*FAST, "--teacher", str(teacher), "--data", str(data), "--size-mb", "2", "--out", str(out)]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    winner = report["rounds"][-1]
    assert winner["fits"] and winner["student"]["vocab"] < 30522
    assert winner["metric"]["name"] == "probe accuracy" and 0.0 <= winner["metric"]["value"] <= 1.0
    assert report["teacher"]["metric"]["name"] == "probe accuracy"
    assert -1.0 <= winner["agreement"] <= 1.0  # cosine through the map fitted on train
    assert winner["parity"]["ok"]
    assert "Teacher (sentence-embedding)" in stdout and "probe" in stdout
    # the saved student is a sentence-transformers folder that loads back as an embedding teacher
    assert (out / "student" / "modules.json").is_file()
    student = load_teacher(out / "student")
    assert student.task == "sentence-embedding" and student.model.config.trimmed_vocab
    ids = student.tokenizer(["apple car rain"], return_tensors="pt")
    wrapped = export_module(get_family("sentence-embedding"), student.model)
    with torch.no_grad():
        vector = wrapped(ids["input_ids"], ids["attention_mask"])  # original tokenizer ids in
    assert vector.shape == (1, 32) and torch.allclose(vector.norm(dim=-1), torch.ones(1))  # normalized
    assert len(id_map(student.model)) == 30522


def test_causal_lm_teacher_is_scored_by_perplexity(tmp_path: Path, capsys) -> None:
    teacher = llama_folder(tmp_path / "teacher")
    data = text_file(tmp_path / "corpus.csv", labels=False)
    out = tmp_path / "run"
    code, stdout, err = run(capsys, *FAST, "--teacher", str(teacher), "--data", str(data), "--out", str(out))
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    winner = report["rounds"][-1]
    assert winner["metric"]["name"] == "perplexity" and winner["metric"]["value"] > 1.0
    teacher_ppl = report["teacher"]["metric"]["value"]
    assert winner["retention"] == pytest.approx(teacher_ppl / winner["metric"]["value"])
    assert winner["student"]["layers"] < 4 and "vocab" not in winner["student"]
    assert 0.0 <= winner["agreement"] <= 1.0  # next-token top-1 agreement
    assert load_teacher(out / "student").task == "causal-lm"
    assert "ppl" in stdout


def test_unlabelled_data_uses_the_teachers_predictions(tmp_path: Path, capsys) -> None:
    teacher = classifier_folder(tmp_path / "teacher")
    data = text_file(tmp_path / "unlabelled.csv", labels=False)
    out = tmp_path / "run"
    code, stdout, err = run(capsys, *FAST, "--teacher", str(teacher), "--data", str(data), "--out", str(out))
    assert code == 0, err
    assert "the teacher's predictions are the labels" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["labeled"] is False
    assert report["teacher"]["metric"]["value"] == 1.0  # the teacher agrees with itself
    assert report["rounds"][-1]["metric"]["labels"] == "teacher"


def test_a_named_label_column_that_is_missing_is_an_error(tmp_path: Path, capsys) -> None:
    teacher = classifier_folder(tmp_path / "teacher")
    data = text_file(tmp_path / "unlabelled.csv", labels=False)
    args = [*FAST, "--teacher", str(teacher), "--data", str(data), "--label-column", "topic"]
    code, _, err = run(capsys, *args, "--out", str(tmp_path / "run"))
    assert code == 2 and "has no column 'topic'" in err and "--label-column" in err
    assert not (tmp_path / "run").exists()


def test_an_image_teacher_on_the_command_line_points_to_the_python_api(tmp_path: Path, capsys) -> None:
    from family_models import vit_folder

    teacher = vit_folder(tmp_path / "teacher")
    data = text_file(tmp_path / "data.csv", labels=True)
    code, _, err = run(capsys, *FAST, "--teacher", str(teacher), "--data", str(data))
    assert code == 2 and "image-classification" in err and "Python API" in err
