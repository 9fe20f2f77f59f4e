"""Prepaid commitments (issue 18, item 2) priced end to end: rated as usage arrives,
invoiced at the period's close with the commitment and its draw-down, posted at
finalization (breakage on @CommitmentBreakage), reconciled — against figures worked out by
hand in the comments (and in docs/pricing-file.md).

The plan: a base fee of 10.00, calls at 0.10, a commitment of 100.00 a month.
Subscriptions start on 1 April 2026 (a 30-day period to 1 May) unless said otherwise."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services as billing
from invoicing import reconciliation
from invoicing.models import Invoice
from tests.billing.conftest import api, api_key, make_key
from tests.invoicing.conftest import (
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

__all__ = ["api", "api_key", "make_key"]  # fixtures used here

pytestmark = pytest.mark.django_db
D = Decimal

BASE = ("base_fee", "Pro — base fee", D(1), D(10))
COMMITTED = ("commitment", "Pro — prepaid commitment, 100 USD per period", D(1), D(100))


def drawn(amount: str, left: str) -> tuple:
    return ("commitment", f"Usage drawn from the commitment ({left} USD not drawn)", D(1),
            -D(amount))  # fmt: skip


def commitment_plan(commitment="100", **kw):
    kw.setdefault("base_fee", "10")
    return plan(
        ChargeSpec(meter=kw.pop("code", None) or meter(name="Calls"), unit_price=D("0.10")),
        commitment_amount=D(commitment),
        **kw,
    )


@pytest.mark.parametrize(
    ("calls", "usage_line", "draw", "total", "breakage"),
    [
        # fully used: 1,000 calls = 100.00 draw all of it; 10 + 100 + 100 − 100 = 110.00
        (1000, [("usage", "Calls", D(1000), D(100))], drawn("100", "0.00"), 110, 0),
        # partly used: 400 calls = 40.00; 60.00 left expire; 10 + 40 + 100 − 40 = 110.00
        (400, [("usage", "Calls", D(400), D(40))], drawn("40", "60.00"), 110, 60),
        # exceeded: 1,500 calls = 150.00; 50.00 overage; 10 + 150 + 100 − 100 = 160.00
        (1500, [("usage", "Calls", D(1500), D(150))], drawn("100", "0.00"), 160, 0),
        # nothing used: all 100.00 expire; 10 + 100 − 0 = 110.00
        (0, [], drawn("0", "100.00"), 110, 100),
    ],
)  # fmt: skip
def test_the_commitment_is_invoiced_drawn_down_and_its_rest_expires(
    calls, usage_line, draw, total, breakage
):
    subscription = subscribe(commitment_plan())
    if calls:
        use(subscription, calls)
    invoice = close(subscription)
    assert lines(invoice) == [BASE, *usage_line, COMMITTED, draw]
    assert invoice.total == total
    assert invoice.commitment_breakage == breakage
    upcoming_agrees(subscription, invoice)
    invoice = finalize(invoice)
    usage = D(calls) / 10
    # revenue: the usage rated + the base fee + the commitment drawn (never counted twice)
    assert account_posted("@Revenue") == usage + 10 + (100 - breakage) - min(usage, 100)
    assert account_posted("@CommitmentBreakage") == breakage
    assert account_posted("@Revenue") + account_posted("@CommitmentBreakage") == total
    assert receivable(subscription) == total


def test_a_one_day_period_prorates_the_commitment():
    """Canceled after one day of April's 30: the base fee 10/30 = 0.333333333333, the
    commitment 100/30 = 3.333333333333; 20 calls = 2.00 drawn from it, 1.333333333333
    expire. Lines 0.33 + 2.00 + 3.33 − 2.00 = 3.66; exact 3.666666666666."""
    subscription = subscribe(commitment_plan())
    use(subscription, 20)
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 2))
    invoice = close(subscription, at(2026, 4, 2))
    span = ", prorated 2026-04-01 to 2026-04-02"
    assert lines(invoice) == [
        ("base_fee", f"Pro — base fee{span}", D(1), D("0.33")),
        ("usage", "Calls", D(20), D(2)),
        ("commitment", f"Pro — prepaid commitment, 100 USD per period{span}", D(1), D("3.33")),
        drawn("2", "1.33"),
    ]
    assert invoice.total == D("3.66")
    assert invoice.commitment_breakage == D("1.333333333333")
    assert invoice.fees_precise == D("1.666666666666")  # 0.333… + 3.333… − 2
    assert invoice.rounding == D("-0.006666666666")


def test_a_leap_year_february_prorates_the_commitment_by_its_29_days():
    """1 to 15 February 2028: 14 of February's 29 days of a 29.00 commitment = 14.00;
    50 calls = 5.00 drawn, 9.00 expire; 5 + 14 − 5 = 14.00."""
    subscription = subscribe(commitment_plan("29", base_fee="0"), start=at(2028, 2, 1))
    use(subscription, 50, at_time=at(2028, 2, 3))
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2028, 2, 15))
    invoice = finalize(close(subscription, at(2028, 2, 15)), now=at(2028, 2, 15))
    assert lines(invoice) == [
        ("usage", "Calls", D(50), D(5)),
        ("commitment", "Pro — prepaid commitment, 29 USD per period, prorated 2028-02-01 to "
         "2028-02-15", D(1), D(14)),
        drawn("5", "9.00"),
    ]  # fmt: skip
    assert invoice.total == D(14)
    assert account_posted("@CommitmentBreakage") == D(9)


def test_no_commitment_during_a_trial():
    subscription = subscribe(commitment_plan(), trial_days=30)
    use(subscription, 100)
    invoice = close(subscription)
    assert [kind for kind, *_ in lines(invoice)] == ["usage"]  # rated during the trial


def test_a_plan_change_mid_period_owes_each_plans_commitment_for_its_days():
    """100.00 a month until 16 April (15 of 30 days: 50.00), 200.00 a month after (100.00):
    150.00 committed; 600 calls at 0.10 (60.00) draw 60.00, 90.00 expire."""
    code = meter(name="Calls")
    small = commitment_plan("100", base_fee="0", code=code, name="Small")
    large = commitment_plan("200", base_fee="0", code=code, name="Large")
    subscription = subscribe(small)
    use(subscription, 300, at_time=at(2026, 4, 10))
    billing.change_subscription(subscription_id=subscription.pk, plan=large, now=at(2026, 4, 16))
    use(subscription, 300, at_time=at(2026, 4, 20))
    invoice = close(subscription)
    commitments = [ln for ln in lines(invoice) if ln[0] == "commitment"]
    assert commitments == [
        ("commitment", "Small — prepaid commitment, 100 USD per period, prorated 2026-04-01 to "
         "2026-04-16", D(1), D(50)),
        ("commitment", "Large — prepaid commitment, 200 USD per period, prorated 2026-04-16 to "
         "2026-05-01", D(1), D(100)),
        drawn("60", "90.00"),
    ]  # fmt: skip
    assert invoice.total == D(150)
    assert invoice.commitment_breakage == D(90)


def test_a_charge_minimum_shortfall_draws_on_the_commitment():
    """Calls with a minimum of 20.00: 50 calls (5.00) fall 15.00 short; the 20.00 the
    charge comes to is drawn from the 100.00 commitment, 80.00 expire: 10 + 5 + 15 + 100 −
    20 = 110.00."""
    subscription = subscribe(
        plan(
            ChargeSpec(meter=meter(name="Calls"), unit_price=D("0.10"), minimum_amount=D(20)),
            base_fee="10",
            commitment_amount=D(100),
        )
    )
    use(subscription, 50)
    invoice = close(subscription)
    assert lines(invoice)[-1] == drawn("20", "80.00")
    assert invoice.total == 110 and invoice.commitment_breakage == 80


def test_the_reconciliation_checks_pass_with_commitments():
    """Commitment invoices (partly used, exceeded) finalized: every check of
    invoicing.reconciliation passes, and the ledger check compared their breakage."""
    for calls in (400, 1500, 0):
        subscription = subscribe(commitment_plan())
        if calls:
            use(subscription, calls)
        finalize(close(subscription))
    assert Invoice.objects.filter(commitment_breakage__gt=0).count() == 2
    result = reconciliation.run_reconciliation(start=START, end=at(2026, 5, 2))
    assert result.status == "passed", result.checks
    ledger_check = next(c for c in result.checks if c["name"] == "invoice_ledger")
    assert ledger_check["totals"]["USD"]["compared"] == 3


def test_a_void_takes_the_breakage_back():
    from invoicing import services as invoicing

    subscription = subscribe(commitment_plan())
    use(subscription, 400)
    invoice = finalize(close(subscription))
    invoicing.void_invoice(invoice_id=invoice.pk, reason="test", now=at(2026, 5, 2))
    assert account_posted("@CommitmentBreakage") == 0
    assert account_posted("@Revenue") == 0
    assert receivable(subscription) == 0


def test_the_upcoming_invoice_and_the_portal_show_the_commitment_left():
    """By 16 April (half of April), 300 calls = 30.00 drawn of 100.00: 70.00 left. The
    projection doubles the usage (60.00), which the 70.00 left still covers: the projected
    total stays the upcoming 110.00 (without the draw-down it would be 140.00)."""
    from unittest import mock

    from billing.portal.selectors import period_overview

    subscription = subscribe(commitment_plan())
    use(subscription, 300)
    subscription.refresh_from_db()
    with mock.patch("billing.portal.selectors.timezone.now", return_value=at(2026, 4, 16)):
        overview = period_overview(subscription)
    assert overview["upcoming"] == D(110)
    assert overview["commitment_left"] == D(70)
    assert overview["projected"] == D(110)
    use(subscription, 600, at_time=at(2026, 4, 15))  # 90.00 drawn, 10.00 left
    subscription.refresh_from_db()
    with mock.patch("billing.portal.selectors.timezone.now", return_value=at(2026, 4, 16)):
        overview = period_overview(subscription)
    # 90.00 more to come: 10.00 fills the commitment, 80.00 is overage
    assert (overview["commitment_left"], overview["projected"]) == (D(10), D(190))


def test_the_upcoming_invoice_api_shows_the_commitment_unused(api):
    subscription = subscribe(commitment_plan())
    use(subscription, 300)
    external_id = subscription.customer.external_id
    body = api.get(f"/api/v1/customers/{external_id}/upcoming-invoice").json()
    assert body["commitment_unused"] == "70.000000000000"
    assert body["total"] == "110.000000000000"
    assert [line["kind"] for line in body["lines"]][-2:] == ["commitment", "commitment"]


@pytest.mark.django_db(transaction=True)
def test_late_usage_racing_the_finalization_is_drawn_once_or_refused():
    """The draw-down is computed when the draft is finalized, under the customer's rating
    lock: late events of the period (10.00 each) rated in other threads at the same time
    are either on the invoice, drawn from the commitment once, or refused (period closed)
    — never drawn twice, never charged without being invoiced. 400 calls (40.00) first."""
    from tests.threads import run_concurrently

    subscription = subscribe(commitment_plan())
    use(subscription, 400)
    draft = close(subscription)
    late = at(2026, 5, 1, 1)

    def worker(i: int):
        if i == 0:
            return finalize(draft, now=late)
        return use(subscription, 100, at_time=at(2026, 4, 20), now=late)

    results = run_concurrently(worker, 6)
    assert not [r for r in results if isinstance(r, BaseException)], results
    accepted = sum(1 for r in results[1:] if r.status == "accepted")
    invoice = Invoice.objects.get(pk=draft.pk)
    usage = 40 + 10 * accepted  # at most 90.00: within the 100.00 committed
    assert invoice.usage_charged == usage
    assert lines(invoice)[-1] == drawn(str(usage), f"{100 - usage}.00")
    assert invoice.commitment_breakage == 100 - usage
    assert invoice.total == 110
    assert account_posted("@Revenue") + account_posted("@CommitmentBreakage") == 110
    assert receivable(subscription) == 110


def test_the_reconciliation_leaves_out_usage_lines_invoiced_as_fees():
    """A prorated charge's adjustment and a first tier's flat fee at zero usage are usage
    lines no event rated: invoice_usage compares the rated ones only (it failed on both)."""
    from billing.services import TierSpec

    prorated = plan(ChargeSpec(meter=meter(), unit_price=D(1), prorated=True))
    subscription = subscribe(prorated)
    use(subscription, 30)
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 16))
    finalize(close(subscription, at(2026, 4, 16)), now=at(2026, 4, 16))
    at_zero = plan(
        ChargeSpec(
            meter=meter(),
            price_model="graduated",
            flat_fee_at_zero=True,
            tiers=(
                TierSpec(up_to=D(10), unit_price=D(1), flat_fee=D(10)),
                TierSpec(up_to=None, unit_price=D(1)),
            ),
        )
    )
    finalize(close(subscribe(at_zero)))
    result = reconciliation.run_reconciliation(start=START, end=at(2026, 5, 2))
    assert result.status == "passed", [c for c in result.checks if not c["passed"]]
