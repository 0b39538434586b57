"""Training throughput of distillation with a cached teacher, a teacher run every step, and a plain HF loop.

Run: python benchmarks/distill.py [--examples 512] [--repeats 3] [--seq-len 128] [--threads N] [--json]

Three modes train the same student (same init, same data, same batch size, same number of steps, same
precision) for one epoch each:

* ``cached``: ``edge_distill.distill(scheme="offline")``: the teacher ran once before training and its
  logits are read from a disk cache;
* ``online``: ``edge_distill.distill(scheme="online")``: the teacher runs under ``no_grad`` every step;
* ``hf_trainer``: the reference written the common way: a ``transformers.Trainer`` subclass whose
  ``compute_loss`` runs the teacher every step and mixes ``alpha * KL * T² + (1 - alpha) * CE``.

Precision is ``--precision`` in all three (default auto: bf16 autocast where the CPU runs bf16 natively,
else fp32; the table says which). Samples/s count training steps only, on one clock for all three modes
(from the end of the first optimizer step to the end of the last), not model loading or the cache build.
The machine is noisy, so the modes alternate, in a rotated order, over ``--repeats`` rounds; the table
gives the median of each and the ratios cached/online and cached/HF-Trainer. The one-time cache build (the
teacher's pass over the data) is reported apart, with the cached throughput amortised over
``--amortise-epochs`` (build + that many epochs).

``--tiny`` runs small random BERTs on random tokens (offline, seconds): a smoke test, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # after the environment above, which transformers reads at import
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

import edge_distill
from edge_distill.students import StudentSpec, build_student
from edge_distill.teachers import quiet_transformers
from edge_distill.trainer import TrainSettings

SCHEMA = 1
MODES = ("cached", "online", "hf_trainer")
LABELS = {
    "cached": "edge-distill, cached teacher",
    "online": "edge-distill, teacher every step",
    "hf_trainer": "HF Trainer subclass, KL each step",
}
DEMO_STUDENT = StudentSpec(layers=4, hidden=192, heads=6, intermediate=768)
TINY_STUDENT = StudentSpec(layers=2, hidden=32, heads=2, intermediate=64)


@dataclass
class Workload:
    """One teacher, the student shape cut from it, and the training columns every mode gets."""

    name: str
    teacher: nn.Module
    spec: StudentSpec
    data: dict[str, torch.Tensor]  # input_ids, attention_mask (n, seq); labels (n,)

    def student(self) -> nn.Module:
        """A fresh student, identical for every mode (same seed, initialised from the teacher)."""
        return build_student(self.teacher, self.spec, seed=0)


def demo_workload(examples: int, seq_len: int) -> Workload:
    """The built-in demo teacher (MiniLM 6x384 + BBC News head) on a seeded subset of its training split."""
    from edge_distill.data import load_demo_data, tokenize
    from edge_distill.demo_teacher import build_demo_teacher

    data = load_demo_data()  # the full data: the cached demo teacher is keyed on it
    teacher = build_demo_teacher(data, seq_len=seq_len)
    keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:examples]
    texts = [data.train.texts[i] for i in keep.tolist()]
    columns = tokenize(teacher.tokenizer, texts, seq_len)
    columns["labels"] = torch.as_tensor(data.train.labels[keep.numpy()], dtype=torch.long)
    return Workload("demo", teacher.model.eval(), DEMO_STUDENT, columns)


def tiny_workload(examples: int, seq_len: int) -> Workload:
    """A random 4-layer BERT teacher (64 wide, 3 labels) on random tokens: offline, seconds."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=max(64, seq_len), num_labels=3,
    )  # fmt: skip
    with quiet_transformers():
        teacher = BertForSequenceClassification(config).eval()
    g = torch.Generator().manual_seed(0)
    columns = {
        "input_ids": torch.randint(0, config.vocab_size, (examples, seq_len), generator=g),
        "attention_mask": torch.ones(examples, seq_len, dtype=torch.long),
        "labels": torch.randint(0, config.num_labels, (examples,), generator=g),
    }
    return Workload("tiny", teacher, TINY_STUDENT, columns)


class StepClock:
    """The end time of every optimizer step, fed by each framework's step callback.

    Every mode is timed alike, from the end of its first step to the end of its last: the first step (lazy
    kernel set-up, allocator warm-up) and each framework's set-up and tear-down are left out.
    """

    def __init__(self) -> None:
        self.marks: list[float] = []

    def tick(self, *_: Any, **__: Any) -> None:
        self.marks.append(time.perf_counter())


