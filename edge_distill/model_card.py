"""The winning student's Hugging Face model card (``student/README.md``), written from report.json alone.

YAML front matter (library, pipeline, tags, ``base_model`` when the teacher is a hub id, a ``model-index``
with the test metric), then the model, how it was distilled, its metrics against the teacher, its figures on
the device, how to use it, and what the figures rest on. Schema 1 and 2 reports both work: every schema-2
key is optional.

Example:
    >>> report = json.loads(Path("runs/raspberry-pi-4/report.json").read_text())  # doctest: +SKIP
    >>> (Path("runs/raspberry-pi-4/student/README.md")).write_text(model_card(report))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from typing import Any

from edge_distill.report_html import chosen_round, fmt, metric_text, p90_text, run_command, student_label

PIPELINES = {
    "sequence-classification": "text-classification",
    "sentence-embedding": "sentence-similarity",
    "causal-lm": "text-generation",
    "image-classification": "image-classification",
}
LOADERS = {  # family: (import line, load line); "folder" is the student's folder
    "sequence-classification": ("from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                                "model = AutoModelForSequenceClassification.from_pretrained(folder)"),
    "sentence-embedding": ("from sentence_transformers import SentenceTransformer",
                           "model = SentenceTransformer(folder)  # or transformers.AutoModel + mean pooling"),
    "causal-lm": ("from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained(folder)"),
    "image-classification": ("from transformers import AutoImageProcessor, AutoModelForImageClassification",
                             "model = AutoModelForImageClassification.from_pretrained(folder)"),
}  # fmt: skip
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the Hub spells a model
IMAGE_HINTS = ("vit", "resnet", "mobilenet", "convnext", "efficientnet", "deit", "image")
SOURCES = {
    "predicted": "predicted from host measurements scaled by the calibration, not timed on the device",
    "measured-host": "measured on the host that ran edge-distill, not on the device",
    "measured-device": "measured on the device itself",
}


def model_card(report: dict[str, Any]) -> str:
    """README.md for the student that ``report`` chose. Raises ValueError when nothing fits.

    Example:
        >>> card = model_card(json.loads(Path("runs/pi/report.json").read_text()))  # doctest: +SKIP
        >>> card.splitlines()[1]                                                    # doctest: +SKIP
        'library_name: transformers'
    """
    chosen = chosen_round(report)
    if not report.get("result", {}).get("fits") or chosen is None:
        reason = report.get("result", {}).get("reason") or "no round was chosen"
        raise ValueError(f"No model card: no student fits ({reason})")
    sections = (front_matter, model_section, distillation_section, metrics_section, device_section)
    parts = [section(report, chosen) for section in sections]
    return "\n".join([*parts, usage_section(report), limitations_section(report, chosen)])


def family_of(report: dict[str, Any]) -> str:
    """The teacher's family: ``teacher.family`` when recorded, else read off the metric and the teacher name.

    Example:
        >>> family_of({"teacher": {"metric": {"name": "perplexity"}}})
        'causal-lm'
    """
    teacher = report.get("teacher", {})
    if teacher.get("family"):
        return str(teacher["family"])
    metric = (teacher.get("metric") or {}).get("name", "")
    if metric == "perplexity":
        return "causal-lm"
    if metric in ("probe accuracy", "cosine agreement"):
        return "sentence-embedding"
    name = str(teacher.get("name", "")).lower()
    if "image_size" in report.get("input", {}) or any(hint in name for hint in IMAGE_HINTS):
        return "image-classification"
    return "sequence-classification"


def front_matter(report: dict[str, Any], chosen: dict[str, Any]) -> str:
    """The YAML block the Hub reads; every free-text value is a JSON string, which YAML reads as-is."""
    family, profile = family_of(report), report.get("profile", {}).get("name", "device")
    teacher = str(report.get("teacher", {}).get("name", ""))
    task = PIPELINES.get(family, "feature-extraction")
    lines = ["---", "library_name: transformers", f"pipeline_tag: {task}",
             "tags:", "- edge-distill", "- knowledge-distillation", f"- {json.dumps(profile)}"]  # fmt: skip
    if HUB_ID.match(teacher):
        lines.append(f"base_model: {json.dumps(teacher)}")
    metric = chosen.get("metric") or {}
    if metric.get("value") is not None:
        lines += model_index(report, metric, task)
    return "\n".join([*lines, "---", ""])


def model_index(report: dict[str, Any], metric: dict[str, Any], task: str) -> list[str]:
    """The ``model-index`` entry: the student's test metric on the run's data."""
    data = report.get("data") or {}
    name, split = metric.get("name", "metric"), metric.get("split", "test")
    dataset = json.dumps(str(data.get("name", "unknown")))
    return [
        "model-index:", f"- name: {json.dumps(card_name(report))}", "  results:",
        "  - task:", f"      type: {task}",
        "    dataset:", f"      name: {dataset}", f"      type: {dataset}", f"      split: {split}",
        "    metrics:", f"    - type: {name.replace(' ', '-')}", f"      value: {metric['value']:.4f}",
        f"      name: {json.dumps(f'{split} {name}')}",
    ]  # fmt: skip


def card_name(report: dict[str, Any]) -> str:
    return f"edge-distill-student-{report.get('profile', {}).get('name', 'device')}"


def rows(pairs: list[tuple[str, str]]) -> str:
    """A two-column Markdown table."""
    return "| | |\n|---|---|\n" + "".join(f"| {key} | {value} |\n" for key, value in pairs)


def model_section(report: dict[str, Any], chosen: dict[str, Any]) -> str:
    """Title, what the student is and how it compares with the teacher in size."""
    student, teacher = chosen.get("student") or {}, report.get("teacher", {})
    profile = report.get("profile", {})
    fewer = ratio_text(teacher.get("params"), student.get("params"), "fewer parameters than the teacher")
    labels = (report.get("data") or {}).get("label_names") or []
    flops = f"{fmt(student.get('flops'), ',')} (teacher {fmt(teacher.get('flops'), ',')})"
    shape = ", ".join(f"{k} {v}" for k, v in (report.get("input") or {}).items()) or "not reported"
    params = f"{fmt(student.get('params'), ',')} ({fewer})"
    pairs = [("shape", student_label(student)), ("parameters", params), ("FLOPs per input", flops),
             ("input", shape)]  # fmt: skip
    if labels:
        pairs.append(("labels", ", ".join(map(str, labels))))
    tool, name = report.get("tool", {}), teacher.get("name", "the teacher")
    return (
        f"# {card_name(report)}\n\nA student of `{name}` ({family_of(report)}), distilled by "
        f"{tool.get('name', 'edge-distill')} {tool.get('version', '')} to fit the "
        f"`{profile.get('name', '?')}` profile: {profile.get('description', '')}.\n\n"
        f"## Model\n\n{rows(pairs)}"
    )


def ratio_text(teacher: Any, student: Any, words: str) -> str:
    return f"{teacher / student:.1f}x {words}" if teacher and student else "teacher not reported"


def distillation_section(report: dict[str, Any], chosen: dict[str, Any]) -> str:
    """The training settings, the loss terms, the data, and the round that made this student."""
    training = dict(report.get("training") or {})
    losses = training.pop("losses", None) or loss_terms(report, chosen)
    pairs = [(key.replace("_", " "), fmt(value, "g")) for key, value in training.items()]
    if losses:
        pairs.append(("loss terms", ", ".join(f"{k} x {v:g}" if isinstance(v, int | float) else str(k)
                                              for k, v in losses.items())))  # fmt: skip
    data = report.get("data") or {}
    sizes = ", ".join(f"{k} {v:,}" for k, v in (data.get("sizes") or {}).items())
    labels = "teacher outputs as labels" if data.get("labeled") is False else "its own labels"
    why = f" {chosen['why']}" if chosen.get("why") else ""
    source = f" from round {chosen['from_round']}'s student" if chosen.get("from_round") is not None else ""
    return (
        f"## Distillation\n\nData: `{data.get('name', '?')}` ({sizes or 'sizes not reported'}), {labels}. "
        f"Chosen: round {chosen.get('round')} of {len(report.get('rounds', []))}, "
        f"{chosen.get('action', 'distill')}{source}.{why}\n\n{rows(pairs)}"
    )


def loss_terms(report: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any]:
    """The loss terms logged per epoch (without their sum) as {name: None}, by the round that trained this
    student: the chosen one, or the round a lower-precision round re-exported."""
    trained = next(
        (r for r in report.get("rounds", []) if r.get("round") == chosen.get("from_round")), chosen
    )
    epochs = (trained.get("train") or {}).get("epoch_losses") or [{}]
    return {name: None for name in epochs[-1] if name != "loss"}


def metrics_section(report: dict[str, Any], chosen: dict[str, Any]) -> str:
    """Teacher vs student on the test split, retention, agreement and the retention floor."""
    teacher = report.get("teacher", {})
    floor = (report.get("budget", {}).get("min_retention") or {}).get("value")
    pairs = [("teacher", metric_text(teacher.get("metric"))), ("student", metric_text(chosen.get("metric"))),
             ("retention", fmt(chosen.get("retention"), ".1%")),
             ("agreement with the teacher", fmt(chosen.get("agreement"), ".4f"))]  # fmt: skip
    if floor is not None:
        meets = {True: "met", False: "missed", None: "not checked"}[chosen.get("meets_floor")]
        pairs.append(("retention floor", f"{floor:.0%} ({meets})"))
    return f"## Metrics\n\n{rows(pairs)}"


def device_section(report: dict[str, Any], chosen: dict[str, Any]) -> str:
    """The figures on the profile's device against the budget, budget by budget."""
    budget, misses = report.get("budget", {}), {m.get("budget") for m in chosen.get("misses", [])}
    figures = {"latency_ms": p90_text(chosen), "memory_mb": fmt(chosen.get("peak_memory_mb"), unit=" MB"),
               "size_mb": fmt(chosen.get("size_mb"), ".2f", " MB")}  # fmt: skip
    pairs = [("profile", str(report.get("profile", {}).get("name", "?"))),
             ("target, precision", f"{chosen.get('target')}, {chosen.get('precision')}")]  # fmt: skip
    for key, label, unit in (("latency_ms", "p90 latency", "ms"), ("memory_mb", "peak memory", "MB"),
                             ("size_mb", "size", "MB")):  # fmt: skip
        limit = (budget.get(key) or {}).get("value")
        verdict = (
            "" if limit is None else f"; budget {limit:g} {unit} ({'over' if key in misses else 'within'})"
        )
        pairs.append((label, figures[key] + verdict))
    if chosen.get("accelerator_share") is not None:
        pairs.append(("accelerator share", f"{chosen['accelerator_share']:.0%}"))
    pairs.append(("fits", "yes" if chosen.get("fits") else "no"))
    return f"## On the device\n\n{rows(pairs)}"


