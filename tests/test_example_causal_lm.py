"""examples/distill_causal_lm.py: the tiny run end to end, and the real SmolLM2 teacher loaded and cut."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from edge_distill.lm import cut_causal_lm, lm_examples, perplexity

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "distill_causal_lm.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """The example as a module (examples/ is not a package), for its loaders and data helpers."""
    spec = importlib.util.spec_from_file_location("distill_causal_lm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_run_distils_and_reports_sane_numbers() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--tiny", "--json"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # stdout holds the one JSON object; progress went to stderr
    ppl, size, speed = report["perplexity"], report["size_ratio"], report["tokens_per_s"]
    assert all(math.isfinite(value) and value > 1 for value in ppl.values()), ppl
    assert ppl["student_after"] < ppl["student_before"], ppl  # distillation repaired part of the cut
    assert report["student"]["params"] < report["teacher"]["params"] and size > 1
    assert report["student"]["layers"] == 2 and report["teacher"]["layers"] == 4
    assert speed["teacher"] > 0 and speed["student"] > 0
    assert report["train"]["real_texts"] > 0 and report["train"]["teacher_texts"] > 0  # both KD kinds
    assert "topk_values" in report["train"]["cache"]["stored"]  # token-level KD read cached top-k logits
    assert report["held_out"]["tokens"] > 1000
    assert 0 <= report["vocab_trim"]["held_out_fraction_outside"] <= 1
    assert [set(s) for s in report["samples"]] == [{"prompt", "teacher", "student"}] * 2
    assert report["config_from"]["layers"] == "preset tiny"


def test_held_out_articles_never_reach_training(example: ModuleType) -> None:
    train, held_out = example.bbc_articles()
    assert len(held_out) > 200 and not set(train) & set(held_out)
    assert example.choose(held_out, 8, None) == example.choose(held_out, 8, None)  # fixed, seed-free


def test_pieces_keep_whole_paragraphs_within_seq_len(example: ModuleType) -> None:
    tokenizer = example.word_tokenizer(["one two three four five six"], size=16)
    article = "Title here\n\none two three\n\nfour five\n\nsix"
    assert example.pieces(article, tokenizer, seq_len=7) == [
        "Title here\n\none two three",
        "four five\n\nsix",
    ]


def test_real_smollm2_loads_offline_and_cuts_to_two_layers(example: ModuleType) -> None:
    teacher, tokenizer = example.load_gguf(example.smollm2_gguf())
    assert example.params(teacher) == 134_515_008 and example.depth(teacher) == 30
    student = cut_causal_lm(teacher, 2)
    assert example.depth(student) == 2 and example.params(student) < example.params(teacher) / 3
    _, held_out = example.bbc_articles()
    texts = [example.prompt_of(article, words=40) for article in example.choose(held_out, 4, None)]
    examples = lm_examples(tokenizer, texts, seq_len=64)
    assert int((examples["labels"] != -100).sum()) > 100
    teacher_ppl, student_ppl = perplexity(teacher, examples), perplexity(student, examples)
    print(f"SmolLM2 held-out perplexity: teacher {teacher_ppl:.1f}, 2-layer cut {student_ppl:.1f}")
    assert math.isfinite(teacher_ppl) and 1 < teacher_ppl < 200  # a real model of English text
    assert math.isfinite(student_ppl) and student_ppl > teacher_ppl
