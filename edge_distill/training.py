"""One candidate's distillation inside the budget loop, and the other ranks' side of a launched run.

Example:
    >>> student, result = train_candidate(job, inputs, spec, val_logits, checkpoint)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edge_distill.cache import cache_key, cache_root
from edge_distill.data import tokenize
from edge_distill.distributed import Coordinator
from edge_distill.engine import DistillResult, distill
from edge_distill.students import StudentSpec, build_student

if TYPE_CHECKING:
    from edge_distill.loop import Job

Inputs = dict[str, dict[str, torch.Tensor]]


def tokenized(job: Job) -> Inputs:
    """Every split of the job's data, tokenised at the job's sequence length."""
    splits = {"train": job.data.train, "val": job.data.val, "test": job.data.test}
    return {name: tokenize(job.teacher.tokenizer, s.texts, job.sequence_length) for name, s in splits.items()}


def train_candidate(
    job: Job,
    inputs: Inputs,
    spec: StudentSpec,
    teacher_val_logits: torch.Tensor,
    checkpoint: Path,
    *,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    say: Callable[[str], None] = lambda text: None,
) -> tuple[nn.Module, DistillResult]:
    """Cut the student ``spec`` from the teacher and distil it on the training split."""
    student = build_student(job.teacher.model, spec, seed=job.train.seed)
    labels = {name: torch.as_tensor(getattr(job.data, name).labels) for name in ("train", "val")}
    result = distill(
        job.teacher.model,
        student,
        {**inputs["train"], "labels": labels["train"]},
        job.losses,
        val_data={**inputs["val"], "labels": labels["val"]},
        settings=job.train,
        scheme=job.scheme,
        top_k=job.top_k,
        checkpoint_dir=checkpoint,
        resume=job.resume,
        teacher_val_logits=teacher_val_logits,
        on_step=on_step,
        say=say,
    )
    return student, result


def checkpoint_dir(job: Job, spec: StudentSpec) -> Path:
    """Where a candidate's training checkpoints live: the user cache, keyed by everything that shapes them.

    Outside the run folder (which appears only when the run ends), so that an interrupted run's training
    survives it and ``--resume`` finds it.
    """
    key = cache_key(
        job.teacher.fingerprint(),
        job.data.fingerprint(),
        {
            "spec": spec.as_dict(),
            "train": job.train.as_dict(),
            "losses": job.losses,
            "scheme": job.scheme,
            "seq_len": job.sequence_length,
            "top_k": job.top_k,
        },
    )
    return cache_root() / "checkpoints" / key[:32]


def serve(job: Job, coordinator: Coordinator) -> None:
    """A non-main rank: join every distillation the main rank starts, until it says the job is over."""
    inputs = tokenized(job)
    while (message := coordinator.receive()) is not None:
        train_candidate(
            job, inputs, StudentSpec(**message["spec"]), message["teacher_val_logits"], message["checkpoint"]
        )


def candidate_message(spec: StudentSpec, val_logits: torch.Tensor, checkpoint: Path) -> dict[str, Any]:
    """What the other ranks need to join a candidate's distillation."""
    return {"spec": spec.as_dict(), "teacher_val_logits": val_logits, "checkpoint": checkpoint}
