"""The wheel ships the profiles and the targets; CI runs the README's own test command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_profiles_and_targets(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("edge_distill-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "edge_distill/builtin_profiles/raspberry-pi-4.toml" in names
    assert "edge_distill/builtin_profiles/host.toml" in names
    assert {
        "edge_distill/targets/base.py",
        "edge_distill/targets/onnx.py",
        "edge_distill/targets/runner.py",
    } <= names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    marker = readme.index("# 2. Install, then run the linters and the tests")
    command = readme[marker + 1]
    assert "pytest" in command and "pip install" in command
    ci = (ROOT / ".ci" / "run").read_text()
    assert "# 2\\. Install, then run the linters and the tests" in ci
    assert (
        readme.index(
            "# 1. Install, then run the whole job on the built-in demo for a Raspberry Pi 4 "
            "(offline, a few minutes on 2 cores)"
        )
        < marker
    )


def test_console_script_and_module_entry_points() -> None:
    result = subprocess.run([sys.executable, "-m", "edge_distill", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--profile" in result.stdout
    # --help must stay light: no training or export stack imported
    probe = (
        "import sys, edge_distill.cli; print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"
    )
