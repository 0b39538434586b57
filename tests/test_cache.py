"""The teacher-output cache: hit after store, corrupt entries recomputed, keys sensitive to settings."""

from __future__ import annotations

from pathlib import Path

import torch

from edge_distill.cache import TeacherCache, cache_key


def test_store_then_hit(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path)
    calls = []

    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"train": torch.arange(6.0).reshape(2, 3)}

    first, hit1 = cache.get_or_compute("k", compute)
    second, hit2 = cache.get_or_compute("k", compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert torch.equal(first["train"], second["train"])


def test_corrupt_entry_is_recomputed(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path)
    cache.store("k", {"train": torch.ones(4, 2)})
    raw = bytearray(cache.path("k").read_bytes())
    raw[-1] ^= 0xFF  # flip a byte in the tensor data
    cache.path("k").write_bytes(bytes(raw))
    assert cache.load("k") is None
    outputs, hit = cache.get_or_compute("k", lambda: {"train": torch.zeros(4, 2)})
    assert not hit and torch.equal(outputs["train"], torch.zeros(4, 2))


def test_truncated_entry_is_recomputed(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path)
    cache.store("k", {"train": torch.ones(4, 2)})
    cache.path("k").write_bytes(cache.path("k").read_bytes()[:20])
    assert cache.load("k") is None


def test_key_changes_with_teacher_data_and_settings() -> None:
    base = cache_key("t", "d", {"seq_len": 128})
    assert base == cache_key("t", "d", {"seq_len": 128})
    assert (
        len(
            {
                base,
                cache_key("t2", "d", {"seq_len": 128}),
                cache_key("t", "d2", {"seq_len": 128}),
                cache_key("t", "d", {"seq_len": 64}),
            }
        )
        == 4
    )


def test_no_temp_files_left(tmp_path: Path) -> None:
    TeacherCache(tmp_path).store("k", {"x": torch.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.safetensors"]
