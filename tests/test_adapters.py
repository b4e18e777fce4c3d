"""finetune / search / merge / export of merged adapters on a 50 %-sparse tiny Llama."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FIELDS, STEPS  # noqa: E402
from conftest import train as _train

from sqft_ov import FinetuneConfig, finetune, load_adapted
from sqft_ov.errors import SqftError
from sqft_ov.stages.merge import merge
from sqft_ov.stages.search import search


@pytest.mark.parametrize("method,nls", [("sparsepeft", False), ("sparsepeft", True), ("qa-sparsepeft", False),
                                        ("qa-sparsepeft", True), ("lora", False)])
def test_loss_falls_and_output_is_self_describing(trained, method, nls):
    out = trained(method, nls)
    record = json.loads((out / "sqft_adapter.json").read_text())
    losses = record["train_loss"]
    assert len(losses) == STEPS and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    assert record["method"] == method and record["nls"] == nls and len(record["base_fingerprint"]) == 64
    assert (out / "sqft_trainable.safetensors").stat().st_size < 2_000_000  # adapters only, not the model
    if nls:
        history = json.loads((out / "nls_history.json").read_text())
        assert len(history) == STEPS and all(set(h["ranks"]) <= {16, 12, 8} and len(h["ranks"]) == 2 for h in history)
    if method == "qa-sparsepeft":
        assert record["quantization"] == {"bits": 4, "sym": False, "group_size": 64}


def test_peft_loads_a_lora_adapter_and_refuses_a_sparsepeft_one(trained, sparse_models):
    """sparsepeft: plain PEFT would merge the update unmasked, so it must refuse (tests/test_plain_peft.py)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(sparse_models["llama"])
    model = PeftModel.from_pretrained(base, trained("lora"))
    assert model.peft_config["default"].r == 8
    with pytest.raises(KeyError, match="SparsePEFT adapter.*sqft-ov merge"):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sparse_models["llama"]), trained("sparsepeft"))


@pytest.mark.parametrize("method,nls", [("sparsepeft", False), ("sparsepeft", True), ("qa-sparsepeft", False),
                                        ("qa-sparsepeft", True)])
def test_merge_keeps_every_base_zero_and_the_ir_too(trained, workdir, method, nls):
    from sqft_ov.io.checkpoint import read_tensor, safetensors_index
    from sqft_ov.io.ir import iter_ir_weights
    from sqft_ov.stages.export import ExportConfig, export

    merged = workdir / f"merged-{method}-{nls}"
    report = merge(trained(method, nls), merged, overwrite=True)
    assert report.base_zeros > 0 and report.base_zeros_kept == report.base_zeros
    assert report.max_logit_diff < (5e-2 if method == "qa-sparsepeft" else 1e-4)
    ir = workdir / f"ir-merged-{method}-{nls}"
    fmt = "int4" if method == "qa-sparsepeft" else "fp16"
    result = export(merged, ir, ExportConfig(weight_format=fmt), overwrite=True)
    assert result.zeros_kept == result.source_zeros >= report.base_zeros
    if method == "qa-sparsepeft":
        index = safetensors_index(merged)
        quantized = [w for w in iter_ir_weights(ir) if w.storage == "u4"]
        assert len(quantized) == 14
        for w in quantized:
            source = read_tensor(index, w.name).float().numpy()
            # The IR holds the merged grid values (fp16 scales aside), not a re-quantization of them.
            np.testing.assert_allclose(w.values.astype(np.float32), source, rtol=2e-3, atol=1e-6)
            np.testing.assert_array_equal(w.values == 0, source == 0)


