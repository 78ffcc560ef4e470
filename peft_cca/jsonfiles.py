"""JSON objects read from files that users and stages write: a whole file, or one line of a JSON-lines file.

Every reader in the package goes through :func:`parse_object` so that a damaged file is always one error line
of the same form, ``<file>: line <n>: <what is wrong>; <how to fix it>``, whichever file it is. Written by hand
because ``json`` and ``datasets`` report a position inside a string, not the file and line a user can open.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError


def parse_object(
    text: str | bytes,
    path: Path | str,
    remedy: str,
    *,
    line: int | None = None,
    error: type[UsageError] = UsageError,
    kind: str = "a JSON object",
) -> dict[str, Any]:
    """The JSON object in ``text`` (all of ``path``, or its line number ``line``); anything else raises
    ``error`` naming the file, the line and ``remedy``. ``kind`` says what the object should have been."""
    at = f"{path}: line {line}" if line is not None else str(path)
    try:
        value = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)  # UTF-8 only, as JSON lines are
    except json.JSONDecodeError as err:
        at = at if line is not None else f"{path}: line {err.lineno}"
        raise error(f"{at}: not valid JSON ({err.msg}, column {err.colno}); {remedy}") from None
    except UnicodeDecodeError as err:
        raise error(f"{at}: not UTF-8 text ({err.reason}); {remedy}") from None
    except RecursionError:
        raise error(f"{at}: JSON nested too deeply; {remedy}") from None
    if not isinstance(value, dict):
        raise error(f"{at}: holds a JSON {type(value).__name__}, not {kind}; {remedy}")
    return value


def read_object(
    path: Path, remedy: str, *, error: type[UsageError] = UsageError, kind: str = "a JSON object"
) -> dict[str, Any]:
    """The JSON object a whole file holds (see :func:`parse_object`)."""
    return parse_object(path.read_bytes(), path, remedy, error=error, kind=kind)
