"""SQFT unmerged: a lora finetune output exported as the base's IR + a LoRA adapter openvino_genai applies at runtime.

Parity is checked token by token, teacher-forced: genai generates greedily with the adapter, then PyTorch (the base
+ the adapter, PEFT or sqft-ov's NLS / INT4-base rebuild) scores the same sequence, and at every step genai's token
must be PyTorch's argmax or within TOL of it (EOS aside: genai's min_new_tokens bans it). OpenVINO runs with an f32
inference precision, f32 KV cache and no dynamic activation quantization (the CPU defaults, bf16 / u8, move logits
by ~1e-2; with these settings OV and PyTorch logits on the same weights agreed to ~4e-4 on an INT4 IR, and
tests/test_export.py bounds them by 2e-3), and the PyTorch base gets the IR's own weights (fp16-rounded, or the INT4
grid it was trained on, which the IR reproduces up to its fp16 scales, ~1.5e-5 per weight). Tokens can then differ
only at a near-tie (top-2 logits within TOL), where the check accepts either. Measured on the tiny model: the gap
was 0.0 at every step in all three cases (identical greedy tokens). That the tolerance cannot hide a missing adapter
is checked too: the bare base scores the adapter's tokens with a gap of ~0.9 (required: over 100 x TOL).
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import FIELDS, train
from test_cli import assert_one_line_error, sqft

F32 = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0", "KV_CACHE_PRECISION": "f32"}
TOL = 1e-3  # logits: above OV-vs-PyTorch's ~4e-4 under F32, far below what the adapter moves (~0.9)
NEW = 12


@pytest.fixture(scope="module")
def prompts(sparse_models, sft_data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sparse_models["llama"])
    rows = [json.loads(line) for line in sft_data.read_text().splitlines()[:3]]
    return [tokenizer(r["question"]).input_ids for r in rows]


@pytest.fixture(scope="module")
def fp16_export(trained, tmp_path_factory):
    from sqft_ov.stages.export import ExportConfig
    from sqft_ov.stages.export_adapter import export_adapter

    out = tmp_path_factory.mktemp("rt") / "lora-fp16"
    report = export_adapter(trained("lora"), out, ExportConfig(weight_format="fp16"))
    return out, report


def genai_tokens(ir, prompts, adapter: bool = True) -> list[list[int]]:
    import numpy as np
    import openvino as ov
    import openvino_genai

    from sqft_ov.io.ir_adapter import find_runtime_adapter, genai_adapter_config
    from sqft_ov.io.runtime import open_llm_pipeline

    adapters = genai_adapter_config(find_runtime_adapter(ir)) if adapter else None
    pipe = open_llm_pipeline(ir, "CPU", F32, adapters)
    config = openvino_genai.GenerationConfig(max_new_tokens=NEW, min_new_tokens=NEW, ignore_eos=True, do_sample=False)
    if adapters is not None:
        config.adapters = adapters
    return [[int(t) for t in pipe.generate(ov.Tensor(np.array([ids], dtype=np.int64)), config).tokens[0]]
            for ids in prompts]


def worst_gap(model, prompts, generated) -> float:
    """Largest (PyTorch's best logit - its logit of genai's token) over every step: 0 where the tokens agree.
    EOS is left out, as genai's min_new_tokens leaves it out."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for prompt, tokens in zip(prompts, generated):
            logits = model(input_ids=torch.tensor([prompt + tokens[:-1]])).logits[0, len(prompt) - 1:].float()
            logits[:, model.generation_config.eos_token_id] = -torch.inf
            chosen = logits.gather(1, torch.tensor(tokens)[:, None])[:, 0]
            worst = max(worst, float((logits.max(-1).values - chosen).max()))
    return worst


