"""Idempotency-Key for every POST, as API.md says.

The first request with a key runs and its response (status and body) is stored with a
hash of the request; a retry with the same key and body gets that response again with
``Idempotent-Replayed: true``; the same key with another body is refused (409,
``idempotency_key_reused``). Keys are scoped to the API key and kept 48 hours.

Concurrency: the record is inserted *before* the work runs, in the same database
transaction as the work. A concurrent retry's insert waits on the unique index until the
first commits, then finds the finished record and replays it; if the first rolled back,
the retry runs the work itself. 5xx responses are not stored (the retry runs again).
"""

from __future__ import annotations

import functools
import hashlib
import json

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from rest_framework.response import Response

from billing.api.errors import APIError
from billing.models import IdempotencyRecord

HEADER = "Idempotency-Key"
TTL_HOURS = 48


def _request_hash(request) -> str:
    try:
        body = json.dumps(request.data, sort_keys=True, cls=DjangoJSONEncoder)
    except (TypeError, ValueError):
        body = request.body.decode("utf-8", "replace")
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def idempotent(handler):
    """Decorate a view's ``post`` method."""

    @functools.wraps(handler)
    def wrapper(view, request, *args, **kwargs):
        key = request.headers.get(HEADER)
        if key is None:
            return handler(view, request, *args, **kwargs)
        if not key.strip() or len(key) > 255:
            raise APIError(
                400,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 characters",
                param=HEADER,
            )
        request_hash = _request_hash(request)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO billing_idempotencyrecord "
                    "(api_key_id, key, method, path, request_hash, status_code, response_body,"
                    " created_at) VALUES (%s, %s, %s, %s, %s, 0, 'null', now()) "
                    "ON CONFLICT (api_key_id, key) DO NOTHING RETURNING id",
                    [request.auth.pk, key, request.method, request.path, request_hash],
                )
                claimed = cursor.fetchone()
            if claimed is None:
                record = IdempotencyRecord.objects.get(api_key=request.auth, key=key)
                if record.request_hash != request_hash:
                    raise APIError(
                        409,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used with a different request; "
                        "use a new key for a new request",
                        param=HEADER,
                        error_type="idempotency_error",
                    )
                return Response(
                    record.response_body,
                    status=record.status_code,
                    headers={"Idempotent-Replayed": "true"},
                )
            try:
                with transaction.atomic():
                    response = handler(view, request, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - converted exactly as DRF would
                response = view.handle_exception(exc)
            if response.status_code >= 500 or response.status_code == 429:
                transaction.set_rollback(True)  # not stored: a retry runs the work again
                return response
            body = json.loads(json.dumps(response.data, cls=DjangoJSONEncoder))
            IdempotencyRecord.objects.filter(pk=claimed[0]).update(
                status_code=response.status_code, response_body=body
            )
            return response

    return wrapper
