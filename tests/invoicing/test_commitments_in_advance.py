"""Prepaid commitments paid up front (``commitment_billing: in_advance``, issue 18): the
commitment invoiced on an invoice of its own when the period opens, held on
@CommitmentPrepaid; at the close the period's invoice draws usage down against it, invoices
the overage, and releases it (the undrawn part to @CommitmentBreakage) — against figures
worked out by hand in the comments (and in docs/pricing-file.md). The two invoices together
always come to what the same plan billed in arrears invoices at the close: nothing twice.

The plan: a base fee of 10.00, calls at 0.10, a commitment of 100.00 a month paid in
advance. Subscriptions start on 1 April 2026 (a 30-day period to 1 May) unless said
otherwise; the first commitment invoice is INV-000001."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection

from billing import services as billing
from billing.models import Subscription
from invoicing import errors, reconciliation
from invoicing import services as invoicing
from invoicing.models import Invoice, InvoiceKind, InvoiceStatus
from tests.invoicing.conftest import (
    PERIOD_END,
    START,
    ChargeSpec,
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
)
from tests.invoicing.test_pricing_shapes import upcoming_agrees

pytestmark = pytest.mark.django_db
D = Decimal

BASE = ("base_fee", "Pro — base fee", D(1), D(10))
COMMITTED = ("commitment", "Pro — prepaid commitment, 100 USD per period", D(1), D(100))


def drawn(amount: str, left: str, number: str = "INV-000001") -> tuple:
    return ("commitment",
            f"Usage drawn from the prepaid commitment ({number}) ({left} USD not drawn)",
            D(1), -D(amount))  # fmt: skip


def upfront_plan(commitment="100", billing="in_advance", **kw):
    kw.setdefault("base_fee", "10")
    return plan(
        ChargeSpec(meter=kw.pop("code", None) or meter(name="Calls"), unit_price=D("0.10")),
        commitment_amount=D(commitment),
        commitment_billing=billing,
        **kw,
    )


def open_and_finalize(subscription: Subscription, as_of=START) -> Invoice:
    """The beat's two steps as a period opens: the opening, then the finalize sweep."""
    assert subscription.pk in invoicing.due_opening_ids(as_of=as_of)
    opened = invoicing.open_period(subscription_id=subscription.pk, as_of=as_of)
    assert opened is not None and opened.kind == InvoiceKind.COMMITMENT
    assert opened.pk in invoicing.due_draft_ids(as_of=as_of)
    return finalize(opened, now=as_of)


@pytest.mark.parametrize(
    ("calls", "usage_line", "draw", "total", "breakage"),
    [
        # partly used: 400 calls = 40.00 drawn, 60.00 expire; 10 + 40 − 40 = 10.00 at the close
        (400, [("usage", "Calls", D(400), D(40))], drawn("40", "60.00"), 10, 60),
        # exactly the commitment: 1,000 calls = 100.00, all drawn; 10 + 100 − 100 = 10.00
        (1000, [("usage", "Calls", D(1000), D(100))], drawn("100", "0.00"), 10, 0),
        # exceeded: 1,500 calls = 150.00, 100.00 drawn, 50.00 overage; 10 + 150 − 100 = 60.00
        (1500, [("usage", "Calls", D(1500), D(150))], drawn("100", "0.00"), 60, 0),
        # nothing used: all 100.00 expire; 10.00 at the close
        (0, [], drawn("0", "100.00"), 10, 100),
    ],
)  # fmt: skip
def test_the_commitment_is_invoiced_up_front_then_drawn_down_at_the_close(
    calls, usage_line, draw, total, breakage
):
    subscription = subscribe(upfront_plan())
    advance = open_and_finalize(subscription)
    assert lines(advance) == [COMMITTED]
    assert (advance.total, advance.status) == (D(100), InvoiceStatus.OPEN)
    assert (advance.period_start, advance.period_end) == (START, PERIOD_END)
    # held, not earned: the prepaid commitment is a liability until the close
    assert account_posted("@CommitmentPrepaid") == 100
    assert account_posted("@Revenue") == 0
    subscription.refresh_from_db()
    assert subscription.invoiced_through is None  # the period stays open to usage
    if calls:
        use(subscription, calls)
    invoice = close(subscription)
    assert invoice.kind == InvoiceKind.PERIOD
    assert lines(invoice) == [BASE, *usage_line, draw]
    assert invoice.total == total
    assert (invoice.commitment_breakage, invoice.commitment_deferred) == (breakage, -100)
    upcoming_agrees(subscription, invoice)
    invoice = finalize(invoice)
    usage = D(calls) / 10
    assert account_posted("@CommitmentPrepaid") == 0  # released
    assert account_posted("@CommitmentBreakage") == breakage
    assert account_posted("@Revenue") == usage + 10  # the usage rated and the base fee
    # the same as in arrears (10 + max(usage, 100) + the overage): nothing billed twice
    assert receivable(subscription) == 100 + total == 10 + 100 + max(usage - 100, 0)
    assert account_posted("@Revenue") + account_posted("@CommitmentBreakage") == 100 + total


