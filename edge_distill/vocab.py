"""Vocabulary trimming: keep only the embedding rows the domain data uses.

For a small student the word-embedding table dominates the size (a 96-wide student over MiniLM's 30522
tokens: 2.9M of 3.7M parameters). :func:`trim_vocabulary` slices the table (and a tied or untied output
layer, with its bias) down to the ``keep`` ids; :class:`RemapIds` puts an ``old id -> new id`` lookup in
front, so the app keeps the original tokenizer and exporters see one extra Gather.

Where the map lives: in the model's config, as ``config.trimmed_vocab = {"original_size": V, "unk_id":
u, "keep": [old ids in new-id order]}``. ``keep`` *is* the ``new -> old`` map, and the ``old -> new``
table is rebuilt from it (:func:`id_map`), so ``save_pretrained`` / ``from_pretrained`` carry it with no
extra file (about 6 bytes per kept id in config.json). Old ids outside ``keep`` map to the new id of UNK.

Example:
    >>> keep = used_tokens(train["input_ids"], tokenizer)  # doctest: +SKIP
    >>> small = trim_vocabulary(student, keep, unk_id=tokenizer.unk_token_id)  # doctest: +SKIP
    >>> RemapIds(small)(input_ids, attention_mask).shape  # original tokenizer ids  # doctest: +SKIP
    torch.Size([8, 5])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

CONFIG_KEY = "trimmed_vocab"  # the config attribute that holds the map
_FP32_BYTES = 4


def used_tokens(
    input_ids: torch.Tensor | Sequence[torch.Tensor],
    tokenizer_or_special_ids: Any,
    *,
    min_count: int = 1,
) -> torch.Tensor:
    """Sorted unique ids seen at least ``min_count`` times in ``input_ids``, plus every special id.

    ``tokenizer_or_special_ids`` is a tokenizer (its ``all_special_ids``: pad, unk, cls, sep, mask for
    BERT) or an explicit sequence of ids. Padding counts like any other token; it is special anyway.

    Example:
        >>> used_tokens(torch.tensor([[5, 7, 7, 0]]), [0, 1, 2]).tolist()
        [0, 1, 2, 5, 7]
        >>> used_tokens(torch.tensor([[5, 7, 7, 0]]), [0, 1, 2], min_count=2).tolist()
        [0, 1, 2, 7]
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    chunks = [input_ids] if isinstance(input_ids, torch.Tensor) else list(input_ids)
    flat = torch.cat([c.reshape(-1).long() for c in chunks]) if chunks else torch.zeros(0, dtype=torch.long)
    if (flat < 0).any():
        raise ValueError("input_ids must be non-negative token ids")
    counts = torch.bincount(flat)  # (max_id + 1,)
    seen = torch.nonzero(counts >= min_count).flatten()
    special = torch.tensor(_special_ids(tokenizer_or_special_ids), dtype=torch.long)
    return torch.unique(torch.cat([seen, special]))  # sorted


def _special_ids(tokenizer_or_special_ids: Any) -> list[int]:
    ids = getattr(tokenizer_or_special_ids, "all_special_ids", tokenizer_or_special_ids)
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    ids = [int(i) for i in ids]
    if not ids:
        raise ValueError("no special token ids given; pass the tokenizer or at least the UNK and PAD ids")
    return ids


def trim_vocabulary(model: PreTrainedModel, keep: torch.Tensor, *, unk_id: int) -> PreTrainedModel:
    """A copy of ``model`` with vocabulary ``keep`` (old ids, in new-id order) and the id map in its config.

    Slices the word embeddings and, when the model has one, the output layer (``lm_head``, BERT's MLM
    decoder) and its bias; tied weights stay tied. ``config.vocab_size`` and the ``*_token_id`` entries
    are updated to the new ids. ``unk_id`` (an old id, which must be kept) receives unknown ids.

    Example:
        >>> keep = torch.tensor([0, 100, 101, 102, 103, 2054])
        >>> small = trim_vocabulary(student, keep, unk_id=100)  # doctest: +SKIP
        >>> small.config.vocab_size, id_map(small)[[100, 2054, 999]].tolist()  # doctest: +SKIP
        (6, [1, 5, 1])
    """
    vocab = model.get_input_embeddings().num_embeddings
    keep = _check_keep(model.config, keep, vocab, unk_id)
    old_to_new = _build_map(keep, vocab, unk_id)  # (vocab,)
    trimmed = copy.deepcopy(model)
    _slice_vocab_params(trimmed, keep, vocab)
    _update_modules(trimmed, keep, vocab, old_to_new)
    _update_config(trimmed.config, keep, vocab, unk_id, old_to_new)
    return trimmed


