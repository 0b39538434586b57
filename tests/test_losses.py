"""The KD loss is wired right: it pulls a student toward the teacher, and T² keeps gradients in scale."""

from __future__ import annotations

import pytest
import torch

from edge_distill.losses import LOSSES, DistillationLoss, SoftTargetKL


def test_kl_is_zero_when_student_equals_teacher() -> None:
    logits = torch.randn(8, 5)
    assert SoftTargetKL(temperature=3.0)(logits, logits).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_only_training_converges_to_teacher_distribution() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(16, 5) * 3
    student = torch.zeros(16, 5, requires_grad=True)
    loss_fn = SoftTargetKL(temperature=2.0)
    optimizer = torch.optim.Adam([student], lr=0.1)
    start = loss_fn(student, teacher).item()
    for _ in range(300):
        optimizer.zero_grad()
        loss = loss_fn(student, teacher)
        loss.backward()
        optimizer.step()
    gap = (torch.softmax(student, -1) - torch.softmax(teacher, -1)).abs().max().item()
    assert loss.item() < start * 0.01
    assert gap < 0.02


def test_t_squared_keeps_gradient_scale_across_temperatures() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(64, 10)
    base = torch.randn(64, 10)
    norms = []
    for temperature in (1.0, 4.0, 8.0):
        student = base.clone().requires_grad_(True)
        SoftTargetKL(temperature=temperature)(student, teacher).backward()
        norms.append(student.grad.norm().item())
    # Without T² the gradient would shrink by about T² (64x at T=8); with it, it stays within ~4x.
    assert max(norms) / min(norms) < 4


def test_alpha_mixes_kd_and_ce() -> None:
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    total, parts = DistillationLoss(temperature=2.0, alpha=0.25)(s, t, y)
    assert total.item() == pytest.approx(0.25 * parts["kd"] + 0.75 * parts["ce"], rel=1e-5)


def test_registry_names_and_did_you_mean() -> None:
    assert {"kd", "ce"} <= set(LOSSES.names())
    with pytest.raises(KeyError, match="Did you mean 'kd'"):
        LOSSES.get("kdd")
