"""Width pruning by activation importance: keep the heads, neurons and channels that matter most.

Minitron (Muralidharan et al., 2024, "Compact Language Models via Pruning and Knowledge Distillation")
ranks each prunable unit by the size of its activations on a small calibration set, keeps the top ones,
and recovers the rest by distillation. Here, on calibration tokens (padding masked out):

* **attention head**: the L2 norm of that head's slice of the context (the attention output before the
  output projection, ``attention.self``), one norm per token;
* **FFN neuron**: ``|activation|`` of the intermediate output, after the activation function;
* **hidden channel**: ``|value|`` of every LayerNorm output of hidden width (embeddings and every
  layer's two), averaged over those LayerNorms, so one ranking serves the whole residual stream.

Each is aggregated as the **mean over all real tokens** of the calibration set (batch and sequence
pooled). The paper also tries mean over batch then L2 over sequence; for ranking with a fixed sequence
length both orderings agree closely, and the plain mean does not grow with the length of the inputs.

Example:
    >>> scores = importance(teacher, {"input_ids": ids, "attention_mask": mask})   # doctest: +SKIP
    >>> student = build_pruned_student(teacher, StudentSpec(6, 384, 6, 1536), scores)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from edge_distill.errors import TeacherError
from edge_distill.students import StudentSpec, check_family, layer_map, student_config
from edge_distill.taps import Taps, encoder_layer_paths

_LAYER_KEY = re.compile(r"\.layer\.(\d+)\.")

# Which axis each dim of a tensor belongs to: "h" hidden channels, "a" attention units (heads x head
# size), "f" FFN neurons, None untouched. First matching pattern wins (keys are teacher keys, `$`-anchored).
_RULES: tuple[tuple[re.Pattern[str], tuple[str | None, ...]], ...] = tuple(
    (re.compile(pattern), dims)
    for pattern, dims in (
        (r"embeddings\.(word|position|token_type)_embeddings\.weight$", (None, "e")),
        (r"embeddings\.LayerNorm\.(weight|bias)$", ("e",)),
        (r"embeddings_project\.weight$", ("h", None)),
        (r"embeddings_project\.bias$", ("h",)),
        (r"attention\.self\.(query|key|value)\.weight$", ("a", "h")),
        (r"attention\.self\.(query|key|value)\.bias$", ("a",)),
        (r"attention\.output\.dense\.weight$", ("h", "a")),
        (r"intermediate\.dense\.weight$", ("f", "h")),
        (r"intermediate\.dense\.bias$", ("f",)),
        (r"layer\.\d+\.output\.dense\.weight$", ("h", "f")),
        (r"(pooler|classifier)\.dense\.weight$", ("h", "h")),
        (r"(output\.dense|pooler\.dense|classifier\.dense|LayerNorm)\.(weight|bias)$", ("h",)),
        (r"(classifier|classifier\.out_proj)\.weight$", (None, "h")),
        (r"(classifier|classifier\.out_proj)\.bias$", (None,)),
    )
)


@dataclass(frozen=True)
class Importance:
    """Activation importance of every prunable unit of a teacher (all values >= 0).

    ``heads``: (layers, heads); ``neurons``: (layers, intermediate); ``hidden``: (hidden,).
    """

    heads: torch.Tensor
    neurons: torch.Tensor
    hidden: torch.Tensor


@dataclass(frozen=True)
class PruningPlan:
    """Teacher indices a student keeps, in the teacher's order.

    ``layers[i]`` is the teacher layer behind student layer i; ``heads[i]`` / ``neurons[i]`` index that
    teacher layer's heads / FFN neurons; ``hidden`` indexes hidden channels (shared by every layer).
    """

    layers: list[int]
    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    hidden: torch.Tensor


class _Accumulator:
    """Running sums of per-unit scores over real (unmasked) tokens."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens = 0

    def add(self, name: str, scores: torch.Tensor, mask: torch.Tensor) -> None:
        # scores: (batch, seq, units); mask: (batch, seq) of 0/1
        total = (scores * mask.unsqueeze(-1)).sum(dim=(0, 1))  # (units,)
        self.sums[name] = self.sums.get(name, 0) + total.double()

    def mean(self, name: str) -> torch.Tensor:
        return (self.sums[name] / max(self.tokens, 1)).float()


