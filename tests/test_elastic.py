"""LoNAS / EFTNAS: importance reordering, elastic widths, sub-network search, extraction and its IR."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FIELDS, train


def _logits(model, tokenizer, texts=("Mia has 3 pens and buys 4 more.", "How many pens?")):
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits, batch["attention_mask"].bool()


@pytest.fixture(scope="module")
def gqa_models(tmp_path_factory):
    """Tiny Llama / Qwen2 / Phi-3 with 3 KV groups of 2 heads (Phi-3: fused qkv and gate_up projections)."""
    from sqft_ov.quickstart.tiny import TinyModelConfig, build_tiny_model

    root = tmp_path_factory.mktemp("gqa")
    return {arch: build_tiny_model(root / arch, TinyModelConfig(arch=arch, hidden=96, heads=6, kv_heads=3,
                                                                 intermediate=192))
            for arch in ("llama", "qwen2", "phi3")}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_permuting_units_keeps_logits_and_masks_equal_the_cut(arch, gqa_models):
    """Any order of channels and KV groups computes the same function; masking beyond widths = cutting."""
    import copy

    from sqft_ov.adapters.elastic import ElasticWidths, WidthSpace
    from sqft_ov.io.blocks import BlockWidth, Shape, decoder_layers, select, shrink
    from sqft_ov.io.checkpoint import load_causal_lm

    model, tok = load_causal_lm(gqa_models[arch], dtype=torch.float32)
    ref, mask = _logits(model, tok)
    shape = Shape.of(model.config)
    gen = torch.Generator().manual_seed(0)
    for layer in decoder_layers(model):
        select(layer, shape, torch.randperm(shape.intermediate, generator=gen), torch.randperm(3, generator=gen))
    permuted, _ = _logits(model, tok)
    assert torch.allclose(permuted[mask], ref[mask], atol=1e-5)

    widths = [BlockWidth(128, 2), BlockWidth(64, 1)]
    space = WidthSpace([[192, 128, 64]] * 2, [[3, 2, 1]] * 2)
    cut = copy.deepcopy(model)
    shrink(cut, widths)
    elastic = ElasticWidths(model, space)
    elastic.set(widths)
    masked, _ = _logits(model, tok)
    small, _ = _logits(cut, tok)
    assert torch.allclose(masked[mask], small[mask], atol=1e-5)
    layer = decoder_layers(cut)[1]  # GQA kept: whole KV groups left, 2 query heads each
    q_rows = (layer.self_attn.qkv_proj.weight.shape[0] - 2 * 16) if arch == "phi3" else layer.self_attn.q_proj.weight.shape[0]
    assert q_rows == 2 * 16  # 1 KV group x 2 heads x head_dim 16
    if arch != "phi3":
        assert layer.self_attn.k_proj.weight.shape[0] == 16 and layer.mlp.down_proj.weight.shape[1] == 64


def test_importance_reorders_without_changing_the_model_and_derives_a_space(tmp_path, gqa_models, sft_data):
    from sqft_ov.io.checkpoint import load_causal_lm
    from sqft_ov.stages.importance import ImportanceConfig, importance

    config = ImportanceConfig(keep=0.8, keep_heads=0.7, num_samples=16, **FIELDS)
    report = importance(gqa_models["llama"], sft_data, tmp_path / "ordered", config)
    before, tok = load_causal_lm(gqa_models["llama"], dtype=torch.float32)
    after, _ = load_causal_lm(tmp_path / "ordered", dtype=torch.float32)
    a, mask = _logits(before, tok)
    b, _ = _logits(after, tok)
    assert torch.allclose(a[mask], b[mask], atol=1e-5)
    for scores in report.mlp_scores + report.head_scores:  # most important first
        assert scores == sorted(scores, reverse=True) and scores[0] > 0
    space = json.loads((tmp_path / "ordered" / "search_space.json").read_text())
    assert len(space["blocks"]) == 2
    for block, mlp in zip(space["blocks"], report.mlp_scores):
        assert block["mlp"][0] == 192 and all(w % 32 == 0 for w in block["mlp"])
        assert block["mlp"] == sorted(block["mlp"], reverse=True)
        low = block["mlp"][-1]  # the smallest width keeps >= 80 % of the importance, 32 fewer would not
        assert sum(mlp[:low]) >= 0.8 * sum(mlp) - 1e-6 and (low == 32 or sum(mlp[:low - 32]) < 0.8 * sum(mlp))
        assert block["kv_groups"] == list(range(3, block["kv_groups"][-1] - 1, -1))


def test_sampler_follows_the_sandwich_rule_and_stays_in_the_space():
    from sqft_ov.adapters.elastic import WidthSpace
    from sqft_ov.adapters.nls import RankSampler

    space = WidthSpace([[256, 192, 128], [256, 128]], [[2, 1], [2]])
    sampler = RankSampler({0: ["a"], 1: ["b"]}, (8, 4), 3, None, space, lambda w: None)
    for step in range(40):
        ranks = sampler.sample(step)
        assert space.contains(sampler.current_widths) and set(ranks.values()) <= {8, 4}
        if step % 4 == 0:
            assert sampler.current_widths == space.largest() and set(ranks.values()) == {8}
        if step % 4 == 1:
            assert sampler.current_widths == space.smallest() and set(ranks.values()) == {4}
        assert sampler.sample(step) == ranks  # a function of (seed, step): a resumed run samples the same


@pytest.fixture(scope="module")
def lonas_run(tmp_path_factory, gqa_models, sft_data):
    """A LoNAS super-network on the reordered tiny Llama, a searched sub-network, merged and cut."""
    from sqft_ov.stages.importance import ImportanceConfig, importance
    from sqft_ov.stages.merge import merge
    from sqft_ov.stages.search import search

    root = tmp_path_factory.mktemp("lonas")
    ordered = importance(gqa_models["llama"], sft_data, root / "ordered", ImportanceConfig(num_samples=16, **FIELDS)).output
    train(ordered, sft_data, root / "adapter", method="sparsepeft", nls=True, rank_space=(8, 4),
          mlp_widths=(1.0, 0.5), head_widths=(1.0, 0.67), **FIELDS)
    chosen = search(root / "adapter", "hill-climb", budget=10, max_size=0.75)
    chosen.save(root / "sub.json", [8, 4])
    report = merge(root / "adapter", root / "merged", root / "sub.json")
    return root, chosen, report


def test_extracted_model_equals_the_super_network_at_its_configuration(lonas_run):
    from sqft_ov.adapters.adapted import activate, load_adapted
    from sqft_ov.io.checkpoint import load_causal_lm

    root, chosen, report = lonas_run
    assert chosen.decoder_share <= 0.75 and any((w.mlp, w.kv_groups) != (192, 3) for w in chosen.widths)
    assert report.widths == [{"mlp": w.mlp, "kv_groups": w.kv_groups} for w in chosen.widths]
    assert report.max_logit_diff < 1e-4
    adapted, tok, record = load_adapted(root / "adapter")
    activate(adapted, root / "sub.json")
    extracted, _ = load_causal_lm(root / "merged", dtype=torch.float32)
    a, mask = _logits(adapted.model, tok)
    b, _ = _logits(extracted, tok)
    assert torch.allclose(a[mask], b[mask], atol=1e-4)
    config = json.loads((root / "merged" / "config.json").read_text())
    assert config["sqft_layer_widths"] == report.widths
    full, _ = load_causal_lm(root / "ordered", dtype=torch.float32)
    assert sum(p.numel() for p in extracted.parameters()) < sum(p.numel() for p in full.parameters())


@pytest.mark.slow
def test_extracted_ir_has_the_smaller_shapes_and_generates_in_both_loaders(lonas_run, tmp_path):
    import openvino_genai
    from optimum.intel import OVModelForCausalLM

    from sqft_ov.io.checkpoint import load_causal_lm
    from sqft_ov.io.ir import iter_ir_weights
    from sqft_ov.stages.export import ExportConfig, export

    root, chosen, _ = lonas_run
    export(root / "merged", tmp_path / "int4", ExportConfig(weight_format="int4", group_size=32))
    shapes = {w.name: w.values.shape for w in iter_ir_weights(tmp_path / "int4")}
    for i, w in enumerate(chosen.widths):
        assert shapes[f"model.layers.{i}.mlp.down_proj.weight"] == (96, w.mlp)
        assert shapes[f"model.layers.{i}.self_attn.k_proj.weight"] == (w.kv_groups * 16, 96)
        assert shapes[f"model.layers.{i}.self_attn.q_proj.weight"] == (w.kv_groups * 2 * 16, 96)
    export(root / "merged", tmp_path / "fp16", ExportConfig(weight_format="fp16"))
    model, tok = load_causal_lm(root / "merged", dtype=torch.float32)
    ov = OVModelForCausalLM.from_pretrained(tmp_path / "fp16", ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    batch = tok(["Mia has 3 pens and buys 4 more. How many pens?"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(ov(**batch).logits, model(**batch).logits, atol=1e-2)
        same = ov.generate(**batch, max_new_tokens=6, do_sample=False) == model.generate(**batch, max_new_tokens=6,
                                                                                         do_sample=False)
    assert bool(same.all())
    for ir in (tmp_path / "int4", tmp_path / "fp16"):
        pipe = openvino_genai.LLMPipeline(str(ir), "CPU")
        assert isinstance(pipe.generate("Mia has 3 pens", max_new_tokens=4), str)


@pytest.mark.slow
def test_resumed_elastic_training_gives_the_same_adapter(tmp_path, sparse_models, sft_data):
    from safetensors.torch import load_file
    from test_kill import killed, sqft

    def args(out):
        return ["finetune", sparse_models["llama"], sft_data, out, "--prompt-field", "question", "--response-field",
                "answer", "--max-length", "64", "--max-steps", "6", "--save-steps", "2", "--batch-size", "4", "--nls",
                "--rank-space", "8 4", "--mlp-widths", "1.0 0.5", "--head-widths", "1.0 0.5", "--lr", "5e-3"]

    assert sqft(*args(tmp_path / "whole")).returncode == 0
    killed(sqft(*args(tmp_path / "resumed"), kill_at="finetune-step#5"))
    result = sqft(*args(tmp_path / "resumed"), "--resume")
    assert result.returncode == 0, result.stderr
    whole, resumed = load_file(tmp_path / "whole" / "sqft_trainable.safetensors"), load_file(
        tmp_path / "resumed" / "sqft_trainable.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.allclose(whole[name], resumed[name], atol=1e-6), name
    history = [json.loads((tmp_path / f / "nls_history.json").read_text()) for f in ("whole", "resumed")]
    assert [h["widths"] for h in history[0]] == [h["widths"] for h in history[1]]


@pytest.mark.parametrize("widths, message", [
    (dict(mlp_widths=(1.5,)), "outside (0, 1]"),
    (dict(mlp_widths=(0,)), "outside (0, 1]"),
    (dict(mlp_widths=(1.0, 4096)), "larger than the layer"),
    (dict(head_widths=(1.0, 0.4)), "breaks grouped-query attention"),
    (dict(head_widths=(3,)), "breaks grouped-query attention"),
])
def test_bad_widths_fail_in_one_line_and_write_nothing(tmp_path, sparse_models, sft_data, widths, message):
    from sqft_ov.errors import SqftError

    with pytest.raises(SqftError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(sparse_models["llama"], sft_data, tmp_path / "out", nls=True, rank_space=(8, 4), **widths, **FIELDS)
    assert not (tmp_path / "out").exists()


def test_a_search_space_for_another_model_is_refused(tmp_path, sparse_models, sft_data):
    from sqft_ov.errors import SqftError

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"blocks": [{"mlp": [256, 128], "kv_groups": [2, 1]}] * 5}))
    with pytest.raises(SqftError, match="5 decoder blocks but the model has 2"):
        train(sparse_models["llama"], sft_data, tmp_path / "out", search_space=str(space), **FIELDS)
    space.write_text(json.dumps({"blocks": [{"mlp": [512], "kv_groups": [2]}] * 2}))
    with pytest.raises(SqftError, match="does not fit the model's MLP of 256"):
        train(sparse_models["llama"], sft_data, tmp_path / "out", search_space=str(space), **FIELDS)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_eftnas_recipe_writes_a_smaller_ir_under_out(tmp_path, tiny_models):
    """The recipes' contract: `sqft-ov run recipes/X.py --model M --data D --out OUT --steps N` writes the
    sub-network's IR one folder below OUT, with fewer decoder MatMul weights than the full model's IR.
    (LoNAS runs the same `deploy_super_network`; `lonas_run` covers its own stages.)"""
    from test_quickstart import RECIPES, sqft

    from sqft_ov.io.ir import iter_ir_weights
    from sqft_ov.quickstart.arithmetic import write_task

    task = write_task(tmp_path / "task", 64, 8)
    out = tmp_path / "eftnas"
    result = sqft("run", RECIPES / "eftnas.py", "--model", tiny_models["llama"], "--data", task["train"].parent,
                  "--out", out, "--steps", "4", "--batch-size", "4", "--rank-space", "8 4", "--keep", "0.5",
                  "--keep-heads", "0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "EFTNAS" in result.stdout

    def decoder_elements(ir):
        return sum(w.values.size for w in iter_ir_weights(ir) if ".layers." in w.name)

    irs = list(out.glob("*/openvino_model.xml"))
    assert [p.parent.name for p in irs] == ["ir"]
    assert decoder_elements(out / "ir") < decoder_elements(out / "full" / "ir")
    chosen = json.loads((out / "sub_network.json").read_text())
    assert chosen["decoder_share"] < 1 and len(chosen["widths"]) == 2


def test_mlp_widths_round_to_whole_int4_groups():
    """LoNAS fractions become channel counts the recipe's --group-size divides (and 32, SIMD tiles)."""
    from sqft_ov.adapters.elastic import fit_mlp_widths, width_multiple
    from sqft_ov.errors import SqftError
    from sqft_ov.io.blocks import Shape

    assert (width_multiple(64), width_multiple(128), width_multiple(48), width_multiple(-1)) == (64, 128, 96, 32)
    shape = Shape(layers=2, hidden=128, intermediate=384, heads=4, kv_heads=2, head_dim=32)
    assert fit_mlp_widths(shape, (1.0, 0.75, 0.5), 64) == (384, 256, 192)  # 0.75 * 384 = 288: not whole groups
    assert fit_mlp_widths(shape, (1.0, 0.75, 0.5), 32) == (384, 288, 192)
    assert fit_mlp_widths(shape, (1.0, 0.5), 128) == (384, 256)
    with pytest.raises(SqftError, match="MLP width 288 .* not a multiple of --group-size 64"):
        fit_mlp_widths(shape, (1.0, 288), 64)  # an explicit channel count is taken as given
    small = Shape(layers=2, hidden=64, intermediate=96, heads=2, kv_heads=2, head_dim=32)
    with pytest.raises(SqftError, match="MLP width 96 .* of 96 channels.* --group-size 64"):
        fit_mlp_widths(small, (1.0, 0.5), 64)  # the MLP is narrower than two groups: no width fits


