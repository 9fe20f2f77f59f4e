"""What the core's events carry in ``data``: one function per resource, JSON-ready, in the
API's shape (the same field names; money as decimal strings with 12 places, timestamps
RFC 3339). Invoicing's resources are built by ``invoicing.events``."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.models import CreditGrant, Subscription

TWELVE_PLACES = Decimal(1).scaleb(-12)


def money(value: Decimal | None) -> str | None:
    """A decimal string with 12 places, as the API writes money."""
    return None if value is None else format(Decimal(value).quantize(TWELVE_PLACES), "f")


def moment(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def subscription_data(subscription: Subscription) -> dict[str, Any]:
    """A subscription as ``GET /subscriptions/{id}`` shows it, without its phases."""
    plan = subscription.plan
    scheduled = subscription.scheduled_plan
    return {
        "object": "subscription",
        "id": subscription.pk,
        "customer": subscription.customer.external_id,
        "plan": plan.code,
        "plan_version": plan.version,
        "status": subscription.status,
        "started_at": moment(subscription.started_at),
        "billing_anchor": moment(subscription.billing_anchor),
        "billing_time": subscription.billing_time,
        "billing_anchor_day": subscription.billing_anchor_day,
        "current_period_start": moment(subscription.current_period_start),
        "current_period_end": moment(subscription.current_period_end),
        "trial_ends_at": moment(subscription.trial_ends_at),
        "cancel_at_period_end": subscription.cancel_at_period_end,
        "canceled_at": moment(subscription.canceled_at),
        "ended_at": moment(subscription.ended_at),
        "scheduled_plan": f"{scheduled.code}@{scheduled.version}" if scheduled else None,
        "metadata": subscription.metadata,
    }


def credit_grant_data(grant: CreditGrant, *, expired: Decimal | None = None) -> dict[str, Any]:
    """A credit grant as ``GET /customers/{id}/credit-grants`` shows it; ``expired``: what
    left the wallet when it expired (``credits.expired``)."""
    data: dict[str, Any] = {
        "object": "credit_grant",
        "id": grant.pk,
        "customer": grant.customer.external_id,
        "name": grant.name,
        "source": grant.source,
        "priority": grant.priority,
        "currency": grant.currency,
        "amount": money(grant.amount),
        "remaining": money(grant.remaining),
        "status": grant.status,
        "expires_at": moment(grant.expires_at),
        "ended_at": moment(grant.ended_at),
    }
    if expired is not None:
        data["expired_amount"] = money(expired)
    return data
