"""The closing rounds table reads on an 80-column terminal: no word is cut, every round is one row."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from edge_distill.console import rounds_table


def round_record(index: int, misses: list[str], precision: str = "int8-dynamic") -> dict[str, Any]:
    return {
        "round": index,
        "student": {"layers": 3, "hidden": 384, "heads": 12, "intermediate": 1536, "params": 17_400_000},
        "target": "onnx",
        "precision": precision,
        "metric": {"name": "accuracy", "value": 0.85},
        "retention": 0.85,
        "latency_ms": {"p50": 40.0, "p90": 46.5},
        "latency_source": "predicted",
        "peak_memory_mb": 138.0,
        "size_mb": 66.6,
        "fits": not misses,
        "misses": [{"budget": name} for name in misses],
    }


def test_rounds_table_fits_80_columns_without_cutting_words() -> None:
    report = {
        "rounds": [
            round_record(1, ["retention"], "fp32"),
            round_record(2, ["retention", "latency_ms", "memory_mb"]),
            round_record(10, []),
        ]
    }
    console = Console(width=80, record=True, color_system=None)
    console.print(rounds_table(report))
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    text = "\n".join(lines)
    assert "…" not in text  # nothing is cropped
    assert "no: kept" in text and "yes" in text and "onnx int8-dyn" in text
    # Misses wrap between names, never inside one.
    cells = [line.split()[-1] for line in lines if line.strip()]
    assert not any(cell in ("retenti", "on") for cell in cells)
    assert "p90, mem" in text
