"""JSON read exactly, for every interface that parses it (the API's body parser, the admin's
JSON fields): numbers with a fraction become Decimal, never float; NaN and Infinity are
refused; a key written twice in one object is refused, named by its dotted path
(``charges[0].unit_price``) — the standard library would silently keep the last one; text
PostgreSQL cannot store (U+0000, a lone surrogate) is refused."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation


class DuplicateKey(ValueError):
    """A key written twice; ``path`` is its dotted path."""

    def __init__(self, path: str):
        super().__init__(f"the key {path!r} is written more than once; write it once")
        self.path = path


class Unstorable(ValueError):
    def __init__(self):
        super().__init__(
            "strings may not contain the NUL character (\\u0000) or a lone surrogate "
            "(\\ud800–\\udfff)"
        )


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON here")


def _unstorable(item: str) -> bool:
    if "\x00" in item:
        return True
    try:
        item.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (\ud800): not text
        return True
    return False


def may_hold_unstorable(text: str) -> bool:
    """Whether a string parsed from the JSON ``text`` may hold U+0000 or a lone surrogate:
    JSON spells them only as ``\\u`` escapes (a raw control character inside a string is
    invalid JSON), so a text with no ``\\u`` and nothing unstorable in itself has none —
    found by two C-speed scans instead of a walk through every parsed value (6.5 µs an
    event of a batch, measured 2026-12-06)."""
    return "\\u" in text or _unstorable(text)


def _has_nul(value) -> bool:
    """PostgreSQL text and jsonb cannot store U+0000, nor a lone UTF-16 surrogate.
    Iterative: bodies may nest deeply."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _unstorable(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class _Duplicated(dict):
    """An object in which ``duplicate`` was written more than once (kept as a marker until
    the whole body is read, so that the error can name the key's full path)."""

    duplicate: str


def _duplicated(pairs: list, obj: dict) -> _Duplicated:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            break
        seen.add(key)
    marked = _Duplicated(obj)
    marked.duplicate = key
    return marked


def _duplicate_path(value, path: str = "") -> str | None:
    """The dotted path (``charges[0].unit_price``) of the first key written twice."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            if isinstance(item, _Duplicated):
                return f"{where}.{item.duplicate}" if where else item.duplicate
            for key, sub in reversed(item.items()):
                stack.append((sub, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            for i in range(len(item) - 1, -1, -1):
                stack.append((item[i], f"{where}[{i}]"))
    return None


def loads(text: str, *, path: str = ""):
    """``text`` parsed exactly (see the module's docstring). Raises ``DuplicateKey`` (its
    ``path`` prefixed with ``path``), ``Unstorable``, or ``ValueError`` for anything else
    that is not valid JSON (``RecursionError`` and an exponent ``Decimal`` cannot hold included)."""
    duplicates: list[bool] = []

    def hook(pairs: list) -> dict:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        duplicates.append(True)
        return _duplicated(pairs, obj)

    try:
        data = json.loads(
            text, parse_float=Decimal, parse_constant=_refuse_constant, object_pairs_hook=hook
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except InvalidOperation:  # Decimal("1e99999999999999999999"): was a 500
        raise ValueError("a number's exponent is out of range") from None
    if duplicates:
        # (the marker is in ``data``, so the path is found; ``path`` itself is only a fallback)
        raise DuplicateKey(_duplicate_path(data, path) or path)
    if may_hold_unstorable(text) and _has_nul(data):
        raise Unstorable()
    return data
