"""Causal language models: next-token labels, perplexity, token- and sequence-level KD, cut students."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

import edge_distill
from edge_distill.errors import TeacherError
from edge_distill.lm import (
    cut_causal_lm,
    generate_corpus,
    inverse_perplexity,
    lm_examples,
    perplexity,
    token_kl,
    tokens_per_second,
)
from edge_distill.trainer import TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 120
WORDS = [f"w{i}" for i in range(VOCAB - 2)]  # + <unk>, <eos>: one token per id of the models' vocabulary
SEQ = 16


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with eos and no pad token (as GPT-2's), built offline."""
    vocab = {word: i for i, word in enumerate(WORDS)} | {"<unk>": VOCAB - 2, "<eos>": VOCAB - 1}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")


def markov_texts(count: int, seed: int, length: tuple[int, int] = (8, SEQ)) -> list[str]:
    """Texts from a sparse word chain: structure a language model can learn, lengths varying (padding)."""
    rng = random.Random(seed)
    chain = random.Random(0)
    following = {w: chain.sample(WORDS, 3) for w in WORDS}
    texts = []
    for _ in range(count):
        word = rng.choice(WORDS)
        words = [word]
        for _ in range(rng.randint(*length) - 1):
            word = rng.choice(following[word])
            words.append(word)
        texts.append(" ".join(words))
    return texts


def gpt2() -> PreTrainedModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=2, n_positions=64, bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def llama() -> PreTrainedModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
    )
    return LlamaForCausalLM(config).eval()


FAMILIES = {"gpt2": gpt2, "llama": llama}


