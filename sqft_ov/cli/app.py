"""The `sqft-ov` Typer app and what every command shares: consoles, progress, option parsing.

Commands live beside this module by theme (`stages`, `measure`, `quickstart`) and render through
`tables`; each one parses its options, builds the config and calls the public verb.
"""

from __future__ import annotations

import logging
import os

import click
import typer
from rich.console import Console

from sqft_ov.errors import ConfigError, warn_deprecated

console = Console()
err_console = Console(stderr=True)
# What every Typer app here shares (the recipes' too): `-h` beside `--help`, and help texts read as rich
# markup, so a literal `[` in one must be escaped (tests/test_help.py fails when a bracketed part vanishes).
APP_SETTINGS = dict(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich",
                    context_settings={"help_option_names": ["-h", "--help"]})


def renamed(value, old_value, old: str, new: str):
    """The value of option `new`, or of its hidden old spelling `old` (with a warning) when only that is given."""
    if old_value is None:
        return value
    warn_deprecated(old, new)
    return old_value if value is None else value


def quiet_libraries() -> None:
    """Keep the terminal for our own output: the stack logs a lot at import and export time."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # we draw our own progress with rich
    # HF_HUB_DISABLE_PROGRESS_BARS stays the user's: a hub ID's download (gigabytes) shows huggingface_hub's bar.
    for name in ("torchao", "torch.utils._pytree", "nncf", "optimum", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.disable(logging.INFO)  # NNCF resets its logger to INFO when imported, after the line above
    import warnings

    warnings.filterwarnings("ignore")


def progress_bar():
    """`with progress_bar() as on_progress:` a callable `on_progress(done, total, label)` drawn as rich bars."""
    from sqft_ov.cli.progress import rich_progress

    return rich_progress(err_console)


def parse_properties(items: list[str]) -> dict[str, str]:
    properties = {}
    for item in (word for text in items for word in text.split()):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--property takes KEY=VALUE, got {item!r}")
        properties[key] = value
    return properties


def parse_ints(values: str | list[str], flag: str) -> tuple[int, ...]:
    """A list option of whole numbers: repeated (`--groups 32 --groups 64`) or `--groups 32,64`."""
    from sqft_ov.adapters.config import split_list

    try:
        return tuple(int(x) for x in split_list(values))
    except ValueError:
        raise ConfigError(f"{flag} takes whole numbers, e.g. {flag} 32,24,16") from None


def _is_int(token: str) -> bool:
    return token.lstrip("-").isdigit()


# List options whose old unquoted form (`--rank-space 32 24 16`) still folds, with the test a token must pass
# to be one of their values; None: any word, but only once the command's positional arguments are all given.
LEGACY_LISTS = {"--rank-space": _is_int, "--groups": _is_int, "--modes": {"sym", "asym"}.__contains__,
                "--embeddings": {"int8", "int4"}.__contains__, "--property": lambda token: "=" in token,
                "--target-modules": None}


def fold_legacy_lists(command: click.Command, args: list[str]) -> list[str]:
    """`--rank-space 32 24 16` -> `--rank-space 32 --rank-space 24 --rank-space 16`, with a deprecation warning.

    Before list options were repeatable Typer options, argv was rewritten so that a list option took every
    word up to the next option, which swallowed a positional argument written after it. The old form is in
    users' scripts, so it still folds, but only words that cannot be a positional: whole numbers for
    --rank-space / --groups, sym / asym for --modes, int8 / int4 for --embeddings, KEY=VALUE for --property;
    free words (--target-modules) only once the command's positional arguments are all given.
    """
    params = command.params if command is not None else []
    takes_value = {name for p in params if isinstance(p, click.Option) and not p.is_flag and not p.count
                   for name in p.opts}
    lists = {name: LEGACY_LISTS[name] for p in params if isinstance(p, click.Option) and p.multiple
             for name in p.opts if name in LEGACY_LISTS}
    arguments = [p.nargs for p in params if isinstance(p, click.Argument)]
    wanted = float("inf") if any(n < 0 for n in arguments) else sum(arguments)
    out, given, i = [], 0, 0
    while i < len(args):
        token = args[i]
        out.append(token)
        i += 1
        if token == "--":
            return out + args[i:]
        if token in takes_value and i < len(args):
            out.append(args[i])
            i += 1
            folded = []
            while token in lists and i < len(args) and not (args[i].startswith("-") and not _is_int(args[i])) \
                    and (lists[token](args[i]) if lists[token] else given >= wanted):
                folded.append(args[i])
                i += 1
            if folded:
                warn_deprecated(f"{token} {out[-1]} {' '.join(folded)}",
                                f"{token} {','.join([out[-1], *folded])} (or repeat {token})")
                out += [word for value in folded for word in (token, value)]
        elif not token.startswith("-"):
            given += 1
    return out


def restore_argument_help(command: click.Command) -> click.Command:
    """Typer 0.25 sets an argument's help before click 8.5's constructor resets it to None: put it back."""
    import inspect

    from typer.utils import get_params_from_function

    function = inspect.unwrap(command.callback) if command.callback else None
    infos = get_params_from_function(function) if function else {}
    for param in command.params:
        if isinstance(param, click.Argument) and not getattr(param, "help", None) and param.name in infos:
            param.help = getattr(infos[param.name].default, "help", None)
    return command


class SqftGroup(typer.core.TyperGroup):
    """The app's command group: the old unquoted list form is folded before a command parses its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            restore_argument_help(command)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        return name, command, fold_legacy_lists(command, rest)


app = typer.Typer(cls=SqftGroup, no_args_is_help=True, **APP_SETTINGS)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"sqft-ov {version('sqft-ov')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _app(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Sparse, quantized, fine-tuned LLMs for OpenVINO (SQFT)."""
