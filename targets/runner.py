"""Load and time an exported artifact with numpy and its runtime only.

This file must stay torch-free and free of any other ``edge_distill`` import: it is copied as-is to
devices (a Raspberry Pi has ``onnxruntime``, not a training stack) and run there as a script.

Example:
    $ python -m edge_distill.targets.runner model.onnx --inputs inputs.npz --runs 50 --json
    {"p50_ms": 1.9, "p90_ms": 2.1, ...}

    >>> profile = profile_artifact(Path("model.onnx"), {"input_ids": ids, "attention_mask": mask})
    >>> profile.p50_ms <= profile.p90_ms
    True
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The runtime that runs each artifact kind; the runner dispatches on the file extension.
RUNTIME_BY_EXTENSION = {".onnx": "onnxruntime", ".tflite": "tflite-runtime", ".pte": "executorch"}
RUNTIME_BY_EXTENSION[".mlpackage"] = "coremltools"  # a folder
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
_EXIT_FAILURE = 2


class RunnerError(RuntimeError):
    """An artifact that cannot be loaded or run here; the message is one sentence with the fix."""


@dataclass(frozen=True)
class LatencyProfile:
    """Batch-1 latency, memory and size of one artifact in one runtime on one machine."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int  # timed warm runs (at least the asked minimum; more until the p50 settles)
    warmup: int
    load_ms: float
    peak_memory_mb: float  # resident memory the runtime added over the process before loading
    size_mb: float
    threads: int | None
    runtime: str
    runtime_version: str
    first_ms: float | None = None  # the first inference after loading (cold caches, lazy init)
    p50_ci95_ms: tuple[float, float] | None = None  # distribution-free 95% interval of the p50
    converged: bool | None = None  # the interval came within the asked width before the run cap
    conditions: dict[str, Any] = dataclasses.field(default_factory=dict)  # threads, cpu, governor, ...

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["p50_ci95_ms"] = list(self.p50_ci95_ms) if self.p50_ci95_ms else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyProfile:
        """Rebuild a profile from :meth:`as_dict` output (e.g. the runner's JSON); unknown keys are errors.

        The fields added after the first release (first_ms onwards) may be missing: an older runner's
        output still loads.
        """
        fields = dataclasses.fields(cls)
        required = {f.name for f in fields if f.default is dataclasses.MISSING and f.name != "conditions"}
        names = {f.name for f in fields}
        if not required <= set(data) <= names:
            raise ValueError(f"Latency profile keys {sorted(data)} do not match {sorted(names)}.")
        data = dict(data)
        if data.get("p50_ci95_ms") is not None:
            data["p50_ci95_ms"] = tuple(data["p50_ci95_ms"])
        return cls(**data)

    @property
    def p50_ci95_rel(self) -> float | None:
        """Half-width of the p50's 95% interval relative to the p50 (the larger side)."""
        if self.p50_ci95_ms is None or self.p50_ms <= 0:
            return None
        low, high = self.p50_ci95_ms
        return max(self.p50_ms - low, high - self.p50_ms) / self.p50_ms


# --- runtimes -------------------------------------------------------------------------------------


def runtime_for(path: Path) -> str:
    """The runtime that runs ``path``, from its extension; unknown kinds are a RunnerError."""
    runtime = RUNTIME_BY_EXTENSION.get(path.suffix)
    if runtime is None:
        known = ", ".join(sorted(RUNTIME_BY_EXTENSION))
        raise RunnerError(f"Unknown artifact kind {path.suffix!r} for {path.name}; known kinds: {known}.")
    return runtime


