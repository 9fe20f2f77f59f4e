"""A charge billed on its own cadence (``PlanCharge.interval``, Orb's per-price cadence):
GPU hours billed quarterly on a monthly plan. Rating counts the GPU meter over the quarter
(its allowance and tiers on the quarter's cumulative quantity); the monthly invoices of
January and February carry no GPU line (the usage accrues), March's carries the quarter.
A subscription ending inside the quarter invoices the part of it it lasted.

The figures of docs/pricing-file.md's worked example, by hand:

- plan: monthly from 1 January 2026, base fee 10.00; API calls 0.01 a call (monthly);
  GPU hours quarterly, 100 included, then graduated: 1–200 at 2.00, beyond at 1.50.
- January: 5,000 calls (50.00), 120 GPU hours (rated: 20 × 2.00 = 40.00).
- February: 3,000 calls (30.00), 250 GPU hours: the quarter at 370, 270 billable —
  200 × 2.00 + 70 × 1.50 = 505.00, so February's hours are rated 505 − 40 = 465.00 (the
  month alone would have been 150 × 2.00 = 300.00: the tier crossed on the quarter's
  quantity).
- March: 1,000 calls (10.00), 30 GPU hours: the quarter at 400, 300 billable — 400.00 +
  150.00 = 550.00, rated 550 − 505 = 45.00.
- Invoices: January 10 + 50 = 60.00; February 10 + 30 = 40.00; March 10 + 10 + 0.00
  (100 included) + 400.00 + 150.00 = 570.00. The ledger took 40 + 465 + 45 = 550.00 for
  GPU hours as they were rated; March's invoice says exactly that."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services
from billing.models import Subscription
from invoicing import services as invoicing
from invoicing.models import Invoice
from metering import errors as metering_errors
from metering.models import PeriodUsage
from tests.billing.conftest import api, api_key, at, make_key
from tests.conftest import unique
from tests.factories import MeterFactory
from tests.invoicing.conftest import ChargeSpec, TierSpec, close, lines, plan, subscribe
from tests.invoicing.test_pricing_shapes import upcoming_agrees
from tests.reconciliation import reconcile

pytestmark = pytest.mark.django_db
D = Decimal
__all__ = ["api", "api_key", "make_key"]  # fixtures, by name


def _meters() -> tuple[str, str]:
    calls = MeterFactory(code=unique("calls"), name="API calls", api_call=True).code
    gpu = MeterFactory(
        code=unique("gpu"), name="GPU hours", event_name="gpu.used", property="hours"
    ).code
    return calls, gpu


def gpu_plan(gpu_interval="quarter", *, interval="month", **charge):
    calls, gpu = _meters()
    return plan(
        ChargeSpec(meter=calls, unit_price=D("0.01")),
        ChargeSpec(
            meter=gpu,
            price_model="graduated",
            included_quantity=D(100),
            tiers=(
                TierSpec(up_to=D(200), unit_price=D(2)),
                TierSpec(up_to=None, unit_price=D("1.5")),
            ),
            interval=gpu_interval,
            **charge,
        ),
        interval=interval,
        base_fee="10",
    )


def send(subscription: Subscription, event: str, field: str, value, when):
    from billing.models import Customer
    from metering import rating

    customer = Customer.objects.get(pk=subscription.customer_id)
    (outcome,) = rating.ingest_events(
        [
            rating.EventIn(
                idempotency_key=unique("ev"),
                customer=customer.external_id,
                event_name=event,
                timestamp=when,
                properties={field: D(value)},
            )
        ],
        now=when,
    )
    return outcome


def calls(subscription, n, when):
    outcome = send(subscription, "api.call", "units", n, when)
    assert outcome.status == "accepted", outcome.error
    return outcome


def gpu(subscription, hours, when):
    outcome = send(subscription, "gpu.used", "hours", hours, when)
    assert outcome.status == "accepted", outcome.error
    return outcome


def invoices(subscription: Subscription) -> list[Invoice]:
    return list(Invoice.objects.filter(subscription=subscription).order_by("period_start"))


def test_the_quarter_is_rated_on_its_cumulative_quantity_and_invoiced_with_march():
    subscription = subscribe(gpu_plan(), start=at(2026, 1, 1))
    calls(subscription, 5000, at(2026, 1, 10))
    assert gpu(subscription, 120, at(2026, 1, 20)).event["amount"] == D(40)
    january = close(subscription, as_of=at(2026, 2, 1))
    assert lines(january) == [
        ("base_fee", "Pro — base fee", D(1), D(10)),
        ("usage", "API calls", D(5000), D(50)),
    ]
    assert january.total == D(60)

    calls(subscription, 3000, at(2026, 2, 5))
    # the tier crossed on the quarter's 370 hours, not on February's 250
    assert gpu(subscription, 250, at(2026, 2, 20)).event["amount"] == D(465)
    counter = PeriodUsage.objects.get(subscription=subscription, meter__event_name="gpu.used")
    assert (counter.period_start, counter.period_end) == (at(2026, 1, 1), at(2026, 4, 1))
    assert (counter.quantity, counter.amount) == (D(370), D(505))
    february = close(subscription, as_of=at(2026, 3, 1))
    assert [kind for kind, *_ in lines(february)] == ["base_fee", "usage"]
    assert february.total == D(40)

    calls(subscription, 1000, at(2026, 3, 3))
    assert gpu(subscription, 30, at(2026, 3, 30)).event["amount"] == D(45)
    march = close(subscription, as_of=at(2026, 4, 1))
    assert lines(march) == [
        ("base_fee", "Pro — base fee", D(1), D(10)),
        ("usage", "API calls", D(1000), D(10)),
        ("included", "GPU hours: included (100 per quarter)", D(100), D(0)),
        ("usage", "GPU hours, tier 1", D(200), D(400)),
        ("usage", "GPU hours, tier 2", D(100), D(150)),
    ]
    assert march.total == D(570)
    assert march.usage_charged == D(10) + D(550)  # what the ledger took: calls + the quarter
    gpu_line = march.lines.get(description="GPU hours, tier 1")
    assert (gpu_line.starts_at, gpu_line.ends_at) == (at(2026, 1, 1), at(2026, 4, 1))
    upcoming_agrees(subscription, march)
    assert reconcile(subscription).balanced()

    # April opens the next quarter: a fresh counter, tier 1 again
    assert gpu(subscription, 101, at(2026, 4, 2)).event["amount"] == D(2)


def test_a_late_event_and_a_second_close_change_nothing():
    """Exactly once. A late January event, before January's invoice is finalized, joins the
    quarter (March's invoice carries it); once finalized, January refuses usage dated in it.
    Closing again returns the invoice made."""
    subscription = subscribe(gpu_plan(), start=at(2026, 1, 1))
    gpu(subscription, 150, at(2026, 1, 20))
    january = close(subscription, as_of=at(2026, 2, 1))
    again = invoicing.close_period(subscription_id=subscription.pk, as_of=at(2026, 2, 1))
    assert again is None or again.invoice == january
    gpu(subscription, 10, at(2026, 1, 25))  # late, January still a draft
    january = invoicing.finalize_invoice(invoice_id=january.pk, now=at(2026, 2, 2))
    assert january.total == D(10)  # the base fee only: the hours accrue to March
    late = send(subscription, "gpu.used", "hours", 10, at(2026, 1, 26))
    assert isinstance(late.error, metering_errors.PeriodClosed)
    february = close(subscription, as_of=at(2026, 3, 1))
    march = close(subscription, as_of=at(2026, 4, 1))
    again = invoicing.close_period(subscription_id=subscription.pk, as_of=at(2026, 4, 1))
    assert again is None or again.invoice == march  # nothing new is due
    gpu_lines = [
        line
        for invoice in (january, february, march)
        for line in invoice.lines.filter(meter_id__isnull=False).exclude(
            description__startswith="API"
        )
    ]
    # 160 hours: 100 included, 60 × 2.00 = 120.00 — on March's invoice only, once
    assert [(ln.invoice_id, ln.kind, ln.amount) for ln in gpu_lines] == [
        (march.pk, "included", D(0)),
        (march.pk, "usage", D(120)),
    ]
    assert reconcile(subscription).balanced()


def test_the_upcoming_invoice_shows_the_quarter_accrued_so_far(api):
    """February, before its close: the upcoming invoice is February's (10.00 + 30.00, no
    GPU line) and lists the quarter's GPU hours apart: 370 hours — 0.00 included, 400.00
    and 105.00 in the tiers — invoiced on 1 April."""
    subscription = subscribe(gpu_plan(), start=at(2026, 1, 1))
    gpu(subscription, 120, at(2026, 1, 20))
    close(subscription, as_of=at(2026, 2, 1))
    calls(subscription, 3000, at(2026, 2, 5))
    gpu(subscription, 250, at(2026, 2, 20))
    customer = subscription.customer.external_id
    shown = api.get(f"/api/v1/customers/{customer}/upcoming-invoice").json()
    assert D(shown["total"]) == D(40)
    assert {line["meter"] for line in shown["lines"] if line["meter"]} == {
        line["meter"] for line in shown["lines"] if line["kind"] == "usage"
    }
    assert all("GPU" not in line["description"] for line in shown["lines"])
    accruing = [
        (line["kind"], line["description"], D(line["amount"]), line["invoiced_on"][:10])
        for line in shown["accruing"]
    ]
    assert accruing == [
        ("included", "GPU hours: included (100 per quarter)", D(0), "2026-04-01"),
        ("usage", "GPU hours, tier 1", D(400), "2026-04-01"),
        ("usage", "GPU hours, tier 2", D(105), "2026-04-01"),
    ]


def test_a_cancellation_in_february_invoices_the_quarter_so_far():
    """Canceled on 15 February 00:00: February's invoice carries the base fee for 14 of 28
    days (5.00), February's calls (30.00) and the quarter's GPU hours to date — 370 hours,
    505.00, the tiers on the whole quantity. Prorated, the same charge invoices 505.00 ×
    45 / 90 days of the quarter (1 January to 15 February of 1 January to 1 April) =
    252.50: a line of −252.50."""
    plain = subscribe(gpu_plan(), start=at(2026, 1, 1))
    prorated = subscribe(gpu_plan(prorated=True), start=at(2026, 1, 1))
    for subscription in (plain, prorated):
        gpu(subscription, 120, at(2026, 1, 20))
        close(subscription, as_of=at(2026, 2, 1))
        calls(subscription, 3000, at(2026, 2, 5))
        gpu(subscription, 250, at(2026, 2, 10))
        services.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 2, 15))
    february = close(plain, as_of=at(2026, 2, 15))
    assert lines(february) == [
        ("base_fee", "Pro — base fee, prorated 2026-02-01 to 2026-02-15", D(1), D(5)),
        ("usage", "API calls", D(3000), D(30)),
        ("included", "GPU hours: included (100 per quarter)", D(100), D(0)),
        ("usage", "GPU hours, tier 1", D(200), D(400)),
        ("usage", "GPU hours, tier 2", D(70), D(105)),
    ]
    assert february.total == D(540)
    gpu_line = february.lines.get(description="GPU hours, tier 1")
    assert (gpu_line.starts_at, gpu_line.ends_at) == (at(2026, 1, 1), at(2026, 2, 15))
    assert reconcile(plain).balanced()
    partial = close(prorated, as_of=at(2026, 2, 15))
    assert lines(partial)[-1] == (
        "usage",
        "GPU hours, prorated: billed 2026-01-01 to 2026-02-15",
        D(0),
        D("-252.50"),
    )
    assert partial.total == D("287.50")


def test_a_cancellation_at_the_end_of_february_invoices_the_quarter_so_far():
    """Canceled at period end: the monthly plan ends with February, inside the quarter;
    February's invoice carries the quarter to date (370 hours: 505.00)."""
    subscription = subscribe(gpu_plan(), start=at(2026, 1, 1))
    gpu(subscription, 120, at(2026, 1, 20))
    close(subscription, as_of=at(2026, 2, 1))
    gpu(subscription, 250, at(2026, 2, 10))
    services.cancel_subscription(
        subscription_id=subscription.pk, at_period_end=True, now=at(2026, 2, 11)
    )
    february = close(subscription, as_of=at(2026, 3, 1))
    assert february.total == D(10) + D(505)
    again = invoicing.close_period(subscription_id=subscription.pk, as_of=at(2026, 4, 1))
    assert again is None or not again.created
    assert len(invoices(subscription)) == 2
    assert reconcile(subscription).balanced()


