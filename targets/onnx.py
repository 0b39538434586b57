"""The ONNX target: ``torch.onnx.export(dynamo=True)`` to one ``model.onnx``, run with onnxruntime.

The batch dimension is dynamic, every other dimension keeps the example's size (a fixed sequence length).
The exporter's own chatter (progress prints, warnings, logging) is captured and kept off the console; a
failure becomes one ExportError sentence naming the op when the exporter names one. ``int8-dynamic`` and
``int8`` (static, calibrated) quantize the fp32 export with onnxruntime.quantization (``onnx_quant``).

Example:
    >>> target = OnnxTarget()
    >>> path = target.export(student, {"input_ids": ids, "attention_mask": mask}, Path("out/onnx"))
    >>> target.run(target.load(path), {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}).shape
    (8, 3)
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_distill.errors import ExportError

from . import runner
from .base import OUTPUT_NAME, check_precision, require_calibration
from .common import (
    DATA_DEPENDENT_FIX,
    TRACEABLE_FIX,
    Failure,
    RunnerSessions,
    cannot_call,
    cannot_trace,
    check_single_output,
    evaluating,
    failed_to,
    installed,
    quiet,
    quiet_export,
    staged_export,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ARTIFACT_NAME = "model.onnx"
# Above this many bytes of weights the exporter writes them to model.onnx.data (protobuf's 2 GB limit).
_EMBED_LIMIT_BYTES = 1536 * 2**20
# Loggers that the exporter and its optimizer write warnings to during an export.
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "onnxscript")
# onnxruntime.quantization logs with logging.warning(), i.e. to the root logger ("").
_QUANTIZER_LOGGERS = ("", "onnxruntime", "onnx")
# Ops that carry quantized tensors or quantize them, as counted by inspect().
_QUANT_OP = re.compile(r"^(QLinear\w+|DynamicQuantize\w*|QuantizeLinear|DequantizeLinear|\w+Integer\w*)$")
# Where the exporter names the aten op it failed on, e.g. ``aten.linalg_qr.default``.
_OP_PATTERNS = (r"op='([\w.]+)', overload='(\w+)'", r"target=torch\.ops\.([\w.]+)")


class OnnxTarget(RunnerSessions):
    """Export with the dynamo ONNX exporter; load and run with onnxruntime on CPU."""

    name = "onnx"
    extension = ".onnx"
    runtime = "onnxruntime"
    precisions = ("fp32", "int8-dynamic", "int8")

    def __init__(self, *, opset: int | None = None, threads: int | None = None) -> None:
        self.opset = opset  # None: the exporter's recommended opset
        self.threads = threads  # None: onnxruntime's default

    def available(self) -> bool:
        return installed("onnx", "onnxscript", "onnxruntime")

    def unverifiable_reason(self) -> str | None:
        return None  # onnxruntime runs everywhere this package installs

    def export(
        self,
        model: torch.nn.Module,
        example: dict[str, torch.Tensor],
        out_dir: Path,
        *,
        precision: str = "fp32",
        calibration: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write ``out_dir/model.onnx`` atomically (temp dir beside ``out_dir``, then rename).

        ``int8`` needs ``calibration`` (held-out training rows); ``int8-dynamic`` needs none.
        """
        check_precision(self, precision)
        if precision == "int8":
            require_calibration(self, precision, calibration)
        if not self.available():
            raise ExportError(
                "The onnx target needs onnx, onnxscript and onnxruntime; "
                "install them with `pip install onnx onnxscript onnxruntime`."
            )
        # A re-export that embeds its weights must not leave the previous export's weight file beside it.
        with staged_export(out_dir, ARTIFACT_NAME, stale=[f"{ARTIFACT_NAME}.data"]) as tmp:
            program = _export_program(model, example, opset=self.opset)
            external_data = _weight_bytes(model) > _EMBED_LIMIT_BYTES
            if precision == "fp32":
                program.save(tmp / ARTIFACT_NAME, external_data=external_data)
            else:
                _save_quantized(program, tmp, precision, calibration, external_data=external_data)
        return Path(out_dir) / ARTIFACT_NAME

    def inspect(self, path: Path) -> dict[str, Any]:
        """The graph's inputs and outputs (name, element type, shape with ``batch``), its op counts, the
        quantization ops among them, and the weights' element types (tensor count and bytes of each).

        Example:
            >>> OnnxTarget().inspect(Path("out/int8/model.onnx"))["weights"]["int8"]["tensors"]
            28
        """
        import onnx

        model = onnx.load(str(path), load_external_data=False)

        def signature(values: Any) -> list[dict[str, Any]]:
            return [
                {
                    "name": v.name,
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                    "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
                }
                for v in values
            ]

        ops: dict[str, int] = {}
        for node in model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        return {
            "inputs": signature(model.graph.input),
            "outputs": signature(model.graph.output),
            "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
            "ops": dict(sorted(ops.items())),
            "quantization_ops": {op: count for op, count in sorted(ops.items()) if _QUANT_OP.match(op)},
            "weights": _weight_types(model),
        }


