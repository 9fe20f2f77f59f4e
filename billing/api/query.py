"""Query parameters of the API's routes: refuse what a route does not take, parse what it does.

Every view of the API derives from ``APIView`` below and declares the query parameters each
of its methods takes (``query_params = {"GET": ("customer", *PAGE_PARAMS)}``); a method it
does not name takes none. ``APIView.initial`` checks them once authentication, scope and
rate limit have passed, before the handler runs, so a route added later cannot forget to:
a parameter the route does not know is refused (400 ``unknown_parameter``, ``param`` naming
it) rather than ignored, so that a typo (``?custmer=acme``) never silently lists everything.
A parameter given twice, a value with a NUL character, a malformed date, a value outside its
choices or a ``limit`` outside 1..100 is refused with 400 ``invalid_parameter``. Nothing here
touches the database. The declarations match the OpenAPI schema's parameters
(tests/billing/test_api_query_params.py compares them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from rest_framework import views

from billing.api.errors import APIError
from billing.api.pagination import DEFAULT_LIMIT, MAX_LIMIT

PAGE_PARAMS = ("limit", "starting_after")
MAX_ID = 2**63 - 1

# A date (midnight UTC), or an RFC 3339 timestamp with its offset. In a query string an
# unencoded "+" arrives as a space: "…T10:00:00 02:00" is read as "+02:00".
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIMESTAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)([Zz]|[+\- ]\d{2}:\d{2})"
)


def invalid(name: str, message: str) -> APIError:
    return APIError(400, "invalid_parameter", message, param=name)


def check_params(request, allowed: Iterable[str], *, paginated: bool = True) -> None:
    """Refuse unknown parameters (``unknown_parameter``), repeated ones and NUL characters
    (``invalid_parameter``). ``limit`` and ``starting_after`` are allowed when paginated."""
    known = set(allowed) | (set(PAGE_PARAMS) if paginated else set())
    for name in request.query_params:
        if name not in known:
            shown = name[:100]
            takes = ", ".join(sorted(known)) if known else "no query parameters"
            raise APIError(
                400,
                "unknown_parameter",
                f"unknown query parameter {shown!r}; this route takes {takes}",
                param=shown,
            )
        values = request.query_params.getlist(name)
        if len(values) > 1:
            raise invalid(name, f"{name} is given more than once")
        if "\x00" in values[0]:
            raise invalid(name, f"{name} must not contain NUL characters")


class APIView(views.APIView):
    """The base of every API view: refuses the query parameters a method does not declare.

    ``query_params`` maps an HTTP method to the names it takes (HEAD takes GET's); a method
    absent from it takes none. ``None`` turns the check off, for a route whose URL is not
    ours to define (Stripe's webhooks). OPTIONS is not checked."""

    query_params: Mapping[str, Iterable[str]] | None = {}

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)  # authentication, scope, rate limit first
        if self.query_params is None or request.method == "OPTIONS":
            return
        method = "GET" if request.method == "HEAD" else request.method
        check_params(request, self.query_params.get(method, ()), paginated=False)


def text(request, name: str, *, max_length: int = 200) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not value or len(value) > max_length:
        raise invalid(name, f"{name} must be 1 to {max_length} characters")
    return value


def choice(request, name: str, choices: Iterable[str]) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    options = list(choices)
    if value not in options:
        raise invalid(name, f"{name} must be one of {', '.join(options)}")
    return value


def parse_moment(value: str, name: str) -> datetime:
    """A date (``2026-05-01``: midnight UTC) or an RFC 3339 timestamp with an offset."""
    try:
        if _DATE.fullmatch(value):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        match = _TIMESTAMP.fullmatch(value)
        if match is None:
            raise ValueError
        day, clock, offset = match.groups()
        offset = "+00:00" if offset in "Zz" else offset.replace(" ", "+")
        return datetime.fromisoformat(f"{day}T{clock}{offset}").astimezone(UTC)
    except (ValueError, OverflowError):
        raise invalid(
            name, f"{name} must be a date (2026-05-01) or an RFC 3339 timestamp with an offset"
        ) from None


def moment(request, name: str) -> datetime | None:
    value = request.query_params.get(name)
    return None if value is None else parse_moment(value, name)


def time_range(request, start_name: str, end_name: str) -> tuple[datetime | None, datetime | None]:
    """[start, end): ``start`` inclusive, ``end`` exclusive; ``end`` must be after ``start``."""
    start, end = moment(request, start_name), moment(request, end_name)
    if start is not None and end is not None and end <= start:
        raise invalid(end_name, f"{end_name} must be after {start_name}")
    return start, end


def limit(request) -> int:
    raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
    try:
        value = int(raw)
        if not 1 <= value <= MAX_LIMIT:
            raise ValueError
    except ValueError:
        raise invalid("limit", f"limit must be 1 to {MAX_LIMIT}") from None
    return value


def object_id(request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
        if not 0 <= value <= MAX_ID:
            raise ValueError
    except ValueError:
        raise invalid(name, f"{name} must be an object id") from None
    return value


# The help of the created_from / created_to filters of the lists
CREATED_HELP = "A date (midnight UTC) or an RFC 3339 timestamp with its offset (encode + as %2B)."
