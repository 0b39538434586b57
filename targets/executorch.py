"""The ExecuTorch targets: one ``model.pte`` lowered to XNNPACK (CPU) or Core ML, run with executorch.runtime.

``torch.export`` (static batch of 1: edge apps run batch 1; ``run`` goes row by row) ->
``to_edge_transform_and_lower`` with the backend's partitioner -> ``to_executorch``. What the partitioner
does not take falls back to ExecuTorch's portable kernels; ``inspect`` reads both from the .pte. int8 is
PT2E static quantization with the XNNPACK quantizer (symmetric, per-channel weights) calibrated on held-out
training rows; int8-dynamic quantizes the linear weights ahead of time and their inputs at run time. Both
also store the embedding tables int8 with a scale per row (``executorch_quant.int8_embeddings``).

Beside ``forward`` the program carries one constant method (``runner.PTE_METADATA_METHOD``): a JSON string
with forward's parameter names and, per backend, the ops each delegate took, so that the file alone says
what was delegated. The exporters' chatter is captured and kept off the console; a failure becomes one
ExportError sentence naming the op, the target and a fix.

Example:
    >>> target = ExecuTorchTarget()
    >>> path = target.export(student, {"input_ids": ids, "attention_mask": mask}, Path("out/et"))
    >>> target.inspect(path)["delegated"]["XnnpackBackend"]["ops"]["aten.linear.default"]
    14
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_distill.errors import ExportError

from . import runner
from .base import OUTPUT_NAME, check_precision, require_calibration
from .common import (
    RunnerSessions,
    batch_of_one,
    check_single_output,
    evaluating,
    installed,
    quiet,
    quiet_export,
    staged_export,
)
from .executorch_support import describe_failure

if TYPE_CHECKING:
    import torch

    from edge_distill.profiles import DeviceProfile

logger = logging.getLogger(__name__)

ARTIFACT_NAME = "model.pte"
METADATA_FORMAT = 1  # version of the JSON in the metadata method


class ExecuTorchTarget(RunnerSessions):
    """Lower to the XNNPACK delegate (Arm and x86 CPUs); run with the ExecuTorch runtime's pybindings."""

    name = "executorch"
    extension = ".pte"
    runtime = "executorch"
    precisions = ("fp32", "int8", "int8-dynamic")
    backend = "XnnpackBackend"

    def __init__(self, *, threads: int | None = None) -> None:
        self.threads = threads  # None: the runtime's default thread pool

    def available(self) -> bool:
        return installed("executorch")

    def unverifiable_reason(self) -> str | None:
        return None  # the pip wheel's runtime has the XNNPACK delegate on Linux, macOS and Windows

    def export(
        self,
        model: torch.nn.Module,
        example: dict[str, torch.Tensor],
        out_dir: Path,
        *,
        precision: str = "fp32",
        calibration: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write ``out_dir/model.pte`` atomically (temp dir beside ``out_dir``, then rename)."""
        check_precision(self, precision)
        if precision == "int8":
            require_calibration(self, precision, calibration)
        self._require_installed()
        with staged_export(out_dir, ARTIFACT_NAME) as tmp:
            (tmp / ARTIFACT_NAME).write_bytes(self._program_bytes(model, example, precision, calibration))
        return Path(out_dir) / ARTIFACT_NAME

    def inspect(self, path: Path) -> dict[str, Any]:
        """forward's signature, the delegates (backend, subgraphs, ops) and the portable-kernel ops."""
        return inspect_pte(Path(path))

    def partitioners(self, precision: str) -> list[Any]:
        """The partitioners that lower a program of ``precision`` (imported here: executorch is heavy)."""
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]

    def _require_installed(self) -> None:
        if not self.available():
            raise ExportError(
                f"The {self.name} target needs executorch; install it with `pip install executorch`."
            )

    def _program_bytes(
        self,
        model: torch.nn.Module,
        example: dict[str, torch.Tensor],
        precision: str,
        calibration: dict[str, torch.Tensor] | None,
    ) -> bytes:
        """The serialized program; any failure of the export stack becomes one ExportError sentence."""
        what = f"{self.name} export failed; exporter output"
        with quiet_export(functools.partial(describe_failure, self.name), log=logger, what=what, native=True):
            return _lower(self, model, example, precision, calibration)


