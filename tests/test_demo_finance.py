"""The demo (`make run`) shows the finance home with data: seed_demo gives three customers
months of history — invoices finalized as of their periods' ends, the older paid, the
newest owed — so revenue per month, MRR's change, receivables by age and the top customers
have figures from the first page load, not only after a day of the demo running."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command

from invoicing import finance
from invoicing.models import FINAL_STATUSES, Invoice, InvoiceStatus

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
