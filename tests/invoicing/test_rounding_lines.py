"""Issue 18 item 3: the rounding rule is applied in one place and an invoice's lines and
totals agree, under half to even and half up alike — on an invoice whose every line has a
half cent to round (a base fee, tier lines, a flat fee at zero usage, a charge's minimum,
the plan's minimum), and whose minimums' shortfalls are presented so that the period is
invoiced its minimum exactly, never a cent under or over it (as a commitment's draw-down
is presented from the lines it draws: tests/invoicing/test_commitments.py).

April 2026 (30 days), tax 25 %. Ten units of ``api.call`` (both meters on it count them):

- base fee 10.005;
- Calls, graduated: 5 × 0.025 = 0.125 (tier 1, to 5), 5 × 0.065 = 0.325 (tier 2);
- Jobs (another event, no usage), volume with a 2.005 flat fee charged at zero usage;
- Pings, 10 × 0.0005 = 0.005, minimum 0.02: 0.015 short (exact);
- the plan's minimum 20.00: exact lines 12.48, 7.52 short (exact).

Presented, each line rounded by the rule, the shortfalls are what the minimum presented
(0.02, 20.00) less what the lines it is compared with were presented at:

- half even: 10.00, 0.12, 0.32, 2.00, Pings 0.00 + shortfall 0.02, plan shortfall 20.00 −
  12.46 = 7.54; subtotal 20.00 (rounding each exact shortfall, 0.02 and 7.52, gave 19.98);
- half up: 10.01, 0.13, 0.33, 2.01, Pings 0.01 + shortfall 0.01, plan shortfall 20.00 −
  12.50 = 7.50; subtotal 20.00 (rounding each exact shortfall gave 20.03).

Tax 5.00, total 25.00 either way."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services as billing
from invoicing import reconciliation
from invoicing.models import LineKind, TaxRate
from invoicing.selectors import compute_invoice
from tests.factories import MeterFactory, unique
from tests.invoicing.conftest import (
    START,
    ChargeSpec,
    TierSpec,
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

pytestmark = pytest.mark.django_db
D = Decimal


def half_cents_plan(rule: str):
    jobs = MeterFactory(code=unique("jobs"), name="Jobs", event_name="job.done", property="n")
    return plan(
        ChargeSpec(
            meter=meter(name="Calls"),
            price_model="graduated",
            tiers=(
                TierSpec(up_to=D(5), unit_price=D("0.025")),
                TierSpec(up_to=None, unit_price=D("0.065")),
            ),
        ),
        ChargeSpec(
            meter=jobs.code,
            price_model="volume",
            flat_fee_at_zero=True,
            tiers=(TierSpec(up_to=None, unit_price=D("0.01"), flat_fee=D("2.005")),),
        ),
        ChargeSpec(meter=meter(name="Pings"), unit_price=D("0.0005"), minimum_amount=D("0.02")),
        base_fee="10.005",
        minimum_amount=D("20.00"),
        rounding=rule,
    )


@pytest.mark.parametrize(
    ("rule", "presented"),
    [
        (
            "half_even",
            # base, Calls tier 1, tier 2, Jobs at zero, Pings, Pings short, plan short
            ["10.00", "0.12", "0.32", "2.00", "0.00", "0.02", "7.54"],
        ),
        ("half_up", ["10.01", "0.13", "0.33", "2.01", "0.01", "0.01", "7.50"]),
    ],
)
def test_lines_add_up_to_the_minimum_and_the_totals_under_each_rule(rule, presented):
    TaxRate.objects.create(name="VAT", percentage=D(25))
    subscription = subscribe(half_cents_plan(rule))
    use(subscription, 10)
    invoice = close(subscription)
    amounts = [line.amount for line in invoice.lines.all()]
    assert invoice.lines.filter(kind=LineKind.MINIMUM).count() == 2
    assert sorted(amounts) == sorted(D(a) for a in presented)
    assert invoice.subtotal == sum(amounts) == D("20.00")  # the minimum, exactly
    assert (invoice.tax, invoice.total) == (D("5.00"), D("25.00"))
    assert invoice.rounding_rule == rule
    # the upcoming invoice presents the same lines and totals
    subscription.refresh_from_db()
    draft = compute_invoice(
        subscription=subscription, period_start=invoice.period_start, period_end=invoice.period_end
    )
    assert [line.amount for line in draft.lines] == [
        line.amount for line in invoice.lines.order_by("position")
    ]
    assert (draft.subtotal, draft.total) == (invoice.subtotal, invoice.total)
    # the ledger: the receivable is the total; what presenting moved is on @Rounding
    finalize(invoice)
    assert receivable(subscription) == invoice.total
    exact = invoice.fees_precise + invoice.usage_charged + invoice.tax
    assert account_posted("@Rounding") == invoice.rounding == invoice.total - exact == 0
    result = reconciliation.run_reconciliation(start=START, end=at(2026, 5, 2))
    assert result.status == "passed", [c for c in result.checks if not c["passed"]]


def test_a_shortfall_presented_off_its_exact_figure_reconciles():
    """The one-day case: a 3.33 prorated minimum presented from an exact 3.333333333333,
    the shortfall line 1.66 for an exact 1.666666666666 — what presenting moved is on
    @Rounding (−0.003333333333), and every reconciliation check passes."""
    subscription = subscribe(
        plan(
            ChargeSpec(meter=meter(name="Calls"), unit_price=D("0.10"), minimum_amount=D(20)),
            base_fee="30",
            minimum_amount=D(100),
        )
    )
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 2))
    invoice = finalize(close(subscription, at(2026, 4, 2)), at(2026, 4, 2))
    assert invoice.total == D("3.33")
    assert account_posted("@Rounding") == invoice.rounding == D("-0.003333333333")
    result = reconciliation.run_reconciliation(start=START, end=at(2026, 5, 2))
    assert result.status == "passed", [c for c in result.checks if not c["passed"]]
