"""The demo (`make run`) shows the finance home with data: seed_demo gives three customers
months of history — invoices finalized as of their periods' ends, the older paid, the
newest owed — so revenue per month, MRR's change, receivables by age and the top customers
have figures from the first page load, not only after a day of the demo running."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command

from invoicing import finance, tasks
from invoicing.models import FINAL_STATUSES, Invoice, InvoiceStatus, Payment

pytestmark = pytest.mark.django_db


def test_the_demo_seeds_a_finance_history_the_home_reads(settings):
    settings.PAYMENTS_OFFLINE = True  # make run's opt-in
    settings.STRIPE_SECRET_KEY = ""
    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo", stdout=io.StringIO())  # again: nothing twice

    history = Invoice.objects.filter(customer__external_id__in=["stark", "wayne", "tyrell"])
    assert history.count() == 5 + 4 + 3
    assert set(history.values_list("status", flat=True)) <= set(FINAL_STATUSES)
    assert history.filter(status=InvoiceStatus.PAID).count() == 12 - (3 + 2 + 1)

    home = finance.finance_home()
    [usd] = [c for c in home.currencies if c.currency == "USD"]
    invoiced_months = [m for m in usd.months if m.invoiced > 0]
    assert len(invoiced_months) >= 3
    # the newest invoices are current, the third newest is past due whatever today's date
    owed = {b.key for b in usd.aging if b.amount > 0}
    assert "current" in owed and owed - {"current"}, usd.aging
    assert {c.external_id for c in usd.top_customers} >= {"stark", "wayne", "tyrell"}
    assert all(c.invoiced > Decimal(0) for c in usd.top_customers)


def test_the_demos_receivables_stay_after_the_workers_follow_up(settings, tmp_path):
    """make run's worker follows up every finalization (after_finalization) with the offline
    auto-pay on: the history customers pay by invoice (send_invoice), so nothing collects
    what they owe and the finance home keeps its receivables."""
    settings.PAYMENTS_OFFLINE = True  # make run's opt-in, and its auto-pay
    settings.OFFLINE_AUTO_PAY = True
    settings.STRIPE_SECRET_KEY = ""
    settings.MEDIA_ROOT = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    history = Invoice.objects.filter(customer__external_id__in=["stark", "wayne", "tyrell"])
    owed = history.exclude(status=InvoiceStatus.PAID)
    before = {i.pk: i.amount_remaining for i in owed}
    assert len(before) == 3 + 2 + 1 and all(before.values())
    payments_before = Payment.objects.count()

    for invoice_id in history.values_list("pk", flat=True):
        tasks.invoice_finalized(invoice_id)  # what the worker runs for each finalization
    tasks.retry_due_payments()

    assert {i.pk: i.amount_remaining for i in owed.all()} == before
    assert Payment.objects.count() == payments_before
    [usd] = [c for c in finance.finance_home().currencies if c.currency == "USD"]
    assert sum(b.amount for b in usd.aging) >= sum(before.values())
    assert "current" in {b.key for b in usd.aging if b.amount > 0}