def _check_keep(config: PretrainedConfig, keep: torch.Tensor, vocab: int, unk_id: int) -> torch.Tensor:
    if getattr(config, CONFIG_KEY, None):
        raise ValueError("the model is already trimmed; trim the original model with the combined keep set")
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    if keep.numel() == 0 or keep.min() < 0 or keep.max() >= vocab:
        raise ValueError(f"keep must hold ids in [0, {vocab}), got {keep.numel()} ids")
    if torch.unique(keep).numel() != keep.numel():
        raise ValueError("keep has repeated ids")
    if not bool((keep == unk_id).any()):
        raise ValueError(f"keep must contain the UNK id {unk_id}: unknown tokens are mapped to it")
    return keep


def _build_map(keep: torch.Tensor, vocab: int, unk_id: int) -> torch.Tensor:
    """old id -> new id, (vocab,) long; ids outside ``keep`` -> new id of UNK."""
    new_unk = int(torch.nonzero(keep == unk_id)[0, 0])
    old_to_new = torch.full((vocab,), new_unk, dtype=torch.long)
    old_to_new[keep] = torch.arange(keep.numel())
    return old_to_new


def _vocab_modules(model: PreTrainedModel) -> list[nn.Module]:
    """The input embedding, and the output layer and its parent (which holds BERT's separate MLM bias)."""
    modules = [model.get_input_embeddings()]
    output = model.get_output_embeddings()
    if output is not None:
        modules.append(output)
        parent_name = next(name for name, m in model.named_modules() if m is output).rpartition(".")[0]
        modules.append(model.get_submodule(parent_name))
    return modules


def _slice_vocab_params(model: PreTrainedModel, keep: torch.Tensor, vocab: int) -> None:
    """Replace every vocabulary-sized parameter of the vocab modules by its ``keep`` rows, keeping ties."""
    to_slice = {
        id(p): p
        for m in _vocab_modules(model)
        for p in m.parameters(recurse=False)
        if p.dim() in (1, 2) and p.shape[0] == vocab
    }
    sliced = {
        key: nn.Parameter(p.detach()[keep].clone(), requires_grad=p.requires_grad)
        for key, p in to_slice.items()
    }
    for module in model.modules():  # every owner, so that tied parameters stay one object
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in sliced:
                module._parameters[name] = sliced[id(p)]


def _update_modules(model: PreTrainedModel, keep: torch.Tensor, vocab: int, old_to_new: torch.Tensor) -> None:
    embedding = model.get_input_embeddings()
    embedding.num_embeddings = keep.numel()
    if getattr(embedding, "padding_idx", None) is not None:
        embedding.padding_idx = int(old_to_new[embedding.padding_idx])
    output = model.get_output_embeddings()
    if isinstance(output, nn.Linear) and output.out_features == vocab:
        output.out_features = keep.numel()


def _update_config(
    config: PretrainedConfig, keep: torch.Tensor, vocab: int, unk_id: int, old_to_new: torch.Tensor
) -> None:
    config.vocab_size = keep.numel()
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int) and 0 <= value < vocab:
            setattr(config, key, int(old_to_new[value]))
    setattr(config, CONFIG_KEY, {"original_size": vocab, "unk_id": unk_id, "keep": keep.tolist()})


