"""The distillation engine's Python API: any teacher, any student, losses by name and weight.

Example:
    >>> import edge_distill
    >>> result = edge_distill.distill(
    ...     teacher, student, {"input_ids": ids, "attention_mask": mask, "labels": y},
    ...     losses={"kd": 0.5, "ce": 0.5, "hidden_mse": {"weight": 1.0, "layers": "uniform"}},
    ...     val_data=val, settings=TrainSettings(epochs=3),
    ... )                                                               # doctest: +SKIP
    >>> result.metrics                                                  # doctest: +SKIP
    {'teacher': 0.97, 'student': 0.95, 'retention': 0.979, 'agreement': 0.96}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_distill.errors import EdgeDistillError
from edge_distill.evaluation import Metric, teacher_evaluation
from edge_distill.objective import TEMPERED, Objective, probe_widths
from edge_distill.schemes import (
    SCHEMES,
    PeerModule,
)
from edge_distill.sources import teacher_source
from edge_distill.trainer import (
    Run,
    StepCallback,
    Trainable,
    TrainResult,
    TrainSettings,
    fingerprint,
    fit,
    labels_of,
    make_accelerator,
)
from edge_distill.views import Adapter, Batch, Need, Views, auto_adapter, collect, model_inputs


@dataclass
class DistillResult:
    """What ``distill`` returns: the trained student (best epoch), the run's history and its evaluation."""

    student: nn.Module
    train: TrainResult
    metrics: dict[str, float | None] = field(default_factory=dict)
    scheme: str = "offline"
    cache: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "metrics": self.metrics,
            "train": self.train.as_dict(),
            "cache": self.cache,
        }


def default_losses(has_labels: bool, settings: TrainSettings) -> dict[str, Any]:
    """Soft targets mixed with the hard labels by ``alpha`` (KD only when the data has no labels)."""
    if not has_labels:
        return {"kd": 1.0}
    return {"kd": settings.alpha, "ce": 1.0 - settings.alpha}


def as_examples(data: Any, what: str = "data") -> dict[str, torch.Tensor]:
    """Columns of equal length as tensors, from a mapping, a ``datasets.Dataset`` or a map-style dataset."""
    if hasattr(data, "with_format") and hasattr(data, "column_names"):  # datasets.Dataset
        data = data.with_format("torch")[:]
    elif not isinstance(data, Mapping) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        rows = [data[i] for i in range(len(data))]
        if not rows or not isinstance(rows[0], Mapping):
            raise EdgeDistillError(
                f"{what} must yield dicts of tensors; got {type(rows[0]).__name__ if rows else 'no rows'}."
            )
        data = {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}
    if not isinstance(data, Mapping) or not data:
        raise EdgeDistillError(
            f"{what} must be a mapping of column name to tensor; got {type(data).__name__}."
        )
    columns = {
        k: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for k, v in data.items()
    }
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise EdgeDistillError(
            f"{what} columns differ in length ({lengths}); give every column one row per example."
        )
    if next(iter(lengths.values())) == 0:
        raise EdgeDistillError(f"{what} has no rows; pass at least one example.")
    return columns


def _teachers(teacher: Any, scheme: str) -> list[nn.Module]:
    if scheme not in SCHEMES:
        raise EdgeDistillError(f"Unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}.")
    if scheme == "self":
        if teacher is not None:
            raise EdgeDistillError("scheme='self' uses the student as its own teacher; pass teacher=None.")
        return []
    if teacher is None:
        raise EdgeDistillError(f"scheme={scheme!r} needs a teacher; pass one, or use scheme='self'.")
    teachers = list(teacher) if isinstance(teacher, Sequence) else [teacher]
    if scheme == "mutual" and len(teachers) != 1:
        raise EdgeDistillError("Mutual learning trains one peer; pass a single teacher.")
    return teachers


def _prepare_attention(model: nn.Module, need: Need) -> None:
    """Attention maps need the eager kernel (SDPA does not return them)."""
    if need.attentions and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")