def test_a_charge_longer_than_a_yearly_plans_billing_month_but_shorter_than_its_year():
    """A yearly plan billed monthly (charges_interval month), GPU hours quarterly: the
    months of January and February carry no GPU line, March's the quarter (120 + 250 hours:
    505.00); the base fee (10.00 a year) comes with December, as without the charge."""
    calls_code, gpu_code = _meters()
    yearly = plan(
        ChargeSpec(meter=calls_code, unit_price=D("0.01")),
        ChargeSpec(
            meter=gpu_code,
            price_model="graduated",
            included_quantity=D(100),
            tiers=(
                TierSpec(up_to=D(200), unit_price=D(2)),
                TierSpec(up_to=None, unit_price=D("1.5")),
            ),
            interval="quarter",
        ),
        interval="year",
        charges_interval="month",
        base_fee="10",
    )
    subscription = subscribe(yearly, start=at(2026, 1, 1))
    gpu(subscription, 120, at(2026, 1, 20))
    gpu(subscription, 250, at(2026, 2, 20))
    assert (
        invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2026, 4, 1))
        == 3
    )
    assert [i.total for i in invoices(subscription)] == [D(0), D(0), D(505)]
    gpu(subscription, 101, at(2026, 4, 2))  # the second quarter: tier 1 again
    assert (
        invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2027, 1, 1))
        == 9
    )
    totals = [i.total for i in invoices(subscription)]
    assert totals[3:] == [D(0), D(0), D(2)] + [D(0)] * 5 + [D(10)]
    assert reconcile(subscription).balanced()


