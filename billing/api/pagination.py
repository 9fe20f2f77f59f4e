"""Cursor pagination as API.md says: ``?limit=&starting_after=`` → ``{"data", "has_more"}``.

Newest first; ``starting_after`` is the ``id`` of the last object of the previous page.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter

from billing.api.errors import APIError

DEFAULT_LIMIT, MAX_LIMIT = 10, 100

PARAMETERS = [
    OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        description=f"1 to {MAX_LIMIT}, default {DEFAULT_LIMIT}.",
    ),
    OpenApiParameter(
        "starting_after",
        {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
        description="The id of the last object of the previous page.",
    ),
]


def page_parameters(request) -> tuple[int, int | None]:
    """``limit`` and ``starting_after`` from the query, checked (400 when out of range)."""
    raw_limit = request.query_params.get("limit", str(DEFAULT_LIMIT))
    raw_after = request.query_params.get("starting_after")
    try:
        limit = int(raw_limit)
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError
    except ValueError:
        raise APIError(
            400, "invalid_parameter", f"limit must be 1 to {MAX_LIMIT}", param="limit"
        ) from None
    after = None
    if raw_after is not None:
        try:
            after = int(raw_after)
            if after < 0 or after > 2**63 - 1:
                raise ValueError
        except ValueError:
            raise APIError(
                400,
                "invalid_parameter",
                "starting_after must be an object id",
                param="starting_after",
            ) from None
    return limit, after


def paginate(request, queryset: QuerySet, serialize) -> dict:
    limit, after = page_parameters(request)
    queryset = queryset.order_by("-pk")
    if after is not None:
        queryset = queryset.filter(pk__lt=after)
    rows = list(queryset[: limit + 1])
    return {"data": [serialize(row) for row in rows[:limit]], "has_more": len(rows) > limit}
