"""Low-balance alerts: a customer's threshold and address, and the beat task's check that
e-mails the address once each time the available balance falls below the threshold."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from billing import errors
from billing.models import Customer
from ledger import selectors as ledger_selectors


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
        wallet = (
            customer.wallets.select_related("account").filter(currency=customer.currency).first()
        )
        threshold = customer.low_balance_threshold
        if wallet is None or threshold is None:  # (the query leaves out a None threshold)
            continue
        available = ledger_selectors.get_balance(account=wallet.account).available
        below = available < threshold
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
                        f"threshold of {threshold.normalize():f}. "
                        "Top up in the billing portal to keep using the service."
                    ),
                    from_email=settings.DEFAULT_FROM_EMAIL,
                    recipient_list=[customer.low_balance_email],
                )
                alerted += 1
        elif not below and customer.low_balance_alerted_at is not None:
            Customer.objects.filter(pk=customer.pk).update(low_balance_alerted_at=None)
    return alerted
