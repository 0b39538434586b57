"""PT2E quantization for the ExecuTorch XNNPACK target: static int8 (calibrated) and int8-dynamic.

Imported only inside an export (it imports torch, torchao and executorch at the top).

The stock ``XNNPACKQuantizer`` fails on Hugging Face transformers' attention masks: its
``transform_for_annotation`` turns the scalar operand of every ``aten.add``/``aten.mul`` into a float32
tensor, integer arithmetic included, so the mask's index ``arange(seq) + 0`` becomes a float and the first
calibration row fails with "tensors used as indices must be long, int, byte or bool tensors".
``MaskSafeXnnpackQuantizer`` leaves integer adds and muls alone (they are never quantized anyway).

Example:
    >>> program = torch.export.export(model, (), kwargs=example)
    >>> quantized = quantize(program, example, calibration, dynamic=False)  # an ExportedProgram, batch 1
"""

from __future__ import annotations

import torch
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

QUANTIZED_PRECISIONS = ("int8", "int8-dynamic")
# The ops whose scalar operands XNNPACKQuantizer.transform_for_annotation turns into float tensors, and
# the overloads that take a Scalar (same result for an integer tensor), which that pass skips.
_SCALAR_OVERLOADS = {
    torch.ops.aten.add.Tensor: torch.ops.aten.add.Scalar,
    torch.ops.aten.mul.Tensor: torch.ops.aten.mul.Scalar,
}
_TENSOR_OVERLOADS = {scalar: tensor for tensor, scalar in _SCALAR_OVERLOADS.items()}


class MaskSafeXnnpackQuantizer(XNNPACKQuantizer):
    """XNNPACKQuantizer whose scalar-to-tensor pass skips integer adds and muls (attention-mask indices).

    Example:
        >>> config = get_symmetric_quantization_config(is_per_channel=True)
        >>> prepared = prepare_pt2e(program.module(), MaskSafeXnnpackQuantizer().set_global(config))
    """

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        hidden = [node for node in model.graph.nodes if _integer_scalar_op(node)]
        for node in hidden:  # the Scalar overload hides the node from the pass
            node.target = _SCALAR_OVERLOADS[node.target]
        try:
            model = super().transform_for_annotation(model)
        finally:
            for node in hidden:
                node.target = _TENSOR_OVERLOADS[node.target]
            model.recompile()
        return model


def _integer_scalar_op(node: torch.fx.Node) -> bool:
    """An add/mul with a Python-scalar operand whose result is not floating point."""
    if node.op != "call_function" or node.target not in _SCALAR_OVERLOADS:
        return False
    value = node.meta.get("val")
    has_scalar = any(not isinstance(arg, torch.fx.Node) for arg in node.args)
    return has_scalar and isinstance(value, torch.Tensor) and not value.dtype.is_floating_point


def quantize(
    program: torch.export.ExportedProgram,
    example: dict[str, torch.Tensor],
    calibration: dict[str, torch.Tensor] | None,
    *,
    dynamic: bool,
) -> torch.export.ExportedProgram:
    """``program`` quantized for XNNPACK: symmetric int8, per-channel weights, re-exported at batch 1.

    Static (``dynamic=False``) observes the activations of every ``calibration`` row, one at a time (the
    program's batch is 1); dynamic observes only the weights, so the example row is enough.
    """
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    prepared = prepare_pt2e(program.module(), MaskSafeXnnpackQuantizer().set_global(config))
    rows = example if dynamic or calibration is None else calibration
    n = min(int(value.shape[0]) for value in rows.values())
    for i in range(n):
        prepared(**{name: value[i : i + 1] for name, value in rows.items()})  # (1, ...)
    converted = convert_pt2e(prepared)
    return torch.export.export(converted, (), kwargs=example, strict=False)