class Session:
    """One loaded artifact. ``run`` takes any batch size: a runtime whose artifact has a fixed batch of 1
    (LiteRT, ExecuTorch) runs the rows one at a time."""

    runtime = ""

    @property
    def input_names(self) -> list[str]:
        raise NotImplementedError

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def load_session(path: Path, *, threads: int | None = None) -> Session:
    """Load ``path`` in its runtime; ``threads=None`` keeps the runtime's default thread count."""
    path = Path(path)
    runtime = runtime_for(path)
    if not path.exists():
        raise RunnerError(f"Artifact {path} does not exist; export the model first or check the path.")
    loader = _LOADERS.get(runtime)
    if loader is None:
        raise RunnerError(
            f"Running {path.suffix} artifacts is not supported by this runner; it needs {runtime}."
        )
    return loader(path, threads)


def run_session(session: Session, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run one batch and return the first output; inputs are cast to the dtypes the artifact expects."""
    missing = [name for name in session.input_names if name not in inputs]
    if missing:
        raise RunnerError(f"Input {missing[0]!r} is missing; the artifact expects {session.input_names}.")
    return session.run(inputs)


def run_rows(
    run_one: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: dict[str, np.ndarray]
) -> np.ndarray:
    """Run a batch-1 artifact over every row of ``inputs`` and stack the outputs (batch first)."""
    rows = {int(np.asarray(v).shape[0]) for v in inputs.values()}
    if len(rows) != 1:
        raise RunnerError(f"Inputs need one shared batch dimension; got batch sizes {sorted(rows)}.")
    n = rows.pop()
    rows_out = [run_one({k: np.asarray(v)[i : i + 1] for k, v in inputs.items()}) for i in range(n)]
    return np.concatenate(rows_out)


# --- onnxruntime ----------------------------------------------------------------------------------


class OrtSession(Session):
    runtime = "onnxruntime"

    def __init__(self, session: Any) -> None:
        self.session = session

    @classmethod
    def load(cls, path: Path, threads: int | None) -> OrtSession:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RunnerError(
                f"{path.name} needs onnxruntime; install it with `pip install onnxruntime`."
            ) from exc
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: keep the console clean
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            return cls(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise RunnerError(f"onnxruntime cannot load {path.name}: {_first_line(exc)}.") from exc

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.session.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {}
        for spec in self.session.get_inputs():
            dtype = _ORT_DTYPES.get(spec.type)
            array = np.asarray(inputs[spec.name])
            cast = array if dtype is None else array.astype(dtype, copy=False)
            feed[spec.name] = np.ascontiguousarray(cast)
        try:
            return self.session.run([self.session.get_outputs()[0].name], feed)[0]
        except Exception as exc:
            raise RunnerError(f"onnxruntime failed to run the artifact: {_first_line(exc)}.") from exc


# --- tflite ---------------------------------------------------------------------------------------


class LiteRtSession(Session):
    """A .tflite model in the LiteRT interpreter: ai-edge-litert, or tflite-runtime on a Raspberry Pi.

    The artifact has a fixed batch of 1, so ``run`` goes row by row. Inputs are matched by the signature's
    names (forward's parameters) and cast to the dtypes it expects; a float fed to a quantized input is
    quantized with its scale and zero point, and a quantized output is dequantized: ``run`` gives floats.

    Example:
        >>> session = load_session(Path("model.tflite"), threads=2)  # a LiteRtSession
        >>> session.input_names, run_session(session, {"input_ids": ids, "attention_mask": mask}).shape
        (['input_ids', 'attention_mask'], (5, 3))
    """

    runtime = "tflite-runtime"

    def __init__(
        self,
        inputs: dict[str, dict[str, Any]],
        output: dict[str, Any],
        invoke: Callable[[dict[str, np.ndarray]], np.ndarray],
    ) -> None:
        self._inputs = dict(sorted(inputs.items(), key=lambda item: item[1]["index"]))  # forward's order
        self._output = output
        self._invoke = invoke

    @classmethod
    def load(cls, path: Path, threads: int | None) -> LiteRtSession:
        interpreter_class = _litert_interpreter_class(path)

        def build() -> Any:
            interpreter = interpreter_class(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()  # applies the default XNNPACK delegate
            return interpreter

        try:
            interpreter = _without_native_stderr(build)  # "INFO: Created TensorFlow Lite XNNPACK delegate"
        except Exception as exc:  # ValueError/RuntimeError from the flatbuffer or the op resolver
            raise RunnerError(f"The LiteRT interpreter cannot load {path.name}: {_first_line(exc)}.") from exc
        signatures = interpreter.get_signature_list() if hasattr(interpreter, "get_signature_list") else {}
        if not signatures:  # no signature: the graph's own input names
            return cls(*_bind_tensors(interpreter))
        signature = interpreter.get_signature_runner(next(iter(signatures)))
        output_name, output = next(iter(signature.get_output_details().items()))
        return cls(signature.get_input_details(), output, lambda feed: signature(**feed)[output_name])

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return run_rows(self._run_one, {name: inputs[name] for name in self._inputs})

    def _run_one(self, row: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: _to_litert(name, row[name], detail) for name, detail in self._inputs.items()}
        try:
            out = self._invoke(feed)
        except Exception as exc:
            raise RunnerError(f"The LiteRT interpreter failed to run: {_first_line(exc)}.") from exc
        scale, zero_point = self._output["quantization"]
        if scale and not np.issubdtype(out.dtype, np.floating):  # (1, ...) int8 -> float logits
            return (out.astype(np.float32) - zero_point) * np.float32(scale)
        return out.astype(np.float32) if out.dtype == np.float16 else out


def _litert_interpreter_class(path: Path) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise RunnerError(
                f"{path.name} needs tflite-runtime; install it with `pip install ai-edge-litert` "
                "(or `pip install tflite-runtime` where no ai-edge-litert wheel exists)."
            ) from exc
    return Interpreter


def _bind_tensors(
    interpreter: Any,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], Callable[[dict[str, np.ndarray]], np.ndarray]]:
    """(inputs by name, first output, invoke) on the interpreter's tensors, for a file without signature."""
    inputs = {detail["name"]: detail for detail in interpreter.get_input_details()}
    output = interpreter.get_output_details()[0]

    def invoke(feed: dict[str, np.ndarray]) -> np.ndarray:
        for name, value in feed.items():
            interpreter.set_tensor(inputs[name]["index"], value)
        interpreter.invoke()
        return interpreter.get_tensor(output["index"])

    return inputs, output, invoke


def _to_litert(name: str, value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """One row cast to the input's dtype: quantized with its scale/zero point when a float meets int8."""
    array, dtype = np.asarray(value), np.dtype(detail["dtype"])
    expected = tuple(int(d) for d in detail["shape"])
    if array.shape != expected:
        raise RunnerError(
            f"Input {name!r} has shape {array.shape} per row but the artifact expects {expected}; pad or "
            "truncate to the shape of the export's example."
        )
    scale, zero_point = detail["quantization"]
    if scale and np.issubdtype(array.dtype, np.floating) and not np.issubdtype(dtype, np.floating):
        limits = np.iinfo(dtype)
        array = np.clip(np.round(array / scale + zero_point), limits.min, limits.max)
    return np.ascontiguousarray(array.astype(dtype, copy=False))


def _without_native_stderr(build: Callable[[], Any]) -> Any:
    """``build()`` with what native code writes to fd 2 discarded (the interpreter's INFO lines)."""
    with _native_stderr_into([]):
        return build()


# --- coreml ---------------------------------------------------------------------------------------

# Core ML's input array dtypes (ArrayFeatureType.ArrayDataType) -> numpy.
_COREML_DTYPES = {"INT32": np.int32, "FLOAT32": np.float32, "FLOAT16": np.float16, "DOUBLE": np.float64}


def coreml_needs_macos(name: str) -> str:
    """Why a Core ML package cannot run on this host: one sentence with the fix."""
    return (
        f"Core ML prediction needs macOS, so {name} can be converted and inspected on this {sys.platform} "
        "host but runs only on a Mac; copy it to one to run it."
    )


class CoreMLSession(Session):
    """An ML Program loaded with coremltools on macOS; its batch is fixed at 1, so rows run one by one."""

    runtime = "coremltools"

    def __init__(self, model: Any) -> None:
        from coremltools.proto import FeatureTypes_pb2

        self.model = model
        names = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
        description = model.get_spec().description
        self._dtypes = {
            f.name: _COREML_DTYPES[names.Name(f.type.multiArrayType.dataType)] for f in description.input
        }
        self._output = description.output[0].name

    @classmethod
    def load(cls, path: Path, threads: int | None) -> CoreMLSession:
        """``threads`` is ignored: Core ML picks its compute units (CPU, GPU, Neural Engine) itself."""
        if sys.platform != "darwin":
            raise RunnerError(coreml_needs_macos(path.name))
        try:
            import coremltools as ct
        except ImportError as exc:
            raise RunnerError(
                f"{path.name} needs coremltools; install it with `pip install coremltools`."
            ) from exc
        try:
            return cls(ct.models.MLModel(str(path)))
        except Exception as exc:  # coremltools raises plain Exception for packages it cannot compile
            raise RunnerError(f"Core ML cannot load {path.name}: {_first_line(exc)}.") from exc

    @property
    def input_names(self) -> list[str]:
        return list(self._dtypes)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return run_rows(self._run_one, {name: inputs[name] for name in self._dtypes})

    def _run_one(self, row: dict[str, np.ndarray]) -> np.ndarray:
        feed = {
            name: np.ascontiguousarray(row[name].astype(dtype, copy=False))
            for name, dtype in self._dtypes.items()
        }
        try:
            return np.asarray(self.model.predict(feed)[self._output])
        except Exception as exc:
            raise RunnerError(f"Core ML failed to run the artifact: {_first_line(exc)}.") from exc


# --- executorch -----------------------------------------------------------------------------------

# The constant method an edge-distill .pte carries beside forward: a JSON string with forward's parameter
# names (the runtime's method metadata has dtypes and shapes but no names) and the export's delegation.
PTE_METADATA_METHOD = "edge_distill_metadata"
# ExecuTorch ScalarType codes (runtime/core/portable_type/scalar_type.h) -> numpy.
EXECUTORCH_DTYPES = {
    0: np.uint8,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.int64,
    5: np.float16,
    6: np.float32,
    7: np.float64,
    11: np.bool_,
}


class ExecuTorchSession(Session):
    """A .pte program's ``forward`` in the ExecuTorch runtime (``executorch.runtime``, which needs torch).

    The program has a fixed batch of 1, so ``run`` goes row by row. ``threads`` resizes the runtime's one
    process-wide thread pool (XNNPACK's); ``threads_applied`` is False where the runtime cannot.
    """

    runtime = "executorch"

    def __init__(self, method: Any, names: list[str], threads_applied: bool) -> None:
        self.method = method
        meta = method.metadata  # (1, ...) sizes and ScalarType codes of each input
        specs = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
        self._inputs = {
            name: (EXECUTORCH_DTYPES.get(spec.dtype()), tuple(spec.sizes()))
            for name, spec in zip(names, specs, strict=True)
        }
        self.threads_applied = threads_applied

    @classmethod
    def load(cls, path: Path, threads: int | None) -> ExecuTorchSession:
        try:
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise RunnerError(
                f"{path.name} needs executorch; install it with `pip install executorch`."
            ) from exc

        def load() -> tuple[Any, list[str], bool]:
            runtime = Runtime.get()
            applied = threads is None or _set_executorch_threads(threads)
            program = runtime.load_program(path)
            method = program.load_method("forward")
            return method, _pte_input_names(program, method), applied

        return cls(*_et_call(load, f"ExecuTorch cannot load {path.name}"))

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return run_rows(self._run_one, {name: inputs[name] for name in self._inputs})

    def _run_one(self, row: dict[str, np.ndarray]) -> np.ndarray:
        import torch  # the runtime takes and returns torch tensors

        tensors = []
        for name, (dtype, sizes) in self._inputs.items():
            array = np.asarray(row[name])
            if array.shape != sizes:
                raise RunnerError(
                    f"Input {name!r} has shape {array.shape} per row but the artifact expects {sizes}; pad "
                    "or truncate to the shape of the export's example."
                )
            cast = array if dtype is None else array.astype(dtype, copy=False)
            tensors.append(torch.from_numpy(np.ascontiguousarray(cast)))
        out = _et_call(lambda: self.method.execute(tensors)[0], "ExecuTorch failed to run the artifact")
        return out.detach().float().numpy() if out.dtype.is_floating_point else out.numpy()


def _set_executorch_threads(threads: int) -> bool:
    """Resize the runtime's process-wide thread pool; False where this runtime build does not expose it."""
    from executorch.extension.pybindings import portable_lib

    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if reset is None:
        return False
    reset(int(threads))
    return True


def _pte_input_names(program: Any, method: Any) -> list[str]:
    """forward's parameter names from the metadata method; ``input_<i>`` for a .pte made elsewhere."""
    count = method.metadata.num_inputs()
    if PTE_METADATA_METHOD in program.method_names:
        names = json.loads(program.load_method(PTE_METADATA_METHOD).execute([])[0]).get("inputs", [])
        if len(names) == count:
            return list(names)
    return [f"input_{i}" for i in range(count)]


def _et_call(step: Callable[[], Any], failure: str) -> Any:
    """``step()`` with the runtime's native log (cpuinfo and threadpool lines, its error lines) kept off
    the console; a failure is a RunnerError with the runtime's log line that names the cause ("Backend
    CoreMLBackend is not registered.", "Missing operator: [0] aten::avg_pool3d.out"), else its last line:
    its exceptions carry only an error code."""
    log: list[str] = []
    try:
        with _native_stderr_into(log):
            return step()
    except RunnerError:
        raise
    except Exception as exc:
        named = [line for line in log if "Missing operator" in line or "not registered" in line]
        reason = (named or log or [""])[-1].split("] ", 1)[-1].strip().rstrip(".")  # "[method.cpp:85] ..."
        detail = f"{reason} ({_first_line(exc)})" if reason else _first_line(exc)
        raise RunnerError(f"{failure}: {detail}.") from exc


@contextlib.contextmanager
def _native_stderr_into(lines: list[str]) -> Iterator[None]:
    """What is written to stderr, by native code to fd 2 or through ``sys.stderr`` (the pybindings' log
    in some builds), goes to ``lines`` instead, on exit."""
    text = io.StringIO()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (an embedded interpreter): only sys.stderr
        with contextlib.redirect_stderr(text):
            yield
        lines.extend(text.getvalue().splitlines())
        return
    with tempfile.TemporaryFile() as sink, contextlib.redirect_stderr(text):
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())
            lines.extend(text.getvalue().splitlines())


# --- registry of runtimes -------------------------------------------------------------------------

# runtime -> loader(path, threads) -> Session. Each runtime's section above adds itself here.
_LOADERS: dict[str, Callable[[Path, int | None], Session]] = {"onnxruntime": OrtSession.load}
_LOADERS["tflite-runtime"] = LiteRtSession.load
_LOADERS["coremltools"] = CoreMLSession.load
_LOADERS["executorch"] = ExecuTorchSession.load


# runtime -> the distributions that provide it; the first one installed is reported.
_RUNTIME_DISTRIBUTIONS = {
    "onnxruntime": ("onnxruntime",),
    "coremltools": ("coremltools",),
    "executorch": ("executorch",),
    "tflite-runtime": ("ai-edge-litert", "tflite-runtime"),  # tflite-runtime: a Raspberry Pi's wheel
}


def runtime_version(runtime: str) -> str:
    from importlib.metadata import version

    for distribution in _RUNTIME_DISTRIBUTIONS.get(runtime, ()):
        try:
            return version(distribution)
        except Exception:
            continue
    return "unknown"


def artifact_size_bytes(path: Path) -> int:
    """The artifact's bytes, with any external-data files it references; a folder's (.mlpackage) files."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    files = {path} | _external_data_files(path)
    return sum(f.stat().st_size for f in files if f.is_file())


def _external_data_files(path: Path) -> set[Path]:
    if path.suffix != ".onnx":
        return set()
    try:
        import onnx
    except ImportError:  # on a device without onnx: the exporter's naming convention
        return {path.with_name(path.name + ".data")}
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return {path.parent / location for location in locations}


# --- memory ---------------------------------------------------------------------------------------


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) so the peak covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return _peak_rss_bytes()  # an upper bound: the memory figure can only be under-reported


# --- profiling ------------------------------------------------------------------------------------


def profile_artifact(
    path: Path,
    inputs: dict[str, np.ndarray],
    *,
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
    max_runs: int = 1000,
    max_seconds: float = 60.0,
    ci_target: float = 0.02,
) -> LatencyProfile:
    """Time batch-1 inference of ``path``: only the first row of each input is used.

    Loads the artifact (timed), runs it once (the first inference, timed), ``warmup`` more times, then at
    least ``runs`` timed runs, and keeps going until the p50's 95% interval is within ``ci_target`` of
    the p50, ``max_runs`` runs or ``max_seconds`` of timed runs, whichever comes first.
    """
    if runs < 1 or warmup < 0:
        raise RunnerError(f"Need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}.")
    path = Path(path)
    runtime = runtime_for(path)
    batch1 = {name: np.asarray(array)[:1] for name, array in inputs.items()}  # (1, ...)
    size_mb = artifact_size_bytes(path) / 2**20 if path.exists() else 0.0
    threads = threads if threads is not None else os.cpu_count()
    _reset_peak_rss()
    rss_before = _current_rss_bytes()
    try:
        start = time.perf_counter()
        session = load_session(path, threads=threads)
        load_ms = (time.perf_counter() - start) * 1e3

        def step() -> object:
            return run_session(session, batch1)

        first_ms = _timed(step)
        for _ in range(warmup):
            step()
        times_ms = _time_until_settled(step, runs, max(runs, max_runs), max_seconds, ci_target)
    except MemoryError:
        raise RunnerError(_out_of_memory(path)) from None
    except RunnerError as exc:  # a loader's wrapped std::bad_alloc, or an import whose dlopen had no memory
        if _looks_like_oom(f"{exc} {exc.__cause__}"):
            raise RunnerError(_out_of_memory(path)) from exc
        raise
    except Exception as exc:
        if _looks_like_oom(str(exc)):
            raise RunnerError(_out_of_memory(path)) from None
        raise
    peak_mb = max(0.0, (_peak_rss_bytes() - rss_before) / 2**20)
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    interval = median_interval(times_ms)
    low, high = interval
    return LatencyProfile(
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(np.mean(times_ms)),
        runs=len(times_ms),
        warmup=warmup,
        load_ms=load_ms,
        peak_memory_mb=peak_mb,
        size_mb=size_mb,
        threads=threads,
        runtime=runtime,
        runtime_version=runtime_version(runtime),
        first_ms=first_ms,
        p50_ci95_ms=(low, high),
        converged=bool(max(p50 - low, high - p50) <= ci_target * p50),
        conditions=conditions(threads),
    )


def _timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1e3


def _time_until_settled(
    step: Callable[[], object], runs: int, max_runs: int, max_seconds: float, ci_target: float
) -> np.ndarray:
    """At least ``runs`` timings; then more, checked every 10, until the p50's 95% interval is within
    ``ci_target`` of it, ``max_runs`` timings or ``max_seconds`` spent timing."""
    times: list[float] = []
    spent_ms = 0.0
    while True:
        times.append(_timed(step))
        spent_ms += times[-1]
        n = len(times)
        if n < runs or (n - runs) % 10:
            continue
        if n >= max_runs or spent_ms >= max_seconds * 1e3:
            break
        array = np.asarray(times)
        p50 = float(np.median(array))
        low, high = median_interval(array)
        if max(p50 - low, high - p50) <= ci_target * p50:
            break
    return np.asarray(times)


def median_interval(times: np.ndarray) -> tuple[float, float]:
    """Distribution-free 95% confidence interval of the median: the order statistics at ranks
    n/2 -/+ 1.96 sqrt(n)/2 (the normal approximation to the binomial; any timing distribution)."""
    ordered = np.sort(np.asarray(times, dtype=float))
    n = len(ordered)
    half = 1.96 * np.sqrt(n) / 2
    low = max(0, int(np.floor(n / 2 - half)) - 1)  # 1-indexed rank -> 0-indexed
    high = min(n - 1, int(np.ceil(n / 2 + half)) - 1)
    return float(ordered[low]), float(ordered[high])


def _looks_like_oom(text: str) -> bool:
    lowered = text.lower()
    marks = ("bad_alloc", "out of memory", "failed to allocate", "cannot allocate", "failed to map segment")
    return any(s in lowered for s in marks)


def _out_of_memory(path: Path) -> str:
    return (
        f"{path.name} ran out of memory on this device while loading or running; "
        "pick a smaller student or a lower precision (int8), or free memory on the device."
    )


def conditions(threads: int | None) -> dict[str, Any]:
    """What the timing depended on, as far as this machine tells: threads, CPU, governor, load."""
    import platform

    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {
        "threads": threads,
        "cpu": _cpu_name() or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "governor": _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "hostname": platform.node(),
        "python": platform.python_version(),
        "load_average_1m": load,
    }


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _cpu_name() -> str | None:
    text = _read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("model name", "Model", "Hardware"):  # x86; Raspberry Pi / arm boards
            return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        import subprocess

        done = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        return done.stdout.strip() or None
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].rstrip(".")


# --- command line ---------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m edge_distill.targets.runner", description="Time batch-1 inference of an artifact."
    )
    parser.add_argument("artifact", type=Path, help="the exported model (.onnx)")
    parser.add_argument("--inputs", type=Path, required=True, help=".npz with one array per model input")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50, help="at least this many timed runs")
    parser.add_argument("--max-runs", type=int, default=1000, help="stop here even if the p50 moves")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time budget for the timed runs")
    parser.add_argument(
        "--ci", type=float, default=0.02, help="stop once the p50's 95%% interval is this close"
    )
    parser.add_argument("--threads", type=int, default=None, help="default: this machine's CPU count")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def _load_inputs(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise RunnerError(f"Inputs file {path} does not exist; pass an .npz with one array per input.")
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def main(argv: list[str] | None = None) -> int:
    """Command line: print the profile (one JSON object with ``--json``); exit 2 with one line on error."""
    args = _parse_args(argv)
    try:
        inputs = _load_inputs(args.inputs)
        profile = profile_artifact(
            args.artifact,
            inputs,
            warmup=args.warmup,
            runs=args.runs,
            threads=args.threads,
            max_runs=args.max_runs,
            max_seconds=args.max_seconds,
            ci_target=args.ci,
        )
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _EXIT_FAILURE
    except MemoryError:
        print(f"error: {_out_of_memory(args.artifact)}", file=sys.stderr)
        return _EXIT_FAILURE
    except Exception as exc:  # anything else still ends in one line the caller can show
        print(
            f"error: profiling {args.artifact.name} failed: {type(exc).__name__}: {_first_line(exc)}.",
            file=sys.stderr,
        )
        return _EXIT_FAILURE
    if args.json:
        print(json.dumps(profile.as_dict()))
    else:
        print(
            f"{args.artifact.name}: p50 {profile.p50_ms:.3f} ms, p90 {profile.p90_ms:.3f} ms, "
            f"p99 {profile.p99_ms:.3f} ms, load {profile.load_ms:.1f} ms, "
            f"peak {profile.peak_memory_mb:.1f} MB, size {profile.size_mb:.2f} MB ({profile.runtime})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
