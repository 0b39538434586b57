"""A distillation objective: loss terms by name and weight, wired to the views of student and teacher.

A spec maps a term to a weight, or to ``{"weight": w, "loss": name, **options}``. Options the objective
reads itself (not passed to the loss): ``layers`` for feature and attention terms (``"uniform"``,
``"last"``, ``"first_last"``, or explicit ``[(student_path, teacher_path), ...]``) and ``on`` for
``relation`` (``"embedding"``, the default, or ``"logits"``). Response terms take their temperature from
the training settings unless given.

Example:
    >>> spec = {"kd": 0.5, "ce": 0.5, "hidden_mse": {"weight": 1.0, "layers": "uniform"}}
    >>> objective = Objective.build(spec, student, teacher, s_views, t_views)   # doctest: +SKIP
    >>> total, parts = objective(student_views, teacher_views, labels, mask)    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge_distill.errors import EdgeDistillError
from edge_distill.losses import LOSSES, create_loss
from edge_distill.taps import check_paths, map_layers
from edge_distill.views import Need, Views

RESPONSE = ("kd", "reverse_kd", "jsd", "logit_mse")
FEATURE = ("hidden_mse", "hidden_cosine")
ATTENTION = ("attention_kl", "attention_mse")
EMBEDDING = ("embedding_mse", "embedding_cosine")
TEMPERED = ("kd", "reverse_kd", "jsd")


class ObjectiveError(EdgeDistillError):
    """A loss spec the objective cannot wire: an unknown family, a missing view, bad layer pairs."""


def fold_student(logits: torch.Tensor, indices: torch.Tensor, temperature: float) -> torch.Tensor:
    """Student logits (..., V) folded onto the teacher's top-k (..., k) plus one bucket for the rest.

    Returns pseudo-logits ``T * log p`` over k + 1 buckets, so that a loss applying ``softmax(x / T)``
    sees exactly the folded distribution.
    """
    z = logits.float() / temperature
    total = z.logsumexp(-1, keepdim=True)  # (..., 1)
    top = z.gather(-1, indices.long())  # (..., k)
    rest = z.scatter(-1, indices.long(), float("-inf")).logsumexp(-1, keepdim=True)  # (..., 1)
    return temperature * (torch.cat([top, rest], -1) - total)


def fold_teacher(values: torch.Tensor, rest: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cached top-k logits (..., k) and the rest's logsumexp at T (...,) -> (..., k + 1) pseudo-logits."""
    z = torch.cat([values.float() / temperature, rest.float().unsqueeze(-1)], -1)
    return temperature * F.log_softmax(z, -1)


def _layer_index(path: str) -> int:
    tail = path.rsplit(".", 1)[-1]
    if not tail.isdigit():
        raise ObjectiveError(f"Attention terms need numbered encoder blocks; {path!r} has no layer index.")
    return int(tail)


def _pairs(option: Any, student: nn.Module, teacher: nn.Module | None) -> list[tuple[str, str]]:
    """Layer pairs from a strategy name or an explicit list, checked against ``named_modules()``."""
    if isinstance(option, str):
        if teacher is None:
            raise ObjectiveError("Layer strategies need the teacher model; pass explicit layer pairs.")
        return map_layers(teacher, student, strategy=option)
    pairs = [(str(s), str(t)) for s, t in (option.items() if isinstance(option, Mapping) else option)]
    check_paths(student, [s for s, _ in pairs])
    if teacher is not None:
        check_paths(teacher, [t for _, t in pairs])
    return pairs


