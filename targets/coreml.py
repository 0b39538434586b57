"""The Core ML target: ``torch.export`` then ``coremltools.convert`` to one ML Program, ``model.mlpackage``.

Inputs keep forward's parameter names and the example's shapes at batch 1 (Core ML apps run one input at a
time), integers as int32 (Core ML has no int64 arrays); the one output is ``output``, float32. Prediction
needs macOS: elsewhere :meth:`CoreMLTarget.inspect` checks the package and parity stays unverified.

Example:
    >>> target = CoreMLTarget.for_profile(load_profile("iphone-15-pro"))
    >>> path = target.export(student, {"input_ids": ids, "attention_mask": mask}, Path("out/coreml"))
    >>> target.inspect(path)["deployment_target"], target.inspect(path)["outputs"][0]["name"]
    ('iOS17', 'output')
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_distill.errors import ExportError
from edge_distill.profiles import COREML_DEPLOYMENT_TARGETS

from . import runner
from .base import OUTPUT_NAME, check_precision
from .common import (
    TRACEABLE_FIX,
    RunnerSessions,
    batch_of_one,
    cannot_trace,
    check_single_output,
    evaluating,
    failed_to,
    find_op,
    installed,
    quiet,
    quiet_export,
    staged_export,
)
from .coreml_spec import META, describe, features

if TYPE_CHECKING:
    import torch

    from edge_distill.profiles import DeviceProfile

logger = logging.getLogger(__name__)

ARTIFACT_NAME = "model.mlpackage"
# iOS16/macOS13 is the first opset with the constexpr ops that hold int8 weights and palettes: below it
# coremltools skips weight compression with only a warning. Per-block, 4-bit and grouped-channel
# compression need iOS18, and neither precision here uses them, so iOS16 keeps the widest reach.
DEFAULT_DEPLOYMENT_TARGET = "iOS16"
PALETTE_BITS = 6  # 64 k-means centroids per weight tensor
# coremltools' own default: a weight tensor is compressed only when it has more elements than this.
WEIGHT_THRESHOLD = 2048
_PALETTE_BITS_OK = (1, 2, 4, 6, 8)  # what constexpr_lut_to_dense takes before iOS18
_COMPRESSED = ("int8", "palettized")
_LOGGERS = ("coremltools", "torch.export", "torch._export", "torch._dynamo", "torch.fx")
# Where the converter (or its output) names the op it cannot convert.
_OP_PATTERNS = (
    r"Unsupported fx node \S+, kind ([\w.]+)",
    r"convert function for op '([\w.]+)'",
    r"converting '([\w.]+)' op",
)


class CoreMLTarget(RunnerSessions):
    """Convert to a Core ML ML Program; load and run with coremltools on macOS only."""

    name = "coreml"
    extension = ".mlpackage"
    runtime = "coremltools"
    precisions = ("fp16", "fp32", "int8", "palettized")

    def __init__(
        self,
        *,
        deployment_target: str | None = None,
        palette_bits: int = PALETTE_BITS,
        weight_threshold: int = WEIGHT_THRESHOLD,
    ) -> None:
        self.deployment_target = deployment_target or DEFAULT_DEPLOYMENT_TARGET  # a ct.target name
        self.palette_bits, self.weight_threshold = palette_bits, weight_threshold
        if self.deployment_target not in COREML_DEPLOYMENT_TARGETS:
            known = ", ".join(COREML_DEPLOYMENT_TARGETS)
            raise ExportError(
                f"The coreml target has no deployment target {deployment_target!r}; use {known}."
            )
        if palette_bits not in _PALETTE_BITS_OK:
            raise ExportError(f"The coreml target palettizes to {_PALETTE_BITS_OK} bits, not {palette_bits}.")

    @classmethod
    def for_profile(cls, profile: DeviceProfile) -> CoreMLTarget:
        """The target for ``profile``'s ``coreml_deployment_target`` (the default when it sets none).

        Example:
            >>> CoreMLTarget.for_profile(load_profile("iphone-15-pro")).deployment_target
            'iOS17'
        """
        return cls(deployment_target=profile.coreml_deployment_target)

    def available(self) -> bool:
        return installed("coremltools")

    def unverifiable_reason(self) -> str | None:
        if sys.platform == "darwin":
            return None
        return (
            f"Core ML prediction needs macOS, so on this {sys.platform} host the package's spec, declared "
            "inputs and outputs and op conversion were checked but its numerical parity is unverified."
        )

    def export(
        self,
        model: torch.nn.Module,
        example: dict[str, torch.Tensor],
        out_dir: Path,
        *,
        precision: str = "fp16",
        calibration: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write ``out_dir/model.mlpackage`` atomically (temp dir beside ``out_dir``, then rename).

        ``calibration`` is not used: int8 and palettized compress the weights only, and coremltools
        calibrates activations by running the model, which needs macOS.
        """
        check_precision(self, precision)
        self._check_can_export(precision)
        with staged_export(out_dir, ARTIFACT_NAME) as tmp:  # an existing package is swapped whole
            mlmodel = self._convert(model, example, precision)
            with quiet(_LOGGERS):
                mlmodel.save(str(tmp / ARTIFACT_NAME))
            # coremltools' ExecuTorch debug-handle map: outside the Manifest, unused by Core ML, and as
            # large as the spec itself on a small model.
            (tmp / ARTIFACT_NAME / "executorch_debug_handle_mapping.json").unlink(missing_ok=True)
            self._check_compressed(self.inspect(tmp / ARTIFACT_NAME), precision)
        return Path(out_dir) / ARTIFACT_NAME

    def inspect(self, path: Path) -> dict[str, Any]:
        """What can be checked without running: the declared signature, the ops and the stored weights.

        Raises ExportError when ``path`` is not an ML Program package or its inputs and outputs differ
        from those recorded at export.

        Example:
            >>> facts = CoreMLTarget().inspect(Path("out/coreml/model.mlpackage"))
            >>> facts["precision"], facts["weights"], facts["palette_bits"]
            ('palettized', {'float16': 28}, [6])
        """
        path = Path(path)
        return describe(_load_spec(path), path) | {"size_bytes": runner.artifact_size_bytes(path)}

    def _check_can_export(self, precision: str) -> None:
        if not self.available():
            raise ExportError(
                "The coreml target needs coremltools; install it with `pip install coremltools`."
            )
        if precision in _COMPRESSED and self.deployment_target in ("iOS15", "macOS12"):
            raise ExportError(
                f"The coreml target cannot store {precision} weights for {self.deployment_target}, whose "
                "ML Programs have no compressed-weight ops; use deployment target iOS16 (macOS13) or later."
            )

    def _check_compressed(self, facts: dict[str, Any], precision: str) -> None:
        """A compressed precision that compressed nothing would be an fp16 package under another name."""
        if precision in _COMPRESSED and not facts["compressed"]:
            raise ExportError(
                f"The coreml target compressed no weight to {precision}: no weight tensor has more than "
                f"{self.weight_threshold} elements; pass CoreMLTarget(weight_threshold=...) a smaller "
                "value, or export fp16."
            )

    def _convert(self, model: torch.nn.Module, example: dict[str, torch.Tensor], precision: str) -> Any:
        """The MLModel for ``model(**example)`` at batch 1, compressed for ``precision``."""
        example = batch_of_one(example)  # (1, ...): apps run batch 1
        program = _export_program(model, example)
        what = "coreml conversion failed; output"
        with quiet_export(_describe_failure, log=logger, what=what, loggers=_LOGGERS):
            import coremltools as ct

            fp32 = precision == "fp32"
            mlmodel = ct.convert(
                program,
                convert_to="mlprogram",
                inputs=_input_types(ct, program, example),
                outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                minimum_deployment_target=getattr(ct.target, self.deployment_target),
                compute_precision=ct.precision.FLOAT32 if fp32 else ct.precision.FLOAT16,
                skip_model_load=True,  # loading compiles the model, which needs macOS
            )
            mlmodel = self._compress(mlmodel, precision)
        self._record(mlmodel, precision)
        return mlmodel

    def _compress(self, mlmodel: Any, precision: str) -> Any:
        """Per-channel symmetric int8 weights, or per-tensor k-means palettes of ``palette_bits``."""
        import coremltools.optimize as cto

        if precision == "int8":
            op = cto.coreml.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", weight_threshold=self.weight_threshold
            )
            return cto.coreml.linear_quantize_weights(
                mlmodel, cto.coreml.OptimizationConfig(global_config=op)
            )
        if precision == "palettized":
            op = cto.coreml.OpPalettizerConfig(
                mode="kmeans", nbits=self.palette_bits, weight_threshold=self.weight_threshold
            )
            return cto.coreml.palettize_weights(mlmodel, cto.coreml.OptimizationConfig(global_config=op))
        return mlmodel

    def _record(self, mlmodel: Any, precision: str) -> None:
        """Write the precision, deployment target and declared signature into the package's metadata."""
        description = mlmodel.get_spec().description
        signature = {"inputs": features(description.input), "outputs": features(description.output)}
        meta = mlmodel.user_defined_metadata
        meta[f"{META}precision"] = precision
        meta[f"{META}deployment_target"] = self.deployment_target
        meta[f"{META}signature"] = json.dumps(signature)


