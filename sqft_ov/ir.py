"""Read the weights back out of an OpenVINO IR, dequantized exactly as the graph defines them.

Export promises that every zero of the source model is a zero in the IR. That promise is checked here
from the IR's own constants (INT4/INT8 codes, zero points, scales), not from the code path that wrote
them: each weight's constant-only decompression subgraph (Constant -> Convert -> Subtract -> Multiply ->
Reshape ...) is evaluated in numpy with the element types the graph declares.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TORCH_NAME = re.compile(r"^__module\.(.+?)/(?:aten|ov_ext)::(?:linear|embedding|matmul)/")  # ov_ext: 16-bit sources
_FLOAT = {"f32": np.float32, "f16": np.float16, "f64": np.float64}


@dataclass
class IRWeight:
    name: str  # torch-style name, e.g. "model.layers.0.self_attn.q_proj.weight"
    storage: str  # element type of the stored constant: u4, i4, u8, i8, f16, f32 ...
    values: np.ndarray  # dequantized, [out, in] like torch's Linear.weight
    codes: np.ndarray | None = None  # the integer codes for quantized weights, same layout as stored


def _unpack_nibbles(raw: np.ndarray, signed: bool, shape: tuple[int, ...]) -> np.ndarray:
    raw = raw.view(np.uint8).ravel()
    out = np.empty(raw.size * 2, dtype=np.int8)
    out[0::2] = raw & 0x0F  # OpenVINO packs element 2k in the low nibble, 2k+1 in the high one
    out[1::2] = raw >> 4
    if signed:
        out = np.where(out > 7, out - 16, out).astype(np.int8)
    return out[: int(np.prod(shape))].reshape(shape)


def _constant(node) -> tuple[np.ndarray, str]:
    et = node.get_element_type().get_type_name()
    shape = tuple(node.get_output_shape(0))
    if et in ("u4", "i4"):
        return _unpack_nibbles(np.asarray(node.data), et == "i4", shape), et
    data = np.array(node.data, copy=True)
    return data.reshape(shape), et


def _evaluate(output, leaf: dict) -> np.ndarray | None:
    """Value of a constant-only subgraph, or None if it depends on a Parameter or an unknown op."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        value, et = _constant(node)
        if value.ndim >= 2 and "storage" not in leaf:
            leaf["storage"], leaf["codes"] = et, (value if et[0] in "iu" else None)
        return value
    inputs = [_evaluate(v, leaf) for v in node.input_values()]
    if any(x is None for x in inputs):
        return None
    et = node.get_output_element_type(0).get_type_name()
    cast = _FLOAT.get(et)
    shape = tuple(node.get_output_shape(0)) if node.get_output_partial_shape(0).is_static else None
    if kind == "Convert":
        return inputs[0].astype(cast or np.int64)
    if kind in ("Subtract", "Multiply", "Add"):
        a, b = (x.astype(np.float32) for x in inputs)  # f16 x f16 is exact in f32; round back below
        r = a - b if kind == "Subtract" else a * b if kind == "Multiply" else a + b
        return r.astype(cast) if cast else r
    if kind in ("Reshape", "Unsqueeze", "Squeeze") and shape is not None:
        return inputs[0].reshape(shape)
    if kind == "Transpose":
        return np.transpose(inputs[0], inputs[1].astype(np.int64))
    return None


def _weight_inputs(model) -> Iterator[tuple[str, object, bool]]:
    """(torch name, weight input, needs transpose) for each MatMul / Gather fed by a constant."""
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Gather"):
            continue
        match = _TORCH_NAME.match(op.get_friendly_name())
        if not match:
            continue
        if kind == "MatMul":
            transpose = not op.get_attributes().get("transpose_b", False)
            yield match.group(1) + ".weight", op.input_value(1), transpose
        else:
            yield match.group(1) + ".weight", op.input_value(0), False


def iter_ir_weights(model_or_path) -> Iterator[IRWeight]:
    """Yield every constant weight of a MatMul or embedding Gather, dequantized, one at a time."""
    import openvino as ov

    model = model_or_path
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        model = ov.Core().read_model(path / "openvino_model.xml" if path.is_dir() else path)
    for name, weight_input, transpose in _weight_inputs(model):
        leaf: dict = {}
        value = _evaluate(weight_input, leaf)
        if value is None or value.ndim != 2:
            continue
        value = value.astype(np.float32)
        yield IRWeight(name, leaf.get("storage", "?"), value.T if transpose else value, leaf.get("codes"))
