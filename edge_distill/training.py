"""One candidate's distillation inside the budget loop, and the other ranks' side of a launched run.

Example:
    >>> cutter = make_cutter(job, inputs)                                               # doctest: +SKIP
    >>> student, result = train_candidate(job, inputs, spec, val, checkpoint, cutter=cutter)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edge_distill.cache import TeacherCache, cache_key, cache_root
from edge_distill.cut import Cutter
from edge_distill.distributed import Coordinator
from edge_distill.engine import DistillResult, distill
from edge_distill.students import StudentSpec

if TYPE_CHECKING:
    from edge_distill.loop import Job

Inputs = dict[str, dict[str, torch.Tensor]]


def tokenized(job: Job, say: Callable[[str], None] = lambda text: None) -> Inputs:
    """Every split of the job's data as the teacher's family takes it, at the job's sequence length.

    With ``job.teacher_text`` the training split also holds that many texts the teacher wrote itself.
    """
    splits = {"train": job.data.train, "val": job.data.val, "test": job.data.test}
    encode = job.family.encode
    inputs = {name: encode(job.teacher.tokenizer, s.texts, job.sequence_length) for name, s in splits.items()}
    written = teacher_text(job, say)
    if written is not None:
        inputs["train"] = {k: torch.cat([v, written[k]]) for k, v in inputs["train"].items()}
    return inputs


PROMPT_WORDS = 8  # a teacher-written text continues the first words of a training text


def teacher_text(job: Job, say: Callable[[str], None]) -> dict[str, torch.Tensor] | None:
    """Sequence-level KD (Kim & Rush, 2016; the recipe of DeepSeek-R1's distilled models): the teacher
    continues the opening words of training texts, sampling from its own distribution, and the student
    trains on what it wrote. Written once per (teacher, data, settings), then read from the cache."""
    if not job.teacher_text:
        return None
    from edge_distill.lm import generate_corpus

    texts = job.data.train.texts
    prompts = [" ".join(texts[i % len(texts)].split()[:PROMPT_WORDS]) for i in range(job.teacher_text)]
    settings = {"teacher_text": job.teacher_text, "seq_len": job.sequence_length, "seed": job.train.seed}
    key = cache_key(job.teacher.fingerprint(), job.data.fingerprint(), settings)

    def write() -> dict[str, torch.Tensor]:
        say(f"The teacher writes {job.teacher_text} training texts once (sequence-level KD; cached)")
        tokenizer = job.teacher.tokenizer
        corpus = generate_corpus(
            job.teacher.model, tokenizer, prompts, max_new_tokens=job.sequence_length, seed=job.train.seed
        )
        return job.family.encode(tokenizer, corpus, job.sequence_length)

    written, _ = TeacherCache(cache_root() / "teacher-text").get_or_compute(key, write)
    return written


def data_labels(job: Job, split: str) -> torch.Tensor | None:
    """The data's labels on ``split`` (None for unlabelled data)."""
    return torch.as_tensor(getattr(job.data, split).labels) if job.data.labeled else None


def class_labels(job: Job, split: str, teacher_reference: torch.Tensor | None = None) -> torch.Tensor | None:
    """What a classifier trains toward on ``split``: the data's labels, or on unlabelled data the
    teacher's top-1 (None for other families, whose labels are not class ids they output)."""
    if not job.family.classifies:
        return None
    labels = data_labels(job, split)
    if labels is None and teacher_reference is not None:
        return teacher_reference.argmax(-1)
    return labels


def train_candidate(
    job: Job,
    inputs: Inputs,
    spec: StudentSpec,
    teacher_val: torch.Tensor,
    checkpoint: Path,
    *,
    cutter: Cutter,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    say: Callable[[str], None] = lambda text: None,
) -> tuple[nn.Module, DistillResult]:
    """Cut the student ``spec`` from the teacher and distil it on the training split.

    Unlabelled data trains on the teacher's soft targets alone; a classifier is validated (early stopping,
    best epoch) against the data's labels or the teacher's top-1.
    """
    family = job.family
    student = cutter.cut(spec, seed=job.train.seed)
    train = dict(inputs["train"])
    labels = class_labels(job, "train")
    if labels is not None:
        train["labels"] = labels
    val = None
    if family.classifies:
        val = {**inputs["val"], "labels": class_labels(job, "val", teacher_val)}
    result = distill(
        job.teacher.model,
        student,
        train,
        job.losses or family.losses(has_labels="labels" in train),
        val_data=val,
        settings=job.train,
        scheme=job.scheme,
        top_k=job.top_k,
        adapter=family.adapter(student),
        teacher_adapter=family.adapter(job.teacher.model),
        checkpoint_dir=checkpoint,
        resume=job.resume,
        teacher_val_logits=teacher_val if val is not None else None,
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
            "spec": replace(spec, vocab=None).as_dict(),  # trimming comes after training: shared
            "width": job.width,
            "train": job.train.as_dict(),
            "losses": job.losses,
            "scheme": job.scheme,
            "seq_len": job.sequence_length,
            "top_k": job.top_k,
            "teacher_text": job.teacher_text,
        },
    )
    return cache_root() / "checkpoints" / key[:32]


def serve(job: Job, coordinator: Coordinator) -> None:
    """A non-main rank: join every distillation the main rank starts, until it says the job is over."""
    inputs = tokenized(job)
    cutter = make_cutter(job, inputs)
    while (message := coordinator.receive()) is not None:
        spec = StudentSpec(**message["spec"])
        val, checkpoint = message["teacher_val_logits"], message["checkpoint"]
        train_candidate(job, inputs, spec, val, checkpoint, cutter=cutter)


def make_cutter(job: Job, inputs: Inputs) -> Cutter:
    """The job's student cutter: calibration and kept vocabulary from the training split."""
    return Cutter.for_data(
        job.teacher.model,
        job.family,
        inputs["train"],
        tokenizer=job.teacher.tokenizer,
        width=job.width,
        trim_vocab=job.trim_vocab,
    )


def candidate_message(spec: StudentSpec, val_logits: torch.Tensor, checkpoint: Path) -> dict[str, Any]:
    """What the other ranks need to join a candidate's distillation."""
    return {"spec": spec.as_dict(), "teacher_val_logits": val_logits, "checkpoint": checkpoint}
