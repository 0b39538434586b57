"""What ships: ``artifacts/<target>-<precision>/``, everything an app developer needs to call the model.

Each folder holds the model file; ``tokenizer/`` (text) or the image normalisation in ``metadata.json``;
``labels.json``; ``inputs.npz`` (one example row, for timing on a device); ``runner.py`` (the torch-free
runner, so the folder can be copied to a Raspberry Pi that has only numpy and a runtime); and
``metadata.json``: the profile, how the artifact was verified, tool versions and the input/output
signature. A folder appears whole or not at all: an export or a verification that fails leaves nothing.

Example:
    >>> shipment = ShipData.for_text(example, calibration, held_out, labels=labels, tokenizer=tok,
    ...                              seq_len=128, label_names=("business", "sport"))  # doctest: +SKIP
    >>> ship(model, "onnx", "int8", Path("artifacts"), shipment)["verification"]["status"]  # doctest: +SKIP
    'verified'
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_distill import __version__
from edge_distill.atomic import atomic_dir, write_json_atomic
from edge_distill.errors import ExportError
from edge_distill.profiles import DeviceProfile
from edge_distill.targets import runner
from edge_distill.targets.base import Metric, Target, check_precision, get_target, verify

METADATA_SCHEMA = 1
# The packages whose versions decide what an artifact computes; recorded in every metadata.json.
TOOLS = (
    "torch", "transformers", "onnx", "onnxscript", "onnxruntime", "executorch", "coremltools",
    "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "torchao", "numpy",
)  # fmt: skip


@dataclass(frozen=True)
class ShipData:
    """What every export of one model shares: the example it is traced with, the calibration rows (held-out
    training examples, never the test split), the rows it is verified on, their metric, and how an app
    turns raw input into the model's inputs."""

    example: dict[str, torch.Tensor]  # batch 1
    calibration: dict[str, torch.Tensor]  # (n_cal, ...)
    held_out: dict[str, torch.Tensor]  # (n, ...)
    metric: Metric | None  # None: top-1 agreement with PyTorch
    preprocess: dict[str, Any]
    label_names: tuple[str, ...] = ()
    tokenizer: Any = None
    top1: bool = True  # False where argmax over the output means nothing (embeddings)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in metadata.json as-is


def bundle_name(target: str, precision: str) -> str:
    return f"{target}-{precision}"


def ship(
    model: torch.nn.Module,
    target_name: str,
    precision: str,
    out_root: Path,
    data: ShipData,
    *,
    profile: DeviceProfile | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ``out_root/<target>-<precision>/``, verify it, and write what ships beside it.

    Returns the metadata written. Raises ExportError (cannot export) or ParityError (does not compute what
    the PyTorch model computes); either way no folder is left behind.
    """
    target = get_target(target_name, profile=profile)
    if not target.available():
        raise ExportError(
            f"The {target_name} target's exporter is not installed here; reinstall edge-distill "
            "(`pip install -e .`) to get it."
        )
    check_precision(target, precision)
    final = Path(out_root) / bundle_name(target_name, precision)
    with atomic_dir(final) as work:
        artifact = _export_into(target, model, data, precision, work)
        inspected = target.inspect(artifact)
        verification = verify(
            target, artifact, model, data.held_out, precision=precision, metric=data.metric,
            top1=data.top1,
        )  # fmt: skip
        metadata = _metadata(target, precision, artifact, inspected, verification.as_dict(), data, profile)
        metadata["cost"] = _cost(model, data, precision)
        _write_support_files(work, data, metadata)
    return metadata


def _export_into(target: Target, model: torch.nn.Module, data: ShipData, precision: str, work: Path) -> Path:
    """Export into ``work/.export`` then move the artifact (file or .mlpackage folder) up into ``work``."""
    staged = target.export(
        model, data.example, work / ".export", precision=precision, calibration=data.calibration
    )
    for item in staged.parent.iterdir():
        os.replace(item, work / item.name)
    staged.parent.rmdir()
    return work / staged.name


def _cost(model: torch.nn.Module, data: ShipData, precision: str) -> dict[str, int] | None:
    """FLOPs and bytes per batch-1 inference: what `edge-distill profile` calibrates the predictor with."""
    from edge_distill.predictor import BYTES_PER_WEIGHT, model_features

    if precision not in BYTES_PER_WEIGHT:
        return None
    try:
        return model_features(model, {k: v[:1] for k, v in data.example.items()}, precision).as_dict()
    except Exception:  # a model the counters cannot trace still ships; it just does not calibrate
        return None


def _metadata(
    target: Target,
    precision: str,
    artifact: Path,
    inspected: dict[str, Any],
    verification: dict[str, Any],
    data: ShipData,
    profile: DeviceProfile | None,
) -> dict[str, Any]:
    size = runner.artifact_size_bytes(artifact)
    return {
        "schema": METADATA_SCHEMA,
        "target": target.name,
        "precision": precision,
        "runtime": target.runtime,
        "file": artifact.name,
        "size_mb": round(size / 2**20, 3),
        "size_bytes": size,
        "profile": None if profile is None else {"name": profile.name, "description": profile.description},
        "verification": verification,
        "signature": {"inputs": inspected.get("inputs", []), "outputs": inspected.get("outputs", [])},
        "inspect": {k: v for k, v in inspected.items() if k not in ("inputs", "outputs")},
        "preprocess": data.preprocess,
        "labels": list(data.label_names),
        "run": f"python runner.py {artifact.name} --inputs inputs.npz --runs 50",
        "tools": tool_versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **data.extra,
    }


def tool_versions() -> dict[str, str]:
    """Installed versions of the exporters and runtimes (and edge-distill, Python, the platform)."""
    versions = {
        "edge-distill": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in TOOLS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _write_support_files(work: Path, data: ShipData, metadata: dict[str, Any]) -> None:
    if data.tokenizer is not None:
        data.tokenizer.save_pretrained(work / "tokenizer")
    write_json_atomic(work / "labels.json", list(data.label_names))
    np.savez(work / "inputs.npz", **{k: v[:1].numpy() for k, v in data.example.items()})
    shutil.copyfile(runner.__file__, work / "runner.py")
    write_json_atomic(work / "metadata.json", metadata)
    (work / "README.md").write_text(_readme(metadata))


def _readme(metadata: dict[str, Any]) -> str:
    verification = metadata["verification"]
    if verification["status"] == "verified":
        checked = (
            f"verified here against the PyTorch student on {verification['n']} held-out inputs: max abs "
            f"difference {verification['max_abs_diff']:.3g}, {verification['metric']} "
            f"{verification['metric_artifact']:.4f} (PyTorch {verification['metric_pytorch']:.4f})"
        )
    else:
        checked = f"{verification['status']}: {verification['reason']}"
    inputs = ", ".join(
        f"`{i['name']}` {i.get('dtype', '?')} {i.get('shape', '?')}" for i in metadata["signature"]["inputs"]
    )
    return f"""# {metadata["file"]} ({metadata["target"]}, {metadata["precision"]})

Runs in {metadata["runtime"]}. {metadata["size_mb"]:.2f} MB. Inputs: {inputs}.
Parity: {checked}.

Preprocessing: see `preprocess` in metadata.json (text: the tokenizer in `tokenizer/`, padded and truncated
to the fixed sequence length). Labels: labels.json, in output order.

Time it with only numpy and the runtime installed (no torch):

    {metadata["run"]}
"""
