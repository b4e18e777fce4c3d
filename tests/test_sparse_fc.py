"""The SparseFullyConnected extension: packing keeps every zero, the op computes what numpy says on either kernel
path, an IR holding it round-trips, and a build without a compiler fails clearly."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from sqft_ov.errors import ConfigError, SqftError
from sqft_ov.io.sparse_fc.pack import pack, reference


def pruned(shape: tuple[int, int], sparsity: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < sparsity] = 0.0
    return w


@pytest.mark.parametrize("bits", [8, 4])
def test_pack_keeps_zeros_and_codes(bits):
    w = pruned((40, 192), 0.6)  # three blocks of 64: an odd count
    w[3] = 0.0  # an all-zero row
    packed = pack(w, bits)
    codes = packed.codes()
    assert not codes[w == 0].any()  # every zero stays zero
    low, high = (-127, 127) if bits == 8 else (-8, 7)
    assert codes.min() >= low and codes.max() <= high
    error = np.abs(packed.dequantized() - w).max() / np.abs(w).max()
    assert error < (0.01 if bits == 8 else 0.15)
    assert packed.offsets.dtype == np.int32 and packed.scales.dtype == np.float16
    assert packed.nbytes < w.size * (1.0 if bits == 8 else 0.6)  # fewer bytes than dense INT8 / INT4 at 60 %


def test_pack_refuses_bad_input():
    with pytest.raises(ConfigError, match="multiple of 64"):
        pack(np.ones((8, 100), np.float32), 8)
    with pytest.raises(ConfigError, match="8 or 4"):
        pack(np.ones((8, 64), np.float32), 2)


OP_CHECK = r"""
import sys
import numpy as np
import openvino as ov
import openvino.opset13 as ops
from sqft_ov.io.sparse_fc.op import sparse_fully_connected, with_extension
from sqft_ov.io.sparse_fc.pack import pack, reference

rng = np.random.default_rng(0)
worst = 0.0
for bits in (8, 4):
    for n, k, tokens in ((96, 192, 1), (130, 128, 5), (256, 512, 3)):
        w = rng.standard_normal((n, k)).astype(np.float32)
        w[rng.random((n, k)) < 0.6] = 0.0
        packed = pack(w, bits)
        x = ops.parameter([-1, -1, k], np.float32, name="x")
        model = ov.Model([sparse_fully_connected(x.output(0), packed).output(0)], [x])
        inputs = rng.standard_normal((2, tokens, k)).astype(np.float32)
        out = with_extension(ov.Core()).compile_model(model, "CPU")({0: inputs})[0]
        expected = reference(packed, inputs)
        assert out.shape == (2, tokens, n), out.shape
        worst = max(worst, float(np.abs(out - expected).max() / np.abs(expected).max()))
        path = sys.argv[1] + f"/sfc-{bits}-{n}.xml"
        ov.save_model(model, path)  # f16 compression of the IR leaves the op's own constants as they are
        again = with_extension(ov.Core()).compile_model(path, "CPU")({0: inputs})[0]
        assert np.array_equal(again, out), "IR round trip changed the output"
print(worst)
"""


@pytest.mark.parametrize("kernel", ["default", "plain"])
def test_op_matches_numpy_on_either_path(tmp_path, kernel):
    """The CPU's fastest path (AVX-512 where it has the instructions) and the plain C++ path compute the sums
    numpy computes from the same integer codes; a subprocess, since the path is chosen when the library loads."""
    env = {**os.environ, "SQFT_OV_CACHE": os.environ.get("SQFT_OV_CACHE", str(tmp_path / "cache"))}
    if kernel == "plain":
        env["SQFT_OV_SPARSE_FC_KERNEL"] = "plain"
    done = subprocess.run([sys.executable, "-c", OP_CHECK, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5


def test_op_is_close_to_the_dense_weight():
    """What the op computes differs from the float weight times the float input only by INT8 input rounding."""
    w = pruned((64, 256), 0.7, seed=1)
    packed = pack(w, 8)
    x = np.random.default_rng(2).standard_normal((3, 256)).astype(np.float32)
    dense = x @ packed.dequantized().T
    assert np.abs(reference(packed, x) - dense).max() / np.abs(dense).max() < 0.02


def test_build_without_a_compiler_says_so(tmp_path, monkeypatch):
    from sqft_ov.io.sparse_fc import build

    monkeypatch.setenv("SQFT_OV_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-sqft")
    with pytest.raises(SqftError, match="C\\+\\+ compiler"):
        build.extension_library()
    assert not any(tmp_path.rglob("*.so"))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_export_sparse_format_keeps_zeros_and_tokens(sparse_models, exported, tmp_path, arch):
    """`export --sparse-format bitmask-int8`: every decoder linear becomes a SparseFullyConnected node whose unpacked
    weight keeps every zero (the export's own check), the LM head stays a MatMul, and genai and optimum-intel load the
    IR through sqft-ov's loaders; greedy tokens equal the same model's INT8 IR (qwen2: q/k/v biases stay Adds)."""
    import openvino_genai

    from sqft_ov.io.runtime import open_llm_pipeline, open_ov_model
    from sqft_ov.io.sparse_fc.op import OP_TYPE, needs_extension
    from sqft_ov.stages.export import ExportConfig, export

    ir = tmp_path / "ir-sparse"
    report = export(sparse_models[arch], ir, ExportConfig(sparse_format="bitmask-int8"))
    record = report.settings["sparse_fc"]
    assert record["layers"] == 14 and "lm_head" in " ".join(record["kept_dense"])
    sparse_weights = [w for w in report.weights.values() if w["storage"] == "bitmask-int8"]
    assert len(sparse_weights) == 14 and all(w["zeros_kept"] == w["source_zeros"] > 0 for w in sparse_weights)
    assert needs_extension(ir) and f'type="{OP_TYPE}"' in (ir / "openvino_model.xml").read_text()
    from sqft_ov.measure.bench.worker import fc_primitives

    assert fc_primitives({"path": str(ir), "device": "CPU", "properties": {}})[OP_TYPE] == 14  # bench's kernel column
    config = openvino_genai.GenerationConfig(max_new_tokens=10, do_sample=False)
    tokens = {path: str(open_llm_pipeline(path).generate("Mia has 3 pens", config)) for path in (ir, exported(arch, "int8"))}
    assert tokens[ir] == tokens[exported(arch, "int8")]
    import torch

    logits = open_ov_model(ir)(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.ones((1, 3), dtype=torch.int64))
    assert torch.isfinite(logits.logits).all()


def test_export_sparse_format_refusals(tiny_models, tmp_path):
    from sqft_ov.stages.export import ExportConfig, export

    with pytest.raises(ConfigError, match="unknown --sparse-format"):
        ExportConfig(sparse_format="bitmask-int2")
    with pytest.raises(ConfigError, match="does not combine with --awq"):
        ExportConfig(sparse_format="bitmask-int8", awq=True, calibration="data.txt")
    with pytest.raises(ConfigError, match="does not combine with --sparse-rate"):
        ExportConfig(sparse_format="bitmask-int4", sparse_rate=0.5)
    with pytest.raises(ConfigError, match="no MatMul of this model is sparse enough"):
        export(tiny_models["llama"], tmp_path / "dense", ExportConfig(sparse_format="bitmask-int8"))
    assert not (tmp_path / "dense").exists()  # nothing half-written
