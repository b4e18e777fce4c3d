import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sqft_ov.errors import SqftError
from sqft_ov.quickstart.tiny import ARCHITECTURES, TinyModelConfig, build_tiny_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_builds_loads_and_runs(tmp_path, arch):
    path = build_tiny_model(tmp_path / arch, TinyModelConfig(arch=arch, layers=1))
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == arch
    ids = tokenizer("Mia packs 7 boxes.", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "Mia packs 7 boxes."
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 1024) and torch.isfinite(logits).all()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.in_features % 64 == 0 and module.out_features % 64 == 0, name


def test_qwen2_has_qkv_biases(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.o_proj.bias is None


def test_same_seed_same_model(tmp_path):
    a = build_tiny_model(tmp_path / "a", TinyModelConfig(layers=1))
    b = build_tiny_model(tmp_path / "b", TinyModelConfig(layers=1))
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert json.loads((a / "tokenizer.json").read_text()) == json.loads((b / "tokenizer.json").read_text())


def test_bad_shapes_are_refused_before_writing(tmp_path):
    with pytest.raises(SqftError, match="--heads"):
        build_tiny_model(tmp_path / "x", TinyModelConfig(hidden=100, heads=3))
    with pytest.raises(SqftError, match="unknown architecture"):
        build_tiny_model(tmp_path / "y", TinyModelConfig(arch="gpt9"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
