"""What the export targets share: quiet exports, one-sentence failures, atomic publishing, eval at batch 1.

``quiet`` keeps an exporter's chatter in one buffer for debug logging; ``quiet_export`` also turns a failure
into one ExportError sentence (read with ``Failure``). ``staged_export`` publishes only a complete export;
``RunnerSessions`` loads and runs artifacts with the standalone runner.

Example:
    >>> with staged_export(Path("out/onnx"), "model.onnx") as tmp, evaluating(model):
    ...     with quiet_export(describe, log=logger, what="onnx export failed; output", loggers=("torch",)):
    ...         (tmp / "model.onnx").write_bytes(convert(model, batch_of_one(example)))
    >>> Failure.of(RuntimeError("boom")).detail
    'RuntimeError: boom'
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_distill.errors import DeviceError, ExportError

from . import runner

if TYPE_CHECKING:
    import torch

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The fixes the failure sentences give for a forward that torch.export cannot trace.
DATA_DEPENDENT_FIX = (
    "remove Python control flow on tensor values (.item(), .tolist(), `if tensor:`) from forward"
)
TRACEABLE_FIX = "make forward traceable by torch.export (see the torch.export docs' ExportDB)"


def installed(*modules: str) -> bool:
    """True when every one of ``modules`` can be imported here (without importing it).

    Example:
        >>> installed("onnx", "onnxruntime")
        True
    """
    return all(importlib.util.find_spec(module) is not None for module in modules)


@contextlib.contextmanager
def quiet(loggers: Sequence[str] | None = None, *, native: bool = False) -> Iterator[io.StringIO]:
    """Capture prints, warnings and log records into one buffer for the block.

    ``loggers`` names the loggers to capture ("" is the root): each gets the buffer as its only handler,
    stops propagating and passes WARNING and above. ``None`` captures every logger that has handlers of
    its own, and the root, leaving their levels as they are. ``native`` also captures what native code
    (C++ logs, XNNPACK, flatc) writes to fds 1 and 2.

    Example:
        >>> with quiet(("torch.onnx", "onnxscript")) as captured:
        ...     print("progress")
        >>> captured.getvalue()
        'progress\\n'
    """
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    if loggers is None:
        root = logging.getLogger()
        known = [log for log in logging.root.manager.loggerDict.values() if isinstance(log, logging.Logger)]
        captured = [root, *(log for log in known if log.handlers)]
    else:
        captured = [logging.getLogger(name) for name in loggers]
    saved = [(log, log.handlers, log.propagate, log.level) for log in captured]
    for log in captured:  # torch and coremltools install their own stderr handlers
        log.handlers = [handler]
        if loggers is not None:
            log.propagate = False
            log.setLevel(logging.WARNING)
    try:
        with (
            _native_output_into(buffer) if native else contextlib.nullcontext(),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(buffer),
            contextlib.redirect_stderr(buffer),
        ):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for log, handlers, propagate, level in saved:
            log.handlers = handlers
            if loggers is not None:
                log.propagate = propagate
                log.setLevel(level)


@contextlib.contextmanager
def _native_output_into(buffer: io.StringIO) -> Iterator[None]:
    """Point fds 1 and 2 at a temp file for the block, then append what native code wrote to ``buffer``."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()  # what Python buffered goes out before the fds move
    saved: dict[int, int] = {}
    with contextlib.suppress(OSError):  # no real fds (an embedded interpreter): nothing to capture
        for fd in (1, 2):
            saved[fd] = os.dup(fd)
    if len(saved) < 2:
        for copy in saved.values():
            os.close(copy)
        yield
        return
    with tempfile.TemporaryFile() as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            buffer.write(sink.read().decode(errors="replace"))


