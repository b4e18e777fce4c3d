"""One configuration source: a CLI option or a recipe option that is a config dataclass's field has the field's
default and help (`field(default=..., metadata={"help": ...})`), and every field is on the CLI or says why not."""

from __future__ import annotations

from dataclasses import field, fields
from pathlib import Path
from typing import Optional

import click
import pytest
import typer

from sqft_ov.adapters.config import FinetuneConfig, split_list
from sqft_ov.cli import app
from sqft_ov.cli.options import option_for
from sqft_ov.cli.pipelines import recipe_command
from sqft_ov.config_fields import default_and_help, field_help
from sqft_ov.io.sft_data import SFTFormat
from sqft_ov.measure.bench.runner import BenchConfig
from sqft_ov.measure.latency import LatencyConfig
from sqft_ov.measure.tune.search import TuneConfig
from sqft_ov.recipe import BATCH_SIZE, LR, RANK_SPACE
from sqft_ov.stages.evaluate import EvalConfig
from sqft_ov.stages.export import ExportConfig
from sqft_ov.stages.importance import ImportanceConfig
from sqft_ov.stages.sparsify import SparsityConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*.py") if p.name != "__init__.py")
FORMAT = ("prompt_field", "response_field", "chat_template", "max_length")  # SFTFormat's fields, options each

# command: (the configs it builds, {field: the options that set it under other names}, {field: why it has none})
COMMANDS = {
    "finetune": ((FinetuneConfig, SFTFormat), {
        "int4": ("int4_base", "sym"), "precision": ("bf16", "fp16"), "data_format": FORMAT,
    }, {}),  # NOT_ON_CLI: every FinetuneConfig field is an option
    "sparsify": ((SparsityConfig,), {}, {}),
    "importance": ((ImportanceConfig, SFTFormat), {"data_format": FORMAT}, {
        "seed": "only the order of the sampled examples: the CLI keeps the default, the Python API may set it",
    }),
    "export": ((ExportConfig,), {"calibration": ("dataset",), "text_fields": ("text_field",)}, {}),
    "eval": ((EvalConfig, SFTFormat), {"data_format": FORMAT, "properties": ("property",)}, {
        "stop": "stop strings come with a task (lm-evaluation-harness) through the Python API; the CLI stops at EOS",
    }),
    "bench": ((BenchConfig,), {"properties": ("property",)}, {
        "probe": "tune's output check (greedy tokens per model), set by tune itself",
    }),
    "latency": ((LatencyConfig,), {"properties": ("property",)}, {}),
    "tune": ((TuneConfig,), {"grid": ("property",)}, {
        "batch_size": "settings per interleaved bench run: a memory bound tune sets, not a user choice",
        "probe_tokens": "length of the logit check before timing, fixed",
        "profile_steps": "decode steps of the --profile run, fixed",
        "bandwidth_gib": "bench's bandwidth test, which tune leaves at its default",
    }),
}
NOT_ON_CLI = COMMANDS["finetune"][2]

# The recipes: their plan defaults (declared in sqft_ov/recipe.py, their help says so), and options whose help
# is the recipe's own because it says what that recipe does with the field.
PLAN_DEFAULTS = {"rank_space": RANK_SPACE, "lr": LR, "batch_size": BATCH_SIZE}
RECIPE_OWN_HELP = {
    "nls": "the recipe also searches a sub-adapter after training",
    "group_size": "what the recipe also exports with (lora: only with --int4-base; lonas / eftnas: the IRs' groups)",
    "range_lr": "qa_sparsepeft's only: no method to name",
    "mlp_widths": "lonas: the super-network's width space",
    "head_widths": "lonas: the super-network's width space",
}
RECIPE_OWN_DEFAULT = {
    "mlp_widths": "lonas trains elastic widths: it starts from a width space, finetune from none",
    "head_widths": "lonas trains elastic widths: it starts from a width space, finetune from none",
}


def same_default(given, default) -> bool:
    """A list field's tuple is the option's strings (`--rank-space 32,24,16`), or one string (`--mlp-widths ''`)."""
    if isinstance(default, tuple):
        return split_list(given if given is not None else ()) == tuple(map(str, default))
    return given == default


def drift(command: click.Command, configs: tuple[type, ...], plan: dict | None = None,
          own_help: dict | None = None, own_default: dict | None = None) -> list[str]:
    """What is wrong between a command's options and the config fields they are named after."""
    problems = []
    owners = {f.name: cls for cls in reversed(configs) for f in fields(cls)}
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden or param.name not in owners:
            continue
        cls, name = owners[param.name], param.name
        default, text = default_and_help(cls, name)
        allowed = [default] + ([plan[name]] if plan and name in plan else [])
        if name not in (own_default or {}) and not any(same_default(param.default, d) for d in allowed):
            problems.append(f"{param.opts[0]}: default {param.default!r}, {cls.__name__}.{name} has {default!r}")
        if text is not None and name not in (own_help or {}):
            expected = field_help(cls, name, default=param.default).removesuffix(".")
            if not (param.help or "").startswith(expected):
                problems.append(f"{param.opts[0]}: help {param.help!r} is not {cls.__name__}.{name}'s {expected!r}")
    return problems