def test_in_advance_and_in_arrears_invoice_the_same_in_all():
    """400 calls on each: in arrears one invoice of 110.00 at the close; in advance 100.00
    as the period opens and 10.00 at the close."""
    arrears = subscribe(upfront_plan(billing="in_arrears"))
    assert invoicing.open_period(subscription_id=arrears.pk, as_of=START) is None
    use(arrears, 400)
    assert close(arrears).total == 110
    assert not Invoice.objects.filter(kind=InvoiceKind.COMMITMENT).exists()

    advance = subscribe(upfront_plan())
    open_and_finalize(advance)
    use(advance, 400)
    assert close(advance).total == 10
    totals = Invoice.objects.filter(subscription=advance, period_start=START)
    assert sum(i.total for i in totals) == 110


def test_the_close_opens_the_next_period_and_its_close_draws_on_it():
    """The close of April rolls into May and invoices May's commitment in the same
    transaction; the finalize sweep as May opens numbers it INV-000002 (April's own invoice
    waits for its grace period). May's close draws on it: 300 calls (30.00), 70.00 expire."""
    subscription = subscribe(upfront_plan())
    open_and_finalize(subscription)
    april = close(subscription)
    may = Invoice.objects.get(
        subscription=subscription, period_start=PERIOD_END, kind=InvoiceKind.COMMITMENT
    )
    assert lines(may) == [COMMITTED]
    assert may.grace_ends_at == PERIOD_END  # finalized by the sweep as May opens
    assert invoicing.due_opening_ids(as_of=PERIOD_END) == []  # opened already
    assert invoicing.finalize_due_invoices(as_of=PERIOD_END) == 1  # May's; April's has grace
    may.refresh_from_db()
    assert may.display_number == "INV-000002"
    finalize(april)
    use(subscription, 300, at_time=at(2026, 5, 10))
    june = close(subscription, at(2026, 6, 1))
    assert lines(june) == [
        BASE,
        ("usage", "Calls", D(300), D(30)),
        drawn("30", "70.00", "INV-000002"),
    ]
    assert june.total == 10


def test_a_calendar_stub_pays_its_prorated_commitment_up_front():
    """Calendar billing on the 1st, start 15 January 2026 09:30: the stub to 1 February
    counts 17 of January's 31 days (the 15th in full), so 31.00 × 17 / 31 = 17.00 up front;
    50 calls (5.00) draw 5.00, 12.00 expire; the close invoices 5 − 5 = 0.00. February opens
    with the whole 31.00."""
    subscription = subscribe(
        upfront_plan("31", base_fee="0", billing_time="calendar", billing_anchor_day=1),
        start=at(2026, 1, 15, 9, 30),
    )
    advance = open_and_finalize(subscription, as_of=at(2026, 1, 15, 9, 30))
    assert lines(advance) == [
        ("commitment", "Pro — prepaid commitment, 31 USD per period, prorated 2026-01-15 to "
         "2026-02-01", D(1), D(17)),
    ]  # fmt: skip
    use(subscription, 50, at_time=at(2026, 1, 20))
    invoice = close(subscription, at(2026, 2, 1))
    assert lines(invoice) == [("usage", "Calls", D(50), D(5)), drawn("5", "12.00")]
    assert (invoice.total, invoice.commitment_breakage) == (0, 12)
    february = Invoice.objects.get(subscription=subscription, kind=InvoiceKind.COMMITMENT,
                                   period_start=at(2026, 2, 1))  # fmt: skip
    assert lines(february) == [("commitment", "Pro — prepaid commitment, 31 USD per period",
                                D(1), D(31))]  # fmt: skip


def test_a_plan_change_mid_period_invoices_the_difference_at_the_close():
    """100.00 a month paid up front on 1 April; on 16 April the plan becomes 200.00 a month:
    the period owes 100 × 15/30 + 200 × 15/30 = 150.00, so the close adds 50.00; 600 calls
    (60.00) draw 60.00, 90.00 expire: 50 + 60 − 60 = 50.00 — with the 100.00 paid, 150.00,
    what in arrears invoices (test_commitments: the same change)."""
    code = meter(name="Calls")
    small = upfront_plan("100", base_fee="0", code=code, name="Small")
    large = upfront_plan("200", base_fee="0", code=code, name="Large")
    subscription = subscribe(small)
    open_and_finalize(subscription)
    use(subscription, 300, at_time=at(2026, 4, 10))
    billing.change_subscription(subscription_id=subscription.pk, plan=large, now=at(2026, 4, 16))
    use(subscription, 300, at_time=at(2026, 4, 20))
    invoice = close(subscription)
    assert lines(invoice)[1:] == [
        ("commitment", "Prepaid commitment adjusted: 150.00 USD owed for the period, 100.00 "
         "invoiced in advance (INV-000001)", D(1), D(50)),
        drawn("60", "90.00"),
    ]  # fmt: skip
    assert (invoice.total, invoice.commitment_breakage) == (50, 90)
    upcoming_agrees(subscription, invoice)
    finalize(invoice)
    assert account_posted("@CommitmentBreakage") == 90
    assert account_posted("@CommitmentPrepaid") == 0
    assert receivable(subscription) == 150


