"""API keys on every route: Bearer authentication (missing, unknown, malformed, revoked),
scopes (GET needs read, POST needs write), last-used time, and the per-key rate limit."""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from billing import errors, services
from billing.models import APIKey, Customer
from tests.billing.conftest import assert_error, make_client

pytestmark = pytest.mark.django_db

GET_ROUTES = [
    "/api/v1/customers/acme",
    "/api/v1/customers/acme/balance",
    "/api/v1/customers/acme/transactions",
    "/api/v1/meters",
    "/api/v1/plans",
    "/api/v1/plans/pro",
    "/api/v1/subscriptions/1",
]
POST_ROUTES = [
    "/api/v1/customers",
    "/api/v1/customers/acme/top-ups",
    "/api/v1/meters",
    "/api/v1/plans",
    "/api/v1/subscriptions",
    "/api/v1/subscriptions/1/change",
    "/api/v1/subscriptions/1/cancel",
]
ROUTES = [("get", path) for path in GET_ROUTES] + [("post", path) for path in POST_ROUTES]


def call(client, method: str, path: str):
    return client.get(path) if method == "get" else client.post(path, {})


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_requires_a_key(method, path):
    response = call(make_client(), method, path)
    assert_error(
        response,
        401,
        "authentication_required",
        message="an API key is required: Authorization: Bearer <key>",
    )
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_refuses_an_unknown_key(method, path, api_key):
    response = call(make_client("sk_" + "x" * 43), method, path)
    assert_error(response, 401, "invalid_api_key", message="invalid API key")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token sk_abc", "sk_abc"],
)
def test_a_malformed_authorization_header_is_an_invalid_key(header, api_key):
    client = make_client()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert_error(
        client.get("/api/v1/plans"),
        401,
        "invalid_api_key",
        message="use 'Authorization: Bearer <secret key>'",
    )


def test_the_scheme_is_case_insensitive(api_key):
    client = make_client()
    client.credentials(HTTP_AUTHORIZATION=f"bearer {api_key[1]}")
    assert client.get("/api/v1/plans").status_code == 200


def test_a_tampered_secret_is_refused(api_key):
    secret = api_key[1]
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert_error(make_client(tampered).get("/api/v1/plans"), 401, "invalid_api_key")


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_revoked_key_is_refused_on_every_route(method, path, make_key):
    key, secret = make_key()
    client = make_client(secret)
    assert client.get("/api/v1/plans").status_code == 200
    services.revoke_api_key(api_key=key)
    assert_error(
        call(client, method, path), 401, "api_key_revoked", message="this API key was revoked"
    )


def test_revoking_twice_keeps_the_first_revocation_time(make_key):
    key, _ = make_key()
    services.revoke_api_key(api_key=key)
    first = APIKey.objects.get(pk=key.pk).revoked_at
    assert first is not None
    services.revoke_api_key(api_key=APIKey.objects.get(pk=key.pk))
    assert APIKey.objects.get(pk=key.pk).revoked_at == first


def test_a_failed_authentication_changes_nothing(make_key):
    key, secret = make_key()
    services.revoke_api_key(api_key=key)
    response = make_client(secret).post(
        "/api/v1/customers", {"external_id": "acme", "name": "Acme"}
    )
    assert response.status_code == 401
    assert not Customer.objects.filter(external_id="acme").exists()


# --- keys --------------------------------------------------------------------------------------


def test_a_key_stores_only_the_hash_of_its_secret(make_key):
    key, secret = make_key(("read", "write"))
    assert secret.startswith("sk_") and len(secret) >= 40
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert key.prefix == secret[:11]
    stored = APIKey.objects.get(pk=key.pk)
    assert secret not in {stored.name, stored.prefix, stored.secret_hash}
    assert stored.scopes == ["read", "write"]
    assert stored.rate_limit_per_minute == 6000


def test_two_keys_have_different_secrets(make_key):
    assert make_key()[1] != make_key()[1]


@pytest.mark.parametrize("scopes", [[], ["admin"], ["read", "everything"]])
def test_a_key_needs_known_scopes(scopes, db):
    with pytest.raises(errors.ValidationFailed) as caught:
        services.create_api_key(name="bad", scopes=scopes)
    assert caught.value.param == "scopes"
    assert not APIKey.objects.exists()


