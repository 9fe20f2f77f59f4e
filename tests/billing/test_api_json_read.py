"""The API's JSON, read fast, answers as the exact reading does.

``ExactJSONParser`` tries msgspec first and keeps the standard library's reading (its
``object_pairs_hook`` refusing a key written twice) for what msgspec does not take or when
it may have dropped a key. Compared here with the parser as it was, over hand-picked and
generated bodies: the same data with the same types (exact decimals, never a float), the
same errors with the same messages and parameters."""

from __future__ import annotations

import codecs
import io
import json
import random
from decimal import Decimal

import pytest
from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from billing.api import parsers
from billing.api.errors import APIError
from billing.api.parsers import ExactJSONParser
from billing.web.jsonstrict import (
    _duplicate_path,
    _duplicated,
    _has_nul,
    _refuse_constant,
    may_hold_unstorable,
)


class ReferenceParser(JSONParser):
    """ExactJSONParser as it was before msgspec read first (2026-12-07), word for word."""

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


def typed(value) -> list:
    """``value`` as a flat list with every type spelt out (1, True and Decimal("1") differ;
    order kept). Iterative: bodies nest deeply."""
    out: list = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            out.append(("dict", len(item)))
            for key, sub in reversed(item.items()):
                stack.extend((sub, key))
        elif isinstance(item, list):
            out.append(("list", len(item)))
            stack.extend(reversed(item))
        elif isinstance(item, Decimal):
            out.append(("Decimal", str(item)))  # its exponent too: 1.50 is not 1.5
        else:
            out.append((type(item).__name__, item))
    return out


def outcome(parser, body: bytes, encoding: str = "utf-8"):
    try:
        data = parser.parse(io.BytesIO(body), "application/json", {"encoding": encoding})
    except APIError as exc:
        return ("APIError", exc.status_code, exc.error_code, str(exc.detail), exc.param)
    except ParseError as exc:
        return ("ParseError", str(exc.detail))
    except Exception as exc:  # noqa: BLE001 - compared, whatever it is
        return (type(exc).__name__, str(exc))
    return ("data", typed(data))


def assert_as_before(body: bytes, encoding: str = "utf-8"):
    new, old = (
        outcome(ExactJSONParser(), body, encoding),
        outcome(ReferenceParser(), body, encoding),
    )
    if old[0] == "InvalidOperation":  # a server error before; refused as invalid JSON now
        old = ("ParseError", "the body is not valid JSON: a number's exponent is out of range")
    assert new == old, body[:300]
    return new


# --- reading ---------------------------------------------------------------------------------