def test_a_charge_billed_every_two_months_on_a_monthly_plan_with_a_minimum():
    """GPU hours every 2 months with a minimum of 50.00 per charge period: January's
    invoice owes nothing for them, February's the 2-month period — 120 hours, 40.00 rated,
    a shortfall of 10.00."""
    subscription = subscribe(
        gpu_plan("month", interval_count=2, minimum_amount=D(50)), start=at(2026, 1, 1)
    )
    gpu(subscription, 120, at(2026, 1, 20))
    january = close(subscription, as_of=at(2026, 2, 1))
    assert [kind for kind, *_ in lines(january)] == ["base_fee"]
    february = close(subscription, as_of=at(2026, 3, 1))
    assert lines(february) == [
        ("base_fee", "Pro — base fee", D(1), D(10)),
        ("included", "GPU hours: included (100 per 2 months)", D(100), D(0)),
        ("usage", "GPU hours, tier 1", D(20), D(40)),
        ("minimum", "GPU hours: minimum 50 USD per 2 months, shortfall", D(1), D(10)),
    ]
    assert february.total == D(10) + D(40) + D(10)


def test_a_charge_minimum_for_a_quarter_cut_short_is_prorated_over_the_quarter():
    """A 300.00 minimum per quarter, canceled on 15 February 00:00 with 120 hours (40.00):
    owed 300 × 45 / 90 days = 150.00, a shortfall of 110.00."""
    subscription = subscribe(gpu_plan(minimum_amount=D(300)), start=at(2026, 1, 1))
    gpu(subscription, 120, at(2026, 1, 20))
    assert [k for k, *_ in lines(close(subscription, as_of=at(2026, 2, 1)))] == ["base_fee"]
    services.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 2, 15))
    february = close(subscription, as_of=at(2026, 2, 15))
    assert lines(february)[-1] == (
        "minimum",
        "GPU hours: minimum 300 USD per quarter, prorated 2026-01-01 to 2026-02-15, shortfall",
        D(1),
        D(110),
    )


