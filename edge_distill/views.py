"""What a model's forward pass shows the distillation losses: logits, taps, attentions, a pooled embedding.

An ``Adapter`` says how to call a model on a batch and where its logits and pooled embedding are. Hidden
states come from forward hooks on dotted module paths (``taps.Taps``), so any ``nn.Module`` works; the
attention maps of Hugging Face models come from ``output_attentions=True``.

Example:
    >>> adapter = Adapter(forward=lambda model, batch: model(batch["x"]))    # a plain module -> logits
    >>> need = Need(hidden=("layers.1",))                                     # doctest: +SKIP
    >>> views = collect(model, adapter, {"x": x}, need)                       # doctest: +SKIP
    >>> views.hidden["layers.1"].shape                                        # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edge_distill.taps import Taps

Batch = Mapping[str, torch.Tensor]
LABEL_KEYS = ("labels", "label")


@dataclass(frozen=True)
class Need:
    """Which views a loss objective reads from one side (student or teacher)."""

    logits: bool = True
    embedding: bool = False
    hidden: tuple[str, ...] = ()  # dotted module paths
    attentions: tuple[int, ...] = ()  # layer indices into the model's ``attentions`` output


@dataclass
class Views:
    """One forward pass, as the losses see it. Shapes: logits (batch, classes) or (batch, seq, vocab);
    embedding (batch, dim); hidden[path] (batch, seq, dim); attentions[i] (batch, heads, q, k)."""

    logits: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    hidden: dict[str, torch.Tensor] = field(default_factory=dict)
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)
    # a cached teacher's sparse logits: top-k values (..., k), their indices (..., k) and the logsumexp of
    # the other logits at ``topk_temperature`` (...,): the rest folded into one bucket
    topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    topk_temperature: float | None = None

    def detached(self) -> Views:
        """The same views with no autograd history (a teacher's outputs are targets, not parameters)."""
        return Views(
            logits=None if self.logits is None else self.logits.detach(),
            embedding=None if self.embedding is None else self.embedding.detach(),
            hidden={k: v.detach() for k, v in self.hidden.items()},
            attentions={k: v.detach() for k, v in self.attentions.items()},
            topk=self.topk,
            topk_temperature=self.topk_temperature,
        )


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """The batch without its labels (what the model is called with)."""
    return {k: v for k, v in batch.items() if k not in LABEL_KEYS and not k.startswith("teacher")}


def _default_forward(model: nn.Module, batch: Batch, need: Need) -> Any:
    inputs = model_inputs(batch)
    if need.attentions:
        inputs["output_attentions"] = True
    accepted = inspect.signature(model.forward).parameters
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()) or all(k in accepted for k in inputs):
        return model(**inputs)
    required = [
        p
        for p in accepted.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(inputs) == 1 and len(required) <= 1:  # a plain module taking one tensor
        return model(next(iter(inputs.values())))
    raise TypeError(
        f"{type(model).__name__}.forward does not take {sorted(inputs)}; pass an Adapter whose "
        "forward(model, batch) calls the model."
    )


def _default_logits(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Masked mean over tokens, as sentence-transformers pools: (batch, seq, dim) -> (batch, dim).

    A (batch, dim) output (an MLP's, a CNN's pooled features) is already one vector per example.
    """
    if hidden.dim() == 2:
        return hidden
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (batch, seq, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


@dataclass(frozen=True)
class Adapter:
    """How to call a model and read its outputs. Every field is optional.

    ``forward(model, batch)`` returns the raw output (default: ``model(**inputs)``, or ``model(x)`` for a
    one-input module); ``logits(output)`` picks the logits (default: the tensor itself, ``.logits``, or the
    first element); ``embedding(output, batch, views)`` gives the pooled (batch, dim) embedding (default:
    masked mean of ``embedding_path``'s output, or of ``last_hidden_state``).
    """

    forward: Callable[[nn.Module, Batch], Any] | None = None
    logits: Callable[[Any], torch.Tensor | None] = _default_logits
    embedding: Callable[[Any, Batch, Views], torch.Tensor] | None = None
    embedding_path: str | None = None  # module whose output is mean-pooled into the embedding

    def run(self, model: nn.Module, batch: Batch, need: Need) -> Any:
        if self.forward is not None:
            return self.forward(model, batch)
        return _default_forward(model, batch, need)

    def pooled(self, output: Any, batch: Batch, views: Views) -> torch.Tensor:
        if self.embedding is not None:
            return self.embedding(output, batch, views)
        mask = batch.get("attention_mask")
        if self.embedding_path is not None:
            return mean_pool(views.hidden[self.embedding_path], mask)
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:
            raise ValueError(
                "No pooled embedding: the model output has no last_hidden_state; pass "
                "Adapter(embedding_path='<dotted module>') or Adapter(embedding=fn)."
            )
        return mean_pool(hidden, mask)


def collect(model: nn.Module, adapter: Adapter, batch: Batch, need: Need) -> Views:
    """Run ``model`` on ``batch`` once and gather the views ``need`` asks for (gradients kept)."""
    device = next((p.device for p in model.parameters()), None)
    if device is not None:  # the batch goes where the model is (a student on the GPU, a teacher left on CPU)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    paths = list(need.hidden)
    if need.embedding and adapter.embedding_path:
        paths.append(adapter.embedding_path)
    with Taps(model, paths) as taps:
        output = adapter.run(model, batch, need)
    views = Views(hidden={p: taps.outputs[p] for p in paths})
    if need.logits:
        views.logits = adapter.logits(output)
        if views.logits is None:
            raise ValueError(f"{type(model).__name__}'s output has no logits; pass Adapter(logits=fn).")
    if need.embedding:
        views.embedding = adapter.pooled(output, batch, views)
    if need.attentions:
        attentions = getattr(output, "attentions", None)
        if attentions is None:
            raise ValueError(
                f"{type(model).__name__} returned no attentions; attention losses need a model that "
                "supports output_attentions=True (load it with attn_implementation='eager')."
            )
        views.attentions = {i: attentions[i] for i in need.attentions}
    return views


def hf_encoder_adapter(model: nn.Module) -> Adapter:
    """For a Hugging Face classifier: the embedding is the masked mean of the last encoder block."""
    from edge_distill.taps import TapError, encoder_layer_paths

    try:
        last = encoder_layer_paths(model)[-1]
    except TapError:
        return Adapter()
    return Adapter(embedding_path=last)


def auto_adapter(model: nn.Module) -> Adapter:
    """The adapter edge-distill uses when none is given."""
    if hasattr(model, "config") and hasattr(model.config, "model_type"):
        return hf_encoder_adapter(model)
    return Adapter()