def _build_objective(
    losses: Mapping[str, Any],
    student: nn.Module,
    teacher: nn.Module,
    adapters: tuple[Adapter, Adapter],
    probe: Batch,
    settings: TrainSettings,
) -> tuple[Objective, Views]:
    """Resolve the spec, then run one probe batch through both models to size the learned projections.

    Returns the objective and the teacher's probe views (they also size the offline cache).
    """
    draft = Objective.build(losses, student, teacher, temperature=settings.temperature)
    _prepare_attention(student, draft.student_need)
    _prepare_attention(teacher, draft.teacher_need)
    with torch.no_grad():
        s_views = collect(student.eval(), adapters[0], probe, draft.student_need)
        t_views = collect(teacher.eval(), adapters[1], probe, draft.teacher_need)
    widths = probe_widths(draft, s_views, t_views)
    with torch.random.fork_rng(devices=[]):  # projections drawn from the run's seed, not the global RNG
        torch.manual_seed(settings.seed)
        objective = Objective.build(losses, student, teacher, widths, temperature=settings.temperature)
    return objective, t_views


def _check_mix_temperature(objective: Objective, teachers: int, settings: TrainSettings) -> None:
    """Several teachers are mixed at the run's temperature T, as ``T * log p``; a term reading the mix at
    another temperature T' would learn ``softmax(T log p / T')``, which is not the mix ``p``."""
    for term in objective.terms:
        if teachers > 1 and term.family in TEMPERED and term.temperature != settings.temperature:
            raise EdgeDistillError(
                f"Loss term {term.name!r} uses temperature {term.temperature}, but several teachers are "
                f"mixed at the run's temperature {settings.temperature}; drop the term's own temperature."
            )


