"""Idempotency-Key for every POST, as API.md says.

The first request with a key runs and its response (status and body) is stored with a
hash of the request; a retry with the same key and body gets that response again with
``Idempotent-Replayed: true``; the same key with another body is refused (409,
``idempotency_key_reused``). Keys are scoped to the API key and kept 48 hours. 5xx and 429
responses are not stored (the retry runs again).

Two ways to hold the key while the work runs, one per kind of route:

``idempotent`` (every route but ingestion): the record is inserted *before* the work, in the
same database transaction as the work. A concurrent retry's insert waits on the unique
index until the first commits, then finds the finished record and replays it; if the first
rolled back, the retry runs the work itself. Exactly once, because the work and its record
commit together — right for a top-up or a plan change, whose work is one short transaction
and is not deduplicated by anything else.

``idempotent_claimed`` (``POST /events`` and ``/events/batch``): a batch is rated in parts,
each its own transaction holding only its customers' rating locks (``metering.rating``);
one transaction around the whole batch would hold every customer's lock until the last
part. So the key is *claimed* in its own short transaction — the record inserted with
``status_code`` 0, "in progress" — the work runs with its normal transactions, and the
response is stored in a third one. Meanwhile a request with the same key and body waits
up to ``IN_USE_WAIT`` for that answer and replays it (as a retry blocked on the unique index
did before), and past that wait is answered 409 ``idempotency_key_in_use`` (as Stripe
answers a concurrent request; retry later); one with another body gets 409
``idempotency_key_reused`` at once. If the process dies between claim and store,
the claim is taken over by a retry once it is older than ``CLAIM_TIMEOUT``; the retry runs
the batch again, which is safe because every event is deduplicated by its own idempotency
key: what the lost attempt committed is answered ``duplicate`` (a single event 200 instead
of 201) and charged once. That answer is not byte-identical to the lost one — no client saw
the lost one, and the fresh answer says truthfully that those events were already stored —
and it is the answer stored and replayed from then on. An attempt that overran the timeout
and was taken over does not overwrite the taker's stored answer (``created_at``, the
claim's ``clock_timestamp()``, is its token).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from datetime import timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from rest_framework.response import Response

from billing.api.errors import APIError
from billing.models import IdempotencyRecord

HEADER = "Idempotency-Key"
TTL_HOURS = 48
# An in-progress claim older than this is taken to belong to a request that died; a retry
# takes it over. A batch of 1,000 events is rated in well under a second.
CLAIM_TIMEOUT = timedelta(seconds=60)
# A request finding the key held by another live request waits this long for that one's
# answer (polling the record), then gets 409 idempotency_key_in_use.
IN_USE_WAIT = timedelta(seconds=5)
IN_PROGRESS = 0  # status_code of a claimed record whose response is not stored yet


def _request_hash(request) -> str:
    try:
        body = json.dumps(request.data, sort_keys=True, cls=DjangoJSONEncoder)
    except (TypeError, ValueError):
        body = request.body.decode("utf-8", "replace")
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def _checked_key(request) -> str | None:
    key = request.headers.get(HEADER)
    if key is not None and (not key.strip() or len(key) > 255):
        raise APIError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 characters",
            param=HEADER,
        )
    return key


def _reused() -> APIError:
    return APIError(
        409,
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request; use a new key for a new request",
        param=HEADER,
        error_type="idempotency_error",
    )


def _in_use() -> APIError:
    return APIError(
        409,
        "idempotency_key_in_use",
        "a request with this Idempotency-Key is still being processed; retry once it has finished",
        param=HEADER,
        error_type="idempotency_error",
    )


def _replay(record_hash: str, request_hash: str, status_code: int, body) -> Response:
    if record_hash != request_hash:
        raise _reused()
    return Response(body, status=status_code, headers={"Idempotent-Replayed": "true"})


def _insert_claim(cursor, request, key: str, request_hash: str):
    cursor.execute(
        "INSERT INTO billing_idempotencyrecord "
        "(api_key_id, key, method, path, request_hash, status_code, response_body,"
        " created_at) VALUES (%s, %s, %s, %s, %s, 0, 'null', clock_timestamp()) "
        "ON CONFLICT (api_key_id, key) DO NOTHING RETURNING id, created_at",
        [request.auth.pk, key, request.method, request.path, request_hash],
    )
    return cursor.fetchone()


def _run(handler, view, request, args, kwargs):
    try:
        return handler(view, request, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - converted exactly as DRF would
        return view.handle_exception(exc)


def _not_stored(response) -> bool:
    return response.status_code >= 500 or response.status_code == 429


def _stored_body(response):
    return json.loads(json.dumps(response.data, cls=DjangoJSONEncoder))


def idempotent(handler=None, *, redact=None):
    """Decorate a view's ``post`` method: record and work in one transaction.

    ``redact(body) -> body``: what is stored (and replayed) instead of the answer, for an
    answer carrying what must be shown once only (a webhook endpoint's signing secret):
    ``@idempotent(redact=...)``."""
    if handler is None:
        return functools.partial(idempotent, redact=redact)

    @functools.wraps(handler)
    def wrapper(view, request, *args, **kwargs):
        key = _checked_key(request)
        if key is None:
            return handler(view, request, *args, **kwargs)
        request_hash = _request_hash(request)
        with transaction.atomic():
            with connection.cursor() as cursor:
                claimed = _insert_claim(cursor, request, key, request_hash)
            if claimed is None:
                record = IdempotencyRecord.objects.get(api_key=request.auth, key=key)
                return _replay(
                    record.request_hash, request_hash, record.status_code, record.response_body
                )
            with transaction.atomic():
                response = _run(handler, view, request, args, kwargs)
            if _not_stored(response):
                transaction.set_rollback(True)  # not stored: a retry runs the work again
                return response
            body = _stored_body(response)
            if redact is not None:
                body = redact(body)
            IdempotencyRecord.objects.filter(pk=claimed[0]).update(
                status_code=response.status_code, response_body=body
            )
            return response

    return wrapper


def _try_claim(request, key: str, request_hash: str):
    """One short transaction: the claim's (id, token), a Response replaying the stored
    answer, or None while another live request holds the key."""
    with transaction.atomic(), connection.cursor() as cursor:
        claimed = _insert_claim(cursor, request, key, request_hash)
        if claimed is not None:
            return claimed
        cursor.execute(
            "SELECT id, request_hash, status_code, response_body "
            "FROM billing_idempotencyrecord WHERE api_key_id = %s AND key = %s FOR UPDATE",
            [request.auth.pk, key],
        )
        row = cursor.fetchone()
        if row is None:  # released (a 5xx) between our insert and our read
            return None
        record_id, record_hash, status_code, body = row
        if status_code != IN_PROGRESS:
            if isinstance(body, str):
                body = json.loads(body)
            return _replay(record_hash, request_hash, status_code, body)
        if record_hash != request_hash:
            raise _reused()
        cursor.execute(  # a stale claim: its request died; take it over
            "UPDATE billing_idempotencyrecord SET created_at = clock_timestamp() "
            "WHERE id = %s AND created_at < clock_timestamp() - %s RETURNING id, created_at",
            # psycopg adapts a timedelta to an interval; django-stubs' parameter type omits it
            [record_id, CLAIM_TIMEOUT],  # type: ignore[list-item]
        )
        return cursor.fetchone()


def _claim(request, key: str, request_hash: str):
    """Claim the key, or replay its stored answer; while another request holds it, wait
    up to ``IN_USE_WAIT`` for its answer (then replay it), else 409 in use."""
    deadline = time.monotonic() + IN_USE_WAIT.total_seconds()
    pause = 0.01
    while True:
        result = _try_claim(request, key, request_hash)
        if result is not None:
            return result
        if time.monotonic() + pause > deadline:
            raise _in_use()
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def idempotent_claimed(handler):
    """Decorate an ingest view's ``post`` method: claim the key, run the work with its own
    transactions, store the answer (see the module's docstring)."""

    @functools.wraps(handler)
    def wrapper(view, request, *args, **kwargs):
        key = _checked_key(request)
        if key is None:
            return handler(view, request, *args, **kwargs)
        claim = _claim(request, key, _request_hash(request))
        if isinstance(claim, Response):
            return claim
        record_id, token = claim
        mine = IdempotencyRecord.objects.filter(pk=record_id, created_at=token)
        try:
            response = _run(handler, view, request, args, kwargs)
        except Exception:  # an unexpected error (DRF answers 500): a retry runs again
            mine.delete()
            raise
        if _not_stored(response):
            mine.delete()  # released: a retry runs the work again
        else:
            mine.update(status_code=response.status_code, response_body=_stored_body(response))
        return response

    return wrapper
