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
from billing.services.plans import PriceModel, TierSpec
from invoicing import reconciliation
from invoicing import services as invoicing
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


def test_a_plan_change_on_the_periods_last_day_owes_one_day_of_the_new_commitment():
    """Changed on 30 April 00:00, April's last day: 100.00 × 29/30 = 96.666666666667 and
    200.00 × 1/30 = 6.666666666667, 103.333333333334 committed, presented as running totals
    96.67 and 103.33 − 96.67 = 6.66; 600 calls (60.00) draw 60.00; 43.333333333334 expire;
    the period is invoiced 103.33."""
    code = meter(name="Calls")
    small = commitment_plan("100", base_fee="0", code=code, name="Small")
    large = commitment_plan("200", base_fee="0", code=code, name="Large")
    subscription = subscribe(small)
    use(subscription, 600, at_time=at(2026, 4, 10))
    billing.change_subscription(subscription_id=subscription.pk, plan=large, now=at(2026, 4, 30))
    invoice = close(subscription)
    commitments = [ln for ln in lines(invoice) if ln[0] == "commitment"]
    assert commitments == [
        ("commitment", "Small — prepaid commitment, 100 USD per period, prorated 2026-04-01 to "
         "2026-04-30", D(1), D("96.67")),
        ("commitment", "Large — prepaid commitment, 200 USD per period, prorated 2026-04-30 to "
         "2026-05-01", D(1), D("6.66")),
        drawn("60", "43.33"),
    ]  # fmt: skip
    assert invoice.total == D("103.33")
    assert invoice.commitment_breakage == D("43.333333333334")
    upcoming_agrees(subscription, invoice)


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


def test_usage_within_the_commitment_is_invoiced_at_the_commitment_exactly():
    """Commitment 100.00, no base fee; graduated calls: the first call at 0.005, the
    others at 0.005. 2 calls: two tier lines of 0.005 each, presented 0.00 and 0.00
    (half even). Usage 0.01 < 100.00 committed, so the documented total is
    ``base fees + max(commitment, usage) + tax`` = 100.00. The draw-down line is rounded
    from the exact sum (0.01 → −0.01) instead of from the lines it draws (0.00 + 0.00):
    the invoice comes to 0.00 + 0.00 + 100.00 − 0.01 = 99.99."""
    subscription = subscribe(
        plan(
            ChargeSpec(
                meter=meter(name="Calls"),
                price_model=PriceModel.GRADUATED,
                tiers=(
                    TierSpec(up_to=D(1), unit_price=D("0.005")),
                    TierSpec(up_to=None, unit_price=D("0.005")),
                ),
            ),
            commitment_amount=D(100),
        )
    )
    use(subscription, 2)
    invoice = close(subscription)
    usage_lines = [ln.amount for ln in invoice.lines.filter(kind="usage")]
    assert usage_lines == [D("0.00"), D("0.00")]
    assert invoice.total == D(100), [
        (ln.description, ln.amount) for ln in invoice.lines.order_by("position")
    ]


def test_usage_within_the_commitment_never_invoices_more_than_the_commitment():
    """The other direction: tier lines of 0.015 each round up to 0.02 (half even), the
    draw of the exact 0.03 to −0.03: 0.02 + 0.02 + 100.00 − 0.03 = 100.01 for usage of
    0.03 within a 100.00 commitment."""
    subscription = subscribe(
        plan(
            ChargeSpec(
                meter=meter(name="Calls"),
                price_model=PriceModel.GRADUATED,
                tiers=(
                    TierSpec(up_to=D(1), unit_price=D("0.015")),
                    TierSpec(up_to=None, unit_price=D("0.015")),
                ),
            ),
            commitment_amount=D(100),
        )
    )
    use(subscription, 2)
    invoice = close(subscription)
    assert invoice.total == D(100)


