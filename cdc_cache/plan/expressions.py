"""Row expressions of the rules (filters, computed fields, per-row TTLs), parsed once.

An expression is a small Python-syntax formula over a row's columns, e.g.
``status == 'active' and qty > 0`` or ``qty * price``, evaluated by ``simpleeval`` (no
``eval``: only the syntax below, no attributes, no subscripts, no imports, bounded powers,
string lengths and integers from decimals). It is parsed and checked when the rules load,
so a syntax error or an unknown function stops startup with its file and line; evaluating
it walks the parsed tree, never the text. Functions are the deterministic few in
:data:`FUNCTIONS` (no clock, no random numbers): the planner stays a pure function of the
change. Columns hold the values as the table caches them (natural values: a DECIMAL is
exact text such as ``"12.50"`` unless ``decimals: number``, so arithmetic on it reads
``decimal(price)``).
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from simpleeval import EvalWithCompoundTypes, InvalidExpression

from cdc_cache.core.events import Row

_MAX_INT_DIGITS: Final = 4300
"""The most digits ``int`` and ``round`` may give: Python's own bound on reading an int
from text, which converting a decimal does not have."""


def _bounded(number: object) -> None:
    """Refuse a decimal whose integer part is longer than :data:`_MAX_INT_DIGITS`.

    ``int(decimal("1E+100000000"))`` would build a hundred-million-digit integer, a
    message's text stopping the worker for minutes.
    """
    if isinstance(number, Decimal) and number.is_finite() and number.adjusted() >= _MAX_INT_DIGITS:
        msg = f"{number.adjusted() + 1} digits before the point; at most {_MAX_INT_DIGITS}"
        raise ValueError(msg)


def _int(value: Any = 0, *base: int) -> int:
    _bounded(value)
    return int(value, *base)


def _round(number: Any, *ndigits: int) -> Any:
    if not ndigits:
        _bounded(number)
    return round(number, *ndigits)


FUNCTIONS: Final[Mapping[str, Callable[..., Any]]] = {
    "int": _int,
    "float": float,
    "str": str,
    "bool": bool,
    "len": len,
    "abs": abs,
    "min": min,
    "max": max,
    "round": _round,
    "decimal": Decimal,  # exact arithmetic on decimals cached as text ("12.50")
}

_ALLOWED: Final = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.UnaryOp, ast.Compare,
    ast.IfExp, ast.Call, ast.Name, ast.Load, ast.Constant, ast.Tuple, ast.List,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd,
    ast.Not, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
    ast.Is, ast.IsNot,
)  # fmt: skip
_MAX_CHARS: Final = 1000


class ExpressionFailed(Exception):
    """An expression could not be evaluated for a row (a type error, a missing column)."""


@dataclass(frozen=True, slots=True, eq=False)
class Expression:
    """A compiled row expression; ``columns`` are the names it reads, in order."""

    source: str
    columns: tuple[str, ...]
    _tree: ast.Expression = field(repr=False)

    @classmethod
    def compile(cls, source: str) -> Expression:
        """Parse and check ``source``; raises ValueError with a readable reason."""
        if not source.strip():
            msg = "the expression is empty"
            raise ValueError(msg)
        if len(source) > _MAX_CHARS:
            msg = f"the expression is {len(source)} characters long; at most {_MAX_CHARS}"
            raise ValueError(msg)
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            msg = f"not a valid expression ({exc.msg}) in {source!r}"
            raise ValueError(msg) from None
        columns: list[ast.Name] = []
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED):
                msg = f"{type(node).__name__} is not allowed in an expression: {source!r}"
                raise ValueError(msg)
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else None
                if name not in FUNCTIONS or node.keywords:
                    known = ", ".join(FUNCTIONS)
                    msg = f"only the functions {known} may be called, without keywords: {source!r}"
                    raise ValueError(msg)
            elif isinstance(node, ast.Name) and node.id not in FUNCTIONS:
                columns.append(node)
        columns.sort(key=lambda name: name.col_offset)  # in the order they are written
        return cls(source, tuple(dict.fromkeys(name.id for name in columns)), tree)

    def evaluate(self, row: Row) -> object:
        """The expression's value for ``row``; raises ExpressionFailed saying why."""
        missing = [c for c in self.columns if c not in row]
        if missing:
            msg = f"column {missing[0]!r} is absent from the row"
            raise ExpressionFailed(msg)
        evaluator = _evaluator()
        evaluator.names = row
        try:
            return evaluator.eval(self.source, previously_parsed=self._tree.body)
        except (InvalidExpression, ArithmeticError, TypeError, ValueError) as exc:
            msg = f"{type(exc).__name__}: {exc}"
            raise ExpressionFailed(msg) from None
        finally:
            evaluator.names = {}

    def describe(self, row: Row, hidden: frozenset[str] = frozenset()) -> str:
        """``'<source>' with col=value, ...`` for an error message; ``hidden`` shows as ***."""
        values = ", ".join(
            f"{c}={'***' if c in hidden else repr(row.get(c, '<absent>'))}" for c in self.columns
        )
        return f"'{self.source}' with {values or 'no columns'}"


_local = threading.local()


def _evaluator() -> EvalWithCompoundTypes:
    """The calling thread's evaluator (simpleeval keeps the names being evaluated on it)."""
    evaluator: EvalWithCompoundTypes | None = getattr(_local, "evaluator", None)
    if evaluator is None:
        evaluator = EvalWithCompoundTypes(functions=dict(FUNCTIONS), names={})
        _local.evaluator = evaluator
    return evaluator
