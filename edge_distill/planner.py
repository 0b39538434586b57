"""Costing candidate students against a budget (``edge_distill.search`` picks the next one to try).

Example:
    >>> candidates = cost_candidates(Cutter(teacher.model, family), seq_len=128)   # doctest: +SKIP
    >>> predict(candidates[0], latency_model, "int8")["latency_ms"]       # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edge_distill.cost import LatencyModel, artifact_mb
from edge_distill.predictor import BYTES_PER_WEIGHT, Features, model_features
from edge_distill.students import StudentSpec

if TYPE_CHECKING:
    from edge_distill.cut import Cutter
    from edge_distill.profiles import Budget

BUDGET_UNITS = {
    "latency_ms": "ms",
    "memory_mb": "MB",
    "size_mb": "MB",
    "retention": "",
    "accelerator_share": "",
}
BUDGET_NAMES = {"latency_ms": "p90 latency", "memory_mb": "memory", "size_mb": "size"}
BUDGET_NAMES |= {"retention": "retention", "accelerator_share": "share of ops on the accelerator"}
FLOORS = {"retention": "min_retention", "accelerator_share": "accelerator_share"}  # value -> budget key


@dataclass(frozen=True, order=True)
class Option:
    """A way to ship a student: a target at a precision."""

    target: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.target} {self.precision}"


@dataclass(frozen=True)
class Candidate:
    """A student shape with what it costs, independent of the device."""

    spec: StudentSpec
    params: int
    flops: int
    features: Features | None = None  # FLOPs and bytes moved: what the predictor predicts from

    @property
    def size_mb(self) -> float:
        return artifact_mb(self.params)

    def size_at(self, precision: str) -> float:
        return artifact_mb(self.params, precision)

    def cost_at(self, precision: str) -> Features:
        """Its cost with the weights stored (and read) at ``precision``."""
        cost, scale = self.cost, BYTES_PER_WEIGHT[precision] / 4.0
        weights_read = cost.moved_bytes - cost.activation_bytes
        return replace(
            cost,
            weight_bytes=int(cost.weight_bytes * scale),
            moved_bytes=int(cost.activation_bytes + weights_read * scale),
        )

    @property
    def cost(self) -> Features:
        """Its counted cost; a candidate built without counts has its FLOPs and fp32 weights only."""
        if self.features is not None:
            return self.features
        return Features(self.flops, 0, int(self.size_mb * 2**20), 0, self.params)


@dataclass(frozen=True)
class Miss:
    """A budget a student (measured or predicted) goes over, or a floor it stays under."""

    budget: str
    value: float
    limit: float

    @property
    def floor(self) -> bool:
        return self.budget in FLOORS

    @property
    def sentence(self) -> str:
        name = BUDGET_NAMES[self.budget]
        if self.floor:
            gap, limit = self.limit - self.value, f"{self.limit:.1%}".replace(".0%", "%")
            value = f"{self.value:.1%}" if f"{self.value:.1%}" != f"{self.limit:.1%}" else f"{self.value:.2%}"
            by = f"{gap:.1%}" if gap >= 0.0005 else "less than 0.1%"
            return f"{name} {value} is under the {limit} floor by {by}"
        unit = BUDGET_UNITS[self.budget]
        over = self.value - self.limit
        return (
            f"{name} {self.value:.1f} {unit} is over the {self.limit:g} {unit} budget "
            f"by {over:.1f} {unit} ({over / self.limit:.0%})"
        )

    def as_dict(self) -> dict[str, object]:
        gap = self.limit - self.value if self.floor else self.value - self.limit
        return {
            "budget": self.budget,
            "value": round(self.value, 4 if self.floor else 3),
            "limit": self.limit,
            "under_by" if self.floor else "over_by": round(gap, 4 if self.floor else 3),
        }


def model_cost(model: torch.nn.Module, seq_len: int) -> Features:
    """FLOPs, bytes moved, weight bytes and params of a text model at batch 1 and ``seq_len`` tokens."""
    example = {
        "input_ids": torch.zeros(1, seq_len, dtype=torch.long),
        "attention_mask": torch.ones(1, seq_len, dtype=torch.long),
    }
    return model_features(model, example)


def cost_candidates(cutter: Cutter, *, seq_len: int, cache: Path | None = None) -> list[Candidate]:
    """Params and FLOPs of every student the cutter can build (depth, width and vocabulary mixed),
    largest first; each is built at random init, which is cheap and costs the same as trained.

    Counts depend on the shapes only, so with ``cache`` (a JSON file keyed by teacher, data and sequence
    length) a later run of the same job reads them instead of tracing every candidate again.
    """
    import json

    from edge_distill.atomic import write_json_atomic

    known = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    candidates, counted = [], {}
    for spec in cutter.space():
        key = json.dumps(spec.as_dict(), sort_keys=True)
        features = Features(**known[key]) if key in known else model_cost(cutter.untrained(spec), seq_len)
        counted[key] = features.as_dict()
        candidates.append(
            Candidate(spec=spec, params=features.params, flops=features.flops, features=features)
        )
    if cache is not None and counted != known:
        write_json_atomic(cache, counted)
    return candidates


def predict(candidate: Candidate, latency: LatencyModel, precision: str = "fp32") -> dict[str, Any]:
    """Device p90 latency, runtime memory and artifact size at ``precision`` (``latency`` is the model of
    the target at that precision): measured figures where this shape was timed there, else the calibrated
    prediction with its source and error interval."""
    probed = latency.exact(candidate.flops, candidate.params)
    if probed is not None:
        return {
            "latency_ms": latency.measured_ms(probed),
            "memory_mb": latency.measured_memory_mb(probed),
            "size_mb": probed.size_mb,
            "source": "measured" if probed.device_p90_ms is not None else "measured on this host",
        }
    return {**latency.predict(candidate.cost_at(precision)), "size_mb": candidate.size_at(precision)}


def misses(values: dict[str, Any], budget: Budget) -> list[Miss]:
    """The budgets ``values`` goes over, then the floors it stays under (a floor not measured: no miss)."""
    limits = {"latency_ms": budget.latency_ms, "memory_mb": budget.memory_mb, "size_mb": budget.size_mb}
    missed = [Miss(name, values[name], limit) for name, limit in limits.items() if values[name] > limit]
    for name, key in FLOORS.items():
        value, limit = values.get(name), getattr(budget, key)
        if value is not None and limit is not None and value < limit:
            missed.append(Miss(name, value, limit))
    return missed
