"""The ``Target`` protocol, the target registry, and the parity check every export goes through.

Targets are registered lazily (``"module:attr"``) so that importing this module never imports onnx,
onnxruntime, executorch or coremltools; torch itself is imported only when a parity check runs.

Example:
    >>> target = get_target("onnx")
    >>> artifact = target.export(student, {"input_ids": ids, "attention_mask": mask}, Path("out/onnx"))
    >>> check_parity(target, artifact, student, {"input_ids": ids, "attention_mask": mask}).ok
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from edge_distill.errors import DeviceError, ExportError, ParityError
from edge_distill.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    import torch

# The name every target gives the model's single output, so errors and reports can name it.
OUTPUT_NAME = "output"


@runtime_checkable
class Target(Protocol):
    """An export backend: writes an artifact, and loads and runs it in its own runtime."""

    name: str  # registry key, e.g. "onnx"
    extension: str  # artifact suffix, e.g. ".onnx"
    runtime: str  # what runs the artifact, e.g. "onnxruntime"

    def available(self) -> bool:
        """True when the exporter and the runtime are installed here."""
        ...

    def export(self, model: torch.nn.Module, example: dict[str, torch.Tensor], out_dir: Path) -> Path:
        """Write ``out_dir/model<extension>`` atomically; batch dim dynamic; failure -> ExportError."""
        ...

    def load(self, path: Path) -> Any:
        """A runtime session for the artifact."""
        ...

    def run(self, session: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The model's single output for one batch of inputs."""
        ...


TARGETS: Registry[type[Target]] = Registry("target")
TARGETS.register("onnx", "edge_distill.targets.onnx:OnnxTarget")


def get_target(name: str) -> Target:
    """An instance of the target registered as ``name``; an unknown name is an ExportError with a hint.

    Example:
        >>> get_target("onnx").extension
        '.onnx'
    """
    try:
        target_class = TARGETS.get(name)
    except UnknownNameError as exc:
        raise ExportError(str(exc)) from None
    return target_class()


@dataclass(frozen=True)
class Parity:
    """How closely an artifact reproduces the PyTorch model on ``n`` inputs."""

    max_abs_diff: float
    top1_agreement: float  # fraction of rows whose argmax over the last axis matches; 1.0 without one
    n: int
    atol: float
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_parity(
    target: Target,
    artifact: Path,
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    *,
    atol: float = 1e-4,
    min_top1: float = 1.0,
    batch_size: int = 32,
) -> Parity:
    """Run ``inputs`` through the artifact in its own runtime and through ``model`` (eval, no grad).

    Raises ParityError (with the numbers in ``error.parity``) when the max abs difference exceeds
    ``atol`` or the top-1 agreement is below ``min_top1``.

    Example:
        >>> check_parity(get_target("onnx"), Path("out/onnx/model.onnx"), student, batch).max_abs_diff
        3.1e-07
    """
    artifact = Path(artifact)
    n = _batch_len(inputs)
    try:
        session = target.load(artifact)
        expected, actual = _outputs(target, session, model, inputs, batch_size)
    except (DeviceError, ExportError) as exc:
        raise ParityError(f"The {target.name} artifact {artifact.name} could not be checked: {exc}") from exc
    parity = _compare(expected, actual, n=n, atol=atol, min_top1=min_top1)
    if not parity.ok:
        error = ParityError(_mismatch_message(target, artifact, parity, min_top1))
        error.parity = parity  # type: ignore[attr-defined]
        raise error
    return parity


def _batch_len(inputs: dict[str, Any]) -> int:
    lengths = {name: int(value.shape[0]) for name, value in inputs.items()}
    if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ParityError(f"Parity needs inputs with one shared, non-empty batch dimension; got {lengths}.")
    return next(iter(lengths.values()))


def _outputs(
    target: Target, session: Any, model: torch.nn.Module, inputs: dict[str, torch.Tensor], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(expected, actual) over all rows, computed ``batch_size`` rows at a time."""
    import torch

    n = _batch_len(inputs)
    expected, actual = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                chunk = {name: value[start : start + batch_size] for name, value in inputs.items()}
                expected.append(model(**chunk).detach().cpu().float().numpy())
                feed = {name: value.detach().cpu().numpy() for name, value in chunk.items()}
                actual.append(np.asarray(target.run(session, feed)))
    finally:
        model.train(was_training)
    return np.concatenate(expected), np.concatenate(actual)


def _compare(expected: np.ndarray, actual: np.ndarray, *, n: int, atol: float, min_top1: float) -> Parity:
    if expected.shape != actual.shape:
        raise ParityError(
            f"Output {OUTPUT_NAME!r} has shape {actual.shape} in the artifact but {expected.shape} in "
            "PyTorch; re-export with an example whose non-batch shapes match the inputs."
        )
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    max_diff = float(np.max(diff)) if diff.size else 0.0
    if np.isnan(diff).any():
        max_diff = float("inf")  # NaN on either side is never a match
    if expected.ndim >= 2:
        top1 = float(np.mean(np.argmax(expected, axis=-1) == np.argmax(actual, axis=-1)))
    else:
        top1 = 1.0  # no class axis to compare
    ok = max_diff <= atol and top1 >= min_top1
    return Parity(max_abs_diff=max_diff, top1_agreement=top1, n=n, atol=atol, ok=ok)


def _mismatch_message(target: Target, artifact: Path, parity: Parity, min_top1: float) -> str:
    return (
        f"The {target.name} artifact {artifact.name} does not compute what the PyTorch model computes: "
        f"output {OUTPUT_NAME!r} differs by up to {parity.max_abs_diff:.3g} (atol {parity.atol:g}) and "
        f"top-1 agreement is {parity.top1_agreement:.1%} (need {min_top1:.1%}) over {parity.n} inputs; "
        "re-export the model, or raise atol if a quantized artifact is expected to differ."
    )
