"""Width pruning + distillation against depth-only students at equal parameters, and vocabulary trimming.

Run: python benchmarks/students.py [--epochs 2] [--lr 3e-4] [--seeds 0 1] [--json]

Part 1. For each pair, three students are cut from the demo teacher (MiniLM 6x384 + BBC News head) at
(nearly) the same parameter count and distilled with one recipe (same data, epochs, lr, batch, seeds):

* ``depth``: depth-only, full width 384, fewer layers kept uniformly (``students.build_student``);
* ``pruned``: narrower (fewer heads at head size 32, fewer FFN neurons and hidden channels), the units
  kept by Minitron activation importance on calibration texts (``pruning.build_pruned_student``);
* ``first_k``: the same narrow shape, keeping the first units (``build_student``): the ranking's own share.

The 30522 x 384 word embeddings hold half the teacher, so equal params at full width means very few
layers; the width arm's FFN width is solved so that its params match the depth-only arm's.

Part 2. Vocabulary trimming keeps the ids the training split uses (``vocab.used_tokens``); held-out ids
outside that set map to UNK. Reported per model: params and fp32 MB before/after, and the test accuracy
of the trimmed, distilled student (through ``vocab.RemapIds``, the original tokenizer's ids in front).

``--tiny`` runs the same code on a random 4x64 BERT teacher over a Zipf-like id space (offline, seconds):
a smoke test, not a measurement.

Measured 2026-11-22, ``python benchmarks/students.py --seeds 0 1`` (lr 3e-4, 2 epochs, batch 16, bf16,
0.5 KD at T=2 + 0.5 CE, best epoch by val accuracy; BBC News 1779 train / 223 val / 223 test at 128
tokens), 2-core AMD EPYC, torch 2.13 CPU, 2 threads; 1131 s on an idle host (9130 s for the same,
bit-identical run under a load of 5-9). Teacher 6x384: 22.715M params, 2.72 GFLOPs, test acc 0.9776.

  pair arm                shape              params   GFLOPs at cut test acc (seed 0/1)  retain agree lat
  1    depth-only         2x384 ffn 1536     15.617M  0.91  0.758  0.9955 (.9955/.9955)  1.018  0.982 2.96x
  1    width, importance  6x288 9h ffn 1325  15.617M  1.68  0.713  0.9865 (.9910/.9821)  1.009  0.973 1.51x
  1    width, first-k     6x288 9h ffn 1325  15.617M  1.68  0.220  0.9776 (.9776/.9776)  1.000  0.973 1.51x
  2    depth-only         1x384 ffn 1536     13.843M  0.45  0.587  0.9910 (.9955/.9865)  1.014  0.987 6.05x
  2    width, importance  6x256 8h ffn 1379  13.844M  1.49  0.659  0.9686 (.9641/.9731)  0.991  0.969 1.66x
  2    width, first-k     6x256 8h ffn 1379  13.844M  1.49  0.220  0.9776 (.9776/.9776)  1.000  0.964 1.66x

(lat: teacher ms / student ms, eager fp32 batch 1.) One test example is 0.45 points, so at equal params the
depth-only students are level with or ahead of the width-pruned ones (+0.9 and +2.2 points) at 0.54x and
0.30x their FLOPs; importance ranking is worth +44-49 points right after the cut, but distillation erases
the gap (+0.9, -0.9). With lr 1e-3 (seed 0): 0.9955 / 0.9910 / 0.9731 and 0.9865 / 0.9641 / 0.9641.

Vocabulary: the train split uses 12934 of 30522 ids (42.4%); 2.08% of test tokens fall outside (UNK), in
73% of test texts. Params (fp32 MB) before -> after, test acc -> trimmed acc (seed mean):
teacher 22.715M (86.7) -> 15.961M (60.9), 0.9776 -> 0.9776; 2x384 15.617M (59.6) -> 8.863M (33.8),
0.9955 -> 0.9933; 6x288 15.617M -> 10.552M (40.3), 0.9865 -> 0.9865 (first-k 0.9776 -> 0.9776);
1x384 13.843M (52.8) -> 7.089M (27.0), 0.9910 -> 0.9888; 6x256 13.844M -> 9.342M (35.6), 0.9686 -> 0.9709
(first-k 0.9776 -> 0.9776). Logits of test texts with no UNK are unchanged (max difference 0.0).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # after the environment above, which transformers reads at import
from rich.console import Console
from rich.table import Table
from torch import nn
from transformers import AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

import edge_distill
from edge_distill.cost import count_flops, count_params
from edge_distill.pruning import Importance, build_pruned_student, importance
from edge_distill.students import StudentSpec, build_student, student_config, teacher_spec
from edge_distill.teachers import quiet_transformers
from edge_distill.trainer import TrainSettings, accuracy, agreement, predict_logits
from edge_distill.vocab import RemapIds, trim_vocabulary, used_tokens, vocab_saving

SCHEMA = 1
ARMS = ("depth", "pruned", "first_k")
LABELS = {"depth": "depth-only", "pruned": "width, importance", "first_k": "width, first-k"}
PARAMS_TOLERANCE = 0.03
# (depth-only layers, width arm's layers, width arm's heads); the width arm's FFN is solved for equal params.
DEMO_PAIRS = ((2, 6, 9), (1, 6, 8))
TINY_PAIRS = ((2, 4, 3), (1, 3, 3))
Split = dict[str, torch.Tensor]  # input_ids, attention_mask (n, seq); labels (n,)
Pair = dict[str, StudentSpec]  # arm -> shape; the arms of a pair have (nearly) equal params


@dataclass
class Workload:
    """A teacher, its three splits, and the special ids that vocabulary trimming always keeps."""

    name: str
    teacher: PreTrainedModel
    splits: dict[str, Split]  # train, val, test
    special_ids: list[int]
    unk_id: int


def demo_workload(seq_len: int) -> Workload:
    """The built-in demo teacher (MiniLM 6x384 + BBC News head) and its train/val/test splits."""
    from edge_distill.data import load_demo_data, tokenize
    from edge_distill.demo_teacher import build_demo_teacher

    data = load_demo_data()
    teacher = build_demo_teacher(data, seq_len=seq_len)
    splits = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        columns = tokenize(teacher.tokenizer, split.texts, seq_len)
        splits[name] = {**columns, "labels": torch.as_tensor(split.labels, dtype=torch.long)}
    tok = teacher.tokenizer
    return Workload("demo", teacher.model.eval(), splits, list(tok.all_special_ids), tok.unk_token_id)


def tiny_workload(seq_len: int = 16) -> Workload:
    """A random 4x64 BERT over 500 ids; labels are its own argmax, ids Zipf-like so the test has new ones."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=500, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=seq_len, num_labels=3,
    )  # fmt: skip
    with quiet_transformers():
        teacher = BertForSequenceClassification(config).eval()
    g, weights = torch.Generator().manual_seed(0), 1.0 / torch.arange(1.0, config.vocab_size - 3)
    splits = {}
    for name, n in (("train", 48), ("val", 16), ("test", 32)):
        ids = 4 + torch.multinomial(weights, n * seq_len, replacement=True, generator=g).view(n, seq_len)
        split = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        splits[name] = {**split, "labels": predict_logits(teacher, split).argmax(-1)}
    return Workload("tiny", teacher, splits, special_ids=[0, 1, 2, 3], unk_id=1)


