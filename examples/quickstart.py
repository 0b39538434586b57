"""The built-in demo through the Python API: runs examples/01_demo_step_by_step.py (same flags).

Run: python examples/quickstart.py [--quick] [--max-per-class 40] [--out DIR]   (see that file)
"""

from __future__ import annotations

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("01_demo_step_by_step.py")), run_name="__main__")