@contextlib.contextmanager
def quiet_export(
    describe: Callable[[BaseException, str], str],
    *,
    log: logging.Logger,
    what: str,
    loggers: Sequence[str] | None = None,
    native: bool = False,
) -> Iterator[io.StringIO]:
    """``quiet(loggers, native=native)`` whose failures become one ExportError sentence.

    An ExportError passes unchanged; any other exception becomes ``ExportError(describe(exc, output))``
    and, once the capture has ended (so that debug logging shows it), ``log.debug("<what>:\\n<output>")``.

    Example:
        >>> with quiet_export(lambda exc, out: f"The onnx target failed ({exc})", log=logger, what="onnx"):
        ...     raise RuntimeError("boom")
        Traceback (most recent call last):
        edge_distill.errors.ExportError: The onnx target failed (boom)
    """
    failure: Exception | None = None
    with quiet(loggers, native=native) as captured:
        try:
            yield captured
        except ExportError:
            raise
        except Exception as exc:
            failure = exc
    if failure is not None:
        log.debug("%s:\n%s", what, captured.getvalue(), exc_info=failure)
        raise ExportError(describe(failure, captured.getvalue())) from failure


@dataclass(frozen=True)
class Failure:
    """An export failure, read for its one-sentence description.

    Example:
        >>> failure = Failure.of(exc)  # raised from an aten op the exporter cannot translate
        >>> failure.op([r"target=torch\\.ops\\.([\\w.]+)"]), failure.detail
        ('aten.linalg_qr.default', 'RuntimeError: ...')
    """

    text: str  # every message of the cause chain, ANSI codes stripped
    root: BaseException  # the innermost exception of the chain that has a message
    detail: str  # "Type: first line" of root, at most 200 characters

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """Read ``exc`` and the exceptions it was raised from."""
        chain = cause_chain(exc)
        root = next((e for e in reversed(chain) if str(e).strip()), chain[-1])
        detail = shorten(f"{type(root).__name__}: {first_line(root)}")
        return cls(ANSI.sub("", "\n".join(str(e) for e in chain)), root, detail)

    def op(self, patterns: Sequence[str]) -> str | None:
        """The op the first matching pattern names in the chain's text (see ``find_op``)."""
        return find_op(self.text, patterns)

    @property
    def at(self) -> str:
        """`` at <file:line>`` when torch.export says where the trace failed ("Caused by: (...)"), else ""."""
        where = re.search(r"Caused by: \(([^)]*)\)", self.text)
        return f" at {where.group(1).strip()}" if where else ""

    @property
    def bad_call(self) -> bool:
        """True when forward could not be called with the example's keys."""
        return isinstance(self.root, TypeError) and "argument" in str(self.root)


