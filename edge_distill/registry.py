"""One small registry, filled by a decorator or by lazy ``"module:attr"`` strings.

Lazy entries keep ``import edge_distill`` and ``edge-distill --help`` free of heavy imports
(executorch, coremltools, litert): the module is imported only when the entry is first used.

Example:
    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("kl")
    ... class KL: ...
    >>> LOSSES.get("kl") is KL
    True
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> object table; duplicate names are errors, unknown names get a did-you-mean."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, obj: T | str | None = None) -> Callable[[T], T] | T | str:
        """Register ``obj`` (or a lazy ``"module:attr"`` string) under ``name``; usable as a decorator."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorator(target: T) -> T:
            self._add(name, target)
            return target

        return decorator

    def _add(self, name: str, obj: T | str) -> None:
        existing = self._entries.get(name)
        if existing is not None and not _same_lazy_target(existing, obj):
            raise ValueError(f"{self.kind} {name!r} is registered twice; pick another name.")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        """Return the entry, importing a lazy one on first use."""
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = entry
        return entry

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"Unknown {self.kind} {name!r}{hint}; use one of {', '.join(self.names())}."  # one sentence

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def _same_lazy_target(existing: Any, new: Any) -> bool:
    """A lazy entry resolved by its own module's decorator is the same entry, not a duplicate."""
    if isinstance(existing, str) and not isinstance(new, str):
        module_name, _, attr = existing.partition(":")
        return getattr(new, "__module__", None) == module_name and getattr(new, "__name__", None) == attr
    return False
