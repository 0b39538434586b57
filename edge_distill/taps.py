"""Distillation taps: forward hooks on dotted module paths, and teacher-to-student layer pairs.

A tap names a module by its dotted path in ``model.named_modules()`` (``"bert.encoder.layer.3"``) and
records that module's output on every forward pass. Paths are checked when the taps are built, so a
typo fails at setup with the closest valid name rather than silently capturing nothing (after
torchdistill's ``ForwardHookManager``).

Example:
    >>> pairs = map_layers(teacher, student)                          # doctest: +SKIP
    >>> with Taps(student, [s for s, _ in pairs]) as taps:            # doctest: +SKIP
    ...     student(**batch)
    >>> taps.outputs[pairs[0][0]].shape                               # doctest: +SKIP
    torch.Size([8, 128, 384])
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from edge_distill.errors import EdgeDistillError
from edge_distill.students import layer_map

STRATEGIES = ("uniform", "last", "first_last")


class TapError(EdgeDistillError):
    """A tap or layer pair naming a module the model does not have, or a model with no encoder blocks."""


def check_paths(model: nn.Module, paths: Iterable[str]) -> None:
    """Raise TapError for the first path that is not a module of ``model``, suggesting the closest name.

    Example:
        >>> check_paths(model, ["bert.encoder.layer.0"])              # doctest: +SKIP
    """
    modules = dict(model.named_modules())
    for path in paths:
        if path not in modules:
            close = difflib.get_close_matches(path, list(modules), n=1, cutoff=0.0)
            hint = f"the closest valid name is {close[0]!r}" if close else "it has no named modules"
            raise TapError(
                f"{type(model).__name__} has no module named {path!r} ({hint}); list the valid names "
                f"with `[name for name, _ in model.named_modules()]`."
            )


def _first_tensor(output: Any) -> Any:
    """The tensor a tap records: the output itself, or its first element for a tuple or ModelOutput.

    Encoder blocks may return ``(hidden_states, attentions, ...)``; the hidden states come first.
    """
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "to_tuple"):  # transformers' ModelOutput: first non-None field
        output = output.to_tuple()
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return output


class Taps:
    """Records the outputs of the named modules while used as a context manager.

    ``outputs[path]`` holds the module's output from the latest forward pass: the tensor itself, or the
    first element when the module returns a tuple or a ``ModelOutput`` (for an encoder block, the hidden
    states, shape (batch, seq, hidden)). Tensors are not detached, so student taps carry gradients; run
    the teacher under ``torch.no_grad()``. A module called twice in one pass keeps its last output.
    Hooks are registered on entry and removed on exit, also when the body raises.

    Example:
        >>> taps = Taps(model, ["bert.encoder.layer.0"])              # doctest: +SKIP
        >>> with taps:                                                # doctest: +SKIP
        ...     model(**batch)
        >>> taps.outputs["bert.encoder.layer.0"].shape                # doctest: +SKIP
        torch.Size([8, 128, 384])
        >>> taps.clear()                                              # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, paths: Iterable[str]) -> None:
        self.paths = list(dict.fromkeys(paths))  # de-duplicated, order kept
        check_paths(model, self.paths)
        self.model = model
        self.outputs: dict[str, Any] = {}
        self._handles: list[RemovableHandle] = []

    def _hook(self, path: str) -> Any:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[path] = _first_tensor(output)

        return record

    def __enter__(self) -> Taps:
        if self._handles:
            raise TapError("These taps are already active; leave the `with` block before entering it again.")
        modules = dict(self.model.named_modules())
        self._handles = [modules[p].register_forward_hook(self._hook(p)) for p in self.paths]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this object registered (safe to call more than once)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget recorded outputs (call between steps so that no stale tensor or graph is kept)."""
        self.outputs.clear()


# Names of the module list holding a transformer's blocks: BERT-likes' `encoder.layer`, ViT's and
# Llama-likes' `layers` (transformers 5), GPT-2's `transformer.h`.
_BLOCK_LISTS = ("encoder.layer", "layers", "h")


def _is_block_list(name: str) -> bool:
    return any(name == tail or name.endswith("." + tail) for tail in _BLOCK_LISTS)


def encoder_layer_paths(model: nn.Module) -> list[str]:
    """Dotted paths of a transformer's blocks: the children of its ``encoder.layer`` (BERT-likes),
    ``layers`` (ViT, Llama-likes) or ``h`` (GPT-2) module list.

    Example:
        >>> encoder_layer_paths(BertForSequenceClassification(config))  # doctest: +SKIP
        ['bert.encoder.layer.0', 'bert.encoder.layer.1']
    """
    lists = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and _is_block_list(name)
    ]
    if len(lists) != 1:
        found = ", ".join(repr(name) for name, _ in lists) or "none"
        raise TapError(
            f"{type(model).__name__} must hold exactly one module list of transformer blocks "
            f"(`encoder.layer`, `layers` or `h`; found {found}); name the layer pairs explicitly instead."
        )
    name, blocks = lists[0]
    return [f"{name}.{i}" for i in range(len(blocks))]


def map_layers(
    teacher: nn.Module,
    student: nn.Module,
    *,
    strategy: str = "uniform",
    overrides: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """``(student_path, teacher_path)`` pairs of encoder blocks whose outputs should match.

    ``"uniform"`` pairs student block i with teacher block ``layer_map(T, S)[i]`` (spread, keeping the
    last); ``"last"`` pairs only the last blocks; ``"first_last"`` pairs the first blocks and the last
    blocks (only the last for a one-block student). ``overrides`` maps student path -> teacher path:
    it replaces the pair of a student path already chosen and appends any other; every path in it is
    checked against the models' ``named_modules()``.

    Example:
        >>> map_layers(teacher_4_layers, student_2_layers)              # doctest: +SKIP
        [('bert.encoder.layer.0', 'bert.encoder.layer.1'), ('bert.encoder.layer.1', 'bert.encoder.layer.3')]
    """
    if strategy not in STRATEGIES:
        close = difflib.get_close_matches(strategy, STRATEGIES, n=1, cutoff=0.0)
        raise TapError(
            f"Unknown layer strategy {strategy!r} (did you mean {close[0]!r}?); choose one of "
            f"{', '.join(STRATEGIES)}."
        )
    overrides = dict(overrides or {})
    check_paths(student, overrides)
    check_paths(teacher, overrides.values())
    t_paths, s_paths = encoder_layer_paths(teacher), encoder_layer_paths(student)
    if strategy == "uniform":
        chosen = [t_paths[j] for j in layer_map(len(t_paths), len(s_paths))]
        pairs = dict(zip(s_paths, chosen, strict=True))
    elif strategy == "last" or len(s_paths) == 1:
        pairs = {s_paths[-1]: t_paths[-1]}
    else:
        pairs = {s_paths[0]: t_paths[0], s_paths[-1]: t_paths[-1]}
    pairs.update(overrides)  # replaced keys keep their place; new ones go last
    return list(pairs.items())
