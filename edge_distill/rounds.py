"""One round of the budget loop: distil a student (or take one already distilled), ship it as a verified
bundle at the round's target and precision, time it, and judge it against every budget and floor.

Every round keeps its student (``rounds/round-N/student/``, Hugging Face format) and its bundle
(``rounds/round-N/<target>-<precision>/``), and writes ``rounds/round-N/round.json`` last: a round with
that file is finished, and ``--resume`` continues after it.

Example:
    >>> record = run_round(ctx, action, index=1)  # doctest: +SKIP
    >>> record["fits"], record["target"], record["precision"]  # doctest: +SKIP
    (True, 'onnx', 'int8')
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edge_distill.atomic import write_json_atomic
from edge_distill.cost import Measurement
from edge_distill.cut import export_module
from edge_distill.errors import EdgeDistillError
from edge_distill.planner import Candidate, misses
from edge_distill.profiling import known
from edge_distill.search import Action, budget_used
from edge_distill.shipping import ship
from edge_distill.timing import Timed, latency_fields, rounded, time_on_host
from edge_distill.training import candidate_message, checkpoint_dir, data_labels, train_candidate

if TYPE_CHECKING:
    from edge_distill.loop import Context

# Backends that run a delegated subgraph on an accelerator (NPU, GPU, DSP), not the CPU.
ACCELERATOR_BACKENDS = ("CoreMLBackend", "QnnBackend", "MPSBackend", "VulkanBackend", "NeuronBackend")


def round_dir(ctx: Context, index: int) -> Path:
    return ctx.work / "rounds" / f"round-{index}"


def run_round(ctx: Context, action: Action, *, index: int) -> dict[str, Any]:
    """Run ``action`` as round ``index``; a target that cannot export or verify it ends the round as a miss
    with that sentence (the loop goes on with other options)."""
    from edge_distill.loop import shipment

    reporter, candidate, option = ctx.reporter, action.candidate, action.option
    reporter.say(
        f"Round {index} ({action.kind}): student {candidate.spec.label} "
        f"({candidate.params / 1e6:.1f}M params) "
        f"as {option.label}, predicted p90 {action.predicted['latency_ms']:.1f} ms -- {action.why}"
    )
    if action.kind == "lower-precision":  # the student of an earlier round, as it measured in PyTorch
        student, trained = ctx.student_of(action.from_round), None
        measured = ctx.search.tried.rounds[action.from_round - 1]["pytorch_metric"]
    else:
        student, measured, trained = distill_round(ctx, candidate, index)
    base = {"round": index, "action": action.kind, "why": action.why, "from_round": action.from_round}
    base["student_dir"] = f"rounds/round-{action.from_round or index}/student"
    try:
        meta = ship(
            export_module(ctx.job.family, student), option.target, option.precision, round_dir(ctx, index),
            shipment(ctx, candidate.spec.vocab is not None), profile=ctx.job.profile,
        )  # fmt: skip
    except EdgeDistillError as error:
        reporter.say(f"  {option.label}: {error}")
        return failed_record(ctx, action, base, measured, trained, str(error))
    artifact = round_dir(ctx, index) / f"{meta['target']}-{meta['precision']}" / meta["file"]
    timed = time_on_host(ctx, artifact, candidate.cost_at(option.precision), ctx.latencies[option])
    record = round_record(ctx, action, base, measured, trained, meta, timed)
    record["artifact"] = str(artifact.relative_to(ctx.work))
    record["_measurement"] = timed.measurement.__dict__
    say_result(ctx, record)
    return record


def distill_round(ctx: Context, candidate: Candidate, index: int) -> tuple[torch.nn.Module, dict, Any]:
    """Train the candidate, measure it in PyTorch, trim it, and keep it in ``rounds/round-N/student``."""
    job, reporter, spec = ctx.job, ctx.reporter, candidate.spec
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
    measured["val"] = dict(result.metrics)
    student = ctx.cutter.finish(student, spec)  # vocabulary trimmed after training, when spec says so
    save_round_student(ctx, student, round_dir(ctx, index) / "student")
    ctx.students[index] = student
    return student, measured, result.train


def save_round_student(ctx: Context, student: torch.nn.Module, folder: Path) -> None:
    from edge_distill.report import save_pretrained_student

    save_pretrained_student(folder, student, ctx.job)


def measure_student(ctx: Context, student: torch.nn.Module) -> dict[str, Any]:
    """The trained student's metric on the test split (and its agreement with the teacher's outputs)."""
    from edge_distill.loop import fit, prompt

    family, teacher = ctx.job.family, ctx.teacher_logits
    outputs = {"test": family.reference(student, ctx.inputs["test"])}
    if "train" in teacher:  # a probe or fitted map learns from the student's own train outputs
        outputs["train"] = family.reference(student, ctx.inputs["train"])
    labels = data_labels(ctx.job, "test")
    measured = family.measure(outputs["test"], teacher["test"], labels, fit(ctx, outputs))
    speed = family.speed(student, ctx.job.teacher.tokenizer, prompt(ctx.job))
    return {"split": "test", **measured, **({"generation": speed} if speed else {})}


def artifact_metric(measured: dict[str, Any], verification: dict[str, Any]) -> dict[str, Any]:
    """The round's metric: computed on the artifact's own outputs where its verification computed the
    task metric (a quantized classifier), else the PyTorch student's."""
    metric = {k: v for k, v in measured.items() if k not in ("agreement", "generation", "val")}
    value = verification.get("metric_artifact")
    if value is not None and verification.get("metric") == metric["name"]:
        return {**metric, "value": value, "source": f"artifact ({verification['n']} test rows)"}
    return {**metric, "source": "PyTorch student"}