def usage_section(report: dict[str, Any]) -> str:
    """transformers (or sentence-transformers) on this folder, then the shipped bundles and their runner."""
    imports, load = LOADERS.get(family_of(report), LOADERS["sequence-classification"])
    code = f'```python\n{imports}\n\nfolder = "path/to/student"  # this folder\n{load}\n```\n'
    bundles = [b for b in report.get("result", {}).get("artifacts") or [] if "path" in b]
    shipped = "\n".join(bundle_line(b) for b in bundles) or "- none shipped"
    return (
        f"## How to use it\n\n{code}\nTorch-free bundles, each with a `runner.py` that needs only numpy and "
        f"the runtime (paths relative to the run folder):\n\n{shipped}\n"
    )


def bundle_line(bundle: dict[str, Any]) -> str:
    """``- `path`: target precision, size, verification; `run command` `` for one shipped bundle."""
    size, verified = fmt(bundle.get("size_mb"), ".2f", " MB"), bundle.get("verification", "not verified")
    what = f"{bundle.get('target')} {bundle.get('precision')}, {size}, {verified}"
    return f"- `{bundle['path']}`: {what}; `{run_command(bundle['path'], None)}`"


def limitations_section(report: dict[str, Any], chosen: dict[str, Any]) -> str:
    """What the device figures rest on, and what the metric was measured on."""
    source = chosen.get("latency_source") or "not reported"
    interval = chosen.get("latency_interval_ms")
    span = f" (interval {interval[0]:.1f}-{interval[1]:.1f} ms)" if interval else ""
    notes = [f"The p90 latency was {SOURCES.get(source, source)}{span}."]
    if source != "measured-device":
        notes.append("Time the bundle on the device (`edge-distill profile`) before relying on the latency.")
    memory = chosen.get("memory_source")
    if memory:
        notes.append(f"Peak memory: {memory}.")
    data = (report.get("data") or {}).get("name", "the run's data")
    notes.append(f"The metrics are on the test split of `{data}` only; other data may score differently.")
    if chosen.get("precision") not in (None, "fp32"):
        notes.append(f"{chosen['precision']} weights: outputs differ slightly from the fp32 student.")
    return "## Limitations\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"
