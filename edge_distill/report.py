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

SCHEMA = 2


def build_report(ctx: Context, rounds: list[dict[str, Any]], winner: dict[str, Any] | None) -> dict[str, Any]:
    """Assemble report.json; ships the winner to artifacts/<target>-<precision>/ and copies its student."""
    job = ctx.job
    if winner is not None:
        from edge_distill.exporting import ship_winner

        winner["artifacts"] = ship_winner(ctx, winner, ctx.targets)
        own = next((a for a in winner["artifacts"] if a["target"] == winner["target"] and "path" in a), None)
        winner["shipped"] = own["path"] if own else winner["artifact"]
        shutil.rmtree(ctx.work / "student", ignore_errors=True)  # a resumed run may have begun this
        shutil.copytree(ctx.work / winner["student_dir"], ctx.work / "student")
    report = {
        "schema": SCHEMA,
        "tool": {"name": "edge-distill", "version": __version__},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": {
            "name": job.profile.name,
            "description": job.profile.description,
            "path": str(job.profile.path),
            "budget_reason": job.profile.budget_reason,
            "targets": list(job.profile.targets),
        },
        "budget": job.budget.as_dict(),
        "device": {"name": job.device.name} if job.device is not None else None,
        "decisions": "measured-device" if job.device is not None else decisions_source(job),
        "input": {"sequence_length": job.sequence_length, "batch": 1},
        "data": data_section(job),
        "teacher": {**ctx.teacher_info, "family": job.family.name},
        "teacher_outputs": ctx.cache_info,
        "calibration": {**ctx.latency.calibration(), "host_reference_timings": ctx.references},
        "training": {**job.train.as_dict(), "losses": job.losses, "scheme": job.scheme},
        "targets": {
            "considered": [f"{o.target} {o.precision}" for o in ctx.search.options],
            "exported": list(ctx.targets),
        },
        "probes": [{k: v for k, v in p.items() if not k.startswith("_")} for p in ctx.probes],
        "rounds": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rounds],
        "result": result_section(ctx, rounds, winner),
    }
    if winner is not None:
        from edge_distill.model_card import model_card

        (ctx.work / "student" / "README.md").write_text(model_card(report))
    return report


def decisions_source(job: Any) -> str:
    """What the loop's latency decisions rest on, without a connected device."""
    return "measured-host" if job.profile.measured else "predicted"


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
            "target": winner["target"],
            "precision": winner["precision"],
            "meets_floor": True,
            "latency_source": winner["latency_source"],
            "artifact": winner["shipped"],
            "artifacts": winner["artifacts"],
            "student": "student",
            "reason": None,
        }
    return {
        "fits": False, "round": None, "target": None, "precision": None, "meets_floor": None,
        "latency_source": None, "artifact": None, "artifacts": [], "student": None,
        "reason": nothing_fits_reason(ctx, rounds),
    }  # fmt: skip


def nothing_fits_reason(ctx: Context, rounds: list[dict[str, Any]]) -> str:
    """One sentence: the best student that fits the resources but not the floor, or the closest miss."""
    name, budget = ctx.job.profile.name, ctx.job.budget
    fitting = [r for r in rounds if r.get("fits_budget")]
    if fitting:
        best = max(fitting, key=lambda r: r["retention"] if r["retention"] is not None else -1)
        shape = StudentSpec(**_shape(best["student"])).label
        return (
            f"No student fits {name} and keeps {budget.min_retention:.0%} of the teacher's "
            f"{best['metric']['name']}: the best that fits, round {best['round']} ({shape} as "
            f"{best['target']} {best['precision']}, kept in {best['artifact']}), "
            f"{'; '.join(best['miss_sentences'])}; lower --min-retention, train longer (--epochs), or relax "
            "the budget so a larger student fits."
        )
    if not rounds:
        return f"No student fits {name}: no candidate was predicted to fit."
    closest = min(rounds, key=lambda r: sum(m["value"] / m["limit"] for m in r["misses"]) or 99.0)
    shape = StudentSpec(**_shape(closest["student"])).label
    return (
        f"No student fits {name} after {len(rounds)} round(s): the closest, round {closest['round']} "
        f"({shape} as {closest['target']} {closest['precision']}), missed "
        f"({'; '.join(closest['miss_sentences'])}); raise --max-rounds, relax the budget, or pick a larger "
        "device profile."
    )


def _shape(student: dict[str, Any]) -> dict[str, Any]:
    return {k: student[k] for k in ("layers", "hidden", "heads", "intermediate", "vocab") if k in student}


def save_pretrained_student(folder: Path, student: Any, job: Any) -> None:
    """A round's student in Hugging Face format (safetensors), with its tokenizer and how it was made.

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


def write_report(work: Path, report: dict[str, Any]) -> None:
    """report.json, and report.html beside it (the same figures, plotted, for a person)."""
    from edge_distill.report_html import write_html

    write_json_atomic(work / "report.json", report)
    write_html(work, report)