def test_the_books_reconcile_over_the_quarter():
    """The three months finalized: every reconciliation check passes — the invoices'
    postings equal their figures (``invoice_ledger``: March's wallet leg is the quarter's
    550.00 of GPU hours with its 10.00 of requests), the usage postings their events; the
    per-period comparison of events and usage lines leaves these invoices out (January's
    events include GPU hours its invoice does not carry)."""
    from invoicing import reconciliation

    subscription = subscribe(gpu_plan(), start=at(2026, 1, 1))
    usage = [
        (5000, 120, at(2026, 1, 20)),
        (3000, 250, at(2026, 2, 20)),
        (1000, 30, at(2026, 3, 30)),
    ]
    for n, hours, when in usage:
        calls(subscription, n, when)
        gpu(subscription, hours, when)
        month_end = at(2026, when.month + 1, 1)
        invoice = close(subscription, as_of=month_end)
        invoicing.finalize_invoice(invoice_id=invoice.pk, now=month_end)
    assert [i.total for i in invoices(subscription)] == [D(60), D(40), D(570)]
    result = reconciliation.run_reconciliation(start=at(2026, 1, 1), end=at(2026, 4, 2))
    assert result.status == "passed", result.checks
    assert reconcile(subscription).balanced()


def test_review_cancel_at_period_end_inside_the_quarter_prorates_the_minimum_and_charge():
    """Review (s15-review): canceled at period end on 11 February, the monthly plan ends on
    1 March, inside the quarter: its last invoice carries the quarter billed 1 January to
    1 March, 59 of its 90 days, like a cancellation now would. The 300.00 minimum per
    quarter is owed 300 × 59 / 90 = 196.666…: with 120 hours (40.00) a shortfall of
    156.67; prorated, 505.00 × 59 / 90 = 331.0555…, a line of −173.94."""
    short = subscribe(gpu_plan(minimum_amount=D(300)), start=at(2026, 1, 1))
    prorated = subscribe(gpu_plan(prorated=True), start=at(2026, 1, 1))
    for subscription, usage in ((short, (120, 0)), (prorated, (120, 250))):
        gpu(subscription, usage[0], at(2026, 1, 20))
        close(subscription, as_of=at(2026, 2, 1))
        if usage[1]:
            gpu(subscription, usage[1], at(2026, 2, 10))
        services.cancel_subscription(
            subscription_id=subscription.pk, at_period_end=True, now=at(2026, 2, 11)
        )
    february = close(short, as_of=at(2026, 3, 1))
    assert lines(february)[-1] == (
        "minimum",
        "GPU hours: minimum 300 USD per quarter, prorated 2026-01-01 to 2026-03-01, shortfall",
        D(1),
        D("156.67"),
    )
    gpu_line = february.lines.get(description="GPU hours, tier 1")
    assert (gpu_line.starts_at, gpu_line.ends_at) == (at(2026, 1, 1), at(2026, 3, 1))
    last = close(prorated, as_of=at(2026, 3, 1))
    assert lines(last)[-1] == (
        "usage",
        "GPU hours, prorated: billed 2026-01-01 to 2026-03-01",
        D(0),
        D("-173.94"),
    )
    assert last.total == D(10) + D(505) - D("173.94")


