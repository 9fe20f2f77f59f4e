"""Period close and finalization: figures worked out by hand for every price model,
proration, trials and tax, compared exactly; the ledger telling the same story as the
invoice to the smallest unit.

Subscriptions start on 1 April 2026 (a 30-day period to 1 May)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import DatabaseError, transaction
from django.db.models import Sum

from billing import services as billing
from billing.models import BillingMode, Subscription, SubscriptionPhase, SubscriptionStatus
from invoicing import services as invoicing
from invoicing.errors import InvoiceHasPayments, InvoiceNotFinal, InvoicingValidation
from invoicing.errors import ReferenceReused as CreditNoteReferenceReused
from invoicing.models import Invoice, InvoiceLine, InvoiceStatus, TaxRate
from invoicing.money import to_minor_unit
from ledger.models import Entry
from metering.models import Event
from tests.invoicing.conftest import (
    IN_APRIL,
    PERIOD_END,
    START,
    ChargeSpec,
    TierSpec,
    account_posted,
    at,
    close,
    finalize,
    lines,
    meter,
    plan,
    receivable,
    subscribe,
    use,
    wallet_posted,
)

pytestmark = pytest.mark.django_db
D = Decimal


def graduated_plan(**kw):
    """Base fee 20 USD; 1M units included, then 2 USD per million up to 1M more, then 1.50."""
    return plan(
        ChargeSpec(
            meter=meter(name="Output tokens", unit="tokens"),
            price_model="graduated",
            included_quantity=D(1_000_000),
            tiers=(
                TierSpec(up_to=D(1_000_000), unit_price=D("0.000002")),
                TierSpec(up_to=None, unit_price=D("0.0000015")),
            ),
        ),
        base_fee="20",
        **kw,
    )


# --- close -----------------------------------------------------------------------------------


def test_close_makes_a_draft_with_base_fee_included_and_tier_lines_and_rolls_the_period():
    subscription = subscribe(graduated_plan())
    assert use(subscription, 1_500_000).status == "accepted"
    assert use(subscription, 1_000_000).status == "accepted"  # crosses into tier 2

    assert invoicing.close_period(subscription_id=subscription.pk, as_of=at(2026, 4, 30)) is None
    invoice = close(subscription)

    assert invoice.status == InvoiceStatus.DRAFT and invoice.number is None
    assert (invoice.period_start, invoice.period_end) == (START, PERIOD_END)
    assert lines(invoice) == [
        ("base_fee", "Pro — base fee", D(1), D(20)),
        ("included", "Output tokens: included (1,000,000 tokens per period)", D(1_000_000), D(0)),
        ("usage", "Output tokens, tier 1", D(1_000_000), D(2)),  # 1M × 0.000002
        ("usage", "Output tokens, tier 2", D(500_000), D("0.75")),  # 0.5M × 0.0000015
    ]
    assert (invoice.subtotal, invoice.tax, invoice.total) == (D("22.75"), D(0), D("22.75"))
    assert invoice.usage_charged == D("2.75")  # what rating posted to the ledger
    assert invoice.grace_ends_at == at(2026, 5, 2)  # 24 hours
    subscription.refresh_from_db()
    assert (subscription.current_period_start, subscription.current_period_end) == (
        PERIOD_END,
        at(2026, 6, 1),
    )


def test_closing_again_or_before_the_end_changes_nothing():
    subscription = subscribe(graduated_plan())
    first = close(subscription)
    again = invoicing.close_period(subscription_id=subscription.pk, as_of=PERIOD_END)
    assert again is None  # the period rolled: the next one has not ended
    assert Invoice.objects.filter(subscription=subscription).count() == 1
    # Catching up: three months late closes each period once, in order.
    made = invoicing.close_subscription_periods(
        subscription_id=subscription.pk, as_of=at(2026, 8, 1)
    )
    assert made == 3
    starts = list(
        Invoice.objects.filter(subscription=subscription)
        .order_by("period_start")
        .values_list("period_start", flat=True)
    )
    assert starts == [START, at(2026, 5, 1), at(2026, 6, 1), at(2026, 7, 1)]
    assert first.pk == Invoice.objects.order_by("id").first().pk
    assert (
        invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2026, 8, 1))
        == 0
    )


def test_a_period_without_usage_or_fee_still_gets_a_zero_invoice():
    subscription = subscribe(plan(ChargeSpec(meter=meter(), unit_price=D("0.01"))))
    invoice = finalize(close(subscription))
    assert lines(invoice) == []
    assert (invoice.total, invoice.status) == (D(0), InvoiceStatus.PAID)
    assert invoice.display_number.startswith("INV-")
    assert invoice.ledger_transaction_id is None  # nothing moved


@pytest.mark.parametrize(
    ("charge", "units", "expected"),
    [
        # per unit: 1,234,567 × 0.0000013 = 1.6049371 → 1.60
        (
            ChargeSpec(meter="", unit_price=D("0.0000013")),
            1_234_567,
            [("usage", "M", D(1_234_567), D("1.60"))],
        ),
        # volume: 2,500 units reach the 2nd tier: all at 0.004 + flat 1 = 11.00
        (
            ChargeSpec(
                meter="",
                price_model="volume",
                tiers=(
                    TierSpec(up_to=D(1000), unit_price=D("0.005")),
                    TierSpec(up_to=None, unit_price=D("0.004"), flat_fee=D(1)),
                ),
            ),
            2500,
            [("usage", "M, tier 2", D(2500), D(11))],
        ),
        # package: 10 included, then 0.50 per started block of 100: 241 billable → 3 blocks
        (
            ChargeSpec(
                meter="",
                price_model="package",
                included_quantity=D(10),
                unit_price=D("0.50"),
                package_size=D(100),
            ),
            251,
            [
                ("included", "M: included (10 per period)", D(10), D(0)),
                ("usage", "M, packages of 100", D(3), D("1.50")),
            ],
        ),
    ],
    ids=["per_unit", "volume", "package"],
)
def test_every_price_model_is_invoiced_as_rated(charge, units, expected):
    code = meter(name="M")
    subscription = subscribe(plan(ChargeSpec(**{**charge.__dict__, "meter": code})))
    use(subscription, units)
    invoice = close(subscription)
    assert lines(invoice) == expected
    precise = sum(line.amount_precise for line in invoice.lines.all())
    assert invoice.usage_charged == precise  # the ledger has the exact amount


def test_base_fee_is_prorated_between_the_plans_of_a_mid_period_change():
    basic = plan(base_fee="30", name="Basic")
    pro = plan(base_fee="60", name="Pro")
    subscription = subscribe(basic)
    billing.change_subscription(subscription_id=subscription.pk, plan=pro, now=at(2026, 4, 11))
    invoice = close(subscription)
    # 10 of 30 days on Basic: 10.00; 20 of 30 days on Pro: 40.00
    assert lines(invoice) == [
        ("base_fee", "Basic — base fee, prorated 2026-04-01 to 2026-04-11", D(1), D(10)),
        ("base_fee", "Pro — base fee, prorated 2026-04-11 to 2026-05-01", D(1), D(40)),
    ]
    assert invoice.total == D(50)


def test_a_third_of_a_fee_keeps_its_precision_and_the_rounding_is_posted():
    basic = plan(base_fee="10", name="Basic")
    pro = plan(base_fee="20", name="Pro")
    subscription = subscribe(basic)
    billing.change_subscription(subscription_id=subscription.pk, plan=pro, now=at(2026, 4, 11))
    invoice = finalize(close(subscription))
    # Basic 10 × 10/30 = 3.333333333333 → 3.33; Pro 20 × 20/30 = 13.333333333333 → 13.33
    assert [line.amount for line in invoice.lines.all()] == [D("3.33"), D("13.33")]
    assert invoice.fees_precise == D("16.666666666666")
    assert invoice.total == D("16.66")
    assert invoice.rounding == D("-0.006666666666")
    assert account_posted("@Revenue") == D("16.666666666666")
    assert account_posted("@Rounding") == D("-0.006666666666")  # a debit: rounded down
    assert receivable(subscription) == D("16.66")


def test_scheduled_change_takes_effect_and_cancel_at_period_end_ends_it():
    basic, pro = plan(base_fee="10", name="Basic"), plan(base_fee="20", name="Pro")
    subscription = subscribe(basic)
    billing.change_subscription(
        subscription_id=subscription.pk, plan=pro, at_period_end=True, now=at(2026, 4, 5)
    )
    assert lines(close(subscription))[0][3] == D(10)  # April on Basic
    subscription.refresh_from_db()
    assert subscription.plan_id == pro.pk and subscription.scheduled_plan_id is None
    assert list(
        SubscriptionPhase.objects.filter(subscription=subscription).values_list(
            "plan_id", "starts_at", "ends_at"
        )
    ) == [(basic.pk, START, PERIOD_END), (pro.pk, PERIOD_END, None)]
    billing.cancel_subscription(
        subscription_id=subscription.pk, at_period_end=True, now=at(2026, 5, 3)
    )
    assert lines(close(subscription, at(2026, 6, 1)))[0][3] == D(20)  # May on Pro
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED
    assert subscription.ended_at == at(2026, 6, 1)
    assert invoicing.due_subscription_ids(as_of=at(2027, 1, 1)) == []


def test_canceled_now_gets_a_final_prorated_invoice():
    subscription = subscribe(plan(base_fee="30"))
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 16))
    assert invoicing.due_subscription_ids(as_of=at(2026, 4, 15)) == []
    assert invoicing.due_subscription_ids(as_of=at(2026, 4, 16)) == [subscription.pk]
    invoice = close(subscription, at(2026, 4, 16))
    assert lines(invoice) == [
        ("base_fee", "Pro — base fee, prorated 2026-04-01 to 2026-04-16", D(1), D(15))
    ]
    assert invoicing.due_subscription_ids(as_of=at(2026, 5, 1)) == []


def test_a_trial_is_invoiced_at_zero_and_then_becomes_active():
    code = meter(name="Calls")
    subscription = subscribe(
        plan(ChargeSpec(meter=code, unit_price=D("0.10")), base_fee="50"), trial_days=14
    )
    assert subscription.status == SubscriptionStatus.TRIALING
    use(subscription, 40, at_time=at(2026, 4, 5))
    invoice = finalize(close(subscription, at(2026, 4, 15)), at(2026, 4, 16))
    assert (invoice.period_start, invoice.period_end) == (START, at(2026, 4, 15))
    assert lines(invoice) == [("usage", "Calls: during the trial", D(40), D(0))]
    assert invoice.total == D(0) and invoice.status == InvoiceStatus.PAID
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.ACTIVE
    assert (subscription.current_period_start, subscription.current_period_end) == (
        at(2026, 4, 15),
        at(2026, 5, 15),
    )
    use(subscription, 10, at_time=at(2026, 4, 20))
    invoice = close(subscription, at(2026, 5, 15))
    assert lines(invoice) == [
        ("base_fee", "Pro — base fee", D(1), D(50)),
        ("usage", "Calls", D(10), D(1)),
    ]


# --- tax and finalization ----------------------------------------------------------------------


def test_tax_by_region_with_a_customer_override_and_half_even_rounding():
    TaxRate.objects.create(name="Everywhere", percentage=D("5"))
    TaxRate.objects.create(name="US sales tax", percentage=D("8.25"), country="US")
    TaxRate.objects.create(name="Oregon", percentage=D("0"), country="US", state="OR")
    us = subscribe(graduated_plan(), country="US")
    oregon = subscribe(graduated_plan(), country="US", state="OR")
    elsewhere = subscribe(graduated_plan(), country="DE")
    use(us, 2_500_000)
    invoice = close(us)
    # 22.75 × 8.25 % = 1.876875 → 1.88
    assert (invoice.tax_name, invoice.tax, invoice.total) == ("US sales tax", D("1.88"), D("24.63"))
    assert close(oregon).tax_name == "Oregon"
    assert (close(elsewhere).tax_name, Invoice.objects.get(subscription=elsewhere).tax) == (
        "Everywhere",
        D("1.00"),
    )
    special = subscribe(graduated_plan(), country="US")
    TaxRate.objects.create(name="Exempt", percentage=D(0), customer_id=special.customer_id)
    assert close(special).tax_name == "Exempt"
    # the one rounding rule: half to even
    assert to_minor_unit(D("0.125"), "USD") == D("0.12")
    assert to_minor_unit(D("0.135"), "USD") == D("0.14")
    assert to_minor_unit(D("12.5"), "JPY") == D("12")
    assert to_minor_unit(D("1.2345"), "KWD") == D("1.234")


def test_finalize_posts_the_invoice_to_the_ledger_and_numbers_it():
    TaxRate.objects.create(name="US sales tax", percentage=D("8.25"), country="US")
    subscription = subscribe(graduated_plan(), country="US")
    use(subscription, 2_500_000)
    assert wallet_posted(subscription) == D("-2.75")  # postpaid: usage is owed in real time
    assert account_posted("@Revenue") == D("2.75")

    invoice = finalize(close(subscription))

    assert invoice.status == InvoiceStatus.OPEN
    assert (invoice.number, invoice.display_number) == (1, "INV-000001")
    assert invoice.due_at == at(2026, 5, 15)
    assert (invoice.total, invoice.balance_applied, invoice.amount_due) == (
        D("24.63"),
        D(0),
        D("24.63"),
    )
    assert wallet_posted(subscription) == D(0)  # the usage moved to the invoice
    assert receivable(subscription) == D("24.63")
    assert account_posted("@Revenue") == D("22.75")  # usage once, in real time, + the fee
    assert account_posted("@TaxPayable") == D("1.88")
    assert account_posted("@Rounding") == D(0)
    entries = Entry.objects.filter(transaction_id=invoice.ledger_transaction_id)
    assert entries.aggregate(total=Sum("amount"))["total"] == 0
    # Finalizing again returns the invoice, changes nothing.
    again = finalize(invoice)
    assert again.replayed and again.number == 1
    assert receivable(subscription) == D("24.63")


def test_numbers_are_gapless_across_invoices_and_a_failed_finalization_gives_its_number_back():
    subs = [subscribe(plan(base_fee="5")) for _ in range(3)]
    drafts = [close(s) for s in subs]
    assert finalize(drafts[0]).display_number == "INV-000001"
    with pytest.raises(RuntimeError), transaction.atomic():
        finalize(drafts[1])
        raise RuntimeError("crash after finalizing, before commit")
    assert Invoice.objects.get(pk=drafts[1].pk).status == InvoiceStatus.DRAFT
    assert finalize(drafts[2]).display_number == "INV-000002"
    assert finalize(drafts[1]).display_number == "INV-000003"


def test_a_finalized_invoice_is_frozen_by_the_database():
    subscription = subscribe(plan(base_fee="5"))
    invoice = finalize(close(subscription))
    with pytest.raises(DatabaseError, match="finalized"), transaction.atomic():
        Invoice.objects.filter(pk=invoice.pk).update(total=D(1))
    with pytest.raises(DatabaseError, match="finalized"), transaction.atomic():
        InvoiceLine.objects.filter(invoice=invoice).update(amount=D(1))
    with pytest.raises(DatabaseError, match="finalized"), transaction.atomic():
        InvoiceLine.objects.filter(invoice=invoice).delete()
    # what may change: payments and status
    Invoice.objects.filter(pk=invoice.pk).update(amount_paid=D(5), status="paid")


def test_prepaid_usage_is_paid_from_the_balance_and_the_fee_too_when_it_can():
    code = meter(name="Calls")
    subscription = subscribe(
        plan(ChargeSpec(meter=code, unit_price=D("0.0305")), base_fee="10"),
        billing_mode=BillingMode.PREPAID,
        funds="100",
    )
    use(subscription, 1000)  # 30.50
    assert wallet_posted(subscription) == D("69.50")
    invoice = finalize(close(subscription))
    assert (invoice.total, invoice.balance_applied, invoice.amount_due) == (
        D("40.50"),
        D("40.50"),
        D(0),
    )
    assert invoice.status == InvoiceStatus.PAID
    assert wallet_posted(subscription) == D("59.50")
    assert receivable(subscription) == D(0)


def test_a_prepaid_balance_pays_what_it_can_in_whole_cents():
    subscription = subscribe(plan(base_fee="10"), billing_mode=BillingMode.PREPAID, funds="4.005")
    invoice = finalize(close(subscription))
    assert (invoice.balance_applied, invoice.amount_due) == (D("4.00"), D("6.00"))
    assert invoice.status == InvoiceStatus.OPEN
    assert wallet_posted(subscription) == D("0.005")
    assert receivable(subscription) == D(6)


def test_sums_agree_invoice_lines_rated_events_and_ledger_usage_postings():
    code = meter(name="Calls")
    subscription = subscribe(
        plan(ChargeSpec(meter=code, unit_price=D("0.000000333333")), base_fee="1")
    )
    for units in (1, 7, 1_000_003, 333, 2_999_999):
        use(subscription, units)
    invoice = finalize(close(subscription))
    usage_lines = invoice.lines.filter(kind="usage")
    precise_lines = sum(line.amount_precise for line in usage_lines)
    events = Event.objects.filter(subscription=subscription, period_start=START)
    rated = events.aggregate(total=Sum("amount"))["total"]
    wallet_account = subscription.customer.wallets.get(currency="USD").account_id
    posted = Entry.objects.filter(  # debits of the wallet are positive
        account_id=wallet_account, transaction__metadata__kind="usage"
    ).aggregate(total=Sum("amount"))["total"]
    assert precise_lines == rated == posted == invoice.usage_charged
    assert invoice.rounding == invoice.total - invoice.usage_charged - invoice.fees_precise


# --- late usage ----------------------------------------------------------------------------


def test_late_usage_amends_the_draft_until_it_is_final_then_is_refused():
    code = meter(name="Calls")
    subscription = subscribe(plan(ChargeSpec(meter=code, unit_price=D("0.5"))))
    use(subscription, 2)
    draft = close(subscription)
    assert draft.total == D(1)
    late = use(subscription, 4, at_time=at(2026, 4, 30, 23), now=at(2026, 5, 1, 2))
    assert late.status == "accepted"
    invoicing.refresh_draft(invoice_id=draft.pk)
    assert Invoice.objects.get(pk=draft.pk).total == D(3)
    finalized = finalize(draft, at(2026, 5, 2))
    assert finalized.total == D(3)
    too_late = use(subscription, 1, at_time=at(2026, 4, 30, 23), now=at(2026, 5, 2, 1))
    assert too_late.status == "rejected" and too_late.error.code == "period_closed"
    # usage of the new period is still welcome
    assert use(subscription, 1, at_time=at(2026, 5, 2), now=at(2026, 5, 2, 1)).status == "accepted"


def test_the_command_closes_and_finalizes_as_of_a_time(capsys):
    subscription = subscribe(plan(base_fee="12"))
    call_command("close_periods", "--as-of", "2026-05-01T00:00:00Z")
    assert Invoice.objects.get(subscription=subscription).status == InvoiceStatus.DRAFT
    call_command("close_periods", "--as-of", "2026-05-01T12:00:00Z", "--finalize")
    assert Invoice.objects.get(subscription=subscription).status == InvoiceStatus.DRAFT
    call_command("close_periods", "--as-of", "2026-05-02T00:00:00Z", "--finalize")
    invoice = Invoice.objects.get(subscription=subscription)
    assert invoice.status == InvoiceStatus.OPEN and invoice.finalized_at == at(2026, 5, 2)
    assert "1 invoice(s) finalized" in capsys.readouterr().out


# --- corrections and payments --------------------------------------------------------------------


def test_void_takes_back_revenue_tax_and_rounding_and_returns_the_balance_used():
    TaxRate.objects.create(name="VAT", percentage=D(20))
    subscription = subscribe(graduated_plan(), funds="5")
    use(subscription, 2_500_000)
    invoice = finalize(close(subscription))
    # 22.75 + 4.55 tax = 27.30; 5.00 of the wallet's own funds applied
    assert (invoice.total, invoice.balance_applied) == (D("27.30"), D(5))
    with pytest.raises(InvoicingValidation):
        invoicing.void_invoice(invoice_id=invoice.pk, reason=" ")
    voided = invoicing.void_invoice(invoice_id=invoice.pk, reason="Duplicate account")
    assert voided.status == InvoiceStatus.VOID
    assert receivable(subscription) == D(0)
    assert wallet_posted(subscription) == D(5)  # usage forgiven, the balance given back
    assert account_posted("@Revenue") == D(0)
    assert account_posted("@TaxPayable") == D(0)
    assert invoicing.void_invoice(invoice_id=invoice.pk, reason="again").status == "void"


def test_credit_notes_reduce_what_is_owed_then_credit_the_wallet():
    TaxRate.objects.create(name="VAT", percentage=D(10))
    subscription = subscribe(plan(base_fee="100"))
    invoice = finalize(close(subscription))
    assert invoice.amount_due == D(110)
    note = invoicing.create_credit_note(
        invoice_id=invoice.pk, amount=D(30), reason="Outage credit", reference="cn-1"
    )
    assert (note.amount, note.tax, note.total, note.display_number) == (
        D(30),
        D(3),
        D(33),
        "CN-000001",
    )
    assert receivable(subscription) == D(77)
    again = invoicing.create_credit_note(
        invoice_id=invoice.pk, amount=D(30), reason="Outage credit", reference="cn-1"
    )
    assert again.pk == note.pk
    with pytest.raises(CreditNoteReferenceReused):
        invoicing.create_credit_note(
            invoice_id=invoice.pk, amount=D(31), reason="x", reference="cn-1"
        )
    with pytest.raises(InvoicingValidation, match="at most 70"):
        invoicing.create_credit_note(
            invoice_id=invoice.pk, amount=D(71), reason="x", reference="c2"
        )
    with pytest.raises(InvoicingValidation, match="minor units"):
        invoicing.create_credit_note(
            invoice_id=invoice.pk, amount=D("0.001"), reason="x", reference="c3"
        )
    payment = invoicing.record_payment(
        invoice_id=invoice.pk, amount=D(77), provider="offline", provider_payment_id="wire-1"
    )
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID
    assert (
        invoicing.record_payment(
            invoice_id=invoice.pk, amount=D(77), provider="offline", provider_payment_id="wire-1"
        ).pk
        == payment.pk
    )
    assert account_posted("@OfflinePayments") == D(77)
    # after payment, a credit goes to the customer's balance
    invoicing.create_credit_note(
        invoice_id=invoice.pk, amount=D(10), reason="Goodwill", reference="c4"
    )
    assert wallet_posted(subscription) == D(11)
    assert receivable(subscription) == D(0)
    with pytest.raises(InvoiceHasPayments):
        invoicing.void_invoice(invoice_id=invoice.pk, reason="no")


def test_drafts_cannot_be_paid_credited_or_voided():
    invoice = close(subscribe(plan(base_fee="5")))
    with pytest.raises(InvoiceNotFinal):
        invoicing.record_payment(
            invoice_id=invoice.pk, amount=D(5), provider="offline", provider_payment_id="p"
        )
    with pytest.raises(InvoiceNotFinal):
        invoicing.create_credit_note(invoice_id=invoice.pk, amount=D(1), reason="x", reference="r")
    with pytest.raises(InvoiceNotFinal):
        invoicing.void_invoice(invoice_id=invoice.pk, reason="x")


def test_offline_mode_pays_a_finalized_invoice_once(settings):
    from invoicing import payments

    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True  # the opt-in
    invoice = finalize(close(subscribe(plan(base_fee="9"))))
    assert payments.offline_mode()
    first = payments.collect_payment(invoice_id=invoice.pk)
    assert first is not None and first.amount == D(9)
    assert payments.collect_payment(invoice_id=invoice.pk) is None  # paid: nothing to do
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID
    assert Subscription.objects.get(pk=invoice.subscription_id).invoiced_through == PERIOD_END


def test_after_finalization_stores_the_pdf_emails_it_and_collects_payment(settings, tmp_path):
    from django.core import mail

    settings.MEDIA_ROOT = tmp_path
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True  # the opt-in
    invoice = finalize(close(subscribe(plan(base_fee="15"))))
    invoicing.after_finalization(invoice_id=invoice.pk)
    invoicing.after_finalization(invoice_id=invoice.pk)  # a redelivered task: nothing twice
    invoice.refresh_from_db()
    assert invoice.pdf.name == f"invoices/{invoice.display_number}.pdf"
    assert invoice.pdf.open("rb").read(4) == b"%PDF"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["ap@acme.example"]
    assert invoice.status == InvoiceStatus.PAID and invoice.payments.count() == 1


def test_catalog_priced_llm_usage_is_one_line_at_what_rating_charged(model_prices):
    from metering import rating

    total = meter(
        name="LLM tokens", event_name="llm.completion", property="llm.total_tokens", unit="tokens"
    )
    subscription = subscribe(plan(ChargeSpec(meter=total, margin_percent=D(20))))
    customer = subscription.customer
    outcomes = rating.ingest_events(
        [
            rating.EventIn(
                idempotency_key=f"llm-{n}",
                customer=customer.external_id,
                event_name="llm.completion",
                timestamp=IN_APRIL,
                properties={
                    "model": "gpt-4o",
                    "usage": {"prompt_tokens": 200_000, "completion_tokens": 100_000},
                },
            )
            for n in range(3)
        ],
        now=IN_APRIL,
    )
    assert [o.status for o in outcomes] == ["accepted"] * 3
    invoice = close(subscription)
    # each call: 200k × 2.5/M + 100k × 10/M = 1.50 at cost, × 1.2 = 1.80; three calls 5.40
    assert lines(invoice) == [
        ("usage", "LLM tokens: model catalog price + 20 %", D(900_000), D("5.40")),
    ]
    assert invoice.usage_charged == D("5.4")
