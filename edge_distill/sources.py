"""The teacher source a scheme needs, built: cached outputs (offline), a live teacher, the student's own
EMA or snapshot, or several teachers mixed.

Example:
    >>> source, rows, info, scheme = teacher_source("offline", [teacher], student, ...)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_distill.cache import TeacherCache, cache_root
from edge_distill.errors import EdgeDistillError
from edge_distill.objective import Objective
from edge_distill.offline import PREFIX, CacheSpec, cached_teacher_outputs, compact, groups_of, teacher_rows
from edge_distill.schemes import (
    SELF_TEACHERS,
    CachedTeacher,
    LiveTeacher,
    MultiTeacher,
    SelfTeacher,
    TeacherSource,
)
from edge_distill.trainer import TrainSettings, fingerprint
from edge_distill.views import Adapter, Views, model_inputs


def teacher_source(
    scheme: str,
    teachers: list[nn.Module],
    student: nn.Module,
    objective: Objective,
    examples: dict[str, torch.Tensor],
    settings: TrainSettings,
    acc: Any,
    say: Callable[[str], None],
    *,
    adapters: tuple[Adapter, Adapter],
    self_teacher: str,
    weights: Sequence[float] | None,
    cache: bool | str | Path,
    top_k: int,
    max_cache_mb: float,
    probe: Views,
) -> tuple[TeacherSource, dict[str, torch.Tensor], dict[str, Any], str]:
    """The teacher source for ``scheme``; for offline, the examples gain the cached ``teacher*`` columns."""
    need, t_adapter = objective.teacher_need, adapters[1]
    if scheme == "self":
        if self_teacher not in SELF_TEACHERS:
            raise EdgeDistillError(
                f"self_teacher must be one of {', '.join(SELF_TEACHERS)}, got {self_teacher!r}."
            )
        student.to(acc.device)  # the EMA copy lives where the trainer will put the student
        source = SelfTeacher(
            student, adapters[0], need, mode=self_teacher, decay=settings.ema_decay, autocast=acc.autocast
        )
        return source, examples, {}, scheme
    if scheme == "offline" and need.attentions:
        say("Attention terms run the teacher live (attention maps are not cached): scheme 'online'.")
        scheme = "online"
    precision = settings.resolved_precision()
    spec = CacheSpec(top_k=top_k, temperature=settings.temperature, precision=precision)
    if len(teachers) > 1:  # mixing distributions needs every class of every teacher: no top-k folding
        spec = replace(spec, top_k=sys.maxsize)
    if scheme == "offline":
        estimate = _estimate_mb(probe, len(next(iter(examples.values()))), len(teachers), spec)
        if estimate > max_cache_mb:
            say(f"Teacher cache would take {estimate:.0f} MB (> {max_cache_mb:.0f} MB): teacher runs live.")
            scheme = "online"
    if scheme == "mutual":  # the peer's live views come from the trainer, with gradients
        return TeacherSource(), examples, {}, scheme
    if scheme == "online":
        lives = [LiveTeacher(t.to(acc.device), t_adapter, need, autocast=acc.autocast) for t in teachers]
        source = (
            lives[0]
            if len(lives) == 1
            else MultiTeacher(lives, weights or [1.0] * len(lives), settings.temperature)
        )
        return source, examples, {}, scheme
    return _offline(teachers, examples, need, spec, acc, t_adapter, weights, cache)


def _estimate_mb(probe: Views, rows: int, teachers: int, spec: CacheSpec) -> float:
    """Cache size from the probe batch's compacted teacher outputs, scaled to the rows and teachers."""
    stored = compact(probe, spec)
    probe_rows = next(iter(stored.values())).shape[0] if stored else 1
    per_example = sum(t.numel() * t.element_size() for t in stored.values()) / probe_rows
    return per_example * rows * teachers / 2**20


def _offline(teachers, examples, need, spec, acc, adapter, weights, cache):
    inputs = model_inputs(examples)
    data_print = fingerprint(inputs)
    root = cache_root() / "teacher-outputs" if cache is True else Path(cache) if cache else None
    merged, infos, sources = dict(examples), [], []
    for i, model in enumerate(teachers):
        prefix = PREFIX if len(teachers) == 1 else f"teacher{i}."
        key = fingerprint(weights_print(model), data_print, prefix, adapter.embedding_path, spec.precision)
        if root is None:  # in memory only: the teacher still runs once
            groups = groups_of(need)
            rows = len(next(iter(inputs.values())))
            computed = teacher_rows(model, adapter, inputs, groups, spec, prefix)(0, rows, list(groups))
            outputs = {k: v for tensors in computed.values() for k, v in tensors.items()}
            info = {"cache": "memory"}
        else:
            outputs, info = cached_teacher_outputs(
                model, adapter, inputs, need, spec, TeacherCache(root), key, prefix=prefix,
                rank=acc.process_index, world=acc.num_processes, barrier=acc.wait_for_everyone,
            )  # fmt: skip
        merged.update(outputs)
        infos.append(info)
        sources.append(CachedTeacher(spec, prefix))
    source = (
        sources[0]
        if len(sources) == 1
        else MultiTeacher(sources, weights or [1.0] * len(sources), spec.temperature)
    )
    return source, merged, infos[0] if len(infos) == 1 else {"teachers": infos}, "offline"


def weights_print(model: nn.Module) -> str:
    """A fingerprint of a model's weights and config (the cache key must change when the teacher does:
    equal weights under another config, e.g. another head count, compute other outputs)."""
    config = getattr(model, "config", None)
    settings = {} if config is None or not hasattr(config, "to_dict") else config.to_dict()
    settings = {k: v for k, v in settings.items() if not k.startswith("_") and k != "transformers_version"}
    return fingerprint(type(model).__name__, model.state_dict(), settings)
