"""The KD loss is wired right: it pulls a student toward the teacher, and T² keeps gradients in scale."""

from __future__ import annotations

import pytest
import torch

from edge_distill.losses import LOSSES, DistillationLoss, SoftTargetKL, build_objective, create_loss


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
    with pytest.raises(KeyError, match="did you mean 'kd'"):
        LOSSES.get("kdd")


# --- The wider library: every registered loss has a tiny real case. -------------------------------------


def _logits(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def _attention(seed: int, heads: int = 2) -> torch.Tensor:
    return torch.softmax(_logits(seed, 2, heads, 4, 4), dim=-1)  # (batch, heads, q, k)


# name -> (constructor kwargs, builder of (student, teacher) given "same" flag). Inputs stay tiny.
CASES = {
    "kd": ({"temperature": 2.0}, lambda same: (_logits(1, 4, 5), _logits(1 if same else 2, 4, 5))),
    "reverse_kd": ({"temperature": 2.0}, lambda same: (_logits(1, 4, 5), _logits(1 if same else 2, 4, 5))),
    "jsd": ({"beta": 0.5}, lambda same: (_logits(1, 4, 5), _logits(1 if same else 2, 4, 5))),
    "logit_mse": ({}, lambda same: (_logits(1, 4, 5), _logits(1 if same else 2, 4, 5))),
    "hidden_mse": ({}, lambda same: (_logits(1, 2, 3, 6), _logits(1 if same else 2, 2, 3, 6))),
    "hidden_cosine": ({}, lambda same: (_logits(1, 2, 3, 6), _logits(1 if same else 2, 2, 3, 6))),
    "embedding_mse": ({}, lambda same: (_logits(1, 4, 6), _logits(1 if same else 2, 4, 6))),
    "embedding_cosine": ({}, lambda same: (_logits(1, 4, 6), _logits(1 if same else 2, 4, 6))),
    "attention_kl": ({}, lambda same: (_attention(1), _attention(1 if same else 2))),
    "attention_mse": ({}, lambda same: (_attention(1), _attention(1 if same else 2))),
    "relation": ({}, lambda same: (_logits(1, 4, 6), _logits(1 if same else 2, 4, 6))),
}


def test_every_registered_loss_has_a_case() -> None:
    # "ce" compares with labels, not a teacher; it is covered by its own tests.
    assert set(LOSSES.names()) - {"ce"} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_is_zero_at_teacher_and_positive_away(name: str) -> None:
    kwargs, make = CASES[name]
    loss = create_loss(name, **kwargs)
    assert loss(*make(True)).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(*make(False)).item() > 1e-3


@pytest.mark.parametrize("name", sorted(LOSSES.names()))
def test_constructors_are_keyword_only_and_reject_unknown_arguments(name: str) -> None:
    with pytest.raises(TypeError, match=name):
        create_loss(name, temprature=2.0)
    with pytest.raises(TypeError):
        LOSSES.get(name)(1.0)


def test_forward_and_reverse_kl_differ_on_asymmetric_distributions() -> None:
    student = torch.tensor([[4.0, 0.0, 0.0]])
    teacher = torch.tensor([[2.0, 2.0, -3.0]])
    forward = SoftTargetKL(temperature=1.0)(student, teacher).item()
    reverse = create_loss("reverse_kd", temperature=1.0)(student, teacher).item()
    assert abs(forward - reverse) > 0.1
    assert reverse == pytest.approx(SoftTargetKL(temperature=1.0)(teacher, student).item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_endpoints_are_forward_and_reverse_kl(temperature: float) -> None:
    s, t = _logits(3, 6, 5), _logits(4, 6, 5)
    kd = SoftTargetKL(temperature=temperature)(s, t).item()
    reverse = create_loss("reverse_kd", temperature=temperature)(s, t).item()
    jsd = {beta: create_loss("jsd", beta=beta, temperature=temperature)(s, t).item() for beta in (0, 1e-4, 1)}
    assert jsd[0] == pytest.approx(kd, rel=1e-5)
    assert jsd[1] == pytest.approx(reverse, rel=1e-5)
    # Inside (0, 1) the generalized JSD tends to beta * KL(teacher || student) as beta -> 0, and to
    # (1 - beta) * KL(student || teacher) as beta -> 1 (GKD).
    assert jsd[1e-4] / 1e-4 == pytest.approx(kd, rel=1e-2)
    near_one = create_loss("jsd", beta=1 - 1e-4, temperature=temperature)(s, t).item()
    assert near_one / 1e-4 == pytest.approx(reverse, rel=1e-2)


def test_jsd_half_is_symmetric_and_rejects_out_of_range_beta() -> None:
    s, t = _logits(3, 6, 5), _logits(4, 6, 5)
    jsd = create_loss("jsd", beta=0.5)
    assert jsd(s, t).item() == pytest.approx(jsd(t, s).item(), rel=1e-5)
    with pytest.raises(ValueError, match="beta"):
        create_loss("jsd", beta=1.5)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("kd", {"temperature": 2.0}),
        ("reverse_kd", {"temperature": 2.0}),
        ("jsd", {"beta": 0.5}),
        ("logit_mse", {}),
    ],
)
def test_response_losses_train_free_logits_to_the_teacher(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    teacher = torch.randn(8, 5) * 2
    student = torch.zeros(8, 5, requires_grad=True)
    loss_fn = create_loss(name, **kwargs)
    optimizer = torch.optim.Adam([student], lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        loss_fn(student, teacher).backward()
        optimizer.step()
    gap = (torch.softmax(student, -1) - torch.softmax(teacher, -1)).abs().max().item()
    assert gap < 0.03, f"{name}: gap {gap}"


def test_ce_handles_sequences_and_ignores_padding_labels() -> None:
    logits = _logits(5, 2, 3, 4)  # (batch, seq, classes)
    labels = torch.tensor([[0, 1, -100], [2, -100, 3]])
    keep = labels.reshape(-1) != -100
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 4)[keep], labels.reshape(-1)[keep])
    assert LOSSES.get("ce")()(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("hidden_mse", (4, 3)), ("hidden_cosine", (4, 3)), ("embedding_mse", (8,)), ("embedding_cosine", (8,))],
)
def test_projection_is_learned_when_widths_differ(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    student = torch.randn(*shape, 4)
    teacher = student @ torch.randn(4, 6)  # linearly related, wider teacher
    loss_fn = create_loss(name, student_dim=4, teacher_dim=6)
    assert isinstance(loss_fn.projection, torch.nn.Linear)
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=0.05)
    start = loss_fn(student, teacher).item()
    for _ in range(400):
        optimizer.zero_grad()
        loss = loss_fn(student, teacher)
        loss.backward()
        optimizer.step()
    assert loss.item() < max(start * 1e-3, 1e-4), f"{name}: {start} -> {loss.item()}"


