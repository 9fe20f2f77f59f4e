"""Fixtures for the v1 API tests: API keys, authenticated clients, meters, plans, customers,
and a clock for the subscription services (so periods and proration are exact)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from rest_framework.test import APIClient

from billing.models import APIKey, Customer, Meter, Plan
from billing.services import ChargeSpec, PlanSpec, TierSpec, api_keys, idempotency, subscriptions
from tests.factories import ALL_SCOPES, APIKeyFactory, CustomerFactory, MeterFactory, PlanFactory


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def iso(moment: datetime | None) -> str | None:
    """A timestamp as the API renders it (RFC 3339, UTC as Z)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def error(
    status: int,
    code: str,
    message: str | None = None,
    *,
    param: str | None = None,
    type: str | None = None,
) -> dict[str, Any]:
    """The expected error envelope (``message`` None: checked separately by the caller)."""
    types = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "balance_error",
        403: "permission_error",
        404: "not_found_error",
        409: "conflict_error",
        429: "rate_limit_error",
    }
    return {
        "error": {"type": type or types[status], "code": code, "message": message, "param": param}
    }


def assert_error(
    response,
    status: int,
    code: str,
    *,
    param: str | None = None,
    message: str | None = None,
    type: str | None = None,
) -> dict[str, Any]:
    """The response is exactly the error envelope; ``message`` checked when given."""
    body = response.json()
    assert response.status_code == status, body
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"type", "code", "message", "param"}, body
    got = dict(body["error"])
    assert isinstance(got["message"], str) and got["message"], body
    if message is None:
        got["message"] = None
    assert {"error": got} == error(status, code, message, param=param, type=type)
    return body


def make_client(secret: str | None = None) -> APIClient:
    client = APIClient()
    client.default_format = "json"
    if secret is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def post_raw(client: APIClient, path: str, body: str, **extra):
    """POST a literal JSON text (to control numbers, NaN and malformed bodies exactly)."""
    return client.post(path, data=body, content_type="application/json", **extra)


@pytest.fixture
def make_key(db) -> Callable[..., tuple[APIKey, str]]:
    """make_key(scopes=(...), rate_limit_per_minute=None) → (APIKey, secret)."""

    def make(scopes=ALL_SCOPES, *, rate_limit_per_minute: int | None = None):
        key = APIKeyFactory(scopes=scopes, rate_limit_per_minute=rate_limit_per_minute)
        return key, key.secret

    return make


@pytest.fixture
def api_key(make_key) -> tuple[APIKey, str]:
    return make_key()


@pytest.fixture
def api(api_key) -> APIClient:
    """A client authenticated with a read + write + ingest key."""
    return make_client(api_key[1])


@pytest.fixture
def read_api(make_key) -> APIClient:
    return make_client(make_key(("read",))[1])


@pytest.fixture
def make_customer(db) -> Callable[..., Customer]:
    def make(external_id: str | None = None, **kwargs: Any) -> Customer:
        if external_id:
            kwargs["external_id"] = external_id
        return CustomerFactory(**kwargs)

    return make


@pytest.fixture
def make_meter(db) -> Callable[..., Meter]:
    def make(code: str | None = None, **kwargs: Any) -> Meter:
        if code:
            kwargs["code"] = code
        return MeterFactory(**kwargs)

    return make


@pytest.fixture
def make_plan(db) -> Callable[..., Plan]:
    """make_plan(code=None, base_fee="0", charges=(ChargeSpec, ...), **PlanSpec fields)."""

    def make(code: str | None = None, *, base_fee: str | Decimal = "0", **kwargs: Any) -> Plan:
        if code:
            kwargs["code"] = code
        return PlanFactory(base_fee=base_fee, **kwargs)

    return make


@pytest.fixture
def clock(monkeypatch):
    """Fix the "now" that billing.services sees: ``clock.now = at(...)``."""
    state = SimpleNamespace(now=None)

    def now() -> datetime:
        assert state.now is not None, "set clock.now first"
        return state.now

    # Where billing.services reads the time (its subscriptions, API keys and idempotency).
    for module in (subscriptions, api_keys, idempotency):
        monkeypatch.setattr(module, "timezone", SimpleNamespace(now=now))
    return state


__all__ = [
    "ALL_SCOPES",
    "ChargeSpec",
    "PlanSpec",
    "TierSpec",
    "assert_error",
    "at",
    "error",
    "iso",
    "make_client",
    "post_raw",
]