@pytest.mark.parametrize(
    ("rule", "tier_line", "not_drawn"),
    [
        # 0.00 + 0.00 drawn of 100.00: 100.00 not drawn (the exact 99.99 read before)
        ("half_even", D("0.00"), "100.00"),
        # 0.01 + 0.01 drawn: 99.98 not drawn
        ("half_up", D("0.01"), "99.98"),
    ],
)
def test_what_the_draw_line_says_is_left_is_what_its_lines_present(rule, tier_line, not_drawn):
    """Two tier lines of 0.005 within a 100.00 commitment: the draw line's description says
    what is left as the invoice presents it — the commitment presented less the draw
    presented, by the invoice's rule — not the exact breakage (99.99, kept on
    @CommitmentBreakage) rounded half even whatever the rule."""
    subscription = subscribe(
        plan(
            ChargeSpec(
                meter=meter(name="Calls"),
                price_model=PriceModel.GRADUATED,
                tiers=(
                    TierSpec(up_to=D(1), unit_price=D("0.005")),
                    TierSpec(up_to=None, unit_price=D("0.005")),
                ),
            ),
            commitment_amount=D(100),
            rounding=rule,
        )
    )
    use(subscription, 2)
    invoice = close(subscription)
    assert [ln.amount for ln in invoice.lines.filter(kind="usage")] == [tier_line] * 2
    assert lines(invoice)[-1] == drawn(str(2 * tier_line), not_drawn)
    assert invoice.commitment_breakage == D("99.99")
    assert invoice.total == D(100)


def test_a_full_credit_note_takes_the_breakage_back_as_a_void_does():
    """Base 10.00, commitment 100.00, no usage: 110.00 invoiced, 10.00 on @Revenue,
    100.00 on @CommitmentBreakage. Crediting the whole invoice (110.00 net) must leave the
    ledger as a void does (both 0); the credit note debits @Revenue 110.00 instead:
    @Revenue −100.00, @CommitmentBreakage still 100.00."""
    subscription = subscribe(
        plan(
            ChargeSpec(meter=meter(name="Calls"), unit_price=D("0.10")),
            base_fee="10",
            commitment_amount=D(100),
        )
    )
    invoice = finalize(close(subscription))
    assert (account_posted("@Revenue"), account_posted("@CommitmentBreakage")) == (10, 100)
    invoicing.create_credit_note(
        invoice_id=invoice.pk,
        amount=D(110),
        reason="goodwill",
        reference="cn-review-1",
        now=at(2026, 5, 2),
    )
    assert receivable(subscription) == 0
    assert (account_posted("@Revenue"), account_posted("@CommitmentBreakage")) == (0, 0)


def test_a_partial_credit_note_takes_back_the_breakage_first():
    """As above, credits of 60.00 then 50.00 (net): the first takes 60.00 of the 100.00
    breakage back (@Revenue untouched, 10.00), the second the 40.00 left of it and 10.00 of
    revenue: 0 and 0, each note recording its breakage (60.00, 40.00)."""
    subscription = subscribe(
        plan(
            ChargeSpec(meter=meter(name="Calls"), unit_price=D("0.10")),
            base_fee="10",
            commitment_amount=D(100),
        )
    )
    invoice = finalize(close(subscription))
    first = invoicing.create_credit_note(
        invoice_id=invoice.pk, amount=D(60), reason="r", reference="cn-p1", now=at(2026, 5, 2)
    )
    assert first.commitment_breakage == D(60)
    assert (account_posted("@Revenue"), account_posted("@CommitmentBreakage")) == (10, 40)
    second = invoicing.create_credit_note(
        invoice_id=invoice.pk, amount=D(50), reason="r", reference="cn-p2", now=at(2026, 5, 2)
    )
    assert second.commitment_breakage == D(40)
    assert (account_posted("@Revenue"), account_posted("@CommitmentBreakage")) == (0, 0)
    result = reconciliation.run_reconciliation(start=START, end=at(2026, 5, 3))
    assert result.status == "passed", [c for c in result.checks if not c["passed"]]


