"""The ExecuTorch targets' quiet export and their one-sentence failures.

The export stack talks on every channel: torchao's import logs "Failed to load ..._C_mxfp8..." lines,
torch's pytree logs deprecation lines, coremltools draws tqdm bars on stderr, and native code (flatc,
cpuinfo) writes to fd 2. ``quiet_exporter`` captures all of it into one buffer, kept for debug logging.

Example:
    >>> with quiet_exporter() as captured:
    ...     import torchao  # prints nothing
    >>> "Failed to load" in captured.getvalue()
    True
    >>> describe_failure("executorch", exc)
    'The executorch target cannot lower op aten.linalg_qr.default (...); ...'
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[io.StringIO]:
    """Capture prints, warnings, log records and native output (fds 1 and 2) into one buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    loggers = [logging.getLogger()] + [
        log for log in logging.root.manager.loggerDict.values() if isinstance(log, logging.Logger)
    ]
    saved = [(log, log.handlers) for log in loggers if log.handlers or log is logging.getLogger()]
    for log, _ in saved:  # torch and coremltools install their own stderr handlers
        log.handlers = [handler]
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(buffer),
            contextlib.redirect_stderr(buffer),
            _native_output_into(buffer),
        ):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for log, handlers in saved:
            log.handlers = handlers


@contextlib.contextmanager
def _native_output_into(buffer: io.StringIO) -> Iterator[None]:
    """Point fds 1 and 2 at a temp file for the block, then append what native code wrote to ``buffer``."""
    try:
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
    except (OSError, ValueError):  # no real fds (an embedded interpreter): nothing to capture
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


def describe_failure(target: str, exc: BaseException) -> str:
    """One sentence: what failed (the op when the stack names one), where, and the fix."""
    chain = _cause_chain(exc)
    text = _ANSI.sub("", "\n".join(str(e) for e in chain))
    root = next((e for e in reversed(chain) if str(e).strip()), chain[-1])
    detail = _shorten(f"{type(root).__name__}: {_first_line(root)}")
    op = _failing_op(text)
    if op is not None and "Core ATen opset" in text:
        return (
            f"The {target} target cannot lower op {op}: it is not in the Core ATen opset that ExecuTorch's "
            "kernels implement; replace it in the model with core ATen ops or compute it outside forward."
        )
    if op is not None:
        return (
            f"The {target} target cannot lower op {op} ({detail}); replace it in the model with ops "
            "ExecuTorch supports or compute it outside forward."
        )
    if "data-dependent" in text or "DataDependent" in type(root).__name__:
        where = re.search(r"Caused by: \(([^)]*)\)", text)
        at = f" at {where.group(1).strip()}" if where else ""
        return (
            f"The {target} target cannot trace the model with torch.export{at} ({detail}); remove Python "
            "control flow on tensor values (.item(), .tolist(), `if tensor:`) from forward."
        )
    if isinstance(root, TypeError) and "argument" in str(root):
        return (
            f"The {target} target cannot call the model ({detail}); "
            "name the example's keys after the parameters of forward."
        )
    return (
        f"The {target} target failed to export the model ({detail}); enable debug logging for the full trace."
    )


def _failing_op(text: str) -> str | None:
    """The op the stack names: a non-core or dtype-mismatched edge op, or a dispatch failure's op."""
    patterns = (
        r"Operator torch\._ops\.([\w.]+) is not in Core ATen",
        r"Operator: <EdgeOpOverload: ([\w.]+)>",
        r"op='([\w.]+)', overload='(\w+)'",
        r"target=torch\.ops\.([\w.]+)",
    )
    for pattern in patterns:
        found = re.search(pattern, text)
        if found:
            return ".".join(found.groups())
    return None


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    return chain


def _first_line(exc: BaseException) -> str:
    lines = [line for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _shorten(text: str, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", text).strip().rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."