EDGE_CASES = [
    "{}",
    "[]",
    '{"a": 1}',
    ' \t\r\n{"a" : [1 , 2]}\n',
    "1",
    '"text"',
    "true",
    "null",
    # numbers: exact, never a float; what JSON refuses stays refused
    "1.50",
    "1E5",
    "1e-5",
    "1.50E+3",
    "-0",
    "-0.0",
    "0e0",
    "123456789012345678901234567890",
    "123456789012345678901234567890.123456789012345678901234567890",
    "9" * 4300,
    "9" * 4301,
    "1." + "0" * 5000,
    "NaN",
    "Infinity",
    "-Infinity",
    '{"a": NaN}',
    "01",
    "-01",
    "1.",
    ".5",
    "+1",
    "-",
    "1e",
    "1e+",
    # strings: escapes, control characters, surrogates, NUL
    '"\\u003a"',
    '"\\u003A"',
    '"\\\\u003a"',
    '{"a\\u003ab": "c:d", "e": "\\\\u003A:"}',
    '"\\ud83d\\ude00"',
    '"\\ud800"',
    '"\\udfff"',
    '"\\ud83d\\u0041"',
    '{"a": "\\u0000"}',
    '"\\u12"',
    '"\\x"',
    '"a\tb"',
    '"a\x01b"',
    '"\x7f"',
    '"\u2028"',
    '"é ☕ 😀"',
    '"\\u00e9"',
    # structure
    '{"a": 1,}',
    "[1,]",
    "[1]]",
    '{"a": 1} x',
    "1 2",
    '{"a" 1}',
    "{'a': 1}",
    "{1: 2}",
    "",
    " ",
    "\ufeff{}",
    # keys written twice, at any depth, whatever the values hold
    '{"a": 1, "a": 2}',
    '{"a": 1, "a": 1}',
    '{"a": {"b": 1, "b": {"c": 2}}}',
    '{"events": [{"k": 1}, {"k": 1, "p": {"u": {"t": 1, "t": 2}}}]}',
    '{"a": "x:y", "a": "z"}',
    '{"a": "x", "a": "y:z"}',
    '{"a:b": 1, "a:b": 2}',
    '{"a": "\\u003a", "a": 1}',
    '{"a": 1, "a": "\\u003a"}',
    '{"a": 1, "a": "\\u003a\\u003a"}',
    '{"a": 1, "a": "\\\\u003a"}',
    '{"\\u0061": 1, "a": 2}',
    '{"a": [], "a": {}}',
    '{"a": 1, "b": 2, "a": 3}',
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_each_edge_case_is_answered_as_before(text):
    assert_as_before(text.encode())


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": "\xff"}',  # not UTF-8
        b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate: not UTF-8
        b'{"a": 1}\xc3',  # a truncated character after the body (the old reader drops it)
        b'{"a": "\xc3"}',
        b'\xef\xbb\xbf{"a": 1}',  # a byte order mark
    ],
)
def test_bytes_that_are_not_utf8_are_answered_as_before(body):
    assert_as_before(body)


@pytest.mark.parametrize("encoding", ["UTF-8", "utf8", "latin-1", "utf-16", "no-such-charset"])
def test_other_charsets_are_answered_as_before(encoding):
    for text in ['{"a": "é"}', '{"a": 1, "a": 2}']:
        try:
            body = text.encode(encoding)
        except LookupError:
            body = text.encode()
        assert_as_before(body, encoding)


# Pieces of generated bodies: strings with colons written every way, escapes, non-ASCII.
STRING_PIECES = [
    "a",
    "b",
    ":",
    "\\u003a",
    "\\u003A",
    "\\\\u003a",
    '\\"',
    "\\\\",
    "\\/",
    "\\n",
    "\\t",
    "é",
    "\\u00e9",
    "\\ud83d\\ude00",
    "😀",
    "\u2028",
    "\\u2028",
    " ",
    "\\u0000",
    "\\ud800",
    "{",
    "]",
    ",",
]
NUMBERS = ["0", "-0", "7", "-12", "1.5", "1.50", "-0.0", "2e3", "2E-3", "1.25e+2", "1" * 25]
SPACES = ["", "", "", " ", "\n", "\t ", "\r\n"]


def _string(rng: random.Random) -> str:
    return '"' + "".join(rng.choice(STRING_PIECES) for _ in range(rng.randrange(4))) + '"'


