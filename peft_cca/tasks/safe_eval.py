"""A small expression evaluator for template files, which are data from strangers.

Only an AST whitelist is evaluated: numbers, strings, names bound by the template, lists/tuples, arithmetic,
comparisons, boolean logic, conditional expressions, integer subscripts and slices, and calls to the functions
passed in (the template language's ``sample``/``range``... and a few builtins; a dotted name such as
``np.arange`` is a call only when that exact dotted name is passed in). No other attribute access, no lambdas,
no comprehensions, no string formatting, never ``eval``/``exec``.

A :class:`Pair` is a drawn (word, number) item such as ``("triple", 3)``: arithmetic, comparisons and its
index 1 see its number, so ``n1 + mult * n1`` is a sum and ``w < mult`` compares numbers, while the template
shows its word.

Every expression ends fast: the text is at most :data:`MAX_EXPRESSION_CHARS` long and :data:`MAX_DEPTH`
deep, so it has few nodes; there are no loops; and every value is checked after each step (numbers within
:data:`MAX_MAGNITUDE`, finite and real, sequences within :data:`MAX_SEQUENCE` items, exponents within
:data:`MAX_EXPONENT`, repetition checked *before* it allocates). The functions passed in must respect the same
bounds (see :mod:`peft_cca.tasks.templates`).

Parse once with :func:`compile_expression`, evaluate many times with :func:`evaluate`: rejection sampling of
templates evaluates the same conditions thousands of times.
"""

from __future__ import annotations

import ast
import math
import operator
import warnings
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from peft_cca.errors import UsageError

MAX_EXPRESSION_CHARS = 4_000  # the longest published line (a list of 40 translated pairs) is 2,254
MAX_DEPTH = 100
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10**18
MAX_SEQUENCE = 10_000


class UnsafeExpressionError(UsageError):
    """The expression uses something outside the whitelist, or exceeds a size bound."""


class EvaluationError(UnsafeExpressionError):
    """A whitelisted expression failed on these values (division by zero, bad index, wrong type)."""


class Pair(tuple):
    """A (word, spelling) item that computes as ``number``: the word is shown, the number is used."""

    number: Any

    def __new__(cls, word: Any, spelling: Any, number: Any) -> Pair:
        pair = super().__new__(cls, (word, spelling))
        pair.number = number
        return pair


def operand(value: Any) -> Any:
    """The value an operation computes with: a Pair's number, anything else itself."""
    return value.number if isinstance(value, Pair) else value


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: contains(b, a),
    ast.NotIn: lambda a, b: not contains(b, a),
}
_MEMBERSHIP = (ast.In, ast.NotIn)


def contains(container: Any, item: Any) -> bool:
    """``item in container``; a range answers in O(1) only for an int, so other items are converted first."""
    if isinstance(container, range) and type(item) is not int:
        number = item if isinstance(item, (float, Fraction)) else None
        return number is not None and number == int(number) and int(number) in container
    return item in container


_CONTEXT = (ast.Load, ast.And, ast.Or)
_ALLOWED = (
    ast.Expression,
    ast.Constant,
    ast.Name,
    ast.List,
    ast.Tuple,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Subscript,
    ast.Call,
    ast.Attribute,
    *_CONTEXT,
    *_BINARY,
    *_UNARY,
    *_COMPARE,
)
_SEQUENCES = (str, list, tuple)


