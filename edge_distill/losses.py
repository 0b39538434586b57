"""The loss registry. Each loss is a small ``nn.Module``; a distillation objective mixes them by weight.

Example:
    >>> objective = DistillationLoss(temperature=2.0, alpha=0.5)
    >>> s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    >>> total, parts = objective(s, t, y)
    >>> sorted(parts)
    ['ce', 'kd']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_distill.registry import Registry

LOSSES: Registry[type[nn.Module]] = Registry("loss")


@LOSSES.register("kd")
class SoftTargetKL(nn.Module):
    """KL(teacher || student) on temperature-softened distributions, scaled by T².

    The T² factor keeps the soft-target gradients on the same scale as the hard-label ones whatever the
    temperature (Hinton et al., 2015): softening divides the logit gradients by T².
    """

    def __init__(self, *, temperature: float = 2.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)  # (batch, labels)
        log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
        return kl * t * t


@LOSSES.register("ce")
class HardLabelCE(nn.Module):
    """Cross-entropy on the hard labels."""

    def forward(self, student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student_logits.float(), labels)


class DistillationLoss(nn.Module):
    """``alpha * kd + (1 - alpha) * ce``: soft targets mixed with the hard labels."""

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
