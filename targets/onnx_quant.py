"""int8 versions of an exported ``model.onnx``, made with ``onnxruntime.quantization``.

``int8-dynamic``: ``quantize_dynamic`` stores the weights of MatMul, Gemm (rewritten to MatMul), Conv and
Gather as int8 with one scale per output channel; their activations are quantized at run time
(DynamicQuantizeLinear + MatMulInteger/ConvInteger); activation @ activation products stay float.

``int8``: ``quantize_static`` in QDQ format with MinMax ranges calibrated on held-out training rows. Only
MatMul (the attention products Q @ K^T and P @ V included), Gemm, Conv and Gather are quantized (uint8
activations, per-channel int8 weights), and their outputs stay float: Softmax, LayerNormalization, Gelu,
the residual Adds, the attention-mask arithmetic and the logits are computed in float. Quantizing every op
(onnxruntime's default) puts the mask's float32 minimum (-3.4e38) and the scores in one uint8 range: on
the tiny BERT the max abs diff of the logits was 1.13 instead of 0.05, and Entropy calibration failed
outright on those tensors ("Too many bins for data range").

Why the graph is prepared first: the dynamo exporter writes a ``value_info`` entry for every initializer,
and ``quantize_dynamic`` transposes a Gemm's ``transB`` weight in place when it rewrites Gemm to MatMul,
leaving that entry stale, so onnx shape inference fails ("Inferred shape and existing shape differ in
dimension 0: (32) vs (3)"). Initializers carry their own shapes, so those entries are dropped.

Example:
    >>> quantize(Path("fp32/model.onnx"), Path("int8/model.onnx"), precision="int8", calibration=rows)
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_distill.errors import ExportError

from .common import shorten

QUANTIZED_PRECISIONS = ("int8-dynamic", "int8")
# The ops that hold weights; everything else stays float (see the module docstring).
DYNAMIC_OP_TYPES = ["MatMul", "Conv", "Gather"]  # Gemm becomes MatMul in quantize_dynamic
STATIC_OP_TYPES = ["MatMul", "Gemm", "Conv", "Gather"]
# Outputs left in float: keeps the logits unclipped by the calibrated range (a graph output quantized to
# uint8 was off by 0.65 on held-out rows of the tiny BERT) and lets onnxruntime fuse DQ -> MatMul.
FLOAT_OUTPUT_OP_TYPES = ["MatMul", "Gemm", "Conv"]
CALIBRATION_ROWS_PER_RUN = 32  # rows per calibration run when the graph's batch dimension is dynamic
_FIXES = {
    "int8-dynamic": "export fp32, or int8 with calibration rows",
    "int8": "pass more calibration rows, or export int8-dynamic or fp32",
}


def quantize(
    float_path: Path,
    out_path: Path,
    *,
    precision: str,
    calibration: dict[str, np.ndarray] | None = None,
    external_data: bool = False,
) -> None:
    """Write the ``precision`` version of ``float_path`` to ``out_path``; failures are one ExportError.

    Intermediate files go to a temporary directory beside ``float_path`` and are removed.

    Example:
        >>> quantize(Path("work/model.onnx"), Path("out/model.onnx"), precision="int8-dynamic")
    """
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=Path(float_path).parent) as work:
        prepared = prepare(Path(float_path), Path(work) / "prepared.onnx", external_data=external_data)
        try:
            if precision == "int8-dynamic":
                _quantize_dynamic(prepared, Path(out_path), external_data)
            elif precision == "int8":
                _quantize_static(prepared, Path(out_path), calibration or {}, external_data)
            else:
                raise ValueError(f"no quantization recipe for {precision!r}")
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(describe_failure(exc, precision)) from exc


def prepare(float_path: Path, out_path: Path, *, external_data: bool = False) -> Path:
    """A copy of ``float_path`` without the exporter's ``value_info`` for initializers (see above).

    Example:
        >>> prepare(Path("work/model.onnx"), Path("work/prepared.onnx")).name
        'prepared.onnx'
    """
    import onnx

    model = onnx.load(str(float_path))
    initializers = {tensor.name for tensor in model.graph.initializer}
    kept = [info for info in model.graph.value_info if info.name not in initializers]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    onnx.save(model, str(out_path), save_as_external_data=external_data, location=f"{out_path.name}.data")
    return out_path


def _quantize_dynamic(prepared: Path, out_path: Path, external_data: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        prepared,
        out_path,
        op_types_to_quantize=DYNAMIC_OP_TYPES,
        per_channel=True,  # halved the max abs diff on the tiny BERT (0.035 -> 0.020)
        weight_type=QuantType.QInt8,
        use_external_data_format=external_data,
        extra_options={"MatMulConstBOnly": True},  # weights only; activation @ activation stays float
    )


def _quantize_static(
    prepared: Path, out_path: Path, calibration: dict[str, np.ndarray], external_data: bool
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        prepared,
        out_path,
        CalibrationBatches(prepared, calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=STATIC_OP_TYPES,
        per_channel=True,
        activation_type=QuantType.QUInt8,  # onnxruntime's advice for x86 CPUs; ARM runs it too
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=external_data,
        extra_options={"OpTypesToExcludeOutputQuantization": FLOAT_OUTPUT_OP_TYPES},
    )


class CalibrationBatches:
    """onnxruntime's CalibrationDataReader over calibration rows, in batches the graph accepts.

    A fixed batch dimension gets batches of exactly that size (left-over rows are dropped); a dynamic one
    gets ``CALIBRATION_ROWS_PER_RUN`` rows at a time. Each input is cast to the graph's element type.

    Example:
        >>> reader = CalibrationBatches(Path("model.onnx"), {"input_ids": ids, "attention_mask": mask})
        >>> reader.get_next()["input_ids"].shape
        (32, 16)
    """

    def __init__(self, model_path: Path, rows: dict[str, np.ndarray]) -> None:
        import onnx

        graph = onnx.load(str(model_path), load_external_data=False).graph
        initializers = {tensor.name for tensor in graph.initializer}
        inputs = [value for value in graph.input if value.name not in initializers]
        missing = [value.name for value in inputs if value.name not in rows]
        if missing:
            raise ExportError(
                f"The onnx target's int8 calibration rows lack the graph input(s) {', '.join(missing)}; "
                f"pass calibration with the same keys as the example ({', '.join(sorted(rows))} given)."
            )
        dtypes = {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) for v in inputs}
        arrays = {name: np.asarray(rows[name]).astype(dtype, copy=False) for name, dtype in dtypes.items()}
        fixed = _fixed_batch(inputs)
        self.batch = fixed or CALIBRATION_ROWS_PER_RUN
        batches = _split(arrays, self.batch, exact=fixed is not None)
        if not batches:
            raise ExportError(
                f"The onnx target's int8 graph has a fixed batch of {self.batch} but got fewer calibration "
                f"rows; pass at least {self.batch} held-out training rows."
            )
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _fixed_batch(inputs: list[Any]) -> int | None:
    """The graph's batch size when its first input's dimension 0 is a number; None when dynamic."""
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None


def _split(arrays: dict[str, np.ndarray], size: int, *, exact: bool) -> list[dict[str, np.ndarray]]:
    n = min(len(a) for a in arrays.values())
    stop = n - n % size if exact else n
    return [{k: a[start : start + size] for k, a in arrays.items()} for start in range(0, stop, size)]


def describe_failure(exc: BaseException, precision: str) -> str:
    """One sentence: what failed in the quantizer (the op when it names one) and the fix.

    Example:
        >>> describe_failure(RuntimeError("... (op_type:Gemm, node name: node_linear_13)"), "int8")
        'The onnx target cannot quantize op Gemm to int8 (RuntimeError: ...); pass more calibration ...'
    """
    text = re.sub(r"\s+", " ", str(exc)).strip().rstrip(".")
    detail = f"{type(exc).__name__}: {shorten(str(exc))}"
    found = re.search(r"op_type:\s*(\w+)|implementation for (\w+)\(|\bnode (?:\w+ )?of type (\w+)", text)
    what = f"op {next(g for g in found.groups() if g)}" if found else "the model"
    return f"The onnx target cannot quantize {what} to {precision} ({detail}); {_fix(precision)}."


def load_failure(message: str, precision: str) -> str:
    """The ExportError sentence for a quantized graph that onnxruntime cannot load here.

    Example:
        >>> load_failure("... Could not find an implementation for ConvInteger(10) node ...", "int8-dynamic")
        "The onnx target's int8-dynamic export produced op ConvInteger, which onnxruntime cannot run ..."
    """
    found = re.search(r"implementation for (\w+)\(", message)
    what = f"op {found.group(1)}" if found else "the quantized graph"
    return (
        f"The onnx target's {precision} export produced {what}, which onnxruntime cannot run here "
        f"({message.rstrip('.')}); {_fix(precision)}."
    )


def _fix(precision: str) -> str:
    return _FIXES.get(precision, "export fp32")