def params_of(config: PretrainedConfig, spec: StudentSpec) -> int:
    """Parameters of a student of ``spec`` (built on the meta device: no memory, no init).

    Example:
        >>> params_of(demo_teacher.config, StudentSpec(2, 384, 12, 1536))  # doctest: +SKIP
        15617285
    """
    with torch.device("meta"), quiet_transformers():
        model = AutoModelForSequenceClassification.from_config(student_config(config, spec))
    return count_params(model)


def matched_spec(config: PretrainedConfig, layers: int, heads: int, target: int) -> StudentSpec:
    """``layers`` x ``heads`` heads at the teacher's head size, with the FFN width whose params come
    closest to ``target`` (params are linear in the FFN width).

    Example:
        >>> matched_spec(demo_teacher.config, 6, 9, 15617285)  # doctest: +SKIP
        StudentSpec(layers=6, hidden=288, heads=9, intermediate=1325)
    """
    hidden = heads * (config.hidden_size // config.num_attention_heads)
    base = params_of(config, StudentSpec(layers, hidden, heads, 1))
    per_neuron = params_of(config, StudentSpec(layers, hidden, heads, 2)) - base  # layers x (2 hidden + 1)
    spec = StudentSpec(layers, hidden, heads, 1 + round((target - base) / per_neuron))
    gap = abs(params_of(config, spec) / target - 1) if spec.intermediate >= 1 else 1.0
    if spec.intermediate > config.intermediate_size or gap > PARAMS_TOLERANCE:
        raise ValueError(f"{layers}x{hidden} cannot match {target} params with the teacher's FFN neurons")
    return spec


def make_pairs(config: PretrainedConfig, plan: tuple[tuple[int, int, int], ...]) -> list[Pair]:
    """Each pair's shape per arm: depth-only at full width, and one narrow shape for both width arms."""
    pairs = []
    for depth_layers, layers, heads in plan:
        depth = replace(teacher_spec(config), layers=depth_layers)
        width = matched_spec(config, layers, heads, params_of(config, depth))
        pairs.append({"depth": depth, "pruned": width, "first_k": width})
    return pairs


@dataclass
class Context:
    """What every arm shares: the teacher's logits, importance scores, keep set and the recipe."""

    work: Workload
    teacher_logits: dict[str, torch.Tensor]  # val, test: (n, labels)
    scores: Importance
    keep: torch.Tensor  # kept vocabulary ids, sorted
    example: dict[str, torch.Tensor]  # one test row: FLOPs and latency
    settings: TrainSettings
    seeds: list[int]
    cache: Path
    latency_rounds: int


def inputs(split: Split) -> dict[str, torch.Tensor]:
    return {k: split[k] for k in ("input_ids", "attention_mask")}


def cut(ctx: Context, pair: Pair, arm: str) -> PreTrainedModel:
    """A fresh student of ``arm``, initialised from the teacher (deterministic: no random tensors left)."""
    if arm == "pruned":
        return build_pruned_student(ctx.work.teacher, pair[arm], ctx.scores)
    return build_student(ctx.work.teacher, pair[arm])


def test_scores(ctx: Context, logits: torch.Tensor) -> dict[str, float]:
    labels, teacher = ctx.work.splits["test"]["labels"], ctx.teacher_logits["test"]
    return {"accuracy": accuracy(logits, labels), "agreement": agreement(logits, teacher)}


def trimmed_logits(ctx: Context, model: PreTrainedModel) -> torch.Tensor:
    """Test logits (n, labels) of ``model`` with its vocabulary trimmed to ``ctx.keep``, fed original ids."""
    wrapped = RemapIds(trim_vocabulary(model, ctx.keep, unk_id=ctx.work.unk_id)).eval()
    ids, mask = inputs(ctx.work.splits["test"]).values()
    with torch.no_grad():
        return torch.cat([wrapped(ids[s : s + 64], mask[s : s + 64]) for s in range(0, len(ids), 64)])


def trim_check(ctx: Context, model: PreTrainedModel, logits: torch.Tensor) -> dict[str, float]:
    """Trimmed test accuracy, agreement with the untrimmed model, and the largest logit change on test rows
    with no UNK (zero expected: trimming only renumbers the rows it keeps)."""
    trimmed = trimmed_logits(ctx, model)
    test = ctx.work.splits["test"]
    clean = ~(torch.isin(test["input_ids"], ctx.keep, invert=True) & test["attention_mask"].bool()).any(1)
    diff = (trimmed - logits)[clean].abs().max() if clean.any() else torch.tensor(0.0)
    return {
        "trimmed_accuracy": accuracy(trimmed, test["labels"]),
        "trimmed_vs_untrimmed_agreement": agreement(trimmed, logits),
        "max_logit_change_without_unk": float(diff),
    }


def distil_once(ctx: Context, pair: Pair, arm: str, seed: int) -> dict[str, float]:
    """Cut, distil with the shared recipe at ``seed``, and score on test, untrimmed and trimmed."""
    work, model = ctx.work, cut(ctx, pair, arm)
    edge_distill.distill(
        work.teacher, model, work.splits["train"], val_data=work.splits["val"],
        settings=replace(ctx.settings, seed=seed), cache=ctx.cache,
        teacher_val_logits=ctx.teacher_logits["val"],
    )  # fmt: skip
    logits = predict_logits(model, inputs(work.splits["test"]))
    return {**test_scores(ctx, logits), **trim_check(ctx, model, logits)}


@torch.no_grad()
def host_ms(model: nn.Module, example: dict[str, torch.Tensor], runs: int = 5) -> float:
    times = [time.perf_counter()]
    for _ in range(runs + 1):  # the first call is a warm-up (lazy kernel set-up)
        model(**example)
        times.append(time.perf_counter())
    return 1000 * statistics.median(b - a for a, b in itertools.pairwise(times[1:]))


def latency_ratios(ctx: Context, pairs: list[Pair]) -> dict[str, float]:
    """Teacher ms / student ms per distinct shape (eager fp32, batch 1; latency depends on the shape only).

    All shapes in one block: each is timed right after the teacher, and the order rotates every round, so
    the host's changing load hits them alike; the median over rounds. Measuring each arm at its own time
    of a long run gave one shape 1.0x and 2.8x under a load of 5-9 on 2 cores.
    """
    teacher, example = ctx.work.teacher, ctx.example
    models = {shape(spec.as_dict()): build_student(teacher, spec) for pair in pairs for spec in pair.values()}
    ratios: dict[str, list[float]] = {key: [] for key in models}
    for r in range(ctx.latency_rounds):
        keys = list(models)[r % len(models) :] + list(models)[: r % len(models)]
        for key in keys:
            ratios[key].append(host_ms(teacher, example) / host_ms(models[key], example))
    return {key: round(statistics.median(values), 3) for key, values in ratios.items()}


def size_row(ctx: Context, model: PreTrainedModel) -> dict[str, Any]:
    """Params, FLOPs at the run's sequence length, and the vocabulary saving (the trimmed count measured)."""
    saving = vocab_saving(model, ctx.keep)
    measured = count_params(trim_vocabulary(model, ctx.keep, unk_id=ctx.work.unk_id))
    vocab = {k: round(v, 4) if isinstance(v, float) else v for k, v in saving.items()}
    return {
        "params": count_params(model),
        "flops": count_flops(model, ctx.example),
        "vocab": {**vocab, "params_after_measured": measured},
    }


def mean_of(runs: list[dict[str, float]], key: str) -> float:
    return round(statistics.fmean(r[key] for r in runs), 4)


def measure_arm(ctx: Context, pair: Pair, arm: str, say: Callable[[str], None]) -> dict[str, Any]:
    spec, model = pair[arm], cut(ctx, pair, arm)
    row = {"label": LABELS[arm], "spec": spec.as_dict(), **size_row(ctx, model)}
    cut_scores = test_scores(ctx, predict_logits(model, inputs(ctx.work.splits["test"])))
    row |= {f"cut_{k}": round(v, 4) for k, v in cut_scores.items()}  # before any distillation
    runs = []
    for seed in ctx.seeds:
        started = time.perf_counter()
        runs.append(distil_once(ctx, pair, arm, seed))
        say(f"{spec.label} {LABELS[arm]:<18} seed {seed}: test accuracy {runs[-1]['accuracy']:.4f} "
            f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    accs = [round(r["accuracy"], 4) for r in runs]
    teacher_acc = accuracy(ctx.teacher_logits["test"], ctx.work.splits["test"]["labels"])
    return row | {
        "test_accuracy": mean_of(runs, "accuracy"),
        "test_accuracy_runs": accs,
        "spread": round(max(accs) - min(accs), 4),
        "retention": round(mean_of(runs, "accuracy") / teacher_acc, 4),
        "agreement": mean_of(runs, "agreement"),
        **{k: mean_of(runs, k) for k in ("trimmed_accuracy", "trimmed_vs_untrimmed_agreement")},
        "trimmed_accuracy_runs": [round(r["trimmed_accuracy"], 4) for r in runs],
        "max_logit_change_without_unk": max(r["max_logit_change_without_unk"] for r in runs),
    }


def measure_pair(
    ctx: Context, pair: Pair, latency: dict[str, float], say: Callable[[str], None]
) -> dict[str, Any]:
    arms = {arm: measure_arm(ctx, pair, arm, say) for arm in ARMS}
    for arm in arms.values():
        arm["latency_ratio"] = latency[shape(arm["spec"])]
    params = [a["params"] for a in arms.values()]
    return {"params_gap": round(max(params) / min(params) - 1, 5), "arms": arms}


def vocab_summary(ctx: Context) -> dict[str, Any]:
    """Kept ids, and how many held-out (test) tokens fall outside them (they become UNK)."""
    test = ctx.work.splits["test"]
    real = test["attention_mask"].bool()  # (n, seq)
    outside = torch.isin(test["input_ids"], ctx.keep, invert=True) & real
    original = ctx.work.teacher.get_input_embeddings().num_embeddings
    return {
        "original": original,
        "kept": int(ctx.keep.numel()),
        "fraction_kept": round(ctx.keep.numel() / original, 4),
        "test_tokens_outside": round(float(outside.sum() / real.sum()), 5),
        "test_examples_with_unk": round(float(outside.any(1).float().mean()), 4),
    }


def teacher_row(ctx: Context) -> dict[str, Any]:
    teacher, logits = ctx.work.teacher, ctx.teacher_logits["test"]
    row = {"spec": teacher_spec(teacher.config).as_dict(), **size_row(ctx, teacher)}
    scores = trim_check(ctx, teacher, logits)
    test_acc = accuracy(logits, ctx.work.splits["test"]["labels"])
    return row | {"test_accuracy": round(test_acc, 4), **{k: round(v, 4) for k, v in scores.items()}}


def measure(work: Workload, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Everything side by side in one run: the teacher, then each pair's three arms."""
    train = work.splits["train"]
    pairs = make_pairs(work.teacher.config, TINY_PAIRS if args.tiny else DEMO_PAIRS)
    pairs = [pairs[i - 1] for i in args.pairs] if args.pairs else pairs
    settings = TrainSettings(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, mixed_precision=args.precision
    )
    say("teacher logits, importance scores ...")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(
            work=work,
            teacher_logits={s: predict_logits(work.teacher, inputs(work.splits[s])) for s in ("val", "test")},
            scores=importance(work.teacher, {k: v[: args.calibration] for k, v in inputs(train).items()}),
            keep=used_tokens(train["input_ids"], work.special_ids),
            example={k: v[:1] for k, v in inputs(work.splits["test"]).items()},
            settings=settings, seeds=args.seeds, cache=Path(tmp) / "teacher-cache",
            latency_rounds=args.latency_rounds,
        )  # fmt: skip
        teacher = teacher_row(ctx)
        latency = latency_ratios(ctx, pairs)
        measured = [measure_pair(ctx, pair, latency, say) for pair in pairs]
    return {
        "workload": workload_info(work, settings, args),
        "teacher": teacher,
        "pairs": measured,
        "vocab": vocab_summary(ctx),
    }


def workload_info(work: Workload, settings: TrainSettings, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": work.name,
        "examples": {name: len(split["labels"]) for name, split in work.splits.items()},
        "seq_len": work.splits["train"]["input_ids"].shape[1],
        "calibration_examples": min(args.calibration, len(work.splits["train"]["labels"])),
        "recipe": {**settings.as_dict(), "seeds": args.seeds, "losses": "0.5 kd (T=2) + 0.5 ce"},
        "best_epoch_by": "validation accuracy",  # the engine restores the best epoch's weights
        "latency": f"eager fp32 batch 1, median of {args.latency_rounds} rotated rounds beside the teacher",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def shape(spec: dict[str, int]) -> str:
    return f"{spec['layers']}x{spec['hidden']}, {spec['heads']}h, ffn {spec['intermediate']}"


def render(result: dict[str, Any], console: Console) -> None:
    """The two tables and the plain-language ratio lines."""
    w, teacher, r = result["workload"], result["teacher"], result["workload"]["recipe"]
    table = Table(
        title=f"Equal-params students: {w['name']}, {r['epochs']} epochs, lr {r['lr']:g}, batch "
        f"{r['batch_size']}, {r['mixed_precision']}, seeds {r['seeds']}",
        caption=f"teacher {shape(teacher['spec'])}: {teacher['params'] / 1e6:.2f}M params, test accuracy "
        f"{teacher['test_accuracy']:.4f}; latency = teacher ms / student ms ({w['latency']})",
    )  # fmt: skip
    for column in ("pair", "arm", "shape", "params", "GFLOPs", "acc at cut", "test acc", "spread",
                   "retention", "agreement", "latency"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("arm", "shape") else "right")
    for i, pair in enumerate(result["pairs"], 1):
        for a in pair["arms"].values():
            table.add_row(
                str(i), a["label"], shape(a["spec"]), f"{a['params'] / 1e6:.3f}M", f"{a['flops'] / 1e9:.2f}",
                f"{a['cut_accuracy']:.4f}", f"{a['test_accuracy']:.4f}", f"{a['spread']:.4f}",
                f"{a['retention']:.4f}", f"{a['agreement']:.4f}", f"{a['latency_ratio']:.2f}x",
            )  # fmt: skip
    console.print(table)
    console.print(vocab_table(result))
    for line in ratio_lines(result):
        console.print(line, highlight=False)


def vocab_table(result: dict[str, Any]) -> Table:
    v = result["vocab"]
    table = Table(
        title=f"Vocabulary trimming: {v['kept']} of {v['original']} ids kept ({v['fraction_kept']:.1%}); "
        f"{v['test_tokens_outside']:.2%} of test tokens become UNK "
        f"({v['test_examples_with_unk']:.0%} of test rows)",
        caption="trimmed after distillation; accuracy through RemapIds on the original ids (seed mean)",
    )  # fmt: skip
    for column in ("model", "params", "trimmed", "fp32 MB", "trimmed MB", "saved", "test acc", "trimmed acc"):
        table.add_column(column, justify="left" if column == "model" else "right")
    rows = [("teacher", result["teacher"])]
    rows += [(f"{i} {a['label']}", a) for i, p in enumerate(result["pairs"], 1) for a in p["arms"].values()]
    for name, a in rows:
        s = a["vocab"]
        table.add_row(
            name, f"{s['params_before'] / 1e6:.3f}M", f"{s['params_after'] / 1e6:.3f}M",
            f"{s['mb_fp32_before']:.1f}", f"{s['mb_fp32_after']:.1f}", f"{s['fraction_saved']:.1%}",
            f"{a['test_accuracy']:.4f}", f"{a['trimmed_accuracy']:.4f}",
        )  # fmt: skip
    return table


def ratio_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for i, pair in enumerate(result["pairs"], 1):
        d, p, f = (pair["arms"][arm] for arm in ARMS)
        lines.append(
            f"pair {i} ({d['params'] / 1e6:.2f}M params, within {pair['params_gap']:.2%}): width-pruned "
            f"{shape(p['spec'])} {p['test_accuracy']:.4f} vs depth-only {shape(d['spec'])} "
            f"{d['test_accuracy']:.4f} ({100 * (p['test_accuracy'] - d['test_accuracy']):+.1f} points); "
            f"importance over first-k: {100 * (p['cut_accuracy'] - f['cut_accuracy']):+.1f} points at cut, "
            f"{100 * (p['test_accuracy'] - f['test_accuracy']):+.1f} after distillation; depth-only needs "
            f"{d['flops'] / p['flops']:.2f}x the FLOPs and runs "
            f"{d['latency_ratio'] / p['latency_ratio']:.2f}x as fast on this host"
        )  # fmt: skip
        lines.append(
            f"pair {i} trimmed: depth-only {d['vocab']['params_after'] / 1e6:.2f}M vs width-pruned "
            f"{p['vocab']['params_after'] / 1e6:.2f}M (the wider embedding table loses more rows)"
        )
    lines.append(f"benchmark wall time: {result['wall_seconds']:.0f} s")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--epochs", type=int, help="distillation epochs (default 2; --tiny: 1)")
    parser.add_argument("--lr", type=float, default=3e-4, help="one learning rate for every arm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (order, dropout)")
    parser.add_argument("--precision", choices=("auto", "bf16", "no"), default="auto")
    parser.add_argument("--pairs", type=int, nargs="+", help="run only these pairs (1-based)")
    parser.add_argument("--calibration", type=int, default=256, help="training texts for importance")
    parser.add_argument("--latency-rounds", type=int, help="alternating timing rounds (default 5; --tiny: 1)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    parser.add_argument("--tiny", action="store_true", help="small random models: a smoke run in seconds")
    parser.add_argument("--json", action="store_true", help="print a JSON envelope instead of the tables")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (1 if args.tiny else 2)
    args.latency_rounds = args.latency_rounds or (1 if args.tiny else 5)
    if args.tiny:
        args.seq_len = 16
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads or args.tiny:  # tiny matmuls: threads only wait on each other (and spin when busy)
        torch.set_num_threads(args.threads or 1)
    width = None if sys.stdout.isatty() else 160  # a pipe or a file: rich would wrap at 80 columns
    console, status = Console(stderr=args.json, width=width), Console(stderr=True)
    started, load = time.perf_counter(), os.getloadavg()[0]
    # Library chatter goes to stderr, so that --json leaves stdout to the envelope alone.
    with contextlib.redirect_stdout(sys.stderr), quiet_transformers():
        work = tiny_workload(args.seq_len) if args.tiny else demo_workload(args.seq_len)
        result = measure(work, args, lambda text: status.print(text, highlight=False))
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["workload"]["load_average_1min"] = {"start": round(load, 2), "end": round(os.getloadavg()[0], 2)}
    if args.json:
        print(json.dumps({"schema": SCHEMA, "benchmark": "students", "result": result}, indent=2))
    else:
        render(result, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
