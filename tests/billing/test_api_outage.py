"""Redis down, and errors Django itself answers under /api/.

Redis is made unreachable for real: the settings point at a closed local port and the
process's Redis client is rebuilt from them. The database stays up, so ingestion and reads
go on (the rate limit fails open, with a logged warning). Every error under /api/ — no
route, a method a route does not take, a crash — is the API's JSON error body, with DEBUG
on and off, never an HTML page.
"""

from __future__ import annotations

import logging
import socket

import pytest
from django.test import Client
from django.urls import path

from billing.api import authentication
from billing.project import urls as billing_urls
from tests.billing.conftest import make_client

pytestmark = pytest.mark.django_db


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_down(settings, monkeypatch):
    url = f"redis://127.0.0.1:{closed_port()}/0"
    settings.REDIS_URL = url
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": "billing",
        }
    }
    monkeypatch.setattr(authentication, "_redis_client", None)  # rebuilt from REDIS_URL
    monkeypatch.setattr(authentication, "_redis_down_until", 0.0)
    yield url


def is_api_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "code", "message", "param"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


def test_with_redis_down_the_api_goes_on_and_the_rate_limit_fails_open(
    redis_down, make_key, make_customer, caplog
):
    key, secret = make_key(rate_limit_per_minute=2)
    make_customer("acme")
    client = make_client(secret)
    with caplog.at_level(logging.WARNING, logger="billing.api.authentication"):
        for _ in range(5):  # over the limit of 2: not enforced without Redis
            response = client.get("/api/v1/customers/acme")
            assert response.status_code == 200, response.content[:300]
        created = client.post(
            "/api/v1/customers",
            {"external_id": "globex", "name": "Globex", "currency": "USD"},
            format="json",
        )
    assert created.status_code == 201, created.content[:300]
    warnings = [r for r in caplog.records if "Redis is unreachable" in r.getMessage()]
    assert len(warnings) == 1  # once, not once a request


def test_the_rate_limit_is_enforced_again_once_redis_answers(make_key, monkeypatch):
    monkeypatch.setattr(authentication, "_redis_down_until", 0.0)
    key, secret = make_key(rate_limit_per_minute=1)
    client = make_client(secret)
    assert client.get("/api/v1/meters").status_code == 200
    assert client.get("/api/v1/meters").status_code == 429


@pytest.mark.parametrize("debug", [False, True])
def test_an_unknown_api_route_is_a_json_404(settings, debug):
    settings.DEBUG = debug
    error = is_api_error(Client().get("/api/v1/no-such-thing"), 404, "not_found")
    assert error["type"] == "not_found_error"
    is_api_error(Client().get("/api/nothing-here"), 404, "not_found")


@pytest.mark.parametrize("debug", [False, True])
def test_a_method_the_docs_pages_do_not_take_is_a_json_405(settings, debug):
    settings.DEBUG = debug
    for route in ("/api/docs/", "/api/schema/", "/api/redoc/"):
        response = Client().post(route, {})
        error = is_api_error(response, 405, "method_not_allowed")
        assert error["type"] == "invalid_request_error"


def _crash(request):
    raise RuntimeError("a bug")


urlpatterns = [
    path("api/v1/crash", _crash),
    *billing_urls.urlpatterns,
]
handler404 = billing_urls.handler404
handler500 = billing_urls.handler500


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("debug", [False, True])
def test_a_crash_under_the_api_is_a_json_500(settings, debug):
    settings.DEBUG = debug
    response = Client(raise_request_exception=False).get("/api/v1/crash")
    error = is_api_error(response, 500, "internal_error")
    assert error["type"] == "api_error"
    assert "a bug" not in response.content.decode()  # no traceback, DEBUG or not


@pytest.mark.urls(__name__)
def test_pages_outside_the_api_keep_their_html_errors(settings):
    settings.DEBUG = False
    assert Client().get("/portal/no-such-page").status_code == 404
    assert not Client().get("/portal/no-such-page")["Content-Type"].startswith("application/json")


def test_a_redis_that_does_not_answer_holds_a_request_for_at_most_a_second(
    settings, monkeypatch, make_key
):
    import time

    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        settings.REDIS_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        monkeypatch.setattr(authentication, "_redis_client", None)
        monkeypatch.setattr(authentication, "_redis_down_until", 0.0)
        client = make_client(make_key()[1])
        started = time.monotonic()
        assert client.get("/api/v1/meters").status_code == 200
        # The client's timeouts end the wait (a silent Redis would otherwise hold the
        # request for ever); the bound is loose, for a loaded machine.
        assert time.monotonic() - started < 3
        assert authentication._redis_down_until > time.monotonic()
        tried = []
        monkeypatch.setattr(authentication, "_redis", lambda: tried.append(1))
        assert client.get("/api/v1/meters").status_code == 200
        assert tried == []  # not tried again for a while
