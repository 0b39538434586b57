"""Where the teacher's views come from at each step: the distillation schemes.

* ``offline``: read from the cache columns of the batch (the teacher ran once, before training);
* ``online``: the teacher runs live on the (possibly augmented) batch;
* ``mutual``: a peer model learns alongside the student, each the other's teacher (Zhang et al., 2018);
* ``self``: an EMA copy of the student (``ema``) or its own state at the end of the previous epoch
  (``snapshot``) teaches it;
* multi-teacher: several live or cached teachers whose temperature-softened distributions are mixed by
  weight (same label space).

Example:
    >>> source = LiveTeacher(teacher, auto_adapter(teacher), need)   # doctest: +SKIP
    >>> views = source.views(batch)                                   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge_distill.offline import CacheSpec, views_from_batch
from edge_distill.views import Adapter, Batch, Need, Views, collect

SCHEMES = ("offline", "online", "mutual", "self")
SELF_TEACHERS = ("ema", "snapshot")


class TeacherSource:
    """The teacher's views for a batch; hooks let stateful teachers (EMA, snapshot) follow the student."""

    def views(self, batch: Batch) -> Views:
        raise NotImplementedError

    def after_step(self, student: nn.Module) -> None:
        """Called after every optimizer step."""

    def after_epoch(self, student: nn.Module) -> None:
        """Called at the end of every epoch."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned (for resuming)."""


class CachedTeacher(TeacherSource):
    """Views read from the batch's cached ``teacher.*`` columns."""

    def __init__(self, spec: CacheSpec, prefix: str = "teacher.") -> None:
        self.spec, self.prefix = spec, prefix

    def views(self, batch: Batch) -> Views:
        return views_from_batch(batch, self.spec, self.prefix)


class LiveTeacher(TeacherSource):
    """A frozen teacher run under ``no_grad`` at every step (in the trainer's autocast)."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        need: Need,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        self.model, self.adapter, self.need, self.autocast = model.eval(), adapter, need, autocast

    @torch.no_grad()
    def views(self, batch: Batch) -> Views:
        with self.autocast():
            return collect(self.model, self.adapter, batch, self.need).detached()


class SelfTeacher(LiveTeacher):
    """The student's own EMA (updated every step) or previous-epoch snapshot (updated every epoch)."""

    def __init__(
        self, student: nn.Module, adapter: Adapter, need: Need, *, mode: str, decay: float, **kw: Any
    ):
        super().__init__(copy.deepcopy(student), adapter, need, **kw)
        self.mode, self.decay = mode, decay

    @torch.no_grad()
    def after_step(self, student: nn.Module) -> None:
        if self.mode != "ema":
            return
        for mine, theirs in zip(self.model.parameters(), student.parameters(), strict=True):
            mine.lerp_(theirs.detach().float().to(mine.dtype), 1.0 - self.decay)
        for mine, theirs in zip(self.model.buffers(), student.buffers(), strict=True):
            mine.copy_(theirs)

    def after_epoch(self, student: nn.Module) -> None:
        if self.mode == "snapshot":
            self.model.load_state_dict(student.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])


class MultiTeacher(TeacherSource):
    """Several teachers' distributions mixed by weight: ``p = sum_i w_i softmax(z_i / T)``.

    The mixed logits are returned as ``T * log p``, so a loss at temperature T sees exactly ``p``. Other
    views (embedding, hidden states) come from the first teacher.
    """

    def __init__(
        self, sources: Sequence[TeacherSource], weights: Sequence[float], temperature: float
    ) -> None:
        if len(sources) != len(weights) or not sources:
            raise ValueError("MultiTeacher needs one weight per teacher")
        total = float(sum(weights))
        if total <= 0 or any(w < 0 for w in weights):
            raise ValueError(f"teacher weights must be >= 0 with a positive sum, got {list(weights)}")
        self.sources, self.weights = list(sources), [w / total for w in weights]
        self.temperature = temperature

    def views(self, batch: Batch) -> Views:
        all_views = [source.views(batch) for source in self.sources]
        for v in all_views:
            if v.logits is None:
                raise ValueError("Multi-teacher mixing needs each teacher's full logits (no top-k cache).")
        t = self.temperature
        logs = torch.stack(
            [
                F.log_softmax(v.logits.float() / t, -1) + (math.log(w) if w > 0 else -math.inf)
                for v, w in zip(all_views, self.weights, strict=True)  # weight 0: log 0 = -inf, no error
            ]
        )  # (teachers, batch, classes)
        first = all_views[0]
        first.logits = t * torch.logsumexp(logs, 0)  # (batch, classes)
        return first


class PeerModule(nn.Module):
    """Mutual learning's peer: trained too, so it runs inside its own (DDP-wrapped) forward."""

    def __init__(self, model: nn.Module, adapter: Adapter, need: Need) -> None:
        super().__init__()
        self.model, self.adapter, self.need = model, adapter, need

    def forward(self, batch: Batch) -> Views:
        return collect(self.model, self.adapter, batch, self.need)