def test_last_used_at_is_recorded_once_a_minute(make_key):
    key, secret = make_key()
    assert key.last_used_at is None
    client = make_client(secret)
    before = timezone.now()
    assert client.get("/api/v1/plans").status_code == 200
    first = APIKey.objects.get(pk=key.pk).last_used_at
    assert first is not None and first >= before
    # Within the minute: no write.
    assert client.get("/api/v1/meters").status_code == 200
    assert APIKey.objects.get(pk=key.pk).last_used_at == first
    # Older than a minute: refreshed.
    stale = timezone.now() - timedelta(minutes=5)
    APIKey.objects.filter(pk=key.pk).update(last_used_at=stale)
    assert client.get("/api/v1/meters").status_code == 200
    assert APIKey.objects.get(pk=key.pk).last_used_at > stale + timedelta(minutes=4)


def test_an_unauthenticated_request_does_not_touch_last_used_at(make_key):
    key, secret = make_key()
    services.revoke_api_key(api_key=key)
    make_client(secret).get("/api/v1/plans")
    assert APIKey.objects.get(pk=key.pk).last_used_at is None


# --- scopes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", POST_ROUTES)
def test_a_read_only_key_cannot_post(path, make_key):
    client = make_client(make_key(("read",))[1])
    assert_error(
        client.post(path, {}),
        403,
        "insufficient_scope",
        message="this API key lacks the 'write' scope",
    )


@pytest.mark.parametrize("scopes", [("write",), ("ingest",), ("write", "ingest")])
@pytest.mark.parametrize("path", GET_ROUTES)
def test_reading_needs_the_read_scope(path, scopes, make_key):
    client = make_client(make_key(scopes)[1])
    assert_error(
        client.get(path), 403, "insufficient_scope", message="this API key lacks the 'read' scope"
    )


def test_an_ingest_key_cannot_create_customers(make_key):
    client = make_client(make_key(("ingest", "read"))[1])
    response = client.post("/api/v1/customers", {"external_id": "acme", "name": "Acme"})
    assert_error(
        response, 403, "insufficient_scope", message="this API key lacks the 'write' scope"
    )
    assert not Customer.objects.exists()


def test_a_write_key_can_post(make_key):
    client = make_client(make_key(("write",))[1])
    response = client.post("/api/v1/customers", {"external_id": "acme", "name": "Acme"})
    assert response.status_code == 201
    assert Customer.objects.filter(external_id="acme").exists()


def test_an_unsupported_method_is_refused_in_the_error_format(api):
    assert_error(
        api.get("/api/v1/events/batch"),
        405,
        "method_not_allowed",
        message='Method "GET" not allowed.',
        type="invalid_request_error",
    )
    assert_error(
        api.delete("/api/v1/customers/acme"),
        405,
        "method_not_allowed",
        type="invalid_request_error",
    )


# --- rate limit ----------------------------------------------------------------------------------


def wait_for_a_fresh_window(margin: float = 3.0) -> None:
    """The limit is a fixed one-minute window: start well inside one."""
    into = time.time() % 60
    if into > 60 - margin:
        time.sleep(60 - into + 0.05)


def test_a_key_is_rate_limited_per_minute(make_key):
    _, secret = make_key(rate_limit_per_minute=3)
    client = make_client(secret)
    wait_for_a_fresh_window()
    statuses = [client.get("/api/v1/plans").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = client.get("/api/v1/plans")
    body = assert_error(limited, 429, "rate_limited", type="rate_limit_error")
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= 61
    assert body["error"]["message"].startswith("Request was throttled.")
    # POSTs count against the same window and are refused before any work.
    refused = client.post("/api/v1/customers", {"external_id": "acme", "name": "Acme"})
    assert_error(refused, 429, "rate_limited")
    assert "Retry-After" in refused.headers
    assert not Customer.objects.exists()


def test_the_rate_limit_is_per_key(make_key):
    _, limited_secret = make_key(rate_limit_per_minute=1)
    _, other_secret = make_key(rate_limit_per_minute=1)
    wait_for_a_fresh_window()
    limited, other = make_client(limited_secret), make_client(other_secret)
    assert limited.get("/api/v1/plans").status_code == 200
    assert limited.get("/api/v1/plans").status_code == 429
    assert other.get("/api/v1/plans").status_code == 200


def test_a_zero_limit_refuses_everything(make_key):
    _, secret = make_key(rate_limit_per_minute=0)
    response = make_client(secret).get("/api/v1/meters")
    assert_error(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) >= 1


def test_raising_the_limit_applies_at_once(make_key):
    key, secret = make_key(rate_limit_per_minute=1)
    client = make_client(secret)
    wait_for_a_fresh_window()
    assert client.get("/api/v1/plans").status_code == 200
    assert client.get("/api/v1/plans").status_code == 429
    APIKey.objects.filter(pk=key.pk).update(rate_limit_per_minute=100)
    assert client.get("/api/v1/plans").status_code == 200
