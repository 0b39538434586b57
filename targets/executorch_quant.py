"""PT2E quantization for the ExecuTorch XNNPACK target: static int8 (calibrated) and int8-dynamic.

Imported only inside an export (it imports torch, torchao and executorch at the top).

The stock ``XNNPACKQuantizer`` fails on Hugging Face transformers' attention masks: its
``transform_for_annotation`` turns the scalar operand of every ``aten.add``/``aten.mul`` into a float32
tensor, integer arithmetic included, so the mask's index ``arange(seq) + 0`` becomes a float and the first
calibration row fails with "tensors used as indices must be long, int, byte or bool tensors".
``MaskSafeXnnpackQuantizer`` leaves integer adds and muls alone (they are never quantized anyway).

The quantizer takes only the linear layers, so ``int8_embeddings`` also stores the embedding tables int8,
one scale per row (torchao's ``IntxWeightOnlyConfig(int8, PerAxis(0))``, the weights of ExecuTorch's LLM
export ``-E 8,0``): on a BERT student the word table is most of the weights. The rows are gathered int8 by
``aten.embedding`` and scaled after, not by ``quantized_decomposed.embedding_byte``: the pip runtime
registers that kernel only once ``libexecutorch_kernels_quantized`` is loaded, which a device app built
without the quantized kernels lacks, while ``aten::embedding.out`` copies rows of any dtype.

Example:
    >>> with int8_embeddings(model):
    ...     program = torch.export.export(model, (), kwargs=example)
    >>> quantized = quantize(program, example, calibration, dynamic=False)  # an ExportedProgram, batch 1
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
)
from torchao.quantization.granularity import PerAxis
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.quant_api import IntxWeightOnlyConfig, quantize_

QUANTIZED_PRECISIONS = ("int8", "int8-dynamic")
# The ops whose scalar operands XNNPACKQuantizer.transform_for_annotation turns into float tensors, and
# the overloads that take a Scalar (same result for an integer tensor), which that pass skips.
_SCALAR_OVERLOADS = {
    torch.ops.aten.add.Tensor: torch.ops.aten.add.Scalar,
    torch.ops.aten.mul.Tensor: torch.ops.aten.mul.Scalar,
}
_TENSOR_OVERLOADS = {scalar: tensor for tensor, scalar in _SCALAR_OVERLOADS.items()}
# Embedding tables with fewer rows stay float (token types: a few hundred bytes).
MIN_EMBEDDING_ROWS = 64


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


class Int8Embedding(torch.nn.Module):
    """An ``nn.Embedding`` stored int8 with one float32 scale per row (symmetric, zero point 0).

    ``forward`` gathers the int8 rows and their scales with ``aten.embedding`` and multiplies: only the
    looked-up rows are dequantized, with kernels every ExecuTorch runtime has.

    Example:
        >>> table = Int8Embedding(model.bert.embeddings.word_embeddings)
        >>> table.weight.dtype, table.scales.shape
        (torch.int8, torch.Size([30522, 1]))
    """

    def __init__(self, embedding: torch.nn.Embedding) -> None:
        super().__init__()
        rows, dim = embedding.weight.shape
        copy = torch.nn.Embedding(rows, dim)
        copy.weight = torch.nn.Parameter(embedding.weight.detach().float().clone(), requires_grad=False)
        config = IntxWeightOnlyConfig(
            weight_dtype=torch.int8, granularity=PerAxis(0), intx_choose_qparams_algorithm="affine"
        )
        quantize_(copy, config, lambda module, fqn: isinstance(module, torch.nn.Embedding))
        weight = copy.weight  # torchao's IntxUnpackedToInt8Tensor: qdata (rows, dim), scale (rows, 1)
        self.register_buffer("weight", weight.qdata.detach().to(torch.int8).clone())
        self.register_buffer("scales", weight.scale.detach().reshape(rows, 1).float().clone())
        self.dtype = embedding.weight.dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = torch.nn.functional.embedding(ids, self.weight).to(torch.float32)
        return (rows * torch.nn.functional.embedding(ids, self.scales)).to(self.dtype)


@contextlib.contextmanager
def int8_embeddings(model: torch.nn.Module) -> Iterator[list[str]]:
    """Swap ``model``'s embedding tables of at least ``MIN_EMBEDDING_ROWS`` rows for ``Int8Embedding``s
    while the block runs (put back after, also on failure); yields the swapped modules' names.

    A table whose weight another module shares (a tied output layer) stays float: quantizing it would
    store it twice. So does one with ``max_norm`` (it renormalizes the looked-up rows).
    """
    shared = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    swaps = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Embedding) or module.max_norm is not None:
            continue
        if module.num_embeddings < MIN_EMBEDDING_ROWS or shared[id(module.weight)] > 1:
            continue
        parent_name, _, child = name.rpartition(".")
        swaps.append((name, model.get_submodule(parent_name), child, module))
    try:
        for _, parent, child, module in swaps:
            setattr(parent, child, Int8Embedding(module))
        yield [name for name, *_ in swaps]
    finally:
        for _, parent, child, module in swaps:
            setattr(parent, child, module)