def _value(rng: random.Random, depth: int) -> str:
    kind = rng.random()
    if depth > 4 or kind < 0.35:
        return rng.choice([_string(rng), rng.choice(NUMBERS), "true", "false", "null"])
    ws = lambda: rng.choice(SPACES)  # noqa: E731
    if kind < 0.55:
        items = [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
        return "[" + ws() + ("," + ws()).join(items) + ws() + "]"
    keys = [rng.choice(['"k"', '"p"', '"a:b"', '"\\u003a"', '"é"']) for _ in range(4)]
    keys += [_string(rng) for _ in range(2)]
    pairs = [
        f"{rng.choice(keys)}{ws()}:{ws()}{_value(rng, depth + 1)}" for _ in range(rng.randrange(5))
    ]
    return "{" + ws() + ("," + ws()).join(pairs) + ws() + "}"


def _mutated(rng: random.Random, text: str) -> str:
    at = rng.randrange(len(text) + 1)
    change = rng.random()
    if change < 0.4:
        return text[:at] + text[at + 1 :]
    if change < 0.8:
        return text[:at] + rng.choice('{}[]:,"\\ 0-.eE') + text[at:]
    return text[:at]


def test_generated_bodies_are_answered_as_before():
    """Thousands of bodies: keys written twice (colons and colon escapes in keys and values,
    so that the fast reading's check is put to the test), exact numbers, escapes, NUL and
    lone surrogates, and broken ones (a character missing, added, the end cut)."""
    rng = random.Random(20261207)
    answers: dict[str, int] = {}
    fast = 0
    for _ in range(4000):
        text = _value(rng, 0)
        if rng.random() < 0.25:
            text = _mutated(rng, text)
        kind = assert_as_before(text.encode())[0]
        answers[kind] = answers.get(kind, 0) + 1
        fast += parsers._read_fast(text.encode()) is not parsers._UNSURE
    # all the kinds of answer were met, and most valid bodies took the fast reading
    assert answers.keys() >= {"data", "APIError", "ParseError"}, answers
    assert fast > answers["data"] * 0.7, (fast, answers)


def test_a_key_written_twice_is_never_let_through_by_the_fast_reading():
    rng = random.Random(7)
    for _ in range(3000):
        text = _value(rng, 0)
        try:
            ReferenceParser().parse(io.BytesIO(text.encode()))
        except APIError:
            assert parsers._read_fast(text.encode()) is parsers._UNSURE, text
        except ParseError:
            pass


def _threshold(parse, shape) -> int:
    """The deepest nesting ``parse`` reads, called from here."""
    low, high = 1, 5000
    while low < high:
        middle = (low + high + 1) // 2
        try:
            parse(io.BytesIO(shape(middle).encode()))
        except ParseError:
            high = middle - 1
        else:
            low = middle
    return low


SHAPES = {
    "arrays": lambda n: "[" * n + "]" * n,
    "objects": lambda n: '{"a":' * n + "1" + "}" * n,
    "mixed": lambda n: '[{"a":' * (n // 2) + "1" + "}]" * (n // 2),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_a_body_nested_deeply_is_answered_as_before(shape):
    """msgspec refuses to nest a few levels deeper than the exact reading; read from
    further down the stack, it refuses first, and the exact reading decides."""
    limit = _threshold(ReferenceParser().parse, shape)
    assert _threshold(ExactJSONParser().parse, shape) == limit
    for depth in range(limit - 40, limit + 3):
        assert_as_before(shape(depth).encode())


def test_an_ordinary_batch_is_read_by_msgspec(monkeypatch):
    """The point of it all: a batch of events is not read by the standard library."""
    events = [
        {
            "idempotency_key": f"k{n}",
            "customer": "acme",
            "event_name": "llm.completion",
            "timestamp": "2026-12-07T12:00:00.123Z",
            "properties": {"model": "gpt-4o", "usage": {"prompt_tokens": n}, "price": "P"},
        }
        for n in range(50)
    ]
    body = json.dumps({"events": events}).replace('"P"', "0.10").encode()
    expected = typed(ReferenceParser().parse(io.BytesIO(body)))

    def refuse(*args, **kwargs):
        raise AssertionError("the standard library's json.loads was called")

    monkeypatch.setattr(parsers.json, "loads", refuse)
    assert typed(ExactJSONParser().parse(io.BytesIO(body))) == expected


@pytest.mark.parametrize("number", ["1e99999999999999999999", "-1.5E-99999999999999999999"])
def test_a_number_whose_exponent_decimal_cannot_hold_is_invalid_json(number):
    """(It was a server error: Decimal raises InvalidOperation, not ValueError.)"""
    with pytest.raises(ParseError) as refused:
        ExactJSONParser().parse(io.BytesIO(f'{{"amount": {number}}}'.encode()))
    assert str(refused.value.detail) == (
        "the body is not valid JSON: a number's exponent is out of range"
    )
