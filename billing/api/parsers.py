"""JSON in, exactly: numbers with a fraction become Decimal, never float; NaN and Infinity
are refused; a key written twice in one object is refused (``duplicate_key``, the dotted path
of the key as ``param``) — the standard library would silently keep the last one.

Two readings, one answer. The exact one is the standard library's with an
``object_pairs_hook`` (a Python call per object: 7 µs an event of a batch of 1,000,
measured 2026-12-07). The fast one, tried first on a UTF-8 body, is msgspec's decoder (numbers
with a fraction or exponent given to ``Decimal`` as written, integers as ``int``; it refuses
what the standard library refuses: NaN, control characters, lone surrogates, trailing
data) with a check that no key was dropped; anything it does not take, or any doubt, goes
to the exact reading, so errors (messages included) and duplicate keys are answered by it
alone."""

from __future__ import annotations

import codecs
import io
import json
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
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
from billing.web.jsonstrict import _unstorable as _unstorable_text

_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_ENCODER = msgspec.json.Encoder()
_UNSURE = object()
# Both readings refuse a body nested deeper than the interpreter's recursion allows, msgspec
# a few levels deeper than the exact reading (its object hook is a frame of its own): read
# from this many frames further down, msgspec refuses first, so that a body it reads is
# one the exact reading would have read too (tests/billing/test_api_json_read.py).
_HEADROOM = 32


def _read_fast(body: bytes, frames: int = _HEADROOM, *, escaped: bool = True) -> Any:
    """``body`` read by msgspec, or ``_UNSURE`` when the exact reading must decide.

    A decoder that keeps the last of two equal keys drops a pair; this one's result is
    checked to have lost none, by counting colons at C speed. In valid JSON every key is
    followed by exactly one colon outside strings, and the other colons are inside strings,
    written as ``:`` or as the escape ``\\u003a``/``\\u003A``; re-encoded by msgspec (which
    escapes no colon, writes a Decimal as a quoted string and adds none of its own), the
    result holds one colon per pair it kept plus its strings' colons. So with no pair
    dropped, the colons of the re-encoding equal the colons of the body plus its colon
    escapes (unless a backslash-escaped backslash precedes "u003a": counted, not a colon —
    then the counts differ and the exact reading decides); every dropped pair takes its
    own colon away (and its key's and value's, never adding any), so a duplicate key
    always makes the re-encoding's count smaller and is never let through."""
    if frames:
        return _read_fast(body, frames - 1, escaped=escaped)
    try:
        data = _DECODER.decode(body)
        colons = body.count(b":")
        if escaped:  # False: the body holds no ``\\u``, so no escaped colon either
            colons += body.count(b"\\u003a") + body.count(b"\\u003A")
        if _ENCODER.encode(data).count(b":") != colons:
            return _UNSURE
    except Exception:  # noqa: BLE001 - invalid, too deep, out of range…: the exact reading says
        return _UNSURE
    return data


class ExactJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            body = stream.read()
        except ValueError as exc:  # (a closed stream, say) answered as the exact reading did
            raise ParseError(f"the body is not valid JSON: {exc}") from None
        if _is_utf8(encoding):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:  # the exact reading's decoder says what to answer
                pass
            else:
                # found once for both uses: in a UTF-8 body, as in its text, ``\\u`` is two
                # bytes (a scan of a batch's text cost 0.6 µs an event, measured 2026-12-07)
                escaped = b"\\u" in body
                data = _read_fast(body, escaped=escaped)
                if data is not _UNSURE:
                    # may_hold_unstorable(text), its first scan done on the bytes
                    if (escaped or _unstorable_text(text)) and _has_nul(data):
                        raise _unstorable()
                    return data
        # The exact reading, as it always was (called from this frame, as it always was: the
        # depth a body may nest to depends on it).
        try:
            decoded = codecs.getreader(encoding)(io.BytesIO(body))
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
        except InvalidOperation:  # Decimal("1e99999999999999999999"): was a 500
            raise ParseError(
                "the body is not valid JSON: a number's exponent is out of range"
            ) from None
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
            raise _unstorable()
        return data


def _unstorable() -> ParseError:
    return ParseError(
        "strings may not contain the NUL character (\\u0000) or a lone surrogate (\\ud800–\\udfff)"
    )


def _is_utf8(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:  # the exact reading answers it as it always has
        return False
