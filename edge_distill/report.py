"""report.json (schema versioned, keys documented in the README), and the student in Hugging Face format.

Example:
    >>> report = json.loads(Path("runs/raspberry-pi-4/report.json").read_text())  # doctest: +SKIP
    >>> report["result"]["fits"]                                                              # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_distill import __version__
from edge_distill.atomic import write_json_atomic
from edge_distill.students import StudentSpec
from edge_distill.teachers import quiet_transformers

if TYPE_CHECKING:
    from edge_distill.loop import Context

SCHEMA = 1


def build_report(ctx: Context, rounds: list[dict[str, Any]], winner: dict[str, Any] | None) -> dict[str, Any]:
    """Assemble report.json; saves the winning student and moves its artifact to artifacts/<target>/."""
    job = ctx.job
    if winner is not None:
        from edge_distill.exporting import ship_winner

        winner["artifacts"] = ship_winner(ctx, winner, ctx.targets)
        winner["artifact"] = promote_artifact(ctx.work, winner)
        save_student(ctx.work / "student", winner["_student"], job, winner)
    return {
        "schema": SCHEMA,
        "tool": {"name": "edge-distill", "version": __version__},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": {
            "name": job.profile.name,
            "description": job.profile.description,
            "path": str(job.profile.path),
        },
        "budget": job.budget.as_dict(),
        "device": {"name": job.device.name} if job.device is not None else None,
        "input": {"sequence_length": job.sequence_length, "batch": 1},
        "data": data_section(job),
        "teacher": ctx.teacher_info,
        "teacher_outputs": ctx.cache_info,
        "calibration": {**ctx.latency.calibration(), "host_reference_timings": ctx.references},
        "training": job.train.as_dict(),
        "probes": ctx.probes,
        "rounds": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rounds],
        "result": result_section(ctx, rounds, winner),
    }


def data_section(job: Any) -> dict[str, Any]:
    data = job.data
    return {
        "name": data.name,
        "source": data.source,
        "label_names": list(data.label_names),
        "labeled": data.labeled,
        "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "fingerprint": data.fingerprint(),
    }


def result_section(
    ctx: Context, rounds: list[dict[str, Any]], winner: dict[str, Any] | None
) -> dict[str, Any]:
    if winner is not None:
        return {
            "fits": True,
            "round": winner["round"],
            "artifact": winner["artifact"],
            "artifacts": winner["artifacts"],
            "student": "student",
            "reason": None,
        }
    last = rounds[-1] if rounds else None
    detail = "; ".join(last["miss_sentences"]) if last else "no candidate was predicted to fit"
    tried = len(rounds)
    reason = (
        f"No student fits {ctx.job.profile.name} after {tried} round(s): the last one, "
        f"{StudentSpec(**_shape(last['student'])).label}, missed ({detail}); "
        "raise --max-rounds, relax the budget, or pick a larger device profile."
        if last
        else f"No student fits {ctx.job.profile.name}: {detail}."
    )
    return {
        "fits": False, "round": None, "artifact": None, "artifacts": [], "student": None, "reason": reason,
    }  # fmt: skip


def _shape(student: dict[str, Any]) -> dict[str, Any]:
    return {k: student[k] for k in ("layers", "hidden", "heads", "intermediate", "vocab") if k in student}


def promote_artifact(work: Path, winner: dict[str, Any]) -> str:
    """The winner's artifact is now its shipped bundle for the round's target: the round's own export
    (the same model, checked the same way) is removed, and the bundle's path returned."""
    bundle = next((a for a in winner["artifacts"] if a["target"] == winner["target"] and "path" in a), None)
    if bundle is None:  # the measuring target failed to ship: keep the round's export
        return winner["artifact"]
    shutil.rmtree((work / winner["artifact"]).parent, ignore_errors=True)
    return bundle["path"]


PIPELINES = {
    "sequence-classification": "text-classification",
    "sentence-embedding": "sentence-similarity",
    "causal-lm": "text-generation",
    "image-classification": "image-classification",
}


def save_student(folder: Path, student: Any, job: Any, winner: dict[str, Any]) -> None:
    """The student in Hugging Face format (safetensors), with its tokenizer and a short model card.

    A sentence-embedding student also gets sentence-transformers' modules.json and pooling config, so
    that library loads it as it loaded the teacher.
    """
    names = job.teacher.label_names
    if job.family.classifies and names:
        student.config.id2label = dict(enumerate(names))
        student.config.label2id = {name: i for i, name in enumerate(names)}
    with quiet_transformers():  # no "Writing model shards" bar in the user's console
        student.save_pretrained(folder)
        job.teacher.tokenizer.save_pretrained(folder)
    if job.family.name == "sentence-embedding":
        write_sentence_transformers_files(folder, student)
    write_json_atomic(folder / "edge_distill.json", student_record(job))
    (folder / "README.md").write_text(model_card(job, winner))


def student_record(job: Any) -> dict[str, Any]:
    """How the student was made: what `edge-distill export` needs to calibrate and verify it again."""
    data = dict(job.data_record)
    if data.get("source") not in (None, "demo"):
        data["source"] = str(Path(data["source"]).resolve())
    return {
        "schema": 1,
        "family": job.family.name,
        "sequence_length": job.sequence_length,
        "profile": job.profile.name,
        "teacher": job.teacher.name,
        "data": data or None,
    }


def write_sentence_transformers_files(folder: Path, student: Any) -> None:
    """modules.json and 1_Pooling/config.json as sentence-transformers writes them."""
    from edge_distill.families import POOLING_KEY

    pooling = getattr(student.config, POOLING_KEY, None) or {"mode": "mean", "normalize": False}
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if pooling.get("normalize"):
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    write_json_atomic(folder / "modules.json", modules)
    (folder / "1_Pooling").mkdir(exist_ok=True)
    write_json_atomic(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": student.config.hidden_size,
            "pooling_mode_cls_token": pooling.get("mode") == "cls",
            "pooling_mode_mean_tokens": pooling.get("mode") != "cls",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )


def model_card(job: Any, winner: dict[str, Any]) -> str:
    spec, latency, metric = winner["student"], winner["latency_ms"], winner["metric"]
    retention = f" (teacher retention {winner['retention']:.1%})" if winner["retention"] is not None else ""
    vocab = f", vocabulary trimmed to {spec['vocab']:,} tokens" if spec.get("vocab") else ""
    labels = f" Labels: {', '.join(job.teacher.label_names)}." if job.teacher.label_names else ""
    return f"""---
library_name: transformers
pipeline_tag: {PIPELINES.get(job.family.name, "feature-extraction")}
tags: [edge-distill, knowledge-distillation]
---
# Student of {job.teacher.name}

Distilled by edge-distill {__version__} for the `{job.profile.name}` profile.

| | value |
|---|---|
| shape | {spec["layers"]} layers x {spec["hidden"]} hidden, {spec["heads"]} heads{vocab} |
| parameters | {spec["params"]:,} |
| test {metric["name"]} | {metric["value"]:.4f}{retention} |
| p90 latency | {latency["p90"]:.1f} ms ({winner["latency_source"]}, {job.profile.name}) |
| artifact | `{winner["artifact"]}` ({winner["size_mb"]:.1f} MB, {winner["target"]} {winner["precision"]}) |

Training: temperature {job.train.temperature}, alpha {job.train.alpha}, {job.train.epochs} epochs,
sequence length {job.sequence_length}.{labels}
"""


def write_report(work: Path, report: dict[str, Any]) -> None:
    write_json_atomic(work / "report.json", report)