def dotted_name(node: ast.AST) -> str | None:
    """``np.arange`` for an attribute chain of plain names, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def check_value(value: Any) -> Any:
    """``value`` if it is within the bounds, else UnsafeExpressionError. Ranges are lazy, so any length is fine."""
    if type(value) is int and -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:  # the common case, first
        return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if abs(value) > MAX_MAGNITUDE:
            raise UnsafeExpressionError(f"number too large: magnitude above {MAX_MAGNITUDE:.0e}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise UnsafeExpressionError(f"not a finite number: {value}")
        if abs(value) > MAX_MAGNITUDE:
            raise UnsafeExpressionError(f"number too large: magnitude above {MAX_MAGNITUDE:.0e}")
    elif isinstance(value, Fraction):
        if abs(value) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
            raise UnsafeExpressionError(f"fraction too large: numerator or denominator above {MAX_MAGNITUDE:.0e}")
    elif isinstance(value, complex):
        raise UnsafeExpressionError(f"complex number {value}: only real numbers are allowed")
    elif isinstance(value, _SEQUENCES) and len(value) > MAX_SEQUENCE:
        raise UnsafeExpressionError(f"sequence too long: more than {MAX_SEQUENCE} items")
    return value


def compile_expression(expression: str) -> ast.Expression:
    """Parse ``expression`` and check every node against the whitelist, once; :func:`evaluate` runs it."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise UnsafeExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        with warnings.catch_warnings():  # "1if x else 2" parses with a SyntaxWarning printed to stderr
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise UnsafeExpressionError(f"not an expression: {expression.strip()!r}") from error
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UnsafeExpressionError(f"expression nested deeper than {MAX_DEPTH} levels")
        if not isinstance(node, _ALLOWED):
            raise UnsafeExpressionError(f"not allowed in a template expression: {type(node).__name__}")
        if isinstance(node, ast.Attribute):
            raise UnsafeExpressionError(f"attribute access not allowed: {ast.unparse(node)}")
        if isinstance(node, ast.Call):
            if node.keywords:
                raise UnsafeExpressionError(f"keyword arguments not allowed: {ast.unparse(node)}")
            if dotted_name(node.func) is None:
                raise UnsafeExpressionError(f"call not allowed: {ast.unparse(node.func)}")
            # The callee is a (dotted) name looked up in the functions passed in; only its arguments are walked.
            stack.extend((arg, depth + 1) for arg in node.args)
            continue
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):  # a slice only right there
            parts = (node.value, node.slice.lower, node.slice.upper, node.slice.step)
            stack.extend((part, depth + 1) for part in parts if part is not None)
            continue
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str)):
                raise UnsafeExpressionError(f"constant of type {type(node.value).__name__} not allowed")
            check_value(node.value)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree


