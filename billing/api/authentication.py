"""Bearer API keys, scopes and per-key rate limits.

Redis outage: the rate limit is the only thing on the API's request path that uses Redis
(keys, idempotency records and everything else are in PostgreSQL). When Redis cannot be
reached the limit fails open: requests are let through, and a warning is logged (at most
one every ``REDIS_RETRY_AFTER`` seconds, the time Redis is left alone before it is tried
again), so ingestion goes on while the database is up.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone
from psycopg import Cursor as PsycopgCursor
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.throttling import BaseThrottle

from billing.models import APIKey
from billing.services import hash_secret

LAST_USED_RESOLUTION = timedelta(seconds=60)  # one write a minute per key, not per request
REDIS_TIMEOUT = 0.5  # seconds to connect or answer: a slow Redis must not hold requests
REDIS_RETRY_AFTER = 5.0  # seconds without trying Redis after it failed
log = logging.getLogger(__name__)


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
    "ingest_async",
    "last_used_at",
    "revoked_at",
)
_KEY_QUERY = f"SELECT {', '.join(_KEY_FIELDS)} FROM billing_apikey WHERE secret_hash = %s"


def _key_by_hash(secret_hash: str) -> APIKey | None:
    """The key with this secret hash: every API request's first query, so a plain one (the
    ORM's query building costs more than the query here). Other fields load on access.

    Sent as a prepared statement (psycopg prepares it on the connection after a few
    executions; Django's cursors bind client-side and never do): PostgreSQL then neither
    parses nor plans it per request. Nothing is cached on this side: a revoked or deleted
    key is refused by the next request, as before."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = PsycopgCursor(connection.connection)
        try:
            cursor.execute(_KEY_QUERY, [secret_hash])
            row = cursor.fetchone()
        finally:
            cursor.close()
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
            connection_pool=redis.ConnectionPool.from_url(
                settings.REDIS_URL,
                socket_connect_timeout=REDIS_TIMEOUT,
                socket_timeout=REDIS_TIMEOUT,
            )
        )
    return _redis_client


_redis_down_until = 0.0  # monotonic time before which Redis is not tried again
_redis_down_lock = threading.Lock()


def _count_request(counter: str) -> int | None:
    """This window's count for the key, or None when Redis cannot be reached (fail open)."""
    global _redis_down_until
    if time.monotonic() < _redis_down_until:
        return None
    try:
        pipe = _redis().pipeline()
        pipe.incr(counter)
        pipe.expire(counter, 120)
        count, _ = pipe.execute()
    except (redis.RedisError, OSError) as error:
        with _redis_down_lock:
            first = time.monotonic() >= _redis_down_until
            _redis_down_until = time.monotonic() + REDIS_RETRY_AFTER
        if first:
            log.warning(
                "API rate limit not enforced: Redis is unreachable (%s); requests are let "
                "through, Redis is tried again in %.0f s",
                error,
                REDIS_RETRY_AFTER,
            )
        return None
    return count


class APIKeyRateThrottle(BaseThrottle):
    """A fixed one-minute window per key, counted in Redis (shared by every web worker).
    Fails open when Redis is down (see the module's docstring)."""

    def allow_request(self, request, view) -> bool:
        key = request.auth
        if not isinstance(key, APIKey):
            return True
        window = int(time.time() // 60)
        count = _count_request(f"billing:ratelimit:{key.secret_hash[:24]}:{window}")
        if count is not None and count > key.rate_limit_per_minute:
            self._wait = 60 - int(time.time()) % 60  # whole seconds to the next window
            return False
        return True

    def wait(self) -> int | None:
        return getattr(self, "_wait", None)
