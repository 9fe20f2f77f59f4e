"""One token count read out of a provider's ``usage`` object: a non-negative whole number
(an ``int`` or an integral ``Decimal``) up to ``MAX_COUNT``, or refused with
``UsageNotUnderstood`` naming the field (``properties.usage.prompt_tokens``)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from metering.errors import UsageNotUnderstood

# No single call comes near this; it keeps sums far inside PostgreSQL's bigint and refuses
# a Decimal such as 1E+999999 before int() is asked to build it.
MAX_COUNT = 10**15


def count(value: Any, where: str, key: str) -> int:
    if type(value) is int:
        if 0 <= value <= MAX_COUNT:
            return value
    elif type(value) is Decimal:
        if value.is_finite() and 0 <= value <= MAX_COUNT and value == value.to_integral_value():
            return int(value)
    raise UsageNotUnderstood(
        f"{where}.{key} must be a whole number of tokens from 0 to {MAX_COUNT}, not {shown(value)}",
        param=f"{where}.{key}",
    )


def required(u: Mapping[str, Any], key: str, where: str) -> int:
    value = u.get(key)
    if value is None:
        raise UsageNotUnderstood(f"{where}.{key} is required", param=f"{where}.{key}")
    return count(value, where, key)


def optional(u: Mapping[str, Any], key: str, where: str) -> int:
    value = u.get(key)
    return 0 if value is None else count(value, where, key)


def nested(u: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
    value = u.get(key)
    if value is None or isinstance(value, Mapping):
        return value
    raise UsageNotUnderstood(
        f"{where}.{key} must be an object, not {type_name(value)}", param=f"{where}.{key}"
    )


def exceeds(param: str, what: str, limit: str) -> UsageNotUnderstood:
    return UsageNotUnderstood(f"{param}: {what} exceed {limit}", param=param)


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def shown(value: Any) -> str:
    shown = repr(value)
    return f"{shown[:40]}..." if len(shown) > 43 else shown