@dataclass
class Timing:
    """One mode's one-epoch run: the step clock, the framework's own samples/s, and the call's wall time."""

    clock: StepClock
    samples: int  # trained after the first step
    reported_samples_per_s: float  # the framework's own figure (whole loop, first step included)
    wall: float = 0.0  # the whole call (engine modes): set-up and, for the first offline call, the cache
    loop_seconds: float = 0.0  # the engine's own loop timer
    cache: dict[str, Any] | None = None

    @property
    def steps(self) -> int:
        return len(self.clock.marks)

    @property
    def samples_per_s(self) -> float:
        return self.samples / (self.clock.marks[-1] - self.clock.marks[0])


def run_engine(work: Workload, settings: TrainSettings, scheme: str, cache: Path) -> Timing:
    """One epoch of ``edge_distill.distill`` (``scheme`` offline: the cached teacher; online: live)."""
    losses = {"kd": settings.alpha, "ce": 1.0 - settings.alpha}
    student, clock = work.student(), StepClock()
    started = time.perf_counter()
    result = edge_distill.distill(
        work.teacher, student, work.data, losses, scheme=scheme, settings=settings, cache=cache,
        on_step=clock.tick,
    )  # fmt: skip
    wall, train = time.perf_counter() - started, result.train
    cache_info = result.cache if scheme == "offline" else None
    samples = train.samples - settings.batch_size  # the first step's batch is not on the clock
    return Timing(clock, samples, train.samples_per_s, wall, train.seconds, cache_info)


def rows(columns: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """One dict per example: a map-style dataset, as a Trainer user would hand it over."""
    return [{k: v[i] for k, v in columns.items()} for i in range(len(columns["labels"]))]


def _kd_trainer_class() -> type:
    """The reference: the distillation Trainer of the tutorials (teacher under no_grad in compute_loss)."""
    from transformers import Trainer

    class DistillationTrainer(Trainer):
        def __init__(self, *args: Any, teacher: nn.Module, temperature: float, alpha: float, **kw: Any):
            super().__init__(*args, **kw)
            self.teacher = teacher.eval().requires_grad_(False)
            self.temperature, self.alpha = temperature, alpha

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            # The student's forward is autocast by accelerate's prepare; the teacher is not prepared, so
            # it gets the same autocast here (else it would run fp32 and the comparison would be unfair).
            with torch.no_grad(), self.accelerator.autocast():
                teacher_logits = self.teacher(**inputs).logits  # (batch, classes)
            t = self.temperature
            kd = F.kl_div(
                F.log_softmax(outputs.logits.float() / t, dim=-1),
                F.softmax(teacher_logits.float() / t, dim=-1),
                reduction="batchmean",
            ) * (t * t)
            loss = self.alpha * kd + (1.0 - self.alpha) * F.cross_entropy(outputs.logits.float(), labels)
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer


def run_hf_trainer(work: Workload, settings: TrainSettings, out_dir: Path) -> Timing:
    """One epoch of the reference Trainer, on the same step clock (a callback at every step end)."""
    from transformers import TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=1,
        learning_rate=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type="linear",
        max_grad_norm=settings.max_grad_norm,
        optim="adamw_torch",  # the engine's optimizer (the Trainer's default is the fused kernel)
        bf16=settings.resolved_precision() == "bf16",
        use_cpu=not torch.cuda.is_available(),
        seed=settings.seed,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )
    trainer = _kd_trainer_class()(
        model=work.student(),
        args=args,
        train_dataset=rows(work.data),
        callbacks=[Clock()],
        teacher=work.teacher,
        temperature=settings.temperature,
        alpha=settings.alpha,
    )
    trainer.remove_callback(PrinterCallback)  # its end-of-training line would land amid the table
    metrics = trainer.train().metrics
    samples = len(work.data["labels"]) - settings.batch_size
    return Timing(clock, samples, metrics["train_samples_per_second"])


def rounds_order(repeats: int) -> list[list[str]]:
    """The modes in each round, rotated so that no mode always runs first (or after the same one)."""
    return [list(MODES[r % 3 :] + MODES[: r % 3]) for r in range(repeats)]


