"""Virtual environments that stand in for a device's Python: numpy and one runtime, no torch, as on a Pi.

``shared_venv`` builds each package set once per test session (pip installs from the registry or its
cache), so the runner tests and the SSH device tests share one onnxruntime venv.

Example:
    >>> python = shared_venv(tmp_path_factory, ["onnxruntime==1.22.0"])  # doctest: +SKIP
    >>> subprocess.run([python, "-c", "import torch"]).returncode != 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import venv
from pathlib import Path

import pytest

_BUILT: dict[tuple[str, ...], Path] = {}  # packages -> python, for this test session


def fresh_venv(folder: Path, packages: list[str]) -> Path:
    """A venv with pip, numpy and ``packages`` only; returns its python."""
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    python = folder / "bin" / "python"
    numpy = f"numpy=={importlib.metadata.version('numpy')}"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", numpy, *packages],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"pip could not install {packages} into a fresh venv: {done.stderr[-1500:]}"
    return python


def shared_venv(tmp_path_factory: pytest.TempPathFactory, packages: list[str]) -> Path:
    """``fresh_venv`` built once per session for each package set; callers must not install into it."""
    key = tuple(packages)
    if key not in _BUILT:
        _BUILT[key] = fresh_venv(tmp_path_factory.mktemp("device-venv"), packages)
    return _BUILT[key]
