"""API keys: created with a secret shown once, revoked."""

from __future__ import annotations

import hashlib
import secrets

from django.utils import timezone

from billing import errors
from billing.models import (
    APIKey,
)

SECRET_PREFIX = "sk_"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    *,
    name: str,
    scopes: list[str],
    created_by_id: int | None = None,
    ingest_async: bool = False,
) -> tuple[APIKey, str]:
    """A new key and its secret. The secret is returned once and never stored.
    ``ingest_async``: its ingest requests are answered 202 and rated a moment later, as if
    each sent ``Prefer: respond-async`` (metering.inbox)."""
    unknown = set(scopes) - set(APIKey.SCOPES)
    if unknown or not scopes:
        raise errors.ValidationFailed(
            f"scopes must be a non-empty subset of {', '.join(APIKey.SCOPES)}", param="scopes"
        )
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = APIKey.objects.create(
        name=name,
        prefix=secret[:11],
        secret_hash=hash_secret(secret),
        scopes=sorted(set(scopes)),
        created_by_id=created_by_id,
        ingest_async=ingest_async,
    )
    return key, secret


def revoke_api_key(*, api_key: APIKey) -> APIKey:
    """Revoke a key; revoking it again keeps the first revocation time."""
    APIKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key
