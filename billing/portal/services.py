"""Writes of the portal: inviting a customer's people, sign-in links, alert settings,
low-balance alerts."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from billing import errors
from billing.models import Customer, PortalMember
from ledger import selectors as ledger_selectors

SIGN_IN_SALT = "billing.portal.sign-in"


class LinkInvalid(errors.BillingError):
    code = "sign_in_link_invalid"


@transaction.atomic
def invite_member(
    *,
    customer: Customer,
    email: str,
    name: str = "",
    invited_by_id: int | None = None,
    send_link: bool = True,
) -> PortalMember:
    """Give a person of the customer's access to the portal and e-mail them a sign-in link.
    The user has no password until they choose one; an e-mail already in use elsewhere is
    refused; the same address invited again to the same customer is the same member.

    ``send_link``: the link is e-mailed once the invitation commits; a mail server that
    fails is logged and the invitation stays (it is a fact; the link can be sent again).
    False: the caller sends it (``send_sign_in_link``) and reports a failure itself, as the
    admin does."""
    email = email.strip().lower()
    if not email:
        raise errors.ValidationFailed("an e-mail address is required", param="email")
    users = get_user_model()
    user = users.objects.filter(email__iexact=email).first()
    if user is not None:
        member = PortalMember.objects.filter(user=user).first()
        if member is not None and member.customer_id == customer.pk:
            return member
        raise errors.ValidationFailed(f"{email} already has an account elsewhere", param="email")
    first, _, last = name.strip().partition(" ")
    try:
        with transaction.atomic():
            user = users.objects.create_user(
                username=email, email=email, first_name=first[:150], last_name=last[:150]
            )
    except IntegrityError:
        raise errors.ValidationFailed(f"{email} already has an account", param="email") from None
    user.set_unusable_password()
    user.save(update_fields=["password"])
    member = PortalMember.objects.create(user=user, customer=customer, invited_by_id=invited_by_id)
    if send_link:
        transaction.on_commit(lambda: send_sign_in_link(email=email, invited=True), robust=True)
    return member


def sign_in_token(user) -> str:
    """A signed token for one sign-in: it names the user and their last sign-in, so it
    stops working once used (signing in moves ``last_login``) and after
    ``PORTAL_LINK_MAX_AGE`` seconds."""
    last = user.last_login.isoformat() if user.last_login else ""
    return signing.dumps({"u": user.pk, "l": last}, salt=SIGN_IN_SALT, compress=True)


def user_from_token(token: str):
    try:
        data = signing.loads(token, salt=SIGN_IN_SALT, max_age=settings.PORTAL_LINK_MAX_AGE)
    except signing.SignatureExpired:
        raise LinkInvalid("this sign-in link has expired; ask for a new one") from None
    except signing.BadSignature:
        raise LinkInvalid("this sign-in link is not valid") from None
    user = get_user_model().objects.filter(pk=data.get("u"), is_active=True).first()
    last = user.last_login.isoformat() if user is not None and user.last_login else ""
    if user is None or last != data.get("l") or not PortalMember.objects.filter(user=user).exists():
        raise LinkInvalid("this sign-in link was already used; ask for a new one")
    return user


def send_sign_in_link(*, email: str, invited: bool = False) -> bool:
    """E-mail a sign-in link to a portal user with this address (nothing, and no hint, for
    an unknown one)."""
    user = (
        get_user_model()
        .objects.filter(email__iexact=email.strip(), is_active=True, portal_member__isnull=False)
        .first()
    )
    if user is None:
        return False
    link = settings.PORTAL_BASE_URL + reverse("portal:link_sign_in", args=[sign_in_token(user)])
    minutes = settings.PORTAL_LINK_MAX_AGE // 60
    company = settings.BILLING_COMPANY["name"]
    intro = (
        f"You have been invited to the billing portal of {company}."
        if invited
        else f"Here is your link to sign in to the billing portal of {company}."
    )
    send_mail(
        subject=f"Sign in to {company} billing",
        message=f"{intro}\n\n{link}\n\nThe link works once, for {minutes} minutes.",
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[user.email],
    )
    return True


@transaction.atomic
def update_alert_settings(*, customer: Customer, threshold: Decimal | None, email: str) -> Customer:
    """The low-balance alert: below ``threshold`` available, ``email`` is told (once each
    time the balance falls below it)."""
    if threshold is not None and threshold < 0:
        raise errors.ValidationFailed("the threshold cannot be negative", param="threshold")
    Customer.objects.filter(pk=customer.pk).update(
        low_balance_threshold=threshold,
        low_balance_email=email.strip(),
        low_balance_alerted_at=None,
    )
    customer.refresh_from_db()
    return customer


def check_low_balances(*, now: datetime | None = None) -> int:
    """Beat: e-mail each customer whose available balance has fallen below its threshold
    (once, until it is above again). Returns how many were alerted."""
    now = now or timezone.now()
    alerted = 0
    customers = Customer.objects.filter(low_balance_threshold__isnull=False).exclude(
        low_balance_email=""
    )
    for customer in customers:
        wallet = customer.wallets.select_related("account").filter(currency=customer.currency)
        wallet = wallet.first()
        if wallet is None:
            continue
        available = ledger_selectors.get_balance(account=wallet.account).available
        below = available < customer.low_balance_threshold
        if below and customer.low_balance_alerted_at is None:
            # Claimed by one conditional UPDATE (committed on its own) before the e-mail:
            # two beat runs at once send one alert.
            claimed = Customer.objects.filter(
                pk=customer.pk, low_balance_alerted_at__isnull=True
            ).update(low_balance_alerted_at=now)
            if claimed:
                send_mail(
                    subject=f"Low balance: {available.normalize():f} {wallet.currency} left",
                    message=(
                        f"The available balance of {customer.name} is "
                        f"{available.normalize():f} {wallet.currency}, below your alert "
                        f"threshold of {customer.low_balance_threshold.normalize():f}. "
                        "Top up in the billing portal to keep using the service."
                    ),
                    from_email=settings.DEFAULT_FROM_EMAIL,
                    recipient_list=[customer.low_balance_email],
                )
                alerted += 1
        elif not below and customer.low_balance_alerted_at is not None:
            Customer.objects.filter(pk=customer.pk).update(low_balance_alerted_at=None)
    return alerted
