"""What every portal page shares: ``portal_view``, which scopes a view to the signed-in
member's customer, and money as the pages show it."""

from __future__ import annotations

from decimal import Decimal
from functools import wraps

from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.urls import reverse

from billing.models import PortalMember
from invoicing.money import to_minor_unit


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
    return f"{to_minor_unit(value, currency):,} {currency}"
