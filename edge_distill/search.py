"""What the budget loop tries next: the cheap levers first, then a smaller or a larger student.

Every (student shape, target, precision) is an option with a predicted cost (``planner.predict``) and a
predicted accuracy (``Accuracy``). The loop takes, in order:

1. a *lower precision* (or another target) of a student already distilled, predicted to fit every budget
   and to keep the accuracy floor: an export, no training;
2. else the untrained shape with the best predicted accuracy among those predicted to fit, at its best
   target and precision: *shrink* when it is smaller than a student that missed, *grow* when it is larger
   than one that fit with room to spare but missed the floor, *distill* for the first.

A measured miss sets a ceiling for that target and precision (a student at least as costly on the missed
axis is not tried there again); every measurement recalibrates the predictions.

Example:
    >>> action = next_action(state)  # doctest: +SKIP
    >>> action.kind, action.option.label, action.why  # doctest: +SKIP
    ('lower-precision', 'onnx int8', 'round 1 missed p90 latency by 12%; int8 is predicted to fit ...')
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_distill.cost import LatencyModel
from edge_distill.planner import Candidate, Miss, Option, misses, predict
from edge_distill.profiles import Budget
from edge_distill.students import StudentSpec

# Accuracy a lower precision is expected to cost before it is measured (points of retention): the usual
# drop of post-training quantization on transformer classifiers, refined by each measurement.
PRECISION_PENALTY = {"fp32": 0.0, "fp16": 0.001, "int8-dynamic": 0.01, "int8": 0.01, "palettized": 0.02}
# Retention lost per e-fold fewer FLOPs than the teacher, before any student is measured (DistilBERT keeps
# 97% at half the FLOPs; TinyBERT-4 about 96% at a ninth): refitted on every measured round. FLOPs, not
# parameters: a vocabulary trimmed to the data's tokens costs parameters but no accuracy, and no FLOPs.
PRIOR_LOSS_PER_EFOLD = 0.02
SLACK = 0.5  # a fitting student using at most half of every budget leaves room to grow


@dataclass
class Accuracy:
    """Predicted retention of a student at a precision, from what this run has measured so far."""

    teacher_flops: int
    measured: dict[tuple[StudentSpec, str], float] = field(default_factory=dict)  # (spec, precision)
    flops: dict[StudentSpec, int] = field(default_factory=dict)

    def observe(self, candidate: Candidate, precision: str, retention: float | None) -> None:
        if retention is not None and math.isfinite(retention):
            self.measured[(candidate.spec, precision)] = retention
            self.flops[candidate.spec] = candidate.flops

    def loss_per_efold(self) -> float:
        """Retention lost per e-fold of compression, fitted on the fp32 students measured (prior before)."""
        slopes = []
        for (spec, precision), retention in self.measured.items():
            folds = math.log(self.teacher_flops / max(self.flops.get(spec, 1), 1))
            if precision == "fp32" and folds > 0.05:
                slopes.append(max(0.0, 1.0 - min(retention, 1.0)) / folds)
        return statistics.median(slopes) if slopes else PRIOR_LOSS_PER_EFOLD

    def predict(self, candidate: Candidate, precision: str) -> float:
        spec = candidate.spec
        if (spec, precision) in self.measured:
            return self.measured[(spec, precision)]
        if (spec, "fp32") in self.measured:
            return self.measured[(spec, "fp32")] - PRECISION_PENALTY.get(precision, 0.02)
        folds = math.log(max(self.teacher_flops, 1) / max(candidate.flops, 1))
        return 1.0 - self.loss_per_efold() * max(folds, 0.0) - PRECISION_PENALTY.get(precision, 0.02)


@dataclass(frozen=True)
class Action:
    """One round of the loop: a student to distil, or re-export, at a target and precision."""

    kind: str  # "distill", "lower-precision", "shrink" or "grow"
    candidate: Candidate
    option: Option
    why: str
    predicted: dict[str, Any]
    from_round: int | None = None  # lower-precision: the round whose trained student is exported


@dataclass
class Tried:
    """What the rounds so far did: trained shapes, measured pairs, misses and fitting rounds."""

    trained: dict[StudentSpec, int] = field(default_factory=dict)  # spec -> round that distilled it
    measured: set[tuple[StudentSpec, Option]] = field(default_factory=set)
    ceilings: dict[Option, dict[str, float]] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def add(self, spec: StudentSpec, option: Option, record: dict[str, Any], candidate: Candidate) -> None:
        """Record a finished round; a measured miss caps what is worth trying at its target and precision."""
        self.rounds.append(record)
        self.measured.add((spec, option))
        if record.get("action") != "lower-precision" and record.get("student_dir"):
            self.trained.setdefault(spec, record["round"])
        if record.get("error"):
            return
        missed = {m["budget"] for m in record["misses"]}
        caps = self.ceilings.setdefault(option, {})
        if "latency_ms" in missed:
            caps["flops"] = min(caps.get("flops", math.inf), candidate.flops)
        if missed & {"size_mb", "memory_mb"}:
            caps["params"] = min(caps.get("params", math.inf), candidate.params)

    def below_ceilings(self, candidate: Candidate, option: Option) -> bool:
        caps = self.ceilings.get(option, {})
        return candidate.flops < caps.get("flops", math.inf) and candidate.params < caps.get(
            "params", math.inf
        )


@dataclass
class Search:
    """The loop's decision state: candidates, options, latency models, accuracy, budget, rounds."""

    candidates: Sequence[Candidate]
    options: Sequence[Option]
    latencies: dict[Option, LatencyModel]
    accuracy: Accuracy
    budget: Budget
    tried: Tried = field(default_factory=Tried)

    def forecast(self, candidate: Candidate, option: Option) -> dict[str, Any]:
        """Predicted cost and retention of ``candidate`` shipped as ``option``."""
        latency = self.latencies[option]
        predicted = predict(candidate, latency, option.precision)
        if latency.exact(candidate.flops, candidate.params) is None:  # the format's overhead, as measured
            predicted["size_mb"] += size_overhead(self.latencies, option)
        return {**predicted, "retention": self.accuracy.predict(candidate, option.precision)}

    def fits(self, forecast: dict[str, Any]) -> bool:
        """Predicted within every resource budget (the floors are judged by the ranking, not here)."""
        return not [m for m in misses(forecast, self.budget) if not m.floor]

    def best_fitting(self) -> float:
        """The best retention measured on a student that fits every resource budget (-inf: none yet)."""
        kept = [
            r["retention"] for r in self.tried.rounds if r.get("fits_budget") and r["retention"] is not None
        ]
        return max(kept, default=-math.inf)

    def next_action(self) -> Action | None:
        """The next round, or None when no untried option is predicted to fit and to beat what fits."""
        cheap, fresh, bar = self._cheap_lever(), self._new_student(), self.best_fitting()
        cheap = cheap if cheap is not None and cheap.predicted["retention"] > bar else None
        fresh = fresh if fresh is not None and fresh.predicted["retention"] > bar else None
        if cheap is not None and cheap.predicted["retention"] >= self.budget.min_retention:
            return cheap
        if fresh is None or (
            cheap is not None and cheap.predicted["retention"] >= fresh.predicted["retention"]
        ):
            return cheap
        return fresh

    def _cheap_lever(self) -> Action | None:
        """The best re-export of an already distilled student that is predicted to fit."""
        best: tuple[tuple[float, float], Action] | None = None
        by_spec = {c.spec: c for c in self.candidates}
        for spec, index in self.tried.trained.items():
            candidate = by_spec[spec]
            for option in self.options:
                if (spec, option) in self.tried.measured or not self.tried.below_ceilings(candidate, option):
                    continue
                forecast = self.forecast(candidate, option)
                if not self.fits(forecast):
                    continue
                key = (forecast["retention"], -forecast["latency_ms"])
                if best is None or key > best[0]:
                    why = self._lever_why(index, option, forecast)
                    best = (key, Action("lower-precision", candidate, option, why, forecast, index))
        return best[1] if best else None

    def _new_student(self) -> Action | None:
        """The untrained shape with the best predicted accuracy among those predicted to fit."""
        best: tuple[tuple[float, int, float], Candidate, Option, dict[str, Any]] | None = None
        for candidate in self.candidates:
            if candidate.spec in self.tried.trained:
                continue
            for option in self.options:
                if not self.tried.below_ceilings(candidate, option):
                    continue
                forecast = self.forecast(candidate, option)
                if not self.fits(forecast):
                    continue
                key = (round(forecast["retention"], 4), candidate.params, -forecast["latency_ms"])
                if best is None or key > best[0]:
                    best = (key, candidate, option, forecast)
        if best is None:
            return None
        _, candidate, option, forecast = best
        kind, why = self._student_why(candidate, option, forecast)
        return Action(kind, candidate, option, why, forecast)

    def _lever_why(self, index: int, option: Option, forecast: dict[str, Any]) -> str:
        record = next(r for r in self.tried.rounds if r["round"] == index)
        missed = "; ".join(record.get("miss_sentences", [])) or "it fit"
        return (
            f"cheaper than retraining: round {index}'s student as {option.label} is predicted to fit "
            f"(p90 {forecast['latency_ms']:.1f} ms, {forecast['size_mb']:.1f} MB, retention "
            f"{forecast['retention']:.1%}); round {index}: {missed}"
        )

    def _student_why(self, candidate: Candidate, option: Option, forecast: dict[str, Any]) -> tuple[str, str]:
        figures = (
            f"{option.label} predicted p90 {forecast['latency_ms']:.1f} ms, {forecast['size_mb']:.1f} MB, "
            f"retention {forecast['retention']:.1%}"
        )
        fitting = [r for r in self.tried.rounds if r.get("fits_budget")]
        if any(r["student"]["params"] < candidate.params for r in fitting):
            low = max(fitting, key=lambda r: r["student"]["params"])
            return "grow", (
                f"round {low['round']} fits using {slack_text(low)} of the budget but retains "
                f"{low['retention']:.1%}, under the {self.budget.min_retention:.0%} floor: "
                f"a larger student ({figures})"
            )
        if self.tried.rounds:
            return (
                "shrink",
                f"no distilled student fits at any target or precision: a smaller one ({figures})",
            )
        return "distill", f"the best predicted accuracy of the students predicted to fit ({figures})"

    def closest_miss(self) -> tuple[Candidate, Option, list[Miss]]:
        """The (student, option) that misses the resource budgets by the least, for "nothing fits"."""

        def badness(pair: tuple[Candidate, Option]) -> float:
            found = [m for m in misses(self.forecast(*pair), self.budget) if not m.floor]
            return sum(m.value / m.limit for m in found)

        pairs = [(c, o) for c in self.candidates for o in self.options]
        candidate, option = min(pairs, key=badness)
        found = [m for m in misses(self.forecast(candidate, option), self.budget) if not m.floor]
        return candidate, option, found


