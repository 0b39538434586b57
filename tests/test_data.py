"""Data loading: file round trips, label mapping, every DataError, splits, fingerprints, the demo data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_distill.data import (
    Split,
    TextDataset,
    decode_text,
    load_demo_data,
    load_text_file,
    split_indices,
    tokenize,
)
from edge_distill.errors import DataError

TOPICS = ("business", "entertainment", "politics", "sports", "tech")


def _rows(labels: list[object], per_class: int = 10) -> list[dict[str, object]]:
    return [{"text": f"text {i} about {label}", "label": label} for label in labels for i in range(per_class)]


def _write_csv(
    path: Path, rows: list[dict[str, object]], columns: tuple[str, ...] = ("text", "label")
) -> Path:
    lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _all(data: TextDataset) -> dict[str, str]:
    """text -> label name over all splits."""
    out: dict[str, str] = {}
    for split in (data.train, data.val, data.test):
        out.update({t: data.label_names[int(y)] for t, y in zip(split.texts, split.labels, strict=True)})
    return out


# -------------------- round trips --------------------


def test_csv_round_trip_with_string_labels(tmp_path: Path) -> None:
    rows = _rows(["tech", "film", "sport"])
    data = load_text_file(_write_csv(tmp_path / "d.csv", rows))
    assert data.name == "d.csv"
    assert data.label_names == ("film", "sport", "tech")  # sorted
    assert _all(data) == {r["text"]: r["label"] for r in rows}
    assert (len(data.train), len(data.val), len(data.test)) == (24, 3, 3)
    assert data.train.labels.dtype == np.int64
    assert data.source == str((tmp_path / "d.csv").resolve())


def test_jsonl_round_trip_with_int_labels(tmp_path: Path) -> None:
    rows = _rows([0, 1, 2])
    data = load_text_file(_write_jsonl(tmp_path / "d.jsonl", rows))
    assert data.label_names == ("0", "1", "2")
    assert _all(data) == {r["text"]: str(r["label"]) for r in rows}


def test_json_lines_and_parquet_and_custom_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"body": r["text"], "topic": r["label"]} for r in _rows(["a", "b"])]
    from_json = load_text_file(
        _write_jsonl(tmp_path / "d.json", rows), text_column="body", label_column="topic"
    )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    from_parquet = load_text_file(tmp_path / "d.parquet", text_column="body", label_column="topic")
    assert _all(from_json) == _all(from_parquet) == {r["body"]: r["topic"] for r in rows}


def test_texts_with_commas_and_quotes_survive_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"hello, ""world""",a\nplain,b\nx,a\ny,b\n', encoding="utf-8")
    assert 'hello, "world"' in _all(load_text_file(path))


def test_integer_labels_need_not_be_contiguous(tmp_path: Path) -> None:
    data = load_text_file(_write_csv(tmp_path / "d.csv", _rows([9, 1, 5])))
    assert data.label_names == ("1", "5", "9")
    assert set(_all(data).values()) == {"1", "5", "9"}


def test_string_labels_map_onto_teacher_label_order(tmp_path: Path) -> None:
    names = ["tech", "sport", "film", "unused"]  # the teacher's id2label order, not sorted
    data = load_text_file(_write_csv(tmp_path / "d.csv", _rows(["film", "tech", "sport"])), label_names=names)
    assert data.label_names == tuple(names)
    for split in (data.train, data.val, data.test):
        for text, label in zip(split.texts, split.labels, strict=True):
            assert text.endswith(names[label])


def test_int_labels_index_teacher_labels(tmp_path: Path) -> None:
    data = load_text_file(
        _write_jsonl(tmp_path / "d.jsonl", _rows([0, 2])), label_names=["neg", "neu", "pos"]
    )
    assert data.label_names == ("neg", "neu", "pos")
    assert set(np.unique(data.train.labels)) == {0, 2}


# -------------------- errors --------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_text_file(tmp_path / "nope.csv")


def test_unsupported_extension_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("hello\n")
    with pytest.raises(DataError, match=r"unsupported extension '\.txt'.*\.csv.*\.jsonl.*\.parquet"):
        load_text_file(path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load_text_file(tmp_path / "d.csv")


def test_header_only_has_no_rows(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no rows"):
        load_text_file(tmp_path / "d.csv")


@pytest.mark.parametrize(
    ("columns", "missing", "flag"),
    [(("body", "label"), "text", "--text-column"), (("text", "topic"), "label", "--label-column")],
)
def test_missing_column_names_it_and_the_flag(
    tmp_path: Path, columns: tuple[str, str], missing: str, flag: str
) -> None:
    rows = [{columns[0]: r["text"], columns[1]: r["label"]} for r in _rows(["a", "b"])]
    path = _write_csv(tmp_path / "d.csv", rows, columns)
    with pytest.raises(DataError) as info:
        load_text_file(path)
    message = str(info.value)
    assert f"no column '{missing}'" in message and flag in message
    assert all(c in message for c in columns)  # lists what the file has


def test_labels_outside_teacher_set(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", _rows(["pos", "neg", "meh", "huh"]))
    with pytest.raises(DataError) as info:
        load_text_file(path, label_names=["neg", "pos"])
    message = str(info.value)
    assert "'huh'" in message and "'meh'" in message and "neg, pos" in message


def test_int_labels_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not in the teacher's label set \(3\)"):
        load_text_file(_write_jsonl(tmp_path / "d.jsonl", _rows([0, 3])), label_names=["a", "b", "c"])


def test_single_class(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="single class"):
        load_text_file(_write_csv(tmp_path / "d.csv", _rows(["only"])))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.csv", "text,label\n1,a\n2,b\n3,a\n"),  # numbers parse as ints
        ("d.jsonl", '{"text": ["a", "list"], "label": 0}\n{"text": ["x"], "label": 1}\n'),
        ("d2.jsonl", '{"text": "ok", "label": 0}\n{"text": null, "label": 1}\n{"text": "x", "label": 1}\n'),
    ],
)
def test_non_string_text(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match="non-string values"):
        load_text_file(tmp_path / name)


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        ("text,label\na,1\nb,\nc,2\n", "a missing value in row 2"),
        ('{"text": "a", "label": 1.5}\n{"text": "b", "label": 2}\n', "1.5 in row 1"),
        ('{"text": "a", "label": true}\n{"text": "b", "label": false}\n', "True in row 1"),
    ],
)
def test_labels_that_are_not_names_or_ids(tmp_path: Path, content: str, shown: str) -> None:
    path = tmp_path / ("d.csv" if content.startswith("text") else "d.jsonl")
    path.write_text(content)
    with pytest.raises(DataError, match=f"not a class name or integer id \\({shown}\\)"):
        load_text_file(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.csv", 'text,label\nhello,a\n"unterminated,b\n'),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": }\n'),
        ("d.parquet", "not parquet at all"),
    ],
)
def test_malformed_file_is_a_data_error(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match="is not valid"):
        load_text_file(tmp_path / name)


