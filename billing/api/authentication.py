"""Bearer API keys, scopes and per-key rate limits."""

from __future__ import annotations

import time
from datetime import timedelta

import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.throttling import BaseThrottle

from billing.models import APIKey
from billing.services import hash_secret

LAST_USED_RESOLUTION = timedelta(seconds=60)  # one write a minute per key, not per request


class APIKeyUser:
    """The principal behind a request authenticated with an API key."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False

    def __init__(self, api_key: APIKey):
        self.api_key = api_key

    def __str__(self) -> str:
        return f"api-key:{self.api_key.prefix}"


_KEY_FIELDS = (
    "id",
    "name",
    "prefix",
    "secret_hash",
    "scopes",
    "rate_limit_per_minute",
    "last_used_at",
    "revoked_at",
)
_KEY_QUERY = f"SELECT {', '.join(_KEY_FIELDS)} FROM billing_apikey WHERE secret_hash = %s"


def _key_by_hash(secret_hash: str) -> APIKey | None:
    """The key with this secret hash: every API request's first query, so a plain one (the
    ORM's query building costs more than the query here). Other fields load on access."""
    with connection.cursor() as cursor:
        cursor.execute(_KEY_QUERY, [secret_hash])
        row = cursor.fetchone()
    return None if row is None else APIKey.from_db(connection.alias, _KEY_FIELDS, row)


class APIKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise exceptions.AuthenticationFailed(
                "use 'Authorization: Bearer <secret key>'", code="invalid_api_key"
            )
        key = _key_by_hash(hash_secret(secret))
        if key is None:
            raise exceptions.AuthenticationFailed("invalid API key", code="invalid_api_key")
        if key.revoked_at is not None:
            raise exceptions.AuthenticationFailed(
                "this API key was revoked", code="api_key_revoked"
            )
        now = timezone.now()
        if key.last_used_at is None or key.last_used_at < now - LAST_USED_RESOLUTION:
            APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return APIKeyUser(key), key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class HasScope(BasePermission):
    """GET needs ``read``, POST needs ``write``, unless the view says otherwise in
    ``required_scopes`` ({"POST": "ingest"})."""

    default_scopes = {"GET": "read", "HEAD": "read", "OPTIONS": "read", "POST": "write"}

    def has_permission(self, request, view) -> bool:
        key = request.auth
        if not isinstance(key, APIKey):
            raise exceptions.NotAuthenticated("an API key is required: Authorization: Bearer <key>")
        scope = getattr(view, "required_scopes", {}).get(request.method) or self.default_scopes.get(
            request.method, "write"
        )
        if scope not in key.scopes:
            raise exceptions.PermissionDenied(
                f"this API key lacks the '{scope}' scope", code="insufficient_scope"
            )
        return True


_redis_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    # One client per process (it is thread-safe, and building one sets up ~200 response
    # callbacks: a measurable share of a fast request such as /authorize).
    global _redis_client
    if _redis_client is None:
        _redis_client = redis.Redis(
            connection_pool=redis.ConnectionPool.from_url(settings.REDIS_URL)
        )
    return _redis_client


class APIKeyRateThrottle(BaseThrottle):
    """A fixed one-minute window per key, counted in Redis (shared by every web worker)."""

    def allow_request(self, request, view) -> bool:
        key = request.auth
        if not isinstance(key, APIKey):
            return True
        window = int(time.time() // 60)
        counter = f"billing:ratelimit:{key.secret_hash[:24]}:{window}"
        pipe = _redis().pipeline()
        pipe.incr(counter)
        pipe.expire(counter, 120)
        count, _ = pipe.execute()
        if count > key.rate_limit_per_minute:
            self._wait = 60 - int(time.time()) % 60  # whole seconds to the next window
            return False
        return True

    def wait(self) -> int | None:
        return getattr(self, "_wait", None)
