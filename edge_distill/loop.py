"""The budget loop: plan, distill, export, verify, profile, decide; resumable after an interruption.

The run is built in ``runs/.<name>.partial/`` and renamed to ``runs/<name>/`` when it ends, so a failed
run leaves nothing half-written. An interrupted one (Ctrl-C, a crash after a round finished) keeps that
folder: ``--resume runs/<name>`` continues after the last finished round, reusing the teacher cache, the
rounds' students and their bundles.

Example:
    >>> job = Job(profile=profile, budget=budget, teacher=teacher, data=data, out_dir=out)  # doctest: +SKIP
    >>> report = run_job(job)                                                               # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edge_distill.cache import TeacherCache, cache_key, cache_root
from edge_distill.cost import LatencyModel
from edge_distill.cut import Cutter
from edge_distill.data import TextDataset
from edge_distill.devices import Device
from edge_distill.distributed import Coordinator
from edge_distill.errors import EdgeDistillError, NothingFitsError
from edge_distill.families import Family, Fit, get_family
from edge_distill.planner import Candidate, Option, cost_candidates, model_cost
from edge_distill.profiles import Budget, DeviceProfile, latency_where
from edge_distill.profiling import known
from edge_distill.rundir import RunFolder
from edge_distill.search import Accuracy, Search
from edge_distill.shipping import ShipData
from edge_distill.teachers import Teacher
from edge_distill.timing import latency_fields, latency_models, time_unsaved
from edge_distill.trainer import TrainSettings
from edge_distill.training import PROMPT_WORDS, data_labels, make_cutter, serve, tokenized

StepCallback = Callable[[int, int, dict[str, float]], None]


class Reporter:
    """Where the loop tells a person what it is doing. The default says nothing."""

    def say(self, text: str) -> None:
        """One status line."""

    @contextmanager
    def steps(self, description: str, total: int) -> Iterator[StepCallback]:
        """A progress bar for ``total`` steps; yields the per-step callback."""
        yield lambda step, total, parts: None

    def progress(self, description: str, completed: int, total: int) -> None:
        """Progress of a named task (a new description starts a new bar; completed == total ends it)."""


@dataclass
class Job:
    """Everything one run needs, resolved: the CLI and the Python API both build one of these."""

    profile: DeviceProfile
    budget: Budget
    teacher: Teacher
    data: TextDataset
    out_dir: Path
    train: TrainSettings = field(default_factory=TrainSettings)
    target: str = "onnx"  # replaced by the first of ``targets`` that exports the student
    targets: tuple[str, ...] | None = None  # None: the profile's targets
    precisions: tuple[str, ...] | None = None  # None: every precision each target offers
    max_rounds: int = 6
    seq_len: int | None = None
    profile_runs: int = 100
    parity_examples: int = 64
    probe: bool = True
    losses: dict[str, Any] | None = (
        None  # loss spec (edge_distill.objective); None: alpha * kd + (1 - alpha) * ce
    )
    scheme: str = "offline"
    top_k: int = 64
    resume: bool = False  # continue an interrupted run after its last finished round and epoch
    width: str = "prune"  # narrower students keep the most important units ("slice": the first ones)
    trim_vocab: bool = True  # the space also holds students trimmed to the training data's tokens
    teacher_text: int = 0  # causal LMs: texts the teacher writes for sequence-level KD
    data_record: dict[str, Any] = field(default_factory=dict)  # how to load the data again (export)
    device: Device | None = None  # every artifact is also timed here; the loop decides on that
    command: list[str] | None = None  # the command line, kept so that `--resume RUN` alone continues it
    # a fast trial: the teacher's cost predicted, no up-front target check, only the winning target
    # ships, fewer timing runs
    quick: bool = False

    @property
    def sequence_length(self) -> int:
        return self.seq_len or self.profile.sequence_length

    @property
    def family(self) -> Family:
        return get_family(self.teacher.task)


@dataclass
class Context:
    """State shared by the rounds of one run."""

    job: Job
    work: Path
    inputs: dict[str, dict[str, torch.Tensor]]
    teacher_logits: dict[str, torch.Tensor]  # the family's reference outputs per split (classifiers: logits)
    teacher_info: dict[str, Any]
    latency: LatencyModel
    reporter: Reporter
    cache_info: dict[str, Any]
    coordinator: Coordinator
    cutter: Cutter | None = None
    references: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # the profile's targets that export the student
    latencies: dict[Option, LatencyModel] = field(default_factory=dict)
    search: Search | None = None
    students: dict[int, torch.nn.Module] = field(default_factory=dict)  # round -> its trained student
    folder: RunFolder | None = None
    last_reference: Any = None  # the reference workload's latest timing on this host (cost.HostReference)
    teacher_features: Any = None  # the teacher's counted cost (cost.Features)

    def student_of(self, index: int) -> torch.nn.Module:
        """The student round ``index`` distilled: in memory, or loaded from its folder after a resume."""
        if index not in self.students:
            from edge_distill.teachers import load_teacher

            self.students[index] = load_teacher(self.work / "rounds" / f"round-{index}" / "student").model
        return self.students[index]


def run_job(job: Job, reporter: Reporter | None = None) -> dict[str, Any] | None:
    """Run the whole job; return the report. Raises NothingFitsError (exit 3) when no student fits.

    Under ``accelerate launch`` the main rank returns the report and the other ranks None.
    """
    from edge_distill.report import build_report, write_report

    reporter = reporter or Reporter()
    coordinator = Coordinator()
    if not coordinator.is_main:  # under `accelerate launch`: join the main rank's distillations
        serve(job, coordinator)
        return None
    folder = RunFolder(job.out_dir, resume=job.resume)
    try:
        with folder.building(job.command) as work:
            ctx = prepare(job, work, reporter, coordinator)
            ctx.folder = folder
            rounds, winner = run_rounds(ctx)
            repredict_teacher(ctx)
            report = build_report(ctx, rounds, winner)
            write_report(work, report)
    finally:
        coordinator.send(None)  # the other ranks stop waiting, whatever happened here
    for path in ctx.checkpoints:  # the run is complete: its training no longer needs resuming
        shutil.rmtree(path, ignore_errors=True)
    if not report["result"]["fits"]:
        raise NothingFitsError(report["result"]["reason"])
    return report


def check_out_dir(out_dir: Path, resume: bool = False) -> None:
    """Refuse to write over a run folder that already holds something, or to resume one that is not there."""
    RunFolder(out_dir, resume=resume).check()


def options_for(job: Job) -> list[Option]:
    """Every (target, precision) the loop may try: the profile's targets (or ``job.targets``) whose
    artifacts run on this host or on the connected device, each at the precisions it offers (or those of
    ``job.precisions``). A target that cannot run here (Core ML off macOS) still ships with the winner."""
    from edge_distill.targets.base import get_target

    options, skipped = [], []
    for name in job.targets or job.profile.targets:
        target = get_target(name, profile=job.profile)
        if job.device is None and target.unverifiable_reason() is not None:
            skipped.append(f"{name} ({target.unverifiable_reason()})")
            continue
        wanted = [p for p in target.precisions if job.precisions is None or p in job.precisions]
        options += [Option(name, p) for p in sorted(wanted, key=lambda p: p != "fp32")]
    if not options:
        why = "; ".join(skipped) or f"none of them offers {', '.join(job.precisions or [])}"
        raise EdgeDistillError(
            f"No target of {job.profile.name} can be timed here: {why}; connect the device (--device) or "
            "pick targets this host runs (--target onnx, executorch or tflite)."
        )
    return options


def prepare(job: Job, work: Path, reporter: Reporter, coordinator: Coordinator | None = None) -> Context:
    """Tokenise, measure the teacher on this host, cost the candidates, then fetch teacher outputs.

    A budget that no candidate can meet is found before the teacher runs over the data.
    """
    options = options_for(job)
    job.target = options[0].target
    inputs = tokenized(job, reporter.say)
    latencies = latency_models(job, options)
    first = latencies[options[0]]
    ctx = Context(job, work, inputs, {}, {}, first, reporter, {}, coordinator or Coordinator())
    ctx.latencies = latencies
    ctx.teacher_info = measure_teacher(ctx)
    ctx.cutter = make_cutter(job, inputs)
    ctx.candidates = cost_candidates(ctx.cutter, seq_len=job.sequence_length, cache=features_cache(job))
    ctx.search = Search(ctx.candidates, options, latencies, Accuracy(ctx.teacher_info["flops"]), job.budget)
    if ctx.search.next_action() is None:
        nothing_fits_before_training(ctx)
    ctx.teacher_logits, ctx.cache_info = teacher_outputs(job, inputs, reporter)
    teacher = ctx.teacher_logits
    labels = data_labels(job, "test")
    measured = job.family.measure(teacher["test"], teacher["test"], labels, fit(ctx, teacher))
    ctx.teacher_info["metric"] = {"name": measured["name"], "split": "test", "value": measured["value"]}
    if job.teacher_text:
        ctx.cache_info["teacher_text"] = {"texts": job.teacher_text, "prompt_words": PROMPT_WORDS}
    speed = job.family.speed(job.teacher.model, job.teacher.tokenizer, prompt(job))
    if speed is not None:
        ctx.teacher_info["generation"] = speed
    reporter.say(teacher_line(ctx))
    return ctx


def features_cache(job: Job) -> Path:
    """Where the candidates' counted costs are kept between runs of the same teacher, data and length."""
    settings = {"seq_len": job.sequence_length, "width": job.width, "trim": job.trim_vocab, "features": 1}
    key = cache_key(job.teacher.fingerprint(), job.data.fingerprint(), settings)
    return cache_root() / "candidate-costs" / f"{key[:32]}.json"


