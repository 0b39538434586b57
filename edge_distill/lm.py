"""Causal language models (GPT-2, Llama-family such as SmolLM): examples, perplexity, cut students, corpora.

Token-level KD: ``lm_examples`` aligns ``labels`` with the logits (``labels[:, t]`` is the token after
``t``), so the engine's ``ce`` term and its per-token response terms (``kd``, ``reverse_kd``, ``jsd``)
on the model's logits are next-token losses; the offline cache folds the vocabulary to the teacher's
top-k logits. Sequence-level KD (Kim & Rush, 2016): the teacher writes a corpus (``generate_corpus``)
and the student trains on it with ``ce`` (optionally plus ``kd``).

Example:
    >>> examples = lm_examples(tokenizer, texts, seq_len=128)                  # doctest: +SKIP
    >>> student = cut_causal_lm(teacher, layers=6)                             # doctest: +SKIP
    >>> edge_distill.distill(teacher, student, examples, {"kd": 1.0}, top_k=64)  # doctest: +SKIP
    >>> perplexity(student, held_out)                                          # doctest: +SKIP
    31.4
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge_distill.errors import TeacherError
from edge_distill.students import layer_map

IGNORE = -100

# family -> (dotted path of the decoder-layer list, config attribute holding its length)
DECODER_LAYERS = {
    "gpt2": ("transformer.h", "n_layer"),
    "llama-family": ("model.layers", "num_hidden_layers"),
}


def _pad_id(tokenizer: Any) -> int:
    """The pad token's id; tokenizers without one (GPT-2) pad with end-of-sequence."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is None:
        raise TeacherError("The tokenizer has neither a pad nor an eos token; set tokenizer.pad_token.")
    return int(tokenizer.eos_token_id)


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Targets aligned with the logits: ``labels[:, t] = input_ids[:, t + 1]``; -100 where none is real.

    Example:
        >>> next_token_labels(torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 1, 1, 0]]))
        tensor([[   6,    7, -100, -100]])
    """
    labels = torch.full_like(input_ids, IGNORE)  # (batch, seq)
    real_next = attention_mask[:, 1:].bool()  # (batch, seq - 1): is the next token real?
    labels[:, :-1] = torch.where(real_next, input_ids[:, 1:], torch.full_like(input_ids[:, 1:], IGNORE))
    return labels


def lm_examples(tokenizer: Any, texts: Sequence[str], seq_len: int) -> dict[str, torch.Tensor]:
    """Texts as right-padded rows of ``seq_len`` tokens with next-token ``labels`` (no shift in the model).

    Example:
        >>> ex = lm_examples(tokenizer, ["the cat sat"], seq_len=8)            # doctest: +SKIP
        >>> ex["input_ids"].shape, ex["labels"][0, :2]                         # doctest: +SKIP
        (torch.Size([1, 8]), tensor([cat_id, sat_id]))
    """
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"][:seq_len] for text in texts]
    pad = _pad_id(tokenizer)
    input_ids = torch.full((len(ids), seq_len), pad, dtype=torch.long)  # (batch, seq)
    attention_mask = torch.zeros((len(ids), seq_len), dtype=torch.long)  # (batch, seq)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, : len(tokens)] = 1
    labels = next_token_labels(input_ids, attention_mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _batches(examples: dict[str, torch.Tensor], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    rows = len(examples["input_ids"])
    for start in range(0, rows, batch_size):
        yield {k: v[start : start + batch_size] for k, v in examples.items()}


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's fp32 logits (batch, seq, vocab) on the batch's inputs."""
    device = next(model.parameters()).device
    output = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    return output.logits.float()


