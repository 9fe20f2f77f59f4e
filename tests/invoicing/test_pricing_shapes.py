"""The plan shapes of issue 18 priced end to end — rated as usage arrives, invoiced at the
period's close, shown alike by the upcoming invoice — against figures worked out by hand
in the comments (and in docs/pricing-file.md). Boundaries: a tier's exact upper bound,
zero usage, a one-day period, a leap-year February.

Subscriptions start on 1 April 2026 (a 30-day period to 1 May) unless said otherwise."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services as billing
from invoicing import services as invoicing
from invoicing.models import InvoiceLine, TaxRate
from invoicing.money import to_minor_unit
from invoicing.selectors import compute_invoice
from tests.invoicing.conftest import (
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
)

pytestmark = pytest.mark.django_db
D = Decimal


def upcoming_agrees(subscription, invoice) -> None:
    """What the upcoming invoice computes for the period is what its close invoiced."""
    subscription.refresh_from_db()  # as the upcoming-invoice API reads it
    draft = compute_invoice(
        subscription=subscription, period_start=invoice.period_start, period_end=invoice.period_end
    )
    assert [(line.description, line.amount) for line in draft.lines] == [
        (line.description, line.amount) for line in invoice.lines.order_by("position")
    ]
    assert draft.total == invoice.total


# --- a. per-tier package sizes ----------------------------------------------------------------


def graduated_in_blocks(**kw):
    """First 1,000 free; 1,001–3,000 at 5.00 per started block of 500; then 0.01 a unit."""
    return plan(
        ChargeSpec(
            meter=meter(name="Calls"),
            price_model="graduated",
            tiers=(
                TierSpec(up_to=D(1000), unit_price=D(0)),
                TierSpec(up_to=D(3000), unit_price=D(5), package_size=D(500)),
                TierSpec(up_to=None, unit_price=D("0.01")),
            ),
        ),
        **kw,
    )


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        # the first tier's exact upper bound: the second tier is not reached
        (1000, [("usage", "Calls, tier 1", D(1000), D(0))]),
        # one unit into tier 2 starts a whole block
        (1001, [("usage", "Calls, tier 1", D(1000), D(0)),
                ("usage", "Calls, tier 2, packages of 500", D(1), D(5))]),
        # tier 2's exact upper bound: 2,000 units = 4 blocks = 20.00
        (3000, [("usage", "Calls, tier 1", D(1000), D(0)),
                ("usage", "Calls, tier 2, packages of 500", D(4), D(20))]),
        # past tier 2: its 4 blocks, then 250 units at 0.01
        (3250, [("usage", "Calls, tier 1", D(1000), D(0)),
                ("usage", "Calls, tier 2, packages of 500", D(4), D(20)),
                ("usage", "Calls, tier 3", D(250), D("2.5"))]),
    ],
)  # fmt: skip
def test_graduated_tier_with_its_own_package_size(units, expected):
    subscription = subscribe(graduated_in_blocks())
    use(subscription, units)
    invoice = close(subscription)
    assert lines(invoice) == expected
    assert invoice.usage_charged == sum(e[3] for e in expected)  # rated = invoiced
    upcoming_agrees(subscription, invoice)


def test_a_started_block_is_charged_when_usage_crosses_it_across_events():
    subscription = subscribe(graduated_in_blocks())
    use(subscription, 1100)  # 100 into tier 2: 1 block, 5.00
    use(subscription, 1100)  # 1,200 into tier 2: 3 blocks, 15.00
    invoice = close(subscription)
    assert lines(invoice)[1] == ("usage", "Calls, tier 2, packages of 500", D(3), D(15))
    assert invoice.usage_charged == D(15)
    assert invoice.total == D(15)


def test_zero_usage_has_no_usage_line():
    subscription = subscribe(graduated_in_blocks())
    invoice = close(subscription)
    assert lines(invoice) == [] and invoice.total == 0


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        (1000, ("usage", "Calls, tier 1, packages of 100", D(10), D(20))),  # 10 × 2.00
        (1001, ("usage", "Calls, tier 2, packages of 100", D(11), D("16.5"))),  # 11 × 1.50
    ],
)
def test_volume_tier_with_its_own_package_size(units, expected):
    """All units in blocks of 100: 2.00 a block up to 1,000 units, then 1.50 a block."""
    subscription = subscribe(
        plan(
            ChargeSpec(
                meter=meter(name="Calls"),
                price_model="volume",
                tiers=(
                    TierSpec(up_to=D(1000), unit_price=D(2), package_size=D(100)),
                    TierSpec(up_to=None, unit_price=D("1.5"), package_size=D(100)),
                ),
            )
        )
    )
    use(subscription, units)
    invoice = close(subscription)
    assert lines(invoice) == [expected]
    assert invoice.usage_charged == expected[3]
    line = InvoiceLine.objects.get(invoice=invoice)
    assert line.unit_price == (D(2) if units == 1000 else D("1.5"))  # per block
    upcoming_agrees(subscription, invoice)


# --- b. the first tier's flat fee at zero usage -------------------------------------------------


def flat_fee_plan(at_zero: bool, included: int = 0):
    """Tier 1: up to 1,000 at 0.002 + a flat 10.00; then 0.001 a unit."""
    return plan(
        ChargeSpec(
            meter=meter(name="Calls"),
            price_model="graduated",
            included_quantity=D(included),
            flat_fee_at_zero=at_zero,
            tiers=(
                TierSpec(up_to=D(1000), unit_price=D("0.002"), flat_fee=D(10)),
                TierSpec(up_to=None, unit_price=D("0.001")),
            ),
        )
    )


def test_flat_fee_at_zero_usage_is_invoiced_as_a_fee_and_posted_as_revenue():
    subscription = subscribe(flat_fee_plan(at_zero=True))
    invoice = close(subscription)  # no event at all this period
    assert lines(invoice) == [
        ("usage", "Calls, tier 1: flat fee (charged at zero usage)", D(0), D(10))
    ]
    assert (invoice.usage_charged, invoice.fees_precise, invoice.total) == (0, D(10), D(10))
    upcoming_agrees(subscription, invoice)
    invoice = finalize(invoice)
    assert account_posted("@Revenue") == D(10)
    assert receivable(subscription) == D(10)


def test_without_the_option_zero_usage_costs_nothing():
    subscription = subscribe(flat_fee_plan(at_zero=False))
    invoice = close(subscription)
    assert lines(invoice) == [] and invoice.total == 0


def test_usage_within_the_included_quantity_is_zero_billable_usage():
    subscription = subscribe(flat_fee_plan(at_zero=True, included=500))
    use(subscription, 500)  # all included: no billable unit
    invoice = close(subscription)
    assert lines(invoice) == [
        ("included", "Calls: included (500 per period)", D(500), D(0)),
        ("usage", "Calls, tier 1: flat fee (charged at zero usage)", D(0), D(10)),
    ]
    assert invoice.total == D(10) and invoice.usage_charged == 0


@pytest.mark.parametrize("at_zero", [True, False])
def test_from_the_first_unit_the_fee_is_rated_once_either_way(at_zero):
    subscription = subscribe(flat_fee_plan(at_zero=at_zero))
    use(subscription, 1)  # 1 × 0.002 + 10 = 10.002 → 10.00 (half-even)
    invoice = close(subscription)
    assert lines(invoice) == [("usage", "Calls, tier 1", D(1), D(10))]
    assert invoice.usage_charged == D("10.002") and invoice.fees_precise == 0
    assert invoice.total == D(10)


# --- c. the rounding rule, chosen per plan ---------------------------------------------------


def rounding_plan(rule: str | None):
    """A base fee of 10.005 and 0.0025 a call; tax 25 %."""
    kw = {} if rule is None else {"rounding": rule}
    return plan(
        ChargeSpec(meter=meter(name="Calls"), unit_price=D("0.0025")), base_fee="10.005", **kw
    )


@pytest.mark.parametrize(
    ("rule", "fee", "usage", "tax", "rounding"),
    [
        # 10.005 → 10.00; 50 × 0.0025 = 0.125 → 0.12; 10.12 × 25 % = 2.53; total 12.65;
        # rounding 12.65 − 10.005 − 0.125 − 2.53 = −0.01
        (None, D("10.00"), D("0.12"), D("2.53"), D("-0.01")),
        ("half_even", D("10.00"), D("0.12"), D("2.53"), D("-0.01")),
        # 10.005 → 10.01; 0.125 → 0.13; 10.14 × 25 % = 2.535 → 2.54; total 12.68;
        # rounding 12.68 − 10.005 − 0.125 − 2.54 = +0.01
        ("half_up", D("10.01"), D("0.13"), D("2.54"), D("0.01")),
    ],
)
def test_lines_tax_and_total_are_rounded_by_the_plans_rule(rule, fee, usage, tax, rounding):
    TaxRate.objects.create(name="VAT", percentage=D(25))
    subscription = subscribe(rounding_plan(rule))
    use(subscription, 50)
    invoice = close(subscription)
    assert [line.amount for line in invoice.lines.order_by("position")] == [fee, usage]
    assert invoice.subtotal == fee + usage  # the lines add up to the subtotal
    assert (invoice.tax, invoice.total) == (tax, fee + usage + tax)
    assert invoice.rounding == rounding
    assert invoice.rounding_rule == (rule or "half_even")
    upcoming_agrees(subscription, invoice)
    finalize(invoice)
    assert account_posted("@Rounding") == rounding  # posted as today
    assert receivable(subscription) == invoice.total


@pytest.mark.parametrize(("rule", "tax"), [("half_even", D("0.02")), ("half_up", D("0.03"))])
def test_a_credit_note_rounds_its_tax_by_the_invoices_rule(rule, tax):
    TaxRate.objects.create(name="VAT", percentage=D(25))
    subscription = subscribe(plan(base_fee="100", rounding=rule))
    invoice = finalize(close(subscription))
    note = invoicing.create_credit_note(
        invoice_id=invoice.pk, amount=D("0.10"), reason="Goodwill", reference=f"cn-{rule}"
    )
    assert note.tax == tax  # 0.10 × 25 % = 0.025


def test_the_rounding_rules_one_function():
    assert to_minor_unit(D("0.125"), "USD") == D("0.12")
    assert to_minor_unit(D("0.125"), "USD", "half_up") == D("0.13")
    assert to_minor_unit(D("-0.125"), "USD", "half_up") == D("-0.13")  # away from zero
    assert to_minor_unit(D("12.5"), "JPY", "half_up") == D("13")
    assert to_minor_unit(D("1.2345"), "KWD", "half_up") == D("1.235")


# --- d. minimums per charge and per subscription -------------------------------------------


def minimum_plan(**kw):
    """Base fee 30.00; calls at 0.10 with a minimum of 20.00; the plan a minimum of 100.00."""
    kw.setdefault("base_fee", "30")
    kw.setdefault("minimum_amount", D(100))
    return plan(
        ChargeSpec(meter=meter(name="Calls"), unit_price=D("0.10"), minimum_amount=D(20)), **kw
    )


CALLS_SHORT = "Calls: minimum 20 USD per period, shortfall"
PLAN_SHORT = "Pro — minimum 100 USD per period, shortfall"


@pytest.mark.parametrize(
    ("calls", "expected", "total"),
    [
        # nothing used: the charge falls 20.00 short; 30 + 20 = 50 falls 50.00 short of 100
        (0, [("minimum", CALLS_SHORT, D(1), D(20)), ("minimum", PLAN_SHORT, D(1), D(50))], 100),
        # 150 calls = 15.00: 5.00 short; 30 + 15 + 5 = 50: 50.00 short
        (150, [("usage", "Calls", D(150), D(15)), ("minimum", CALLS_SHORT, D(1), D(5)),
               ("minimum", PLAN_SHORT, D(1), D(50))], 100),
        # 200 calls = 20.00, the charge's minimum exactly: no shortfall line for it
        (200, [("usage", "Calls", D(200), D(20)), ("minimum", PLAN_SHORT, D(1), D(50))], 100),
        # 1,000 calls = 100.00: 130 ≥ 100, no shortfall at all
        (1000, [("usage", "Calls", D(1000), D(100))], 130),
    ],
)  # fmt: skip
def test_minimum_shortfalls_are_their_own_lines(calls, expected, total):
    subscription = subscribe(minimum_plan())
    if calls:
        use(subscription, calls)
    invoice = close(subscription)
    assert lines(invoice) == [("base_fee", "Pro — base fee", D(1), D(30)), *expected]
    assert invoice.total == total
    upcoming_agrees(subscription, invoice)
    invoice = finalize(invoice)
    shortfall = sum(e[3] for e in expected if e[0] == "minimum")
    assert invoice.fees_precise == 30 + shortfall  # recognised with the fees
    assert account_posted("@Revenue") == total  # fees + shortfalls + rated usage, no tax
    assert receivable(subscription) == total


def test_a_one_day_period_prorates_the_minimums():
    """Canceled after one day of April's 30: fee 30/30 = 1.00; the charge's minimum
    20/30 = 0.666666666667 (short by all of it); the plan's 100/30 = 3.333333333333, short
    by 3.333333333333 − 1.00 − 0.666666666667 = 1.666666666666. Presented, the shortfalls are
    the minimums presented less the lines presented: 0.67 − 0 = 0.67, then 3.33 − 1.00 −
    0.67 = 1.66 — the period is invoiced its prorated minimum, 3.33 (each exact shortfall
    rounded on its own gave 3.34)."""
    subscription = subscribe(minimum_plan())
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 2))
    invoice = close(subscription, at(2026, 4, 2))
    span = ", prorated 2026-04-01 to 2026-04-02"
    assert lines(invoice) == [
        ("base_fee", f"Pro — base fee{span}", D(1), D(1)),
        ("minimum", f"Calls: minimum 20 USD per period{span}, shortfall", D(1), D("0.67")),
        ("minimum", f"Pro — minimum 100 USD per period{span}, shortfall", D(1), D("1.66")),
    ]
    assert invoice.fees_precise == D("3.333333333333")
    assert invoice.total == D("3.33")
    assert invoice.rounding == D("-0.003333333333")


def test_a_leap_year_february_prorates_by_its_29_days():
    """From 1 February 2028 to the 15th: 14 of February's 29 days of a 29.00 minimum."""
    subscription = subscribe(plan(base_fee="0", minimum_amount=D(29)), start=at(2028, 2, 1))
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2028, 2, 15))
    invoice = close(subscription, at(2028, 2, 15))
    assert lines(invoice) == [
        ("minimum", "Pro — minimum 29 USD per period, prorated 2028-02-01 to 2028-02-15, "
         "shortfall", D(1), D(14)),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("calls", "upcoming", "projected"),
    [
        # 10.00 of calls by mid-April: 30 + 10 + 10.00 (charge) + 50.00 (plan) short = 100.00;
        # as much again to come (10.00) fills the charge's shortfall: still 100.00
        (100, D(100), D(100)),
        # 60.00 by mid-April: 30 + 60 + 10.00 short = 100.00; 60.00 to come fills the plan's
        # 10.00 shortfall, 50.00 adds: 150.00 (= 30 + 120)
        (600, D(100), D(150)),
    ],
)
def test_the_portals_projection_fills_the_minimums_first(calls, upcoming, projected):
    """The portal projects the usage so far to the period's end; usage still to come first
    fills a charge's shortfall (with that charge's usage), then the plan's, as it fills a
    commitment's rest — the shortfalls are on the upcoming invoice already (before: 110.00
    and 160.00, the usage to come counted on top of the minimums)."""
    from unittest import mock

    from billing.portal.selectors import period_overview

    subscription = subscribe(minimum_plan())
    use(subscription, calls)
    subscription.refresh_from_db()
    with mock.patch("billing.portal.selectors.timezone.now", return_value=at(2026, 4, 16)):
        overview = period_overview(subscription)
    assert (overview["upcoming"], overview["projected"]) == (upcoming, projected)


