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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from edge_distill.errors import DeviceError, ExportError, ParityError
from edge_distill.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    import torch

    from edge_distill.profiles import DeviceProfile

# The name every target gives the model's single output, so errors and reports can name it.
OUTPUT_NAME = "output"


# Every precision a target may offer. int8 is static (activations calibrated on held-out training examples);
# int8-dynamic quantizes weights ahead of time and activations at run time; palettized is Core ML's k-means
# weight palettes.
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "palettized")


@dataclass(frozen=True)
class Tolerance:
    """What an artifact of one precision must achieve against the PyTorch fp32 model; None: not gated."""

    atol: float | None = None  # max abs difference of the output
    min_top1: float | None = None  # top-1 agreement with PyTorch
    max_metric_drop: float | None = None  # task metric (a fraction, 0.01 = 1 point) below PyTorch's

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, min_top1=1.0),
    "fp16": Tolerance(atol=1e-2),
    "int8": Tolerance(max_metric_drop=0.01),
    "int8-dynamic": Tolerance(max_metric_drop=0.01),
    "palettized": Tolerance(max_metric_drop=0.01),
}


@runtime_checkable
class Target(Protocol):
    """An export backend: writes an artifact in one precision, and loads and runs it in its own runtime.

    ``example`` and ``calibration`` map forward's parameter names to tensors with the batch first;
    ``calibration`` holds held-out training examples (never the test split) for static quantization.
    """

    name: str  # registry key, e.g. "onnx"
    extension: str  # artifact suffix, e.g. ".onnx" (".mlpackage" is a folder)
    runtime: str  # what runs the artifact, e.g. "onnxruntime"
    precisions: tuple[str, ...]  # a subset of PRECISIONS, fp32 (or the default) first

    def available(self) -> bool:
        """True when the exporter is installed here."""
        ...

    def unverifiable_reason(self) -> str | None:
        """None when this host can run the artifacts; else why not (Core ML prediction needs macOS)."""
        ...

    def export(
        self,
        model: torch.nn.Module,
        example: dict[str, torch.Tensor],
        out_dir: Path,
        *,
        precision: str = "fp32",
        calibration: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write ``out_dir/model<extension>`` atomically; failure -> ExportError naming the op and target."""
        ...

    def inspect(self, path: Path) -> dict[str, Any]:
        """What can be checked without running: the signature, the ops, what was delegated (JSON-able)."""
        ...

    def load(self, path: Path) -> Any:
        """A runtime session for the artifact."""
        ...

    def run(self, session: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The model's single output for one batch of inputs (any batch size)."""
        ...


def check_precision(target: Target, precision: str) -> None:
    """Raise ExportError naming what ``target`` offers when it does not export ``precision``."""
    if precision not in target.precisions:
        raise ExportError(
            f"The {target.name} target has no {precision!r} precision; "
            f"use one of {', '.join(target.precisions)}."
        )


def require_calibration(target: Target, precision: str, calibration: dict[str, Any] | None) -> None:
    """Raise ExportError when a statically quantized export gets no calibration examples."""
    if not calibration or not any(int(v.shape[0]) for v in calibration.values()):
        raise ExportError(
            f"The {target.name} target needs calibration examples for {precision}; pass held-out training "
            "examples as `calibration` (the CLI takes them from --data)."
        )


TARGETS: Registry[type[Target]] = Registry("target")
TARGETS.register("onnx", "edge_distill.targets.onnx:OnnxTarget")
TARGETS.register("executorch", "edge_distill.targets.executorch:ExecuTorchTarget")
TARGETS.register("executorch-coreml", "edge_distill.targets.executorch:ExecuTorchCoreMLTarget")
TARGETS.register("coreml", "edge_distill.targets.coreml:CoreMLTarget")
TARGETS.register("tflite", "edge_distill.targets.tflite:TfliteTarget")


def get_target(name: str, *, profile: DeviceProfile | None = None) -> Target:
    """An instance of the target registered as ``name``; an unknown name is an ExportError with a hint.

    With a ``profile``, a target class that has ``for_profile(profile)`` (Core ML's deployment target,
    the device's thread count) is built from it.

    Example:
        >>> get_target("onnx").extension
        '.onnx'
    """
    try:
        target_class = TARGETS.get(name)
    except UnknownNameError as exc:
        raise ExportError(str(exc)) from None
    if profile is not None and hasattr(target_class, "for_profile"):
        return target_class.for_profile(profile)
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


@dataclass(frozen=True)
class Metric:
    """The task metric computed on a batch of outputs (n, ...) -> float, higher is better."""

    name: str  # e.g. "accuracy"
    compute: Callable[[np.ndarray], float]


@dataclass(frozen=True)
class Verification:
    """How an artifact of one precision was checked against the PyTorch model, and what it achieved.

    ``status`` is ``verified`` when the artifact ran in its runtime here and met its precision's tolerance,
    or ``unverified on this host`` (with ``reason``) when this host cannot run it: never verified then.
    """

    target: str
    precision: str
    status: str
    reason: str | None
    n: int
    tolerance: dict[str, Any]
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    metric: str | None = None
    metric_pytorch: float | None = None
    metric_artifact: float | None = None

    @property
    def verified(self) -> bool:
        return self.status == VERIFIED

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


VERIFIED = "verified"
UNVERIFIED = "unverified on this host"


def verify(
    target: Target,
    artifact: Path,
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    *,
    precision: str = "fp32",
    metric: Metric | None = None,
    top1: bool = True,
    batch_size: int = 32,
) -> Verification:
    """Run ``inputs`` through the artifact and through the fp32 ``model``; hold them to ``precision``'s
    tolerance (TOLERANCES). The task metric is computed on both sides' outputs; without ``metric`` it is
    top-1 agreement with PyTorch (PyTorch's own is 1.0).

    Raises ParityError naming the output and the gap when the artifact misses the tolerance. A host that
    cannot run the artifact (``target.unverifiable_reason()``) gives status ``unverified on this host``.

    Example:
        >>> verify(get_target("onnx"), path, student, held_out, precision="int8", metric=accuracy).status
        'verified'
    """
    tolerance = TOLERANCES[precision]
    n = _batch_len(inputs)
    reason = target.unverifiable_reason()
    if reason is not None:
        return Verification(target.name, precision, UNVERIFIED, reason, n, tolerance.as_dict())
    artifact = Path(artifact)
    try:
        session = target.load(artifact)
        expected, actual = _outputs(target, session, model, inputs, batch_size)
    except (DeviceError, ExportError) as exc:
        raise ParityError(f"The {target.name} artifact {artifact.name} could not be checked: {exc}") from exc
    atol = np.inf if tolerance.atol is None else tolerance.atol
    parity = _compare(expected, actual, n=n, atol=atol, min_top1=tolerance.min_top1 or 0.0)
    agreement = parity.top1_agreement if top1 else None
    if metric is None and top1:
        metric = Metric("top-1 agreement", lambda out: _top1(expected, out))
    elif metric is None:
        metric = Metric("cosine similarity", lambda out: _cosine(expected, out))
    result = Verification(
        target.name,
        precision,
        VERIFIED,
        None,
        n,
        tolerance.as_dict(),
        max_abs_diff=parity.max_abs_diff,
        top1_agreement=agreement,
        metric=metric.name,
        metric_pytorch=float(metric.compute(expected)),
        metric_artifact=float(metric.compute(actual)),
    )
    gap = _tolerance_gap(result, tolerance)
    if gap is not None:
        error = ParityError(
            f"The {target.name} {precision} artifact {artifact.name} misses its tolerance on output "
            f"{OUTPUT_NAME!r} over {n} inputs: {gap}; export a higher precision, calibrate on more "
            "examples, or distill longer so the student's margins survive quantization."
        )
        error.verification = result  # type: ignore[attr-defined]
        raise error
    return result


def _top1(expected: np.ndarray, actual: np.ndarray) -> float:
    if expected.ndim < 2:
        return 1.0
    return float(np.mean(np.argmax(expected, axis=-1) == np.argmax(actual, axis=-1)))


def _cosine(expected: np.ndarray, actual: np.ndarray) -> float:
    """Mean cosine similarity of matching rows (flattened past the batch dimension)."""
    a = expected.reshape(len(expected), -1).astype(np.float64)
    b = actual.reshape(len(actual), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)))


def _tolerance_gap(result: Verification, tolerance: Tolerance) -> str | None:
    """The first way ``result`` misses ``tolerance``, as words with the numbers; None when it holds."""
    diff, top1 = result.max_abs_diff, result.top1_agreement
    if tolerance.atol is not None and diff is not None and not diff <= tolerance.atol:
        return f"max abs difference {diff:.3g} > {tolerance.atol:g}"
    if tolerance.min_top1 is not None and top1 is not None and top1 < tolerance.min_top1:
        return f"top-1 agreement {top1:.1%} < {tolerance.min_top1:.0%}"
    if tolerance.max_metric_drop is not None:
        drop = (result.metric_pytorch or 0.0) - (result.metric_artifact or 0.0)
        if drop > tolerance.max_metric_drop + 1e-9:
            return (
                f"{result.metric} {result.metric_artifact:.4f} vs {result.metric_pytorch:.4f} in PyTorch "
                f"fp32, "
                f"{100 * drop:.1f} points lower (at most {100 * tolerance.max_metric_drop:g} allowed)"
            )
    return None


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
