"""report.html: one self-contained page that says at a glance what a run found (schema 1 and 2 reports).

No external URL, stylesheet or script: the plots are inline SVG drawn by matplotlib (``Figure``, never
pyplot, so no global backend changes), and a small inline script marks ``<body data-rendered>`` "ok" once
every plot has laid out, which the headless-browser test reads back.

Example:
    >>> report = json.loads(Path("runs/raspberry-pi-4/report.json").read_text())  # doctest: +SKIP
    >>> write_html(Path("runs/raspberry-pi-4"), report)                          # doctest: +SKIP
    PosixPath('runs/raspberry-pi-4/report.html')
"""

from __future__ import annotations

import io
import json
import re
from html import escape
from pathlib import Path
from typing import Any

from edge_distill.atomic import write_bytes_atomic

COLOURS = {"onnx": "#1f77b4", "tflite": "#ff7f0e", "executorch": "#2ca02c",
           "executorch-coreml": "#d62728", "coreml": "#9467bd"}  # fmt: skip
MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "int8-dynamic": "v", "palettized": "D"}
BUDGET_LABELS = {"latency_ms": ("p90 latency", " ms"), "memory_mb": ("peak memory", " MB"),
                 "size_mb": ("size", " MB"), "min_retention": ("minimum retention", ""),
                 "accelerator_share": ("accelerator share", "")}  # fmt: skip
NA = "not reported"
CSS = """body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;margin-top:1.6em}
table{border-collapse:collapse;font-size:.92em}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left}
th{background:#f4f4f4}tr.chosen{background:#eaf6ea}.fits{color:#17702a}.misses{color:#a11}
#headline{padding:.6em 1em;border-radius:6px;background:#f4f4f4}figure{margin:1em 0}
figure.plot svg{max-width:100%;height:auto}.plots{display:flex;flex-wrap:wrap;gap:1em}
code{background:#f4f4f4;padding:0 .25em}.note{color:#555}"""
# Marks <body data-rendered> "ok" when every plot has a non-empty box and drawn content, else names the ones
# that did not; data-plots counts them. Read back by tests/test_report_html.py through headless Chromium.
CHECK_JS = """addEventListener("load",()=>{const bad=[],figs=document.querySelectorAll("figure.plot");
for(const f of figs){const s=f.querySelector("svg,img");let ok=!!s;if(ok){const r=s.getBoundingClientRect();
ok=r.width>0&&r.height>0;if(s.tagName.toLowerCase()==="svg"){const b=s.getBBox();
ok=ok&&b.width>0&&b.height>0&&s.querySelectorAll("path,use").length>0}else{ok=ok&&s.naturalWidth>0}}
if(!ok)bad.push(f.id)}document.body.dataset.plots=figs.length;
document.body.dataset.rendered=bad.length?"failed: "+bad.join(" "):"ok"});"""


def write_html(run_dir: Path, report: dict[str, Any]) -> Path:
    """Write ``run_dir/report.html`` atomically and return its path.

    Example:
        >>> write_html(Path("runs/pi"), report)  # doctest: +SKIP
        PosixPath('runs/pi/report.html')
    """
    path = Path(run_dir) / "report.html"
    write_bytes_atomic(path, render_html(report, Path(run_dir)).encode())
    return path


def render_html(report: dict[str, Any], run_dir: Path | None = None) -> str:
    """The page for ``report``; ``run_dir`` (when given) supplies each bundle's run command.

    Example:
        >>> page = render_html({"profile": {"name": "pi"}, "budget": {}, "teacher": {}, "rounds": [],
        ...                     "result": {"fits": False, "reason": "No student fits pi."}})
        >>> 'id="headline"' in page
        True
    """
    title = f"edge-distill: {report.get('profile', {}).get('name', '?')}"
    body = "".join(
        (headline(report), budget_section(report), plots_section(report), artifacts_section(report, run_dir),
         comparison_section(report), rounds_section(report))
    )  # fmt: skip
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>\n'
        f'<body data-rendered="pending">\n<h1>{escape(title)}</h1>\n{body}<script>{CHECK_JS}</script>'
        "\n</body></html>\n"
    )


# ---- text helpers --------------------------------------------------------------------------------


def fmt(value: Any, spec: str = ".1f", unit: str = "") -> str:
    """``value`` formatted, or "not reported" for None. ``fmt(41.234, unit=" ms")`` is "41.2 ms"."""
    if value is None:
        return NA
    return f"{value:{spec}}{unit}" if isinstance(value, int | float) else f"{value}{unit}"


