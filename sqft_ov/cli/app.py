"""The `sqft-ov` Typer app and what every command shares: consoles, progress, option parsing.

Commands live beside this module by theme (`stages`, `measure`, `quickstart`) and render through
`tables`; each one parses its options, builds the config and calls the public verb.
"""

from __future__ import annotations

import logging
import os

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from sqft_ov.errors import SqftError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sparse, quantized, fine-tuned LLMs for OpenVINO (SQFT).")
console = Console()
err_console = Console(stderr=True)


def quiet_libraries() -> None:
    """Keep the terminal for our own output: the stack logs a lot at import and export time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # we draw our own progress with rich
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("torchao", "torch.utils._pytree", "nncf", "optimum", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.disable(logging.INFO)  # NNCF resets its logger to INFO when imported, after the line above
    import warnings

    warnings.filterwarnings("ignore")


def progress_bar() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True)


def parse_properties(items: list[str]) -> dict[str, str]:
    properties = {}
    for item in (word for text in items for word in text.split()):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SqftError(f"--property takes KEY=VALUE, got {item!r}")
        properties[key] = value
    return properties


def parse_ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise SqftError(f"{flag} takes whole numbers, e.g. {flag} 32 24 16") from None


LIST_OPTIONS = ("--rank-space", "--target-modules", "--property", "--groups", "--modes", "--embeddings")


def fold_list_options(argv: list[str]) -> list[str]:
    """`--rank-space 32 24 16` -> `--rank-space "32 24 16"`: the values run up to the next option."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in LIST_OPTIONS:
            j = i + 1
            while j < len(argv) and (not argv[j].startswith("-") or argv[j][1:].isdigit()):  # -1: a value
                j += 1
            out.append(" ".join(argv[i + 1:j]))
            i = j
            continue
        i += 1
    return out
