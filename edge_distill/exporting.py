"""``edge-distill export``: a saved student to every target and precision asked for, each verified.

The student folder is what a run writes to ``runs/<run>/student/`` (or any Hugging Face folder of a
supported family). Calibration rows come from the data's validation split (held out from training,
never the test split); verification runs on the test split, where the task metric is computed on the
artifact's own outputs. A run's student folder records its data in ``edge_distill.json``, so
``edge-distill export runs/x/student --target all`` needs nothing else.

Example:
    >>> results = export_student(Path("runs/x/student"), targets=["onnx"], precisions=["int8"],
    ...                          out=Path("runs/x/artifacts"))  # doctest: +SKIP
    >>> results[0]["verification"]["status"]  # doctest: +SKIP
    'verified'
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edge_distill.cut import export_module
from edge_distill.data import TextDataset, load_demo_data, load_text_file
from edge_distill.errors import DataError, EdgeDistillError, ExportError
from edge_distill.families import Family, get_family
from edge_distill.planner import Candidate, Option, misses
from edge_distill.profiles import DeviceProfile, latency_where
from edge_distill.shipping import ShipData, ship
from edge_distill.students import StudentSpec
from edge_distill.targets.base import TARGETS, Metric, check_precision, get_target

if TYPE_CHECKING:
    from edge_distill.loop import Context

RECORD = "edge_distill.json"  # in a student folder: the family, sequence length and data it was trained on
CALIBRATION_ROWS = 128
VERIFY_ROWS = 256


def accuracy_metric(labels: np.ndarray) -> Metric:
    """Accuracy of outputs (n, classes) against ``labels`` (n,)."""
    return Metric("accuracy", lambda out: float(np.mean(np.argmax(out, axis=-1) == labels)))


def text_ship_data(
    family: Family,
    inputs: dict[str, dict[str, torch.Tensor]],
    *,
    labels: np.ndarray | None,
    tokenizer: Any,
    seq_len: int,
    label_names: Sequence[str] = (),
    trimmed: bool = False,
) -> ShipData:
    """ShipData for a text model from its tokenized splits: calibrate on val, verify on test.

    ``labels`` are the test split's (None or all -1 for unlabelled data: top-1 agreement is the metric).
    """
    columns = ("input_ids", "attention_mask")
    val = {k: v[:CALIBRATION_ROWS] for k, v in inputs["val"].items() if k in columns}
    test = {k: v[:VERIFY_ROWS] for k, v in inputs["test"].items() if k in columns}
    n = len(test["input_ids"])
    metric = None
    if family.classifies and labels is not None and (np.asarray(labels) >= 0).all():
        metric = accuracy_metric(np.asarray(labels)[:n])
    preprocess = {
        "kind": "text",
        "tokenizer": "tokenizer/",
        "sequence_length": seq_len,
        "padding": "max_length",
        "truncation": True,
        "inputs": list(columns),
        "token_ids": "the tokenizer's own ids (a trimmed vocabulary's id map is inside the model)"
        if trimmed
        else "the tokenizer's own ids",
    }
    return ShipData(
        example={k: v[:1] for k, v in test.items()},
        calibration=val,
        held_out=test,
        metric=metric,
        preprocess=preprocess,
        label_names=tuple(label_names),
        tokenizer=tokenizer,
        top1=family.name != "sentence-embedding",
        extra={"family": family.name},
    )


def resolve_pairs(targets: Sequence[str], precisions: Sequence[str] | None) -> list[tuple[str, str]]:
    """(target, precision) pairs: ``all`` targets are every registered one; no precision is each
    target's default (its first); ``all`` precisions are every one a target offers. An explicit precision
    goes to the ``all`` targets that offer it; a named target that lacks it is an ExportError now, before
    anything is loaded.
    """
    every = "all" in targets
    names = TARGETS.names() if every else list(dict.fromkeys(targets))
    pairs = []
    for name in names:
        target = get_target(name)  # an unknown name fails here, with the closest known one
        if precisions is None:
            wanted = [target.precisions[0]]
        elif "all" in precisions:
            wanted = list(target.precisions)
        else:
            wanted = [p for p in dict.fromkeys(precisions) if p in target.precisions or not every]
            for precision in wanted:
                check_precision(target, precision)
        pairs += [(name, p) for p in wanted]
    if not pairs:
        raise ExportError(
            f"No target offers precision {', '.join(precisions or [])}; the precisions are "
            "fp32, fp16, int8, int8-dynamic and palettized (see `edge-distill export --help`)."
        )
    return pairs


def export_student(
    student_dir: Path,
    *,
    targets: Sequence[str],
    precisions: Sequence[str] | None,
    out: Path,
    data: str | None = None,
    text_column: str = "text",
    label_column: str | None = None,
    profile: DeviceProfile | None = None,
    seq_len: int | None = None,
    say: Callable[[str], None] = lambda text: None,
) -> list[dict[str, Any]]:
    """Export, verify and bundle ``student_dir`` for each (target, precision) in ``out/<target>-<precision>``.

    Returns one entry per pair: the metadata written, or ``{"target", "precision", "error"}`` for a pair
    that could not be exported or verified (its folder is not written; the others still are).
    """
    from edge_distill.teachers import load_teacher

    pairs = resolve_pairs(targets, precisions)
    student = load_teacher(Path(student_dir))
    family = get_family(student.task)
    if not family.cli:
        raise ExportError(
            f"{student_dir} is an {family.name} model; export it through the Python API "
            "(edge_distill.shipping.ship with pixel tensors)."
        )
    record = read_record(Path(student_dir))
    seq_len = sequence_length(record, profile, student.model.config, seq_len)
    dataset = load_data(record, data, text_column, label_column, student.label_names, family)
    splits = {"val": dataset.val, "test": dataset.test}
    inputs = {name: family.encode(student.tokenizer, split.texts, seq_len) for name, split in splits.items()}
    model = export_module(family, student.model)
    shipment = text_ship_data(
        family, inputs, labels=np.asarray(dataset.test.labels) if dataset.labeled else None,
        tokenizer=student.tokenizer, seq_len=seq_len, label_names=student.label_names,
        trimmed=bool(getattr(student.model.config, "trimmed_vocab", None)),
    )  # fmt: skip
    results = []
    for target, precision in pairs:
        say(f"Exporting {target} {precision} ...")
        try:
            results.append(ship(model, target, precision, out, shipment, profile=profile))
        except EdgeDistillError as error:
            results.append({"target": target, "precision": precision, "error": str(error)})
    return results


def sequence_length(
    record: dict[str, Any], profile: DeviceProfile | None, config: Any, asked: int | None
) -> int:
    """The fixed sequence length: asked for, else the run's, else the profile's (capped at the model's
    positions), else 128."""
    if asked is not None:
        return asked
    if record.get("sequence_length"):
        return int(record["sequence_length"])
    length = profile.sequence_length if profile is not None else 128
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(length, positions) if positions else length


def read_record(student_dir: Path) -> dict[str, Any]:
    """The run's record of how the student was made ({} for a folder edge-distill did not write)."""
    path = student_dir / RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON ({exc}); delete it and pass --data instead.") from None