def _export_program(model: torch.nn.Module, example: dict[str, torch.Tensor], *, opset: int | None) -> Any:
    """The exporter's ONNXProgram for ``model(**example)``, with a dynamic batch dimension."""
    import torch

    example = _at_least_two_rows(example)
    batch = torch.export.Dim("batch", min=1)
    what = "onnx export failed; exporter output"
    with evaluating(model), quiet_export(_describe_failure, log=logger, what=what, loggers=_EXPORTER_LOGGERS):
        program = torch.onnx.export(
            model,
            (),
            kwargs=example,
            dynamo=True,
            verbose=False,
            dynamic_shapes={name: {0: batch} for name in example},
            output_names=[OUTPUT_NAME],
            opset_version=opset,
        )
    outputs = len(program.model.graph.outputs)
    check_single_output("onnx", outputs, f"the exported graph has {outputs} outputs")
    _strip_stack_traces(program)
    return program


def _strip_stack_traces(program: Any) -> None:
    """Drop the Python stack trace the exporter records on every node: it holds this machine's absolute
    paths, which an artifact should not ship, and it is most of a small model's file."""
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(program.model.graph):
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)


def _save_quantized(
    program: Any,
    tmp: Path,
    precision: str,
    calibration: dict[str, torch.Tensor] | None,
    *,
    external_data: bool,
) -> None:
    """Quantize the fp32 export into ``tmp/model.onnx`` (float graph in a scratch dir) and check it loads."""
    from . import onnx_quant

    rows = {name: value.detach().cpu().numpy() for name, value in (calibration or {}).items()}
    with tempfile.TemporaryDirectory(prefix=".float-", dir=tmp.parent) as work:
        float_path = Path(work) / ARTIFACT_NAME
        program.save(float_path, external_data=external_data)
        with quiet(_QUANTIZER_LOGGERS) as captured:
            try:
                onnx_quant.quantize(
                    float_path,
                    tmp / ARTIFACT_NAME,
                    precision=precision,
                    calibration=rows,
                    external_data=external_data,
                )
            except ExportError:
                logger.debug(
                    "onnx %s quantization failed; quantizer output:\n%s", precision, captured.getvalue()
                )
                raise
    try:
        runner.load_session(tmp / ARTIFACT_NAME)
    except runner.RunnerError as exc:
        raise ExportError(onnx_quant.load_failure(str(exc), precision)) from exc


def _weight_types(model: Any) -> dict[str, dict[str, int]]:
    """{element type: {"tensors": count, "bytes": size}} over the initializers, largest total first."""
    import onnx

    totals: dict[str, dict[str, int]] = {}
    for tensor in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        entry = totals.setdefault(dtype.name, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize
    return dict(sorted(totals.items(), key=lambda item: -item[1]["bytes"]))


def _at_least_two_rows(example: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Repeat a batch-1 example to two rows, so the exporter cannot specialise the batch to 1."""
    sizes = {int(value.shape[0]) for value in example.values()}
    if sizes != {1}:
        return example
    return {name: value.expand(2, *value.shape[1:]).contiguous() for name, value in example.items()}


def _weight_bytes(model: torch.nn.Module) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _describe_failure(exc: BaseException, output: str) -> str:
    """One sentence: what failed (the op when the exporter names one), where, and the fix.

    ``output`` (the exporter's captured chatter) is not read: the exception chain names the op.
    """
    failure = Failure.of(exc)
    op = failure.op(_OP_PATTERNS)
    if op is not None:
        return (
            f"The onnx target cannot export op {op} ({failure.detail}); replace it in the model with "
            "supported ops or give torch.onnx.export a custom_translation_table entry for it."
        )
    if failure.bad_call:
        return cannot_call("onnx", failure.detail)
    if type(exc).__name__ != "TorchExportError":
        return failed_to("onnx", "export", failure.detail)
    fix = DATA_DEPENDENT_FIX if "data-dependent" in failure.text else TRACEABLE_FIX
    return cannot_trace("onnx", failure.detail, at=failure.at, fix=fix)
