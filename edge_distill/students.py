"""The student space cut from a teacher, and students initialised from the teacher's weights.

A student keeps the teacher's family (same ``model_type``, tokenizer and head) and shrinks it on two
axes: depth (fewer encoder layers, taken uniformly spread from the teacher's) and width (fewer attention
heads at the teacher's head size, with the feed-forward width scaled alike). Weights are copied from the
teacher wherever shapes allow, sliced to the student's shape where it is narrower.

Example:
    >>> space = student_space(teacher.model.config)          # doctest: +SKIP
    >>> student = build_student(teacher.model, space[0])     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from edge_distill.errors import TeacherError

# Families whose encoder layers live at `<prefix>.encoder.layer.<i>.` and whose configs use these names.
SUPPORTED_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "camembert")
# The numbered blocks of a state dict: BERT-style `encoder.layer.N.`, Llama `layers.N.`, GPT-2 `h.N.`.
_LAYER_KEY = re.compile(r"\.(layer|layers|h)\.(\d+)\.")
WIDTH_FRACTIONS = (1.0, 0.75, 0.5, 0.25)


@dataclass(frozen=True)
class StudentSpec:
    """One candidate shape: depth, width (heads keep the teacher's head size) and vocabulary.

    ``vocab`` None keeps the teacher's vocabulary; a number is the count of token ids kept by
    vocabulary trimming (``edge_distill.vocab``).
    """

    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int | None = None

    @property
    def label(self) -> str:
        base = f"{self.layers} layer{'s' if self.layers > 1 else ''} x {self.hidden}"
        return base if self.vocab is None else f"{base}, vocab {self.vocab:,}"

    @property
    def short(self) -> str:
        """Compact form for tables: ``6x96`` or ``6x96/v12.9k``."""
        base = f"{self.layers}x{self.hidden}"
        if self.vocab is None:
            return base
        return f"{base}/v{self.vocab / 1000:.1f}k" if self.vocab >= 1000 else f"{base}/v{self.vocab}"

    def as_dict(self) -> dict[str, int]:
        shape = {
            "layers": self.layers,
            "hidden": self.hidden,
            "heads": self.heads,
            "intermediate": self.intermediate,
        }
        return shape if self.vocab is None else {**shape, "vocab": self.vocab}


def check_family(config: PretrainedConfig) -> None:
    """Raise a clear error for a model type whose width the student builders cannot cut yet."""
    if config.model_type not in SUPPORTED_FAMILIES:
        raise TeacherError(
            f"Students can be cut only from encoder families {', '.join(SUPPORTED_FAMILIES)} so far, "
            f"and this teacher is {config.model_type!r}; pass a teacher of one of those families."
        )


def teacher_spec(config: PretrainedConfig) -> StudentSpec:
    """The teacher's own shape, in the same terms as a student's."""
    hidden = config.hidden_size
    return StudentSpec(
        layers=config.num_hidden_layers,
        hidden=hidden,
        heads=config.num_attention_heads,
        intermediate=getattr(config, "intermediate_size", None) or 4 * hidden,  # GPT-2: n_inner None = 4h
    )


def student_space(
    config: PretrainedConfig, *, vocab: int | None = None, widths: bool = True
) -> list[StudentSpec]:
    """Every candidate strictly smaller than the teacher, largest (by depth x width) first.

    Depth runs from the teacher's down to 1; width over ``WIDTH_FRACTIONS`` of the heads (``widths``
    False: the teacher's width only, for families whose width cannot be cut yet). With ``vocab`` (the
    number of token ids the domain uses) every shape also comes with its vocabulary trimmed, right after
    the untrimmed one: as fast, much smaller, and only unseen tokens lose their own embedding.

    Example:
        >>> cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12)  # doctest: +SKIP
        >>> student_space(cfg)[0].label                                                      # doctest: +SKIP
        '5 layers x 384'
    """
    full = teacher_spec(config)
    if widths:
        check_family(config)
    head_dim = full.hidden // full.heads
    shapes: list[tuple[int, int]] = []
    for fraction in WIDTH_FRACTIONS if widths else (1.0,):
        heads = max(1, round(full.heads * fraction))
        if (heads, heads * head_dim) not in shapes:
            shapes.append((heads, heads * head_dim))
    space = []
    for layers in range(full.layers, 0, -1):
        for heads, hidden in shapes:
            intermediate = max(1, round(full.intermediate * hidden / full.hidden))
            spec = StudentSpec(layers=layers, hidden=hidden, heads=heads, intermediate=intermediate)
            if spec != full:
                space.append(spec)
            if vocab is not None and vocab < config.vocab_size:
                space.append(replace(spec, vocab=vocab))
    return sorted(space, key=lambda s: (s.layers * s.hidden, s.hidden, s.vocab is None), reverse=True)


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer feeding each student layer: uniformly spread, always keeping the last one.

    Example:
        >>> layer_map(6, 3)
        [1, 3, 5]
    """
    step = teacher_layers / student_layers
    return [round((i + 1) * step) - 1 for i in range(student_layers)]


def student_config(config: PretrainedConfig, spec: StudentSpec) -> PretrainedConfig:
    """The teacher's config with the student's depth and width."""
    student = copy.deepcopy(config)
    student.num_hidden_layers = spec.layers
    if getattr(student, "layer_types", None) is not None:  # per-layer attention kinds follow their layer
        kept = layer_map(config.num_hidden_layers, spec.layers)
        student.layer_types = [config.layer_types[i] for i in kept]
    student.hidden_size = spec.hidden
    student.num_attention_heads = spec.heads
    if getattr(config, "intermediate_size", None) is not None:
        student.intermediate_size = spec.intermediate
    if spec.vocab is not None:
        student.vocab_size = spec.vocab
    return student


def build_student(teacher: PreTrainedModel, spec: StudentSpec, *, seed: int = 0) -> PreTrainedModel:
    """A student of the teacher's family with ``spec``'s shape, initialised from the teacher.

    Layer i of the student starts as teacher layer ``layer_map(...)[i]``; every tensor is the teacher's,
    sliced to the student's shape (the first heads, the first hidden and feed-forward units).
    """
    torch.manual_seed(seed)
    config = student_config(teacher.config, replace(spec, vocab=None))  # vocabulary: edge_distill.cut
    student = type(teacher)(config)
    mapping = layer_map(teacher.config.num_hidden_layers, spec.layers)
    rename = lambda key: _LAYER_KEY.sub(lambda m: f".{m.group(1)}.{mapping[int(m.group(2))]}.", key)  # noqa: E731
    copy_sliced(student, teacher.state_dict(), rename)
    return student.eval()


def copy_sliced(
    student: nn.Module, source: Mapping[str, torch.Tensor], rename: Callable[[str], str] = str
) -> None:
    """Fill every student tensor that has a teacher counterpart (named ``rename(key)`` in ``source``)
    with the leading block of that teacher tensor; the others keep their initialisation."""
    with torch.no_grad():
        for key, target in student.state_dict().items():
            teacher_key = rename(key)
            if teacher_key in source:
                target.copy_(_slice_to(source[teacher_key], target.shape))


def _slice_to(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The leading block of ``tensor`` with ``shape`` (a no-op when shapes match)."""
    if tensor.shape == shape:
        return tensor
    return tensor[tuple(slice(0, size) for size in shape)]


class LogitsOnly(nn.Module):
    """Wraps a sequence classifier so that forward(input_ids, attention_mask) returns logits only.

    Export targets take a module returning one tensor: (batch, labels).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
