"""The distillation loop, on Hugging Face Accelerate.

The teacher's logits come in precomputed (from the cache), so a step costs one student forward and
backward. Mixed precision is bf16 where the CPU has native bf16 support (AVX-512 BF16 / AMX), else fp32.

Example:
    >>> result = distill(student, inputs, teacher_logits, labels, TrainSettings(epochs=1))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, TensorDataset
from transformers import get_linear_schedule_with_warmup

from edge_distill.errors import EdgeDistillError
from edge_distill.losses import DistillationLoss

PRECISIONS = ("auto", "bf16", "fp16", "no")
StepCallback = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainSettings:
    """How a student is distilled. ``alpha`` weighs the soft-target (KD) term against hard labels."""

    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    temperature: float = 2.0
    alpha: float = 0.5
    seed: int = 0
    mixed_precision: str = "auto"

    def __post_init__(self) -> None:
        checks = {
            "--epochs must be at least 1": self.epochs >= 1,
            "--batch-size must be at least 1": self.batch_size >= 1,
            "--lr must be > 0": self.lr > 0,
            "--temperature must be > 0": self.temperature > 0,
            "--alpha must be within [0, 1]": 0.0 <= self.alpha <= 1.0,
            "--mixed-precision must be auto, bf16, fp16 or no": self.mixed_precision in PRECISIONS,
        }
        for message, ok in checks.items():
            if not ok:
                raise EdgeDistillError(f"{message}; fix the value and run again.")

    def resolved_precision(self) -> str:
        """'bf16' where this CPU runs bf16 natively, 'no' otherwise, unless set explicitly."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        if torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "bf16"
        return "no"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "mixed_precision": self.resolved_precision()}


@dataclass
class TrainResult:
    steps: int
    seconds: float
    epoch_losses: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"steps": self.steps, "seconds": round(self.seconds, 1), "epoch_losses": self.epoch_losses}


def distill(
    student: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    *,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train ``student`` toward the cached ``teacher_logits`` (n, labels) and the hard ``labels`` (n,)."""
    set_seed(settings.seed)
    accelerator = Accelerator(mixed_precision=settings.resolved_precision())
    dataset = TensorDataset(inputs["input_ids"], inputs["attention_mask"], teacher_logits.float(), labels)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total = settings.epochs * math.ceil(len(dataset) / settings.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total), total)
    model, optimizer, loader, scheduler = accelerator.prepare(student, optimizer, loader, scheduler)
    objective = DistillationLoss(temperature=settings.temperature, alpha=settings.alpha)
    result, start, step = TrainResult(steps=0, seconds=0.0), time.perf_counter(), 0
    model.train()
    for _ in range(settings.epochs):
        sums: dict[str, float] = {}
        for input_ids, attention_mask, soft, hard in loader:
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (batch, labels)
            loss, parts = objective(logits, soft, hard)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            parts["loss"] = float(loss.detach())
            sums = {k: sums.get(k, 0.0) + v for k, v in parts.items()}
            if on_step:
                on_step(step, total, parts)
        result.epoch_losses.append({k: round(v / len(loader), 5) for k, v in sums.items()})
    # Drop Accelerate's autocast wrapper from forward: the student is exported and evaluated in fp32.
    accelerator.unwrap_model(model, keep_fp32_wrapper=False).eval()
    accelerator.free_memory()
    result.steps, result.seconds = step, time.perf_counter() - start
    return result


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], *, batch_size: int = 64
) -> torch.Tensor:
    """Exact fp32 logits (n, labels) of a sequence classifier, in eval mode."""
    model.eval()
    outputs = []
    for start in range(0, len(inputs["input_ids"]), batch_size):
        batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
        outputs.append(model(**batch).logits.float())
    return torch.cat(outputs)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def agreement(logits: torch.Tensor, other: torch.Tensor) -> float:
    """Share of examples where both models pick the same top-1 label."""
    return float((logits.argmax(-1) == other.argmax(-1)).float().mean())
