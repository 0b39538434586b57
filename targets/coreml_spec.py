"""Reading a Core ML package's spec without running it: its signature, op counts and stored weights.

Works on any host (Linux included): only the protobuf spec is read, nothing is compiled or run.

Example:
    >>> facts = describe(coremltools.utils.load_spec("out/coreml/model.mlpackage"), Path("model.mlpackage"))
    >>> facts["outputs"], facts["palette_bits"]
    ([{'name': 'output', 'dtype': 'float32', 'shape': [1, 3]}], [6])
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from edge_distill.errors import ExportError

from .base import OUTPUT_NAME

META = "edge_distill."  # prefix of the user-defined metadata keys that the coreml target's export records
_SPEC_VERSION_NAMES = {6: "iOS15", 7: "iOS16", 8: "iOS17", 9: "iOS18", 10: "iOS26"}


def describe(spec: Any, path: Path) -> dict[str, Any]:
    """The facts :meth:`CoreMLTarget.inspect` reports; ExportError when ``spec`` is not an ML Program whose
    inputs and outputs are those recorded at export."""
    block = _main_block(spec, path)
    inputs = features(spec.description.input)  # Core ML's public signature
    outputs = features(spec.description.output)
    meta = dict(spec.description.metadata.userDefined)
    _check_signature(path, spec, block, inputs, outputs, meta)
    ops = _walk(block)
    return {
        "format": "mlprogram",
        "specification_version": spec.specificationVersion,
        "deployment_target": meta.get(f"{META}deployment_target")
        or _SPEC_VERSION_NAMES.get(spec.specificationVersion),
        "opset": spec.mlProgram.functions["main"].opset,
        "precision": meta.get(f"{META}precision"),
        "inputs": inputs,
        "outputs": outputs,
        "ops": dict(sorted(Counter(op.type for op in ops).items())),
        **_weight_facts(ops),
    }


def _main_block(spec: Any, path: Path) -> Any:
    """The ops of the ML Program's ``main`` function; anything else is an ExportError."""
    if spec.WhichOneof("Type") != "mlProgram":
        raise ExportError(
            f"Core ML package {path.name} holds a {spec.WhichOneof('Type')} model, not an ML Program; "
            "re-export it with the coreml target."
        )
    main = spec.mlProgram.functions.get("main")
    if main is None or main.opset not in main.block_specializations:
        raise ExportError(f"Core ML package {path.name} has no main function; re-export it.")
    return main.block_specializations[main.opset]


def features(described: Any) -> list[dict[str, Any]]:
    """A model description's inputs or outputs as ``{"name", "dtype", "shape"}``."""
    from coremltools.proto import FeatureTypes_pb2

    names = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
    result = []
    for feature in described:
        array = feature.type.multiArrayType
        dtype = {"DOUBLE": "float64"}.get(names.Name(array.dataType), names.Name(array.dataType).lower())
        result.append({"name": feature.name, "dtype": dtype, "shape": list(array.shape)})
    return result


def _mil_dtype(value_type: Any) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(value_type.tensorType.dataType).lower()


def _check_signature(
    path: Path, spec: Any, block: Any, inputs: list[dict], outputs: list[dict], meta: dict[str, str]
) -> None:
    """The description must match the program's own inputs and outputs and the signature recorded."""
    main = spec.mlProgram.functions["main"]
    program_inputs = [
        {"name": v.name, "dtype": _mil_dtype(v.type), "shape": _dims(v.type)} for v in main.inputs
    ]
    declared = json.loads(meta.get(f"{META}signature", "null"))
    problems = []
    if declared is None:
        problems.append("records no declared signature")
    elif declared != {"inputs": inputs, "outputs": outputs}:
        problems.append(f"declares {declared} but describes inputs {inputs} and outputs {outputs}")
    names = [o["name"] for o in outputs]
    if program_inputs != inputs:
        problems.append(f"describes inputs {inputs} but its program takes {program_inputs}")
    if list(block.outputs) != names:
        problems.append(f"describes outputs {names} but its program returns {list(block.outputs)}")
    if names != [OUTPUT_NAME]:
        problems.append(f"has outputs {names}, not [{OUTPUT_NAME!r}]")
    if problems:
        raise ExportError(f"Core ML package {path.name} {problems[0]}; re-export it with the coreml target.")


def _dims(value_type: Any) -> list[int]:
    return [d.constant.size for d in value_type.tensorType.dimensions]


def _walk(block: Any) -> list[Any]:
    """Every op of ``block``, nested blocks (cond, while_loop) included."""
    ops = []
    for op in block.operations:
        ops.append(op)
        for inner in op.blocks:
            ops.extend(_walk(inner))
    return ops


def _weight_facts(ops: list[Any]) -> dict[str, Any]:
    """Stored weights by dtype, compressed ones by op, their quantized dtypes and palette sizes."""
    consts = {op.outputs[0].name: op.attributes["val"] for op in ops if op.type == "const"}
    compressed = [op for op in ops if op.type.startswith("constexpr_")]
    feeding = {arg.name for op in compressed for value in op.inputs.values() for arg in value.arguments}
    weights: Counter[str] = Counter()
    for name, value in consts.items():
        if value.WhichOneof("value") == "blobFileValue" and name not in feeding:
            weights[_mil_dtype(value.type)] += 1  # uncompressed tensors in weights/weight.bin
    quantized, bits = set(), set()
    for op in compressed:
        params = dict(op.attributes)  # iOS16 ops hold their tensors as attributes, iOS18 ops as inputs
        for key, value in op.inputs.items():
            arg = value.arguments[0]
            found = arg.value if arg.HasField("value") else consts.get(arg.name)
            if found is not None:
                params[key] = found
        if "lut" in params:  # (2**bits,) before iOS18; (..., 2**bits, vector) from iOS18
            dims = _dims(params["lut"].type)
            bits.add(int(math.log2(dims[0] if len(dims) == 1 else dims[-2])))
        for key in ("quantized_data", "data"):
            if key in params:
                quantized.add(_mil_dtype(params[key].type))
    return {
        "weights": dict(sorted(weights.items())),
        "compressed": dict(sorted(Counter(op.type for op in compressed).items())),
        "quantized_dtypes": sorted(quantized),
        "palette_bits": sorted(bits),
    }
