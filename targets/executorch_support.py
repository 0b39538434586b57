"""The ExecuTorch targets' one-sentence failures.

The export stack (torch.export, to_edge, the partitioners, to_executorch) names the op it failed on in
several ways; ``describe_failure`` turns the exception into one ExportError sentence naming the op, the
target and a fix. The chatter of that stack is captured by ``common.quiet(native=True)``.

Example:
    >>> describe_failure("executorch", exc)
    'The executorch target cannot lower op aten.linalg_qr.default (...); ...'
"""

from __future__ import annotations

from .common import Failure, cannot_call, cannot_trace

# Where the stack names the op: a non-core or dtype-mismatched edge op, or a dispatch failure's op.
_OP_PATTERNS = (
    r"Operator torch\._ops\.([\w.]+) is not in Core ATen",
    r"Operator: <EdgeOpOverload: ([\w.]+)>",
    r"op='([\w.]+)', overload='(\w+)'",
    r"target=torch\.ops\.([\w.]+)",
)


def describe_failure(target: str, exc: BaseException, output: str = "") -> str:
    """One sentence: what failed (the op when the stack names one), where, and the fix.

    ``output``, the stack's captured chatter, is not read: the exception chain names the op.
    """
    failure = Failure.of(exc)
    detail = failure.detail
    op = failure.op(_OP_PATTERNS)
    if op is not None and "Core ATen opset" in failure.text:
        return (
            f"The {target} target cannot lower op {op}: it is not in the Core ATen opset that ExecuTorch's "
            "kernels implement; replace it in the model with core ATen ops or compute it outside forward."
        )
    if op is not None:
        return (
            f"The {target} target cannot lower op {op} ({detail}); replace it in the model with ops "
            "ExecuTorch supports or compute it outside forward."
        )
    if "data-dependent" in failure.text or "DataDependent" in type(failure.root).__name__:
        return cannot_trace(target, detail, at=failure.at)
    if failure.bad_call:
        return cannot_call(target, detail)
    return (
        f"The {target} target failed to export the model ({detail}); enable debug logging for the full trace."
    )
