"""The loss registry. Each loss is a small ``nn.Module``; a distillation objective mixes them by weight.

Families (inputs annotated in each class):

* response: ``kd``, ``reverse_kd``, ``jsd``, ``logit_mse``, ``ce``
* feature: ``hidden_mse``, ``hidden_cosine`` (learned projection when widths differ)
* attention: ``attention_kl``, ``attention_mse`` (head counts reconciled, padding masked)
* embedding: ``embedding_mse``, ``embedding_cosine`` (pooled vectors)
* relation: ``relation`` (batch Gram matrices; any student width)

Example:
    >>> objective = DistillationLoss(temperature=2.0, alpha=0.5)
    >>> s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    >>> total, parts = objective(s, t, y)
    >>> sorted(parts)
    ['ce', 'kd']
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge_distill.registry import Registry

LOSSES: Registry[type[nn.Module]] = Registry("loss")

_EPS = 1e-12  # floor for probabilities before a log: attention rows may hold exact zeros


def _check_temperature(temperature: float) -> float:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., classes) logits -> (rows, classes) log-probabilities; every leading position is one row."""
    return F.log_softmax(logits.float().reshape(-1, logits.shape[-1]) / temperature, dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over classes, averaged over rows. Inputs (rows, classes) log-probabilities."""
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


@LOSSES.register("kd")
class SoftTargetKL(nn.Module):
    """Forward KL(teacher || student) on temperature-softened distributions, scaled by T².

    The T² factor keeps the soft-target gradients on the same scale as the hard-label ones whatever the
    temperature (Hinton et al., 2015): softening divides the logit gradients by T². Inputs are
    ``(..., classes)``; each leading position is one distribution and the loss averages over them.

    Example:
        >>> SoftTargetKL(temperature=2.0)(torch.zeros(2, 3), torch.zeros(2, 3)).item()
        0.0
    """

    def __init__(self, *, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_p_student = _log_probs(student_logits, t)  # (rows, classes)
        log_p_teacher = _log_probs(teacher_logits, t)
        return _kl(log_p_teacher, log_p_student) * t * t


@LOSSES.register("reverse_kd")
class ReverseKL(SoftTargetKL):
    """Reverse KL(student || teacher), scaled by T²: mode-seeking. ``ReverseKL(temperature=1.0)(s, t)``."""

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        return _kl(_log_probs(student_logits, t), _log_probs(teacher_logits, t)) * t * t


@LOSSES.register("jsd")
class GeneralizedJSD(nn.Module):
    """Generalized Jensen-Shannon divergence (GKD, Agarwal et al. 2024; TRL's ``generalized_jsd_loss``).

    With ``m = beta * p_teacher + (1 - beta) * p_student``::

        jsd = beta * KL(p_teacher || m) + (1 - beta) * KL(p_student || m)

    scaled by T² like ``kd``. As in TRL, the endpoints are the exact KLs: ``beta=0`` is forward
    KL(teacher || student) (== ``kd``) and ``beta=1`` is reverse KL(student || teacher) (== ``reverse_kd``).
    Inside (0, 1) the divergence is bounded; for small beta it behaves like ``beta * kd`` and near 1 like
    ``(1 - beta) * reverse_kd``, so weigh it accordingly. ``beta=0.5`` is the symmetric JSD.

    Example:
        >>> s, t = torch.randn(4, 5), torch.randn(4, 5)
        >>> torch.allclose(GeneralizedJSD(beta=0.5)(s, t), GeneralizedJSD(beta=0.5)(t, s))
        True
    """

    def __init__(self, *, beta: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be within [0, 1], got {beta}")
        self.beta = beta
        self.temperature = _check_temperature(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t, beta = self.temperature, self.beta
        log_s = _log_probs(student_logits, t)  # (rows, classes)
        log_t = _log_probs(teacher_logits, t)
        if beta == 0.0:
            return _kl(log_t, log_s) * t * t
        if beta == 1.0:
            return _kl(log_s, log_t) * t * t
        # log m computed in log space: stable where one distribution is near zero
        log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1.0 - beta)]), dim=0)
        return (beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)) * t * t


@LOSSES.register("logit_mse")
class LogitMSE(nn.Module):
    """MSE between raw logits (Ba & Caruana, 2014); no temperature. ``LogitMSE()(s, t)``."""

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student_logits.float(), teacher_logits.float())  # (..., classes) both


@LOSSES.register("ce")
class HardLabelCE(nn.Module):
    """Cross-entropy on the hard labels: logits ``(..., classes)``, labels ``(...)``; -100 is ignored.

    Example:
        >>> round(HardLabelCE()(torch.zeros(2, 4), torch.tensor([0, 3])).item(), 4)
        1.3863
    """

    def forward(self, student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = student_logits.float().reshape(-1, student_logits.shape[-1])  # (rows, classes)
        return F.cross_entropy(logits, labels.reshape(-1))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` (same shape, 1 = real token) is set."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class _ProjectedPair(nn.Module):
    """Student features mapped to the teacher's width by a learned ``nn.Linear`` when the widths differ.

    The projection is created at construction (so the optimizer sees it) when ``student_dim`` and
    ``teacher_dim`` are both given and differ; without them the widths must already match.
    """

    def __init__(self, *, student_dim: int | None = None, teacher_dim: int | None = None) -> None:
        super().__init__()
        self.projection: nn.Module = nn.Identity()
        if student_dim is not None and teacher_dim is not None and student_dim != teacher_dim:
            self.projection = nn.Linear(student_dim, teacher_dim, bias=False)

    def _align(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        student = self.projection(student.float())  # (..., student_dim) -> (..., teacher_dim)
        if student.shape[-1] != teacher.shape[-1]:
            raise ValueError(
                f"{type(self).__name__}: student width {student.shape[-1]} != teacher width "
                f"{teacher.shape[-1]}; pass student_dim= and teacher_dim= to learn a projection."
            )
        return student


@LOSSES.register("hidden_mse")
class HiddenMSE(_ProjectedPair):
    """MSE between mapped hidden states (TinyBERT-style), averaged over the real (unmasked) tokens.

    Example:
        >>> loss = HiddenMSE(student_dim=4, teacher_dim=8)
        >>> loss(torch.randn(2, 3, 4), torch.randn(2, 3, 8), torch.ones(2, 3)).shape
        torch.Size([])
    """

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # student (batch, seq, s_dim), teacher (batch, seq, t_dim), attention_mask (batch, seq)
        error = (self._align(student, teacher) - teacher.float()).pow(2).mean(-1)  # (batch, seq)
        return _masked_mean(error, attention_mask)


@LOSSES.register("hidden_cosine")
class HiddenCosine(_ProjectedPair):
    """``1 - cos`` between mapped hidden states per token (DistilBERT's cosine loss), masked mean.

    Scale-free: only the direction of each hidden vector is matched.

    Example:
        >>> h = torch.randn(2, 3, 4)
        >>> HiddenCosine()(h, 2 * h).item() < 1e-6
        True
    """

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # student (batch, seq, s_dim), teacher (batch, seq, t_dim), attention_mask (batch, seq)
        cos = F.cosine_similarity(self._align(student, teacher), teacher.float(), dim=-1)  # (batch, seq)
        return _masked_mean(1.0 - cos, attention_mask)


@LOSSES.register("embedding_mse")
class EmbeddingMSE(_ProjectedPair):
    """MSE between pooled embeddings, student ``(batch, s_dim)``, teacher ``(batch, t_dim)``.

    Example: ``EmbeddingMSE(student_dim=4, teacher_dim=6)(torch.randn(2, 4), torch.randn(2, 6))``.
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self._align(student, teacher), teacher.float())


@LOSSES.register("embedding_cosine")
class EmbeddingCosine(_ProjectedPair):
    """Mean ``1 - cos`` between pooled embeddings, student ``(batch, s_dim)``, teacher ``(batch, t_dim)``.

    Example:
        >>> e = torch.randn(2, 4)
        >>> EmbeddingCosine()(e, e).item() < 1e-6
        True
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(self._align(student, teacher), teacher.float(), dim=-1)).mean()


def _match_heads(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconcile head counts of ``(batch, heads, q, k)`` attention probabilities.

    Equal counts: head by head. Teacher heads a multiple of student heads: consecutive teacher heads are
    averaged in groups (teacher head ``i`` goes to student head ``i // group``). Otherwise both sides are
    averaged over all heads. An average of attention rows is still a distribution, so KL stays valid.
    """
    hs, ht = student.shape[1], teacher.shape[1]
    if hs == ht:
        return student, teacher
    if ht % hs == 0:
        b, _, q, k = teacher.shape
        return student, teacher.reshape(b, hs, ht // hs, q, k).mean(2)
    return student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)


class _AttentionLoss(nn.Module):
    """Shared plumbing: head matching and the ``(batch, seq)`` padding mask -> query/key masks.

    Subclasses define ``_reduce(student, teacher, key_mask, query_mask) -> scalar``.
    """

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # student (batch, s_heads, q, k), teacher (batch, t_heads, q, k) probabilities; mask (batch, seq)
        student, teacher = _match_heads(student.float(), teacher.float())
        b, h, q, k = student.shape
        if attention_mask is None:
            attention_mask = torch.ones(b, k, device=student.device)
        keep = attention_mask.to(student.dtype)
        key_mask = keep[:, None, None, :]  # (batch, 1, 1, k): padded keys contribute nothing
        query_mask = keep[:, None, :q].expand(b, h, q)  # (batch, heads, q): padded queries are skipped
        return self._reduce(student, teacher, key_mask, query_mask)


@LOSSES.register("attention_kl")
class AttentionKL(_AttentionLoss):
    """KL(teacher row || student row) per query (MiniLM), over real keys, averaged over real queries/heads.

    Head counts: see ``_match_heads`` (group-average teacher heads, else average both sides).

    Example:
        >>> a = torch.softmax(torch.randn(2, 4, 3, 3), -1)
        >>> abs(AttentionKL()(a[:, :2], a[:, :2]).item()) < 1e-6
        True
    """

    def _reduce(
        self, student: torch.Tensor, teacher: torch.Tensor, key_mask: torch.Tensor, query_mask: torch.Tensor
    ) -> torch.Tensor:
        # xlogy: teacher zeros contribute 0, not nan
        terms = torch.xlogy(teacher, teacher) - teacher * student.clamp_min(_EPS).log()  # (b, h, q, k)
        return _masked_mean((terms * key_mask).sum(-1), query_mask)


@LOSSES.register("attention_mse")
class AttentionMSE(_AttentionLoss):
    """MSE between attention probabilities (TinyBERT uses it on scores), over real query/key pairs.

    Example:
        >>> a = torch.softmax(torch.randn(2, 2, 3, 3), -1)
        >>> AttentionMSE()(a, a).item()
        0.0
    """

    def _reduce(
        self, student: torch.Tensor, teacher: torch.Tensor, key_mask: torch.Tensor, query_mask: torch.Tensor
    ) -> torch.Tensor:
        pair_mask = query_mask[..., None] * key_mask  # (b, h, q, k)
        return _masked_mean((student - teacher).pow(2), pair_mask.expand_as(student))


@LOSSES.register("relation")
class RelationGram(nn.Module):
    """MSE between the batch's cosine-similarity (Gram) matrices of student and teacher (cf. SP, RKD).

    Each model's ``(batch, ...)`` representations are flattened to ``(batch, features)`` and
    L2-normalized; the ``(batch, batch)`` Gram matrices are compared, so any student width works and no
    projection is needed. Invariant to rotations of either feature space.

    Example:
        >>> x = torch.randn(4, 8)
        >>> RelationGram()(x @ torch.linalg.qr(torch.randn(8, 8))[0], x).item() < 1e-6
        True
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(_gram(student), _gram(teacher))


def _gram(features: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(features.float().reshape(features.shape[0], -1), dim=-1)  # (batch, features)
    return unit @ unit.T  # (batch, batch)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss; an unknown argument is a ``TypeError`` naming the loss and its arguments.

    Example:
        >>> create_loss("jsd", beta=0.1).beta
        0.1
    """
    cls = LOSSES.get(name)  # unknown name -> did-you-mean
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")]
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            valid = ", ".join(accepted) or "none"
            raise TypeError(f"loss {name!r} got an unknown argument {key!r}.{hint} Accepted: {valid}.")
    return cls(**kwargs)


class WeightedLoss(nn.Module):
    """A weighted sum of named loss terms; returns ``(total, {term: float})``.

    Build it with ``build_objective``. ``forward`` takes, per term name, the positional arguments of that
    term's loss (a tuple) or its keyword arguments (a mapping). Terms are ``ModuleDict`` children, so
    learned projections are in ``parameters()``.
    """

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = dict(weights)

    def forward(
        self, inputs: Mapping[str, Sequence[Any] | Mapping[str, Any]]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        missing, extra = set(self.terms) - set(inputs), set(inputs) - set(self.terms)
        if missing or extra:
            raise KeyError(f"objective inputs: missing {sorted(missing)}, unexpected {sorted(extra)}")
        total: torch.Tensor | float = 0.0
        parts: dict[str, float] = {}
        for name, loss in self.terms.items():
            args = inputs[name]
            value = loss(**args) if isinstance(args, Mapping) else loss(*args)
            total = total + self.weights[name] * value
            parts[name] = float(value.detach())
        return torch.as_tensor(total), parts


def build_objective(spec: Mapping[str, float | Mapping[str, Any]]) -> WeightedLoss:
    """Build a ``WeightedLoss`` from ``{term: weight}`` or ``{term: {"weight": w, "loss": name, **kwargs}}``.

    ``loss`` defaults to the term name, so one loss can appear twice under different term names
    (e.g. two layer pairs of ``hidden_mse``).

    Example:
        >>> objective = build_objective({"kd": {"weight": 0.5, "temperature": 2.0}, "ce": 0.5})
        >>> s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
        >>> total, parts = objective({"kd": (s, t), "ce": (s, y)})
        >>> sorted(parts)
        ['ce', 'kd']
    """
    terms: dict[str, nn.Module] = {}
    weights: dict[str, float] = {}
    for term, entry in spec.items():
        options = dict(entry) if isinstance(entry, Mapping) else {"weight": entry}
        weight = options.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise TypeError(f"loss term {term!r}: weight must be a finite number, got {weight!r}")
        terms[term] = create_loss(options.pop("loss", term), **options)
        weights[term] = float(weight)
    return WeightedLoss(terms, weights)


class DistillationLoss(nn.Module):
    """``alpha * kd + (1 - alpha) * ce``: soft targets mixed with the hard labels (see module example)."""

    def __init__(self, *, temperature: float = 2.0, alpha: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {alpha}")
        self.alpha = alpha
        self.kd = LOSSES.get("kd")(temperature=temperature)
        self.ce = LOSSES.get("ce")()

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        kd = self.kd(student_logits, teacher_logits)
        ce = self.ce(student_logits, labels)
        total = self.alpha * kd + (1.0 - self.alpha) * ce
        return total, {"kd": float(kd.detach()), "ce": float(ce.detach())}