def id_map(model_or_config: PreTrainedModel | PretrainedConfig) -> torch.Tensor:
    """The ``old id -> new id`` table (original_size,) long of a trimmed model, rebuilt from its config.

    Example:
        >>> small = trim_vocabulary(student, torch.tensor([0, 100, 7]), unk_id=100)  # doctest: +SKIP
        >>> id_map(small)[[7, 8]].tolist()  # doctest: +SKIP
        [2, 1]
    """
    info = _trim_info(model_or_config)
    return _build_map(torch.tensor(info["keep"], dtype=torch.long), info["original_size"], info["unk_id"])


def new_to_old(model_or_config: PreTrainedModel | PretrainedConfig) -> torch.Tensor:
    """``keep``: the ``new id -> old id`` table (new_vocab,) long, to decode a trimmed LM's argmax.

    Example:
        >>> new_to_old(small)[logits.argmax(-1)]  # token ids of the original tokenizer  # doctest: +SKIP
    """
    return torch.tensor(_trim_info(model_or_config)["keep"], dtype=torch.long)


def _trim_info(model_or_config: PreTrainedModel | PretrainedConfig) -> dict[str, Any]:
    config = getattr(model_or_config, "config", model_or_config)
    info = getattr(config, CONFIG_KEY, None)
    if not info:
        raise ValueError(f"the model has no {CONFIG_KEY!r} in its config; trim it with trim_vocabulary first")
    return info


class RemapIds(nn.Module):
    """``forward(input_ids, attention_mask)`` with original-tokenizer ids -> logits of the trimmed model.

    The map is a buffer, so it is saved in the state dict and exports as one Gather in front of the graph.
    ``new_to_old`` (a non-persistent buffer) turns ids over the trimmed vocabulary (a causal or masked
    LM's argmax) back into original ids. ``model`` may return a tensor (e.g. ``LogitsOnly``) or an output
    with ``.logits``; ``model.config`` must carry the map (or pass ``config``).

    Example:
        >>> wrapped = RemapIds(trimmed)  # doctest: +SKIP
        >>> wrapped(input_ids, attention_mask).shape  # doctest: +SKIP
        torch.Size([8, 5])
    """

    def __init__(self, model: nn.Module, config: PretrainedConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else _config_of(model)
        self.model = model
        self.register_buffer("id_map", id_map(config))  # (original_vocab,)
        self.register_buffer("new_to_old", new_to_old(config), persistent=False)  # (new_vocab,)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        new_ids = self.id_map[input_ids]  # (batch, seq), ids of the trimmed vocabulary
        out = self.model(input_ids=new_ids, attention_mask=attention_mask)
        return out if isinstance(out, torch.Tensor) else out.logits


def _config_of(model: nn.Module) -> PretrainedConfig:
    config = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)
    if config is None:
        raise ValueError("RemapIds needs a trimmed model with .config (or .model.config), or pass config=")
    return config


def vocab_saving(model: PreTrainedModel, keep: torch.Tensor) -> dict[str, float | int]:
    """Parameter counts and fp32 MB before and after :func:`trim_vocabulary` with ``keep`` (no copy made).

    Every vocabulary-sized row of the embedding, output layer and its bias is counted once (tied once).

    Example:
        >>> vocab_saving(student, keep)  # doctest: +SKIP
        {'vocab_before': 30522, 'vocab_after': 14213, 'params_before': 3713605, 'params_after': ...}
    """
    vocab = model.get_input_embeddings().num_embeddings
    kept = int(torch.as_tensor(keep).numel())
    params = {id(p): p for p in model.parameters()}  # tied parameters once
    rows = {
        id(p): p.numel() // vocab
        for m in _vocab_modules(model)
        for p in m.parameters(recurse=False)
        if p.dim() in (1, 2) and p.shape[0] == vocab
    }
    before = sum(p.numel() for p in params.values())
    saved = sum(per_row * (vocab - kept) for key, per_row in rows.items() if key in params)
    after = before - saved
    return {
        "vocab_before": vocab,
        "vocab_after": kept,
        "params_before": before,
        "params_after": after,
        "params_saved": saved,
        "fraction_saved": saved / before if before else 0.0,
        "mb_fp32_before": before * _FP32_BYTES / 2**20,
        "mb_fp32_after": after * _FP32_BYTES / 2**20,
    }
