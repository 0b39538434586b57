"""Tiny random models and data for the engine tests (built from configs, offline, in milliseconds).

The teacher's classifier is sharpened (weights x60, a fixed bias), so that its distribution is far from
uniform and from a fresh student's: a divergence that falls during training measures real learning.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from edge_distill.trainer import TrainSettings

VOCAB, SEQ, CLASSES = 100, 10, 5


def bert_config(hidden: int, layers: int, heads: int, *, labels: int = CLASSES, dropout: float = 0.0):
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        num_labels=labels,
        max_position_embeddings=16,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def teacher_model(seed: int = 0, *, labels: int = CLASSES) -> BertForSequenceClassification:
    """4 layers, width 32, 4 heads; a peaked, input-dependent distribution over ``labels`` classes."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(bert_config(32, 4, 4, labels=labels))
    with torch.no_grad():
        model.classifier.weight.mul_(60.0)
        model.classifier.bias.copy_(torch.linspace(2.0, -2.0, labels))
    return model.eval()


def student_model(seed: int = 1, *, labels: int = CLASSES, dropout: float = 0.0):
    """2 layers, width 16, 2 heads: other widths and head counts than the teacher."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(bert_config(16, 2, 2, labels=labels, dropout=dropout))


def token_data(n: int, seed: int, *, labels: int = CLASSES) -> dict[str, torch.Tensor]:
    """Random token ids (n, SEQ), a full attention mask and random labels."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=generator)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, labels, (n,), generator=generator),
    }


def learnable_data(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Labels a student can learn: class c draws its tokens from ids [20c + 1, 20c + 6) (bag of words)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    ids = labels[:, None] * 20 + 1 + torch.randint(0, 5, (n, SEQ), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def settings(**overrides) -> TrainSettings:
    """Fast, deterministic defaults: fp32, no warm-up, a high learning rate for a few epochs."""
    base = {
        "epochs": 4,
        "batch_size": 16,
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "mixed_precision": "no",
        "temperature": 2.0,
    }
    return TrainSettings(**{**base, **overrides})


def inputs_of(data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in data.items() if k in ("input_ids", "attention_mask", "x")}


@torch.no_grad()
def outputs(model: nn.Module, data: Mapping[str, torch.Tensor], **kwargs):
    """A Hugging Face model's output in eval mode (hidden states, attentions on request)."""
    model.eval()
    return model(**inputs_of(data), **kwargs)


def kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> float:
    """KL(teacher || student) per example, averaged."""
    log_s = F.log_softmax(student_logits.float() / temperature, -1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, -1)
    return float(F.kl_div(log_s, log_t, log_target=True, reduction="batchmean"))


def count_rows(model: nn.Module) -> list[int]:
    """Record the batch size of every forward call of ``model`` (a teacher-run counter)."""
    seen: list[int] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = kwargs.get("input_ids", kwargs.get("x", args[0] if args else None))
        seen.append(int(first.shape[0]))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())


class MLP(nn.Module):
    """A plain classifier on ``x`` (batch, features): no config, no Hugging Face."""

    def __init__(self, features: int, hidden: int, classes: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
