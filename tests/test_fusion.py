"""Export's projection fusion (sqft_ov.io.ir_fusion): fewer FullyConnected nodes, the same model.

`export` fuses by default, so every other export test already runs on fused IRs (test_export: each weight read
back equals OpenVINO's own dequantization, logits equal torch's on the IR's weights); here: fused against
unfused, what is and is not fused, and where fusion is refused.
"""

from __future__ import annotations

import json

import numpy as np
import openvino as ov
import pytest
import torch
from openvino import opset13 as ops

from sqft_ov.errors import ConfigError
from sqft_ov.io.ir import fused_parts, iter_ir_weights
from sqft_ov.io.ir_fusion import FUSED_PREFIX, fuse_projections
from sqft_ov.io.runtime import fully_connected_primitives, open_llm_pipeline, open_ov_model, run_prefill
from sqft_ov.stages.export import ExportConfig, export

F32 = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}  # STACK.md's parity settings
PROMPT = [5, 17, 42, 8, 99, 23, 61, 3]


@pytest.fixture(scope="module")
def unfused(workdir, sparse_models):
    cache = {}

    def get(arch: str, **options) -> object:
        key = (arch, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = workdir / f"ir-{arch}-unfused-{len(cache)}"
            export(sparse_models[arch], cache[key], ExportConfig(group_size=64, fuse_projections=False, **options))
        return cache[key]

    return get


def _weights(ir) -> dict:
    return {w.name: (w.storage, w.values) for w in iter_ir_weights(ir)}


def _logits(ir) -> np.ndarray:
    model = open_ov_model(ir, properties=F32)
    ids = torch.tensor([PROMPT])
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()


def _fc_count(ir) -> int:
    compiled = ov.Core().compile_model(ir / "openvino_model.xml", "CPU", F32)
    run_prefill(compiled)
    return len(fully_connected_primitives(compiled))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_ir_is_the_same_model_with_fewer_nodes(exported, unfused, arch):
    fused, plain = exported(arch, "int4"), unfused(arch)
    record = json.loads((fused / "sqft_export.json").read_text())["settings"]
    assert record["fused_projections"].startswith("10 MatMuls into 4")  # 2 layers: q/k/v and gate/up each
    assert "fused_projections" not in json.loads((plain / "sqft_export.json").read_text())["settings"]
    parts = fused_parts(ov.Core().read_model(fused / "openvino_model.xml"))
    assert sorted(sorted(name.split("/")[0].rsplit(".", 1)[-1] for name, _ in group) for group in parts.values()) == \
        [["gate_proj", "up_proj"]] * 2 + [["k_proj", "q_proj", "v_proj"]] * 2
    ours, theirs = _weights(fused), _weights(plain)
    assert set(ours) == set(theirs) and len(ours) == 16  # every projection still read under its own name
    for name, (storage, values) in theirs.items():
        assert ours[name][0] == storage
        np.testing.assert_array_equal(ours[name][1], values)
    np.testing.assert_array_equal(_logits(fused), _logits(plain))  # the same products, bit for bit in f32
    assert _fc_count(plain) - _fc_count(fused) == 6


def test_genai_generates_the_same_tokens(exported, unfused):
    fused, plain = exported("llama", "int4"), unfused("llama")
    import openvino_genai

    config = openvino_genai.GenerationConfig(max_new_tokens=12, min_new_tokens=12, ignore_eos=True, do_sample=False)
    ids = ov.Tensor(np.array([PROMPT], dtype=np.int64))
    tokens = [list(open_llm_pipeline(ir, "CPU", F32).generate(ids, config).tokens[0]) for ir in (fused, plain)]
    assert tokens[0] == tokens[1] and len(tokens[0]) == 12


def test_projections_of_different_precision_are_fused_only_with_their_kind(workdir, sparse_models, unfused):
    """NNCF's mixed precision keeps some layers INT8: a chain of another shape joins no INT4 group."""
    options = dict(ratio=0.5, backup_precision="int8_asym")
    fused = workdir / "ir-llama-mixed-fused"
    export(sparse_models["llama"], fused, ExportConfig(group_size=64, **options))
    plain = unfused("llama", **options)
    ours, theirs = _weights(fused), _weights(plain)
    assert {s for s, _ in theirs.values()} >= {"u4", "u8"}
    for group in fused_parts(ov.Core().read_model(fused / "openvino_model.xml")).values():
        kinds = {theirs[name.split("/")[0].removeprefix("__module.") + ".weight"][0] for name, _ in group}
        assert len(kinds) == 1, group
    for name, (storage, values) in theirs.items():
        assert ours[name][0] == storage
        np.testing.assert_array_equal(ours[name][1], values)
    np.testing.assert_array_equal(_logits(fused), _logits(plain))


def _graph():
    """x -> three f16 MatMuls (two [out, in] transposed, one [in, out]) and one on another input."""
    rng = np.random.default_rng(0)
    x, y = ops.parameter([1, 8], np.float32, name="x"), ops.parameter([1, 8], np.float32, name="y")

    def linear(source, out, name, transpose_b=True):
        shape = (out, 8) if transpose_b else (8, out)
        weight = ops.convert(ops.constant(rng.standard_normal(shape).astype(np.float16)), np.float32)
        node = ops.matmul(source, weight, False, transpose_b)
        node.set_friendly_name(f"__module.{name}/aten::linear/MatMul")
        return node

    outs = [linear(x, 4, "a"), linear(x, 6, "b"), linear(x, 5, "c", transpose_b=False), linear(y, 4, "d")]
    return ov.Model([ops.result(o) for o in outs], [x, y])


def test_fuse_projections_fuses_only_siblings_with_transposed_weights():
    model = _graph()
    feed = {"x": np.arange(8, dtype=np.float32)[None], "y": np.ones((1, 8), np.float32)}
    before = ov.Core().compile_model(model.clone(), "CPU", F32)(feed)
    record = fuse_projections(model)
    assert [sorted(parts) for parts in record.values()] == [[("__module.a/aten::linear/MatMul", 4),
                                                             ("__module.b/aten::linear/MatMul", 6)]]
    assert next(iter(record)).startswith(FUSED_PREFIX)
    assert fuse_projections(model) == record  # nothing left to fuse; the record kept
    after = ov.Core().compile_model(model, "CPU", F32)(feed)
    for i in range(4):
        np.testing.assert_array_equal(after[i], before[i])
    assert {w.name for w in iter_ir_weights(model)} == {"a.weight", "b.weight", "c.weight", "d.weight"}


def test_fusion_is_refused_where_it_cannot_hold(trained, tmp_path):
    with pytest.raises(ConfigError, match="int8-w8a8"):
        ExportConfig(weight_format="int8-w8a8", calibration="x.txt", fuse_projections=True)
    from sqft_ov.stages.export_adapter import export_adapter

    with pytest.raises(ConfigError, match="runtime adapter"):
        export_adapter(trained("lora"), tmp_path / "ir", ExportConfig(fuse_projections=True))
    assert not (tmp_path / "ir").exists()
