"""The `sqft-ov` command: a thin Typer layer over the Python API, one command per pipeline stage."""

from __future__ import annotations

import sys

# Each module registers its commands on `app`; `--help` lists them in pipeline order (COMMANDS, below).
from sqft_ov.cli import (
    measure,  # noqa: F401
    pipelines,  # noqa: F401
    stages,  # noqa: F401, I001
    deploy,  # noqa: F401
)
from sqft_ov.cli.app import app, err_console, quiet_libraries
from sqft_ov.errors import SqftError

__all__ = ["app", "main"]

STAGES, MEASURE, PIPELINES = "Pipeline stages", "Measure and deploy", "Whole pipelines"
COMMANDS = {"tiny-model": STAGES, "fetch": STAGES, "sparsify": STAGES, "importance": STAGES, "finetune": STAGES,
            "search": STAGES, "merge": STAGES, "export": STAGES, "eval": MEASURE, "bench": MEASURE, "latency": MEASURE, "tune": MEASURE,
            "ovms": MEASURE, "run": PIPELINES, "quickstart": PIPELINES, "demo": PIPELINES}


def command_name(info) -> str:
    return info.name or info.callback.__name__.replace("_", "-")


def _order_commands() -> None:
    """Registration follows the modules' import order: list the commands in pipeline order, in panels."""
    order = list(COMMANDS)
    app.registered_commands.sort(key=lambda info: order.index(command_name(info)) if command_name(info) in order
                                 else len(order))  # tests/test_help.py asks for every command in COMMANDS
    for info in app.registered_commands:
        info.rich_help_panel = COMMANDS.get(command_name(info), info.rich_help_panel)


_order_commands()


def main() -> None:
    quiet_libraries()
    try:
        app(args=sys.argv[1:], prog_name="sqft-ov")
    except SqftError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