def test_no_minimum_during_a_trial():
    subscription = subscribe(minimum_plan(), trial_days=30)
    invoice = close(subscription)
    assert lines(invoice) == [] and invoice.total == 0


# --- e. usage charges prorated for a period billed in part -------------------------------------


def prorated_plan(prorated: bool = True):
    """Calls: the first 100 at 1.00, then 0.50 — prorated for a period billed in part."""
    return plan(
        ChargeSpec(
            meter=meter(name="Calls"),
            price_model="graduated",
            prorated=prorated,
            tiers=(
                TierSpec(up_to=D(100), unit_price=D(1)),
                TierSpec(up_to=None, unit_price=D("0.5")),
            ),
        )
    )


def test_a_prorated_charge_picks_the_tier_on_the_whole_quantity_then_prorates():
    """Canceled on 16 April: 15 of 30 days billed. 150 calls: 100 × 1.00 + 50 × 0.50 =
    125.00 (tier 2 reached on the whole quantity), × 15/30 = 62.50."""
    subscription = subscribe(prorated_plan())
    use(subscription, 150)
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 16))
    invoice = close(subscription, at(2026, 4, 16))
    assert lines(invoice) == [
        ("usage", "Calls, tier 1", D(100), D(100)),
        ("usage", "Calls, tier 2", D(50), D(25)),
        ("usage", "Calls, prorated: billed 2026-04-01 to 2026-04-16", D(0), D("-62.5")),
    ]
    assert (invoice.usage_charged, invoice.fees_precise) == (D(125), D("-62.5"))
    assert invoice.total == D("62.5")
    upcoming_agrees(subscription, invoice)
    finalize(invoice, at(2026, 4, 16))
    assert receivable(subscription) == D("62.5")
    assert account_posted("@Revenue") == D("62.5")  # 125 rated, 62.50 taken back


