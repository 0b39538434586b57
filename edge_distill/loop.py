"""The budget loop: plan, distill, export, verify, profile, decide.

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

from edge_distill.atomic import atomic_dir
from edge_distill.cache import TeacherCache, cache_key, cache_root
from edge_distill.cost import LatencyModel
from edge_distill.cut import Cutter, export_module
from edge_distill.data import TextDataset
from edge_distill.devices import Device
from edge_distill.distributed import Coordinator
from edge_distill.errors import EdgeDistillError, NothingFitsError
from edge_distill.exporting import check_targets
from edge_distill.families import Family, Fit, get_family
from edge_distill.planner import Candidate, closest_miss, cost_candidates, misses, model_cost, pick, predict
from edge_distill.profiles import Budget, DeviceProfile
from edge_distill.profiling import known
from edge_distill.report import build_report, write_report
from edge_distill.targets.base import check_parity, get_target
from edge_distill.teachers import Teacher
from edge_distill.timing import (
    Timed,
    batch_one,
    latency_fields,
    latency_model,
    model_inputs,
    rounded,
    time_on_host,
    time_unsaved,
)
from edge_distill.trainer import TrainSettings
from edge_distill.training import (
    PROMPT_WORDS,
    candidate_message,
    checkpoint_dir,
    data_labels,
    make_cutter,
    serve,
    tokenized,
    train_candidate,
)

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
    target: str = "onnx"
    max_rounds: int = 4
    seq_len: int | None = None
    profile_runs: int = 100
    parity_examples: int = 64
    probe: bool = True
    losses: dict[str, Any] | None = (
        None  # loss spec (edge_distill.objective); None: alpha * kd + (1 - alpha) * ce
    )
    scheme: str = "offline"
    top_k: int = 64
    resume: bool = False  # continue interrupted training from its last epoch checkpoint
    width: str = "prune"  # narrower students keep the most important units ("slice": the first ones)
    trim_vocab: bool = True  # the space also holds students trimmed to the training data's tokens
    teacher_text: int = 0  # causal LMs: texts the teacher writes for sequence-level KD
    data_record: dict[str, Any] = field(default_factory=dict)  # how to load the data again (export)
    device: Device | None = None  # every artifact is also timed here; the loop decides on that

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


def run_job(job: Job, reporter: Reporter | None = None) -> dict[str, Any] | None:
    """Run the whole job; return the report. Raises NothingFitsError (exit 3) when no student fits.

    Under ``accelerate launch`` the main rank returns the report and the other ranks None.

    Everything is written into a temporary folder renamed to ``job.out_dir`` at the end, so a failed run
    leaves nothing half-written; a run where nothing fits still leaves its report.
    """
    reporter = reporter or Reporter()
    coordinator = Coordinator()
    if not coordinator.is_main:  # under `accelerate launch`: join the main rank's distillations
        serve(job, coordinator)
        return None
    check_out_dir(job.out_dir)
    try:
        with atomic_dir(job.out_dir) as work:
            ctx = prepare(job, work, reporter, coordinator)
            rounds, winner = run_rounds(ctx)
            report = build_report(ctx, rounds, winner)
            write_report(work, report)
    finally:
        coordinator.send(None)  # the other ranks stop waiting, whatever happened here
    for path in ctx.checkpoints:  # the run is complete: its training no longer needs resuming
        shutil.rmtree(path, ignore_errors=True)
    if not report["result"]["fits"]:
        raise NothingFitsError(report["result"]["reason"])
    return report


def check_out_dir(out_dir: Path) -> None:
    """Refuse to write over a run folder that already holds something."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise EdgeDistillError(f"Run folder {out_dir} already exists; pass another --out or remove it.")


def prepare(job: Job, work: Path, reporter: Reporter, coordinator: Coordinator | None = None) -> Context:
    """Tokenise, measure the teacher on this host, cost the candidates, then fetch teacher outputs.

    A budget that no candidate can meet is found before the teacher runs over the data.
    """
    seq_len = job.sequence_length
    inputs = tokenized(job, reporter.say)
    latency = latency_model(job)
    ctx = Context(job, work, inputs, {}, {}, latency, reporter, {}, coordinator or Coordinator())
    ctx.teacher_info = measure_teacher(ctx)
    ctx.cutter = make_cutter(job, inputs)
    ctx.candidates = cost_candidates(ctx.cutter, seq_len=seq_len)
    if pick(ctx.candidates, job.budget, latency, ceilings={}) is None:
        nothing_fits_before_training(ctx, ctx.candidates)
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
    where = {
        "measured-host": "measured on this host",
        "measured-device": f"measured on {info.get('device')}",
    }.get(info["latency_source"], f"predicted on {ctx.job.profile.name}")
    return (
        f"Teacher ({ctx.job.family.name}): {info['params'] / 1e6:.1f}M params, "
        f"{info['metric']['name']} {info['metric']['value']:.3f} on held-out data; "
        f"p90 {p90:.0f} ms {where} -> {verdict}"
    )


