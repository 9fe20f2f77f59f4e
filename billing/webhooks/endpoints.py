"""Webhook endpoints: created with a secret generated here, changed, their secret rotated,
disabled and enabled again, deleted. An endpoint's URL is checked when it is set: http(s)
only, and outside development https to a public address (``WEBHOOK_ALLOW_INSECURE_URLS``
allows http and private addresses)."""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
import socket
from collections.abc import Iterable
from datetime import datetime
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import errors
from billing.models import (
    ALL_EVENTS,
    EndpointStatus,
    EventType,
    WebhookEndpoint,
)

MAX_URL_LENGTH = 2000


class WebhookURLRefused(errors.BillingError):
    """A URL that is not http(s), or (outside development) not https or not public."""

    code = "invalid_url"


class WebhookEndpointNotFound(errors.BillingError):
    code = "webhook_endpoint_not_found"
    http_status = 404


class WebhookDeliveryNotFound(errors.BillingError):
    code = "webhook_delivery_not_found"
    http_status = 404


class WebhookEventNotFound(errors.BillingError):
    code = "webhook_event_not_found"
    http_status = 404


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4
HOST_NAME = re.compile(
    r"(?=.{1,253}\.?$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
    r"(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?"
)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped (``::ffff:a.b.c.d``),
    IPv4-compatible (``::a.b.c.d``), 6to4 (``2002:AABB:CCDD::/48``), NAT64
    (``64:ff9b::a.b.c.d``) and Teredo (server and client)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if int(ip) >> 32 == 0:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip in NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if not ip.is_global or ip.is_multicast:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        return any(not v4.is_global or v4.is_multicast for v4 in _embedded_ipv4(ip))
    return False


def _valid_host(host: str, netloc: str) -> bool:
    """An IP address (IPv6 in brackets) or a DNS name (IDNA for a non-ASCII one)."""
    if "[" in netloc:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return False
        return True
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return HOST_NAME.fullmatch(ascii_host) is not None


def check_url(url: str, *, resolve: bool = True) -> str:
    """``url`` if an endpoint may have it, else ``WebhookURLRefused`` (param ``url``)."""
    url = (url or "").strip()
    if not url or len(url) > MAX_URL_LENGTH:
        raise WebhookURLRefused(f"url must be 1 to {MAX_URL_LENGTH} characters", param="url")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise WebhookURLRefused(
            "url must not contain spaces or control characters (percent-encode them)",
            param="url",
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise WebhookURLRefused("url is not a valid URL", param="url") from None
    if parts.scheme not in ("http", "https") or not host:
        raise WebhookURLRefused("url must be an http:// or https:// URL", param="url")
    if parts.username or parts.password:
        raise WebhookURLRefused("url must not carry a user name or password", param="url")
    if not _valid_host(host, parts.netloc):
        raise WebhookURLRefused(f"url's host {host!r} is not a valid host name", param="url")
    if settings.WEBHOOK_ALLOW_INSECURE_URLS:
        return url
    if parts.scheme != "https":
        raise WebhookURLRefused("url must use https", param="url")
    if resolve:
        check_public_host(host)
    return url


def check_public_host(host: str) -> None:
    """Refuse a host that is, or resolves to, a private, loopback, link-local or reserved
    address (the product must not be made to call into its own network)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        raise WebhookURLRefused(f"url's host {host!r} does not resolve", param="url") from None
    if any(_private(str(address)) for address in addresses):
        raise WebhookURLRefused(
            f"url's host {host!r} is a private or loopback address", param="url"
        )


def check_event_types(event_types: Iterable[str]) -> list[str]:
    """The event types an endpoint wants, deduplicated in the order given: known type names,
    or ``*`` alone for every type."""
    chosen = list(dict.fromkeys(event_types))
    if not chosen:
        raise errors.ValidationFailed(
            'enabled_events must name at least one event type, or ["*"]', param="enabled_events"
        )
    if ALL_EVENTS in chosen:
        if len(chosen) > 1:
            raise errors.ValidationFailed(
                '"*" (every event type) stands alone', param="enabled_events"
            )
        return chosen
    known = set(EventType.values)
    for name in chosen:
        if name not in known:
            raise errors.ValidationFailed(f"unknown event type {name!r}", param="enabled_events")
    return chosen


def create_endpoint(
    *,
    url: str,
    enabled_events: Iterable[str] = (ALL_EVENTS,),
    description: str = "",
    metadata: dict | None = None,
) -> WebhookEndpoint:
    """A new endpoint with a new secret (``endpoint.secret``: show it once)."""
    return WebhookEndpoint.objects.create(
        url=check_url(url),
        enabled_events=check_event_types(enabled_events),
        description=description.strip(),
        secret=new_secret(),
        metadata=metadata or {},
    )


@transaction.atomic
def update_endpoint(
    *,
    endpoint_id: int,
    url: str | None = None,
    enabled_events: Iterable[str] | None = None,
    description: str | None = None,
    metadata: dict | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    """Change what is given; the rest stays. ``enabled`` disables (by hand) or enables."""
    endpoint = locked_endpoint(endpoint_id)
    if url is not None:
        endpoint.url = check_url(url)
    if enabled_events is not None:
        endpoint.enabled_events = check_event_types(enabled_events)
    if description is not None:
        endpoint.description = description.strip()
    if metadata is not None:
        endpoint.metadata = metadata
    endpoint.save()
    if enabled is True:
        return enable_endpoint(endpoint_id=endpoint_id)
    if enabled is False:
        return disable_endpoint(endpoint_id=endpoint_id, reason="disabled by hand")
    return endpoint


def locked_endpoint(endpoint_id: int) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.select_for_update().filter(pk=endpoint_id).first()
    if endpoint is None:
        raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")
    return endpoint


def get_endpoint(endpoint_id: int) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is None:
        raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")
    return endpoint


@transaction.atomic
def rotate_secret(*, endpoint_id: int, now: datetime | None = None) -> WebhookEndpoint:
    """A new secret at once (``endpoint.secret``: show it once); the old one signs nothing
    more."""
    endpoint = locked_endpoint(endpoint_id)
    endpoint.secret = new_secret()
    endpoint.secret_rotated_at = now or timezone.now()
    endpoint.save(update_fields=["secret", "secret_rotated_at", "updated_at"])
    return endpoint


@transaction.atomic
def disable_endpoint(
    *, endpoint_id: int, reason: str, now: datetime | None = None
) -> WebhookEndpoint:
    endpoint = locked_endpoint(endpoint_id)
    if endpoint.status != EndpointStatus.DISABLED:
        endpoint.status = EndpointStatus.DISABLED
        endpoint.disabled_reason = reason[:300]
        endpoint.disabled_at = now or timezone.now()
        endpoint.save(update_fields=["status", "disabled_reason", "disabled_at", "updated_at"])
    return endpoint


@transaction.atomic
def enable_endpoint(*, endpoint_id: int) -> WebhookEndpoint:
    """Enabled again, its failure count cleared. Deliveries that failed meanwhile stay
    failed (resend them); events from now on are delivered."""
    endpoint = locked_endpoint(endpoint_id)
    endpoint.status = EndpointStatus.ENABLED
    endpoint.disabled_reason, endpoint.disabled_at = "", None
    endpoint.consecutive_failures, endpoint.failing_since = 0, None
    endpoint.save()
    return endpoint


def delete_endpoint(*, endpoint_id: int) -> None:
    """The endpoint and its delivery log go; the events stay."""
    deleted, _ = WebhookEndpoint.objects.filter(pk=endpoint_id).delete()
    if not deleted:
        raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")
