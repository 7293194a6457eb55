"""Hit filters for screens: `herg_inhibition < 0.5 and solubility > -5`, evaluated on each output
row where the row is scored, so only hits travel back.

The expression is parsed with Python's `ast` and only comparisons, `and`/`or`/`not`, column
names, numbers, strings, `True`/`False` and lists (for `in`) are accepted; nothing is
evaluated as code. A row whose value is missing (an unreadable molecule, an endpoint without an
answer) or of another type than the comparison's fails the comparison.

>>> keep = compile_where("solubility > -5 and bbb_penetration_label == 'BBB+'", ["solubility",
...                      "bbb_penetration_label"])
>>> keep({"solubility": -3.2, "bbb_penetration_label": "BBB+"})
True
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

from molserve.errors import InvalidInput

_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_MISSING = object()

Row = dict[str, Any]


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(f"--where: {message}", code="invalid_where")


def _number(value: Any) -> Any:
    """CSV cells are text: a number written as text compares as the number."""
    if isinstance(value, str) and value not in ("", "True", "False"):
        try:
            return float(value)
        except ValueError:
            return value
    if value == "True":
        return True
    if value == "False":
        return False
    return value


def compile_where(expression: str, columns: list[str]) -> Callable[[Row], bool]:
    """A predicate on an output row (a dict keyed by column) for `expression`; a name that is
    not a column, or a construct other than comparisons and boolean logic, is refused."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise _invalid(f"cannot read {expression!r} ({error.msg} at column {error.offset})") from None
    known = set(columns)

    def build(node: ast.AST) -> Callable[[Row], Any]:
        if isinstance(node, ast.BoolOp):
            parts = [build(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda row: all(p(row) for p in parts)
            return lambda row: any(p(row) for p in parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = build(node.operand)
            return lambda row: not inner(row)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
                and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, int | float):
            value = -node.operand.value
            return lambda row: value
        if isinstance(node, ast.Compare):
            terms = [build(node.left), *(build(c) for c in node.comparators)]
            ops = []
            for op in node.ops:
                if type(op) not in _COMPARE:
                    raise _invalid(f"{type(op).__name__} is not a comparison it knows")
                ops.append(_COMPARE[type(op)])

            def compare(row: Row) -> bool:
                values = [t(row) for t in terms]
                for left, op, right in zip(values, ops, values[1:], strict=False):
                    if left is _MISSING or right is _MISSING:
                        return False
                    try:
                        if not op(left, right):
                            return False
                    except TypeError:
                        return False
                return True

            return compare
        if isinstance(node, ast.Name):
            name = node.id
            if name not in known:
                raise _invalid(f"no column {name!r}; columns: {', '.join(columns)}")
            return lambda row: _value(row.get(name))
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
            value = node.value
            return lambda row: value
        if isinstance(node, ast.List | ast.Tuple):
            items = [build(e) for e in node.elts]
            return lambda row: [i(row) for i in items]
        raise _invalid(f"{ast.unparse(node)!r} is not a column, a value or a comparison")

    check = build(tree.body)

    def keep(row: Row) -> bool:
        result = check(row)
        return result is not _MISSING and bool(result)

    return keep


def _value(cell: Any) -> Any:
    if cell is None or cell == "":
        return _MISSING
    return _number(cell)