def accelerator_share(inspect: dict[str, Any]) -> float | None:
    """Share of the graph's ops delegated to an accelerator backend, where the export reports delegation
    to one (ExecuTorch with Core ML); None where the target does not say, or runs on the CPU only."""
    delegated = inspect.get("delegated")
    if not isinstance(delegated, dict) or not set(delegated) & set(ACCELERATOR_BACKENDS):
        return None
    counts = {name: sum(b.get("ops", {}).values()) for name, b in delegated.items()}
    total = sum(counts.values()) + sum(inspect.get("portable", {}).values())
    accelerated = sum(n for name, n in counts.items() if name in ACCELERATOR_BACKENDS)
    return round(accelerated / total, 4) if total else None


def round_record(
    ctx: Context,
    action: Action,
    base: dict[str, Any],
    measured: dict[str, Any],
    trained: Any,
    meta: dict[str, Any],
    timed: Timed,
) -> dict[str, Any]:
    """The round as report.json states it."""
    job, option = ctx.job, action.option
    timing, fields = timed.device or timed.profile, latency_fields(ctx, timed, ctx.latencies[option])
    metric = artifact_metric(measured, meta["verification"])
    retention = job.family.retention(metric["value"], ctx.teacher_info["metric"]["value"])
    share = accelerator_share(meta.get("inspect", {}))
    costs = {"latency_ms": fields["latency_ms"]["p90"], "memory_mb": timing.peak_memory_mb}
    costs |= {"size_mb": timing.size_mb, "retention": retention, "accelerator_share": share}
    missed = misses(costs, job.budget)
    verification = meta["verification"]
    return {
        **base,
        **student_fields(action.candidate),
        "predicted": rounded(action.predicted),
        "target": option.target,
        "precision": option.precision,
        "size_mb": round(timing.size_mb, 2),
        **fields,
        "peak_memory_mb": known(timing.peak_memory_mb, 1),
        "memory_source": "measured-device" if timed.device else "measured-host",
        "load_ms": known(timing.load_ms, 1),
        "metric": metric,
        "pytorch_metric": measured,
        "retention": retention,
        "meets_floor": retention is None or retention >= job.budget.min_retention,
        "accelerator_share": share,
        "agreement": measured.get("agreement"),
        **({"generation": measured["generation"]} if "generation" in measured else {}),
        "val": measured.get("val"),
        "train": trained.as_dict() if trained is not None else None,
        "verification": {
            k: verification.get(k) for k in ("status", "reason", "max_abs_diff", "top1_agreement")
        },
        "budget_used": round(budget_used(costs, job.budget), 4),
        "fits_budget": not [m for m in missed if not m.floor],
        "fits": not missed,
        "misses": [m.as_dict() for m in missed],
        "miss_sentences": [m.sentence for m in missed],
    }


def student_fields(candidate: Candidate) -> dict[str, Any]:
    return {"student": {**candidate.spec.as_dict(), "params": candidate.params, "flops": candidate.flops}}


def failed_record(
    ctx: Context, action: Action, base: dict[str, Any], measured: dict[str, Any], trained: Any, error: str
) -> dict[str, Any]:
    """A round whose export or verification failed: not measured, not fitting, with the sentence."""
    metric = {k: v for k, v in measured.items() if k not in ("agreement", "generation", "val")}
    retention = ctx.job.family.retention(metric["value"], ctx.teacher_info["metric"]["value"])
    return {
        **base,
        **student_fields(action.candidate),
        "predicted": rounded(action.predicted),
        "target": action.option.target,
        "precision": action.option.precision,
        "error": error,
        "metric": {**metric, "source": "PyTorch student"},
        "pytorch_metric": measured,
        "retention": retention,
        "meets_floor": None,
        "accelerator_share": None,
        "latency_ms": None,
        "latency_source": None,
        "size_mb": None,
        "peak_memory_mb": None,
        "train": trained.as_dict() if trained is not None else None,
        "fits_budget": False,
        "fits": False,
        "misses": [],
        "miss_sentences": [f"not shipped: {error}"],
        "artifact": None,
    }


def say_result(ctx: Context, record: dict[str, Any]) -> None:
    memory = record["peak_memory_mb"]
    memory_text = f"{memory:.0f} MB peak" if memory is not None else "peak memory not reported"
    retention = f" (retention {record['retention']:.1%})" if record["retention"] is not None else ""
    verdict = "fits" if record["fits"] else "misses: " + "; ".join(record["miss_sentences"])
    ctx.reporter.say(
        f"  {record['metric']['name']} {record['metric']['value']:.3f}{retention}, "
        f"p90 {record['latency_ms']['p90']:.1f} ms {record['latency_source']}, {memory_text}, "
        f"{record['size_mb']:.1f} MB -> {verdict}"
    )


def save_round(ctx: Context, record: dict[str, Any]) -> None:
    """Write the finished round's record last: ``--resume`` continues after every round that has one."""
    plain = {k: v for k, v in record.items() if not k.startswith("_")}
    write_json_atomic(round_dir(ctx, record["round"]) / "round.json", {**plain, "_state": state_of(record)})


def state_of(record: dict[str, Any]) -> dict[str, Any]:
    measurement = record.get("_measurement")
    return {"measurement": measurement}


def load_rounds(work: Path) -> list[dict[str, Any]]:
    """The finished rounds of an interrupted run, in order (a round without round.json is redone)."""
    import json

    records = []
    index = 1
    while (path := work / "rounds" / f"round-{index}" / "round.json").is_file():
        record = json.loads(path.read_text())
        state = record.pop("_state", {})
        if state.get("measurement"):
            record["_measurement"] = state["measurement"]
        records.append(record)
        index += 1
    return records


def measurement_of(record: dict[str, Any]) -> Measurement | None:
    data = record.get("_measurement")
    return Measurement(**data) if data else None