def test_without_the_option_a_period_billed_in_part_pays_all_its_usage():
    subscription = subscribe(prorated_plan(prorated=False))
    use(subscription, 150)
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 16))
    assert close(subscription, at(2026, 4, 16)).total == D(125)


def test_a_whole_period_is_not_prorated():
    subscription = subscribe(prorated_plan())
    use(subscription, 150)
    invoice = close(subscription)
    assert [line[1] for line in lines(invoice)] == ["Calls, tier 1", "Calls, tier 2"]
    assert invoice.total == D(125)


@pytest.mark.parametrize(
    ("start", "used_at", "end", "calls", "total"),
    [
        # one day of April's 30: 30 calls = 30.00 × 1/30
        (at(2026, 4, 1), at(2026, 4, 1, 12), at(2026, 4, 2), 30, D(1)),
        # ended on the period's last day: 29 of 30 days
        (at(2026, 4, 1), at(2026, 4, 10), at(2026, 4, 30), 30, D(29)),
        # a leap-year February: 14 of 29 days of 29.00
        (at(2028, 2, 1), at(2028, 2, 10), at(2028, 2, 15), 29, D(14)),
        # tier 1's exact upper bound, 15 of 30 days: 100 × 1.00 = 100.00 → 50.00; one call
        # more reaches tier 2: 100.50 → 50.25
        (at(2026, 4, 1), at(2026, 4, 10), at(2026, 4, 16), 100, D(50)),
        (at(2026, 4, 1), at(2026, 4, 10), at(2026, 4, 16), 101, D("50.25")),
    ],
)
def test_prorated_by_the_days_billed(start, used_at, end, calls, total):
    subscription = subscribe(prorated_plan(), start=start)
    use(subscription, calls, at_time=used_at)
    billing.cancel_subscription(subscription_id=subscription.pk, now=end)
    invoice = close(subscription, end)
    assert invoice.total == total
    rated = sum(line.amount for line in invoice.lines.filter(kind="usage").exclude(tier=None))
    assert invoice.lines.order_by("position").last().amount == total - rated