def test_a_change_from_a_minimum_plan_to_a_commitment_plan_owes_both_floors():
    """(The rule: a commitment draws first; what counts towards a plan minimum is net of
    what it drew: 30.00 − 30.00 = 0, shortfall 50.00: 30 + 50 + 50 − 30 = 100.00.)
    Floor (a plan minimum of 100.00 a month) until 16 April, then Committed (a
    commitment of 100.00 a month): 15 of 30 days each, so 50.00 minimum owed for the first
    half and 50.00 committed for the second. 300 calls at 0.10 = 30.00 of usage.
    Whichever half the usage fell in, the period owes 100.00: usage in the first half
    fills the minimum to 50.00 and the commitment expires (50.00); usage in the second
    half draws the commitment (50.00) and the minimum falls 50.00 short. The invoice counts
    the same 30.00 twice — towards the minimum (shortfall 20.00) and drawn from the
    commitment (−30.00): 30 + 20 + 50 − 30 = 70.00."""
    code = meter(name="Calls")
    floor = plan(ChargeSpec(meter=code, unit_price=D("0.10")), name="Floor", minimum_amount=D(100))
    committed = plan(
        ChargeSpec(meter=code, unit_price=D("0.10")), name="Committed", commitment_amount=D(100)
    )
    subscription = subscribe(floor)
    use(subscription, 300, at_time=at(2026, 4, 10))
    billing.change_subscription(
        subscription_id=subscription.pk, plan=committed, now=at(2026, 4, 16)
    )
    invoice = close(subscription)
    assert invoice.total == D(100), [
        (ln.description, ln.amount) for ln in invoice.lines.order_by("position")
    ]
    # the minimum's shortfall (50.00 owed, 30.00 used but all of it drawn: 50.00) is the
    # Floor plan's, labelled by it, not by the plan in force at the end
    shortfall = invoice.lines.get(kind="minimum")
    assert (shortfall.description.split(" — ")[0], shortfall.plan_id, shortfall.amount) == (
        "Floor",
        floor.pk,
        D(50),
    )


def test_a_charge_minimum_of_the_old_plan_is_not_paid_from_the_new_plans_commitment():
    """Old plan: calls with a charge minimum of 100.00 a month, no commitment; new plan
    from 16 April: a commitment of 100.00 a month. No usage at all. The first half owes
    its charge minimum, 50.00; the second half its commitment, 50.00: 100.00. The old
    plan's shortfall (a MINIMUM line with the meter) is drawn from the new plan's
    commitment: 50 + 50 − 50 = 50.00 for a period with two floors of 50.00 each."""
    code = meter(name="Calls")
    old = plan(ChargeSpec(meter=code, unit_price=D("0.10"), minimum_amount=D(100)), name="Old")
    new = plan(ChargeSpec(meter=code, unit_price=D("0.10")), name="New", commitment_amount=D(100))
    subscription = subscribe(old)
    billing.change_subscription(subscription_id=subscription.pk, plan=new, now=at(2026, 4, 16))
    invoice = close(subscription)
    assert invoice.total == D(100), [
        (ln.description, ln.amount) for ln in invoice.lines.order_by("position")
    ]


def test_an_invoice_whose_usage_is_finer_than_the_ledger_finalizes():
    """Usage rated finer than the ledger's 12 places (the counter keeps 24: here 0.5 units
    at 0.000000000003 = 0.0000000000015; catalog prices with a margin do the same). Without
    a commitment such an invoice finalizes (the rounding leg absorbs it); with one, the
    draw-down takes the 24-place usage, so the breakage (100 − 0.0000000000015) and the
    fees are finer than 1e-12 and the ledger refuses the finalize posting: the invoice can
    never be finalized (InvalidTransaction: "finer than 1e-12")."""
    subscription = subscribe(
        plan(
            ChargeSpec(meter=meter(name="Calls"), unit_price=D("0.000000000003")),
            base_fee="10",
            commitment_amount=D(100),
        )
    )
    use(subscription, D("0.5"))
    invoice = finalize(close(subscription))
    assert invoice.total == D(110)
    assert account_posted("@Revenue") + account_posted("@CommitmentBreakage") + account_posted(
        "@Rounding"
    ) == D(110)


