"""A tiny BERT classifier trained in seconds on a learnable synthetic task, for the export-target tests.

Quantized artifacts are judged by the task metric (int8: accuracy within 1 point of fp32), which means
nothing on a random model whose logits are near ties. This one learns "which third of the vocabulary
do most tokens come from" to about 100% accuracy, so its margins are those of a real trained student.

Example:
    >>> case = trained_classifier()
    >>> case.metric.compute(case.model(**case.held_out).detach().numpy())
    1.0
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification

from edge_distill.shipping import ShipData
from edge_distill.targets.base import Metric

SEQ = 16  # fixed sequence length of every export
VOCAB = 99
LABELS = 3


class LogitsOnly(torch.nn.Module):
    """forward(input_ids, attention_mask) -> logits (batch, labels), as the exporters expect."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


@dataclass(frozen=True)
class ExportCase:
    """A trained model, a batch-1 export example, calibration rows, held-out rows and their metric."""

    model: torch.nn.Module
    example: dict[str, torch.Tensor]  # (1, SEQ) each
    calibration: dict[str, torch.Tensor]  # (64, SEQ): "training" rows, never the held-out ones
    held_out: dict[str, torch.Tensor]  # (128, SEQ)
    labels: np.ndarray  # (128,) the held-out rows' labels
    metric: Metric  # accuracy of outputs (n, LABELS) against ``labels``


def synthetic_batch(rows: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Token ids drawn mostly from one third of the vocabulary (the label), with right padding."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, LABELS, (rows,), generator=generator)  # (rows,)
    third = VOCAB // LABELS
    own = 1 + labels[:, None] * third + torch.randint(0, third, (rows, SEQ), generator=generator)
    noise = torch.randint(1, VOCAB, (rows, SEQ), generator=generator)
    ids = torch.where(torch.rand(rows, SEQ, generator=generator) < 0.7, own, noise).clamp(max=VOCAB - 1)
    lengths = torch.randint(SEQ // 2, SEQ + 1, (rows,), generator=generator)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()  # (rows, seq)
    return {"input_ids": ids * mask, "attention_mask": mask}, labels


def accuracy_metric(labels: np.ndarray) -> Metric:
    return Metric("accuracy", lambda out: float(np.mean(np.argmax(out, axis=-1) == labels)))


@functools.cache
def trained_classifier() -> ExportCase:
    """Train once per test session (about 2 s on 2 cores); callers must not modify the model."""
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        num_labels=LABELS,
    )
    model = LogitsOnly(BertForSequenceClassification(config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(120):
        inputs, labels = synthetic_batch(64, seed=1000 + step)
        loss = torch.nn.functional.cross_entropy(model(**inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    calibration, _ = synthetic_batch(64, seed=1)
    held_out, labels = synthetic_batch(128, seed=2)
    example = {name: value[:1] for name, value in held_out.items()}
    return ExportCase(model, example, calibration, held_out, labels.numpy(), accuracy_metric(labels.numpy()))


def classifier_ship_data() -> tuple[torch.nn.Module, ShipData]:
    """The trained classifier and what shipping it takes (calibration and held-out rows, accuracy)."""
    case = trained_classifier()
    data = ShipData(
        example=case.example,
        calibration=case.calibration,
        held_out=case.held_out,
        metric=case.metric,
        preprocess={"kind": "text", "sequence_length": SEQ},
        label_names=("low", "mid", "high"),
    )
    return case.model, data
