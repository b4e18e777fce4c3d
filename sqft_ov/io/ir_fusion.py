"""Horizontal fusion of an IR's projections that read the same activation: q/k/v into one MatMul, gate/up into one.

A decode step of a small model is hundreds of small matrix-vector products, and each FullyConnected node of
OpenVINO's CPU plugin costs a fixed few microseconds beside its weight reads (SmolLM2-135M, 2-core Xeon: ~5 µs a
node, most of a k_proj's time; `benchmarks/llama_cpp.py`). Concatenating sibling projections' compressed
constants along the output axis (INT4 groups run along the input axis, so every code, scale and zero point keeps
its value) gives one node whose outputs a VariadicSplit hands back: the same products, equal bit for bit in f32.
OpenVINO 2026.4's CPU plugin did not fuse them itself on AVX-512 without AMX (7 FullyConnected nodes a block).

The parts of each fused MatMul are recorded in the model's rt_info (`sqft_ov.io.ir.FUSED_KEY`), so
`iter_ir_weights` still reads every projection under its own name.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from sqft_ov.io.ir import FUSED_KEY, fused_parts, save_over

FUSED_PREFIX = "sqft_ov.fused"
_CHAIN_OPS = {"Constant", "Convert", "Subtract", "Multiply", "Reshape"}  # weight decompression, as NNCF writes it


class _NotFusable(Exception):
    pass


def _signature(output, rows: int) -> tuple:
    """Op types, element types and shapes (the output axis left out) of a weight's decompression chain."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind not in _CHAIN_OPS or not node.get_output_partial_shape(0).is_static:
        raise _NotFusable(kind)
    shape = list(node.get_output_shape(0))
    if kind == "Constant" and not (shape and shape[0] == rows):
        key = (tuple(shape), np.asarray(node.data).tobytes())  # shared by every part: must be the same constant
    else:
        key = tuple(shape[1:]) if shape and shape[0] == rows else tuple(shape)
    sources = [] if kind == "Constant" else node.input_values()[:1] if kind == "Reshape" else node.input_values()
    inputs = tuple(_signature(v, rows) for v in sources)  # a Reshape's target shape holds the rows: not compared
    return (kind, node.get_output_element_type(0).get_type_name(), key, inputs)


def _concat_constant(nodes, rows: list[int]):
    import openvino as ov

    shape = list(nodes[0].get_output_shape(0))
    if not (shape and all(list(n.get_output_shape(0))[0] == r for n, r in zip(nodes, rows))):
        return nodes[0].output(0)  # not per row: _signature made sure every part has the same one
    element = nodes[0].get_output_element_type(0)
    if any(int(np.prod(n.get_output_shape(0))) * element.bitwidth % 8 for n in nodes):
        raise _NotFusable("a part does not fill whole bytes")
    tensor = ov.Tensor(element, ov.Shape([sum(rows), *shape[1:]]))
    np.asarray(tensor.data).reshape(-1).view(np.uint8)[:] = np.concatenate(
        [np.asarray(n.data).reshape(-1).view(np.uint8) for n in nodes])  # packed bytes for 4-bit types
    constant = ov.op.Constant(tensor)
    constant.set_friendly_name("+".join(n.get_friendly_name() for n in nodes))
    return constant.output(0)


def _rebuild(outputs, rows: list[int]):
    """One decompression chain whose constants are the parts' concatenated along the output axis."""
    from openvino import opset13 as ops

    nodes = [o.get_node() for o in outputs]
    kind = nodes[0].get_type_name()
    if kind == "Constant":
        return _concat_constant(nodes, rows)
    if kind == "Reshape":
        source = _rebuild([n.input_value(0) for n in nodes], rows)
        target = np.array([sum(rows), *list(nodes[0].get_output_shape(0))[1:]], dtype=np.int64)
        return ops.reshape(source, target, special_zero=False).output(0)
    inputs = [_rebuild([n.input_value(i) for n in nodes], rows) for i in range(nodes[0].get_input_size())]
    if kind == "Convert":
        return ops.convert(inputs[0], nodes[0].get_output_element_type(0)).output(0)
    return (ops.subtract if kind == "Subtract" else ops.multiply)(*inputs).output(0)


def _candidates(model) -> dict[tuple, list]:
    """MatMuls with a constant weight ([out, in], transposed), grouped by the activation they read and the shape of
    their weight's decompression chain; in graph order."""
    groups: dict[tuple, list] = defaultdict(list)
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        attributes = op.get_attributes()
        weight = op.input_value(1)
        if attributes["transpose_a"] or not attributes["transpose_b"]:
            continue
        if weight.get_node().get_type_name() == "Constant":
            continue
        if not weight.get_partial_shape().is_static or len(weight.get_partial_shape()) != 2:
            continue
        try:
            signature = _signature(weight, int(weight.get_shape()[0]))
        except _NotFusable:
            continue
        activation = op.input_value(0)
        groups[(activation.get_node().get_friendly_name(), activation.get_index(), signature)].append(op)
    return groups


def fuse_projections(model) -> dict[str, list[tuple[str, int]]]:
    """Fuse, in place, every group of MatMuls that read one activation through decompression chains of one shape.

    Returns (and records in the model's rt_info, beside any earlier record) fused name -> [(part name, rows)].
    """
    from openvino import opset13 as ops

    record = fused_parts(model)
    for matmuls in _candidates(model).values():
        if len(matmuls) < 2:
            continue
        rows = [int(m.input_value(1).get_shape()[0]) for m in matmuls]
        try:
            weight = _rebuild([m.input_value(1) for m in matmuls], rows)
        except _NotFusable:
            continue
        names = [m.get_friendly_name() for m in matmuls]
        fused = ops.matmul(matmuls[0].input_value(0), weight, False, True)
        fused.set_friendly_name(f"{FUSED_PREFIX}[{'|'.join(names)}]")
        axis = np.array(-1, dtype=np.int64)
        split = ops.variadic_split(fused, axis, np.array(rows, dtype=np.int64))
        for i, matmul in enumerate(matmuls):
            matmul.output(0).replace(split.output(i))
        record[fused.get_friendly_name()] = list(zip(names, rows))
    model.validate_nodes_and_infer_types()
    if record:
        model.set_rt_info(json.dumps(record), FUSED_KEY)
    return record


def fuse_ir(xml) -> str:
    """Fuse the projections of the IR at `xml` in place; says what was fused ('' when nothing was)."""
    from sqft_ov.io.sparse_fc.op import core_for

    model = core_for(xml).read_model(xml)
    before = len(fused_parts(model))
    record = fuse_projections(model)
    if len(record) == before:
        return ""
    parts = sum(len(p) for p in record.values())
    save_over(model, xml)
    return f"{parts} MatMuls into {len(record)} (projections that read the same activation)"
