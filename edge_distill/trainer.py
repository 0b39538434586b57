"""The distillation training loop, on Hugging Face Accelerate.

One step: the teacher's views (cached, live, a peer, or the student's own EMA), one student forward through
the objective, backward. Around it: gradient accumulation, a linear schedule with warm-up, bf16 autocast
where the CPU runs it natively, gradient clipping, evaluation on the validation split after every epoch
with early stopping, and an atomic checkpoint after every epoch that ``resume`` continues from. Each epoch
reseeds from (seed, epoch), so a resumed run replays exactly what an uninterrupted run would have done.

Example:
    >>> result = fit(run)                      # a Run is built by edge_distill.engine  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from torch import nn
from transformers import get_linear_schedule_with_warmup

from edge_distill.atomic import write_bytes_atomic
from edge_distill.errors import EdgeDistillError
from edge_distill.objective import Objective
from edge_distill.schemes import PeerModule, TeacherSource
from edge_distill.views import LABEL_KEYS, Adapter, Batch, Views, collect

PRECISIONS = ("auto", "bf16", "fp16", "no")
StepCallback = Callable[[int, int, dict[str, float]], None]
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainSettings:
    """How a student is distilled. ``alpha`` weighs the soft-target (KD) term against hard labels.

    ``grad_accum`` micro-batches make one optimizer step; ``patience`` epochs without a better validation
    metric stop training early (None: never); ``ema_decay`` is the self-distillation EMA's decay.
    """

    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    temperature: float = 2.0
    alpha: float = 0.5
    seed: int = 0
    mixed_precision: str = "auto"
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    patience: int | None = None
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        checks = {
            "--epochs must be at least 1": self.epochs >= 1,
            "--batch-size must be at least 1": self.batch_size >= 1,
            "--lr must be > 0": self.lr > 0,
            "--temperature must be > 0": self.temperature > 0,
            "--alpha must be within [0, 1]": 0.0 <= self.alpha <= 1.0,
            "--mixed-precision must be auto, bf16, fp16 or no": self.mixed_precision in PRECISIONS,
            "--grad-accum must be at least 1": self.grad_accum >= 1,
            "--patience must be at least 1": self.patience is None or self.patience >= 1,
            "ema_decay must be within [0, 1)": 0.0 <= self.ema_decay < 1.0,
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
    samples: int = 0
    epoch_losses: list[dict[str, float]] = field(default_factory=list)
    val_metrics: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    resumed_from_epoch: int | None = None
    processes: int = 1

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "samples_per_s": round(self.samples_per_s, 1),
            "epoch_losses": self.epoch_losses,
            "val_metrics": [round(m, 5) for m in self.val_metrics],
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "resumed_from_epoch": self.resumed_from_epoch,
            "processes": self.processes,
        }


class Trainable(nn.Module):
    """Student and objective in one module, so DDP syncs the learned projections with the student."""

    def __init__(self, student: nn.Module, objective: Objective, adapter: Adapter) -> None:
        super().__init__()
        self.student, self.objective, self.adapter = student, objective, adapter

    def forward(self, batch: Batch, teacher: Views) -> tuple[torch.Tensor, dict[str, torch.Tensor], Views]:
        views = collect(self.student, self.adapter, batch, self.objective.student_need)
        loss, parts = self.objective(views, teacher, labels_of(batch), batch.get("attention_mask"))
        return loss, parts, views


@dataclass
class Run:
    """Everything ``fit`` needs; ``edge_distill.engine`` builds it."""

    trainable: Trainable
    source: TeacherSource
    examples: dict[str, torch.Tensor]  # (n, ...) each; teacher.* columns for a cached teacher
    settings: TrainSettings
    evaluate: Callable[[nn.Module], float] | None = None  # higher is better
    peer: PeerModule | None = None  # mutual learning
    peer_objective: Objective | None = None  # the peer's own loss (labels + the student as its teacher)
    checkpoint_dir: Path | None = None
    resume: bool = False
    fingerprint: str = ""
    augment: Callable[[Batch, torch.Generator], Batch] | None = None
    on_step: StepCallback | None = None
    accelerator: Accelerator | None = None


def labels_of(batch: Batch) -> torch.Tensor | None:
    return next((batch[k] for k in LABEL_KEYS if k in batch), None)


def make_accelerator(settings: TrainSettings) -> Accelerator:
    """One Accelerator for the run: CPU processes use gloo under ``accelerate launch``.

    Accelerate keeps one process-wide state and refuses another precision once it is set; a single
    process may run one distillation after another with different settings, so its state is reset then.
    """
    precision = settings.resolved_precision()
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def epoch_batches(n: int, settings: TrainSettings, epoch: int, rank: int, world: int) -> list[torch.Tensor]:
    """This rank's batches of row indices for ``epoch``: one shuffle from (seed, epoch), dealt round-robin.

    Every rank gets the same number of batches (DDP steps together): the shortest ranks repeat from the
    start of the shuffle.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed * 100_003 + epoch))
    batches = list(order.split(settings.batch_size))
    per_rank = math.ceil(len(batches) / world)
    padded = batches + batches[: per_rank * world - len(batches)]
    return padded[rank::world]


