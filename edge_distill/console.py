"""What a person sees in the terminal: status lines and progress bars, with rich.

Example:
    >>> reporter = ConsoleReporter(Console())   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from edge_distill.loop import Reporter, StepCallback
from edge_distill.students import StudentSpec


class ConsoleReporter(Reporter):
    """Prints the loop's status lines and draws a progress bar with ETA and loss components."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._task: tuple[Progress, TaskID, str] | None = None

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    @contextmanager
    def steps(self, description: str, total: int) -> Iterator[StepCallback]:
        if not self.console.is_terminal:  # no bars in logs and pipes: they would only leave blank lines
            yield lambda step, total, parts: None
            return
        progress = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"),
            console=self.console,
            transient=True,
        )
        with progress:
            task = progress.add_task(description, total=total, losses="")

            def on_step(step: int, total: int, parts: dict[str, float]) -> None:
                losses = " ".join(f"{k} {v:.3f}" for k, v in parts.items())
                progress.update(task, completed=step, losses=losses)

            yield on_step

    def progress(self, description: str, completed: int, total: int) -> None:
        if not self.console.is_terminal:
            return
        if self._task is None or self._task[2] != description:
            self._end_task()
            bar = Progress(
                TextColumn("  {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            bar.start()
            self._task = (bar, bar.add_task(description, total=total), description)
        bar, task, _ = self._task
        bar.update(task, completed=completed, total=total)
        if completed >= total:
            self._end_task()

    def _end_task(self) -> None:
        if self._task is not None:
            self._task[0].stop()
            self._task = None


METRIC_COLUMNS = {
    "accuracy": "acc",
    "probe accuracy": "probe",
    "cosine agreement": "cos",
    "perplexity": "ppl",
}
SHAPE = ("layers", "hidden", "heads", "intermediate", "vocab")


def rounds_table(report: dict[str, Any]) -> Table:
    """The closing table: one row per round (narrow enough for an 80-column terminal)."""
    rounds = report["rounds"]
    sources = sorted({r["latency_source"] for r in rounds if r.get("latency_source")})
    table = Table(
        title="Rounds", title_justify="left", caption=f"p90 latency: {', '.join(sources) or '-'}",
        box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0),
    )  # fmt: skip
    metric = METRIC_COLUMNS.get(rounds[0]["metric"]["name"], "metric") if rounds else "acc"
    for column in ("#", "student", "as", metric, "kept", "p90 ms", "mem MB", "MB"):
        table.add_column(column, justify="left" if column in ("student", "as") else "right", no_wrap=True)
    table.add_column("fits", min_width=9)
    for r in rounds:
        student = r["student"]
        shape = StudentSpec(**{k: student[k] for k in SHAPE if k in student}).short
        table.add_row(
            str(r["round"]),
            f"{shape} {student['params'] / 1e6:.1f}M",
            f"{TARGET_SHORT.get(r['target'], r['target'])} {r['precision'].replace('-dynamic', '-dyn')}",
            f"{r['metric']['value']:.3f}",
            f"{r['retention']:.1%}" if r["retention"] is not None else "-",
            f"{r['latency_ms']['p90']:.1f}" if r.get("latency_ms") else "-",
            f"{r['peak_memory_mb']:.0f}" if r.get("peak_memory_mb") is not None else "-",
            f"{r['size_mb']:.1f}" if r.get("size_mb") is not None else "-",
            fits_cell(r),
        )
    return table


TARGET_SHORT = {"executorch": "et", "executorch-coreml": "et-coreml", "tflite": "tflite", "onnx": "onnx"}


def fits_cell(r: dict[str, Any]) -> str:
    if r["fits"]:
        return "yes"
    if r.get("error"):
        return "not shipped"
    return "no: " + ", ".join(MISS_SHORT.get(m["budget"], m["budget"]) for m in r["misses"])


# A miss names the column it is in, so the table stays narrow enough for an 80-column terminal.
MISS_SHORT = {"latency_ms": "p90", "memory_mb": "mem", "size_mb": "MB", "retention": "kept"}
MISS_SHORT |= {"accelerator_share": "accel"}


def exports_table(results: list[dict[str, Any]], out: Any) -> Table:
    """One row per (target, precision): the file, its size, and how it was verified."""
    table = Table(title=f"Artifacts in {out}", title_justify="left")
    for name, justify in (
        ("target", "left"), ("precision", "left"), ("file", "left"), ("MB", "right"),
        ("parity", "left"), ("max abs diff", "right"), ("metric: student -> artifact", "left"),
    ):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        if "error" in r:
            table.add_row(r["target"], r["precision"], "-", "-", "[red]failed[/]", "-", "see below")
            continue
        v = r["verification"]
        diff = "-" if v["max_abs_diff"] is None else f"{v['max_abs_diff']:.2g}"
        metric = "-" if v["metric"] is None else (
            f"{v['metric']} {v['metric_pytorch']:.4f} -> {v['metric_artifact']:.4f}"
        )  # fmt: skip
        status = "[green]verified[/]" if v["status"] == "verified" else f"[yellow]{v['status']}[/]"
        table.add_row(r["target"], r["precision"], r["file"], f"{r['size_mb']:.2f}", status, diff, metric)
    return table
