"""JSON out, fast, byte for byte as DRF's ``JSONRenderer`` writes it.

A batch's answer is a thousand small objects; DRF's renderer (the standard library's
encoder with DRF's ``default`` hook, then two passes escaping U+2028 and U+2029) took 2–4 µs
an event of it, msgspec's encoder 0.2 µs (measured 2026-12-07). The two write the same
bytes for JSON's own types — strings (the same escapes, non-ASCII as UTF-8), integers,
booleans, null, objects with string keys and arrays — but not for others: DRF writes a
Decimal as a float, a datetime in its own format, bytes as text, and floats with ``e+16``
where msgspec writes ``e16``. So an answer is written by msgspec only when it has the shape
``PLAIN`` and holds nothing else (checked by ``msgspec.convert``, strict, in C); anything
else (a list of events with their free-form properties, say), an indented answer asked for
(``Accept: application/json; indent=4``) or DRF's settings changed from compact, Unicode and
strict is written by DRF's renderer as before (tests/billing/test_api_json_write.py)."""

from __future__ import annotations

from typing import Union

import msgspec
from rest_framework.renderers import JSONRenderer

# The ingest routes' answers, and nothing deeper: a batch's {"data": [{"index", "status",
# "event" | "error": {...}}], "accepted", …}, an event's {"id", "amount", …}, an error's
# {"error": {"type", "code", "message", "param"}}. (A type as narrow as the answers keeps
# the check cheap: 0.5 µs an event of a batch, a generic nested one cost 0.8–1.5.)
_LEAF = Union[str, bool, int, None]  # noqa: UP007 - runtime types, read by msgspec
_OBJECT = dict[str, _LEAF]
_ITEM = dict[str, Union[_LEAF, list[_LEAF], _OBJECT]]  # noqa: UP007
PLAIN = dict[str, Union[_LEAF, list[_ITEM], _OBJECT]]  # noqa: UP007
_ENCODER = msgspec.json.Encoder()


class CheckedJSON(dict):
    """An answer of shape ``PLAIN`` whose every value its view built as a str, int, bool or
    None (never a Decimal, float, datetime or other type DRF writes its own way): written
    without the check (0.5 µs an event of a batch's answer, measured 2026-12-07). A view
    that cannot say so of every value answers a plain dict."""

    __slots__ = ()


class FastJSONRenderer(JSONRenderer):
    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        if (
            self.compact
            and not self.ensure_ascii
            and self.strict
            and self.get_indent(accepted_media_type, renderer_context or {}) is None
        ):
            try:
                if type(data) is not CheckedJSON:
                    msgspec.convert(data, PLAIN, strict=True)
                content = _ENCODER.encode(data)
            except (msgspec.ValidationError, TypeError, ValueError, OverflowError):
                pass
            else:
                # DRF escapes these two (valid JSON, not valid JavaScript); in UTF-8 their
                # bytes mean nothing else. (Their lead byte looked for first: one scan of an
                # answer that is ASCII, as most are.)
                if b"\xe2" in content and (
                    b"\xe2\x80\xa8" in content or b"\xe2\x80\xa9" in content
                ):
                    content = content.replace(b"\xe2\x80\xa8", b"\\u2028").replace(
                        b"\xe2\x80\xa9", b"\\u2029"
                    )
                return content
        return super().render(data, accepted_media_type, renderer_context)
