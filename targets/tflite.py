"""The LiteRT target: litert-torch converts to one ``model.tflite``, run with the LiteRT interpreter.

Every dimension keeps the example's size and the batch is fixed at 1 (edge apps run batch 1); ``run`` takes
any batch by running the rows one at a time. litert-torch narrows 64-bit inputs to 32 bits (int64 token ids
become int32); the runner casts what it is given. Precisions:

- ``fp32``: the converted float model.
- ``fp16``: float16 weights (litert-torch's ``full_fp16_recipe``: weight-only float casting).
- ``int8-dynamic``: int8 weights, float activations quantized at run time (``full_dynamic_recipe``).
- ``int8``: full integer. ai-edge-quantizer's ``static_wi8_ai8`` recipe on the fp32 model, calibrated on
  the ``calibration`` rows in the LiteRT interpreter; activations (the output included) are int8 and the
  embedding table is int8 too (dynamic recipe on EMBEDDING_LOOKUP). Token ids and the mask stay int32.

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
import contextlib
import importlib.util
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_distill.errors import DeviceError, ExportError

from . import runner
from .base import check_precision, require_calibration

if TYPE_CHECKING:
    import torch

    from edge_distill.profiles import DeviceProfile

logger = logging.getLogger(__name__)

ARTIFACT_NAME = "model.tflite"
_MODULES = {"litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert"}
_QUANTIZER_MODULES = {"ai_edge_quantizer": "ai-edge-quantizer"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class TfliteTarget:
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
        return all(importlib.util.find_spec(m) is not None for m in _MODULES)

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
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
        try:
            content = _convert(model, example, precision=precision, calibration=calibration)
            (tmp / ARTIFACT_NAME).write_bytes(content)
            _publish(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out_dir / ARTIFACT_NAME

    def inspect(self, path: Path) -> dict[str, Any]:
        """The default signature's inputs and output (name, dtype, shape, quantization of quantized ones),
        the builtin op counts, and how many partitions the interpreter's default XNNPACK delegate took.

        Example:
            >>> TfliteTarget().inspect(path)["inputs"][0]
            {'name': 'input_ids', 'dtype': 'int32', 'shape': [1, 16]}
        """
        from ai_edge_litert.interpreter import Interpreter

        with _quiet_converter():
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
    batch1 = {name: value[:1] for name, value in example.items()}  # (1, ...): edge apps run batch 1
    was_training = model.training
    model.eval()
    try:
        with _quiet_converter() as captured:  # importing litert-torch logs too (torchao, absl)
            try:
                content = _litert_torch_convert(model, batch1, precision)
                if precision == "int8":
                    content = _quantize_static(content, calibration or {})
            except ExportError:
                raise
            except Exception as exc:
                logger.debug("tflite export failed; converter said:\n%s", captured.getvalue(), exc_info=True)
                raise ExportError(_describe_failure(exc)) from exc
    finally:
        model.train(was_training)
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
    """Full-integer .tflite: int8 weights and activations, ranges calibrated on ``calibration``'s rows."""
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    recipes = recipe_manager.RecipeManager()
    recipes.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8)
    # The static policy has no EMBEDDING_LOOKUP: quantize the table's weights; its float rows are
    # quantized by the QUANTIZE op that follows, like the rest of the activations.
    recipes.add_dynamic_config(".*", qtyping.TFLOperationName.EMBEDDING_LOOKUP, 8)
    quant = quantizer.Quantizer(content, recipes.get_quantization_recipe())
    key, rows = _calibration_rows(content, calibration)
    result = quant.calibrate({key: rows}, num_threads=1)
    quantized = quant.quantize(result, enable_progress_bar=False, enable_progress_report=False)
    return bytes(quantized.quantized_model)


def _calibration_rows(
    content: bytes, calibration: dict[str, torch.Tensor]
) -> tuple[str, list[dict[str, np.ndarray]]]:
    """(signature key, one feed per row) with each input cast to the dtype the converted model expects."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
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


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished export into ``out_dir``: a rename when new, else replace the one file."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    os.replace(tmp / ARTIFACT_NAME, out_dir / ARTIFACT_NAME)


@contextlib.contextmanager
def _quiet_converter() -> Iterator[io.StringIO]:
    """Capture prints, warnings, log records and what C++ writes to fds 1 and 2 into one buffer."""
    buffer = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers, root.level
    root.handlers = [logging.StreamHandler(buffer)]  # litert-torch logs through the root logger
    root.setLevel(logging.WARNING)
    try:
        with (
            _captured_fds(buffer),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(buffer),
            contextlib.redirect_stderr(buffer),
        ):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)


@contextlib.contextmanager
def _captured_fds(buffer: io.StringIO) -> Iterator[None]:
    """Point fds 1 and 2 at a temp file (absl and XNNPACK log from C++), then append it to ``buffer``."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            buffer.write(sink.read().decode(errors="replace"))


def _describe_failure(exc: BaseException) -> str:
    """One sentence: what failed (the op when the converter names one), where, and the fix."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    text = _ANSI.sub("", "\n".join(str(e) for e in chain))
    root = next((e for e in reversed(chain) if str(e).strip()), chain[-1])
    detail = _shorten(f"{type(root).__name__}: {_first_line(root)}")
    op = _failing_op(text)
    if op is not None:
        return (
            f"The tflite target cannot convert op {op} ({detail}); replace it in the model with ops that "
            "litert-torch lowers (see its supported-ops list) or keep it out of the exported forward."
        )
    if "data-dependent" in text or "GuardOnDataDependent" in type(root).__name__:
        return (
            f"The tflite target cannot trace the model with torch.export ({detail}); remove Python control "
            "flow on tensor values (.item(), .tolist(), `if tensor:`) from forward."
        )
    if isinstance(root, TypeError) and "argument" in str(root):
        return (
            f"The tflite target cannot call the model ({detail}); "
            "name the example's keys after the parameters of forward."
        )
    return f"The tflite target failed to convert the model ({detail}); enable debug logging for the trace."


def _failing_op(text: str) -> str | None:
    """The op the converter names: an aten op without a lowering, or an MLIR op it cannot legalize."""
    for pattern in (
        r"Lowering not found: ([\w.]+)",
        r"target=torch\.ops\.([\w.]+)",
        r"failed to legalize operation '([\w.]+)'",
    ):
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _shorten(text: str, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", text).strip().rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."