def _layer_norm_paths(model: nn.Module, hidden: int) -> list[str]:
    """Every LayerNorm whose output lies in the hidden (residual) space."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (hidden,)
    ]


def importance(
    model: PreTrainedModel, calibration: dict[str, torch.Tensor], *, batch_size: int = 32
) -> Importance:
    """Minitron activation importance of heads, FFN neurons and hidden channels on calibration inputs.

    ``calibration`` holds ``input_ids`` (batch, seq) and optionally ``attention_mask`` (batch, seq);
    padded positions do not count. Runs in eval mode under ``torch.no_grad()`` and restores the mode.

    Example:
        >>> scores = importance(teacher, {"input_ids": ids, "attention_mask": mask})  # doctest: +SKIP
        >>> scores.heads.shape, scores.neurons.shape, scores.hidden.shape              # doctest: +SKIP
        (torch.Size([12, 12]), torch.Size([12, 3072]), torch.Size([768]))
    """
    check_family(model.config)
    config = model.config
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    layers = encoder_layer_paths(model)
    norms = _layer_norm_paths(model, config.hidden_size)
    paths = [f"{p}.attention.self" for p in layers] + [f"{p}.intermediate" for p in layers] + norms
    ids = calibration["input_ids"]
    mask_all = calibration.get("attention_mask", torch.ones_like(ids))
    acc, was_training = _Accumulator(), model.training
    model.eval()
    try:
        with torch.no_grad(), Taps(model, paths) as taps:
            for start in range(0, ids.shape[0], batch_size):
                batch, mask = ids[start : start + batch_size], mask_all[start : start + batch_size]
                taps.clear()
                model(input_ids=batch, attention_mask=mask)
                mask = mask.float()
                acc.tokens += int(mask.sum())
                for path in layers:
                    context = taps.outputs[f"{path}.attention.self"]  # (batch, seq, heads * head_dim)
                    per_head = context.unflatten(-1, (heads, head_dim)).norm(dim=-1)  # (batch, seq, heads)
                    acc.add(f"{path}.heads", per_head, mask)
                    acc.add(f"{path}.neurons", taps.outputs[f"{path}.intermediate"].abs(), mask)
                for path in norms:
                    acc.add("hidden", taps.outputs[path].abs() / len(norms), mask)  # (batch, seq, hidden)
    finally:
        model.train(was_training)
    return Importance(
        heads=torch.stack([acc.mean(f"{p}.heads") for p in layers]),
        neurons=torch.stack([acc.mean(f"{p}.neurons") for p in layers]),
        hidden=acc.mean("hidden"),
    )


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in ascending (original) order; ties go to the earlier unit."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].sort().values


def pruning_plan(teacher_config: PretrainedConfig, spec: StudentSpec, scores: Importance) -> PruningPlan:
    """What a student of ``spec`` keeps from the teacher: the top units by importance.

    Example:
        >>> plan = pruning_plan(teacher.config, StudentSpec(4, 16, 2, 32), scores)  # doctest: +SKIP
        >>> plan.heads[0]                                                            # doctest: +SKIP
        tensor([1, 3])
    """
    hidden, heads = teacher_config.hidden_size, teacher_config.num_attention_heads
    if spec.heads * (hidden // heads) != spec.hidden:
        raise TeacherError(
            f"A pruned student keeps the teacher's head size ({hidden // heads}), so hidden must be "
            f"heads x {hidden // heads}; got hidden={spec.hidden}, heads={spec.heads}."
        )
    teacher_layers = teacher_config.num_hidden_layers
    if not (
        spec.layers <= teacher_layers
        and spec.heads <= heads
        and spec.intermediate <= teacher_config.intermediate_size
    ):
        raise TeacherError(f"Cannot prune a teacher of shape {teacher_config} to the larger {spec}.")
    mapping = layer_map(teacher_layers, spec.layers)
    return PruningPlan(
        layers=mapping,
        heads=[_top(scores.heads[j], spec.heads) for j in mapping],
        neurons=[_top(scores.neurons[j], spec.intermediate) for j in mapping],
        hidden=_top(scores.hidden, spec.hidden),
    )


def _axis_index(
    axis: str | None, plan: PruningPlan, student_layer: int | None, head_dim: int, embeds_hidden: bool
) -> torch.Tensor | None:
    """The index a tensor dim of kind ``axis`` keeps (None: keep the whole dim)."""
    if axis == "h" or (axis == "e" and embeds_hidden):
        return plan.hidden
    if axis in ("a", "f") and student_layer is None:
        raise TeacherError("A per-layer tensor was found outside the encoder layers.")
    if axis == "a":
        heads = plan.heads[student_layer]  # (kept_heads,) -> (kept_heads * head_dim,)
        return (heads.unsqueeze(-1) * head_dim + torch.arange(head_dim)).flatten()
    if axis == "f":
        return plan.neurons[student_layer]
    return None


def _pruned(key: str, tensor: torch.Tensor, plan: PruningPlan, config: PretrainedConfig) -> torch.Tensor:
    """``tensor`` (a teacher tensor, student ``key``) cut down to the units the plan keeps."""
    match = _LAYER_KEY.search(key)
    student_layer = int(match.group(1)) if match else None
    dims = next((d for pattern, d in _RULES if pattern.search(key)), ())
    head_dim = config.hidden_size // config.num_attention_heads
    embeds_hidden = getattr(config, "embedding_size", config.hidden_size) == config.hidden_size
    for dim, axis in enumerate(dims):
        index = _axis_index(axis, plan, student_layer, head_dim, embeds_hidden)
        if index is not None:
            tensor = tensor.index_select(dim, index)
    return tensor


def build_pruned_student(
    teacher: PreTrainedModel, spec: StudentSpec, scores: Importance, *, seed: int = 0
) -> PreTrainedModel:
    """A student of ``spec``'s shape holding the teacher's most important heads, neurons and channels.

    Depth follows ``students.layer_map`` and the config ``students.student_config``, as in
    ``students.build_student``; width keeps, per kept layer, the top ``spec.heads`` heads and top
    ``spec.intermediate`` FFN neurons of that layer, and the top ``spec.hidden`` hidden channels
    everywhere (all in the teacher's order). Every student tensor is filled from the teacher.

    Example:
        >>> scores = importance(teacher, calibration)                               # doctest: +SKIP
        >>> student = build_pruned_student(teacher, StudentSpec(4, 16, 2, 32), scores)  # doctest: +SKIP
    """
    check_family(teacher.config)
    plan = pruning_plan(teacher.config, spec, scores)
    torch.manual_seed(seed)
    student = type(teacher)(student_config(teacher.config, replace(spec, vocab=None)))
    source, used = teacher.state_dict(), set[str]()
    with torch.no_grad():
        for key, target in student.state_dict().items():
            teacher_key = _LAYER_KEY.sub(lambda m: f".layer.{plan.layers[int(m.group(1))]}.", key)
            if teacher_key not in source:
                raise TeacherError(f"The teacher has no tensor {teacher_key!r} for the student's {key!r}.")
            value = _pruned(key, source[teacher_key], plan, teacher.config)
            if value.shape != target.shape:
                raise TeacherError(
                    f"Pruning {teacher_key!r} gave shape {tuple(value.shape)}, but the student's {key!r} "
                    f"is {tuple(target.shape)}; this family's layout is not covered by the pruning rules."
                )
            target.copy_(value)
            used.add(teacher_key)
    unused = [k for k in source if k not in used and not _LAYER_KEY.search(k)]
    if unused:  # e.g. an ELECTRA embeddings_project the student's config dropped
        raise TeacherError(f"The pruned student has no place for the teacher's {', '.join(unused)}.")
    return student.eval()