def shipment(ctx: Context, trimmed: bool) -> ShipData:
    """What a round's bundle is calibrated (val) and verified (test) on."""
    import numpy as np

    from edge_distill.exporting import text_ship_data

    job = ctx.job
    labels = np.asarray(job.data.test.labels) if job.data.labeled else None
    return text_ship_data(
        job.family, ctx.inputs, labels=labels, tokenizer=job.teacher.tokenizer, seq_len=job.sequence_length,
        label_names=job.teacher.label_names, trimmed=trimmed,
    )  # fmt: skip


def prompt(job: Job) -> str:
    """The opening words of the first test text: the prompt generation speed is timed on."""
    return " ".join(job.data.test.texts[0].split()[:PROMPT_WORDS]) if len(job.data.test) else "The"


def fit(ctx: Context, outputs: dict[str, torch.Tensor]) -> Fit | None:
    """What a probe or a fitted map learns from: ``outputs`` on the train split (None when not needed)."""
    if "train" not in outputs:
        return None
    return Fit(outputs["train"], data_labels(ctx.job, "train"), ctx.teacher_logits.get("train"))


def teacher_outputs(
    job: Job, inputs: dict[str, dict[str, torch.Tensor]], reporter: Reporter
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The teacher's reference outputs (logits, embeddings, next-token NLL) on the held-out splits, and
    on train where the family's metric fits a probe: from the cache, or computed once and cached.

    The training split's soft targets (and embeddings, hidden states) are the engine's offline cache.
    """
    family = job.family
    splits = ("val", "test", "train") if family.needs_train_reference(job.data.labeled) else ("val", "test")
    settings = {"seq_len": job.sequence_length, "outputs": f"reference-{family.name}", "splits": splits}
    key = cache_key(job.teacher.fingerprint(), job.data.fingerprint(), settings)
    cache = TeacherCache(cache_root() / "teacher-outputs")

    def compute() -> dict[str, torch.Tensor]:
        reporter.say("Computing teacher outputs once (cached for every round and later runs)")
        return {name: family.reference(job.teacher.model, inputs[name]) for name in splits}

    logits, hit = cache.get_or_compute(key, compute)
    held_out = {"cache": "hit" if hit else "computed", "key": key, "path": str(cache.path(key))}
    return logits, {"held_out": held_out}


def teacher_line(ctx: Context) -> str:
    info, budget = ctx.teacher_info, ctx.job.budget
    p90 = info["latency_ms"]["p90"]
    verdict = "within budget" if p90 <= budget.latency_ms else "over budget"
    where = latency_where(info["latency_source"], info.get("device"), ctx.job.profile.name)
    if ctx.job.quick:
        where += " (not timed: --quick)"
    return (
        f"Teacher ({ctx.job.family.name}): {info['params'] / 1e6:.1f}M params, "
        f"{info['metric']['name']} {info['metric']['value']:.3f} on held-out data; "
        f"p90 {p90:.0f} ms {where} -> {verdict}"
    )


def measure_teacher(ctx: Context) -> dict[str, Any]:
    """The teacher's cost on this host and (predicted) on the device; its metric is added later."""
    job = ctx.job
    features = ctx.teacher_features = model_cost(job.teacher.model, job.sequence_length)
    if job.quick:  # a fast trial predicts the teacher's cost instead of exporting and timing it
        return predicted_teacher(ctx, features)
    timed = time_unsaved(ctx, job.teacher.model, features)
    timing = timed.device or timed.profile
    return {
        "name": job.teacher.name,
        "path": str(job.teacher.path),
        "params": features.params,
        "flops": features.flops,
        "size_mb": round(timing.size_mb, 2),
        **latency_fields(ctx, timed),
        "peak_memory_mb": known(timing.peak_memory_mb, 1),
        "load_ms": known(timing.load_ms, 1),
    }


def predicted_teacher(ctx: Context, features: Any) -> dict[str, Any]:
    """The teacher's cost as the latency model predicts it (``--quick``: not exported, not timed)."""
    from edge_distill.cost import artifact_mb

    job, predicted = ctx.job, ctx.latency.predict(features)
    return {
        "name": job.teacher.name,
        "path": str(job.teacher.path),
        "params": features.params,
        "flops": features.flops,
        "size_mb": round(artifact_mb(features.params), 2),
        "latency_ms": {"p90": round(predicted["latency_ms"], 3)},
        "latency_source": "predicted",
        "calibration": predicted["source"],
        "latency_interval_ms": predicted.get("latency_interval_ms"),
        "peak_memory_mb": round(predicted["memory_mb"], 1),
        "load_ms": None,
    }


def repredict_teacher(ctx: Context) -> None:
    """``--quick``: predict the teacher's cost again once this run has measured students, whose errors
    correct the prediction (before them it rests on stored calibration of other models alone)."""
    info = ctx.teacher_info
    if not ctx.job.quick or not ctx.latency.observed:  # otherwise the teacher was timed like a student
        return
    before = info["latency_ms"]["p90"]
    info.update(predicted_teacher(ctx, ctx.teacher_features))
    after = info["latency_ms"]["p90"]
    if abs(after - before) > 0.1 * before:
        verdict = "within budget" if after <= ctx.job.budget.latency_ms else "over budget"
        ctx.reporter.say(
            f"Teacher p90 predicted again from this run's measured students: {after:.0f} ms "
            f"(was {before:.0f} ms before any measurement) -> {verdict}"
        )


def run_rounds(ctx: Context) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Rounds until one fits every budget and the floor, nothing untried is predicted to, or
    ``max_rounds``; returns the rounds and the winner (else the best student that fits the resource
    budgets under the floor, shipped but not a win, or None)."""
    from edge_distill.exporting import check_targets
    from edge_distill.rounds import run_round, save_round

    job, search = ctx.job, ctx.search
    if not job.quick:
        ctx.targets = check_targets(ctx)
        search.options = [o for o in search.options if o.target in ctx.targets]
    else:  # --quick: a target that cannot export the student fails its probe or round instead
        ctx.targets = list(dict.fromkeys(o.target for o in search.options))
    rounds = resume_rounds(ctx)
    winner = next((r for r in rounds if r["fits"]), None)
    while winner is None and len(rounds) < job.max_rounds:
        action = choose(ctx)
        if action is None:
            break
        record = run_round(ctx, action, index=len(rounds) + 1)
        save_round(ctx, record)
        remember(ctx, action.candidate, record)
        rounds.append(record)
        winner = record if record["fits"] else None
    if not rounds:
        nothing_fits_before_training(ctx)
    return rounds, winner


def remember(ctx: Context, candidate: Candidate, record: dict[str, Any]) -> None:
    """What a finished round teaches the search: its measured cost, accuracy and misses."""
    from edge_distill.planner import Option

    option = Option(record["target"], record["precision"])
    ctx.search.tried.add(candidate.spec, option, record, candidate)
    if record.get("metric") and record.get("error") is None:
        ctx.search.accuracy.observe(candidate, option.precision, record["retention"])


def resume_rounds(ctx: Context) -> list[dict[str, Any]]:
    """The finished rounds of the interrupted run this one resumes (none for a fresh run), replayed into
    the search and the latency models."""
    from edge_distill.planner import Option
    from edge_distill.rounds import load_rounds, measurement_of
    from edge_distill.students import StudentSpec

    resume_probes(ctx)
    rounds = load_rounds(ctx.work)
    by_spec = {c.spec: c for c in ctx.candidates}
    for record in rounds:
        spec = StudentSpec(
            **{k: record["student"].get(k) for k in ("layers", "hidden", "heads", "intermediate", "vocab")}
        )
        candidate = by_spec.get(spec)
        if candidate is None:
            raise EdgeDistillError(
                f"Run {ctx.job.out_dir} was started with other settings (its round {record['round']} student "
                f"{spec.label} is not a candidate now); resume it with the same command, or start a new run."
            )
        measurement = measurement_of(record)
        if measurement is not None:
            ctx.latencies[Option(record["target"], record["precision"])].observe(measurement)
        remember(ctx, candidate, record)
        ctx.reporter.say(f"Round {record['round']} was finished before the interruption: kept")
    return rounds


def choose(ctx: Context) -> Any:
    """The next action, a new student confirmed first by timing an untrained copy at its target and
    precision: cost does not depend on the weights, so a candidate that then misses costs no training."""
    while True:
        action = ctx.search.next_action()
        if action is None or action.kind == "lower-precision" or not ctx.job.probe:
            return action
        candidate, option = action.candidate, action.option
        if ctx.latencies[option].exact(candidate.flops, candidate.params) is not None:
            return action
        probe(ctx, candidate, option)


def probe(ctx: Context, candidate: Candidate, option: Option) -> None:
    """Export an untrained copy of ``candidate`` at ``option`` and time it (also proves it exports)."""
    from edge_distill.errors import ExportError

    latency = ctx.latencies[option]
    try:
        timed = time_unsaved(
            ctx, ctx.cutter.untrained(candidate.spec), candidate.cost_at(option.precision), option
        )
    except ExportError as error:  # this option cannot take the shape: not tried again
        ctx.reporter.say(f"Probe {candidate.spec.label} as {option.label}: {error}")
        ctx.search.tried.ceilings.setdefault(option, {})["params"] = 0
        return
    timing, fields = timed.device or timed.profile, latency_fields(ctx, timed, latency)
    forecast = ctx.search.forecast(candidate, option)
    fits = ctx.search.fits(forecast)
    ctx.probes.append(
        {
            "student": {**candidate.spec.as_dict(), "params": candidate.params, "flops": candidate.flops},
            "target": option.target,
            "precision": option.precision,
            "latency_ms": fields["latency_ms"],
            "latency_source": fields["latency_source"],
            "peak_memory_mb": known(timing.peak_memory_mb, 1),
            "size_mb": round(timing.size_mb, 2),
            "fits": fits,
        }
    )
    save_probes(ctx, timed.measurement)
    verdict = "fits" if fits else "misses, skipped without training"
    ctx.reporter.say(
        f"Probe {candidate.spec.label} as {option.label} (untrained): "
        f"p90 {fields['latency_ms']['p90']:.1f} ms "
        f"{fields['latency_source']}, {timing.size_mb:.1f} MB -> {verdict}"
    )


PROBES_FILE = "probes.json"  # in the run folder: the probes so far and their measurements, for --resume


def save_probes(ctx: Context, measurement: Any) -> None:
    from edge_distill.atomic import write_json_atomic

    ctx.probes[-1]["_measurement"] = measurement.__dict__
    write_json_atomic(ctx.work / PROBES_FILE, ctx.probes)


def resume_probes(ctx: Context) -> None:
    """The probes an interrupted run already timed: kept, and their measurements replayed."""
    import json

    from edge_distill.cost import Measurement

    path = ctx.work / PROBES_FILE
    if not path.is_file():
        return
    ctx.probes = json.loads(path.read_text())
    for entry in ctx.probes:
        if entry.get("_measurement"):
            option = Option(entry["target"], entry["precision"])
            ctx.latencies[option].observe(Measurement(**entry["_measurement"]))


def nothing_fits_before_training(ctx: Context) -> None:
    """No candidate is predicted to fit: say which budget the closest one misses, and by how much."""
    best, option, missed = ctx.search.closest_miss()
    reason = "; ".join(m.sentence for m in missed)
    raise NothingFitsError(
        f"No student of this teacher can fit {ctx.job.profile.name}: even the closest, "
        f"{best.spec.label} ({best.params / 1e6:.2f}M params) as {option.label}, is predicted to miss "
        f"({reason}); raise the budget (--latency-ms, --memory-mb, --size-mb) or pick a larger device "
        "profile."
    )
