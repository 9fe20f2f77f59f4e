"""JSON in, exactly: numbers with a fraction become Decimal, never float; NaN and Infinity
are refused; a key written twice in one object is refused (``duplicate_key``, the dotted path
of the key as ``param``) — the standard library would silently keep the last one."""

from __future__ import annotations

import codecs
import json
from decimal import Decimal

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


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


class ExactJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            decoded = codecs.getreader(encoding)(stream)
            duplicates: list[bool] = []

            def hook(pairs: list) -> dict:
                obj = dict(pairs)
                if len(obj) == len(pairs):  # the hot path: one C call and a comparison
                    return obj
                duplicates.append(True)
                return _duplicated(pairs, obj)

            data = json.load(
                decoded,
                parse_float=Decimal,
                parse_constant=_refuse_constant,
                object_pairs_hook=hook,
            )
        except RecursionError:
            raise ParseError("the body is not valid JSON: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"the body is not valid JSON: {exc}") from None
        if duplicates:
            # Imported here: errors imports DRF's views, which load this module's class
            # from the settings (a module-level import would be circular).
            from billing.api.errors import APIError

            path = _duplicate_path(data)
            raise APIError(
                400,
                "duplicate_key",
                f"the key {path!r} is written more than once in the body; send it once",
                param=path,
            )
        if _has_nul(data):
            raise ParseError(
                "strings may not contain the NUL character (\\u0000) or a lone surrogate "
                "(\\ud800–\\udfff)"
            )
        return data
