"""Atomic writes: a file or a folder appears whole, or not at all.

Example:
    >>> write_json_atomic(Path("runs/x/report.json"), {"schema": 1})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_distill.errors import EdgeDistillError


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the file is meant to be read like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; rename it to ``final`` on success, delete it on error."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def check_writable(folder: Path) -> None:
    """Fail now, in one sentence, when ``folder`` cannot be made: a read-only disk, /proc, no permission.

    Makes and removes an empty folder in the nearest existing ancestor, so nothing is left behind.

    Example:
        >>> check_writable(Path("/proc/run"))  # doctest: +SKIP
        Traceback (most recent call last):
        EdgeDistillError: Cannot write the run folder /proc/run (No such file or directory); ...
    """
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    try:
        Path(tempfile.mkdtemp(prefix=".edge-distill-check-", dir=existing)).rmdir()
    except OSError as exc:
        raise EdgeDistillError(
            f"Cannot write the run folder {folder} ({exc.strerror}); pass --out a folder on a writable disk."
        ) from None
