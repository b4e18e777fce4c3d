import json

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import torch

from sqft_ov.errors import SqftError
from sqft_ov.io.checkpoint import load_causal_lm, read_tensor, safetensors_index
from sqft_ov.io.ir import _weight_inputs, iter_ir_weights
from sqft_ov.io.runtime import SPARSE_RATE, open_llm_pipeline, open_ov_model
from sqft_ov.stages.export import ExportConfig, export

F32 = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}  # STACK.md's parity settings
STORAGE = {"fp16": {"f16"}, "int8": {"u8"}, "int4": {"u4", "u8"}}


def _openvino_dequantized(ir_dir):
    """Each weight as OpenVINO itself computes it from the IR's constants (independent of sqft_ov.io.ir)."""
    core = ov.Core()
    model = core.read_model(ir_dir / "openvino_model.xml")
    out = {}
    for name, weight_input, transpose, rows in _weight_inputs(model):
        try:
            sub = ov.Model([ops.result(ops.convert(weight_input, "f32"))], [], name)
        except RuntimeError:  # depends on a Parameter (e.g. the rotary embedding's matmul): not a weight
            continue
        value = core.compile_model(sub, "CPU", F32).create_infer_request().infer({})[0]
        value = value[slice(*rows)] if rows else value  # a fused projection's rows
        out[name] = value.T if transpose else value
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("fmt", ["fp16", "int8", "int4"])
def test_every_source_zero_is_zero_in_the_ir(exported, sparse_models, arch, fmt):
    ir = exported(arch, fmt)
    index = safetensors_index(sparse_models[arch])
    weights = _openvino_dequantized(ir)
    ours = {w.name: w for w in iter_ir_weights(ir)}
    assert set(weights) == set(ours) and len(weights) == 16  # 14 linears + embeddings + lm_head
    assert {w.storage for w in ours.values()} == STORAGE[fmt]
    source_zeros = 0
    for name, value in weights.items():
        source = read_tensor(index, name).float().numpy()
        np.testing.assert_array_equal(ours[name].values, value)  # our reader == OpenVINO's own arithmetic
        zero = source == 0
        source_zeros += int(zero.sum())
        assert (value[zero] == 0).all(), f"{name}: a source zero is nonzero in the {fmt} IR"
    assert source_zeros > 0.45 * sum(v.size for k, v in weights.items() if "layers" in k)
    record = json.loads((ir / "sqft_export.json").read_text())
    assert record["settings"]["weight_format"] == fmt
    assert all(w["zeros_kept"] == w["source_zeros"] for w in record["weights"].values())
    assert sum(w["source_zeros"] for w in record["weights"].values()) == source_zeros
    assert record["source"] == str(sparse_models[arch])
    if fmt != "fp16":
        rt = ov.Core().read_model(ir / "openvino_model.xml").get_rt_info(["sqft_ov", "provenance"]).astype(str)
        assert json.loads(rt)["source"] == record["source"]
        assert json.loads(rt)["settings"]["group_size"] == (64 if fmt == "int4" else -1)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("fmt", ["fp16", "int8", "int4"])
def test_openvino_logits_match_torch_on_the_same_weights(exported, sparse_models, arch, fmt):
    """Torch with the IR's dequantized weights vs OpenVINO: the graph, not just the weights, is right."""
    ir = exported(arch, fmt)
    model, tok = load_causal_lm(sparse_models[arch], dtype=torch.float32)
    state = model.state_dict()
    with torch.no_grad():
        for weight in iter_ir_weights(ir):
            state[weight.name].copy_(torch.from_numpy(weight.values))
        ids = tok("Omar plants 31 flowers. Then, Omar counts 5 more.", return_tensors="pt").input_ids
        reference = model(ids).logits[0].numpy()
    ov_model = open_ov_model(ir, properties=F32)
    logits = ov_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()
    assert np.abs(logits - reference).max() < 2e-3


@pytest.mark.parametrize("arch,fmt", [("qwen2", "fp16"), ("qwen2", "int4"), ("llama", "int8"), ("llama", "int4")])
def test_ir_generates_through_optimum_and_genai(exported, arch, fmt):
    ir = exported(arch, fmt)
    for name in ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json",
                 "generation_config.json", "tokenizer.json"):
        assert (ir / name).is_file(), name
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ir)
    ids = tok("Ana buys 3 apples.", return_tensors="pt").input_ids
    out = OVModelForCausalLM.from_pretrained(str(ir)).generate(ids, max_new_tokens=6, do_sample=False,
                                                               min_new_tokens=6)
    assert out.shape[1] == ids.shape[1] + 6
    import openvino_genai

    config = openvino_genai.GenerationConfig()
    config.max_new_tokens, config.ignore_eos = 6, True
    result = openvino_genai.LLMPipeline(str(ir), "CPU").generate(["Ana buys 3 apples."], config)
    assert len(result.texts) == 1 and result.perf_metrics.get_num_generated_tokens() == 6


