"""The Python API behind the command line: resolve the inputs into a Job, then run it.

Example:
    >>> from edge_distill.api import fit_to_device
    >>> report = fit_to_device(profile="raspberry-pi")        # the built-in demo  # doctest: +SKIP
    >>> report["result"]["fits"]                                                    # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_distill.atomic import check_writable
from edge_distill.data import TextDataset, load_demo_data, load_text_file
from edge_distill.demo_teacher import build_demo_teacher
from edge_distill.devices import Device, open_device
from edge_distill.errors import DataError, EdgeDistillError, TeacherError
from edge_distill.families import get_family
from edge_distill.loop import Job, Reporter, check_out_dir, run_job
from edge_distill.objective import check_spec
from edge_distill.profiles import Budget, DeviceProfile, load_profile, resolve_budget
from edge_distill.teachers import Teacher, load_teacher
from edge_distill.trainer import TrainSettings


def load_inputs(
    *,
    teacher: str | None,
    data: str | None,
    text_column: str = "text",
    label_column: str | None = None,
    task: str | None = None,
    seq_len: int = 128,
    max_per_class: int | None = None,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> tuple[Teacher, TextDataset]:
    """The teacher and data: the built-in demo when neither is given, else the user's pair.

    ``label_column`` None reads the column ``label`` when the file has one; a named column must exist.
    A causal LM's data needs no labels (the next tokens are its labels).
    """
    reporter = reporter or Reporter()
    if teacher is None and data is None:
        dataset = load_demo_data(max_per_class=max_per_class, seed=seed)
        reporter.say(
            "No teacher given: built-in demo (all-MiniLM-L6-v2 + topic head, BBC News, "
            f"{len(dataset.label_names)} classes)"
        )
        built = build_demo_teacher(dataset, seq_len=seq_len, progress=reporter.progress)
        return built, dataset
    if teacher is None:
        raise TeacherError("--data was given without a teacher; pass --teacher PATH_OR_HUB_ID as well.")
    if data is None:
        raise DataError("--teacher was given without data; pass --data FILE (CSV, JSONL or Parquet) as well.")
    loaded = load_teacher(teacher, task=task)
    family = get_family(loaded.task)
    if not family.cli:
        raise TeacherError(
            f"Teacher {teacher} is an {family.name} model, and the command line reads text data; distil it "
            "through the Python API (edge_distill.distill with pixel tensors; see examples/)."
        )
    column = None if family.name == "causal-lm" else (label_column or "label")
    dataset = load_text_file(
        data,
        text_column=text_column,
        label_column=column,
        labels_required=label_column is not None,
        seed=seed,
        label_names=loaded.label_names or None,
    )
    if not dataset.labeled and family.classifies:
        reporter.say(f"No {column!r} column in {data}: the teacher's predictions are the labels")
    return loaded, dataset


def default_out_dir(profile: DeviceProfile) -> Path:
    return Path("runs") / f"{profile.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def resolve_device(
    profile: str | Path,
    *,
    budget: Mapping[str, float | None] | None = None,
    config: Mapping[str, float] | None = None,
    config_source: str = "config file",
) -> tuple[DeviceProfile, Budget]:
    """The profile and its budget, by precedence: command line > config file > profile default."""
    device = load_profile(profile)
    overrides = {k: v for k, v in (budget or {}).items() if v is not None}
    return device, resolve_budget(device, **overrides, config=config, config_source=config_source)


def make_job(
    *,
    profile: DeviceProfile,
    budget: Budget,
    teacher: str | None = None,
    data: str | None = None,
    train: TrainSettings | None = None,
    out_dir: Path | None = None,
    text_column: str = "text",
    label_column: str | None = None,
    task: str | None = None,
    width: str = "prune",
    trim_vocab: bool = True,
    teacher_text: int = 0,
    seq_len: int | None = None,
    max_rounds: int = 6,
    max_per_class: int | None = None,
    probe: bool = True,
    losses: Mapping[str, Any] | None = None,
    scheme: str = "offline",
    top_k: int = 64,
    resume: bool = False,
    device: str | Device | None = None,
    targets: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    quick: bool = False,
    command: list[str] | None = None,
    reporter: Reporter | None = None,
) -> Job:
    """Load the teacher and data (the demo when neither is given) into a Job for ``profile``.

    ``device`` (``ssh://user@host``, ``adb://SERIAL`` or a Device): every round is also timed there, and
    the loop decides on that measurement. ``targets``/``precisions`` narrow what the loop may ship (default:
    the profile's targets at every precision each offers); ``quick`` ships only the winning target and
    times with fewer runs; ``resume`` continues an interrupted run in ``out_dir``.
    """
    out_dir = out_dir or default_out_dir(profile)
    connected = open_device(device) if isinstance(device, str) else device
    check_out_dir(out_dir, resume)  # before minutes of loading, not after
    check_writable(out_dir)  # a read-only or missing disk fails now too
    check_choices(targets, precisions)
    if teacher_text < 0:
        raise EdgeDistillError(f"--teacher-text must be 0 or more, got {teacher_text}; fix the value.")
    if width not in ("prune", "slice"):
        raise EdgeDistillError(f"--width must be 'prune' or 'slice', not {width!r}; pick one.")
    if scheme not in ("offline", "online"):
        raise EdgeDistillError(f"The main job runs scheme 'offline' or 'online', not {scheme!r}; pick one.")
    if losses:
        check_spec(losses)
    if top_k < 1:
        raise EdgeDistillError(f"--top-k must be at least 1, got {top_k}; fix the value and run again.")
    length = seq_len or profile.sequence_length
    train = train or TrainSettings()
    loaded, dataset = load_inputs(
        teacher=teacher,
        data=data,
        text_column=text_column,
        label_column=label_column,
        task=task,
        seq_len=length,
        max_per_class=max_per_class,
        seed=train.seed,
        reporter=reporter,
    )
    if teacher_text and loaded.task != "causal-lm":
        raise EdgeDistillError(
            f"--teacher-text asks a causal LM to write training text, and this teacher is a {loaded.task} "
            "model; drop --teacher-text."
        )
    return Job(
        profile=profile,
        budget=budget,
        teacher=loaded,
        data=dataset,
        out_dir=out_dir,
        train=train,
        max_rounds=max_rounds,
        probe=probe,
        seq_len=length,
        losses=dict(losses) if losses else None,
        scheme=scheme,
        top_k=top_k,
        resume=resume,
        targets=tuple(targets) if targets else None,
        precisions=tuple(precisions) if precisions else None,
        quick=quick,
        profile_runs=20 if quick else 100,
        command=command,
        width=width,
        trim_vocab=trim_vocab,
        teacher_text=teacher_text,
        device=connected,
        data_record={
            "source": data or "demo",
            "text_column": text_column,
            "label_column": label_column,
            "max_per_class": max_per_class,
            "seed": train.seed,
        },
    )


def check_choices(targets: Sequence[str] | None, precisions: Sequence[str] | None) -> None:
    """Unknown target or precision names fail now, in one sentence, before anything loads."""
    from edge_distill.targets.base import TARGETS, get_target

    for name in targets or ():
        get_target(name)  # an unknown name names the closest known one
    known = {p for name in TARGETS.names() for p in get_target(name).precisions}
    for precision in precisions or ():
        if precision not in known:
            raise EdgeDistillError(f"Unknown precision {precision!r}; use one of {', '.join(sorted(known))}.")


def fit_to_device(
    profile: str | Path,
    *,
    budget: Mapping[str, float | None] | None = None,
    reporter: Reporter | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Distil a student that fits ``profile`` (other keywords as ``make_job``); returns the report."""
    device, resolved = resolve_device(profile, budget=budget)
    return run_job(make_job(profile=device, budget=resolved, reporter=reporter, **options), reporter)
