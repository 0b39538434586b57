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

import contextlib
import importlib.util
import io
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_distill.errors import DeviceError, ExportError

from . import runner
from .base import OUTPUT_NAME, check_precision, require_calibration

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
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class OnnxTarget:
    """Export with the dynamo ONNX exporter; load and run with onnxruntime on CPU."""

    name = "onnx"
    extension = ".onnx"
    runtime = "onnxruntime"
    precisions = ("fp32", "int8-dynamic", "int8")

    def __init__(self, *, opset: int | None = None, threads: int | None = None) -> None:
        self.opset = opset  # None: the exporter's recommended opset
        self.threads = threads  # None: onnxruntime's default

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))

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
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
        try:
            program = _export_program(model, example, opset=self.opset)
            external_data = _weight_bytes(model) > _EMBED_LIMIT_BYTES
            if precision == "fp32":
                program.save(tmp / ARTIFACT_NAME, external_data=external_data)
            else:
                _save_quantized(program, tmp, precision, calibration, external_data=external_data)
            _publish(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out_dir / ARTIFACT_NAME

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

    def load(self, path: Path) -> Any:
        try:
            return runner.load_session(Path(path), threads=self.threads)
        except runner.RunnerError as exc:
            raise DeviceError(str(exc)) from exc

    def run(self, session: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
        try:
            return runner.run_session(session, inputs)
        except runner.RunnerError as exc:
            raise DeviceError(str(exc)) from exc


def _export_program(model: torch.nn.Module, example: dict[str, torch.Tensor], *, opset: int | None) -> Any:
    """The exporter's ONNXProgram for ``model(**example)``, with a dynamic batch dimension."""
    import torch

    example = _at_least_two_rows(example)
    batch = torch.export.Dim("batch", min=1)
    was_training = model.training
    model.eval()
    try:
        with _quiet_exporter() as captured:
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
    except Exception as exc:
        logger.debug("onnx export failed; exporter output:\n%s", captured.getvalue(), exc_info=True)
        raise ExportError(_describe_failure(exc)) from exc
    finally:
        model.train(was_training)
    _check_single_output(program)
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
        with _quiet_exporter(_QUANTIZER_LOGGERS) as captured:
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


def _check_single_output(program: Any) -> None:
    outputs = program.model.graph.outputs
    if len(outputs) != 1:
        raise ExportError(
            f"The onnx target expects forward to return one tensor but the exported graph has {len(outputs)} "
            "outputs; wrap the model so that forward returns only the logits."
        )


def _weight_bytes(model: torch.nn.Module) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished export into ``out_dir``: a rename when new, else file by file, model last."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    produced = sorted(tmp.iterdir(), key=lambda f: f.name == ARTIFACT_NAME)  # model.onnx last
    stale_data = out_dir / f"{ARTIFACT_NAME}.data"
    if stale_data.exists() and not (tmp / stale_data.name).exists():
        stale_data.unlink()
    for file in produced:
        os.replace(file, out_dir / file.name)


@contextlib.contextmanager
def _quiet_exporter(loggers: tuple[str, ...] = _EXPORTER_LOGGERS) -> Iterator[io.StringIO]:
    """Capture the exporter's (or quantizer's) prints, warnings and log records into one buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    saved = []
    for name in loggers:
        log = logging.getLogger(name)
        saved.append((log, log.handlers, log.propagate, log.level))
        log.handlers = [handler]  # torch installs its own stderr handlers on some of these
        log.propagate = False
        log.setLevel(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(buffer),
            contextlib.redirect_stderr(buffer),
        ):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for log, handlers, propagate, level in saved:
            log.handlers = handlers
            log.propagate = propagate
            log.setLevel(level)


def _describe_failure(exc: BaseException) -> str:
    """One sentence: what failed (the op when the exporter names one), where, and the fix."""
    chain = _cause_chain(exc)
    text = _ANSI.sub("", "\n".join(str(e) for e in chain))
    root = next((e for e in reversed(chain) if str(e).strip()), chain[-1])
    detail = _shorten(f"{type(root).__name__}: {_first_line(root)}")
    op = _failing_op(text)
    if op is not None:
        return (
            f"The onnx target cannot export op {op} ({detail}); replace it in the model with supported ops "
            "or give torch.onnx.export a custom_translation_table entry for it."
        )
    if isinstance(root, TypeError) and "argument" in str(root):
        return (
            f"The onnx target cannot call the model ({detail}); "
            "name the example's keys after the parameters of forward."
        )
    if type(exc).__name__ != "TorchExportError":
        return (
            f"The onnx target failed to export the model ({detail}); enable debug logging for the full trace."
        )
    where = re.search(r"Caused by: \(([^)]*)\)", text)
    at = f" at {where.group(1).strip()}" if where else ""
    fix = "make forward traceable by torch.export (see the torch.export docs' ExportDB)"
    if "data-dependent" in text:
        fix = "remove Python control flow on tensor values (.item(), .tolist(), `if tensor:`) from forward"
    return f"The onnx target cannot trace the model with torch.export{at} ({detail}); {fix}."


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    return chain


def _failing_op(text: str) -> str | None:
    """The aten op the exporter names, e.g. ``aten.linalg_qr.default``."""
    dispatch = re.search(r"op='([\w.]+)', overload='(\w+)'", text)
    if dispatch:
        return f"{dispatch.group(1)}.{dispatch.group(2)}"
    node = re.search(r"target=torch\.ops\.([\w.]+)", text)
    return node.group(1) if node else None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _shorten(text: str, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", text).strip().rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."
