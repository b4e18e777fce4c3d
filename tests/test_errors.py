"""Errors a caller can catch: each kind of failure raises its own subclass of SqftError, through the public API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import sqft_ov
from sqft_ov import (
    AdapterMismatchError, ConfigError, ExportIntegrityError, ModelFolderError, NncfInternalsChanged, SqftError,
)

KINDS = (ConfigError, ModelFolderError, AdapterMismatchError, NncfInternalsChanged, ExportIntegrityError)


def test_every_kind_is_a_sqft_error_and_public():
    for kind in KINDS:
        assert issubclass(kind, SqftError) and kind.__name__ in sqft_ov.__all__
    assert issubclass(ConfigError, ValueError)  # a bad value: callers that catch ValueError keep working


def test_bad_option_value_is_a_config_error():
    with pytest.raises(ConfigError, match="--lr") as info:
        sqft_ov.FinetuneConfig(lr=-1.0)
    assert isinstance(info.value, SqftError) and isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match="--ratio"):
        sqft_ov.SparsityConfig(ratio=1.5)


def test_missing_model_folder_is_a_model_folder_error(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist") as info:
        sqft_ov.sparsify_folder(tmp_path / "no-such-model", tmp_path / "out", sqft_ov.SparsityConfig(method="magnitude"))
    assert isinstance(info.value, SqftError)
    (tmp_path / "not-hf").mkdir()
    with pytest.raises(ModelFolderError, match="config.json"):
        sqft_ov.load_causal_lm(tmp_path / "not-hf")


def test_adapter_on_another_base_is_an_adapter_mismatch(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"not the weights the adapter was trained on")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    record = {"method": "lora", "nls": False, "rank": 4, "rank_space": [4], "target_modules": ["q_proj"],
              "quantization": None, "base": str(base), "base_fingerprint": "0" * 64, "lora_alpha": 8,
              "data_format": {}, "eval_split": 0.0, "seed": 42, "adapted_weights": []}
    (adapter / "sqft_adapter.json").write_text(json.dumps(record))
    with pytest.raises(AdapterMismatchError, match="fingerprint") as info:
        sqft_ov.load_adapted(adapter)
    assert isinstance(info.value, SqftError)


def test_changed_nncf_internals_raise_nncf_internals_changed(monkeypatch):
    from nncf.torch.quantization import quantize_functions

    from sqft_ov.adapters.qa_lora import check_nncf_internals

    check_nncf_internals()  # the pinned NNCF passes
    monkeypatch.delattr(quantize_functions, "TuneRange")
    with pytest.raises(NncfInternalsChanged, match="TuneRange") as info:
        check_nncf_internals()
    assert isinstance(info.value, SqftError)


def test_incomplete_ir_is_an_export_integrity_error(tmp_path):
    ir = tmp_path / "ir"
    ir.mkdir()
    (ir / "openvino_model.xml").write_text("<net/>")  # the .bin beside it is missing
    with pytest.raises(ExportIntegrityError, match="openvino_model.bin") as info:
        sqft_ov.tune(ir)
    assert isinstance(info.value, SqftError)


def test_cli_prints_a_subclass_as_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sqft_ov.cli", "export", str(tmp_path / "missing"), str(tmp_path / "ir")],
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "does not exist" in lines[0]