def perplexity(model: nn.Module, examples: dict[str, torch.Tensor], *, batch_size: int = 16) -> float:
    """exp of the mean next-token negative log-likelihood over the real positions (``labels != -100``).

    Example:
        >>> perplexity(student, lm_examples(tokenizer, held_out_texts, 128))   # doctest: +SKIP
        31.4
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in _batches(examples, batch_size):
            logits = _logits(model, batch)  # (batch, seq, vocab)
            labels = batch["labels"].to(logits.device)  # (batch, seq)
            total += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").item()
            count += int((labels != IGNORE).sum())
    model.train(was_training)
    return math.exp(total / max(count, 1))


def token_kl(
    student: nn.Module, teacher: nn.Module, examples: dict[str, torch.Tensor], *, batch_size: int = 16
) -> float:
    """Mean per-token KL(teacher || student) of the next-token distributions, over real tokens.

    Example:
        >>> token_kl(student, teacher, held_out)                               # doctest: +SKIP
        0.12
    """
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in _batches(examples, batch_size):
            keep = batch["attention_mask"].bool()  # (batch, seq)
            s = F.log_softmax(_logits(student, batch)[keep], -1)  # (tokens, vocab)
            t = F.log_softmax(_logits(teacher, batch)[keep].to(s.device), -1)  # (tokens, vocab)
            total += F.kl_div(s, t, log_target=True, reduction="sum").item()
            count += int(keep.sum())
    student.train(modes[0])
    teacher.train(modes[1])
    return total / max(count, 1)


def inverse_perplexity(logits: torch.Tensor, labels: torch.Tensor | None) -> float:
    """An engine ``metric`` (higher is better): 1 / perplexity of next-token ``labels`` under ``logits``.

    Its retention (student / teacher) is the teacher's perplexity over the student's.

    Example:
        >>> distill(teacher, student, train, val_data=val, metric=inverse_perplexity)  # doctest: +SKIP
    """
    if labels is None:
        raise ValueError("perplexity needs next-token labels; build the data with lm_examples")
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().to(logits.device))
    return math.exp(-nll.item())


def generate_corpus(
    teacher: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    seed: int | None = 0,
    batch_size: int = 16,
) -> list[str]:
    """The teacher's continuations of ``prompts``, each returned as prompt + continuation text.

    ``seed`` an int: seeded sampling (a corpus with the teacher's diversity); ``None``: greedy.
    Training the student on these texts with ``ce`` (plus ``kd`` if wanted) is sequence-level KD
    (Kim & Rush, 2016): the student imitates what the teacher writes, not only its per-token scores.

    Example:
        >>> texts = generate_corpus(teacher, tokenizer, prompts, max_new_tokens=64, seed=0)  # doctest: +SKIP
        >>> distill(teacher, student, lm_examples(tokenizer, texts, 128), {"ce": 1.0})      # doctest: +SKIP
    """
    side, pad = tokenizer.padding_side, _pad_id(tokenizer)
    tokenizer.padding_side = "left"  # batched generation continues from each row's last real token
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    was_training = teacher.training
    teacher.eval()
    texts: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            rows = prompts[start : start + batch_size]
            texts += _generate_batch(teacher, tokenizer, rows, pad, seed, max_new_tokens)
    finally:
        tokenizer.padding_side = side
        torch.random.set_rng_state(generator_state)
        teacher.train(was_training)
    return texts


def _generate_batch(
    teacher: nn.Module, tokenizer: Any, prompts: Sequence[str], pad: int, seed: int | None, new: int
) -> list[str]:
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)  # (batch, prompt)
    attention_mask = torch.zeros_like(input_ids)  # (batch, prompt)
    for row, tokens in enumerate(ids):  # left padding
        input_ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, width - len(tokens) :] = 1
    device = next(teacher.parameters()).device
    # sampling draws from the teacher's whole distribution (no top-k / top-p truncation)
    sampling = {"do_sample": True, "top_k": 0, "top_p": 1.0} if seed is not None else {"do_sample": False}
    with torch.no_grad():
        out = teacher.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=new,
            pad_token_id=pad,
            **sampling,
        )  # (batch, prompt + new)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def _family(model: nn.Module) -> str:
    names = {name for name, _ in model.named_modules()}
    for family, (path, attr) in DECODER_LAYERS.items():
        if path in names and hasattr(model.config, attr):
            return family
    raise TeacherError(
        f"cut_causal_lm supports GPT-2 (transformer.h) and Llama-family (model.layers) causal LMs; "
        f"{type(model).__name__} has neither, so build its student with edge_distill.students instead."
    )


def cut_causal_lm(teacher: nn.Module, layers: int) -> nn.Module:
    """A student with ``layers`` decoder layers copied from the teacher (spread uniformly, last kept).

    Embeddings, final norm and LM head are the teacher's; tied embeddings stay tied.

    Example:
        >>> student = cut_causal_lm(AutoModelForCausalLM.from_pretrained("gpt2"), 4)  # doctest: +SKIP
        >>> student.config.n_layer                                                     # doctest: +SKIP
        4
    """
    family = _family(teacher)
    path, attr = DECODER_LAYERS[family]
    depth = getattr(teacher.config, attr)
    if not 1 <= layers <= depth:
        raise TeacherError(f"cut_causal_lm needs 1 <= layers <= {depth} (the teacher's depth); got {layers}.")
    mapping = layer_map(depth, layers)
    config = copy.deepcopy(teacher.config)
    setattr(config, attr, layers)
    if getattr(config, "layer_types", None) is not None:  # per-layer attention kinds follow their layer
        config.layer_types = [config.layer_types[i] for i in mapping]
    student = type(teacher)(config).to(dtype=next(teacher.parameters()).dtype)
    prefix = path + "."
    state = {}
    for key, value in teacher.state_dict().items():
        if not key.startswith(prefix):
            state[key] = value
            continue
        index, rest = key[len(prefix) :].split(".", 1)
        if int(index) in mapping:
            state[f"{prefix}{mapping.index(int(index))}.{rest}"] = value
    student.load_state_dict(state)
    if getattr(config, "tie_word_embeddings", False):  # loading copied values; keep one shared tensor
        student.tie_weights()
    return student.to(next(teacher.parameters()).device)


def tokens_per_second(model: nn.Module, tokenizer: Any, prompt: str, *, new_tokens: int = 32) -> float:
    """Greedy decoding speed: ``new_tokens`` generated after ``prompt``, per wall-clock second.

    Example:
        >>> tokens_per_second(student, tokenizer, "Once upon a time")        # doctest: +SKIP
        412.7
    """
    device = next(model.parameters()).device
    input_ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}  # (1, prompt) each
    greedy = {"do_sample": False, "pad_token_id": _pad_id(tokenizer)}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, **greedy)  # warm-up: first-call allocations
        start = time.perf_counter()
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **greedy)
        seconds = time.perf_counter() - start
    model.train(was_training)
    return new_tokens / seconds
