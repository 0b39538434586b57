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
# tiny random teachers: these tests are about each family's data and metrics, not the accuracy floor
FAST += ["--quick", "--min-retention", "0.05"]


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
    # 30522 x 32 embeddings alone are 3.7 MB in fp32: only students trimmed to the data's tokens fit in 2 MB
    # (int8 would fit untrimmed: --precision fp32 leaves trimming the only way)
    args = [*FAST, "--teacher", str(teacher), "--data", str(data), "--size-mb", "2", "--out", str(out)]
    args += ["--precision", "fp32"]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    winner = report["rounds"][-1]
    assert winner["fits"] and winner["student"]["vocab"] < 30522
    assert winner["metric"]["name"] == "probe accuracy" and 0.0 <= winner["metric"]["value"] <= 1.0
    assert report["teacher"]["metric"]["name"] == "probe accuracy"
    assert -1.0 <= winner["agreement"] <= 1.0  # cosine through the map fitted on train
    assert winner["verification"]["status"] == "verified"
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
    args = [*FAST, "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--teacher-text", "12"]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    assert "The teacher writes 12 training texts once" in stdout
    report = json.loads((out / "report.json").read_text())
    winner = report["rounds"][-1]
    assert winner["metric"]["name"] == "perplexity" and winner["metric"]["value"] > 1.0
    teacher_ppl = report["teacher"]["metric"]["value"]
    assert winner["retention"] == pytest.approx(teacher_ppl / winner["metric"]["value"])
    assert winner["student"]["layers"] < 4 and "vocab" not in winner["student"]
    assert 0.0 <= winner["agreement"] <= 1.0  # next-token top-1 agreement
    assert load_teacher(out / "student").task == "causal-lm"
    assert "ppl" in stdout
    assert report["teacher_outputs"]["teacher_text"]["texts"] == 12
    assert winner["train"]["steps"] == 4  # one epoch over 48 training texts + 12 written ones, batch 16
    assert report["teacher"]["generation"]["tokens_per_s"] > 0 and winner["generation"]["tokens_per_s"] > 0


def test_teacher_written_texts_are_written_once_and_cached(tmp_path: Path) -> None:
    from edge_distill.api import resolve_device
    from edge_distill.data import load_text_file
    from edge_distill.loop import Job
    from edge_distill.training import tokenized

    profile, budget = resolve_device("host")
    teacher = load_teacher(llama_folder(tmp_path / "teacher"))
    data = load_text_file(text_file(tmp_path / "corpus.csv", labels=False), label_column=None)
    job = Job(profile, budget, teacher, data, tmp_path / "run", seq_len=16, teacher_text=5)
    said: list[str] = []
    first, second = tokenized(job, said.append), tokenized(job, said.append)
    assert len(first["train"]["input_ids"]) == len(data.train) + 5
    assert said == ["The teacher writes 5 training texts once (sequence-level KD; cached)"]  # once
    torch.testing.assert_close(first["train"], second["train"])
    written = teacher.tokenizer.batch_decode(first["train"]["input_ids"][-5:], skip_special_tokens=True)
    openings = [" ".join(t.split()[:8]) for t in data.train.texts[:5]]
    assert all(text.startswith(opening) for text, opening in zip(written, openings, strict=True))


def test_teacher_text_needs_a_causal_lm(tmp_path: Path, capsys) -> None:
    teacher = classifier_folder(tmp_path / "teacher")
    data = text_file(tmp_path / "data.csv", labels=True)
    args = [*FAST, "--teacher", str(teacher), "--data", str(data), "--teacher-text", "4"]
    code, _, err = run(capsys, *args, "--out", str(tmp_path / "run"))
    assert code == 2 and "--teacher-text" in err and "causal LM" in err
    assert not (tmp_path / "run").exists()


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
