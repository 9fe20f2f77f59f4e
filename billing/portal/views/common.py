"""What every portal page shares: ``portal_view``, which scopes a view to the signed-in
member's customer, money as the pages show it, and the customer's active alerts."""

from __future__ import annotations

from decimal import Decimal
from functools import wraps

from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.urls import reverse

from billing import alerts
from billing.models import AlertKind, AlertState, Customer, PortalMember
from invoicing.money import format_amount


def portal_view(view):
    """Signed in as a portal member: ``request.customer`` is theirs, and only theirs."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect(f"{reverse('portal:login')}?next={request.get_full_path()}")
        member = PortalMember.objects.select_related("customer").filter(user=request.user).first()
        if member is None:
            raise PermissionDenied("this account has no portal access")
        request.member, request.customer = member, member.customer
        return view(request, *args, **kwargs)

    return wrapped


def money(value: Decimal | None, currency: str) -> str:
    """An amount in the currency's minor unit with separators; credits and tokens exactly."""
    if value is None:
        return "—"
    if currency in ("CREDITS", "TOKENS"):
        return f"{value.normalize():,f} {currency.lower()}"
    return format_amount(value, currency)  # the admin's, the PDF's and the e-mail's rounding


def _alert_line(state: AlertState, customer: Customer) -> str:
    alert = state.alert
    value = state.last_value if state.last_value is not None else Decimal(0)
    limit = state.limit if state.limit is not None else alert.threshold
    if alert.kind == AlertKind.BALANCE_BELOW:
        currency = alert.currency or customer.currency
        return (
            f"Low balance: {money(value, currency)} available, below your alert threshold "
            f"of {money(limit, currency)}."
        )
    if alert.kind == AlertKind.CREDITS_BELOW:
        return (
            f"Low credits: {money(value, 'CREDITS')} available, below your alert threshold "
            f"of {money(limit, 'CREDITS')}."
        )
    if alert.kind == AlertKind.SPEND_ABOVE:
        currency = alert.currency or customer.currency
        return (
            f"Spend this period: {money(value, currency)}, above your alert threshold "
            f"of {money(limit, currency)}."
        )
    meter = (alert.meter.name or alert.meter.code) if alert.meter else "usage"
    return (
        f"Usage of {meter}: {value.normalize():,f} this period, above "
        f"{alert.threshold * 100:.0f}% of the included allowance ({limit.normalize():,f})."
    )


def active_alerts(customer: Customer) -> list[dict]:
    """The customer's alerts triggered now, as the pages show them. Negative margin is the
    seller's own concern (what the provider costs it): never shown to the customer."""
    return [
        {"state": state, "name": state.alert.name, "text": _alert_line(state, customer)}
        for state in alerts.active_alerts(customer)
        if state.alert.kind != AlertKind.NEGATIVE_MARGIN
    ]
