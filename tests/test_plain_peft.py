"""A SparsePEFT folder is no trap: plain PEFT, without sqft-ov, refuses it instead of refilling the zeros."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import FIELDS
from conftest import train as _train

from sqft_ov.stages.merge import merge

PLAIN_PEFT = textwrap.dedent("""
    import sys
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir, adapter = sys.argv[1:]
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    zeros = {n: p == 0 for n, p in base.named_parameters() if ".layers." in n and p.dim() == 2}
    try:
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    except Exception as exc:
        print("REFUSED", repr(exc))
    else:
        params = dict(merged.named_parameters())
        print("KEPT" if all(bool((params[n][z] == 0).all()) for n, z in zeros.items()) else "REFILLED")
    try:
        AutoModelForCausalLM.from_pretrained(base_dir).load_adapter(adapter)
    except Exception as exc:
        print("TRANSFORMERS REFUSED", repr(exc))
    assert "sqft_ov" not in sys.modules
""")


def _plain_peft(base, adapter) -> str:
    """Run PLAIN_PEFT in a fresh interpreter that never imports sqft_ov."""
    result = subprocess.run([sys.executable, "-c", PLAIN_PEFT, str(base), str(adapter)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def sparse_adapter(sparse_models, sft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain-peft") / "adapter"
    _train(sparse_models["llama"], sft_data, out, method="sparsepeft", rank=4, max_steps=2, **FIELDS)
    return out


def test_plain_peft_refuses_a_sparsepeft_folder_naming_sqft_ov_merge(sparse_models, sparse_adapter):
    out = _plain_peft(sparse_models["llama"], sparse_adapter)
    assert "REFUSED" in out and "REFILLED" not in out and "KEPT" not in out, out
    assert "SparsePEFT adapter" in out and "sqft-ov merge ADAPTER MERGED" in out, out
    assert "TRANSFORMERS REFUSED" in out and out.count("sqft-ov merge") == 2, out
    config = json.loads((sparse_adapter / "adapter_config.json").read_text())
    assert config["sqft_peft_type"] == "LORA" and config["r"] == 4  # PEFT's own fields are kept beside
    assert "sqft-ov merge" in (sparse_adapter / "README.md").read_text()


def test_plain_lora_folder_stays_plain_peft(sparse_models, sft_data, tmp_path):
    out = tmp_path / "lora"
    _train(sparse_models["llama"], sft_data, out, method="lora", rank=4, max_steps=2, **FIELDS)
    assert "REFILLED" in _plain_peft(sparse_models["llama"], out)  # standard LoRA: PEFT loads and merges it


@pytest.mark.parametrize("written_by", ["this version", "the previous version"])
def test_sqft_ov_loads_and_merges_new_and_old_folders(sparse_models, sparse_adapter, tmp_path, written_by):
    """eval / bench / search / merge rebuild from sqft_adapter.json, whatever adapter_config.json says."""
    from sqft_ov.adapters.adapted import load_for_inference

    folder = tmp_path / "adapter"
    shutil.copytree(sparse_adapter, folder)
    if written_by == "the previous version":  # a plain LORA adapter_config.json, as before the refusal
        file = folder / "adapter_config.json"
        config = json.loads(file.read_text())
        config["peft_type"] = config.pop("sqft_peft_type")
        file.write_text(json.dumps(config))
    model, _ = load_for_inference(sparse_models["llama"], folder)
    assert any(getattr(m, "sqft_masked", False) for m in model.modules())
    report = merge(folder, tmp_path / "merged")
    assert report.base_zeros > 0 and report.base_zeros_kept == report.base_zeros
