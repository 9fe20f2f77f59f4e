"""The credits page: each credit wallet's balance and its grants (live, expiring soon,
ended), with what ended grants lost rather than spent and the next expiry."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.shortcuts import render
from django.utils import timezone

from billing import selectors as core_selectors
from billing.portal import selectors
from billing.portal.views.common import portal_view

SOURCE_SHORT = {"purchase": "Bought", "promotional": "Free", "adjustment": "Adjustment"}


@portal_view
def credits(request):
    now = timezone.now()
    summary = core_selectors.customer_credits(request.customer, now=now)
    lost = selectors.credits_lost_by_grant(request.customer)

    def row(grant) -> dict:
        # whole days left, rounded up: "in 14 days" for a grant expiring 14 days from now
        days = -((now - grant.expires_at) // timedelta(days=1)) if grant.expires_at else None
        gone = lost.get(grant.pk, Decimal(0))
        return {
            "used": f"{(grant.used - gone).normalize():,f}",
            "remaining_lost": f"{gone.normalize():,f}",
            "name": grant.name,
            "source": grant.get_source_display(),
            "source_short": SOURCE_SHORT.get(grant.source, grant.source),
            "status": grant.get_status_display(),
            "granted": f"{grant.amount.normalize():,f}",
            "remaining": f"{grant.remaining.normalize():,f}",
            "percent_left": int(grant.remaining / grant.amount * 100),
            "expires_at": grant.expires_at,
            "expires_soon": days is not None and days < 7,
            "days_left": days,
            "created_at": grant.created_at,
            "ended_at": grant.ended_at,
        }

    wallets: list[dict[str, Any]] = [
        {
            "available": f"{w['available'].normalize():,f}",
            "held": f"{w['held'].normalize():,f}" if w["held"] else None,
            "live": [row(g) for g in w["live"]],
            "expiring": [row(g) for g in w["expiring"]],
            "ended": [row(g) for g in w["ended"][:50]],
            "ungranted": f"{w['ungranted'].normalize():,f}" if w["ungranted"] else None,
            "next_expiry": next(
                (
                    g
                    for g in sorted(
                        (g for g in w["live"] if g.expires_at and g.remaining),
                        key=lambda g: g.expires_at,
                    )
                ),
                None,
            ),
        }
        for w in summary
    ]
    for w in wallets:
        nxt = w["next_expiry"]
        w["next_expiry"] = (
            {"remaining": f"{nxt.remaining.normalize():,f}", "at": nxt.expires_at} if nxt else None
        )
    return render(
        request, "portal/credits.html", {"customer": request.customer, "wallets": wallets}
    )