def unreached(command: click.Command, configs: tuple[type, ...], via: dict, not_on_cli: dict) -> list[str]:
    """Fields no option sets (and not said to be off the CLI), and stale entries in `via` / `not_on_cli`."""
    options = {p.name for p in command.params if isinstance(p, click.Option) and not p.hidden}
    problems = [f"{name}: set through --{o.replace('_', '-')}, which {command.name} lacks"
                for name, through in via.items() for o in through if o not in options]
    problems += [f"{name}: listed as off the CLI but an option" for name in not_on_cli if name in options]
    for cls in configs:
        problems += [f"{cls.__name__}.{f.name}: no option of {command.name} sets it; add one (option_for) or say why "
                     "not in NOT_ON_CLI" for f in fields(cls) if f.name not in options | set(via) | set(not_on_cli)]
    return problems


def commands() -> dict[str, click.Command]:
    return typer.main.get_command(app).commands


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_options_are_their_config_fields(name):
    configs, via, not_on_cli = COMMANDS[name]
    command = commands()[name]
    assert drift(command, configs) == []
    assert unreached(command, configs, via, not_on_cli) == []


def test_every_finetune_config_field_is_reachable():
    """Stated once more for the config most options come from: a new FinetuneConfig field needs an option."""
    options = {p.name for p in commands()["finetune"].params}
    via = COMMANDS["finetune"][1]
    assert {f.name for f in fields(FinetuneConfig)} <= options | set(via) | set(NOT_ON_CLI)


# Fields whose help is the command's own (option_for(..., help=...)): their defaults are still the field's.
HELP_ON_CLI = {
    **{f"SFTFormat.{name}": "each command words its data fields (training, scoring)" for name in FORMAT},
}


def test_cli_fields_have_help():
    """A field the CLI shows carries its help, unless HELP_ON_CLI says why the command keeps it."""
    missing = []
    for name, (configs, _, _) in COMMANDS.items():
        options = {p.name for p in commands()[name].params if isinstance(p, click.Option) and not p.hidden}
        missing += [f"{cls.__name__}.{f.name}" for cls in configs for f in fields(cls)
                    if f.name in options and "help" not in f.metadata and f"{cls.__name__}.{f.name}" not in HELP_ON_CLI]
    assert missing == []


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_options_are_finetune_fields(recipe):
    command = recipe_command(recipe)
    assert drift(command, (FinetuneConfig,), PLAN_DEFAULTS, RECIPE_OWN_HELP, RECIPE_OWN_DEFAULT) == []


def test_plan_defaults_differ_and_say_so():
    """A plan default is declared because it differs from finetune's; its help names finetune's."""
    from sqft_ov.recipe import BatchSize, Lr, RankSpace

    for name, alias in {"rank_space": RankSpace, "lr": Lr, "batch_size": BatchSize}.items():
        default, _ = default_and_help(FinetuneConfig, name)
        assert not same_default(PLAN_DEFAULTS[name], default)
        assert "finetune's default is" in alias.__metadata__[0].help


# The check itself, on a made-up config and command: it has to be able to fail.
@pytest.fixture
def probe():
    from dataclasses import dataclass

    @dataclass
    class ProbeConfig:
        size: int = field(default=3, metadata={"help": "How big."})
        ranks: tuple[int, ...] = field(default=(8, 4), metadata={"help": "Ranks: {default}, or repeated."})
        hidden_knob: int = 0

    def build(function) -> click.Command:
        probe_app = typer.Typer()
        probe_app.command()(function)
        return typer.main.get_command(probe_app)

    return ProbeConfig, build


def test_check_passes_on_generated_options(probe):
    cls, build = probe

    def command(size: int = option_for(cls, "size"), ranks: list[str] = option_for(cls, "ranks"),
                hidden_knob: int = typer.Option(0, help="Knob.")) -> None:
        """Probe."""

    built = build(command)
    assert drift(built, (cls,)) == []
    assert unreached(built, (cls,), {}, {}) == []
    ranks = next(p for p in built.params if p.name == "ranks")
    assert ranks.default == ["8", "4"] and ranks.help == "Ranks: 8,4, or repeated."


def test_check_reports_a_drifted_default_help_and_a_missing_field(probe):
    cls, build = probe

    def command(size: int = typer.Option(4, help="How large."), ranks: Optional[str] = typer.Option("8,4,2")) -> None:
        """Probe."""

    built = build(command)
    problems = drift(built, (cls,))
    assert any("--size: default 4" in p for p in problems)
    assert any("--size: help 'How large.'" in p for p in problems)
    assert any("--ranks: default '8,4,2'" in p for p in problems)
    assert any("--ranks: help None" in p for p in problems)
    assert unreached(built, (cls,), {}, {}) == [
        "ProbeConfig.hidden_knob: no option of command sets it; add one (option_for) or say why not in NOT_ON_CLI"]
    assert drift(built, (cls,), plan={"size": 4}, own_help={"size": "", "ranks": ""},
                 own_default={"ranks": ""}) == []
    assert unreached(built, (cls,), {"hidden_knob": ("knob",)}, {}) == [
        "hidden_knob: set through --knob, which command lacks"]


def test_option_for_refuses_help_the_field_has(probe):
    cls, _ = probe
    with pytest.raises(TypeError, match="help on the field"):
        option_for(cls, "size", help="Another text.")
    assert option_for(cls, "size", note="the probe's").help == "How big (the probe's)."