def test_commitment_slices_add_up_to_the_commitment():
    """Three plans of 100.00 committed each, 10 days of the 30 each (changes on 11 and 21
    April): each slice is 100 × 10/30 = 33.333333333333 (the ledger's 12 places). Rounded
    one by one they came to 33.33 × 3 = 99.99; as running totals 33.33, 66.67 − 33.33 =
    33.34, 100.00 − 66.67 = 33.33: 100.00. No usage: breakage 99.999999999999, the
    1e-12 left to @Rounding; the invoice finalizes."""
    code = meter(name="Calls")
    first, second, third = (
        plan(ChargeSpec(meter=code, unit_price=D("0.10")), name=n, commitment_amount=D(100))
        for n in ("A", "B", "C")
    )
    subscription = subscribe(first)
    billing.change_subscription(subscription_id=subscription.pk, plan=second, now=at(2026, 4, 11))
    billing.change_subscription(subscription_id=subscription.pk, plan=third, now=at(2026, 4, 21))
    invoice = close(subscription)
    commitments = [ln.amount for ln in invoice.lines.filter(kind="commitment").order_by("position")]
    assert commitments == [D("33.33"), D("33.34"), D("33.33"), D(0)]
    assert invoice.total == D(100)
    finalize(invoice)
    assert account_posted("@CommitmentBreakage") == D("99.999999999999")
    assert account_posted("@Rounding") == D("0.000000000001")


def test_a_prorated_charge_finer_than_the_ledger_finalizes():
    """A prorated charge rated finer than 12 places: 0.5 units at 0.000000000003 =
    0.0000000000015, the subscription cancelled on 16 April (15 of 30 days). The share,
    prorated to 12 places: 0.00000000000075 → 0.000000000001; the adjustment 0.000000000001
    − 0.0000000000015 = −0.0000000000005 was a 13-place fee the ledger refused; at the
    ledger's places it is −0.000000000000 (half even) and the invoice (0.00) finalizes."""
    subscription = subscribe(
        plan(ChargeSpec(meter=meter(), unit_price=D("0.000000000003"), prorated=True))
    )
    use(subscription, D("0.5"))
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 16))
    invoice = finalize(close(subscription, at(2026, 4, 16)), now=at(2026, 4, 16))
    assert (invoice.total, invoice.fees_precise) == (0, 0)
    assert invoice.ledger_transaction_id is not None


def test_a_charge_minimum_finer_than_the_ledger_finalizes():
    """A charge minimum of 1.00 against 0.5 units at 0.000000000003 = 0.0000000000015 of
    usage: the shortfall 1 − 0.0000000000015 = 0.9999999999985 was a 13-place fee the
    ledger refused; at its 12 places 0.999999999998 (half even). Total 0.00 + 1.00 = 1.00;
    @Revenue 0.999999999998 + usage 0.000000000002 (rated at 12 places) = 1.00."""
    subscription = subscribe(
        plan(ChargeSpec(meter=meter(), unit_price=D("0.000000000003"), minimum_amount=D(1)))
    )
    use(subscription, D("0.5"))
    invoice = finalize(close(subscription))
    assert invoice.total == D(1)
    assert invoice.lines.get(kind="minimum").amount_precise == D("0.999999999998")


def test_the_reconciliation_checks_a_credit_notes_breakage_leg():
    """A credit note of 110.00 of the invoice above (breakage 100.00): its legs are
    @CommitmentBreakage +100.00 and @Revenue +10.00. A note recording 0 breakage beside the
    same posting is a difference of the invoice_ledger check (expected 0 and 110.00,
    actual 100.00 and 10.00)."""
    from invoicing.models import CreditNote

    subscription = subscribe(
        plan(
            ChargeSpec(meter=meter(name="Calls"), unit_price=D("0.10")),
            base_fee="10",
            commitment_amount=D(100),
        )
    )
    invoice = finalize(close(subscription))
    note = invoicing.create_credit_note(
        invoice_id=invoice.pk, amount=D(110), reason="r", reference="cn-r1", now=at(2026, 5, 2)
    )
    passed = reconciliation.run_reconciliation(start=START, end=at(2026, 5, 3))
    assert passed.status == "passed", [c for c in passed.checks if not c["passed"]]
    CreditNote.objects.filter(pk=note.pk).update(commitment_breakage=D(0))
    failed = reconciliation.run_reconciliation(start=START, end=at(2026, 5, 3))
    (check,) = [c for c in failed.checks if c["name"] == "invoice_ledger"]
    causes = sorted(d["cause"] for d in check["differences"])
    assert causes == [
        "credit note @CommitmentBreakage leg ≠ breakage",
        "credit note @Revenue leg ≠ amount − breakage",
    ]
