"""`docs/cli.md`, rendered from the Typer app itself so the reference cannot drift from `--help`.

`python -m sqft_ov.cli.docs` prints it; `--write` updates the file (tests/test_docs.py fails while it is
stale). Tables come from the click parameters, not from the terminal rendering, so the text does not
depend on the terminal's width.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import typer

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
HEADER = """# Command-line reference

Generated from the Typer app by `python -m sqft_ov.cli.docs --write`; `sqft-ov COMMAND --help` prints the
same. How each command behaves beyond its options (what it writes, checks and refuses) is in
[guide.md](guide.md).
"""


RECIPES = DOC.parents[1] / "recipes"
RECIPES_HEADER = """## Recipes: `sqft-ov run recipes/NAME.py`

Each recipe is a plain Python file over the public API; `sqft-ov run RECIPE -h` prints the options below.
"""


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(param: click.Parameter) -> str:
    if param.required or param.default is None or getattr(param, "hidden", False):
        return ""
    if isinstance(param, click.Option) and param.is_flag and param.secondary_opts:
        return f"`{param.opts[0] if param.default else param.secondary_opts[0]}`"
    if isinstance(param.default, (list, tuple)):
        return " ".join(f"`{v}`" for v in param.default)
    if isinstance(param, click.Option) and param.is_flag and not param.default:
        return ""
    return f"`{param.default}`"


def _name(param: click.Parameter, ctx: click.Context) -> str:
    if isinstance(param, click.Option):
        metavar = "" if param.is_flag else f" {param.make_metavar(ctx)}"
        return f"`{' / '.join(param.opts + param.secondary_opts)}{metavar}`"
    return f"`{param.make_metavar(ctx)}`"


def command_markdown(name: str, command: click.Command, prog: str = "sqft-ov", level: str = "##") -> str:
    """One command's section: usage, its docstring, and a table of every argument and option."""
    ctx = click.Context(command, info_name=f"{prog} {name}")
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [f"{level} `{prog} {name}`", "", "```", f"{prog} {name} {usage}".rstrip(), "```", ""]
    if command.help:
        lines += [" ".join(command.help.split()), ""]
    params = [p for p in command.params if not getattr(p, "hidden", False) and p.name != "help"]
    if params:
        lines += ["| argument / option | what it is | default |", "|---|---|---|"]
        for param in params:
            help_text = getattr(param, "help", None) or ""
            lines.append(f"| {_name(param, ctx)} | {_cell(help_text)} | {_default(param)} |")
        lines.append("")
    return "\n".join(lines)


def render() -> str:
    from sqft_ov.cli import app

    group = typer.main.get_command(app)
    ctx = click.Context(group, info_name="sqft-ov")
    sections = [HEADER]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is not None and not command.hidden:
            sections.append(command_markdown(name, command))
    sections.append(RECIPES_HEADER)
    from sqft_ov.cli.pipelines import recipe_command

    for path in sorted(RECIPES.glob("*.py")):
        if path.name != "__init__.py":
            recipe = recipe_command(path)
            recipe.help = (recipe.help or "").split("\n\n")[0]  # the summary; the file's docstring has the rest
            sections.append(command_markdown(f"recipes/{path.name}", recipe, prog="sqft-ov run", level="###"))
    return "\n".join(sections).rstrip("\n") + "\n"


def main() -> None:
    text = render()
    if "--write" in sys.argv[1:]:
        DOC.write_text(text)
        print(f"wrote {DOC}")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
