"""Payments under real concurrency: two deliveries of one payment racing (the PaymentIntent's
webhook and the synchronous answer, or Stripe delivering twice) record it once and the
loser is a replay, never an IntegrityError. Threads with their own connections on real
PostgreSQL (``transaction=True``: no test transaction hides the locking)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from invoicing import services
from invoicing.models import Invoice, InvoiceStatus, Payment
from tests.invoicing.conftest import account_posted, close, finalize, plan, receivable, subscribe
from tests.threads import run_concurrently

D = Decimal


@pytest.mark.django_db(transaction=True)
def test_racing_deliveries_of_one_payment_record_it_once_and_replay():
    invoice = finalize(close(subscribe(plan(base_fee="42.50"))))

    results = run_concurrently(
        lambda i: services.record_payment(
            invoice_id=invoice.pk,
            amount=D("42.50"),
            provider="stripe",
            provider_payment_id="pi_race",
        ),
        threads=8,
    )

    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert sorted(r.replayed for r in results) == [False] + [True] * 7
    assert len({r.pk for r in results}) == 1
    assert Payment.objects.count() == 1
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID
    assert account_posted("@StripeClearing") == D("42.50")
    assert receivable(invoice.subscription) == D(0)