class Term(nn.Module):
    """One named term: a loss (or one loss per layer pair) plus how to read its inputs from the views."""

    def __init__(self, name: str, family: str, losses: Sequence[nn.Module], **wiring: Any) -> None:
        super().__init__()
        self.name, self.family = name, family
        self.losses = nn.ModuleList(losses)
        self.pairs: list[tuple[str, str]] = wiring.get("pairs", [])
        self.on: str = wiring.get("on", "embedding")
        self.temperature: float = wiring.get("temperature", 1.0)

    def forward(
        self, s: Views, t: Views, labels: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        loss = self.losses[0]
        if self.family == "ce":
            if labels is None:
                raise ObjectiveError("The 'ce' term needs labels; drop it or give data with a labels column.")
            return loss(s.logits, labels)
        if self.family in RESPONSE:
            return loss(*_real_positions(*self._response(s, t), mask))
        if self.family in EMBEDDING:
            return loss(s.embedding, t.embedding)
        if self.family == "relation":
            return loss(*((s.logits, t.logits) if self.on == "logits" else (s.embedding, t.embedding)))
        values = []
        for pair_loss, (sp, tp) in zip(self.losses, self.pairs, strict=True):
            if self.family in FEATURE:
                raw_s, raw_t = s.hidden[sp], t.hidden[tp]
                spatial = raw_s.dim() == 4 or raw_t.dim() == 4  # image positions: the token mask is moot
                values.append(
                    pair_loss(feature_tokens(raw_s), feature_tokens(raw_t), None if spatial else mask)
                )
            else:
                values.append(pair_loss(s.attentions[_layer_index(sp)], t.attentions[_layer_index(tp)], mask))
        return torch.stack(values).mean()

    def _response(self, s: Views, t: Views) -> tuple[torch.Tensor, torch.Tensor]:
        if t.topk is None:
            return s.logits, t.logits
        values, indices, rest = t.topk
        if self.family == "logit_mse":  # raw logits at the teacher's top-k positions
            return s.logits.float().gather(-1, indices.long()), values.float()
        temperature = self.temperature
        if t.topk_temperature != temperature:
            raise ObjectiveError(
                f"Term {self.name!r} uses temperature {temperature} but the cached top-k teacher outputs "
                f"were folded at {t.topk_temperature}; use the same temperature or recompute the cache."
            )
        return fold_student(s.logits, indices, temperature), fold_teacher(values, rest, temperature)


def _real_positions(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token logits (batch, seq, classes) keep only the real (unmasked) positions: (tokens, classes).

    Padding must not count: a language model's distributions at pad positions are noise, and averaging
    over them would dilute the per-token divergence by the padding share. Per-example logits pass as is.
    """
    if student.dim() != 3 or mask is None or mask.shape != student.shape[:2]:
        return student, teacher
    keep = mask.bool()
    return student[keep], teacher[keep]


def check_spec(spec: Mapping[str, Any]) -> None:
    """Validate a loss spec before any model is loaded: known losses, numeric weights, accepted options.

    Example:
        >>> check_spec({"kd": 0.5, "ce": 0.5})
    """
    if not spec:
        raise ObjectiveError("No loss terms given; pass at least one, e.g. losses={'kd': 1.0}.")
    for name, entry in spec.items():
        _, family, options = _entry(name, entry)
        for wiring in ("layers", "on"):
            options.pop(wiring, None)
        if family in TEMPERED:
            options.setdefault("temperature", 1.0)
        if family in FEATURE + EMBEDDING:
            options.update(student_dim=None, teacher_dim=None)
        _create(family, options)


def _entry(name: str, entry: float | Mapping[str, Any]) -> tuple[float, str, dict[str, Any]]:
    """One spec entry -> (weight, loss family, the loss's own options and the wiring options)."""
    options = dict(entry) if isinstance(entry, Mapping) else {"weight": entry}
    weight = options.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ObjectiveError(f"Loss term {name!r}: weight must be a number, got {weight!r}.")
    family = _family(name, options)
    options.pop("loss", None)
    return float(weight), family, options


def _family(name: str, options: dict[str, Any]) -> str:
    family = options.get("loss", name)
    try:
        LOSSES.get(family)
    except KeyError as exc:  # the registry's message lists the valid names and the closest one
        raise ObjectiveError(f"Loss term {name!r}: {exc.args[0]}") from exc
    return family


class Objective(nn.Module):
    """The weighted terms of one distillation, with what each side must show (``student_need``...)."""

    def __init__(
        self, terms: Sequence[Term], weights: Mapping[str, float], student_need: Need, teacher_need: Need
    ):
        super().__init__()
        self.terms = nn.ModuleList(terms)
        self.weights = dict(weights)
        self.student_need, self.teacher_need = student_need, teacher_need

    @classmethod
    def build(
        cls,
        spec: Mapping[str, float | Mapping[str, Any]],
        student: nn.Module,
        teacher: nn.Module | None,
        widths: Mapping[str, tuple[int, int]] | None = None,
        *,
        temperature: float = 2.0,
    ) -> Objective:
        """Resolve ``spec``; ``widths[term]``, (student_dim, teacher_dim), come from ``probe_widths``."""
        terms, weights = [], {}
        for name, entry in spec.items():
            weight, family, options = _entry(name, entry)
            terms.append(
                _make_term(name, family, options, student, teacher, (widths or {}).get(name), temperature)
            )
            weights[name] = float(weight)
        if not terms:
            raise ObjectiveError("No loss terms given; pass at least one, e.g. losses={'kd': 1.0}.")
        return cls(terms, weights, *_needs(terms))

    def forward(
        self, s: Views, t: Views, labels: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {term.name: term(s, t, labels, mask) for term in self.terms}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return torch.as_tensor(total), {k: v.detach() for k, v in parts.items()}


def _make_term(
    name: str,
    family: str,
    options: dict[str, Any],
    student: nn.Module,
    teacher: nn.Module | None,
    widths: Any,
    temperature: float,
) -> Term:
    layers = options.pop("layers", "uniform")
    on = options.pop("on", "embedding")
    if family in TEMPERED:
        options.setdefault("temperature", temperature)
    wiring: dict[str, Any] = {"on": on, "temperature": options.get("temperature", 1.0)}
    if family in FEATURE + ATTENTION:
        wiring["pairs"] = _pairs(layers, student, teacher)
        per_pair = widths or [None] * len(wiring["pairs"])
        losses = [_with_widths(family, options, w) for w in per_pair]
    elif family in EMBEDDING:
        losses = [_with_widths(family, options, widths)]
    else:
        if on not in ("embedding", "logits"):
            raise ObjectiveError(f"Term {name!r}: 'on' must be 'embedding' or 'logits', got {on!r}.")
        losses = [_create(family, options)]
    return Term(name, family, losses, **wiring)


def _create(family: str, options: dict[str, Any]) -> nn.Module:
    try:
        return create_loss(family, **options)
    except (TypeError, ValueError) as exc:  # an unknown option or a bad value, named by the loss
        raise ObjectiveError(f"{exc}".rstrip(".") + "; fix the loss options.") from exc


def _with_widths(family: str, options: dict[str, Any], widths: tuple[int, int] | None) -> nn.Module:
    if widths is not None and family not in ATTENTION:
        options = {**options, "student_dim": widths[0], "teacher_dim": widths[1]}
    return _create(family, options)


def _needs(terms: Sequence[Term]) -> tuple[Need, Need]:
    families = {t.family for t in terms}
    embedding = bool(families & set(EMBEDDING)) or any(
        t.family == "relation" and t.on == "embedding" for t in terms
    )
    logits = bool(families & {*RESPONSE, "ce"}) or any(
        t.family == "relation" and t.on == "logits" for t in terms
    )
    pairs = [(t.family, p) for t in terms for p in t.pairs]
    s_hidden = tuple(dict.fromkeys(s for f, (s, _) in pairs if f in FEATURE))
    t_hidden = tuple(dict.fromkeys(t for f, (_, t) in pairs if f in FEATURE))
    s_att = tuple(dict.fromkeys(_layer_index(s) for f, (s, _) in pairs if f in ATTENTION))
    t_att = tuple(dict.fromkeys(_layer_index(t) for f, (_, t) in pairs if f in ATTENTION))
    teacher_logits = bool(families & set(RESPONSE)) or any(
        t.family == "relation" and t.on == "logits" for t in terms
    )
    return (
        Need(logits=logits, embedding=embedding, hidden=s_hidden, attentions=s_att),
        Need(logits=teacher_logits, embedding=embedding, hidden=t_hidden, attentions=t_att),
    )


def feature_tokens(features: torch.Tensor) -> torch.Tensor:
    """A conv feature map (batch, C, H, W) as (batch, H*W, C) tokens, so that feature losses compare (and
    project) channels at every position, as FitNets' 1x1 regressor does; other shapes pass through."""
    return features.flatten(2).transpose(1, 2) if features.dim() == 4 else features


def probe_widths(objective: Objective, s: Views, t: Views) -> dict[str, Any]:
    """Per term, the (student_dim, teacher_dim) read from one probe forward pass of each model."""
    widths: dict[str, Any] = {}
    for term in objective.terms:
        if term.family in FEATURE:
            widths[term.name] = [
                (feature_tokens(s.hidden[sp]).shape[-1], feature_tokens(t.hidden[tp]).shape[-1])
                for sp, tp in term.pairs
            ]
        elif term.family in EMBEDDING:
            widths[term.name] = (s.embedding.shape[-1], t.embedding.shape[-1])
    return widths
