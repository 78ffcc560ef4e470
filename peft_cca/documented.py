"""Settings fields that carry the help text of their command-line flag, so a dataclass is the one source of a
setting's default and help: the library takes the dataclass, the CLI reads both from its fields."""

from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import Any


def described(help: str, default: Any = MISSING, **options: Any) -> Any:
    """A settings field with the help text its CLI flag shows."""
    return field(default=default, metadata={"help": help}, **options)


def help_of(settings: type, name: str) -> str:
    """The help text of field ``name`` of a settings dataclass, for its flag (``%`` escaped for argparse)."""
    return _field(settings, name).metadata["help"].replace("%", "%%")


def default_of(settings: type, name: str) -> Any:
    """The default of field ``name`` of a settings dataclass (its factory called for a mutable one)."""
    found = _field(settings, name)
    return found.default_factory() if found.default is MISSING else found.default


def flag_options(settings: type, name: str) -> dict[str, Any]:
    """``default=`` and ``help=`` of the flag of field ``name``, for ``add_argument(..., **flag_options(...))``; a
    tuple default becomes a list, as argparse gives ``nargs`` values."""
    default = default_of(settings, name)
    return {"default": list(default) if isinstance(default, tuple) else default, "help": help_of(settings, name)}


def _field(settings: type, name: str):
    return next(f for f in fields(settings) if f.name == name)
