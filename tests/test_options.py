"""One spelling, one default: list options that never swallow a positional, old spellings that still work
(and say what replaced them), `all-linear` and `--lora-dropout` as in PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import sqft_ov
from sqft_ov.adapters.config import DEFAULT_RANK_SPACE, FinetuneConfig
from sqft_ov.cli import app
from sqft_ov.cli.app import fold_legacy_lists

ROOT = Path(__file__).resolve().parents[1]


class Captured(Exception):
    """Raised by a stand-in stage: the config the command built, without running the stage."""


def capture(monkeypatch, module, name: str):
    def fake(*args, **kwargs):
        raise Captured(args, kwargs)

    monkeypatch.setattr(module, name, fake)


def invoke(*args) -> tuple[tuple, dict, str]:
    """`sqft-ov ARGS` up to the stage call: (its arguments, its keyword arguments, stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in args], prog_name="sqft-ov")
    assert isinstance(result.exception, Captured), result.output
    stage_args, stage_kwargs = result.exception.args
    return stage_args, stage_kwargs, result.stderr


@pytest.fixture
def finetune_call(monkeypatch):
    import sqft_ov.stages.finetune as stage

    capture(monkeypatch, stage, "finetune")

    def call(*args):
        stage_args, _, err = invoke("finetune", *args)
        return stage_args, stage_args[3], err  # (model, data, output, config)

    return call


@pytest.mark.parametrize("spelling", [["--rank-space", "8,4"], ["--rank-space", "8 4"],
                                      ["--rank-space", "8", "--rank-space", "4"]])
def test_list_option_spellings(finetune_call, spelling):
    (model, data, output, config), _, _ = finetune_call(*spelling, "--nls", "m", "d", "o")
    assert (str(model), str(data), str(output)) == ("m", "d", "o")
    assert config.rank_space == (8, 4)


def test_a_list_option_followed_by_positionals_does_not_swallow_them(finetune_call):
    (model, data, output, config), _, err = finetune_call("--target-modules", "q_proj,v_proj", "m", "d", "o")
    assert (str(model), str(data), str(output)) == ("m", "d", "o")
    assert config.target_modules == ("q_proj", "v_proj") and "deprecated" not in err
    (model, data, output, config), _, err = finetune_call("--nls", "--rank-space", "8", "m", "d", "o")
    assert str(model) == "m" and config.rank_space == (8,)


def test_old_unquoted_list_form_still_folds_and_warns(finetune_call):
    (model, data, output, config), _, err = finetune_call("--nls", "--rank-space", "8", "4", "2", "m", "d", "o")
    assert config.rank_space == (8, 4, 2) and str(model) == "m"
    assert "deprecated" in err and "--rank-space 8,4,2" in err
    # free words fold only once the positionals are given: before them, they are positionals
    (model, data, output, config), _, err = finetune_call("m", "d", "o", "--target-modules", "q_proj", "v_proj")
    assert config.target_modules == ("q_proj", "v_proj") and "deprecated" in err


def test_fold_rules_on_the_command():
    group = typer.main.get_command(app)
    finetune, tune = group.commands["finetune"], group.commands["tune"]
    assert fold_legacy_lists(finetune, ["--target-modules", "q_proj", "v_proj", "m", "d"]) == \
        ["--target-modules", "q_proj", "v_proj", "m", "d"]  # v_proj may be MODEL: not folded
    assert fold_legacy_lists(tune, ["ir", "--groups", "-1", "64", "--modes", "sym", "asym", "--repeats", "2"]) == \
        ["ir", "--groups", "-1", "--groups", "64", "--modes", "sym", "--modes", "asym", "--repeats", "2"]
    assert fold_legacy_lists(tune, ["--modes", "sym", "ir"]) == ["--modes", "sym", "ir"]


def test_default_rank_space_is_the_configs(finetune_call):
    _, config, _ = finetune_call("--nls", "m", "d", "o")
    assert config.rank_space == DEFAULT_RANK_SPACE == FinetuneConfig().rank_space


@pytest.mark.parametrize("args, int4, warned", [
    (["--method", "qa-sparsepeft", "--sym"], "sym", False),
    (["--method", "qa-sparsepeft"], "asym", False),
    (["--method", "lora", "--int4-base"], "asym", False),
    (["--method", "lora", "--int4-base", "--sym"], "sym", False),
    (["--method", "lora"], None, False),
    (["--method", "lora", "--int4-sym"], "sym", True),  # the old spellings
    (["--method", "qa-sparsepeft", "--int4-asym"], "asym", True),
])
def test_sym_spellings(finetune_call, args, int4, warned):
    _, config, err = finetune_call(*args, "m", "d", "o")
    assert config.int4 == int4
    assert ("--int4-sym/--int4-asym is deprecated: use --sym/--asym" in err) == warned


