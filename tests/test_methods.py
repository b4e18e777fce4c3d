"""The adapter-method registry: one class per method, looked up by its CLI name; adding one touches nothing else."""

from __future__ import annotations

import json

import pytest
from conftest import FIELDS
from conftest import train as _train

from sqft_ov.adapters import methods
from sqft_ov.adapters.config import METHODS, FinetuneConfig
from sqft_ov.errors import ConfigError


def test_registry_lists_the_three_methods_by_their_cli_names():
    assert list(methods.METHODS) == ["lora", "sparsepeft", "qa-sparsepeft"]
    assert METHODS == ("lora", "sparsepeft", "qa-sparsepeft")  # config's tuple, for help and records
    for name, cls in methods.METHODS.items():
        assert issubclass(cls, methods.AdapterMethod) and cls.name == name
        assert isinstance(methods.method_for(name), cls)
    lora, sparse, qa = (methods.method_for(n) for n in METHODS)
    assert (lora.masked, sparse.masked, qa.masked) == (False, True, True)
    assert (lora.quantized, sparse.quantized, qa.quantized) == (False, False, True)
    assert (lora.plain_peft, sparse.plain_peft, qa.plain_peft) == (True, False, False)
    assert (lora.int4_grid, sparse.int4_grid, qa.int4_grid) == ("optional", "refused", "required")


def test_unknown_method_names_the_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown --method 'dora': choose one of lora, sparsepeft, qa-sparsepeft"):
        methods.method_for("dora")
    with pytest.raises(ConfigError, match="unknown --method"):
        FinetuneConfig(method="dora")


def test_methods_check_their_own_config():
    assert FinetuneConfig(method="qa-sparsepeft").int4 == "asym"
    assert FinetuneConfig(method="lora").int4 is None
    with pytest.raises(ConfigError, match="sparsepeft trains on the float base"):
        FinetuneConfig(method="sparsepeft", int4="sym")
    with pytest.raises(ConfigError, match="no dropout"):
        FinetuneConfig(method="qa-sparsepeft", lora_dropout=0.1)
    with pytest.raises(ConfigError, match="do not compose with qa-sparsepeft"):
        FinetuneConfig(method="qa-sparsepeft", mlp_widths=(0.5, 1.0))


class WithoutPeftFiles(methods.SparsePEFT):
    """A toy method: SparsePEFT that writes no PEFT files and trains only at fixed ranks."""

    name = "toy"

    def check_config(self, config) -> None:
        super().check_config(config)
        if config.nls:
            raise ConfigError("toy trains at one rank: drop --nls")

    def save(self, adapted, folder, gathered=None) -> None:
        pass


def test_a_new_method_is_one_class_and_one_registry_entry(monkeypatch, sparse_models, sft_data, tmp_path):
    """Registered in a copy of the registry, the toy trains, is recorded, reloads and merges through the same
    finetune / load / merge code, with no edit anywhere else."""
    from sqft_ov.adapters.adapted import load_adapted
    from sqft_ov.stages.merge import merge

    monkeypatch.setattr(methods, "METHODS", {**methods.METHODS, "toy": WithoutPeftFiles})
    with pytest.raises(ConfigError, match="toy trains at one rank"):
        FinetuneConfig(method="toy", nls=True)
    out = tmp_path / "toy"
    _train(sparse_models["llama"], sft_data, out, method="toy", rank=4, max_steps=2, **FIELDS)
    assert json.loads((out / "sqft_adapter.json").read_text())["method"] == "toy"
    assert not (out / "adapter_config.json").exists()  # its own save(): no PEFT files
    adapted, _, _ = load_adapted(out)
    assert isinstance(adapted.method, WithoutPeftFiles) and not adapted.qa
    report = merge(out, tmp_path / "merged")
    assert report.method == "toy" and report.precision == "float"
    assert report.base_zeros > 0 and report.base_zeros_kept == report.base_zeros  # masked, as SparsePEFT
