"""Answer checkers: how a generic source's gold answer is read and a completion is judged against it.

Named in a spec's ``format=`` option (``scorer=`` for a user's own function), so the run files record them and
every stage rebuilds the same checker from the spec: stage 1's correctness, evaluation and validation all call
``problem.score(completion)``, which calls the checker.

- ``numeric`` (default): the authors' GSM scoring (:mod:`peft_cca.tasks.answers`); a gold with a ``####`` line
  is cut there (GSM8K's format) and the text before it is the worked solution.
- ``string``: normalised exact match of the final free-text answer; the gold may be a list of accepted answers.
- ``choice``: the gold is a letter, a 0-based index into the choices, or the text of one of them; the
  completion may give the letter or the text.
- ``math``: HF's ``math-verify`` (LaTeX, fractions, ``\\boxed{}``), the checker of lighteval and TRL's math
  rewards; a gold holding ``\\boxed{}`` (MATH's solutions) is cut to its last boxed answer.
- ``regex:<pattern>``: the first match of the pattern (its first group, if any), compared as ``string`` is;
  percent-encode ``&`` (%26), ``;`` (%3B) and ``%`` (%25) in the spec.
- ``scorer=<module>:<function>``: ``function(completion, answer, row)`` decides; ``module`` is a dotted module
  on the Python path or a path to a ``.py`` file. It is trusted code the user named on the command line.

Every checker reads the completion only up to the end of its first "answer is" sentence (or all of it without
one), because generation stops there (:func:`peft_cca.tasks.answers.answer_is_final`): the verdict is the same
whether or not a completion was stopped early. Checkers are small frozen dataclasses, rebuilt from the spec,
never stored. ``math-verify`` is imported only when a math checker is built or called.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.tasks.answers import (
    answer_cut,
    choice_letter,
    extract_choice,
    extract_pattern,
    extract_text,
    last_boxed,
    parse_number,
    same_answer,
    score_numeric,
)

logger = logging.getLogger(__name__)
_WARNED: set[str] = set()  # user scorers that raised already, warned about once per process

FORMATS = ("numeric", "string", "choice", "math", "regex:<pattern>")
MATH_TIMEOUT_SECONDS = 5  # math-verify's own default, per parse and per comparison


@dataclass(frozen=True)
class NumericChecker:
    """The authors' GSM scoring against a numeric gold."""

    gold: str

    def __call__(self, completion: str) -> bool:
        return score_numeric(completion, self.gold)


@dataclass(frozen=True)
class StringChecker:
    """Normalised exact match of the final free-text answer with any accepted gold."""

    golds: tuple[str, ...]

    def __call__(self, completion: str) -> bool:
        candidate = extract_text(completion)
        return candidate is not None and any(same_answer(candidate, gold) for gold in self.golds)


@dataclass(frozen=True)
class ChoiceChecker:
    """Right when the completion picks choice ``index`` (by letter or by its text)."""

    index: int
    choices: tuple[str, ...]

    def __call__(self, completion: str) -> bool:
        return extract_choice(completion, self.choices) == self.index


@dataclass(frozen=True)
class RegexChecker:
    """The pattern's match in the completion, compared with the gold as :class:`StringChecker` compares."""

    pattern: str
    golds: tuple[str, ...]

    def __call__(self, completion: str) -> bool:
        candidate = extract_pattern(completion, self.pattern)
        return candidate is not None and any(same_answer(candidate, gold) for gold in self.golds)


def _math_timeout() -> int | None:
    """math-verify times out with SIGALRM, which only the main thread can use; elsewhere it must be off."""
    return MATH_TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _math_verify():
    """The ``math_verify`` module, imported on first use (it brings sympy and antlr)."""
    try:
        import math_verify
    except ImportError:
        raise UsageError("format=math needs HF's math-verify: pip install 'math-verify>=0.9'") from None
    return math_verify


def parse_math_gold(gold: str) -> list[Any]:
    """math-verify's reading of a gold answer: as LaTeX math first (a bare ``\\frac12`` needs the ``$``), then
    as it is; an empty list when it reads nothing."""
    parse, timeout = _math_verify().parse, _math_timeout()
    return parse(f"${gold}$", parsing_timeout=timeout) or parse(gold, parsing_timeout=timeout)


@dataclass(frozen=True)
class MathChecker:
    """math-verify's equivalence of the completion's answer and the gold."""

    gold: str

    def __call__(self, completion: str) -> bool:
        math_verify, timeout = _math_verify(), _math_timeout()
        predicted = math_verify.parse(answer_cut(completion), parsing_timeout=timeout)
        return bool(predicted) and math_verify.verify(parse_math_gold(self.gold), predicted, timeout_seconds=timeout)


@dataclass(frozen=True)
class UserChecker:
    """The user's ``function(completion, answer, row)``; the completion is cut as every checker cuts it."""

    function: Callable[[str, str, Mapping[str, Any]], Any]
    answer: str
    row: Mapping[str, Any] = field(repr=False)

    def __call__(self, completion: str) -> bool:
        try:
            return bool(self.function(answer_cut(completion), self.answer, self.row))
        except Exception as error:  # wrong, as Problem.score makes it; said once, or a broken scorer would be silent
            name = getattr(self.function, "__qualname__", repr(self.function))
            if name not in _WARNED:
                _WARNED.add(name)
                logger.warning(
                    "scorer %s raised %s: %s; such completions count as wrong", name, type(error).__name__, error
                )
            raise


@dataclass(frozen=True)
class AnswerFormat:
    """A parsed ``format=`` option: ``name`` is one of numeric, string, choice, math, regex."""

    name: str
    pattern: str = ""


@dataclass(frozen=True)
class Gold:
    """A row's gold answer as a Problem holds it, with its checker and the worked solution found in it."""

    answer: str
    checker: Callable[[str], bool]
    solution: str | None = None


