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

# The rules are shared with the admin's JSON fields.
from billing.web.jsonstrict import (
    _duplicate_path,
    _duplicated,
    _has_nul,
    _refuse_constant,
    may_hold_unstorable,
)


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

            text = decoded.read()
            data = json.loads(
                text,
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
        if may_hold_unstorable(text) and _has_nul(data):
            raise ParseError(
                "strings may not contain the NUL character (\\u0000) or a lone surrogate "
                "(\\ud800–\\udfff)"
            )
        return data