def _export_program(model: torch.nn.Module, example: dict[str, torch.Tensor]) -> Any:
    """``torch.export`` with the default decompositions (coremltools converts ATen, not ``new_ones``)."""
    import torch

    what = "torch.export failed; output"
    with evaluating(model), quiet_export(_describe_trace_failure, log=logger, what=what, loggers=_LOGGERS):
        program = torch.export.export(model, (), kwargs=example).run_decompositions()
    _drop_aliases(program)
    outputs = len(program.graph_signature.user_outputs)
    check_single_output("coreml", outputs, f"it returns {outputs}")
    return program


def _drop_aliases(program: Any) -> None:
    """Replace ``aten.alias`` (a view that changes nothing; Llama's rotary embedding makes one) by its
    input: coremltools has no converter for it, and without it the graph computes the same."""
    import torch

    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    program.graph_module.recompile()


def _input_types(ct: Any, program: Any, example: dict[str, torch.Tensor]) -> list[Any]:
    """One fixed-shape TensorType per forward parameter, in the program's order: floats float32, the rest
    int32 (Core ML has no int64 arrays)."""
    names = list(program.graph_signature.user_inputs)
    if sorted(names) != sorted(example):
        raise ExportError(
            f"The coreml target traced inputs {names} but the example has {sorted(example)}; "
            "give the example one tensor per parameter of forward, named after it."
        )
    return [
        ct.TensorType(
            name=name,
            shape=tuple(example[name].shape),
            dtype=np.float32 if example[name].dtype.is_floating_point else np.int32,
        )
        for name in names
    ]


