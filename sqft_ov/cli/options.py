"""Typer options built from the config dataclasses' fields, so that a default and its help are written once.

`option_for(FinetuneConfig, "lr")` is `typer.Option(DEFAULT_LR, help="Learning rate.")` read from the field
(`sqft_ov/config_fields.py`); options that are the CLI's own (--overwrite, --resume, --bf16 / --fp16 for
`precision`) stay plain typer options. tests/test_config_source.py fails when an option drifts from its field.
"""

from __future__ import annotations

from dataclasses import MISSING
from typing import Any

import typer

from sqft_ov.config_fields import default_and_help, field_help


def option_for(cls: type, name: str, *flags: str, note: str | None = None, **overrides: Any) -> Any:
    """The typer option of config field `name`: its default (a tuple as a list option's strings) and help.

    `note` adds where the option differs, in parentheses before the help's full stop; `overrides` go to
    typer.Option as they are (`show_default`, `metavar`, a `default` of another type such as "" for a tuple
    given as one string). `help` is refused where the field has one: that is the text to edit.
    """
    default, text = default_and_help(cls, name)
    if text is not None and "help" in overrides:
        raise TypeError(f"{cls.__name__}.{name} has its help on the field: edit it there, or pass note=")
    if isinstance(default, tuple):
        default = [str(item) for item in default]
    default = overrides.pop("default", ... if default is MISSING else default)
    help_text = overrides.pop("help", None) if text is None else field_help(cls, name, note, default)
    return typer.Option(default, *flags, help=help_text, **overrides)