def load_data(
    record: dict[str, Any],
    data: str | None,
    text_column: str,
    label_column: str | None,
    label_names: Sequence[str],
    family: Family,
) -> TextDataset:
    """The data to calibrate and verify on: ``--data``, else the data the run recorded."""
    recorded = record.get("data") or {}
    if data is None and not recorded:
        raise DataError(
            "The student folder does not record its data; pass --data FILE (CSV, JSONL or Parquet with a "
            "text column) to calibrate and verify the artifacts on."
        )
    seed = int(recorded.get("seed", 0))
    if data is None and recorded.get("source") == "demo":
        return load_demo_data(max_per_class=recorded.get("max_per_class"), seed=seed)
    source = data or recorded["source"]
    if data is None and not Path(source).is_file():
        raise DataError(f"The student was trained on {source}, which is gone; pass --data FILE instead.")
    column = label_column if data is not None else recorded.get("label_column")
    return load_text_file(
        source,
        text_column=text_column if data is not None else recorded.get("text_column", "text"),
        label_column=None if family.name == "causal-lm" else column or "label",
        labels_required=column is not None and family.name != "causal-lm",
        seed=seed,
        label_names=label_names or None,
    )


# --- the budget loop's side: check the targets before training, ship the winner after -------------


def check_targets(ctx: Context) -> list[str]:
    """Export an untrained student of the candidates' architecture to each of the profile's targets before
    anything is trained, so no training is spent on a student that cannot ship. Returns the targets that
    export it; a target that cannot is named with its op (one line), and none at all is an ExportError.

    The smallest candidate stands for all: exportability depends on the ops, not the sizes (a trimmed
    vocabulary's id map is an op of its own, so a trimmed candidate is preferred when there is one).
    """
    job, say = ctx.job, ctx.reporter.say
    spec = min(ctx.candidates, key=lambda c: (c.spec.vocab is None, c.params)).spec
    module = export_module(job.family, ctx.cutter.untrained(spec))
    example = {k: v[:1] for k, v in ctx.inputs["test"].items() if k in ("input_ids", "attention_mask")}
    ok, failures = [], []
    for name in dict.fromkeys([job.target, *job.profile.targets]):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                target = get_target(name, profile=job.profile)
                if not target.available():
                    raise ExportError(f"The {name} target's exporter is not installed here.")
                target.export(module, example, Path(tmp) / name, precision=target.precisions[0])
                ok.append(name)
            except ExportError as error:
                failures.append(str(error))
    for failure in failures:
        say(f"  target dropped before training: {failure}")
    if job.target not in ok:
        raise ExportError(
            f"The student cannot be exported to {job.target}, which the loop measures latency with: "
            f"{failures[0]}"
        )
    say(f"Targets: {', '.join(ok)} export this architecture (checked on an untrained {spec.label})")
    return ok