def seats_plan(prorated: bool):
    """Seats: one tier with a flat 30.00 charged even at zero usage, prorated or not."""
    return plan(
        ChargeSpec(
            meter=meter(name="Seats"),
            price_model="graduated",
            prorated=prorated,
            flat_fee_at_zero=True,
            tiers=(TierSpec(up_to=None, unit_price=D(0), flat_fee=D(30)),),
        )
    )


@pytest.mark.parametrize("used", [0, 1])
def test_a_flat_fee_at_zero_usage_is_prorated_as_the_charge_is(used):
    """Canceled on 16 April, 15 of 30 days: the tier's flat fee 30.00 → 15.00 whether a seat
    was used or none (zero usage never costs more than one unit); not prorated: 30.00."""
    subscription = subscribe(seats_plan(prorated=True))
    if used:
        use(subscription, used)
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 16))
    invoice = close(subscription, at(2026, 4, 16))
    fee = "Seats, tier 1" if used else "Seats, tier 1: flat fee (charged at zero usage)"
    assert lines(invoice) == [
        ("usage", fee, D(used), D(30)),
        ("usage", "Seats, prorated: billed 2026-04-01 to 2026-04-16", D(0), D(-15)),
    ]
    assert invoice.total == D(15)
    upcoming_agrees(subscription, invoice)

    whole = subscribe(seats_plan(prorated=False))
    billing.cancel_subscription(subscription_id=whole.pk, now=at(2026, 4, 16))
    assert close(whole, at(2026, 4, 16)).total == D(30)