class ExecuTorchCoreMLTarget(ExecuTorchTarget):
    """Lower to ExecuTorch's Core ML delegate: lowers on Linux, runs only where the runtime has Core ML."""

    name = "executorch-coreml"
    precisions = ("fp16", "fp32")
    backend = "CoreMLBackend"

    def __init__(self, *, deployment_target: str | None = None, threads: int | None = None) -> None:
        super().__init__(threads=threads)
        self.deployment_target = deployment_target  # a ct.target name, e.g. "iOS17"; None: Core ML's default

    @classmethod
    def for_profile(cls, profile: DeviceProfile) -> ExecuTorchCoreMLTarget:
        """The target for a device: its Core ML deployment target (the oldest OS the program must run on)."""
        return cls(deployment_target=profile.coreml_deployment_target)

    def available(self) -> bool:
        return installed("executorch", "coremltools")

    def unverifiable_reason(self) -> str | None:
        if sys.platform != "darwin":
            return (
                f"ExecuTorch's Core ML delegate runs only on Apple devices, so this {sys.platform} host can "
                "lower and inspect the .pte but not run it; run it on a Mac or an iPhone."
            )
        return None

    def partitioners(self, precision: str) -> list[Any]:
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
        target = getattr(ct.target, self.deployment_target) if self.deployment_target else None
        specs = CoreMLBackend.generate_compile_specs(
            compute_precision=compute, minimum_deployment_target=target
        )
        return [CoreMLPartitioner(compile_specs=specs)]

    def _require_installed(self) -> None:
        if not self.available():
            raise ExportError(
                f"The {self.name} target needs executorch and coremltools; "
                "install them with `pip install executorch coremltools`."
            )


def _lower(
    target: ExecuTorchTarget,
    model: torch.nn.Module,
    example: dict[str, torch.Tensor],
    precision: str,
    calibration: dict[str, torch.Tensor] | None,
) -> bytes:
    """torch.export at batch 1 -> (quantize) -> lower with the target's partitioners -> serialize."""
    import torch
    from executorch.exir import to_edge_transform_and_lower

    from .executorch_quant import QUANTIZED_PRECISIONS, int8_embeddings, quantize

    example = batch_of_one(example)  # (1, ...): a static batch of 1
    quantized = precision in QUANTIZED_PRECISIONS
    tables = int8_embeddings(model) if quantized else contextlib.nullcontext()
    with evaluating(model), torch.no_grad():
        with tables:  # int8: the embedding tables int8 per row, the linear layers by the quantizer
            program = torch.export.export(model, (), kwargs=example, strict=False)
        if quantized:
            program = quantize(program, example, calibration, dynamic=precision == "int8-dynamic")
        edge = to_edge_transform_and_lower(program, partitioner=target.partitioners(precision))
    outputs = len(edge.exported_program().graph_signature.user_outputs)
    check_single_output(target.name, outputs, f"the exported program has {outputs} outputs")
    metadata = _metadata(target, precision, program, edge.exported_program())
    executable = _with_metadata(edge, metadata).to_executorch()
    _check_kernels(target, executable.executorch_program)
    return executable.buffer


def _check_kernels(target: ExecuTorchTarget, program: Any) -> None:
    """Every op left to the portable kernels needs a kernel in the runtime, else the .pte builds but
    fails to load (ExecuTorch issue #21950); the pip wheel's runtime stands in for the device's."""
    from executorch.runtime import Runtime

    registered = Runtime.get().operator_registry.operator_names
    for plan in program.execution_plan:
        for operator in plan.operators:
            name = f"{operator.name}.{operator.overload}" if operator.overload else operator.name
            if name not in registered:
                raise ExportError(
                    f"The {target.name} target lowered the model but op {name} has no kernel in the "
                    "ExecuTorch runtime, so the .pte would not load; replace it in the model with supported "
                    "ops or build the runtime with a kernel for it."
                )


def _metadata(target: ExecuTorchTarget, precision: str, exported: Any, lowered: Any) -> dict[str, Any]:
    """forward's parameter names (the kwargs in torch.export's input spec) and each delegate's ops."""
    from executorch.exir.lowered_backend_module import get_lowered_backend_modules

    kwargs_spec = exported.call_spec.in_spec.children_specs[1]  # (args, kwargs): forward(**example)
    delegated: dict[str, Counter[str]] = {}
    for module in get_lowered_backend_modules(lowered.graph_module):
        ops = delegated.setdefault(module.backend_id, Counter())
        for node in module.original_module.graph.nodes:
            if node.op == "call_function":
                ops[getattr(node.target, "__name__", str(node.target))] += 1
    return {
        "format": METADATA_FORMAT,
        "target": target.name,
        "precision": precision,
        "inputs": list(kwargs_spec.context),
        "delegated_ops": {backend: dict(sorted(ops.items())) for backend, ops in delegated.items()},
    }


