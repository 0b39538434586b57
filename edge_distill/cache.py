"""The teacher-output cache: content-addressed, fingerprinted, written atomically, verified on read.

The teacher runs once per fingerprint (teacher weights, data, settings); every round and every candidate
reuses what it produced. An entry whose checksum does not match is recomputed, never used.

Example:
    >>> cache = TeacherCache(Path("~/.cache/edge-distill/teacher-outputs").expanduser())  # doctest: +SKIP
    >>> key = cache_key(teacher.fingerprint(), data.fingerprint(), {"seq_len": 128})      # doctest: +SKIP
    >>> outputs, hit = cache.get_or_compute(key, lambda: {"train": logits})                 # doctest: +SKIP

Row-sharded entries (``get_or_compute_rows``) serve distributed runs: each rank computes and writes its
own contiguous rows once, the main rank writes a manifest last, and every rank reads the whole entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
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
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
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

    def entry_dir(self, key: str) -> Path:
        return self.root / key

    def load_rows(self, key: str) -> dict[str, torch.Tensor] | None:
        """A row-sharded entry, concatenated; None when it is missing, incomplete or any part is corrupt."""
        folder = self.entry_dir(key)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        if manifest.get("key") != key or manifest.get("version") != CACHE_VERSION:
            return None
        parts = []
        for start, stop in manifest["parts"]:
            part = TeacherCache(folder).load(_part_name(key, start, stop))
            if part is None:
                return None
            parts.append(part)
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

    def bytes_of(self, key: str) -> int:
        """Bytes on disk of a row-sharded entry (all parts and the manifest)."""
        folder = self.entry_dir(key)
        return sum(f.stat().st_size for f in folder.iterdir()) if folder.exists() else 0

    def get_or_compute_rows(
        self,
        keys: Mapping[str, str],
        n: int,
        compute_rows: Callable[[int, int, Sequence[str]], Mapping[str, Mapping[str, torch.Tensor]]],
        *,
        rank: int = 0,
        world: int = 1,
        barrier: Callable[[], None] = lambda: None,
    ) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
        """Entries for several groups of outputs over rows 0..n: ``({group: tensors}, groups computed)``.

        ``keys`` maps a group name to its cache key. Groups already cached are read; the missing ones are
        computed together in one pass, rank r taking rows ``shard_bounds(n, world)[r]``. Every rank must
        call this (it synchronises through ``barrier``). Each part is written once, by the rank that
        computed it; the manifest, written last by rank 0, makes an entry visible.
        """
        found = {group: self.load_rows(key) for group, key in keys.items()}
        missing = [group for group, tensors in found.items() if tensors is None]
        barrier()  # nobody writes until every rank has looked
        if missing:
            self._compute_missing(keys, missing, n, compute_rows, rank, world, barrier)
            for group in missing:
                found[group] = self.load_rows(keys[group])
                if found[group] is None:
                    raise OSError(f"Cache entry {self.entry_dir(keys[group])} could not be read back.")
        return {group: tensors for group, tensors in found.items() if tensors is not None}, missing

    def _compute_missing(self, keys, missing, n, compute_rows, rank, world, barrier) -> None:
        bounds = shard_bounds(n, world)
        start, stop = bounds[rank]
        if stop > start:
            computed = compute_rows(start, stop, missing)
            for group in missing:
                part = TeacherCache(self.entry_dir(keys[group]))
                part.store(_part_name(keys[group], start, stop), computed[group])
        barrier()
        if rank == 0:
            for group in missing:
                parts = [b for b in bounds if b[1] > b[0]]
                manifest = {"key": keys[group], "version": CACHE_VERSION, "rows": n, "parts": parts}
                write_bytes_atomic(
                    self.entry_dir(keys[group]) / "manifest.json", json.dumps(manifest).encode()
                )
        barrier()


def _part_name(key: str, start: int, stop: int) -> str:
    return f"{key[:16]}-rows-{start:09d}-{stop:09d}"


def shard_bounds(n: int, world: int) -> Sequence[tuple[int, int]]:
    """Contiguous [start, stop) row ranges, one per rank, sizes differing by at most one.

    Example:
        >>> shard_bounds(5, 2)
        [(0, 3), (3, 5)]
    """
    edges = [(i * n + world - 1) // world for i in range(world)] + [n]
    return [(edges[i], edges[i + 1]) for i in range(world)]