def fit(run: Run) -> TrainResult:
    """Train ``run.trainable`` for ``settings.epochs`` (less when stopping early); restore the best epoch."""
    loop = _Loop.prepare(run)
    start_epoch = loop.resume()
    started = time.perf_counter()
    for epoch in range(start_epoch, run.settings.epochs):
        if loop.stop:
            break
        loop.train_epoch(epoch)
        loop.end_epoch(epoch)
    loop.result.seconds += time.perf_counter() - started  # training, evaluation, checkpoints; not clean-up
    acc = loop.acc
    student = acc.unwrap_model(loop.model, keep_fp32_wrapper=False).student
    if loop.best_state is not None:
        student.load_state_dict(loop.best_state)
    student.eval()
    acc.wait_for_everyone()
    acc.free_memory()
    loop.result.processes = acc.num_processes
    return loop.result


@dataclass
class _Loop:
    """The prepared objects of one training run and its progress (what a checkpoint holds)."""

    run: Run
    acc: Accelerator
    model: Any
    optimizer: Any
    scheduler: Any
    peer: Any = None
    peer_opt: Any = None
    total: int = 0
    result: TrainResult = field(default_factory=lambda: TrainResult(steps=0, seconds=0.0))
    best_metric: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stop: bool = False

    PROGRESS = ("best_metric", "best_state", "bad_epochs", "stop")

    @classmethod
    def prepare(cls, run: Run) -> _Loop:
        s, acc = run.settings, run.accelerator or make_accelerator(run.settings)
        batches = epoch_batches(_rows(run), s, 0, acc.process_index, acc.num_processes)
        total = math.ceil(len(batches) / s.grad_accum) * s.epochs
        params = [p for p in run.trainable.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(s.warmup_ratio * total), total)
        # the scheduler is not prepared: Accelerate's steps it num_processes times per step (for a loader
        # it shards), but ``total`` already counts this rank's steps, so the schedule would end early
        model, optimizer = acc.prepare(run.trainable, optimizer)
        loop = cls(run, acc, model, optimizer, scheduler, total=total)
        if run.peer is not None:
            peer_opt = torch.optim.AdamW(run.peer.parameters(), lr=s.lr, weight_decay=s.weight_decay)
            loop.peer, loop.peer_opt = acc.prepare(run.peer, peer_opt)
        return loop

    @property
    def student(self) -> nn.Module:
        return self.acc.unwrap_model(self.model).student

    def train_epoch(self, epoch: int) -> None:
        run, s, acc = self.run, self.run.settings, self.acc
        torch.manual_seed(s.seed * 100_003 + epoch + 1)  # dropout and augmentation replay on resume
        generator = torch.Generator().manual_seed(s.seed * 100_003 + epoch + 2)
        batches = epoch_batches(_rows(run), s, epoch, acc.process_index, acc.num_processes)
        for module in (self.model, self.peer):
            if module is not None:
                module.train()
        sums: dict[str, float] = {}
        for i, rows in enumerate(batches):
            batch = {k: v[rows].to(acc.device) for k, v in run.examples.items()}
            if run.augment is not None:
                batch = run.augment(batch, generator)
            group_start = i - i % s.grad_accum
            group = min(s.grad_accum, len(batches) - group_start)  # micro-batches in this optimizer step
            last = i == group_start + group - 1
            with contextlib.ExitStack() as stack:
                for module in (self.model, self.peer):
                    if module is not None and not last:
                        stack.enter_context(acc.no_sync(module))  # gradients sync once per step
                parts = self.micro_step(batch, group)
            sums = {k: sums.get(k, 0.0) + v for k, v in parts.items()}
            self.result.samples += len(rows) * acc.num_processes
            if last:
                self.optimizer_step()
                if run.on_step and acc.is_main_process:
                    run.on_step(self.result.steps, self.total, parts)
        self.result.epoch_losses.append({k: round(v / len(batches), 5) for k, v in sums.items()})

    def micro_step(self, batch: Batch, group: int) -> dict[str, float]:
        run = self.run
        peer_views = self.peer(batch) if self.peer is not None else None
        teacher = peer_views.detached() if peer_views is not None else run.source.views(batch)
        loss, parts, views = self.model(batch, teacher)
        out = {k: float(v) for k, v in parts.items()}
        out["loss"] = float(loss.detach())
        if peer_views is not None:  # the peer learns from the labels and from the student (DML)
            peer_loss, _ = run.peer_objective(peer_views, views.detached(), labels_of(batch), None)
            loss = loss + peer_loss
            out["peer"] = float(peer_loss.detach())
        self.acc.backward(loss / group)
        return out

    def optimizer_step(self) -> None:
        if self.run.settings.max_grad_norm is not None:
            self.acc.clip_grad_norm_(self.model.parameters(), self.run.settings.max_grad_norm)
        for optimizer in (self.optimizer, self.peer_opt):
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad()
        self.scheduler.step()
        self.result.steps += 1
        self.run.source.after_step(self.student)

    def end_epoch(self, epoch: int) -> None:
        """Evaluate, track the best epoch, stop early if it is time, and checkpoint."""
        self.run.source.after_epoch(self.student)
        if self.run.evaluate is not None:
            metric = self.run.evaluate(self.student)
            self.result.val_metrics.append(metric)
            if metric > self.best_metric:
                self.best_metric, self.bad_epochs, self.result.best_epoch = metric, 0, epoch + 1
                self.best_state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
            else:
                self.bad_epochs += 1
                patience = self.run.settings.patience
                if patience is not None and self.bad_epochs >= patience:
                    self.stop = self.result.stopped_early = True
        self.save(epoch)

    def save(self, epoch: int) -> None:
        """Write the checkpoint atomically (main process), then wait for every rank."""
        run, acc = self.run, self.acc
        if run.checkpoint_dir is None:
            return
        if acc.is_main_process:
            payload = {
                "fingerprint": run.fingerprint,
                "epoch": epoch,
                "trainable": acc.unwrap_model(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "peer": None if self.peer is None else acc.unwrap_model(self.peer).state_dict(),
                "peer_opt": None if self.peer_opt is None else self.peer_opt.state_dict(),
                "source": run.source.state_dict(),
                "progress": {k: getattr(self, k) for k in self.PROGRESS},
                "result": asdict(self.result),
            }
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            write_bytes_atomic(run.checkpoint_dir / CHECKPOINT, buffer.getvalue())
        acc.wait_for_everyone()

    def resume(self) -> int:
        """The epoch to start from: 0, or the one after the checkpoint's when resuming."""
        run = self.run
        path = None if run.checkpoint_dir is None else run.checkpoint_dir / CHECKPOINT
        if path is None or not run.resume or not path.exists():
            return 0
        payload = _read_checkpoint(path, run)
        self.acc.unwrap_model(self.model).load_state_dict(payload["trainable"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.peer is not None:
            self.acc.unwrap_model(self.peer).load_state_dict(payload["peer"])
            self.peer_opt.load_state_dict(payload["peer_opt"])
        run.source.load_state_dict(payload["source"])
        for key, value in payload["progress"].items():
            setattr(self, key, value)
        self.result = TrainResult(**payload["result"])
        self.result.resumed_from_epoch = payload["epoch"] + 1
        return payload["epoch"] + 1


def _rows(run: Run) -> int:
    return len(next(iter(run.examples.values())))


def _read_checkpoint(path: Path, run: Run) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file: say so instead of a traceback
        raise EdgeDistillError(
            f"The checkpoint {path} cannot be read ({exc}); delete it and run again."
        ) from exc
    if payload.get("fingerprint") != run.fingerprint:
        raise EdgeDistillError(
            f"The checkpoint in {run.checkpoint_dir} was written by a run with other settings, model or "
            "data; run again with the same ones, or without --resume to start over."
        )
    return payload


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (settings, specs) and tensors (weights, data)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Mapping) and part and all(isinstance(v, torch.Tensor) for v in part.values()):
            for name in sorted(part):
                tensor = part[name].detach().cpu().contiguous()
                digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
                raw = tensor.reshape(-1).view(torch.uint8)  # reshape: 0-dim tensors (BatchNorm counters)
                digest.update(raw.numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


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
