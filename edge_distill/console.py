"""What a person sees in the terminal: status lines and progress bars, with rich.

Example:
    >>> reporter = ConsoleReporter(Console())   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edge_distill.loop import Reporter, StepCallback


class ConsoleReporter(Reporter):
    """Prints the loop's status lines and draws a progress bar with ETA and loss components."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    @contextmanager
    def steps(self, description: str, total: int) -> Iterator[StepCallback]:
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


def rounds_table(report: dict[str, Any]) -> Table:
    """The closing table: one row per round."""
    table = Table(title="Rounds", title_justify="left")
    for column in (
        "round",
        "student",
        "params",
        "accuracy",
        "retention",
        "p90 ms",
        "memory MB",
        "size MB",
        "fits",
    ):
        table.add_column(column, justify="right" if column not in ("student", "fits") else "left")
    for r in report["rounds"]:
        student = r["student"]
        table.add_row(
            str(r["round"]),
            f"{student['layers']} x {student['hidden']}",
            f"{student['params'] / 1e6:.1f}M",
            f"{r['metric']['value']:.3f}",
            f"{r['retention']:.1%}" if r["retention"] is not None else "-",
            f"{r['latency_ms']['p90']:.1f} ({r['latency_source']})",
            f"{r['peak_memory_mb']:.0f}",
            f"{r['size_mb']:.1f}",
            "yes" if r["fits"] else "no: " + ", ".join(m["budget"] for m in r["misses"]),
        )
    return table
