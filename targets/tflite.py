"""The LiteRT target: litert-torch converts to one ``model.tflite``, run with the LiteRT interpreter.

Every dimension keeps the example's size and the batch is fixed at 1 (edge apps run batch 1); ``run`` takes
any batch by running the rows one at a time. litert-torch narrows 64-bit inputs to 32 bits (int64 token ids
become int32); the runner casts what it is given. Precisions:

- ``fp32``: the converted float model.
- ``fp16``: float16 weights (litert-torch's ``full_fp16_recipe``: weight-only float casting).
- ``int8-dynamic``: int8 weights, float activations quantized at run time (``full_dynamic_recipe``).
- ``int8``: static int8 by ai-edge-quantizer, activation ranges calibrated on the ``calibration`` rows in
  the LiteRT interpreter. The FULLY_CONNECTED layers compute int8 x int8 (per-channel int8 weights, int8
  activations) and the embedding table is int8 (EMBEDDING_LOOKUP dequantizes the rows it gathers). Every
  other op runs in float between QUANTIZE and DEQUANTIZE ops: the attention products (BATCH_MATMUL),
  SOFTMAX, GELU, TANH, the layer norms, the residual ADDs and the mask's SELECT_V2. The op that writes the
  output is dynamic-range quantized (int8 weights, float32 out), so logits beyond the calibrated range are
  not clipped. Token ids and the mask stay int32. Measured on the demo student (3x192 BERT, 223 test
  texts): quantizing every op (the ``static_wi8_ai8`` policy) lost 1.8 accuracy points (its int8 logits
  were clipped to [-6.7, 10.6], the fp32 ones reach 19); this recipe loses 0.45 (one text; max abs diff
  2.0). BATCH_MATMUL in int8 as well kept the same accuracy but ran 3.4x slower at 1 thread on x86
  (3.0 vs 0.9 ms per row): XNNPACK does not take int8 BATCH_MATMULs, LiteRT's own kernels run them.

The converter's chatter (progress lines, Python warnings and logs, absl logs written by C++) is kept off the
console; a failure becomes one ExportError sentence naming the op when the converter names one.

Example:
    >>> target = TfliteTarget()
    >>> path = target.export(student, {"input_ids": ids, "attention_mask": mask}, Path("out/tflite"))
    >>> target.run(target.load(path), {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}).shape
    (8, 3)
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_distill.errors import ExportError

from .base import check_precision, require_calibration
from .common import (
    Failure,
    RunnerSessions,
    batch_of_one,
    cannot_call,
    cannot_trace,
    evaluating,
    installed,
    quiet,
    quiet_export,
    staged_export,
)

if TYPE_CHECKING:
    import torch

    from edge_distill.profiles import DeviceProfile

logger = logging.getLogger(__name__)

ARTIFACT_NAME = "model.tflite"
_MODULES = {"litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert"}
_QUANTIZER_MODULES = {"ai_edge_quantizer": "ai-edge-quantizer"}
# litert-torch logs through the root logger; absl and XNNPACK log from C++ (fds 1 and 2).
_LOGGERS = ("",)
# Where the converter names the op it failed on: an aten op without a lowering, or an MLIR op it cannot
# legalize.
_OP_PATTERNS = (
    r"Lowering not found: ([\w.]+)",
    r"target=torch\.ops\.([\w.]+)",
    r"failed to legalize operation '([\w.]+)'",
)
# Ops that only move values: an output they write is traced back to the op that computes it.
_RESHAPING_OPS = ("RESHAPE", "SQUEEZE")


class TfliteTarget(RunnerSessions):
    """Convert with litert-torch (static batch 1); load and run with the LiteRT interpreter on CPU."""

    name = "tflite"
    extension = ".tflite"
    runtime = "tflite-runtime"
    precisions = ("fp32", "fp16", "int8-dynamic", "int8")

    def __init__(self, *, threads: int | None = None) -> None:
        self.threads = threads  # None: the interpreter's default

    @classmethod
    def for_profile(cls, profile: DeviceProfile) -> TfliteTarget:
        """The thread count of the profile's first LiteRT throughput entry (``tflite-*`` runtimes).

        Example:
            >>> TfliteTarget.for_profile(load_profile("pixel-8")).threads
            4
        """
        entry = next((t for t in profile.throughput if t.runtime.startswith("tflite") and t.threads), None)
        return cls(threads=entry.threads if entry else None)

    def available(self) -> bool:
        return installed(*_MODULES)

    def unverifiable_reason(self) -> str | None:
        return None  # the LiteRT interpreter (ai-edge-litert) runs wherever this package installs

    def export(
        self,
        model: torch.nn.Module,
        example: dict[str, torch.Tensor],
        out_dir: Path,
        *,
        precision: str = "fp32",
        calibration: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write ``out_dir/model.tflite`` atomically (temp dir beside ``out_dir``, then rename).

        Example:
            >>> TfliteTarget().export(student, batch, Path("out/int8"), precision="int8", calibration=rows)
            PosixPath('out/int8/model.tflite')
        """
        check_precision(self, precision)
        if precision == "int8":
            require_calibration(self, precision, calibration)
        _require_modules(_MODULES | (_QUANTIZER_MODULES if precision != "fp32" else {}))
        with staged_export(out_dir, ARTIFACT_NAME) as tmp:
            content = _convert(model, example, precision=precision, calibration=calibration)
            (tmp / ARTIFACT_NAME).write_bytes(content)
        return Path(out_dir) / ARTIFACT_NAME

    def inspect(self, path: Path) -> dict[str, Any]:
        """The default signature's inputs and output (name, dtype, shape, quantization of quantized ones),
        the builtin op counts, and how many partitions the interpreter's default XNNPACK delegate took.

        Example:
            >>> TfliteTarget().inspect(path)["inputs"][0]
            {'name': 'input_ids', 'dtype': 'int32', 'shape': [1, 16]}
        """
        from ai_edge_litert.interpreter import Interpreter

        with quiet(_LOGGERS, native=True):
            interpreter = Interpreter(model_path=str(path))
            ops = collections.Counter(op["op_name"] for op in interpreter._get_ops_details())
            interpreter.allocate_tensors()  # applies the default delegate: one DELEGATE node per partition
            delegated = sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())
        signatures = interpreter.get_signature_list()
        key = next(iter(signatures), None)
        if key is None:  # a file without signatures: the graph's tensor names
            inputs = {d["name"]: d for d in interpreter.get_input_details()}
            outputs = {d["name"]: d for d in interpreter.get_output_details()}
        else:
            signature = interpreter.get_signature_runner(key)
            inputs, outputs = signature.get_input_details(), signature.get_output_details()
        return {
            "signature": key,
            "inputs": _describe_tensors(inputs),
            "outputs": _describe_tensors(outputs),
            "ops": dict(sorted(ops.items())),
            "xnnpack_partitions": delegated,
        }