def metric_text(metric: dict[str, Any] | None) -> str:
    """``accuracy 0.9731`` (perplexity with 2 decimals)."""
    if not metric or metric.get("value") is None:
        return NA
    spec = ".2f" if metric.get("name") == "perplexity" else ".4f"
    return f"{metric.get('name', 'metric')} {metric['value']:{spec}}"


def student_label(student: dict[str, Any] | None) -> str:
    """``5 layers x 288 hidden, 6 heads`` (and the trimmed vocabulary, if any)."""
    if not student:
        return NA
    s = student
    vocab = f", vocab {s['vocab']:,}" if s.get("vocab") else ""
    return f"{s.get('layers')} layers x {s.get('hidden')} hidden, {s.get('heads')} heads{vocab}"


def chosen_round(report: dict[str, Any]) -> dict[str, Any] | None:
    """The round ``result.round`` names, or None when nothing fits."""
    number = report.get("result", {}).get("round")
    return next((r for r in report.get("rounds", []) if r.get("round") == number), None)


def p90_text(entry: dict[str, Any]) -> str:
    """``41.2 ms (predicted, 35.0-47.4 ms)``: the p90, where it came from and its interval if predicted."""
    p90 = (entry.get("latency_ms") or {}).get("p90")
    interval = entry.get("latency_interval_ms")
    span = f", {interval[0]:.1f}-{interval[1]:.1f} ms" if interval else ""
    source = entry.get("latency_source")
    return fmt(p90, unit=" ms") + (f" ({source}{span})" if source else "")


def ratio(teacher: Any, student: Any) -> float | None:
    """teacher / student, or None when either is missing or zero."""
    return teacher / student if teacher and student else None


def table(headers: list[str], rows: list[list[str]], row_attrs: list[str] | None = None) -> str:
    """An HTML table of already escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    attrs = row_attrs or [""] * len(rows)
    body = "".join(
        f"<tr{a}>{''.join(f'<td>{c}</td>' for c in row)}</tr>" for row, a in zip(rows, attrs, strict=True)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


# ---- sections ------------------------------------------------------------------------------------


def headline(report: dict[str, Any]) -> str:
    """Fits or not; the chosen student, target and precision with its key figures; or why nothing fits."""
    result, chosen = report.get("result", {}), chosen_round(report)
    profile = escape(report.get("profile", {}).get("name", "?"))
    if not result.get("fits") or chosen is None:
        reason = escape(result.get("reason") or "No student fits this profile.")
        return (f'<section id="headline" data-fits="false"><p class="misses"><strong>Nothing fits '
                f"{profile}.</strong></p><p>{reason}</p></section>\n")  # fmt: skip
    teacher = report.get("teacher", {})
    target = escape(f"{chosen.get('target')} {chosen.get('precision')}")
    faster = ratio((teacher.get("latency_ms") or {}).get("p90"), (chosen.get("latency_ms") or {}).get("p90"))
    memory = fmt(chosen.get("peak_memory_mb"), unit=" MB")
    figures = [
        f'p90 <span id="chosen-p90">{escape(p90_text(chosen))}</span>',
        f'size <span id="chosen-size">{escape(fmt(chosen.get("size_mb"), unit=" MB"))}</span>',
        f'peak memory <span id="chosen-memory">{escape(memory)}</span>',
        f'<span id="chosen-metric">{escape(metric_text(chosen.get("metric")))}</span>',
        f"retention {escape(fmt(chosen.get('retention'), '.1%'))}",
        f"{escape(fmt(faster, '.1f', 'x'))} faster than the teacher",
    ]
    return (
        f'<section id="headline" data-fits="true" data-round="{chosen["round"]}"><p class="fits"><strong>'
        f"Fits {profile}:</strong> round {chosen['round']}, {escape(student_label(chosen.get('student')))}, "
        f"on {target}.</p><p>{' &middot; '.join(figures)}</p></section>\n"
    )


def budget_section(report: dict[str, Any]) -> str:
    """Each budget value with where it came from, then the profile and why its budget is what it is."""
    rows = []
    for key, entry in report.get("budget", {}).items():
        label, unit = BUDGET_LABELS.get(key, (key, ""))
        value = entry.get("value")
        shown = fmt(value, ".0%") if key in ("min_retention", "accelerator_share") else fmt(value, "g", unit)
        shown = "none" if value is None else shown
        cell = f'<span id="budget-{escape(key)}" data-value="{escape(str(value))}">{escape(shown)}</span>'
        rows.append([escape(label), cell, escape(str(entry.get("source", "")))])
    profile = report.get("profile", {})
    why, name = profile.get("budget_reason"), escape(profile.get("name", "?"))
    return (
        f'<section id="budget"><h2>Budget</h2>{table(["budget", "value", "source"], rows)}'
        f"<p><strong>{name}</strong>: {escape(profile.get('description', ''))}</p>"
        + (f'<p id="budget-reason">{escape(why)}</p>' if why else "")
        + "</section>\n"
    )


def plots_section(report: dict[str, Any]) -> str:
    """The three plots, each a ``<figure class="plot">`` with a stable id; a note without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the report must still be written: the run's results matter more than its pictures
        note = "The plots need matplotlib (pip install matplotlib); the tables below have every figure."
        return f'<section id="plots"><h2>Plots</h2><p class="note" id="plots-missing">{note}</p></section>\n'
    share, floor = (report.get("budget", {}).get("min_retention") or {}).get("value"), floor_value(report)
    floor = f"the floor, {floor:.4g} (retention {share:.0%})" if floor is not None else "no retention floor"
    figures = [
        ("plot-accuracy-latency", accuracy_latency_figure(report),
         f"Test metric vs p90 latency per round (R = round); dashed: the latency budget; dotted: {floor}."),
        ("plot-size", bar_figure(report, "size_mb", "size_mb", "size (MB)"), "Artifact size vs the budget."),
        ("plot-memory", bar_figure(report, "peak_memory_mb", "memory_mb", "peak memory (MB)"),
         "Peak memory vs the budget."),
    ]  # fmt: skip
    body = "".join(
        f'<figure class="plot" id="{pid}">{svg(fig, pid)}<figcaption>{escape(caption)}</figcaption></figure>'
        for pid, fig, caption in figures
    )
    return f'<section id="plots"><h2>Plots</h2><div class="plots">{body}</div></section>\n'


