"""The teacher-output cache: content-addressed, fingerprinted, written atomically, verified on read.

The teacher runs once per fingerprint (teacher weights, data, settings); every round and every candidate
reuses what it produced. An entry whose checksum does not match is recomputed, never used.

Example:
    >>> cache = TeacherCache(Path("~/.cache/edge-distill/teacher-outputs").expanduser())  # doctest: +SKIP
    >>> key = cache_key(teacher.fingerprint(), data.fingerprint(), {"seq_len": 128})      # doctest: +SKIP
    >>> outputs, hit = cache.get_or_compute(key, lambda: {"train": logits})                 # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import platformdirs
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from edge_distill.atomic import write_bytes_atomic

CACHE_VERSION = 1


def cache_root() -> Path:
    """The user cache folder (``EDGE_DISTILL_CACHE`` overrides it, e.g. for tests)."""
    return Path(os.environ.get("EDGE_DISTILL_CACHE") or platformdirs.user_cache_dir("edge-distill"))


def cache_key(teacher_fingerprint: str, data_fingerprint: str, settings: Mapping[str, object]) -> str:
    """A stable key for one (teacher, data, settings) combination."""
    blob = json.dumps(
        {"v": CACHE_VERSION, "teacher": teacher_fingerprint, "data": data_fingerprint, "settings": settings},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class TeacherCache:
    """Teacher outputs on disk, one safetensors file per key."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry for ``key``, or None when it is missing, unreadable or fails its checksum."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            tensors = load_file(path)
            with open(path, "rb") as handle:
                header_len = int.from_bytes(handle.read(8), "little")
                metadata = json.loads(handle.read(header_len)).get("__metadata__", {})
        except (SafetensorError, OSError, ValueError):
            return None
        if metadata.get("key") != key or metadata.get("checksum") != _checksum(tensors):
            return None
        return tensors

    def store(self, key: str, tensors: Mapping[str, torch.Tensor]) -> None:
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        metadata = {"key": key, "checksum": _checksum(tensors), "version": str(CACHE_VERSION)}
        write_bytes_atomic(self.path(key), save(tensors, metadata=metadata))

    def get_or_compute(
        self, key: str, compute: Callable[[], Mapping[str, torch.Tensor]]
    ) -> tuple[dict[str, torch.Tensor], bool]:
        """Return (outputs, hit); on a miss (or a corrupt entry) compute, store and return them."""
        cached = self.load(key)
        if cached is not None:
            return cached, True
        outputs = dict(compute())
        self.store(key, outputs)
        return outputs, False