def _require_modules(modules: dict[str, str]) -> None:
    missing = [dist for module, dist in modules.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ExportError(
            f"The tflite target needs {', '.join(missing)}; "
            f"install them with `pip install {' '.join(missing)}`."
        )


def _describe_tensors(details: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-able facts of signature tensors, in the graph's order (forward's parameter order)."""
    described = []
    for name, detail in sorted(details.items(), key=lambda item: item[1]["index"]):
        fact = {"name": name, "dtype": np.dtype(detail["dtype"]).name, "shape": detail["shape"].tolist()}
        scale, zero_point = detail["quantization"]
        if scale:
            fact["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
        described.append(fact)
    return described


def _convert(
    model: torch.nn.Module,
    example: dict[str, torch.Tensor],
    *,
    precision: str,
    calibration: dict[str, torch.Tensor] | None,
) -> bytes:
    """The .tflite bytes of ``model(**example[:1])`` in ``precision``."""
    what = "tflite export failed; converter said"
    quiet_convert = quiet_export(_describe_failure, log=logger, what=what, loggers=_LOGGERS, native=True)
    with evaluating(model), quiet_convert:  # importing litert-torch logs too (torchao, absl)
        content = _litert_torch_convert(model, batch_of_one(example), precision)
        if precision == "int8":
            content = _quantize_static(content, calibration or {})
    return content


def _litert_torch_convert(model: torch.nn.Module, batch1: dict[str, torch.Tensor], precision: str) -> bytes:
    """litert-torch's conversion; fp16 and int8-dynamic through its own recipes (run by ai-edge-quantizer)."""
    import litert_torch
    from litert_torch.generative.quantize import quant_recipes

    recipe = {"fp16": quant_recipes.full_fp16_recipe, "int8-dynamic": quant_recipes.full_dynamic_recipe}
    quant_config = recipe[precision]() if precision in recipe else None
    converted = litert_torch.convert(model, sample_kwargs=batch1, quant_config=quant_config)
    return bytes(converted.model_content())


def _quantize_static(content: bytes, calibration: dict[str, torch.Tensor]) -> bytes:
    """int8 .tflite: FULLY_CONNECTED int8 x int8 (ranges calibrated on ``calibration``'s rows) and an int8
    embedding table; every other op and the output stay float (see the module docstring)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    ops = qtyping.TFLOperationName
    recipes = recipe_manager.RecipeManager()  # an op no config names is not quantized
    recipes.add_static_config(".*", ops.FULLY_CONNECTED, 8, 8)
    # The static policy has no EMBEDDING_LOOKUP: int8 table, float rows out.
    recipes.add_dynamic_config(".*", ops.EMBEDDING_LOOKUP, 8)
    interpreter = Interpreter(model_content=content)
    for scope in _output_scopes(interpreter):  # a later regex wins over ".*"
        recipes.add_dynamic_config(scope, ops.FULLY_CONNECTED, 8)  # int8 weights, float output
    quant = quantizer.Quantizer(content, recipes.get_quantization_recipe())
    key, rows = _calibration_rows(interpreter, calibration)
    result = quant.calibrate({key: rows}, num_threads=1)
    quantized = quant.quantize(result, enable_progress_bar=False, enable_progress_report=False)
    return bytes(quantized.quantized_model)


def _output_scopes(interpreter: Any) -> list[str]:
    """ai-edge-quantizer scope regexes of the ops that compute the graph's outputs.

    An op's scope is its output tensors' names, each followed by ";". An output written by a RESHAPE or
    SQUEEZE is traced back to the op whose values it carries.
    """
    names = {detail["index"]: detail["name"] for detail in interpreter.get_tensor_details()}
    producers = {tensor: op for op in interpreter._get_ops_details() for tensor in op["outputs"]}
    scopes = []
    for detail in interpreter.get_output_details():
        tensor = detail["index"]
        while (op := producers.get(tensor)) is not None and op["op_name"] in _RESHAPING_OPS:
            tensor = op["inputs"][0]
        scopes.append(f"(^|;){re.escape(names[tensor])};")
    return scopes


def _calibration_rows(
    interpreter: Any, calibration: dict[str, torch.Tensor]
) -> tuple[str, list[dict[str, np.ndarray]]]:
    """(signature key, one feed per row) with each input cast to the dtype the converted model expects."""
    key = next(iter(interpreter.get_signature_list()))
    details = interpreter.get_signature_runner(key).get_input_details()
    missing = sorted(set(details) - set(calibration))
    if missing:
        raise ExportError(
            f"The tflite target's int8 calibration lacks input {missing[0]!r}; "
            f"pass calibration rows for every input of forward ({', '.join(details)})."
        )
    arrays = {name: calibration[name].detach().cpu().numpy() for name in details}  # (rows, ...)
    n = min(int(array.shape[0]) for array in arrays.values())
    rows = [
        {name: array[i : i + 1].astype(details[name]["dtype"]) for name, array in arrays.items()}
        for i in range(n)
    ]
    return key, rows


def _describe_failure(exc: BaseException, output: str) -> str:
    """One sentence: what failed (the op when the converter names one), where, and the fix.

    ``output`` (the converter's captured chatter) is not read: the exception chain names the op.
    """
    failure = Failure.of(exc)
    detail = failure.detail
    op = failure.op(_OP_PATTERNS)
    if op is not None:
        return (
            f"The tflite target cannot convert op {op} ({detail}); replace it in the model with ops that "
            "litert-torch lowers (see its supported-ops list) or keep it out of the exported forward."
        )
    if "data-dependent" in failure.text or "GuardOnDataDependent" in type(failure.root).__name__:
        return cannot_trace("tflite", detail)
    if failure.bad_call:
        return cannot_call("tflite", detail)
    return f"The tflite target failed to convert the model ({detail}); enable debug logging for the trace."