def svg(fig: Any, prefix: str) -> str:
    """``fig`` as inline SVG: no XML prolog or metadata, ids prefixed so that several plots share a page."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):  # text stays text
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg") :], flags=re.S)
    return re.sub(r'(id="|href="#|url\(#)', rf"\g<1>{prefix}-", text)


def floor_value(report: dict[str, Any]) -> float | None:
    """The metric the student must reach: teacher x min_retention (teacher / min_retention for perplexity,
    whose retention is teacher / student)."""
    share = (report.get("budget", {}).get("min_retention") or {}).get("value")
    metric = report.get("teacher", {}).get("metric") or {}
    if share is None or metric.get("value") is None:
        return None
    return metric["value"] / share if metric.get("name") == "perplexity" else metric["value"] * share


def metric_axis(report: dict[str, Any]) -> str:
    """The y label: the metric's name, and which way is better when lower is."""
    names = [(r.get("metric") or {}).get("name") for r in report.get("rounds", [])]
    name = (report.get("teacher", {}).get("metric") or {}).get("name") or next(filter(None, names), "metric")
    return f"test {name} (lower is better)" if name == "perplexity" else f"test {name} (higher is better)"


def accuracy_latency_figure(report: dict[str, Any]) -> Any:
    """Metric vs p90 latency: a colour per target, a marker per precision, intervals as error bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.4))
    ax = fig.subplots()
    chosen = report.get("result", {}).get("round")
    for r in report.get("rounds", []):
        x, y = (r.get("latency_ms") or {}).get("p90"), (r.get("metric") or {}).get("value")
        if x is None or y is None:
            continue
        low, high = r.get("latency_interval_ms") or (x, x)
        edge = "black" if r.get("round") == chosen else "none"  # the chosen round is ringed
        ax.errorbar(x, y, xerr=[[x - low], [high - x]], fmt=MARKERS.get(r.get("precision"), "P"), ms=9,
                    color=colour(r.get("target")), capsize=3, mec=edge, mew=2)  # fmt: skip
        ax.annotate(f"R{r.get('round')}", (x, y), xytext=(6, 5), textcoords="offset points", fontsize=9)
    draw_references(ax, report)
    ax.margins(x=0.08, y=0.15)  # room for the round labels at the edges
    ax.legend(
        handles=legend_handles(report), loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False
    )
    ax.set_xlabel(f"p90 latency (ms) on {report.get('profile', {}).get('name', 'the device')}")
    ax.set_ylabel(metric_axis(report))
    ax.grid(alpha=0.3)
    return fig


def draw_references(ax: Any, report: dict[str, Any]) -> None:
    """The teacher (a star), the latency budget (vertical, dashed) and the retention floor (dotted)."""
    teacher = report.get("teacher", {})
    tx, ty = (teacher.get("latency_ms") or {}).get("p90"), (teacher.get("metric") or {}).get("value")
    if tx is not None and ty is not None:
        ax.plot([tx], [ty], marker="*", ms=16, color="black", ls="none")
        ax.annotate("teacher", (tx, ty), xytext=(-8, -14), textcoords="offset points", fontsize=9, ha="right")
    latency = (report.get("budget", {}).get("latency_ms") or {}).get("value")
    if latency is not None:
        ax.axvline(latency, color="#a11", ls="--", lw=1.2)
    floor = floor_value(report)
    if floor is not None:
        ax.axhline(floor, color="#555", ls=":", lw=1.2)


def legend_handles(report: dict[str, Any]) -> list[Any]:
    """Targets (colours) and precisions (markers) that occur, then the teacher and the two limit lines."""
    from matplotlib.lines import Line2D

    rounds = report.get("rounds", [])
    targets = dict.fromkeys(r.get("target") for r in rounds)
    precisions = dict.fromkeys(r.get("precision") for r in rounds)
    handles = [Line2D([], [], ls="none", marker="s", ms=8, color=colour(t), label=str(t)) for t in targets]
    handles += [Line2D([], [], ls="none", marker=MARKERS.get(p, "P"), ms=7, color="#777", label=str(p))
                for p in precisions]  # fmt: skip
    handles += [Line2D([], [], ls="none", marker="*", ms=11, color="black", label="teacher"),
                Line2D([], [], color="#a11", ls="--", label="latency budget"),
                Line2D([], [], color="#555", ls=":", label="retention floor")]  # fmt: skip
    return handles


def colour(target: str | None) -> str:
    return COLOURS.get(target or "", "#8c564b")


def bar_figure(report: dict[str, Any], key: str, budget_key: str, label: str) -> Any:
    """One bar per round (and the teacher) against the budget line; a missing value says "not reported"."""
    from matplotlib.figure import Figure

    rounds = report.get("rounds", [])
    names = ["teacher"] + [f"R{r.get('round')}" for r in rounds]
    values = [report.get("teacher", {}).get(key)] + [r.get(key) for r in rounds]
    fig = Figure(figsize=(max(3.6, 0.8 * len(names) + 1.6), 3.4))
    ax = fig.subplots()
    colours = ["#444"] + [colour(r.get("target")) for r in rounds]  # the teacher in dark grey
    ax.bar(range(len(names)), [v or 0 for v in values], color=colours)
    for x, value in enumerate(values):
        text = NA if value is None else f"{value:.1f}"
        ax.annotate(text, (x, value or 0), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8, rotation=90 if value is None else 0)  # fmt: skip
    limit = (report.get("budget", {}).get(budget_key) or {}).get("value")
    if limit is not None:
        ax.axhline(limit, color="#a11", ls="--", lw=1.2, label=f"budget {limit:g} MB")
        ax.legend(fontsize=8, frameon=False, loc="upper right")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(label)
    ax.set_ylim(0, max([v for v in [*values, limit] if v is not None] or [1]) * 1.18)
    return fig


def artifacts_section(report: dict[str, Any], run_dir: Path | None) -> str:
    """Every shipped bundle: path, size, verification and how to run it; and the Hugging Face folder."""
    result = report.get("result", {})
    bundles = result.get("artifacts") or (
        [{"path": result["artifact"], "target": "", "precision": ""}] if result.get("artifact") else []
    )
    if not bundles:
        return '<section id="artifacts"><h2>Artifacts</h2><p>No artifact was shipped.</p></section>\n'
    rows, attrs = [], []
    for bundle in bundles:
        rows.append(bundle_row(bundle, run_dir))
        attrs.append(' class="chosen"' if bundle.get("path") == result.get("artifact") else "")
    student = escape(result.get("student") or "")
    loader = f"<code>{student}/</code> (<code>AutoModel*.from_pretrained(&quot;{student}&quot;)</code>)"
    hf = f"<p>The student in Hugging Face format: {loader}.</p>" if student else ""
    headers = ["target", "precision", "path", "size", "verification", "run it (in the bundle folder)"]
    return f'<section id="artifacts"><h2>Artifacts</h2>{table(headers, rows, attrs)}{hf}</section>\n'


def bundle_row(bundle: dict[str, Any], run_dir: Path | None) -> list[str]:
    """One table row for a shipped bundle (or the error that kept it from shipping)."""
    head = [escape(bundle.get("target", "")), escape(bundle.get("precision", ""))]
    if "error" in bundle:
        return [*head, "", "", f'<span class="misses">{escape(bundle["error"])}</span>', ""]
    diff = bundle.get("max_abs_diff")
    status = escape(
        bundle.get("verification", NA) + (f" (max |diff| {diff:.2g})" if diff is not None else "")
    )
    return [*head, f"<code>{escape(bundle['path'])}</code>", escape(fmt(bundle.get("size_mb"), ".2f", " MB")),
            status, f"<code>{escape(run_command(bundle['path'], run_dir))}</code>"]  # fmt: skip


def run_command(artifact: str, run_dir: Path | None) -> str:
    """The bundle's ``metadata.json`` "run" line when the run folder has it, else the runner's usual line."""
    folder = Path(artifact).parent
    if run_dir is not None:
        meta = Path(run_dir) / folder / "metadata.json"
        try:
            command = json.loads(meta.read_text()).get("run")
        except (OSError, ValueError):
            command = None
        if command:
            return f"cd {folder} && {command}"
    return f"cd {folder} && python runner.py {Path(artifact).name} --inputs inputs.npz --runs 50"


def comparison_section(report: dict[str, Any]) -> str:
    """Teacher and chosen student side by side, with the ratios."""
    teacher, chosen = report.get("teacher", {}), chosen_round(report) or {}
    t_p90, s_p90 = (teacher.get("latency_ms") or {}).get("p90"), (chosen.get("latency_ms") or {}).get("p90")
    rows = [
        compare(teacher.get("params"), (chosen.get("student") or {}).get("params"), ",", "", "x fewer"),
        compare(teacher.get("size_mb"), chosen.get("size_mb"), ".1f", " MB", "x smaller"),
        [p90_text(teacher), p90_text(chosen), fmt(ratio(t_p90, s_p90), ".1f", "x faster")],
        compare(teacher.get("peak_memory_mb"), chosen.get("peak_memory_mb"), ".1f", " MB", "x less"),
        [metric_text(teacher.get("metric")), metric_text(chosen.get("metric")), ""],
        ["", fmt(chosen.get("retention"), ".1%"), ""],
    ]
    labels = ["parameters", "size", "p90 latency", "peak memory", "metric", "retention"]
    cells = [[escape(c) for c in [label, *row]] for label, row in zip(labels, rows, strict=True)]
    title = "Teacher vs student" + ("" if chosen else " (no student fits)")
    body = table(["", "teacher", "student", "ratio"], cells)
    return f'<section id="teacher-vs-student"><h2>{title}</h2>{body}</section>\n'


def compare(teacher: Any, student: Any, spec: str, unit: str, word: str) -> list[str]:
    """[teacher, student, "3.2x fewer"] as text."""
    return [fmt(teacher, spec, unit), fmt(student, spec, unit), fmt(ratio(teacher, student), ".1f", word)]


def rounds_section(report: dict[str, Any]) -> str:
    """Every round in order; the chosen one highlighted, misses spelled out."""
    rounds, chosen = report.get("rounds", []), report.get("result", {}).get("round")
    if not rounds:
        return '<section id="rounds"><h2>Rounds</h2><p>No round was trained.</p></section>\n'
    headers = ["round", "action", "why", "student", "target", "precision", "metric", "retention", "p90",
               "memory", "size", "fits"]  # fmt: skip
    rows = [[escape(c) for c in round_cells(r)] for r in rounds]
    attrs = [' class="chosen"' if r.get("round") == chosen else "" for r in rounds]
    return f'<section id="rounds"><h2>Rounds</h2>{table(headers, rows, attrs)}</section>\n'


def round_cells(r: dict[str, Any]) -> list[str]:
    """One row of the rounds table, as plain text."""
    action = r.get("action") or "distill"
    if r.get("from_round") is not None:
        action += f" (of round {r['from_round']})"
    misses = "; ".join(
        r.get("miss_sentences")
        or [f"{m.get('budget')} over by {m.get('over_by')}" for m in r.get("misses", [])]
    )
    fits = "yes" if r.get("fits") else "no" + (f": {misses}" if misses else "")
    return [str(r.get("round")), action, r.get("why") or "", student_label(r.get("student")),
            r.get("target", ""), r.get("precision", ""), metric_text(r.get("metric")),
            fmt(r.get("retention"), ".1%"), p90_text(r), fmt(r.get("peak_memory_mb"), unit=" MB"),
            fmt(r.get("size_mb"), ".2f", " MB"), fits]  # fmt: skip
