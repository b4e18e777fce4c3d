"""The `sqft-ov` command: a thin Typer layer over the Python API, one command per pipeline stage."""

from __future__ import annotations

import sys

# Each module registers its commands on `app`, in the order `--help` lists them: the pipeline's first.
from sqft_ov.cli import (
    measure,  # noqa: F401
    pipelines,  # noqa: F401
    stages,  # noqa: F401, I001
)
from sqft_ov.cli.app import app, err_console, fold_list_options, quiet_libraries
from sqft_ov.errors import SqftError

__all__ = ["app", "main"]


def main() -> None:
    quiet_libraries()
    try:
        app(args=fold_list_options(sys.argv[1:]), prog_name="sqft-ov")
    except SqftError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
