"""Fresh problems from GSM-Symbolic's annotated templates (the authors never published their generator).

A template is a JSON object with ``question_annotated`` (and optionally ``id`` and ``lists``)::

    "{name,Sophie} has {x,31} blocks and buys {y,8} more. How many blocks does {name,Sophie} have?

    #init:
    - name = sample(names)
    - $x = range(5, 50)
    - $y = range(2, 10)
    #conditions:
    - x + y < 60
    #answer: x + y"

Slots are ``{var,default}``. Each ``#init`` line binds a variable (a leading ``$`` marks a number and is
dropped); a ``range(...)`` or list value is sampled uniformly, ``sample(seq)`` picks one item and
``sample(seq, k)`` k distinct ones. ``#conditions`` are rejection-sampled; ``#answer`` is the gold answer.
Every expression goes through :mod:`peft_cca.tasks.safe_eval`, never ``eval``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from peft_cca.tasks.problem import Problem
from peft_cca.tasks.safe_eval import UnsafeExpressionError, safe_eval

MAX_TRIES = 1000
SLOT = re.compile(r"\{(\w+),[^{}]*\}")
SECTION = re.compile(r"^#(init|conditions|answer):?\s*(.*)$")
BUILTIN_LISTS = {
    "names": ["Ava", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jamal", "Kira", "Liam"],
    "names_female": ["Ava", "Chloe", "Emma", "Grace", "Isla", "Kira", "Mia", "Nora"],
    "names_male": ["Ben", "David", "Farid", "Hiro", "Jamal", "Liam", "Omar", "Paul"],
}


class TemplateError(ValueError):
    """A template that cannot be parsed, evaluated or satisfied."""


def _functions(rng: random.Random) -> dict[str, Any]:
    def sample(seq: Any, k: int | None = None) -> Any:
        items = list(seq)
        if not items:
            raise TemplateError("sample() of an empty sequence")
        return rng.choice(items) if k is None else rng.sample(items, k)

    def is_int(value: Any) -> bool:
        return float(value).is_integer()

    return {
        "sample": sample,
        "range": range,
        "int": int,
        "float": float,
        "round": round,
        "abs": abs,
        "min": min,
        "max": max,
        "sum": sum,
        "len": len,
        "is_int": is_int,
    }


def parse_template(text: str) -> tuple[str, list[tuple[str, str]], list[str], str]:
    """Split ``question_annotated`` into (question with slots, init bindings, conditions, answer expression)."""
    question_lines, init, conditions, answer = [], [], [], None
    section = None
    for line in text.splitlines():
        header = SECTION.match(line.strip())
        if header:
            section = header.group(1)
            if section == "answer":
                answer = header.group(2).strip() or None
            continue
        item = line.strip().removeprefix("-").strip()
        if section is None:
            question_lines.append(line)
        elif not item:
            continue
        elif section == "init":
            name, eq, expression = item.partition("=")
            if not eq:
                raise TemplateError(f"#init line is not 'name = expression': {line!r}")
            init.append((name.strip().lstrip("$"), expression.strip()))
        elif section == "conditions":
            conditions.append(item)
        elif answer is None:
            answer = item
    if answer is None:
        raise TemplateError("template has no #answer")
    return "\n".join(question_lines).strip(), init, conditions, answer


def instantiate(template: dict[str, Any], rng: random.Random) -> tuple[str, Any]:
    """One (question, answer) drawn from a template, with conditions satisfied by rejection sampling."""
    question, init, conditions, answer = parse_template(template["question_annotated"])
    lists = {**BUILTIN_LISTS, **template.get("lists", {})}
    functions = _functions(rng)
    for _ in range(MAX_TRIES):
        values: dict[str, Any] = dict(lists)
        for name, expression in init:
            value = safe_eval(expression, values, functions)
            values[name] = rng.choice(value) if isinstance(value, (range, list, tuple)) else value
        if all(safe_eval(condition, values, functions) for condition in conditions):
            gold = safe_eval(answer, values, functions)
            text = SLOT.sub(lambda m, bound=values: _slot_value(bound, m.group(1)), question)
            return text, gold
    raise TemplateError(f"conditions never satisfied in {MAX_TRIES} draws")


def _slot_value(values: dict[str, Any], name: str) -> str:
    if name not in values:
        raise TemplateError(f"slot {{{name},...}} has no #init binding")
    return str(values[name])


def _format_answer(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_templates(path: str | Path) -> list[dict[str, Any]]:
    """Templates from a JSON object, a JSON list, or JSONL."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_template_problems(path: str | Path, size: int = 50, seed: int = 0) -> list[Problem]:
    """``size`` fresh problems per template in ``path``, reproducible from ``seed``."""
    problems = []
    for number, template in enumerate(read_templates(path)):
        template_id = str(template.get("id", number))
        rng = random.Random(f"{seed}:{template_id}")
        for instance in range(size):
            try:
                question, gold = instantiate(template, rng)
            except (UnsafeExpressionError, TemplateError) as error:
                raise TemplateError(f"template {template_id} in {path}: {error}") from error
            problems.append(
                Problem(
                    id=f"template:{template_id}:{seed}:{instance}",
                    group_id=f"template/{template_id}",
                    question=question,
                    answer=_format_answer(gold),
                    source=f"template:{path}",
                )
            )
    return problems