def test_a_cancellation_mid_period_gives_the_commitment_not_owed_back_to_the_balance():
    """Paid 100.00 up front; canceled on 16 April: 15 of 30 days owe 50.00; 200 calls
    (20.00) draw 20.00, 30.00 expire. The close: −50.00 adjustment + 20 − 20 = −50.00, put
    on the customer's balance at finalization (as a credit note's rest is)."""
    subscription = subscribe(upfront_plan(base_fee="0"))
    open_and_finalize(subscription)
    use(subscription, 200)
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 16))
    invoice = close(subscription, at(2026, 4, 16))
    assert invoice.total == -50 and invoice.commitment_breakage == 30
    invoice = finalize(invoice, now=at(2026, 4, 16))
    assert (invoice.balance_applied, invoice.amount_due, invoice.status) == (-50, 0, "paid")
    assert receivable(subscription) == 100  # the commitment invoice, not paid yet
    assert account_posted("@CommitmentPrepaid") == 0
    # what the customer was invoiced less what its balance got back: 20 used + 30 expired
    assert account_posted("@Revenue") + account_posted("@CommitmentBreakage") == 50
    result = reconciliation.run_reconciliation(start=START, end=at(2026, 5, 2))
    assert result.status == "passed", result.checks


def test_a_credit_note_after_the_close_takes_back_the_breakage_first():
    """400 calls: 60.00 expired. A credit note of 5.00 on the period's invoice (10.00 before
    tax) takes it from the breakage; the commitment invoice itself is not credited (its
    period's invoice carries the breakage) nor voided once the period has been invoiced."""
    subscription = subscribe(upfront_plan())
    advance = open_and_finalize(subscription)
    use(subscription, 400)
    invoice = finalize(close(subscription))
    note = invoicing.create_credit_note(
        invoice_id=invoice.pk, amount=D(5), reason="goodwill", reference="cn-1",
        now=at(2026, 5, 2),
    )  # fmt: skip
    assert note.commitment_breakage == 5  # at most the invoice's subtotal (10.00)
    assert account_posted("@CommitmentBreakage") == 55
    with pytest.raises(errors.PrepaidCommitmentInvoice):
        invoicing.create_credit_note(
            invoice_id=advance.pk, amount=D(5), reason="x", reference="cn-2", now=at(2026, 5, 2)
        )
    with pytest.raises(errors.PrepaidCommitmentInvoice):
        invoicing.void_invoice(invoice_id=advance.pk, reason="x", now=at(2026, 5, 2))
    result = reconciliation.run_reconciliation(start=START, end=at(2026, 5, 3))
    assert result.status == "passed", result.checks


def test_a_commitment_invoice_voided_before_the_close_is_billed_in_arrears():
    subscription = subscribe(upfront_plan())
    advance = open_and_finalize(subscription)
    invoicing.void_invoice(invoice_id=advance.pk, reason="signed late", now=at(2026, 4, 2))
    assert account_posted("@CommitmentPrepaid") == 0
    use(subscription, 400)
    invoice = close(subscription)
    assert lines(invoice) == [
        BASE,
        ("usage", "Calls", D(400), D(40)),
        COMMITTED,
        ("commitment", "Usage drawn from the commitment (60.00 USD not drawn)", D(1), -D(40)),
    ]
    assert invoice.total == 110 and invoice.commitment_deferred == 0


def test_opening_twice_makes_one_invoice_and_a_closed_period_none():
    subscription = subscribe(upfront_plan())
    first = invoicing.open_period(subscription_id=subscription.pk, as_of=START)
    again = invoicing.open_period(subscription_id=subscription.pk, as_of=START)
    assert first is not None and again is not None and first.pk == again.pk
    other = subscribe(upfront_plan())
    close(other)  # closed before anything opened it: in arrears
    assert invoicing.open_period(subscription_id=other.pk, as_of=PERIOD_END).period_start == (
        PERIOD_END
    )  # the next period opened, not the closed one
    assert not Invoice.objects.filter(
        subscription=other, period_start=START, kind=InvoiceKind.COMMITMENT
    ).exists()


def test_no_commitment_invoice_for_a_period_spent_in_a_trial():
    subscription = subscribe(upfront_plan(), trial_days=30)
    assert invoicing.open_period(subscription_id=subscription.pk, as_of=START) is None


@pytest.mark.django_db(transaction=True)
def test_two_workers_opening_the_same_period_make_one_invoice():
    subscription = subscribe(upfront_plan())
    barrier = threading.Barrier(2)
    made: list[int] = []

    def worker():
        try:
            barrier.wait(timeout=10)
            invoice = invoicing.open_period(subscription_id=subscription.pk, as_of=START)
            made.append(invoice.pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 2 and len(set(made)) == 1
    assert Invoice.objects.filter(kind=InvoiceKind.COMMITMENT).count() == 1