def round_to_fp16(model):
    """The weights an fp16 IR holds (optimum stores every float constant as f16), in float32."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" not in name:
                param.copy_(param.half().float())
    return model


def test_export_writes_the_base_ir_and_a_genai_adapter(fp16_export, trained):
    from safetensors.torch import load_file

    out, report = fp16_export
    record = json.loads((out / "sqft_export.json").read_text())["runtime_adapter"]
    assert record["file"] == "adapter/adapter_model.safetensors" and record["alpha"] == 1.0
    assert record["base"] == json.loads((trained("lora") / "sqft_adapter.json").read_text())["base"]
    assert record["peft_scaling"] == 16 / 8  # lora_alpha (2 x rank) / rank
    tensors = load_file(out / record["file"])
    assert len(tensors) == 2 * record["layers"] == 20
    assert all(k.startswith("base_model.model.model.layers.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
               for k in tensors)
    assert report.settings["weight_format"] == "fp16" and report.zeros_kept == report.source_zeros > 0
    # the IR serves the adapter, trained on plain prompts: genai must not wrap them in the chat template
    assert report.settings["trained_with_chat_template"] is False and report.settings["chat_template"] == "dropped"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_genai_with_the_adapter_is_pytorch_base_plus_adapter(fp16_export, trained, sparse_models, prompts):
    from sqft_ov.adapters.adapted import load_for_inference

    out, _ = fp16_export
    generated = genai_tokens(out, prompts)
    bare = genai_tokens(out, prompts, adapter=False)
    assert generated != bare  # the adapter changes what the IR generates
    model, _ = load_for_inference(sparse_models["llama"], trained("lora"), "float32")  # PEFT
    gap = worst_gap(round_to_fp16(model), prompts, generated)
    assert gap <= TOL, gap
    base, _ = load_for_inference(sparse_models["llama"], None, "float32")
    assert worst_gap(round_to_fp16(base), prompts, generated) > 100 * TOL  # the check can fail
    assert worst_gap(round_to_fp16(base), prompts, bare) <= TOL  # the bare IR is the base


def test_nls_sub_adapter_ranks(trained, sparse_models, prompts, tmp_path):
    from safetensors.torch import load_file

    from sqft_ov.adapters.adapted import load_for_inference
    from sqft_ov.stages.export import ExportConfig
    from sqft_ov.stages.export_adapter import export_adapter

    adapter = trained("lora", nls=True)  # rank space 16, 12, 8
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps({"ranks": [8, 12]}))
    report = export_adapter(adapter, tmp_path / "ir", ExportConfig(weight_format="fp16"), sub_adapter=sub)
    assert report.runtime_adapter["ranks"] == [8, 12] and report.runtime_adapter["peft_scaling"] == 32 / 16
    tensors = load_file(tmp_path / "ir" / "adapter" / "adapter_model.safetensors")
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape[0] == 8
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape[1] == 12
    generated = genai_tokens(tmp_path / "ir", prompts)
    model, _ = load_for_inference(sparse_models["llama"], adapter, "float32", sub)  # sqft-ov's elastic forward
    assert worst_gap(round_to_fp16(model), prompts, generated) <= TOL


def test_int4_base_adapter_on_its_grid(sparse_models, sft_data, prompts, tmp_path):
    from sqft_ov.adapters.adapted import activate, load_adapted
    from sqft_ov.errors import ConfigError
    from sqft_ov.stages.export import ExportConfig
    from sqft_ov.stages.export_adapter import export_adapter

    adapter = tmp_path / "lora-int4"
    train(sparse_models["llama"], sft_data, adapter, method="lora", int4="sym", rank=8, **FIELDS)
    with pytest.raises(ConfigError, match="drop --asym"):
        export_adapter(adapter, tmp_path / "no", ExportConfig(sym=False))
    with pytest.raises(ConfigError, match="drop --ratio"):
        export_adapter(adapter, tmp_path / "no", ExportConfig(ratio=0.5))
    assert not (tmp_path / "no").exists()
    report = export_adapter(adapter, tmp_path / "ir", ExportConfig())  # int4: the grid's sym / group size
    assert report.settings["nncf_mode"] == "int4_sym" and report.settings["group_size"] == 64
    generated = genai_tokens(tmp_path / "ir", prompts)
    adapted, _, _ = load_adapted(adapter)  # the snapped base + PEFT, as trained
    activate(adapted)
    # the IR's INT4 weights equal the snapped base's up to fp16 scales (~1e-5): a little more room than fp16
    assert worst_gap(adapted.model, prompts, generated) <= 2 * TOL


@pytest.mark.parametrize("edit", [None, {"method": "qa-sparsepeft"}, {"widths": {"mlp": [[128]], "kv_groups": [[1]]}}])
def test_methods_genai_cannot_apply_are_refused(trained, tmp_path, edit):
    from sqft_ov.errors import ConfigError
    from sqft_ov.stages.export_adapter import export_adapter

    if edit is None:
        adapter = trained("sparsepeft")
    else:  # the refusal reads the record only: a lora folder whose record says otherwise
        adapter = tmp_path / "edited"
        shutil.copytree(trained("lora"), adapter)
        record = json.loads((adapter / "sqft_adapter.json").read_text())
        (adapter / "sqft_adapter.json").write_text(json.dumps({**record, **edit}))
    with pytest.raises(ConfigError) as info:
        export_adapter(adapter, tmp_path / "ir")
    message = str(info.value)
    assert "\n" not in message and "sqft-ov merge" in message and "sqft-ov export MERGED" in message
    assert not (tmp_path / "ir").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_refusal_is_one_line(trained, tmp_path):
    adapter = tmp_path / "qa"
    shutil.copytree(trained("lora"), adapter)
    record = json.loads((adapter / "sqft_adapter.json").read_text())
    (adapter / "sqft_adapter.json").write_text(json.dumps({**record, "method": "qa-sparsepeft"}))
    assert_one_line_error(sqft("export", adapter, tmp_path / "ir"), "qa-sparsepeft", "sqft-ov merge")
    assert not (tmp_path / "ir").exists()
    assert_one_line_error(sqft("export", trained("lora"), tmp_path / "ir", "--sub-adapter", tmp_path / "x.json"),
                          "without --nls")


def test_eval_applies_the_adapter(fp16_export, sft_data, prompts):
    import numpy as np
    import openvino as ov
    import openvino_genai
    from transformers import AutoTokenizer

    from sqft_ov.errors import ConfigError
    from sqft_ov.io.ir_adapter import find_runtime_adapter, genai_adapter_config
    from sqft_ov.io.runtime import open_llm_pipeline
    from sqft_ov.io.sft_data import load_pairs, prompt_ids
    from sqft_ov.stages.evaluate import EvalConfig, evaluate

    out, _ = fp16_export
    config = dict(limit=4, max_new_tokens=8, properties=F32, **FIELDS)
    report = evaluate(out, sft_data, EvalConfig(**config))
    bare = evaluate(out, sft_data, EvalConfig(no_adapter=True, **config))
    assert report.runtime_adapter["alpha"] == 1.0 and report.response_loss is None
    assert bare.runtime_adapter is None and bare.response_loss is not None
    # the reference: genai's LLMPipeline with the adapter, on the same token ids, stopping at EOS as eval does
    tokenizer = AutoTokenizer.from_pretrained(out)
    adapters = genai_adapter_config(find_runtime_adapter(out))
    pipe = open_llm_pipeline(out, "CPU", F32, adapters)
    gen = openvino_genai.GenerationConfig(max_new_tokens=8, do_sample=False)
    gen.eos_token_id, gen.stop_token_ids, gen.adapters = tokenizer.eos_token_id, {tokenizer.eos_token_id}, adapters
    expected = []
    for prompt, _ in load_pairs(sft_data, FIELDS["data_format"])[:4]:
        ids = prompt_ids(tokenizer, prompt, FIELDS["data_format"])
        tokens = pipe.generate(ov.Tensor(np.array([ids], dtype=np.int64)), gen).tokens[0]
        expected.append(tokenizer.decode(tokens, skip_special_tokens=True))
    assert [s["generated"] for s in report.samples] == expected
    assert [s["generated"] for s in bare.samples] != expected  # eval did not score the bare base
    with pytest.raises(ConfigError, match="runtime LoRA adapter"):
        evaluate(out, sft_data, EvalConfig(metric="loss", **config))


def test_bench_applies_the_adapter(fp16_export, prompts):
    from sqft_ov.measure.bench import BenchConfig, BenchModel, bench

    out, _ = fp16_export
    settings = dict(prompt_tokens=8, new_tokens=4, repeats=1, warmup=0, bandwidth_gib=0, properties=F32,
                    probe=(prompts[0], NEW))
    with_adapter = bench([BenchModel(out)], BenchConfig(**settings)).models[0]
    bare = bench([BenchModel(out)], BenchConfig(no_adapter=True, **settings)).models[0]
    assert with_adapter["ok"] and bare["ok"], (with_adapter.get("error"), bare.get("error"))
    assert with_adapter["runtime_adapter"]["alpha"] == 1.0 and bare["runtime_adapter"] is None
    assert with_adapter["probe_tokens"] == genai_tokens(out, prompts[:1])[0]
    assert bare["probe_tokens"] == genai_tokens(out, prompts[:1], adapter=False)[0] != with_adapter["probe_tokens"]
