"""`--help` that reads: every argument and option of every command (and recipe) has help text and shows its
default, and nothing in a help text is eaten by rich markup (a `[default: ...]` that renders as nothing)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from sqft_ov.cli import COMMANDS, app
from sqft_ov.cli.pipelines import recipe_command

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.relative_to(ROOT) for p in (ROOT / "recipes").glob("*.py") if p.name != "__init__.py")
WIDE = {"COLUMNS": "2000"}  # one row per option: rich wraps nothing


def render(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env=WIDE, prog_name="sqft-ov")
    assert result.exit_code == 0, result.output
    return result.output


def group() -> click.Group:
    return typer.main.get_command(app)


def flat(text: str) -> str:
    return " ".join(text.split())


def shown(text: str) -> str:
    """What a help text looks like on screen: rich escapes (`\\[`) print as the bracket itself."""
    return flat(text.replace("\\[", "["))


def rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("│")]


def check_page(command: click.Command, output: str) -> list[str]:
    """What is wrong with one command's help page (an empty list when nothing is)."""
    problems = []
    if command.help and shown(command.help.split("\f")[0]) not in flat(output):
        problems.append(f"the command's help lost a part: {command.help!r}")
    for param in command.params:
        if getattr(param, "hidden", False) or param.name == "help":
            continue
        name = param.opts[0]
        found = [r for r in rows(output) if re.search(rf"│\s+(\*\s+)?{re.escape(name)}\s", r)]
        if len(found) != 1:
            problems.append(f"{name}: {len(found)} rows in the help")
            continue
        if not param.help:
            problems.append(f"{name} has no help text")
        elif shown(param.help) not in flat(found[0]):
            problems.append(f"{name}: help text lost a part: {param.help!r} rendered as {flat(found[0])!r}")
        on_off_flag = isinstance(param, click.Option) and param.is_flag and not param.secondary_opts
        if not param.required and not on_off_flag and "[default: " not in found[0]:
            problems.append(f"{name} shows no default")
    return problems


def test_every_command_is_listed_in_pipeline_order():
    names = list(group().commands)
    assert set(names) == set(COMMANDS), "add the new command to sqft_ov.cli.COMMANDS (its place and panel)"
    assert names == [n for n in COMMANDS if n in names]
    output = render("--help")
    assert [n for n in names if n in output] == names
    assert output.index("tiny-model") < output.index("finetune") < output.index("export") < output.index("run")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help_reads(name):
    command = group().commands[name]
    output = render(name, "--help")
    assert check_page(command, output) == []
    assert render(name, "-h") == output


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_help_reads(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)
    output = render("run", str(recipe), "--help")
    assert f"sqft-ov run {recipe}" in output
    assert check_page(recipe_command(recipe), output) == []
    assert render("run", "--help", str(recipe)) == output  # the flag first: still the recipe's help
    assert render("run", str(recipe), "-h") == output


def test_run_alone_prints_its_own_help():
    for flags in (["--help"], ["-h"], []):
        output = render("run", *flags)
        assert "Usage: sqft-ov run [OPTIONS] RECIPE" in output.replace("[RECIPE]", "RECIPE")
        assert "not a Python file" not in output


def test_checker_sees_eaten_markup():
    """The check above catches what rich does to an unescaped `[default: ...]`."""
    sub = typer.Typer(rich_markup_mode="rich")

    @sub.command()
    def command(alpha: float = typer.Option(None, help="LoRA alpha [default: 2 x the rank].")) -> None:
        """Demo."""

    click_command = typer.main.get_command(sub)
    output = CliRunner().invoke(sub, ["--help"], env=WIDE).output
    assert any("lost a part" in p for p in check_page(click_command, output))
    assert any("shows no default" in p for p in check_page(click_command, output))


def test_version_and_short_help_through_the_script():
    env = {**os.environ, **WIDE}
    result = subprocess.run([sys.executable, "-m", "sqft_ov.cli", "--version"], capture_output=True, text=True,
                            env=env, timeout=120)
    from importlib.metadata import version

    assert result.returncode == 0 and result.stdout.strip() == f"sqft-ov {version('sqft-ov')}"
    result = subprocess.run([sys.executable, "-m", "sqft_ov.cli", "-h"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0 and "--version" in result.stdout and "finetune" in result.stdout
