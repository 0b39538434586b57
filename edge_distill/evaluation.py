"""Evaluation of a distillation: teacher metric, student metric, retention and top-1 agreement.

The teacher's side is computed once (its validation logits and metric); the student's after every epoch
(for early stopping and the best-epoch choice) and at the end.

Example:
    >>> evaluate(student, adapter, val, teacher_logits, None, 0.97)   # doctest: +SKIP
    {'teacher': 0.97, 'student': 0.95, 'retention': 0.979, 'agreement': 0.96}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from edge_distill.trainer import labels_of
from edge_distill.views import Adapter, Need, collect

Metric = Callable[[torch.Tensor, torch.Tensor | None], float]


def accuracy_metric(logits: torch.Tensor, labels: torch.Tensor | None) -> float:
    """Top-1 accuracy over the positions whose label is not -100."""
    if labels is None:
        raise ValueError("accuracy needs labels")
    keep = labels != -100
    return float((logits.argmax(-1)[keep] == labels[keep]).float().mean())


@torch.no_grad()
def predict(model: nn.Module, adapter: Adapter, examples: Mapping[str, torch.Tensor], batch_size: int = 64):
    """The model's logits over ``examples`` in eval mode, fp32, in batches."""
    model.eval()
    out = []
    n = len(next(iter(examples.values())))
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in examples.items()}
        out.append(collect(model, adapter, batch, Need()).logits.float().cpu())
    return torch.cat(out)


def evaluate(
    student: nn.Module,
    adapter: Adapter,
    examples: Mapping[str, torch.Tensor],
    teacher_logits: torch.Tensor | None,
    metric: Metric | None,
    teacher_metric: float | None,
) -> dict[str, float | None]:
    """Student metric, retention (student / teacher) and top-1 agreement with the teacher."""
    logits = predict(student, adapter, examples)
    labels = labels_of(examples)
    value = (metric or accuracy_metric)(logits, labels) if labels is not None or metric else None
    agreement = (
        None
        if teacher_logits is None
        else float((logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean())
    )
    retention = value / teacher_metric if value is not None and teacher_metric else None
    return {"teacher": teacher_metric, "student": value, "retention": retention, "agreement": agreement}


@dataclass
class Evaluation:
    """The teacher's validation logits and metric, computed once; the student's, after each epoch."""

    adapter: Adapter
    val: Mapping[str, torch.Tensor] | None
    metric: Metric | None
    teacher_logits: torch.Tensor | None = None
    teacher_metric: float | None = None

    def measures(self) -> bool:
        """Whether a validation metric exists: labels, a metric function, or a teacher to agree with."""
        return self.val is not None and (
            self.metric is not None or labels_of(self.val) is not None or self.teacher_logits is not None
        )

    def during(self, student: nn.Module) -> float:
        result = self.final(student)
        return result["student"] if result["student"] is not None else result["agreement"]

    def final(self, student: nn.Module) -> dict[str, float | None]:
        return evaluate(
            student, self.adapter, self.val, self.teacher_logits, self.metric, self.teacher_metric
        )


def teacher_evaluation(teachers, t_adapter, s_adapter, val, metric, given, weights) -> Evaluation:
    """The teacher's side of evaluation, once: its validation logits (``given`` or computed) and metric."""
    evaluation = Evaluation(s_adapter, val, metric)
    if val is None or not teachers:
        return evaluation
    if given is not None:
        evaluation.teacher_logits = given
    else:
        logits = [predict(t, t_adapter, val) for t in teachers]
        mix = torch.tensor(weights or [1.0] * len(logits), dtype=torch.float32)  # as MultiTeacher mixes
        mix = (mix / mix.sum()).view(-1, *[1] * logits[0].dim())
        mixed = (torch.stack(logits).softmax(-1) * mix).sum(0).log() if len(logits) > 1 else logits[0]
        evaluation.teacher_logits = mixed
    labels = labels_of(val)
    if labels is not None or metric:
        evaluation.teacher_metric = (metric or accuracy_metric)(evaluation.teacher_logits, labels)
    return evaluation