class _Evaluator:
    def __init__(self, names: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]):
        self.names = names
        self.functions = functions

    def visit(self, node: ast.AST) -> Any:
        # Only operations and calls make new values, so only their results are checked (see binop, call...):
        # constants are checked when compiled, names are the caller's checked values, containers are literals.
        return _VISITORS[type(node)](self, node)

    def expression(self, node: ast.Expression) -> Any:
        return self.visit(node.body)

    def constant(self, node: ast.Constant) -> Any:
        return node.value

    def name(self, node: ast.Name) -> Any:
        if node.id in self.names:
            return self.names[node.id]
        raise EvaluationError(f"unknown name {node.id!r}")

    def list(self, node: ast.List) -> list[Any]:
        return [self.visit(e) for e in node.elts]

    def tuple(self, node: ast.Tuple) -> tuple[Any, ...]:
        return tuple(self.visit(e) for e in node.elts)

    def binop(self, node: ast.BinOp) -> Any:
        left, right = operand(self.visit(node.left)), operand(self.visit(node.right))
        kind = type(node.op)
        if kind is ast.Pow and (isinstance(right, bool) or not isinstance(right, (int, float, Fraction))):
            raise EvaluationError("exponent must be a number")
        if kind is ast.Pow and abs(right) > MAX_EXPONENT:
            raise UnsafeExpressionError(f"exponent above {MAX_EXPONENT}")
        if kind is ast.Mult and (isinstance(left, _SEQUENCES) or isinstance(right, _SEQUENCES)):
            sequence, count = (left, right) if isinstance(left, _SEQUENCES) else (right, left)
            if not isinstance(count, int) or isinstance(sequence, type(count)):
                raise EvaluationError("a sequence can only be repeated an integer number of times")
            # Nested items count too: [[0] * 10**4] * 10**4 is small in memory but 10**8 items to print.
            items = sum(len(i) if isinstance(i, (list, tuple)) else 1 for i in sequence) if sequence else 0
            if max(items, len(sequence)) * max(count, 0) > MAX_SEQUENCE:
                raise UnsafeExpressionError(f"repetition longer than {MAX_SEQUENCE} items")
        if kind is ast.Mod and isinstance(left, str):
            raise UnsafeExpressionError("string formatting with % not allowed")
        try:
            value = _BINARY[kind](left, right)
        except (ArithmeticError, TypeError, ValueError) as error:
            raise EvaluationError(f"cannot evaluate {ast.unparse(node)}: {error}") from error
        return check_value(value)

    def unaryop(self, node: ast.UnaryOp) -> Any:
        try:
            return check_value(_UNARY[type(node.op)](operand(self.visit(node.operand))))
        except TypeError as error:
            raise EvaluationError(f"cannot evaluate {ast.unparse(node)}: {error}") from error

    def boolop(self, node: ast.BoolOp) -> Any:
        values = (self.visit(v) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)

    def compare(self, node: ast.Compare) -> bool:
        left = self.visit(node.left)
        for op_node, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.visit(right_node)  # a chain (w3 < w2 < w1) compares each neighbour, as Python does
            container = right if isinstance(op_node, _MEMBERSHIP) else operand(right)
            try:
                if not _COMPARE[type(op_node)](operand(left), container):
                    return False
            except TypeError as error:
                raise EvaluationError(f"cannot compare in {ast.unparse(node)}: {error}") from error
            left = right
        return True

    def ifexp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def subscript(self, node: ast.Subscript) -> Any:
        container = self.visit(node.value)
        if not isinstance(container, (list, tuple, str, range)):
            raise EvaluationError(f"only sequences can be indexed: {ast.unparse(node)}")
        if isinstance(node.slice, ast.Slice):  # fraction_nums[:4]: a slice is never longer than its sequence
            return container[self.slice_of(node.slice)]
        index = self.visit(node.slice)
        if type(index) is not int:
            raise EvaluationError(f"only integer indexing of sequences is allowed: {ast.unparse(node)}")
        if isinstance(container, Pair) and index in (1, -1):
            return container.number
        try:
            return container[index]
        except IndexError as error:
            raise EvaluationError(f"index {index} out of range in {ast.unparse(node)}") from error

    def slice_of(self, node: ast.Slice) -> slice:
        bounds = [None if part is None else self.visit(part) for part in (node.lower, node.upper, node.step)]
        if any(b is not None and type(b) is not int for b in bounds) or bounds[2] == 0:
            raise EvaluationError(f"slice bounds must be integers and the step non-zero: {ast.unparse(node)}")
        return slice(*bounds)

    def call(self, node: ast.Call) -> Any:
        name = dotted_name(node.func)
        function = self.functions.get(name) if name is not None else None
        if function is None:
            raise UnsafeExpressionError(f"unknown function {name}()")
        args = [self.visit(a) for a in node.args]
        try:
            return check_value(function(*args))
        except UnsafeExpressionError:
            raise
        except (ArithmeticError, TypeError, ValueError, IndexError, KeyError) as error:
            raise EvaluationError(f"{name}() failed: {error}") from error


_VISITORS: dict[type, Callable[[_Evaluator, Any], Any]] = {
    ast.Expression: _Evaluator.expression,
    ast.Constant: _Evaluator.constant,
    ast.Name: _Evaluator.name,
    ast.List: _Evaluator.list,
    ast.Tuple: _Evaluator.tuple,
    ast.BinOp: _Evaluator.binop,
    ast.UnaryOp: _Evaluator.unaryop,
    ast.BoolOp: _Evaluator.boolop,
    ast.Compare: _Evaluator.compare,
    ast.IfExp: _Evaluator.ifexp,
    ast.Subscript: _Evaluator.subscript,
    ast.Call: _Evaluator.call,
}


def evaluate(
    tree: ast.Expression, names: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]] | None = None
) -> Any:
    """Run an expression checked by :func:`compile_expression` on ``names`` and ``functions``."""
    try:
        return _Evaluator(names, functions or {}).visit(tree)
    except RecursionError as error:
        raise UnsafeExpressionError("expression nested too deeply to evaluate") from error


def safe_eval(
    expression: str, names: Mapping[str, Any] | None = None, functions: Mapping[str, Callable[..., Any]] | None = None
) -> Any:
    """Evaluate ``expression`` with only the whitelisted syntax, ``names`` and ``functions``."""
    return evaluate(compile_expression(expression), names or {}, functions)
