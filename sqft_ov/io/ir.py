"""Read the weights back out of an OpenVINO IR, dequantized exactly as the graph defines them.

Export promises that every zero of the source model is a zero in the IR. That promise is checked here
from the IR's own constants (INT4/INT8 codes, zero points, scales), not from the code path that wrote
them: each weight's constant-only decompression subgraph (Constant -> Convert -> Subtract -> Multiply ->
Reshape ...) is evaluated in numpy with the element types the graph declares.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IR_FILE = "openvino_model.xml"  # the model graph of an IR folder; its weights are the .bin beside it
_TORCH_NAME = re.compile(r"^__module\.(.+?)/(?:aten|ov_ext)::(?:linear|embedding|matmul)/")  # ov_ext: 16-bit sources
_FLOAT_NAMES = {"f32": "float32", "f16": "float16", "f64": "float64", "bf16": "bfloat16"}
FUSED_KEY = ["sqft_ov", "fused_projections"]  # model rt_info: {fused MatMul: [[part MatMul, rows], ...]} (ir_fusion)


def check_ir_files(ir_dir: str | Path) -> Path:
    """An IR folder's graph and weights both present, the graph whole XML: a clear error before a compile fails."""
    import xml.etree.ElementTree as ET

    from sqft_ov.errors import ExportIntegrityError, ModelFolderError

    ir_dir = Path(ir_dir).expanduser().absolute()
    xml, weights = ir_dir / IR_FILE, (ir_dir / IR_FILE).with_suffix(".bin")
    if not xml.is_file():
        raise ModelFolderError(f"{ir_dir} is not an OpenVINO IR folder (no {IR_FILE}): export one with sqft-ov export")
    if not weights.is_file():
        raise ExportIntegrityError(f"{weights} is missing beside {IR_FILE}: copy the whole IR folder, or export it "
                                   "again")
    try:
        ET.parse(xml)
    except ET.ParseError as exc:
        raise ExportIntegrityError(f"{xml} is not whole XML ({exc}): copy the IR folder again, or export it "
                                   "again") from None
    for name in ("openvino_tokenizer", "openvino_detokenizer"):
        if (ir_dir / f"{name}.xml").is_file() and not (ir_dir / f"{name}.bin").is_file():
            raise ExportIntegrityError(f"{ir_dir / name}.bin is missing: copy the whole IR folder, or export it again")
    return ir_dir


@dataclass
class IRWeight:
    name: str  # torch-style name, e.g. "model.layers.0.self_attn.q_proj.weight"
    storage: str  # element type of the stored constant: u4, i4, u8, i8, f16, f32 ...
    values: np.ndarray  # dequantized (f32, or the stored float type), [out, in] like torch's Linear.weight


_CHUNK_ELEMENTS = 1 << 21  # rows are evaluated in chunks of ~2M elements: cache-sized, no huge temporaries


class _NotRowWise(Exception):
    """The subgraph does not keep rows independent: evaluate it whole."""


def _constant(node, rows: slice | None, total: int):
    import torch

    et = node.get_element_type().get_type_name()
    shape = tuple(node.get_output_shape(0))
    raw = np.asarray(node.data)  # a view of the IR's memory; arithmetic below makes new tensors
    sliced = rows is not None and len(shape) > 0 and shape[0] == total and total > 1
    if et in ("u4", "i4"):
        per_row = int(np.prod(shape[1:])) if shape else 1
        if sliced:
            if per_row % 2:
                raise _NotRowWise
            raw = raw.view(np.uint8).ravel()[rows.start * per_row // 2: rows.stop * per_row // 2]
            shape = (len(range(*rows.indices(total))),) + shape[1:]
        packed = torch.from_numpy(np.ascontiguousarray(raw).view(np.uint8).ravel())
        codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).ravel().to(torch.int8)  # 2k low nibble, 2k+1 high
        if et == "i4":
            codes = torch.where(codes > 7, codes - 16, codes)
        return codes[: int(np.prod(shape))].reshape(shape), et
    value = torch.from_numpy(raw).reshape(shape)
    return (value[rows] if sliced else value), et


def _evaluate(output, leaf: dict, rows: slice | None, total: int, root: bool = False):
    """Value of a constant-only subgraph (a torch tensor), or None if it depends on a Parameter or unknown op.

    With `rows`, only those rows of the result: constants whose first dimension is the weight's are sliced.
    Arithmetic is done in f32, as OpenVINO's CPU plugin evaluates weight decompression.
    """
    import torch

    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        value, et = _constant(node, rows, total)
        if value.ndim >= 2 and "storage" not in leaf:
            leaf["storage"] = et
        return value
    inputs = [_evaluate(v, leaf, rows, total) for v in node.input_values()]
    if any(x is None for x in inputs):
        return None
    et = node.get_output_element_type(0).get_type_name()
    static = node.get_output_partial_shape(0).is_static
    shape = tuple(node.get_output_shape(0)) if static else None
    if kind == "Convert":
        x = inputs[0]
        if et not in _FLOAT_NAMES:
            leaf["computed"] = True
            return x.to(torch.int32)
        if root and x.is_floating_point():
            return x  # a final float conversion: the caller converts once, on the whole weight
        leaf["computed"] = True
        return x if x.dtype == torch.float32 else x.float()
    if kind in ("Subtract", "Multiply", "Add"):
        a, b = (x if x.dtype == torch.float32 else x.float() for x in inputs)
        leaf["computed"] = True
        return a - b if kind == "Subtract" else a * b if kind == "Multiply" else a + b
    if kind in ("Reshape", "Unsqueeze", "Squeeze") and shape is not None:
        if rows is not None and shape[0] == total:
            shape = (inputs[0].shape[0],) + shape[1:]
        elif rows is not None:
            raise _NotRowWise
        return inputs[0].reshape(shape)
    if kind == "Transpose":
        perm = inputs[1].long().tolist()
        if rows is not None and perm[0] != 0:
            raise _NotRowWise
        return inputs[0].permute(*perm)
    return None