# --- reading the package -------------------------------------------------------------------------


def _load_spec(path: Path) -> Any:
    if path.suffix != ".mlpackage" or not (path / "Manifest.json").is_file():
        raise ExportError(
            f"{path} is not a Core ML package (a .mlpackage folder with a Manifest.json); "
            "export it with the coreml target."
        )
    with quiet(_LOGGERS):
        import coremltools as ct

        try:
            return ct.utils.load_spec(str(path))
        except Exception as exc:
            raise ExportError(
                f"Core ML package {path.name} cannot be read ({_detail(exc)}); re-export it."
            ) from exc


# --- failures ------------------------------------------------------------------------------------


def _describe_failure(exc: BaseException, output: str) -> str:
    """One sentence: the op Core ML could not convert when the converter names one, and the fix."""
    op = find_op(f"{exc}\n{output}", _OP_PATTERNS)
    if op is not None:
        return (
            f"The coreml target cannot convert op {op} ({_detail(exc)}); replace it in the model "
            "with ops Core ML supports, or register a converter for it with coremltools' @register_torch_op."
        )
    return failed_to("coreml", "convert", _detail(exc))


def _describe_trace_failure(exc: BaseException, output: str) -> str:
    """One sentence for a forward that torch.export cannot trace, and the fix (``output`` is not read)."""
    fix = TRACEABLE_FIX
    if "data-dependent" in str(exc):
        fix = "remove Python control flow on tensor values (.item(), `if tensor:`) from forward"
    return cannot_trace("coreml", _detail(exc), fix=fix)


def _detail(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of an exception, at most ``limit`` characters."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "no message")
    text = f"{type(exc).__name__}: {first.rstrip('.')}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