@pytest.mark.slow
def test_w8a8_with_sparse_rate(sparse_models, calibration_txt, tmp_path):
    ir = tmp_path / "w8a8"
    report = export(sparse_models["llama"], ir, ExportConfig(
        weight_format="int8-w8a8", calibration=str(calibration_txt), num_samples=4, seq_len=32, sparse_rate=0.5,
        device="CPU"))
    assert {w["storage"] for w in report.weights.values()} == {"i8"}
    assert report.zeros_kept == report.source_zeros > 0
    config = json.loads((ir / "runtime_config.json").read_text())
    assert config == {SPARSE_RATE: "0.5"}
    model = ov.Core().read_model(ir / "openvino_model.xml")
    assert not model.has_rt_info(["runtime_options", SPARSE_RATE])  # the CPU plugin would not read it there
    assert SPARSE_RATE in "".join(report.sparse_decompression["pass_to_loaders"])
    sd = report.sparse_decompression
    assert sd["can_engage_here"] == sd["cpu_has_amx"] and sd["rate"] == 0.5
    assert report.settings["compiled_on"]["fully_connected_primitives"]  # kernels were chosen on a real run
    ov_model = open_ov_model(ir)
    assert float(ov_model.request.get_compiled_model().get_property(SPARSE_RATE)) == 0.5
    text = open_llm_pipeline(ir).generate("Ana buys", max_new_tokens=3)
    assert isinstance(str(text), str)
    assert json.loads((ir / "sqft_export.json").read_text())["sparse_decompression"]["rate"] == 0.5


def test_group_size_that_does_not_divide(sparse_models, tmp_path):
    with pytest.raises(SqftError, match="--group-size 48 does not divide .*--group-size-fallback"):
        export(sparse_models["llama"], tmp_path / "g48", ExportConfig(weight_format="int4", group_size=48))
    assert not (tmp_path / "g48").exists()
    report = export(sparse_models["llama"], tmp_path / "g48a",
                    ExportConfig(weight_format="int4", group_size=48, group_size_fallback="adjust"))
    assert report.zeros_kept == report.source_zeros


def test_default_group_size_adjusts_layers_it_does_not_divide(tmp_path):
    """Hidden 192 (as SmolLM2-135M's 576): the default group 128 falls back to 64 there, and says so."""
    from sqft_ov.quickstart.tiny import TinyModelConfig, build_tiny_model

    model = build_tiny_model(tmp_path / "h192", TinyModelConfig(hidden=192, intermediate=384, heads=4, kv_heads=2))
    report = export(model, tmp_path / "ir", ExportConfig(weight_format="int4"))
    adjusted = report.settings["group_size_exceptions"]
    assert report.settings["group_size"] == 128 and report.settings["group_size_fallback"] == "adjust"
    assert set(adjusted.values()) == {64} and len(adjusted) == 12  # q, k, v, o, gate, up per block; not down
    assert not any("down_proj" in name for name in adjusted)
    assert report.settings["group_sizes"] == ("group size 128, adjusted to 64 on 12 layers whose input size 192 "
                                              "it does not divide")
    record = json.loads((tmp_path / "ir" / "sqft_export.json").read_text())
    assert record["settings"]["group_size_exceptions"] == adjusted
    with pytest.raises(SqftError, match="^--group-size 128 does not divide .*--group-size-fallback adjust"):
        export(model, tmp_path / "g128", ExportConfig(weight_format="int4", group_size=128))
    assert not (tmp_path / "g128").exists()


def test_bad_input_writes_nothing(tiny_models, sparse_models, exported, tmp_path):
    from transformers import BertConfig

    with pytest.raises(SqftError, match="does not exist"):
        export(tmp_path / "missing", tmp_path / "o1")
    BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               architectures=["BertForMaskedLM"]).save_pretrained(tmp_path / "bert")
    with pytest.raises(SqftError, match="not a causal language model"):
        export(tmp_path / "bert", tmp_path / "o2")
    with pytest.raises(SqftError, match="not available here"):
        export(sparse_models["llama"], tmp_path / "o3", ExportConfig(device="NPU7"))
    with pytest.raises(SqftError, match="--dataset"):
        export(sparse_models["llama"], tmp_path / "o4", ExportConfig(weight_format="int8-w8a8"))
    with pytest.raises(SqftError, match="unknown --weight-format"):
        ExportConfig(weight_format="int3")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
    existing = exported("llama", "int4")
    stamp = (existing / "openvino_model.bin").stat().st_mtime_ns
    with pytest.raises(SqftError, match="--overwrite"):
        export(sparse_models["llama"], existing, ExportConfig(weight_format="fp16"))
    assert (existing / "openvino_model.bin").stat().st_mtime_ns == stamp


def test_a_failing_export_leaves_no_output(sparse_models, tmp_path, monkeypatch):
    import sqft_ov.stages.export as module

    def boom(*_args, **_kwargs):
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(module, "verify_zeros", boom)
    with pytest.raises(RuntimeError, match="half-way"):
        export(sparse_models["qwen2"], tmp_path / "out", ExportConfig(weight_format="int8"))
    assert list(tmp_path.iterdir()) == []  # neither OUTPUT nor the temporary folder beside it


def test_bf16_source_keeps_zeros(tmp_path):
    """Real checkpoints are often bf16; optimum traces those through its own `ov_ext::linear` ops."""
    from sqft_ov.quickstart.tiny import TinyModelConfig, build_tiny_model
    from sqft_ov.stages.sparsify import SparsityConfig, sparsify_folder

    base = build_tiny_model(tmp_path / "bf16", TinyModelConfig(layers=1, dtype="bfloat16"))
    sparsify_folder(base, tmp_path / "sparse", SparsityConfig("magnitude", pattern="2:4"))
    report = export(tmp_path / "sparse", tmp_path / "ir", ExportConfig(weight_format="int4", group_size=64))
    assert len(report.weights) == 9 and report.source_zeros > 0
    assert report.zeros_kept == report.source_zeros
