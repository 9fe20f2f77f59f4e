"""The books the reconciliation tests share: one customer's April usage, its invoice
finalized and paid by card; and a way to plant a difference the database rules refuse."""

from __future__ import annotations

from contextlib import contextmanager
from decimal import Decimal

from django.db import connection

from invoicing import services as invoicing
from tests.invoicing.conftest import ChargeSpec, at, close, finalize, meter, plan, use
from tests.invoicing.conftest import subscribe as subscribe_at_start

D = Decimal


@contextmanager
def triggers_off():
    """Plant a difference the database rules would refuse: superuser only, tests only."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            yield cursor
        finally:
            cursor.execute("SET session_replication_role = DEFAULT")


def make_books():
    """One customer: 100 units at 0.10 in April, the invoice finalized and paid by card."""
    subscription = subscribe_at_start(
        plan(ChargeSpec(meter=meter(), unit_price=D("0.10")), base_fee="5")
    )
    use(subscription, 60)
    use(subscription, 40, at_time=at(2026, 4, 20, 15))
    invoice = finalize(close(subscription))
    invoicing.record_payment(
        invoice_id=invoice.pk,
        amount=invoice.amount_due,
        provider="stripe",
        provider_payment_id="pi_recon_1",
        now=at(2026, 5, 1, 10),
    )
    return invoice
