"""Source specs: one string names where problems come from, so the CLI and the run files can record it.

Syntax: ``<kind>:<target>[?key=value&key=value...]``

- ``rg:<task>?size=100&seed=0&<reasoning-gym config>`` reasoning-gym task, e.g.
  ``rg:basic_arithmetic?min_terms=2&max_terms=2&size=100``; ``size`` (default 100) and ``seed``
  (default 0) are ours, every other key goes to the task's config. Comma-separated values become tuples.
- ``gsm-symbolic:<config>`` the hub dataset ``apple/GSM-Symbolic`` (configs main, p1, p2) via ``datasets``.
- ``gsm-symbolic-file:<path.jsonl>`` the same published format from a local JSONL file.
- ``template:<path.json>?size=50&seed=0`` fresh instances of annotated GSM-Symbolic templates (a JSON
  object or a list of them, or JSONL), ``size`` instances per template.

Several specs can be joined with ``;`` to make one suite.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from peft_cca.tasks.problem import Problem

SPEC_KINDS = ("rg", "gsm-symbolic", "gsm-symbolic-file", "template")


def _parse_value(text: str) -> Any:
    """Query values as int, float, bool, tuple (comma-separated) or string."""
    if "," in text:
        return tuple(_parse_value(part) for part in text.split(",") if part != "")
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"rg:chain_sum?size=5"`` -> ``("rg", "chain_sum", {"size": 5})``."""
    kind, sep, rest = spec.strip().partition(":")
    if not sep or kind not in SPEC_KINDS:
        raise ValueError(f"bad task spec {spec!r}: expected <kind>:<target>[?k=v&...], kind in {SPEC_KINDS}")
    target, _, query = rest.partition("?")
    if not target:
        raise ValueError(f"bad task spec {spec!r}: empty target")
    options: dict[str, Any] = {}
    for pair in (p for p in query.split("&") if p):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"bad task spec {spec!r}: option {pair!r} is not key=value")
        # unquote, not unquote_plus: "+" is an operator in arithmetic task configs, not a space.
        options[unquote(key)] = _parse_value(unquote(value))
    return kind, target, options


def load_problems(spec: str, limit: int | None = None) -> list[Problem]:
    """All problems named by ``spec`` (see the module docstring), at most ``limit`` of them."""
    problems: list[Problem] = []
    for part in (p for p in spec.split(";") if p.strip()):
        problems.extend(_load_one(part))
    return problems[:limit] if limit is not None else problems


def _load_one(spec: str) -> list[Problem]:
    kind, target, options = parse_spec(spec)
    if kind == "rg":
        from peft_cca.tasks.reasoning_gym_source import load_reasoning_gym

        size = int(options.pop("size", 100))
        seed = int(options.pop("seed", 0))
        return load_reasoning_gym(target, size=size, seed=seed, **options)
    if kind == "gsm-symbolic":
        from peft_cca.tasks.gsm_symbolic import load_gsm_symbolic_hub

        return load_gsm_symbolic_hub(target, **options)
    if kind == "gsm-symbolic-file":
        from peft_cca.tasks.gsm_symbolic import load_gsm_symbolic_file

        return load_gsm_symbolic_file(target, **options)
    from peft_cca.tasks.templates import load_template_problems

    return load_template_problems(target, size=int(options.pop("size", 50)), seed=int(options.pop("seed", 0)))