def test_merged_qa_ir_matches_the_trained_model(trained, workdir):
    from sqft_ov.io.runtime import open_ov_model
    from sqft_ov.stages.export import ExportConfig, export

    adapter = trained("qa-sparsepeft")
    merged, ir = workdir / "merged-qa-logits", workdir / "ir-qa-logits"
    merge(adapter, merged, overwrite=True)
    export(merged, ir, ExportConfig(weight_format="int4"), overwrite=True)
    adapted, tok, _ = load_adapted(adapter)
    ids = tok("Mia has 3 pens and buys 4 more. How many pens?", return_tensors="pt").input_ids
    with torch.no_grad():
        trained_logits = adapted.model(input_ids=ids).logits[0].numpy()
    ov = open_ov_model(ir, properties={"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
    ov_logits = ov(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()
    assert np.abs(ov_logits - trained_logits).max() < 2e-2 * max(1.0, np.abs(trained_logits).max())


def test_plain_lora_merge_loses_sparsity(trained, workdir):
    report = merge(trained("lora"), workdir / "merged-lora", overwrite=True)
    assert report.zeros_kept_share < 0.05  # the paper's point: B A fills the zeros


def test_export_refuses_to_requantize_a_merged_int4_folder(trained, workdir, tmp_path):
    from sqft_ov.stages.export import ExportConfig, export

    merged = workdir / "merged-qa-refuse"
    merge(trained("qa-sparsepeft"), merged, overwrite=True)
    with pytest.raises(SqftError, match="trained INT4 grid"):
        export(merged, tmp_path / "a", ExportConfig(weight_format="int8"))
    with pytest.raises(SqftError, match="group size"):
        export(merged, tmp_path / "b", ExportConfig(weight_format="int4", group_size=32))
    with pytest.raises(SqftError, match="sym"):
        export(merged, tmp_path / "c", ExportConfig(weight_format="int4", sym=True))


@pytest.mark.parametrize("strategy", ["max", "median", "min", "most-activated", "min-loss", "hill-climb"])
def test_search_strategies(trained, tmp_path, strategy):
    adapter = trained("sparsepeft", True)
    result = search(adapter, strategy, budget=6)
    assert len(result.ranks) == 2 and set(result.ranks) <= {16, 12, 8}
    if strategy == "max":
        assert result.ranks == [16, 16]
    if strategy == "median":
        assert result.ranks == [12, 12]
    if strategy == "hill-climb":
        assert 1 <= len(result.evaluated) <= 6 and result.validation_loss is not None
        assert result.validation_loss == min(e["validation_loss"] for e in result.evaluated)
    result.save(tmp_path / "sub.json", [16, 12, 8])
    report = merge(adapter, tmp_path / "merged", sub_adapter=tmp_path / "sub.json")
    assert report.ranks == result.ranks and report.base_zeros_kept == report.base_zeros


def test_resume_ends_with_the_same_adapter(sparse_models, sft_data, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    common = dict(method="sparsepeft", nls=True, rank_space=(8, 4), max_steps=6, save_steps=3, lr=5e-3,
                  batch_size=4, eval_split=0.0, seed=5, **FIELDS)
    finetune(sparse_models["llama"], sft_data, tmp_path / "straight", FinetuneConfig(**common))

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        finetune(sparse_models["llama"], sft_data, tmp_path / "resumed", FinetuneConfig(**common),
                 callbacks=[Crash()])
    assert not (tmp_path / "resumed").exists()
    finetune(sparse_models["llama"], sft_data, tmp_path / "resumed", FinetuneConfig(**common), resume=True)
    a = load_file(tmp_path / "straight" / "sqft_trainable.safetensors")
    b = load_file(tmp_path / "resumed" / "sqft_trainable.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    history_a = json.loads((tmp_path / "straight" / "nls_history.json").read_text())
    history_b = json.loads((tmp_path / "resumed" / "nls_history.json").read_text())
    assert [h["ranks"] for h in history_a] == [h["ranks"] for h in history_b]


@pytest.mark.parametrize("method", ["sparsepeft", "qa-sparsepeft"])
def test_divergence_stops_training_at_the_step(sparse_models, sft_data, tmp_path, method):
    """A NaN in the weights (here put there after step 2, so no floating-point kernel decides it) stops
    training at the first non-finite loss, naming the step, and writes no adapter."""
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))

    config = FinetuneConfig(method=method, rank=4, max_steps=5, lr=1e-3, batch_size=4, eval_split=0.0,
                            save_steps=100, **FIELDS)
    with pytest.raises(SqftError, match=r"training diverged: the loss is nan at step 3 of 5; lower --lr"):
        finetune(sparse_models["llama"], sft_data, tmp_path / "a", config, callbacks=[Poison()])
    assert not (tmp_path / "a").exists()


def test_bad_input(sparse_models, tiny_models, sft_data, trained, tmp_path):
    sparse = sparse_models["llama"]
    with pytest.raises(SqftError, match="no field prompt"):
        _train(sparse, sft_data, tmp_path / "a", method="sparsepeft")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SqftError, match="cannot read|no example|is empty"):
        _train(sparse, tmp_path / "empty.jsonl", tmp_path / "b", method="sparsepeft", **FIELDS)
    with pytest.raises(SqftError, match="larger than a target layer"):
        _train(sparse, sft_data, tmp_path / "c", method="sparsepeft", rank=256, **FIELDS)
    with pytest.raises(SqftError, match="duplicates"):
        FinetuneConfig(method="sparsepeft", nls=True, rank_space=(16, 8, 16))
    with pytest.raises(SqftError, match="not the one the adapter was trained on"):
        merge(trained("sparsepeft"), tmp_path / "d", base=tiny_models["llama"])
    (tmp_path / "bad.json").write_text(json.dumps({"ranks": [16, 20]}))
    with pytest.raises(SqftError, match="outside the adapter's rank space"):
        merge(trained("sparsepeft", True), tmp_path / "e", sub_adapter=tmp_path / "bad.json")
    assert not any((tmp_path / x).exists() for x in "abcde")


def test_qlora_style_base_is_on_the_int4_grid(sparse_models, sft_data, tmp_path):
    """lora with --int4-base --sym: the frozen base weights are NNCF's INT4 values (at most 16 levels a group)."""
    out = tmp_path / "qlora"
    _train(sparse_models["llama"], sft_data, out, method="lora", rank=4, int4="sym", group_size=64, max_steps=2,
           **FIELDS)
    adapted, _, record = load_adapted(out)
    assert record["quantization"] == {"bits": 4, "sym": True, "group_size": 64}
    weight = adapted.layers["model.layers.0.mlp.up_proj.weight"].base_layer.weight.detach()
    groups = weight.reshape(weight.shape[0], -1, 64)
    levels = max(len(torch.unique(groups[r, g])) for r in range(8) for g in range(groups.shape[1]))
    assert levels <= 16
    assert (weight == 0).float().mean() > 0.45  # the sparse base's zeros are still zeros


def test_masked_quantizer_is_nncf_quantizer_on_the_masked_sum(tiny_models, sparse_models):
    """Fails loudly if the pinned NNCF changes what qa_lora relies on."""
    from sqft_ov.adapters.qa_lora import check_nncf_internals, compress_with_lora, lora_quantizers
    from sqft_ov.io.checkpoint import load_causal_lm

    check_nncf_internals()
    model, _ = load_causal_lm(sparse_models["llama"], dtype=torch.float32)
    model = compress_with_lora(model, sym=False, group_size=64, rank=8, nls=True, masked=True)
    params = dict(model.named_parameters())
    for name, quantizer in list(lora_quantizers(model).items())[:3]:
        with torch.no_grad():
            quantizer.lora_B.normal_(std=0.05)
            quantizer.set_active_rank(4)
        weight = params[name].detach()
        A, B = quantizer.get_active_adapters()
        mask = (weight != 0).to(weight.dtype)
        nncf_class = type(quantizer).__mro__[2]  # Masked<cls> -> (mixin, NNCF's own class)
        assert nncf_class.__module__.startswith("nncf.")
        expected = nncf_class.quantize(quantizer, (weight + ((mask - 1) * (B @ A)).to(weight.dtype)))
        got = quantizer.quantize(weight)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert (got.reshape(weight.shape)[weight == 0] == 0).all()


def test_loading_skips_nncf_adapter_init_and_restores_it(sparse_models):
    """Loading a trained adapter must not pay for NNCF's SVD initialisation, and must leave NNCF as it was."""
    from nncf.quantization.algorithms.weight_compression.torch_backend import PTWeightCompressionAlgoBackend

    from sqft_ov.adapters.qa_lora import compress_with_lora, lora_quantizers
    from sqft_ov.io.checkpoint import load_causal_lm

    original = PTWeightCompressionAlgoBackend.__dict__["init_lora_adapters"]
    model, _ = load_causal_lm(sparse_models["llama"], dtype=torch.float32)
    model = compress_with_lora(model, sym=True, group_size=64, rank=4, nls=False, masked=True, init_adapters=False)
    assert PTWeightCompressionAlgoBackend.__dict__["init_lora_adapters"] is original
    quantizers = lora_quantizers(model)
    assert quantizers and all(q.lora_A.abs().sum() == 0 and q.lora_B.abs().sum() == 0 for q in quantizers.values())
    assert all(q.lora_A.shape[0] == 4 for q in quantizers.values())


def test_untrained_linears_get_no_adapter_noise(trained, sparse_models):
    """NNCF gives every INT4 linear an adapter; those outside --target-modules must add nothing (train and merge)."""
    from sqft_ov.adapters.adapted import Adapted
    from sqft_ov.adapters.qa_lora import lora_quantizers
    from sqft_ov.io.checkpoint import load_causal_lm

    adapted, _, record = load_adapted(trained("qa-sparsepeft"))
    fresh = Adapted.build(load_causal_lm(sparse_models["llama"], dtype=torch.float32)[0], adapted.config)
    for model in (adapted.model, fresh.model):
        quantizers = lora_quantizers(model)
        others = [q for n, q in quantizers.items() if n.rsplit(".", 2)[-2] not in record["target_modules"]]
        assert others and all(q.lora_B.abs().sum() == 0 for q in others)


def test_qa_grid_learns_at_its_own_rate(trained, sparse_models, sft_data, workdir):
    """The INT4 ranges train at --range-lr (default --lr); --range-lr 0 keeps the base's grid exactly."""
    from safetensors.torch import load_file

    from sqft_ov.adapters.adapted import Adapted
    from sqft_ov.io.checkpoint import load_causal_lm

    frozen = workdir / "adapter-qa-frozen-grid"
    _train(sparse_models["llama"], sft_data, frozen, method="qa-sparsepeft", rank=8, max_steps=3, range_lr=0.0,
           **FIELDS)
    moved = trained("qa-sparsepeft")
    record = json.loads((moved / "sqft_adapter.json").read_text())
    assert record["range_lr"] == record["lr"]
    assert json.loads((frozen / "sqft_adapter.json").read_text())["range_lr"] == 0.0
    adapted, _, _ = load_adapted(moved)
    initial = Adapted.build(load_causal_lm(sparse_models["llama"], dtype=torch.float32)[0], adapted.config,
                            init_adapters=False).state()
    ranges = [n for n in initial if n.endswith(("input_low", "input_range"))]
    assert ranges
    kept, trained_grid = load_file(frozen / "sqft_trainable.safetensors"), load_file(moved / "sqft_trainable.safetensors")
    assert all(torch.equal(kept[n], initial[n]) for n in ranges)
    assert not all(torch.equal(trained_grid[n], initial[n]) for n in ranges)
    with pytest.raises(SqftError, match="--range-lr"):
        FinetuneConfig(method="qa-sparsepeft", range_lr=-1e-4)