def size_overhead(latencies: dict[Option, LatencyModel], option: Option) -> float:
    """An artifact's bytes beyond its weights (the graph, metadata), in MB: measured at this target
    (median over its precisions), else at any target, else 0 before the first export is measured."""
    from edge_distill.cost import artifact_mb

    def extra(models: list[tuple[Option, LatencyModel]]) -> list[float]:
        return [
            m.size_mb - artifact_mb(m.params, o.precision)
            for o, model in models
            for m in model.measurements
            if m.params
        ]

    own = extra([(o, m) for o, m in latencies.items() if o.target == option.target])
    found = own or extra(list(latencies.items()))
    return max(0.0, statistics.median(found)) if found else 0.0


def slack_text(record: dict[str, Any]) -> str:
    """How much of its tightest resource budget a round used, e.g. '42%'."""
    return f"{record.get('budget_used', 1.0):.0%}"


def budget_used(values: dict[str, Any], budget: Budget) -> float:
    """The largest share of a resource budget used (latency, memory, size); unknown memory is skipped."""
    used = [values["latency_ms"] / budget.latency_ms, values["size_mb"] / budget.size_mb]
    memory = values.get("memory_mb")
    if memory is not None and math.isfinite(memory):
        used.append(memory / budget.memory_mb)
    return max(used)