def measure_teacher(ctx: Context) -> dict[str, Any]:
    """The teacher's cost on this host and (predicted) on the device; its metric is added later."""
    job = ctx.job
    features = model_cost(job.teacher.model, job.sequence_length)
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


def run_rounds(ctx: Context) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Train and measure candidates, largest predicted to fit first, until one fits or none is left."""
    job, candidates = ctx.job, ctx.candidates
    rounds: list[dict[str, Any]] = []
    ceilings: dict[str, float] = {}
    ctx.targets = check_targets(ctx)
    while len(rounds) < job.max_rounds:
        candidate = choose(ctx, candidates, ceilings)
        if candidate is None:
            break
        record = run_round(ctx, candidate, index=len(rounds) + 1)
        rounds.append(record)
        if record["fits"]:
            return rounds, record
        lower_ceilings(ceilings, candidate, record)
    if not rounds:
        nothing_fits_before_training(ctx, candidates)
    return rounds, None


def choose(ctx: Context, candidates: list[Candidate], ceilings: dict[str, float]) -> Candidate | None:
    """The largest candidate predicted to fit, confirmed by timing an untrained copy before training.

    Latency, memory and size do not depend on the weights, so an untrained export measured on this host
    tells what the trained student will cost; a candidate that then misses is skipped without training.
    """
    while True:
        candidate = pick(candidates, ctx.job.budget, ctx.latency, ceilings=ceilings)
        if candidate is None or not ctx.job.probe or ctx.latency.exact(candidate.flops, candidate.params):
            return candidate
        probe(ctx, candidate)


def probe(ctx: Context, candidate: Candidate) -> None:
    """Export an untrained copy of ``candidate`` and time it on this host (also proves it exports)."""
    job = ctx.job
    timed = time_unsaved(ctx, ctx.cutter.untrained(candidate.spec), candidate.cost)
    timing, fields = timed.device or timed.profile, latency_fields(ctx, timed)
    fits = not misses(predict(candidate, ctx.latency), job.budget)
    ctx.probes.append(
        {
            "student": {**candidate.spec.as_dict(), "params": candidate.params, "flops": candidate.flops},
            "latency_ms": fields["latency_ms"],
            "latency_source": fields["latency_source"],
            "peak_memory_mb": known(timing.peak_memory_mb, 1),
            "size_mb": round(timing.size_mb, 2),
            "fits": fits,
        }
    )
    verdict = "fits" if fits else "misses, skipped without training"
    ctx.reporter.say(
        f"Probe {candidate.spec.label} (untrained): p90 {fields['latency_ms']['p90']:.1f} ms "
        f"{fields['latency_source']}, {timing.size_mb:.1f} MB -> {verdict}"
    )


def lower_ceilings(ceilings: dict[str, float], candidate: Candidate, record: dict[str, Any]) -> None:
    """After a miss, only strictly cheaper students on the missed axis remain worth trying."""
    missed = {m["budget"] for m in record["misses"]}
    if "latency_ms" in missed:
        ceilings["flops"] = min(ceilings.get("flops", float("inf")), candidate.flops)
    if missed & {"size_mb", "memory_mb"}:
        ceilings["params"] = min(ceilings.get("params", float("inf")), candidate.params)


def nothing_fits_before_training(ctx: Context, candidates: list[Candidate]) -> None:
    """No candidate is predicted to fit: say which budget the closest one misses, and by how much."""
    best, missed = closest_miss(candidates, ctx.job.budget, ctx.latency)
    reason = "; ".join(m.sentence for m in missed)
    raise NothingFitsError(
        f"No student of this teacher can fit {ctx.job.profile.name}: even the closest, "
        f"{best.spec.label} ({best.params / 1e6:.1f}M params), is predicted to miss ({reason}); "
        "raise the budget (--latency-ms, --memory-mb, --size-mb) or pick a larger device profile."
    )


def run_round(ctx: Context, candidate: Candidate, *, index: int) -> dict[str, Any]:
    """Distill one candidate, export it, verify parity, profile it, and judge it against the budget."""
    job, reporter, spec = ctx.job, ctx.reporter, candidate.spec
    predicted = predict(candidate, ctx.latency)
    reporter.say(
        f"Round {index}: student {spec.label} ({candidate.params / 1e6:.1f}M params), "
        f"predicted p90 {predicted['latency_ms']:.1f} ms"
    )
    rows = len(ctx.inputs["train"]["input_ids"])
    total = job.train.epochs * -(-rows // (job.train.batch_size * job.train.grad_accum))
    checkpoint = checkpoint_dir(job, spec)
    ctx.checkpoints.append(checkpoint)
    ctx.coordinator.send(candidate_message(spec, ctx.teacher_logits["val"], checkpoint))
    with reporter.steps(f"distilling {spec.label}", total) as on_step:
        student, result = train_candidate(
            job, ctx.inputs, spec, ctx.teacher_logits["val"], checkpoint,
            cutter=ctx.cutter, on_step=on_step, say=reporter.say,
        )  # fmt: skip
    ctx.cache_info["train"] = {"scheme": result.scheme, **result.cache}
    if result.train.resumed_from_epoch is not None:
        reporter.say(f"  resumed training from epoch {result.train.resumed_from_epoch} of {job.train.epochs}")
    measured = measure_student(ctx, student)
    student = ctx.cutter.finish(student, spec)  # vocabulary trimmed after training, when spec says so
    out = ctx.work / "artifacts" / f"round-{index}-{job.target}"
    wrapped = export_module(job.family, student)
    artifact = get_target(job.target).export(wrapped, batch_one(ctx), out)
    held_out = {k: v[: job.parity_examples] for k, v in model_inputs(ctx.inputs["test"]).items()}
    parity = check_parity(get_target(job.target), artifact, wrapped, held_out)
    reporter.say(f"  exported {job.target}, parity ok (max abs diff {parity.max_abs_diff:.2e})")
    timed = time_on_host(ctx, artifact, candidate.cost)
    record = round_record(ctx, candidate, index, predicted, result.train, measured, timed)
    record["val"] = {k: v for k, v in result.metrics.items()}
    record.update(parity=parity.as_dict(), artifact=str(artifact.relative_to(ctx.work)))
    record["_student"] = student  # kept in memory only, for saving the winner
    verdict = "fits" if record["fits"] else "misses: " + "; ".join(record["miss_sentences"])
    retention = f" (retention {record['retention']:.1%})" if record["retention"] is not None else ""
    reporter.say(
        f"  {record['metric']['name']} {record['metric']['value']:.3f}{retention}, "
        f"p90 {record['latency_ms']['p90']:.1f} ms {record['latency_source']}, "
        f"{memory_text(record['peak_memory_mb'])}, {record['size_mb']:.1f} MB -> {verdict}"
    )
    return record


def memory_text(peak_mb: float | None) -> str:
    return f"{peak_mb:.0f} MB peak" if peak_mb is not None else "peak memory not reported"


def measure_student(ctx: Context, student: torch.nn.Module) -> dict[str, Any]:
    """The trained student's metric on the test split (and its agreement with the teacher's outputs)."""
    family, teacher = ctx.job.family, ctx.teacher_logits
    outputs = {"test": family.reference(student, ctx.inputs["test"])}
    if "train" in teacher:  # a probe or fitted map learns from the student's own train outputs
        outputs["train"] = family.reference(student, ctx.inputs["train"])
    labels = data_labels(ctx.job, "test")
    measured = family.measure(outputs["test"], teacher["test"], labels, fit(ctx, outputs))
    speed = family.speed(student, ctx.job.teacher.tokenizer, prompt(ctx.job))
    return {"split": "test", **measured, **({"generation": speed} if speed else {})}


def round_record(
    ctx: Context,
    candidate: Candidate,
    index: int,
    predicted: dict[str, float],
    trained: Any,
    measured: dict[str, Any],
    timed: Timed,
) -> dict[str, Any]:
    """The round as report.json states it."""
    timing, fields = timed.device or timed.profile, latency_fields(ctx, timed)
    costs = {
        "latency_ms": fields["latency_ms"]["p90"],
        "memory_mb": timing.peak_memory_mb,
        "size_mb": timing.size_mb,
    }
    missed = misses(costs, ctx.job.budget)
    metric = {k: v for k, v in measured.items() if k not in ("agreement", "generation")}
    return {
        "round": index,
        "student": {**candidate.spec.as_dict(), "params": candidate.params, "flops": candidate.flops},
        "predicted": rounded(predicted),
        "target": ctx.job.target,
        "precision": "fp32",
        "size_mb": round(timing.size_mb, 2),
        **fields,
        "peak_memory_mb": known(timing.peak_memory_mb, 1),
        "memory_source": "measured-device" if timed.device else "measured-host",
        "load_ms": known(timing.load_ms, 1),
        "metric": metric,
        "retention": ctx.job.family.retention(metric["value"], ctx.teacher_info["metric"]["value"]),
        "agreement": measured["agreement"],
        **({"generation": measured["generation"]} if "generation" in measured else {}),
        "train": trained.as_dict(),
        "fits": not missed,
        "misses": [m.as_dict() for m in missed],
        "miss_sentences": [m.sentence for m in missed],
    }
