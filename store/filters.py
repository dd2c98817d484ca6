"""The ``filter`` of a store search, matched against item values.

The semantics of LangGraph's ``BaseStore`` filters: each key of the filter names a field of the
value; a plain filter value must equal the field (a dict matches field by field, a list item by
item); a dict of operators (``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``) must hold for
all of them. Ordering compares numbers with numbers and strings with strings; a missing field or
a value of another type never matches an ordering (rather than raising, as a mixed store would).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
OPERATORS: frozenset[str] = frozenset({"$eq", "$ne", *_ORDERINGS})


class InvalidFilter(ValueError):
    pass


def filter_check(filter_: Any) -> dict[str, Any]:
    """``filter_`` itself when it is a valid filter; ``InvalidFilter`` naming the problem."""
    if filter_ is None:
        return {}
    if not isinstance(filter_, dict):
        raise InvalidFilter("filter must be an object of value fields")
    _check_conditions(filter_, "filter")
    return filter_


def _check_conditions(conditions: dict[str, Any], where: str) -> None:
    for field, condition in conditions.items():
        if not isinstance(condition, dict):
            continue
        operators = [name for name in condition if name.startswith("$")]
        if operators and len(operators) != len(condition):
            raise InvalidFilter(f"{where}.{field} mixes operators and fields")
        unknown = sorted(set(operators) - OPERATORS)
        if unknown:
            raise InvalidFilter(
                f"{where}.{field}: unsupported operator {unknown[0]}; supported: {sorted(OPERATORS)}"
            )
        if not operators:
            _check_conditions(condition, f"{where}.{field}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ordered(left: Any, name: str, right: Any) -> bool:
    if _number(left) and _number(right) or isinstance(left, str) and isinstance(right, str):
        return _ORDERINGS[name](left, right)
    return False


def _equal(left: Any, right: Any) -> bool:
    # JSON semantics: true is not 1, though Python says so.
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    return left == right


def _condition_holds(value: Any, condition: Any) -> bool:
    if isinstance(condition, dict):
        if condition and all(name.startswith("$") for name in condition):
            return all(_operator_holds(value, name, operand) for name, operand in condition.items())
        return isinstance(value, dict) and all(
            _condition_holds(value.get(field), sub) for field, sub in condition.items()
        )
    if isinstance(condition, list):
        return (
            isinstance(value, list)
            and len(value) == len(condition)
            and all(_condition_holds(v, c) for v, c in zip(value, condition, strict=True))
        )
    return _equal(value, condition)


def _operator_holds(value: Any, name: str, operand: Any) -> bool:
    if name == "$eq":
        return _condition_holds(value, operand)
    if name == "$ne":
        return not _condition_holds(value, operand)
    return _ordered(value, name, operand)


def value_matches(value: dict[str, Any], filter_: dict[str, Any]) -> bool:
    """Whether an item's ``value`` passes a checked ``filter_``."""
    return all(_condition_holds(value.get(field), condition) for field, condition in filter_.items())