def _gpu_charge(calls_code: str, gpu_code: str, tier1: str = "2", **kw):
    charge = {k: kw.pop(k) for k in ("minimum_amount",) if k in kw}
    return plan(
        ChargeSpec(meter=calls_code, unit_price=D("0.01")),
        ChargeSpec(
            meter=gpu_code,
            price_model="graduated",
            included_quantity=D(100),
            tiers=(
                TierSpec(up_to=D(200), unit_price=D(tier1)),
                TierSpec(up_to=None, unit_price=D("1.5")),
            ),
            interval="quarter",
            **charge,
        ),
        interval="month",
        base_fee="10",
        **kw,
    )


def test_review_a_calendar_stub_in_a_leap_year_starts_the_quarter_at_the_start():
    """Review (s15-review): billed on the calendar from 15 February 2028 (a leap year), the
    quarter is the calendar's (1 January – 1 April, 91 days), begun at the start: the stub
    15 February – 1 March (10.00 × 15 / 29 = 5.17) carries no GPU line; March's carries the
    quarter from 15 February, and its 300.00 minimum is owed for 46 of 91 days, 151.648…:
    with 120 hours (40.00), a shortfall of 111.65, dated as the charge's lines."""
    calls_code, gpu_code = _meters()
    subscription = subscribe(
        _gpu_charge(
            calls_code,
            gpu_code,
            minimum_amount=D(300),
            billing_time="calendar",
            billing_anchor_day=1,
        ),
        start=at(2028, 2, 15),
    )
    gpu(subscription, 120, at(2028, 2, 20))
    counter = PeriodUsage.objects.get(subscription=subscription, meter__code=gpu_code)
    assert (counter.period_start, counter.period_end) == (at(2028, 2, 15), at(2028, 4, 1))
    stub = close(subscription, as_of=at(2028, 3, 1))
    assert lines(stub) == [
        ("base_fee", "Pro — base fee, prorated 2028-02-15 to 2028-03-01", D(1), D("5.17"))
    ]
    march = close(subscription, as_of=at(2028, 4, 1))
    assert lines(march) == [
        ("base_fee", "Pro — base fee", D(1), D(10)),
        ("included", "GPU hours: included (100 per quarter)", D(100), D(0)),
        ("usage", "GPU hours, tier 1", D(20), D(40)),
        (
            "minimum",
            "GPU hours: minimum 300 USD per quarter, prorated 2028-02-15 to 2028-04-01, shortfall",
            D(1),
            D("111.65"),
        ),
    ]
    dates = {(ln.starts_at, ln.ends_at) for ln in march.lines.filter(meter_id__isnull=False)}
    assert dates == {(at(2028, 2, 15), at(2028, 4, 1))}