def fused_parts(model) -> dict[str, list[tuple[str, int]]]:
    """The fusion record of a model (sqft_ov.io.ir_fusion): fused MatMul name -> its parts' names and row counts."""
    if not model.has_rt_info(FUSED_KEY):
        return {}
    return {name: [(part, int(rows)) for part, rows in parts]
            for name, parts in json.loads(model.get_rt_info(FUSED_KEY).astype(str)).items()}


def _weight_inputs(model) -> Iterator[tuple[str, object, bool, tuple[int, int] | None]]:
    """(torch name, weight input, needs transpose, its rows of a fused weight or None) for each MatMul / Gather
    fed by a constant; a fused MatMul (sqft_ov.io.ir_fusion) gives one entry per projection it holds."""
    fused = fused_parts(model)
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "MatMul" and op.get_friendly_name() in fused:
            start = 0
            for part, rows in fused[op.get_friendly_name()]:
                match = _TORCH_NAME.match(part)
                if match:
                    yield match.group(1) + ".weight", op.input_value(1), False, (start, start + rows)
                start += rows
            continue
        if kind not in ("MatMul", "Gather"):
            continue
        match = _TORCH_NAME.match(op.get_friendly_name())
        if not match:
            continue
        if kind == "MatMul":
            transpose = not op.get_attributes().get("transpose_b", False)
            yield match.group(1) + ".weight", op.input_value(1), transpose, None
        else:
            yield match.group(1) + ".weight", op.input_value(0), False, None


def iter_ir_weights(model_or_path) -> Iterator[IRWeight]:
    """Yield every constant weight of a MatMul or embedding Gather, dequantized, one at a time."""
    import openvino as ov
    import torch

    from sqft_ov.io.sparse_fc.op import core_for

    model = model_or_path
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        model = core_for(path).read_model(path / "openvino_model.xml" if path.is_dir() else path)
    yield from _sparse_fc_weights(model)
    for name, weight_input, transpose, part in _weight_inputs(model):
        pshape = weight_input.get_partial_shape()
        if not pshape.is_static or len(pshape) != 2:
            continue
        total = int(pshape[0].get_length())
        first, end = part or (0, total)
        step = max(1, _CHUNK_ELEMENTS // max(1, int(pshape[1].get_length())))
        leaf: dict = {}
        try:
            parts = [_evaluate(weight_input, leaf, slice(i, min(i + step, end)), total, root=True)
                     for i in range(first, end, step)]
            value = None if any(p is None for p in parts) else torch.cat(parts) if len(parts) > 1 else parts[0]
        except _NotRowWise:
            leaf = {}
            parts = [_evaluate(weight_input, leaf, None, total, root=True)]
            value = parts[0] if parts[0] is None or part is None else parts[0][first:end]
        if value is None or value.ndim != 2:
            continue
        if not leaf.get("computed") and len(parts) == 1:
            value = value.clone()  # still a view of the IR's constant: detach it from the model's memory
        if value.dtype == torch.bfloat16:
            value = value.float()
        value = value.T if transpose else value
        yield IRWeight(name, leaf.get("storage", "?"), value.contiguous().numpy())


def _sparse_fc_weights(model) -> Iterator[IRWeight]:
    """The weights of SparseFullyConnected nodes (sqft_ov/io/sparse_fc), unpacked and dequantized."""
    from sqft_ov.io.sparse_fc.op import OP_TYPE
    from sqft_ov.io.sparse_fc.pack import PackedWeight

    for op in model.get_ordered_ops():
        match = _TORCH_NAME.match(op.get_friendly_name())
        if op.get_type_name() != OP_TYPE or not match:
            continue
        bits = int(op.get_attributes()["value_bits"])
        mask, values, offsets, scales = (op.input_value(i).get_node().get_data() for i in range(1, 5))
        packed = PackedWeight(mask=mask, values=values, offsets=offsets, scales=scales, bits=bits)
        yield IRWeight(match.group(1) + ".weight", f"bitmask-int{bits}", packed.dequantized())


def save_over(model, xml: str | Path) -> None:
    """Write `model` over the IR it was read from: the old .bin may be memory-mapped, so write aside first."""
    import openvino as ov

    xml = Path(xml)
    tmp = xml.with_name(".sqft." + xml.name)
    ov.save_model(model, tmp, compress_to_fp16=False)
    del model
    tmp.replace(xml)
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