def test_width_mismatch_without_projection_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="student_dim"):
        create_loss("hidden_mse")(torch.randn(2, 3, 4), torch.randn(2, 3, 6))
    assert isinstance(create_loss("hidden_mse", student_dim=6, teacher_dim=6).projection, torch.nn.Identity)


def test_hidden_loss_ignores_padded_tokens() -> None:
    student, teacher = _logits(1, 2, 3, 6), _logits(2, 2, 3, 6)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    changed = student.clone()
    changed[0, 2] += 5.0
    changed[1, 1:] -= 3.0
    for name in ("hidden_mse", "hidden_cosine"):
        loss = create_loss(name)
        assert loss(student, teacher, mask).item() == pytest.approx(loss(changed, teacher, mask).item())
        assert loss(student, teacher).item() != pytest.approx(loss(changed, teacher).item())


@pytest.mark.parametrize("name", ["attention_kl", "attention_mse"])
def test_attention_loss_ignores_padded_queries_and_keys(name: str) -> None:
    student, teacher = _attention(1), _attention(2)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # (batch, seq)
    loss = create_loss(name)
    base = loss(student, teacher, mask).item()
    padded = student.clone()
    padded[0, :, 3, :] = 0.7  # a padded query row
    padded[1, :, :, 2:] = 0.9  # padded key columns
    assert loss(padded, teacher, mask).item() == pytest.approx(base, rel=1e-6)
    real = student.clone()
    real[0, :, 1, :] = torch.tensor([0.7, 0.1, 0.1, 0.1])
    assert loss(real, teacher, mask).item() != pytest.approx(base, rel=1e-3)