def test_review_a_trial_is_its_own_period_and_the_quarter_starts_at_its_end():
    """Review (s15-review): a 14-day trial from 1 January 2026 is its own period (its
    allowance per period, not per quarter); the quarter runs 15 January – 15 April and is
    invoiced with the month ending then (120 hours: 20 × 2.00 = 40.00)."""
    calls_code, gpu_code = _meters()
    subscription = subscribe(_gpu_charge(calls_code, gpu_code), start=at(2026, 1, 1), trial_days=14)
    gpu(subscription, 50, at(2026, 1, 5))
    assert gpu(subscription, 120, at(2026, 2, 1)).event["amount"] == D(40)
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2026, 4, 15))
    trial, january, february, march = invoices(subscription)
    assert lines(trial) == [("included", "GPU hours: included (100 per period)", D(50), D(0))]
    assert [k for k, *_ in lines(january)] == [k for k, *_ in lines(february)] == ["base_fee"]
    assert (march.period_start, march.period_end) == (at(2026, 3, 15), at(2026, 4, 15))
    assert lines(march)[1:] == [
        ("included", "GPU hours: included (100 per quarter)", D(100), D(0)),
        ("usage", "GPU hours, tier 1", D(20), D(40)),
    ]


def test_review_a_plan_change_on_the_quarters_last_day_keeps_one_counter():
    """Review (s15-review): changed now on 31 March 2026 (the quarter's last day) to a plan
    with the same cadence and tier 1 at 3.00: the quarter keeps its one counter — 100 hours
    included and 50 at 2.00 under the first plan, 100 at 3.00 after the change, 400.00 as
    rated — invoiced once, with March; the base fee split 30 / 31 and 1 / 31 of 10.00."""
    calls_code, gpu_code = _meters()
    first = _gpu_charge(calls_code, gpu_code)
    subscription = subscribe(first, start=at(2026, 1, 1))
    gpu(subscription, 150, at(2026, 1, 20))
    close(subscription, as_of=at(2026, 2, 1))
    close(subscription, as_of=at(2026, 3, 1))
    services.change_subscription(
        subscription_id=subscription.pk,
        plan=_gpu_charge(calls_code, gpu_code, tier1="3"),
        now=at(2026, 3, 31),
    )
    assert gpu(subscription, 100, at(2026, 3, 31, 12)).event["amount"] == D(300)
    march = close(subscription, as_of=at(2026, 4, 1))
    assert lines(march) == [
        ("base_fee", "Pro — base fee, prorated 2026-03-01 to 2026-03-31", D(1), D("9.68")),
        ("base_fee", "Pro — base fee, prorated 2026-03-31 to 2026-04-01", D(1), D("0.32")),
        ("included", "GPU hours: included (100 per quarter)", D(100), D(0)),
        ("usage", "GPU hours: as rated", D(150), D(400)),
    ]
    assert PeriodUsage.objects.filter(subscription=subscription).count() == 1
    assert reconcile(subscription).balanced()