def measure(work: Workload, settings: TrainSettings, repeats: int, say: Callable[[str], None]) -> dict:
    """Build the cache (timed, also the warm-up), then alternate the three modes for ``repeats`` rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "teacher-cache"
        first = run_engine(work, settings, "offline", cache)
        say(f"cache built: {first.cache['bytes_per_example']} bytes/example ({first.cache['cache']})")
        runs: dict[str, list[Timing]] = {mode: [] for mode in MODES}
        for r, order in enumerate(rounds_order(repeats)):
            for mode in order:
                if mode == "hf_trainer":
                    timing = run_hf_trainer(work, settings, Path(tmp) / "hf")
                else:
                    timing = run_engine(work, settings, "offline" if mode == "cached" else "online", cache)
                runs[mode].append(timing)
                say(f"round {r + 1}/{repeats}  {mode:<10}  {timing.samples_per_s:7.1f} samples/s")
    return {"first": first, "runs": runs}


def summarise(work: Workload, settings: TrainSettings, measured: dict, amortise_epochs: int) -> dict:
    """Medians, side-by-side ratios (of the medians, and per round), and the cache's one-time cost."""
    runs, first = measured["runs"], measured["first"]
    median = {m: statistics.median(t.samples_per_s for t in runs[m]) for m in MODES}
    per_round = {
        other: [c.samples_per_s / o.samples_per_s for c, o in zip(runs["cached"], runs[other], strict=True)]
        for other in ("online", "hf_trainer")
    }
    n = len(work.data["labels"])
    return {
        "workload": workload_info(work, settings, len(runs["cached"])),
        "modes": {m: mode_summary(m, runs[m]) for m in MODES},
        "ratios": {
            "cached_over_online": round(median["cached"] / median["online"], 3),
            "cached_over_hf_trainer": round(median["cached"] / median["hf_trainer"], 3),
            "per_round": {f"cached_over_{k}": [round(v, 3) for v in vs] for k, vs in per_round.items()},
        },
        "cache": cache_cost(first, runs["cached"], median, n, amortise_epochs),
    }


def mode_summary(mode: str, runs: list[Timing]) -> dict:
    return {
        "label": LABELS[mode],
        "samples_per_s": round(statistics.median(t.samples_per_s for t in runs), 2),
        "runs_samples_per_s": [round(t.samples_per_s, 2) for t in runs],
        # the framework's own figure (its whole loop: first step and tear-down included)
        "reported_samples_per_s": round(statistics.median(t.reported_samples_per_s for t in runs), 2),
        "steps_per_epoch": sorted({t.steps for t in runs}),
    }


def cache_cost(first: Timing, cached: list[Timing], median: dict, n: int, epochs: int) -> dict:
    """Size, one-time build time and the cached mode amortised over ``epochs`` (build + epochs of training).

    Build time: the first offline call's wall time outside its training loop, less the same for the calls
    that hit the cache (model checks, fingerprints, reading the cache), so it counts the teacher pass.
    """
    overhead = statistics.median(t.wall - t.loop_seconds for t in cached)
    build = max(0.0, first.wall - first.loop_seconds - overhead)
    amortised = epochs * n / (build + epochs * n / median["cached"])
    return {
        "bytes_per_example": first.cache["bytes_per_example"],
        "bytes": first.cache["bytes"],
        "stored": first.cache["stored"],
        "build_seconds": round(build, 2),
        "amortised": {
            "epochs": epochs,
            "samples_per_s": round(amortised, 2),
            "over_online": round(amortised / median["online"], 3),
            "over_hf_trainer": round(amortised / median["hf_trainer"], 3),
        },
    }