def cause_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first.

    Example:
        >>> [type(e).__name__ for e in cause_chain(wrapped)]
        ['TorchExportError', 'RuntimeError']
    """
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    return chain


def find_op(text: str, patterns: Sequence[str]) -> str | None:
    """The groups of the first pattern that matches ``text``, joined with dots; None when none matches.

    Example:
        >>> find_op("op='aten.linalg_qr', overload='default'", [r"op='([\\w.]+)', overload='(\\w+)'"])
        'aten.linalg_qr.default'
    """
    for pattern in patterns:
        found = re.search(pattern, text)
        if found:
            return ".".join(found.groups())
    return None


def first_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc``'s message, ANSI codes stripped.

    Example:
        >>> first_line(RuntimeError("\\nboom\\nmore"))
        'boom'
    """
    lines = [line for line in ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def shorten(text: str, limit: int = 200) -> str:
    """``text`` on one line, without a closing period, at most ``limit`` characters.

    Example:
        >>> shorten("a  b\\nc.")
        'a b c'
    """
    text = re.sub(r"\s+", " ", text).strip().rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cannot_call(target: str, detail: str) -> str:
    """The sentence for a forward whose parameters are not the example's keys.

    Example:
        >>> cannot_call("onnx", "TypeError: forward() got an unexpected keyword argument 'ids'")[:34]
        'The onnx target cannot call the mo'
    """
    return (
        f"The {target} target cannot call the model ({detail}); "
        "name the example's keys after the parameters of forward."
    )


def cannot_trace(target: str, detail: str, *, at: str = "", fix: str = DATA_DEPENDENT_FIX) -> str:
    """The sentence for a forward that torch.export cannot trace (``at``: where, from ``Failure.at``).

    Example:
        >>> cannot_trace("tflite", "GuardOnDataDependentSymNode: ...")
        'The tflite target cannot trace the model with torch.export (GuardOnDataDependentSymNode: ...); ...'
    """
    return f"The {target} target cannot trace the model with torch.export{at} ({detail}); {fix}."


def failed_to(target: str, verb: str, detail: str) -> str:
    """The sentence for a failure that names no op and no known cause.

    Example:
        >>> failed_to("coreml", "convert", "ValueError: bad")[:60]
        'The coreml target failed to convert the model (ValueError: b'
    """
    return (
        f"The {target} target failed to {verb} the model ({detail}); enable debug logging for the full trace."
    )


def check_single_output(target: str, count: int, found: str) -> None:
    """Raise ExportError when the export has ``count`` != 1 outputs; ``found`` says what it has.

    Example:
        >>> check_single_output("onnx", 2, "the exported graph has 2 outputs")
        Traceback (most recent call last):
        edge_distill.errors.ExportError: The onnx target expects forward to return one tensor but ...
    """
    if count != 1:
        raise ExportError(
            f"The {target} target expects forward to return one tensor but {found}; "
            "wrap the model so that forward returns only the logits."
        )


@contextlib.contextmanager
def staged_export(out_dir: Path, artifact: str, *, stale: Sequence[str] = ()) -> Iterator[Path]:
    """A temp dir beside ``out_dir`` to write the export into; moved into place when the block succeeds.

    A new ``out_dir`` is the temp dir renamed; an existing one gets each written entry replaced, the
    ``artifact`` last (a folder artifact such as ``model.mlpackage`` is swapped whole), and loses the
    ``stale`` files this export did not write. Nothing is left behind when the block fails.

    Example:
        >>> with staged_export(Path("out/onnx"), "model.onnx", stale=["model.onnx.data"]) as tmp:
        ...     program.save(tmp / "model.onnx")
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield tmp
        _publish(tmp, out_dir, artifact, stale)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out_dir: Path, artifact: str, stale: Sequence[str]) -> None:
    """Move the finished export into ``out_dir``: a rename when new, else entry by entry, artifact last."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    produced = sorted(tmp.iterdir(), key=lambda entry: entry.name == artifact)  # the artifact last
    for name in stale:
        if (out_dir / name).exists() and not (tmp / name).exists():
            (out_dir / name).unlink()
    for entry in produced:
        target = out_dir / entry.name
        if target.exists() and (entry.is_dir() or target.is_dir()):
            os.replace(target, tmp / f"stale-{entry.name}")  # removed with tmp
        os.replace(entry, target)


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for the block; its training mode is restored after.

    Example:
        >>> with evaluating(student):
        ...     program = torch.export.export(student, (), kwargs=example)
        >>> student.training
        True
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def batch_of_one(example: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The example's first row of every input, shape (1, ...): edge apps run batch 1.

    Example:
        >>> batch_of_one({"input_ids": torch.zeros(8, 16)})["input_ids"].shape
        torch.Size([1, 16])
    """
    return {name: value[:1] for name, value in example.items()}


class RunnerSessions:
    """A target's ``load`` and ``run`` through :mod:`runner` (what devices run); its errors are DeviceError.

    Example:
        >>> class MyTarget(RunnerSessions):
        ...     threads = 2  # None: the runtime's default
        >>> MyTarget().run(MyTarget().load(Path("out/onnx/model.onnx")), inputs).shape
        (8, 3)
    """

    threads: int | None = None

    def load(self, path: Path) -> Any:
        """A runtime session for the artifact (DeviceError when it cannot be loaded here)."""
        try:
            return runner.load_session(Path(path), threads=self.threads)
        except runner.RunnerError as exc:
            raise DeviceError(str(exc)) from exc

    def run(self, session: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The model's single output for one batch of inputs (DeviceError when the runtime fails)."""
        try:
            return runner.run_session(session, inputs)
        except runner.RunnerError as exc:
            raise DeviceError(str(exc)) from exc
