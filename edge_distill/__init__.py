"""edge-distill: distil a large model into a small one that provably fits an edge device."""

__version__ = "0.1.0"
