"""Review of the prepaid-commitment change: defects found, each proven by a failing test.

Plan shapes as tests/invoicing/test_commitments.py: subscriptions start on 1 April 2026
(a 30-day period to 1 May)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services as billing
from billing.services.plans import PriceModel, TierSpec
from tests.billing.conftest import api, api_key, make_key
from tests.invoicing.conftest import (
    ChargeSpec,
    account_posted,
    at,
    close,
    finalize,
    meter,
    plan,
    receivable,
    subscribe,
    use,
)

__all__ = ["api", "api_key", "make_key"]

pytestmark = pytest.mark.django_db
D = Decimal


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


def test_a_full_credit_note_takes_the_breakage_back_as_a_void_does():
    """Base 10.00, commitment 100.00, no usage: 110.00 invoiced, 10.00 on @Revenue,
    100.00 on @CommitmentBreakage. Crediting the whole invoice (110.00 net) must leave the
    ledger as a void does (both 0); the credit note debits @Revenue 110.00 instead:
    @Revenue −100.00, @CommitmentBreakage still 100.00."""
    from invoicing import services as invoicing

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


def test_a_change_from_a_minimum_plan_to_a_commitment_plan_owes_both_floors():
    """Floor (a plan minimum of 100.00 a month) until 16 April, then Committed (a
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