def test_sym_without_a_grid_is_refused():
    result = CliRunner().invoke(app, ["finetune", "m", "d", "o", "--method", "lora", "--sym"])
    assert "--int4-base" in str(result.exception)


def test_old_calibration_flag_still_works_and_warns(monkeypatch, tmp_path):
    import sqft_ov.stages.export as stage

    capture(monkeypatch, stage, "export")
    (model, output, config, _), _, err = invoke("export", "m", "ir", "--weight-format", "int8-w8a8",
                                                "--calibration", tmp_path / "c.txt")
    assert config.calibration == str(tmp_path / "c.txt")
    assert "--calibration is deprecated: use --dataset" in err
    (model, output, config, _), _, err = invoke("export", "m", "ir", "--weight-format", "int8-w8a8",
                                                "--dataset", tmp_path / "c.txt")
    assert config.calibration == str(tmp_path / "c.txt") and "deprecated" not in err


@pytest.fixture
def recipe_call(monkeypatch, tmp_path):
    """`sqft-ov run RECIPE ...` up to its finetune call, on a small task file."""
    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "task.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"{i} + 1?", "response": f"#### {i + 1}"}) for i in range(4)))
    capture(monkeypatch, sqft_ov, "finetune")
    monkeypatch.chdir(ROOT)

    def call(recipe: str, *args):
        stage_args, _, err = invoke("run", f"recipes/{recipe}.py", "--model", tmp_path / "m", "--data", data,
                                    "--out", tmp_path / "out", *args)
        return stage_args[3], err  # the FinetuneConfig

    return call


def test_recipe_old_int4_spelling(recipe_call):
    config, err = recipe_call("lora", "--int4", "sym")
    assert config.int4 == "sym" and "--int4 sym is deprecated: use --int4-base --sym" in err
    config, err = recipe_call("lora", "--int4-base", "--sym")
    assert config.int4 == "sym" and "deprecated" not in err
    config, err = recipe_call("lora")
    assert config.int4 is None


def test_recipe_list_options(recipe_call):
    config, err = recipe_call("sparsepeft", "--nls", "--rank-space", "8", "4", "--target-modules", "all-linear")
    assert config.rank_space == (8, 4) and config.target_modules == ("all-linear",) and "deprecated" in err
    config, err = recipe_call("sparsepeft", "--nls", "--rank-space", "8,4", "--steps", "3")
    assert config.rank_space == (8, 4) and config.max_steps == 3 and "deprecated" not in err
    config, _ = recipe_call("sparsepeft", "--nls")
    assert config.rank_space == (16, 12, 8)  # the recipes' plan, as the quickstart measured it


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, vocab_size=64))


SEVEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.mark.parametrize("method", ["lora", "sparsepeft"])
def test_all_linear_and_lora_dropout_reach_peft(method):
    from sqft_ov.adapters.adapted import Adapted
    from sqft_ov.adapters.sparse_lora import peft_lora_layers

    config = FinetuneConfig(method=method, rank=4, target_modules="all-linear", lora_dropout=0.25)
    adapted = Adapted.build(tiny_llama(), config)
    assert set(adapted.config.target_modules) == set(SEVEN) and config.target_modules == ("all-linear",)
    assert len(adapted.adapted_weights) == 2 * len(SEVEN)  # every decoder linear, never lm_head
    assert not any("lm_head" in name for name in adapted.adapted_weights)
    peft_config = adapted.model.peft_config["default"]
    assert peft_config.lora_dropout == 0.25 and set(peft_config.target_modules) == set(SEVEN)
    layer = next(iter(peft_lora_layers(adapted.model).values()))
    assert layer.lora_dropout["default"].p == 0.25


def test_lora_dropout_default_and_limits():
    from sqft_ov.errors import SqftError

    assert FinetuneConfig().lora_dropout == 0.0
    with pytest.raises(SqftError, match="--lora-dropout"):
        FinetuneConfig(lora_dropout=1.0)
    with pytest.raises(SqftError, match="--lora-dropout"):
        FinetuneConfig(method="qa-sparsepeft", lora_dropout=0.1)
    with pytest.raises(SqftError, match="all-linear"):
        FinetuneConfig(target_modules="all-linear q_proj")