def _with_metadata(edge: Any, metadata: dict[str, Any]) -> Any:
    """``edge`` with the metadata constant method added; as EdgeProgramManager.to_backend rebuilds it
    (the delegation is known only after lowering, constant methods are fixed before it)."""
    from executorch.exir import EdgeCompileConfig, EdgeProgramManager

    methods = {runner.PTE_METADATA_METHOD: json.dumps(metadata, sort_keys=True)}
    config = EdgeCompileConfig(_check_ir_validity=False)  # as to_backend: the graph holds delegate calls
    return EdgeProgramManager({"forward": edge.exported_program()}, methods, config)


def inspect_pte(path: Path) -> dict[str, Any]:
    """What the .pte holds: forward's inputs and output (name, dtype, shape), its delegates (backend,
    subgraphs, the ops each took) and the ops left to the portable kernels (operator -> calls).

    Example:
        >>> inspect_pte(Path("out/et/model.pte"))["portable"]["aten::embedding.out"]
        3
    """
    with quiet(native=True):  # the first import of executorch.exir imports torchao, which talks
        from executorch.exir._serialize._program import deserialize_pte_binary

        program = deserialize_pte_binary(Path(path).read_bytes()).program
    plans = {plan.name: plan for plan in program.execution_plan}
    forward = plans["forward"]
    metadata = _read_metadata(plans.get(runner.PTE_METADATA_METHOD))
    names = metadata.get("inputs") or _spec_input_names(forward)
    kernels = Counter(
        _kernel_name(forward, i.instr_args)
        for chain in forward.chains
        for i in chain.instructions
        if type(i.instr_args).__name__ == "KernelCall"
    )
    backends = Counter(delegate.id for delegate in forward.delegates)  # one entry per lowered subgraph
    delegated_ops = metadata.get("delegated_ops", {})
    return {
        "inputs": [
            _tensor_fact(name, forward.values[i].val) for name, i in zip(names, forward.inputs, strict=True)
        ],
        "outputs": [_tensor_fact(OUTPUT_NAME, forward.values[i].val) for i in forward.outputs],
        "precision": metadata.get("precision"),
        "delegated": {
            backend: {"subgraphs": n, "ops": delegated_ops.get(backend, {})}
            for backend, n in sorted(backends.items())
        },
        "portable": dict(sorted(kernels.items())),
        "size_bytes": Path(path).stat().st_size,
    }


def _read_metadata(plan: Any) -> dict[str, Any]:
    """The JSON string the metadata method returns; {} for a .pte that was not made here."""
    if plan is None or not plan.outputs:
        return {}
    value = plan.values[plan.outputs[0]].val
    text = getattr(value, "string_val", None)
    return json.loads(text) if isinstance(text, str) else {}


def _spec_input_names(plan: Any) -> list[str]:
    """forward's kwargs names from the pytree spec ExecuTorch keeps (``[1, {"type": "builtins.tuple",
    "children_spec": [args, {"type": "builtins.dict", "context": "[\\"input_ids\\", ...]"}]}]``);
    ``input_<i>`` when forward took positional arguments."""
    count = len(plan.inputs)
    try:
        kwargs = json.loads(plan.container_meta_type.encoded_inp_str)[1]["children_spec"][1]
        names = json.loads(kwargs["context"]) if kwargs["type"] == "builtins.dict" else []
    except (ValueError, KeyError, IndexError, TypeError):
        names = []
    return names if len(names) == count else [f"input_{i}" for i in range(count)]


def _kernel_name(plan: Any, call: Any) -> str:
    """The operator a portable-kernel call runs, e.g. ``aten::embedding.out``."""
    operator = plan.operators[call.op_index]
    return f"{operator.name}.{operator.overload}" if operator.overload else operator.name


def _tensor_fact(name: str, value: Any) -> dict[str, Any]:
    """name, numpy dtype name and shape of a tensor value; a scalar input gets its kind and shape []."""
    if not hasattr(value, "scalar_type"):
        return {"name": name, "dtype": type(value).__name__.lower(), "shape": []}
    dtype = runner.EXECUTORCH_DTYPES.get(int(value.scalar_type))
    dtype_name = np.dtype(dtype).name if dtype is not None else value.scalar_type.name.lower()
    return {"name": name, "dtype": dtype_name, "shape": list(value.sizes)}
