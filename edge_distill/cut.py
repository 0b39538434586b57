"""Students cut from the teacher by three operators: depth, width and vocabulary.

* **Depth** keeps a uniform spread of the teacher's layers, the last one always (DistilBERT's recipe).
* **Width** keeps the most important attention heads, FFN neurons and hidden channels, ranked by their
  activations on calibration data (Minitron; ``edge_distill.pruning``), or the first ones
  (``width="slice"``).
* **Vocabulary** keeps only the token ids the domain data uses (``edge_distill.vocab``); the trimmed
  model carries the id map in its config, and its export takes the original tokenizer's ids.

The budget loop's candidate space is every mix of the three (``space``), costed by ``untrained``
copies; ``Cutter.cut`` builds the chosen student from the teacher's weights.

Example:
    >>> cutter = Cutter.for_data(teacher, family, train_inputs)             # doctest: +SKIP
    >>> spec = cutter.space()[0]                                              # doctest: +SKIP
    >>> student = cutter.cut(spec)  # train it, then:                         # doctest: +SKIP
    >>> shipped = cutter.finish(student, spec)                                # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from edge_distill.families import Family
from edge_distill.students import SUPPORTED_FAMILIES, StudentSpec, student_config, teacher_spec
from edge_distill.vocab import RemapIds, trim_vocabulary, used_tokens

WIDTHS = ("prune", "slice")
CALIBRATION_EXAMPLES = 256  # Minitron ranks on a small sample; more barely moves the ranking


@dataclass
class Cutter:
    """Cuts students of one teacher: the domain's token ids and the calibration inputs for importance."""

    teacher: PreTrainedModel
    family: Family
    calibration: dict[str, torch.Tensor] | None = None  # (n, seq) input_ids / attention_mask
    keep: torch.Tensor | None = None  # old token ids the domain uses, sorted
    unk_id: int | None = None
    width: str = "prune"
    _scores: Any = field(default=None, init=False, repr=False)

    @classmethod
    def for_data(
        cls,
        teacher: PreTrainedModel,
        family: Family,
        train_inputs: dict[str, torch.Tensor],
        *,
        tokenizer: Any = None,
        width: str = "prune",
        trim_vocab: bool = True,
    ) -> Cutter:
        """A cutter whose calibration set and kept vocabulary come from the training inputs."""
        if width not in WIDTHS:
            raise ValueError(f"width must be one of {', '.join(WIDTHS)}, got {width!r}")
        calibration = {k: v[:CALIBRATION_EXAMPLES] for k, v in train_inputs.items() if k != "labels"}
        keep = unk = None
        unk_token = getattr(tokenizer, "unk_token_id", None)
        if trim_vocab and family.vocab and unk_token is not None and "input_ids" in train_inputs:
            keep, unk = used_tokens(train_inputs["input_ids"], tokenizer), int(unk_token)
        return cls(teacher, family, calibration, keep, unk, width)

    def space(self) -> list[StudentSpec]:
        """Every student this cutter can build, largest first (see ``students.student_space``)."""
        vocab = int(self.keep.numel()) if self.keep is not None else None
        return self.family.space(self.teacher.config, vocab)

    def untrained(self, spec: StudentSpec) -> PreTrainedModel:
        """A randomly initialised student of ``spec``'s shape (costs and latency do not need weights)."""
        model = type(self.teacher)(student_config(self.teacher.config, replace(spec, vocab=None)))
        return self._trim(model, spec).eval()

    def cut(self, spec: StudentSpec, *, seed: int = 0) -> PreTrainedModel:
        """The student ``spec`` with the teacher's weights (chosen layers, pruned width), to be trained.

        Its vocabulary is still the teacher's: training batches carry the tokenizer's ids, which the
        teacher reads too. ``finish`` trims it after training; a row no training text uses gets no
        gradient, so trimming afterwards loses nothing that training taught.
        """
        full = teacher_spec(self.teacher.config)
        shape = (spec.hidden, spec.heads, spec.intermediate)
        narrower = shape != (full.hidden, full.heads, full.intermediate)
        prunable = self.teacher.config.model_type in SUPPORTED_FAMILIES
        if narrower and prunable and self.width == "prune" and self.calibration is not None:
            from edge_distill.pruning import build_pruned_student

            student = build_pruned_student(self.teacher, replace(spec, vocab=None), self.scores(), seed=seed)
        else:
            student = self.family.build(self.teacher, replace(spec, vocab=None), seed=seed)
        return student.eval()

    def finish(self, student: PreTrainedModel, spec: StudentSpec) -> PreTrainedModel:
        """The trained student as it ships: its vocabulary trimmed when ``spec`` says so."""
        return self._trim(student, spec)

    def scores(self) -> Any:
        """Activation importance of the teacher's heads, neurons and channels (computed once)."""
        if self._scores is None:
            from edge_distill.pruning import importance

            self._scores = importance(self.teacher, self.calibration or {})
        return self._scores

    def _trim(self, model: PreTrainedModel, spec: StudentSpec) -> PreTrainedModel:
        if spec.vocab is None:
            return model
        if self.keep is None or self.unk_id is None or spec.vocab != self.keep.numel():
            raise ValueError(f"this cutter keeps no vocabulary of {spec.vocab} ids; use one of its space()")
        return trim_vocabulary(model, self.keep, unk_id=self.unk_id)


def export_module(family: Family, model: nn.Module) -> nn.Module:
    """What an exporter sees: the family's one-tensor module, behind the id map when the vocab is trimmed.

    The artifact then takes the original tokenizer's ids, so the app's tokenizer does not change.
    """
    wrapped = family.export_module(model)
    if getattr(getattr(model, "config", None), "trimmed_vocab", None):
        return RemapIds(wrapped, config=model.config).eval()
    return wrapped.eval()