def distill(
    teacher: nn.Module | Sequence[nn.Module] | None,
    student: nn.Module,
    data: Any,
    losses: Mapping[str, Any] | None = None,
    *,
    val_data: Any = None,
    settings: TrainSettings | None = None,
    scheme: str = "offline",
    self_teacher: str = "ema",
    teacher_weights: Sequence[float] | None = None,
    adapter: Adapter | None = None,
    teacher_adapter: Adapter | None = None,
    cache: bool | str | Path = True,
    top_k: int = 64,
    max_cache_mb: float = 4096,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    augment: Callable[[Batch, torch.Generator], Batch] | None = None,
    metric: Metric | None = None,
    teacher_val_logits: torch.Tensor | None = None,
    on_step: StepCallback | None = None,
    say: Callable[[str], None] = lambda text: None,
) -> DistillResult:
    """Distil ``teacher`` into ``student`` (trained in place) on ``data``; returns a ``DistillResult``.

    ``data`` and ``val_data``: columns of equal length (a dict of tensors, a ``datasets.Dataset``, or a
    dataset yielding dicts); the model inputs plus an optional ``labels`` column. ``losses``: term ->
    weight or options (see ``edge_distill.objective``); default ``alpha * kd + (1 - alpha) * ce``.
    ``scheme``: ``offline`` (teacher run once, outputs cached on disk under ``cache``), ``online``,
    ``mutual`` (the teacher is trained too, in place) or ``self`` (``teacher=None``; ``self_teacher``
    ``ema`` or ``snapshot``). Several teachers mix their distributions by ``teacher_weights``.
    ``adapter``/``teacher_adapter`` say how to call each model and read its outputs (default: Hugging Face
    models and one-input modules returning logits). With ``checkpoint_dir`` a checkpoint is written after
    every epoch; ``resume=True`` continues from it. Early stopping (``settings.patience``) and the
    best-epoch choice use ``metric`` (default accuracy) on ``val_data``; ``teacher_val_logits`` spares
    the teacher's pass over ``val_data`` when the caller has them already.
    """
    settings = settings or TrainSettings()
    examples = as_examples(data)
    val = as_examples(val_data, "val_data") if val_data is not None else None
    teachers = _teachers(teacher, scheme)
    s_adapter = adapter or auto_adapter(student)
    t_adapter = teacher_adapter or (auto_adapter(teachers[0]) if teachers else s_adapter)
    losses = dict(losses or default_losses(labels_of(examples) is not None, settings))
    acc = make_accelerator(settings)
    probe = {k: v[: min(2, len(v))] for k, v in examples.items()}
    reference = teachers[0] if teachers else student
    objective, t_probe = _build_objective(losses, student, reference, (s_adapter, t_adapter), probe, settings)
    _check_mix_temperature(objective, len(teachers), settings)
    if scheme == "offline" and augment is not None:
        say("Augmented batches need the teacher's outputs on them, not cached ones: scheme 'online'.")
        scheme = "online"
    source, examples, cache_info, scheme = teacher_source(
        scheme, teachers, student, objective, examples, settings, acc, say,
        adapters=(s_adapter, t_adapter), self_teacher=self_teacher, weights=teacher_weights,
        cache=cache, top_k=top_k, max_cache_mb=max_cache_mb, probe=t_probe,
    )  # fmt: skip
    peer = peer_objective = None
    if scheme == "mutual":  # each peer learns from the other's logits, whatever the spec reads
        objective.student_need = replace(objective.student_need, logits=True)
        peer = PeerModule(teachers[0], t_adapter, replace(objective.teacher_need, logits=True))
        peer_objective = Objective.build(
            default_losses(labels_of(examples) is not None, settings),
            teachers[0],
            None,
            temperature=settings.temperature,
        )
    evaluation = teacher_evaluation(
        teachers, t_adapter, s_adapter, val, metric, teacher_val_logits, teacher_weights
    )
    run = Run(
        trainable=Trainable(student, objective, s_adapter),
        source=source,
        examples=examples,
        settings=settings,
        evaluate=evaluation.during if evaluation.measures() else None,
        peer=peer,
        peer_objective=peer_objective,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        resume=resume,
        fingerprint=fingerprint(
            settings.as_dict(), losses, scheme, self_teacher, list(teacher_weights or [])
        ),
        augment=augment,
        on_step=on_step,
        accelerator=acc,
    )
    # the student's architecture, not its values: a resumed run loads every weight from the checkpoint,
    # and the interrupted student object itself (trained part-way) must be able to resume
    shapes = {k: [str(v.dtype), list(v.shape)] for k, v in student.state_dict().items()}
    run.fingerprint = fingerprint(run.fingerprint, shapes, model_inputs(examples))
    trained = fit(run)
    if scheme == "mutual" and val is not None:  # the peer trained too: report it as it is now
        evaluation = teacher_evaluation(teachers, t_adapter, s_adapter, val, metric, None, None)
    metrics = evaluation.final(student) if val is not None else {}
    return DistillResult(student=student, train=trained, metrics=metrics, scheme=scheme, cache=cache_info)


def distill_progressive(
    teacher: nn.Module,
    students: Sequence[nn.Module],
    data: Any,
    losses: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> list[DistillResult]:
    """A chain: the teacher teaches ``students[0]``, which then teaches ``students[1]``, and so on.

    For large size ratios, where a small student learns better from a mid-size one than from the
    teacher directly (teacher-assistant KD, Mirzadeh et al., 2020). Other keywords go to ``distill``;
    ``checkpoint_dir`` gets one sub-folder per link.
    """
    if not students:
        raise EdgeDistillError("distill_progressive needs at least one student.")
    results, current = [], teacher
    checkpoint = kwargs.pop("checkpoint_dir", None)
    for i, student in enumerate(students):
        link_dir = Path(checkpoint) / f"link-{i + 1}" if checkpoint is not None else None
        result = distill(current, student, data, losses, checkpoint_dir=link_dir, **kwargs)
        results.append(result)
        current = result.student
    return results


__all__ = ["Adapter", "DistillResult", "TrainSettings", "Views", "distill", "distill_progressive"]
