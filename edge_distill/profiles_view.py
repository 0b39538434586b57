"""Profiles as a person reads them: the `edge-distill profiles` table and one profile in detail.

Example:
    >>> Console().print(profiles_table(available_profiles()))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from edge_distill.profiles import FIGURES, DeviceProfile


def profiles_table(profiles: Sequence[DeviceProfile]) -> Table:
    """A table of profiles for ``edge-distill profiles``.

    Example:
        >>> profiles_table(available_profiles()).row_count > 0
        True
    """
    table = Table(title="Device profiles (`edge-distill profiles show NAME` for sources)")
    for column in ("name", "aliases", "cpu", "RAM", "fp32 GFLOPS", "budget p90 / mem / size", "targets"):
        table.add_column(column)
    for p in profiles:
        fp32 = p.throughput_for("fp32")
        speed = "measured at run time" if p.measured else f"{fp32.gflops:g}" if fp32 else "n/p"
        cpu = f"{p.cores}× {p.arch}" + (f" @ {p.clock_ghz:g} GHz" if p.clock_ghz else "")
        budget = f"{p.budget.latency_ms:g} ms / {p.budget.memory_mb:g} MB / {p.budget.size_mb:g} MB"
        row = (p.name, ", ".join(p.aliases), cpu, f"{p.ram_mb} MB", speed, budget, ", ".join(p.targets))
        table.add_row(*row)
    return table


def _figures_table(p: DeviceProfile) -> Table:
    table = Table("figure", "value", "source", title="Hardware")
    for name in FIGURES:
        value = getattr(p, name)
        table.add_row(name, "n/p" if value is None else str(value), p.sources.get(name, "n/p"))
    return table


def _throughput_table(p: DeviceProfile) -> RenderableType:
    if p.measured:
        return Text("Throughput: measured on this host at run time.")
    columns = ("runtime", "precision", "threads", "GFLOPS", "reference", "source")
    table = Table(*columns, title="Effective throughput")
    for t in p.throughput:
        table.add_row(t.runtime, t.precision, str(t.threads or "n/s"), f"{t.gflops:g}", t.reference, t.source)
    return table


def profile_detail(profile: DeviceProfile) -> RenderableType:
    """Every figure of one profile with its source, for ``edge-distill profiles show NAME``.

    Example:
        >>> from rich.console import Console
        >>> Console(width=200).print(profile_detail(load_profile("stm32h7")))  # doctest: +SKIP
    """
    p = profile
    budget = Table("budget", "value", "source", title="Default budget")
    for key, entry in p.budget.as_dict().items():
        value = "not set" if entry["value"] is None else f"{entry['value']:g}"
        budget.add_row(key, value, entry["source"])
    header = Text.assemble((p.name, "bold"), f" ({', '.join(p.aliases) or 'no aliases'}): {p.description}")
    facts = f"targets: {', '.join(p.targets)}; inputs: sequence_length {p.sequence_length}, "
    facts += f"image_size {p.image_size}; file: {p.path}"
    reason = Text(f"Why this budget: {p.budget_reason or 'n/a'}")
    return Group(header, Text(facts), _figures_table(p), _throughput_table(p), budget, reason)