def test_too_few_rows(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text,label\na,x\nb,y\n")
    with pytest.raises(DataError, match="at least 3"):
        load_text_file(tmp_path / "d.csv")


# -------------------- splits and fingerprints --------------------


def test_stratified_split_sizes() -> None:
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    train, val, test = split_indices(labels, seed=3)
    assert [np.bincount(labels[s], minlength=3).tolist() for s in (train, val, test)] == [
        [80, 40, 8],
        [10, 5, 1],
        [10, 5, 1],
    ]
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(labels)))


def test_tiny_class_falls_back_to_plain_split() -> None:
    labels = np.array([0] * 20 + [1] * 2)
    parts = split_indices(labels)
    assert [len(p) for p in parts] == [18, 2, 2]
    assert sorted(np.concatenate(parts).tolist()) == list(range(22))


def test_fingerprint_is_deterministic_and_sensitive(tmp_path: Path) -> None:
    rows = _rows(["a", "b", "c"])
    path = _write_csv(tmp_path / "d.csv", rows)
    first, second = load_text_file(path), load_text_file(path)
    assert first.fingerprint() == second.fingerprint()
    assert load_text_file(path, seed=1).fingerprint() != first.fingerprint()
    rows[0]["text"] = "changed"
    assert load_text_file(_write_csv(tmp_path / "d.csv", rows)).fingerprint() != first.fingerprint()


def test_fingerprint_is_stable_across_processes() -> None:
    code = (
        "from edge_distill.data import load_demo_data; print(load_demo_data(max_per_class=5).fingerprint())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == load_demo_data(max_per_class=5).fingerprint()


def test_fingerprint_separates_text_boundaries() -> None:
    labels = np.array([0, 1], dtype=np.int64)
    empty = Split((), np.zeros(0, dtype=np.int64))
    a = TextDataset("x", ("p", "q"), Split(("ab", "c"), labels), empty, empty, "s")
    b = TextDataset("x", ("p", "q"), Split(("a", "bc"), labels), empty, empty, "s")
    assert a.fingerprint() != b.fingerprint()


# -------------------- demo data, decoding, tokenizing --------------------


def test_demo_data_small() -> None:
    data = load_demo_data(max_per_class=10)
    assert data.name == "bbc-news"
    assert data.label_names == TOPICS
    assert (len(data.train), len(data.val), len(data.test)) == (40, 5, 5)
    for split in (data.train, data.val, data.test):
        assert sorted(set(split.labels.tolist())) == [0, 1, 2, 3, 4]
        assert all(isinstance(t, str) and t for t in split.texts)
    assert load_demo_data(max_per_class=10).fingerprint() == data.fingerprint()
    assert load_demo_data(max_per_class=10, seed=1).fingerprint() != data.fingerprint()


def test_demo_data_full_split() -> None:
    data = load_demo_data()
    assert len(data.train) + len(data.val) + len(data.test) == 2225
    assert (len(data.val), len(data.test)) == (223, 223)
    assert any("£" in t for t in data.train.texts)  # the cp1252 files decode to the pound sign


def test_decode_text_falls_back_deterministically() -> None:
    assert decode_text("café".encode()) == "café"
    assert decode_text(b"\xa310m") == "£10m"
    assert decode_text(b"bad \x81 byte") == "bad \ufffd byte"


def test_tokenize_shapes_and_inputs(tiny_tokenizer: object) -> None:
    batch = tokenize(tiny_tokenizer, ["the news", "a much longer text " * 20], seq_len=12)
    assert set(batch) == {"input_ids", "attention_mask"}
    for tensor in batch.values():
        assert tensor.shape == (2, 12) and str(tensor.dtype) == "torch.int64"
    assert batch["attention_mask"][0].sum() == 4  # [CLS] the news [SEP], then padding
    assert batch["attention_mask"][1].sum() == 12  # truncated


@pytest.fixture
def tiny_tokenizer() -> object:
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "news", "a", "much", "longer", "text"]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})