def workload_info(work: Workload, settings: TrainSettings, repeats: int) -> dict:
    def params(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    return {
        "name": work.name,
        "examples": len(work.data["labels"]),
        "seq_len": work.data["input_ids"].shape[1],
        "batch_size": settings.batch_size,
        "precision": settings.resolved_precision(),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "teacher_params": params(work.teacher),
        "student": {**work.spec.as_dict(), "params": params(work.student())},
        "losses": {"kd": settings.alpha, "ce": 1.0 - settings.alpha, "temperature": settings.temperature},
    }


def render(summary: dict, wall: float, console: Console) -> None:
    """The side-by-side table and the cache lines."""
    w, modes, ratios, cache = summary["workload"], summary["modes"], summary["ratios"], summary["cache"]
    table = Table(
        title=f"Distillation training throughput: {w['name']} workload, {w['examples']} examples x "
        f"{w['seq_len']} tokens, batch {w['batch_size']}, {w['precision']}, {w['torch_threads']} threads",
        caption=f"median of {w['repeats']} rounds, modes alternating in rotated order; training loop only",
    )
    for column in ("mode", "samples/s (median)", "per round", "cached ÷ mode", "per-round ratios"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode in MODES:
        row = modes[mode]
        ratio = 1.0 if mode == "cached" else ratios[f"cached_over_{mode}"]
        spread = ratios["per_round"].get(f"cached_over_{mode}")
        span = f"{min(spread):.2f}-{max(spread):.2f}x" if spread else ""
        runs = " / ".join(f"{v:.1f}" for v in row["runs_samples_per_s"])
        table.add_row(row["label"], f"{row['samples_per_s']:.1f}", runs, f"{ratio:.2f}x", span)
    console.print(table)
    a = cache["amortised"]
    console.print(
        f"cache: {cache['bytes_per_example']:g} bytes/example ({cache['bytes']} bytes in all, "
        f"stores {', '.join(cache['stored'])}), built once in {cache['build_seconds']:.1f} s\n"
        f"amortised over {a['epochs']} epochs (build + training): {a['samples_per_s']:.1f} samples/s, "
        f"{a['over_online']:.2f}x online, {a['over_hf_trainer']:.2f}x HF Trainer\n"
        f"benchmark wall time: {wall:.0f} s",
        highlight=False,
    )
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, help="training examples (default 512; --tiny: 48)")
    parser.add_argument("--repeats", type=int, help="alternating rounds (default 3; --tiny: 1)")
    parser.add_argument("--seq-len", type=int, help="tokens per example (default 128; --tiny: 16)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "no"),
        default="auto",
        help="the same in all three modes; auto: bf16 where the CPU runs it natively, else fp32",
    )
    parser.add_argument("--amortise-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    parser.add_argument("--tiny", action="store_true", help="small random models: a smoke run in seconds")
    parser.add_argument("--json", action="store_true", help="print a JSON envelope instead of the table")
    args = parser.parse_args(argv)
    defaults = (48, 1, 16) if args.tiny else (512, 3, 128)
    for name, default in zip(("examples", "repeats", "seq_len"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.examples < 2 * args.batch_size or args.repeats < 1 or args.amortise_epochs < 1:
        parser.error("need --examples >= 2 x --batch-size, --repeats >= 1 and --amortise-epochs >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def busy_warning(load: list[float], threads: int) -> str | None:
    """A warning when other work shared the cores: torch's threads then wait on each other (OpenMP barriers
    spin while a sibling thread is descheduled), which slows every step many times over and makes the
    figures noisy."""
    cores = os.cpu_count() or 1
    if load[0] + threads <= cores + 0.5 and load[1] <= cores + 0.5:  # the end figure counts this run too
        return None
    hint = "; --threads 1 is steadier on a shared machine" if threads > 1 else ""
    return (
        f"the machine was busy (1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end, "
        f"on {cores} cores, for {threads} torch threads): absolute figures are low and ratios noisy{hint}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    console, status = Console(stderr=args.json), Console(stderr=True)
    started, load = time.perf_counter(), [os.getloadavg()[0]]
    settings = TrainSettings(epochs=1, batch_size=args.batch_size, mixed_precision=args.precision)
    # Library chatter goes to stderr, so that --json leaves stdout to the envelope alone.
    with contextlib.redirect_stdout(sys.stderr), quiet_transformers():
        work = (tiny_workload if args.tiny else demo_workload)(args.examples, args.seq_len)
        measured = measure(work, settings, args.repeats, lambda text: status.print(text, highlight=False))
    summary = summarise(work, settings, measured, args.amortise_epochs)
    wall = time.perf_counter() - started
    load.append(os.getloadavg()[0])
    summary["workload"]["load_average_1min"] = {"start": round(load[0], 2), "end": round(load[1], 2)}
    warning = busy_warning(load, torch.get_num_threads())
    summary["warnings"] = [warning] if warning else []
    summary["wall_seconds"] = round(wall, 1)
    if args.json:
        print(json.dumps({"schema": SCHEMA, "benchmark": "distill", "result": summary}, indent=2))
    else:
        render(summary, wall, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
