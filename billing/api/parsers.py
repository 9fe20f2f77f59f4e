"""JSON in, exactly: numbers with a fraction become Decimal, never float; NaN and Infinity
are refused."""

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


class ExactJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            decoded = codecs.getreader(encoding)(stream)
            data = json.load(decoded, parse_float=Decimal, parse_constant=_refuse_constant)
        except RecursionError:
            raise ParseError("the body is not valid JSON: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"the body is not valid JSON: {exc}") from None
        if _has_nul(data):
            raise ParseError(
                "strings may not contain the NUL character (\\u0000) or a lone surrogate "
                "(\\ud800–\\udfff)"
            )
        return data
