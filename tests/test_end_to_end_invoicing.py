"""Issue 5's scenario end to end on the demo data: the demo customers' first period has
ended, the period close makes their drafts, finance finalizes them, and each gets a PDF, an
e-mail and an offline payment — with the invoice, the rated events and the ledger telling
the same story."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core import mail
from django.core.management import call_command
from django.db.models import Sum

from invoicing import services
from invoicing.models import Invoice, InvoiceStatus
from ledger import selectors as ledger_selectors
from ledger.models import Account
from metering.models import Event

pytestmark = pytest.mark.django_db


def test_demo_customers_are_invoiced_paid_offline_and_reconciled(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True  # the demo's opt-in (make run turns it on)
    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo", stdout=io.StringIO())  # again: nothing twice
    out = io.StringIO()
    call_command("close_periods", stdout=out)
    assert "5 period(s) closed" in out.getvalue()
    drafts = list(  # (the finance history's customers were invoiced by seed_demo itself)
        Invoice.objects.filter(status=InvoiceStatus.DRAFT)
        .select_related("customer")
        .order_by("customer__external_id")
    )
    assert [d.customer.external_id for d in drafts] == [
        "acme",
        "globex",
        "hooli",
        "initech",
        "soylent",
    ]
    # soylent: team-fortnightly (every other Monday) from a Wednesday, its first period 12 of
    # 14 days — the base fee 28.00 → 24.00
    fortnightly = drafts[-1].lines.get(kind="base_fee")
    assert fortnightly.description.startswith("Team (fortnightly) — base fee, prorated")
    assert fortnightly.amount == Decimal("24.00")
    assert (drafts[-1].period_end - drafts[-1].period_start).days == 12

    for draft in drafts:
        invoice = services.finalize_invoice(invoice_id=draft.pk)
        services.after_finalization(invoice_id=invoice.pk)
        invoice.refresh_from_db()
        assert invoice.status == InvoiceStatus.PAID, invoice.customer.external_id
        assert invoice.pdf.name.endswith(f"{invoice.display_number}.pdf")
        events = Event.objects.filter(
            subscription_id=invoice.subscription_id, period_start=invoice.period_start
        )
        assert events.count() > 0
        if invoice.customer.external_id == "hooli":  # a credits plan: usage in CREDITS
            assert set(invoice.lines.values_list("kind", flat=True)) == {"credits"}
            continue
        rated = events.aggregate(total=Sum("amount"))["total"]
        precise = sum(line.amount_precise for line in invoice.lines.filter(kind="usage"))
        assert precise == rated == invoice.usage_charged
        receivable = Account.objects.get(code=f"receivable:{invoice.customer_id}:USD")
        assert ledger_selectors.get_balance(account=receivable).posted == Decimal(0)
    assert len(mail.outbox) == 5
    numbers = sorted(
        Invoice.objects.filter(pk__in=[d.pk for d in drafts]).values_list("number", flat=True)
    )
    history = Invoice.objects.exclude(pk__in=[d.pk for d in drafts]).count()
    assert numbers == list(range(history + 1, history + 6))  # gapless, after the history's
