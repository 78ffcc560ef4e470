"""A small expression evaluator for template files, which are data from strangers.

Only an AST whitelist is evaluated: numbers, strings, names bound by the template, lists/tuples, arithmetic,
comparisons, boolean logic, conditional expressions, subscripts, and calls to the functions passed in (the
template DSL's ``sample``/``range`` and a few builtins). No attribute access, no lambdas, no comprehensions,
never ``eval``/``exec``. Sizes are bounded so a hostile expression cannot exhaust memory or time.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10**18
MAX_SEQUENCE = 10_000


class UnsafeExpressionError(ValueError):
    """The expression uses something outside the whitelist, or exceeds a size bound."""


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
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


def _check_size(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and abs(value) > MAX_MAGNITUDE:
        raise UnsafeExpressionError(f"number too large: magnitude above {MAX_MAGNITUDE}")
    if isinstance(value, (str, list, tuple, range)) and len(value) > MAX_SEQUENCE:
        raise UnsafeExpressionError(f"sequence too long: more than {MAX_SEQUENCE} items")
    return value


class _Evaluator:
    def __init__(self, names: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]):
        self.names = names
        self.functions = functions

    def visit(self, node: ast.AST) -> Any:
        method = getattr(self, f"_{type(node).__name__.lower()}", None)
        if method is None:
            raise UnsafeExpressionError(f"not allowed in a template expression: {type(node).__name__}")
        return _check_size(method(node))

    def _expression(self, node: ast.Expression) -> Any:
        return self.visit(node.body)

    def _constant(self, node: ast.Constant) -> Any:
        if not isinstance(node.value, (int, float, str, bool)) or node.value is None:
            raise UnsafeExpressionError(f"constant of type {type(node.value).__name__} not allowed")
        return node.value

    def _name(self, node: ast.Name) -> Any:
        if node.id in self.names:
            return self.names[node.id]
        raise UnsafeExpressionError(f"unknown name {node.id!r}")

    def _list(self, node: ast.List) -> list[Any]:
        return [self.visit(e) for e in node.elts]

    def _tuple(self, node: ast.Tuple) -> tuple[Any, ...]:
        return tuple(self.visit(e) for e in node.elts)

    def _binop(self, node: ast.BinOp) -> Any:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise UnsafeExpressionError(f"operator {type(node.op).__name__} not allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.Pow) and (not isinstance(right, (int, float)) or abs(right) > MAX_EXPONENT):
            raise UnsafeExpressionError(f"exponent above {MAX_EXPONENT}")
        sequences = (str, list, tuple)
        if isinstance(node.op, ast.Mult) and (isinstance(left, sequences) or isinstance(right, sequences)):
            raise UnsafeExpressionError("sequence repetition not allowed")
        try:
            return op(left, right)
        except (ArithmeticError, TypeError) as error:
            raise UnsafeExpressionError(f"cannot evaluate: {error}") from error

    def _unaryop(self, node: ast.UnaryOp) -> Any:
        op = _UNARY.get(type(node.op))
        if op is None:
            raise UnsafeExpressionError(f"operator {type(node.op).__name__} not allowed")
        return op(self.visit(node.operand))

    def _boolop(self, node: ast.BoolOp) -> Any:
        values = (self.visit(v) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)

    def _compare(self, node: ast.Compare) -> bool:
        left = self.visit(node.left)
        for op_node, right_node in zip(node.ops, node.comparators, strict=True):
            op = _COMPARE.get(type(op_node))
            if op is None:
                raise UnsafeExpressionError(f"comparison {type(op_node).__name__} not allowed")
            right = self.visit(right_node)
            if not op(left, right):
                return False
            left = right
        return True

    def _ifexp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def _subscript(self, node: ast.Subscript) -> Any:
        container, index = self.visit(node.value), self.visit(node.slice)
        if not isinstance(container, (list, tuple, str, range)) or not isinstance(index, int):
            raise UnsafeExpressionError("only integer indexing of sequences is allowed")
        try:
            return container[index]
        except IndexError as error:
            raise UnsafeExpressionError(f"index out of range: {index}") from error

    def _call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in self.functions:
            raise UnsafeExpressionError(f"call not allowed: {ast.unparse(node.func)}")
        if node.keywords:
            raise UnsafeExpressionError("keyword arguments not allowed")
        args = [self.visit(a) for a in node.args]
        try:
            return self.functions[node.func.id](*args)
        except UnsafeExpressionError:
            raise
        except (ArithmeticError, TypeError, ValueError, IndexError) as error:
            raise UnsafeExpressionError(f"{node.func.id}() failed: {error}") from error


def safe_eval(
    expression: str, names: Mapping[str, Any] | None = None, functions: Mapping[str, Callable[..., Any]] | None = None
) -> Any:
    """Evaluate ``expression`` with only the whitelisted syntax, ``names`` and ``functions``."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise UnsafeExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise UnsafeExpressionError(f"not an expression: {expression!r}") from error
    return _Evaluator(names or {}, functions or {}).visit(tree)
