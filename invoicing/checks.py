"""``manage.py check --deploy``: payments that would give money away, or never arrive.

Tagged ``payments`` and deploy-only: a laptop or the demo may run offline on purpose."""

from __future__ import annotations

from django.conf import settings
from django.core import checks


@checks.register("payments", deploy=True)
def check_payment_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    found: list[checks.CheckMessage] = []
    if settings.PAYMENTS_OFFLINE:
        found.append(
            checks.Warning(
                "Offline payments are on (PAYMENTS_OFFLINE): without a Stripe key, portal "
                "top-ups are credited and invoices recorded as paid without any money.",
                hint="Unset PAYMENTS_OFFLINE in production; it is for the demo.",
                id="invoicing.W001",
            )
        )
    if not settings.STRIPE_SECRET_KEY:
        found.append(
            checks.Warning(
                "STRIPE_SECRET_KEY is not set: no card is charged; invoices stay open until "
                "finance staff record a payment received out of band.",
                hint="Set STRIPE_SECRET_KEY to collect payment through Stripe.",
                id="invoicing.W002",
            )
        )
    if not settings.STRIPE_WEBHOOK_SECRET:
        found.append(
            checks.Warning(
                "STRIPE_WEBHOOK_SECRET is not set: every Stripe webhook is refused "
                "(invalid_signature), so Checkout payments and refunds are never recorded.",
                hint="Set STRIPE_WEBHOOK_SECRET to the endpoint's signing secret.",
                id="invoicing.W003",
            )
        )
    return found