@pytest.mark.slow
def test_lonas_recipe_widths_fit_the_group_size_through_export(tmp_path):
    """Qwen2 with intermediate 384 and --group-size 64: 0.75 must not become 288 channels (failed at export)."""
    from test_quickstart import RECIPES, sqft

    from sqft_ov.quickstart.arithmetic import write_task
    from sqft_ov.quickstart.tiny import TinyModelConfig, build_tiny_model

    model = build_tiny_model(tmp_path / "qwen2", TinyModelConfig(arch="qwen2", hidden=128, intermediate=384))
    task = write_task(tmp_path / "task", 64, 8)
    out = tmp_path / "lonas"
    args = ["--model", model, "--data", task["train"].parent, "--steps", "4", "--batch-size", "4",
            "--rank-space", "8 4", "--group-size", "64"]
    result = sqft("run", RECIPES / "lonas.py", *args, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "ir" / "openvino_model.xml").is_file() and (out / "full" / "ir" / "openvino_model.xml").is_file()
    record = json.loads((out / "adapter" / "sqft_adapter.json").read_text())
    assert all(w % 64 == 0 for block in record["widths"]["blocks"] for w in block["mlp"])
    result = sqft("run", RECIPES / "lonas.py", *args, "--out", tmp_path / "bad", "--mlp-widths", "1.0 288")
    assert result.returncode != 0 and "not a multiple of --group-size 64" in result.stderr
    assert not (tmp_path / "bad" / "adapter").exists()  # refused before training
