"""Rewrite an IR's sparse MatMuls into SparseFullyConnected nodes.

Each MatMul whose weight is a constant [N, K] (directly or through the f16 IR's Convert), multiplied transposed,
with K a multiple of 64 and at least `min_sparsity` zeros, becomes one SparseFullyConnected node over the same
input; the weight's non-zeros are quantized to INT8 (a scale per row) or INT4 (a scale per row and block of 64)
and packed behind a bitmask. The LM head stays a dense MatMul (openvino_genai slices the hidden states before it
and looks for a MatMul there). A model with no such layer is refused: nothing would be sparse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sqft_ov.errors import ConfigError
from sqft_ov.io.sparse_fc.op import sparse_fully_connected
from sqft_ov.io.sparse_fc.pack import pack

SPARSE_FORMATS = {"bitmask-int8": 8, "bitmask-int4": 4}
MIN_SPARSITY = 0.3  # below it a bitmask layer holds more bytes than dense INT4, whatever its values


@dataclass
class SparseRewrite:
    """What the rewrite did: per rewritten layer its shape, zeros and packed bytes; the MatMuls it left dense."""

    sparse_format: str
    layers: dict[str, dict] = field(default_factory=dict)
    kept_dense: dict[str, str] = field(default_factory=dict)  # name -> why

    @property
    def weights(self) -> int:
        return sum(layer["numel"] for layer in self.layers.values())

    @property
    def packed_bytes(self) -> int:
        return sum(layer["packed_bytes"] for layer in self.layers.values())


def _constant_weight(matmul) -> np.ndarray | None:
    source = matmul.input_value(1).get_node()
    if source.get_type_name() == "Convert":
        source = source.input_value(0).get_node()
    if source.get_type_name() != "Constant":
        return None
    return source.get_data()


def _why_dense(matmul, weight: np.ndarray | None, min_sparsity: float) -> str | None:
    if "lm_head" in matmul.get_friendly_name():
        return "the LM head stays a dense MatMul"
    if weight is None:
        return "its weight is not a float constant (already compressed, or computed)"
    if not matmul.get_attributes().get("transpose_b", False) or weight.ndim != 2:
        return "not a [N, K] weight multiplied transposed"
    if weight.shape[1] % 64:
        return f"K = {weight.shape[1]} is not a multiple of 64"
    if matmul.input_value(0).get_element_type().get_type_name() != "f32":
        return "its input is not f32"
    sparsity = float((weight == 0).mean())
    if sparsity < min_sparsity:
        return f"{sparsity:.0%} zeros, under {min_sparsity:.0%}"
    return None


def rewrite_sparse(model, sparse_format: str, min_sparsity: float = MIN_SPARSITY) -> SparseRewrite:
    """Replace `model`'s sparse MatMuls (an `openvino.Model`, changed in place) by SparseFullyConnected nodes."""
    if sparse_format not in SPARSE_FORMATS:
        raise ConfigError(f"unknown --sparse-format {sparse_format!r}: choose {', '.join(SPARSE_FORMATS)}")
    report = SparseRewrite(sparse_format)
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        name = node.get_friendly_name()
        if node.input_value(1).get_node().get_type_name() not in ("Constant", "Convert", "Multiply", "Subtract"):
            continue  # an activation times an activation (attention, rotary): no weight
        weight = _constant_weight(node)
        why = _why_dense(node, weight, min_sparsity)
        if why:
            report.kept_dense[name] = why
            continue
        weight = np.asarray(weight, dtype=np.float32)
        packed = pack(weight, SPARSE_FORMATS[sparse_format])
        sparse = sparse_fully_connected(node.input_value(0), packed)
        sparse.set_friendly_name(name)
        node.output(0).replace(sparse.output(0))
        report.layers[name] = {"shape": list(weight.shape), "numel": int(weight.size),
                               "zeros": int((weight == 0).sum()), "packed_bytes": packed.nbytes}
    if not report.layers:
        reasons = sorted(set(report.kept_dense.values()))
        raise ConfigError(f"--sparse-format {sparse_format}: no MatMul of this model is sparse enough to pack "
                          f"(at least {min_sparsity:.0%} zeros, K a multiple of 64); seen: {'; '.join(reasons)}")
    return report