def parse_format(text: str, where: str) -> AnswerFormat:
    """``numeric``, ``string``, ``choice``, ``math`` or ``regex:<pattern>``; anything else is a UsageError."""
    name, colon, pattern = text.partition(":")
    if name == "regex" and colon:
        if not pattern:
            raise UsageError(f"{where}: format=regex: has no pattern; write format=regex:<pattern>")
        try:
            re.compile(pattern)
        except re.error as error:
            raise UsageError(f"{where}: format=regex:{pattern} does not compile ({error}); fix the pattern") from None
        return AnswerFormat("regex", pattern)
    if colon or name not in FORMATS:
        raise UsageError(f"{where}: unknown answer format {text!r}; use one of {', '.join(FORMATS)}")
    return AnswerFormat(name)


def _golds(value: Any, fmt: AnswerFormat, where: str) -> tuple[str, ...]:
    """Accepted gold texts: a list (or tuple) for string and regex formats, one value for the others."""
    if isinstance(value, (list, tuple)):
        if fmt.name not in ("string", "regex"):
            raise UsageError(
                f"{where}: the answer is a list; only format=string or regex accepts a list of accepted answers"
            )
        golds = tuple(str(item).strip() for item in value if item is not None and str(item).strip())
    else:
        golds = (str(value).strip(),) if str(value).strip() else ()
    if not golds:
        raise UsageError(f"{where}: the answer is empty; fill it or drop the row")
    return golds


def _numeric_gold(text: str, where: str) -> Gold:
    """GSM's cut: the number after ``####`` (the solution before it), else the whole answer as a number."""
    solution, cut, after = text.rpartition("####")
    gold = (after if cut else text).strip().replace(",", "")
    if parse_number(gold) is None:
        raise UsageError(
            f"{where}: the answer {gold!r} is not a number; use format=string, choice, math or regex for other answers"
        )
    return Gold(gold, NumericChecker(gold), solution.strip() or None)


def _choice_index(value: Any, choices: tuple[str, ...], where: str) -> int:
    """A letter, a 0-based index (an int or digits), or the text of one choice, as an index into ``choices``."""
    if isinstance(value, float) and value.is_integer():  # an int column with a gap reads as floats
        value = int(value)
    text = str(value).strip()
    if (isinstance(value, int) and not isinstance(value, bool)) or text.isdigit():
        index = int(text)
    elif len(text) == 1 and text.isalpha() and text.isascii():
        index = ord(text.upper()) - ord("A")
    elif choices.count(text) == 1:
        return choices.index(text)
    else:
        raise UsageError(
            f"{where}: the answer {text!r} is not a letter, a 0-based index or the text of one of the choices"
        )
    if not 0 <= index < len(choices):
        letters = f"A-{choice_letter(len(choices) - 1)}" if choices else "none"
        raise UsageError(
            f"{where}: the answer {text!r} is out of range: the row has {len(choices)} choices "
            f"({letters}, indices 0-{len(choices) - 1}); fix the row or the choices field"
        )
    return index


def _math_gold(text: str, where: str) -> Gold:
    """The last ``\\boxed{}`` answer of a worked solution (the solution is then the whole text), else the text."""
    boxed = last_boxed(text)
    gold = boxed if boxed is not None else text.strip()
    if not parse_math_gold(gold):
        raise UsageError(f"{where}: math-verify reads no answer in the gold {gold!r}; fix the row or use format=string")
    return Gold(gold, MathChecker(gold), text.strip() if boxed is not None and text.strip() != gold else None)


def gold_for(fmt: AnswerFormat, value: Any, choices: tuple[str, ...], where: str) -> Gold:
    """A row's gold answer and checker in ``fmt``; a gold that cannot be checked is a UsageError naming ``where``."""
    if fmt.name == "choice":
        index = _choice_index(value, choices, where)
        return Gold(choice_letter(index), ChoiceChecker(index, choices))
    golds = _golds(value, fmt, where)
    if fmt.name == "numeric":
        return _numeric_gold(golds[0], where)
    if fmt.name == "math":
        return _math_gold(golds[0], where)
    if fmt.name == "regex":
        return Gold(golds[0], RegexChecker(fmt.pattern, golds))
    return Gold(golds[0], StringChecker(golds))


def _import_module(name: str, where: str):
    """A dotted module from the Python path, or a ``.py`` file by its path."""
    if not name.endswith(".py"):
        try:
            return importlib.import_module(name)
        except ImportError as error:
            raise UsageError(
                f"{where}: cannot import {name!r} ({error}); name a module on the Python path or a .py file"
            ) from None
    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"{where}: scorer file {name!r} does not exist; check the path")
    module_name = f"peft_cca_user_scorer_{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"
    if module_name in sys.modules:  # loaded once per process, like an imported module
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[module_name]
        raise
    return module


def load_scorer(text: str, where: str) -> Callable[[str, str, Mapping[str, Any]], Any]:
    """The user's ``<module>:<function>``, checked to take ``(completion, answer, row)``."""
    module_name, colon, name = text.rpartition(":")
    if not colon or not module_name or not name:
        raise UsageError(f"{where}: scorer={text!r} is not <module>:<function>; e.g. scorer=my_checks:is_right")
    module = _import_module(module_name, where)
    function = getattr(module, name, None)
    if not callable(function):
        raise UsageError(f"{where}: {module_name!r} has no function {name!r}; check the scorer's name")
    try:
        inspect.signature(function).bind("", "", {})
    except TypeError:
        raise UsageError(
            f"{where}: scorer {text!r} must take (completion, answer, row); it takes {inspect.signature(function)}"
        ) from None
    except ValueError:  # a builtin without a signature: let the call decide
        pass
    return function