@pytest.mark.parametrize("name", ["attention_kl", "attention_mse"])
def test_attention_head_counts_are_reconciled(name: str) -> None:
    student = _attention(1, heads=2)
    grouped_teacher = student.repeat_interleave(2, dim=1)  # teacher heads 0,1 -> student 0; 2,3 -> 1
    loss = create_loss(name)
    assert loss(student, grouped_teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(student, grouped_teacher.flip(1)).item() > 1e-4
    # 3 teacher heads for 2 student heads: both sides are averaged over heads.
    three = torch.cat([student, student.mean(1, keepdim=True)], dim=1)
    assert loss(student, three).item() == pytest.approx(0.0, abs=1e-6)


def test_relation_is_invariant_to_rotation_and_width() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(6, 8)
    loss = create_loss("relation")
    rotation = torch.linalg.qr(torch.randn(8, 8))[0]
    assert loss(teacher @ rotation, teacher).item() == pytest.approx(0.0, abs=1e-6)
    wider = teacher @ torch.linalg.qr(torch.randn(16, 8))[0].T  # (6, 16): same Gram, other width
    assert loss(wider, teacher).item() == pytest.approx(0.0, abs=1e-6)
    # Rows are L2-normalized: per-sample scale (e.g. a student with smaller activations) does not matter.
    assert loss(teacher * torch.rand(6, 1).add(0.1) * 10, teacher).item() == pytest.approx(0.0, abs=1e-6)
    narrow = torch.randn(6, 3, requires_grad=True)
    value = loss(narrow, teacher)
    value.backward()
    assert value.item() > 1e-3 and narrow.grad.abs().sum() > 0
    assert list(loss.parameters()) == []


def test_build_objective_weights_terms_and_collects_projection_parameters() -> None:
    objective = build_objective(
        {
            "kd": {"weight": 0.5, "temperature": 2.0},
            "ce": 0.25,
            "layer2": {"loss": "hidden_mse", "weight": 2.0, "student_dim": 4, "teacher_dim": 6},
        }
    )
    s, t, y = _logits(1, 4, 5), _logits(2, 4, 5), torch.tensor([0, 1, 2, 3])
    hs, ht = _logits(3, 4, 2, 4), _logits(4, 4, 2, 6)
    total, parts = objective({"kd": (s, t), "ce": (s, y), "layer2": {"student": hs, "teacher": ht}})
    assert sorted(parts) == ["ce", "kd", "layer2"]
    expected = 0.5 * parts["kd"] + 0.25 * parts["ce"] + 2.0 * parts["layer2"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert sum(p.numel() for p in objective.parameters()) == 24
    with pytest.raises(KeyError, match="missing"):
        objective({"kd": (s, t)})


def test_build_objective_errors_name_the_problem() -> None:
    with pytest.raises(KeyError, match="did you mean 'jsd'"):
        build_objective({"jsdd": 1.0})
    with pytest.raises(TypeError, match=r"'kd'.*'temprature'.*Did you mean 'temperature'"):
        build_objective({"kd": {"weight": 1.0, "temprature": 2.0}})
    with pytest.raises(TypeError, match="weight"):
        build_objective({"kd": "heavy"})
