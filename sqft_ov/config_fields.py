"""Where an option's default and help live: on its config dataclass's field, written once.

A field carries its help as `field(default=..., metadata={"help": "..."})` (transformers' HfArgumentParser
convention). The CLI builds its options from it (`sqft_ov/cli/options.py`), the recipes take their shared
options' help from it (`sqft_ov/recipe.py`), and tests/test_config_source.py fails when one of them drifts.
Plain standard library: every layer may read it.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

DEFAULT = "{default}"  # in a help text: the default it is shown with (a recipe's plan default, say)


def default_and_help(cls: type, name: str) -> tuple[Any, str | None]:
    """(default, help) of the dataclass field `name`; MISSING when it has no default, None when no help."""
    found = {f.name: f for f in fields(cls)}
    if name not in found:
        raise KeyError(f"{cls.__name__} has no field {name!r}")
    f = found[name]
    if f.default is MISSING and f.default_factory is not MISSING:
        return f.default_factory(), f.metadata.get("help")
    return f.default, f.metadata.get("help")


def shown(value: Any) -> str:
    """A default as a help text writes it: a list comma-separated (32,24,16)."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def field_help(cls: type, name: str, note: str | None = None, default: Any = MISSING) -> str:
    """The field's help as an option shows it: `{default}` filled in with `default` (the field's own unless
    given) and a `note` (where this option differs, e.g. a recipe's plan) in parentheses before the full stop."""
    own, text = default_and_help(cls, name)
    if text is None:
        raise KeyError(f"{cls.__name__}.{name} has no help: give it field(..., metadata={{'help': ...}})")
    text = text.replace(DEFAULT, shown(own if default is MISSING else default))
    return f"{text.removesuffix('.')} ({note})." if note else text