def other_precision(ctx: Context, winner: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """The precision the winner ships at on target ``name``, and whether it fits there: its own for the
    winning target; elsewhere the one predicted to fit with the best predicted accuracy, else the winner's
    precision (or the target's first) predicted to miss, said in ``fits_budget``."""
    if name == winner["target"]:
        timed = {"p90_ms": winner["latency_ms"]["p90"], "latency_source": winner.get("latency_source")}
        return winner["precision"], {**timed, "fits_budget": True}
    offered = get_target(name).precisions
    fallback = winner["precision"] if winner["precision"] in offered else offered[0]
    candidate = winner_candidate(ctx, winner)
    options = [o for o in ctx.search.options if o.target == name] if candidate is not None else []
    forecasts = {o.precision: ctx.search.forecast(candidate, o) for o in options}
    fitting = [p for p, f in forecasts.items() if ctx.search.fits(f)]
    precision = max(fitting, key=lambda p: forecasts[p]["retention"]) if fitting else fallback
    if precision not in forecasts:
        return precision, {"p90_ms": None, "fits_budget": None}
    forecast = forecasts[precision]
    return precision, {"p90_ms": round(forecast["latency_ms"], 3), "fits_budget": bool(fitting)}


def winner_candidate(ctx: Context, winner: dict[str, Any]) -> Candidate | None:
    """The costed candidate the winning round trained (None if the run's candidates do not hold it)."""
    keys = ("layers", "hidden", "heads", "intermediate", "vocab")
    spec = StudentSpec(**{k: winner["student"].get(k) for k in keys})
    return next((c for c in ctx.candidates if c.spec == spec), None)


def time_shipped(ctx: Context, winner: dict[str, Any], option: Option, artifact: Path) -> dict[str, Any]:
    """Another target's bundle timed as a round's artifact is (on this host beside the reference workload,
    and on the connected device), so its ``p90_ms`` and ``fits_budget`` are measured rather than predicted
    from calibration of other models; {} for a target this host cannot run (Core ML off macOS)."""
    from edge_distill.timing import latency_fields, time_on_host

    candidate, latency = winner_candidate(ctx, winner), ctx.latencies.get(option)
    if candidate is None or latency is None:
        return {}
    timed = time_on_host(ctx, artifact, candidate.cost_at(option.precision), latency)
    fields, timing = latency_fields(ctx, timed, latency), timed.device or timed.profile
    costs = {"latency_ms": fields["latency_ms"]["p90"], "memory_mb": timing.peak_memory_mb}
    missed = misses(costs | {"size_mb": timing.size_mb}, ctx.job.budget)
    return {
        "p90_ms": fields["latency_ms"]["p90"],
        "latency_source": fields["latency_source"],
        "peak_memory_mb": None if timing.peak_memory_mb is None else round(timing.peak_memory_mb, 1),
        "fits_budget": not [m for m in missed if not m.floor],
    }


def ship_winner(ctx: Context, winner: dict[str, Any], targets: Sequence[str]) -> list[dict[str, Any]]:
    """Bundle the winning student for each target into artifacts/<target>-<precision>/: the winning
    round's own verified bundle for its target, and for the others the precision predicted to fit there
    (``other_precision``). A quick job ships the winning target only.

    A target that fails here (after passing the untrained check) is reported, not fatal: the others ship.
    """
    import shutil

    from edge_distill.loop import shipment

    job = ctx.job
    student = ctx.student_of(winner["from_round"] or winner["round"])
    model = export_module(job.family, student)
    data = shipment(ctx, winner["student"].get("vocab") is not None)
    shipped = []
    shutil.rmtree(ctx.work / "artifacts", ignore_errors=True)  # a resumed run may have begun shipping
    for name in [winner["target"]] if job.quick else targets:
        precision, forecast = other_precision(ctx, winner, name)
        bundle = f"{name}-{precision}"
        try:
            if name == winner["target"]:
                own = ctx.work / Path(winner["artifact"]).parent
                shutil.copytree(own, ctx.work / "artifacts" / bundle)
                meta = json.loads((own / "metadata.json").read_text())
            else:
                meta = ship(model, name, precision, ctx.work / "artifacts", data, profile=job.profile)
        except EdgeDistillError as error:
            ctx.reporter.say(f"  {name} {precision}: not shipped: {error}")
            shipped.append({"target": name, "precision": precision, "error": str(error)})
            continue
        verification = meta["verification"]
        shipped.append(
            {
                "target": name,
                "precision": precision,
                "path": f"artifacts/{bundle}/{meta['file']}",
                "size_mb": meta["size_mb"],
                "verification": verification["status"],
                "max_abs_diff": verification["max_abs_diff"],
                **forecast,
            }
        )
        if name != winner["target"]:
            shipped[-1] |= time_shipped(ctx, winner, Option(name, precision), ctx.work / shipped[-1]["path"])
        entry, timed = shipped[-1], ""
        if entry.get("p90_ms") is not None:
            device = ctx.job.device.name if ctx.job.device else None
            where = latency_where(entry.get("latency_source"), device, ctx.job.profile.name)
            verdict = "fits" if entry["fits_budget"] else "over budget"
            timed = f"; p90 {entry['p90_ms']:.1f} ms {where} -> {verdict}"
        status = verification["status"]
        ctx.reporter.say(f"  shipped {entry['path']} ({meta['size_mb']:.1f} MB, {status}{timed})")
    return shipped
