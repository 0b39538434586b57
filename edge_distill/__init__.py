"""edge-distill: distil a large model into a small one that provably fits an edge device.

``edge_distill.distill`` (the distillation engine) and friends are imported lazily, so that
``import edge_distill`` and ``edge-distill --help`` stay fast.
"""

from __future__ import annotations

import logging
from typing import Any

__version__ = "0.1.0"

# torchao (pulled in by transformers and executorch) warns on import that its CUDA kernels do not load on
# a CPU build, and torch's pytree warns about torchao's enums: noise in a user's console, not problems.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

_LAZY = {
    "distill": "edge_distill.engine",
    "distill_progressive": "edge_distill.engine",
    "DistillResult": "edge_distill.engine",
    "Adapter": "edge_distill.views",
    "TrainSettings": "edge_distill.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_distill' has no attribute {name!r}")


__all__ = ["Adapter", "DistillResult", "TrainSettings", "__version__", "distill", "distill_progressive"]