def trained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, steps: int = 60) -> PreTrainedModel:
    """A teacher that knows the word chain: peaked next-token distributions, unlike a random init's."""
    examples = lm_examples(tokenizer, markov_texts(64, seed=100), SEQ)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        rows = slice(step * 16 % 64, step * 16 % 64 + 16)
        logits = model(input_ids=examples["input_ids"][rows], attention_mask=examples["attention_mask"][rows])
        loss = F.cross_entropy(logits.logits.flatten(0, 1), examples["labels"][rows].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def teachers(tokenizer: PreTrainedTokenizerFast) -> dict[str, PreTrainedModel]:
    """Each family's tiny teacher, trained briefly on the word chain (offline KD leaves it unchanged)."""
    return {family: trained(build(), tokenizer) for family, build in FAMILIES.items()}


def hf_loss(model: PreTrainedModel, examples: dict[str, torch.Tensor]) -> float:
    """The model's own loss (it shifts internally), padding ignored."""
    labels = examples["input_ids"].masked_fill(examples["attention_mask"] == 0, -100)
    with torch.no_grad():
        out = model(input_ids=examples["input_ids"], attention_mask=examples["attention_mask"], labels=labels)
    return out.loss.item()


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_are_next_tokens_as_hf_loss(family: str, tokenizer: PreTrainedTokenizerFast) -> None:
    model = FAMILIES[family]()
    examples = lm_examples(tokenizer, markov_texts(6, seed=1), SEQ)
    assert (examples["attention_mask"] == 0).any()  # some rows are padded (right)
    assert examples["input_ids"][examples["attention_mask"] == 0].eq(tokenizer.eos_token_id).all()
    with torch.no_grad():
        logits = model(input_ids=examples["input_ids"], attention_mask=examples["attention_mask"]).logits
    ce = F.cross_entropy(logits.flatten(0, 1), examples["labels"].flatten())  # the engine's `ce` term
    assert ce.item() == pytest.approx(hf_loss(model, examples), abs=1e-5)


def test_perplexity_is_exp_of_hf_loss(tokenizer: PreTrainedTokenizerFast) -> None:
    model = gpt2()
    examples = lm_examples(tokenizer, markov_texts(5, seed=2, length=(SEQ, SEQ)), SEQ)
    assert examples["attention_mask"].all()
    expected = torch.tensor(hf_loss(model, examples)).exp().item()
    assert perplexity(model, examples, batch_size=2) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_token_level_kd_with_top_k_cache(
    family: str, tokenizer: PreTrainedTokenizerFast, teachers: dict[str, PreTrainedModel]
) -> None:
    teacher = teachers[family]
    student = cut_causal_lm(teacher, 2)
    train = lm_examples(tokenizer, markov_texts(96, seed=3), SEQ)
    held_out = lm_examples(tokenizer, markov_texts(16, seed=4), SEQ)
    written = lm_examples(
        tokenizer,
        generate_corpus(teacher, tokenizer, markov_texts(16, 5, (3, 5)), max_new_tokens=10, seed=1),
        SEQ,
    )
    kl_before, ppl_before = token_kl(student, teacher, held_out), perplexity(student, written)
    settings = TrainSettings(epochs=3, batch_size=8, lr=3e-3, mixed_precision="no")
    result = edge_distill.distill(teacher, student, train, {"kd": 1.0}, settings=settings, top_k=16)
    assert result.scheme == "offline"
    assert "topk_values" in result.cache["stored"]  # vocabulary 120 folded to the teacher's top 16
    kl_after, ppl_after = token_kl(student, teacher, held_out), perplexity(student, written)
    print(f"{family}: KL {kl_before:.4f} -> {kl_after:.4f}; ppl {ppl_before:.2f} -> {ppl_after:.2f}")
    assert kl_after < 0.7 * kl_before
    assert ppl_after < ppl_before


def test_sequence_level_kd_lowers_perplexity_on_teacher_text(
    tokenizer: PreTrainedTokenizerFast, teachers: dict[str, PreTrainedModel]
) -> None:
    teacher = teachers["llama"]
    student = cut_causal_lm(teacher, 2)
    prompts = markov_texts(80, seed=6, length=(2, 4))
    corpus = generate_corpus(teacher, tokenizer, prompts[:64], max_new_tokens=12, seed=0, batch_size=32)
    held_out = lm_examples(
        tokenizer, generate_corpus(teacher, tokenizer, prompts[64:], max_new_tokens=12, seed=1), SEQ
    )
    assert all(text.startswith(prompt) for text, prompt in zip(corpus, prompts, strict=False))
    before = perplexity(student, held_out)
    settings = TrainSettings(epochs=3, batch_size=8, lr=3e-3, mixed_precision="no")
    result = edge_distill.distill(
        teacher, student, lm_examples(tokenizer, corpus, SEQ), {"ce": 1.0}, settings=settings,
        val_data=held_out, metric=inverse_perplexity,
    )  # fmt: skip
    after = perplexity(student, held_out)
    assert result.metrics["student"] == pytest.approx(1 / after, rel=1e-4)
    print(f"sequence-level KD: held-out teacher-text ppl {before:.2f} -> {after:.2f}")
    assert after < before


def test_greedy_corpus_is_deterministic(tokenizer: PreTrainedTokenizerFast) -> None:
    teacher = gpt2()
    prompts = markov_texts(3, seed=7, length=(2, 5))
    first = generate_corpus(teacher, tokenizer, prompts, max_new_tokens=4, seed=None, batch_size=2)
    assert first == generate_corpus(teacher, tokenizer, prompts, max_new_tokens=4, seed=None, batch_size=3)
    assert tokens_per_second(teacher, tokenizer, prompts[0], new_tokens=4) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_cut_keeps_last_layer_ties_and_reloads(
    family: str, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    teacher = FAMILIES[family]()
    student = cut_causal_lm(teacher, 2)
    stack = "transformer.h" if family == "gpt2" else "model.layers"
    s_layers, t_layers = student.get_submodule(stack), teacher.get_submodule(stack)
    assert len(s_layers) == 2
    for (name, value), (_, reference) in zip(
        s_layers[-1].state_dict().items(), t_layers[-1].state_dict().items(), strict=True
    ):
        assert torch.equal(value, reference), name
    for (name, value), (_, reference) in zip(
        s_layers[0].state_dict().items(), t_layers[1].state_dict().items(), strict=True
    ):
        assert torch.equal(value, reference), name  # layer_map(4, 2) == [1, 3]
    embeddings, head = student.get_input_embeddings().weight, student.get_output_embeddings().weight
    assert embeddings.data_ptr() == head.data_ptr() or not student.config.tie_word_embeddings
    student.save_pretrained(tmp_path)
    reloaded = type(student).from_pretrained(tmp_path).eval()
    examples = lm_examples(tokenizer, markov_texts(3, seed=8), SEQ)
    assert perplexity(reloaded, examples) == pytest.approx(perplexity(student, examples), rel=1e-6)


def test_cut_rejects_unsupported_family() -> None:
    bert = BertForSequenceClassification(
        BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64)
    )  # fmt: skip
    with pytest.raises(TeacherError, match="GPT-2"):
        cut_causal_lm(bert, 1)
    with pytest.raises(TeacherError, match="layers"):
        cut_causal_lm(gpt2(), 5)
