"""The usage preview (invoicing.preview) prices a draft with every term of its spec: its usage
charges' cadence (``charges_interval``: a yearly plan's usage monthly), a tier's own package
size, a first tier's flat fee at zero usage, a charge's minimum, a prorated charge — the
figures a real close under the draft would give, worked by hand below. A draft billing on
another cadence than the period previewed was billed on is refused
(``preview_cadence_mismatch``), not priced on the wrong counters. No tax rate: totals are
subtotals."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from decimal import Decimal

import pytest

from billing import services
from billing.models import Plan
from invoicing import preview
from invoicing import services as invoicing
from invoicing.models import Invoice
from tests.billing.conftest import assert_error, at, make_client, make_key
from tests.billing.test_charges_interval import calls, yearly
from tests.invoicing.conftest import ChargeSpec, TierSpec, close, meter, plan, subscribe, use

__all__ = ["make_key"]  # a fixture used here

pytestmark = pytest.mark.django_db
D = Decimal


def graduated(units: str, *, second: TierSpec | None = None, **kw) -> ChargeSpec:
    """Units 1–1,000 at 0.02 (or ``kw``'s first tier), beyond at 0.01 (or ``second``)."""
    first = kw.pop("first", TierSpec(up_to=D(1000), unit_price=D("0.02")))
    return ChargeSpec(
        meter=units,
        price_model="graduated",
        tiers=(first, second or TierSpec(up_to=None, unit_price=D("0.01"))),
        **kw,
    )


def row(spec: services.PlanSpec, subscription):
    [found] = preview.preview_plan_version(spec=spec, customer=subscription.customer).rows
    return found


def units_of(pro: Plan) -> str:
    return services.plan_spec_of(pro).charges[0].meter


# --- a yearly plan billing its usage monthly --------------------------------------------------


def dearer_calls(pro: Plan) -> services.PlanSpec:
    """The draft: 1,000.00 a year, tier 1 at 0.03 (beyond still 0.01), usage still monthly."""
    return replace(
        services.plan_spec_of(pro),
        base_fee=D(1000),
        charges=(graduated(units_of(pro), first=TierSpec(up_to=D(1000), unit_price=D("0.03"))),),
    )


def test_the_month_that_closes_the_year_carries_the_drafts_base_fee():
    """From 1 January 2028, 1,500 calls in December, closed to 1 January 2029: December's
    invoice is the year's fee 1,200.00 + 1,000 × 0.02 + 500 × 0.01 = 1,225.00. Under the
    draft: 1,000.00 + 1,000 × 0.03 + 500 × 0.01 = 1,035.00 (−190.00)."""
    pro = yearly(calls())
    subscription = subscribe(pro, start=at(2028, 1, 1))
    use(subscription, 1500, at_time=at(2028, 12, 10))
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2029, 1, 1))
    found = row(dearer_calls(pro), subscription)
    assert (found.period_start, found.period_end) == (at(2028, 12, 1), at(2029, 1, 1))
    assert (found.old_total, found.new_total, found.delta) == (D(1225), D(1035), D(-190))
    [m] = found.meters
    assert (m.quantity, m.old_amount, m.new_amount) == (D(1500), D(25), D(35))
    assert not found.approximate


def test_a_month_inside_the_year_has_no_base_fee_under_the_draft_either():
    """Closed to 1 July 2028, 400 calls in June: June's invoice is 400 × 0.02 = 8.00, no base
    fee (the year is not over); under the draft 400 × 0.03 = 12.00, no base fee either —
    what the draft's close of June would invoice."""
    pro = yearly(calls())
    subscription = subscribe(pro, start=at(2028, 1, 1))
    use(subscription, 400, at_time=at(2028, 6, 10))
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2028, 7, 1))
    found = row(dearer_calls(pro), subscription)
    assert (found.period_start, found.period_end) == (at(2028, 6, 1), at(2028, 7, 1))
    assert (found.old_total, found.new_total) == (D(8), D(12))


def test_a_draft_billing_the_years_usage_at_once_is_refused():
    """The counters are June's; the draft would have invoiced the year's usage in one period
    (tiers over the year): no figure of June's is the draft's."""
    pro = yearly(calls())
    subscription = subscribe(pro, start=at(2028, 1, 1))
    use(subscription, 400, at_time=at(2028, 6, 10))
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2028, 7, 1))
    draft = replace(dearer_calls(pro), charges_interval="", charges_interval_count=1)
    with pytest.raises(preview.PreviewCadenceMismatch) as refused:
        preview.preview_plan_version(spec=draft)
    error = refused.value
    assert (error.code, error.http_status, error.param) == (
        "preview_cadence_mismatch",
        422,
        "charges_interval",
    )
    assert "every year, usage every month" in error.message
    assert "the draft bills every year:" in error.message


def test_a_draft_billing_a_yearly_plans_usage_monthly_is_refused():
    """A yearly plan billing its usage yearly, the year invoiced; a draft billing usage
    monthly would have invoiced twelve months, each tiered on its own."""
    pro = plan(calls(), interval="year", base_fee="1200")
    subscription = subscribe(pro, start=at(2028, 1, 1))
    use(subscription, 1500, at_time=at(2028, 3, 10))
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2029, 1, 1))
    draft = replace(services.plan_spec_of(pro), charges_interval="month")
    with pytest.raises(preview.PreviewCadenceMismatch, match="usage every month"):
        preview.preview_plan_version(spec=draft, customer=subscription.customer)


def test_the_api_refuses_a_preview_against_another_versions_cadence(make_key):
    """v1 bills usage monthly (the subscription's June is invoiced), v2 the year at once: the
    API's draft is v2's cadence — refused with the error body, nothing priced."""
    v1 = yearly(calls())
    subscription = subscribe(v1, start=at(2028, 1, 1))
    use(subscription, 400, at_time=at(2028, 6, 10))
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2028, 7, 1))
    v2, created = services.publish_plan(
        spec=replace(services.plan_spec_of(v1), charges_interval="", charges_interval_count=1)
    )
    assert created and v2.version == v1.version + 1
    reader = make_client(make_key(("read",))[1])
    response = reader.post(
        f"/api/v1/plans/{v1.code}/preview",
        {"charges": [{"meter": units_of(v1), "unit_price": "0.01"}]},
        format="json",
    )
    body = assert_error(
        response,
        422,
        "preview_cadence_mismatch",
        param="charges_interval",
        type="invalid_request_error",
    )
    assert "2028-06-01 to 2028-07-01" in body["error"]["message"]


# --- the charge terms a draft carries -----------------------------------------------------------


@pytest.fixture
def april():
    """A monthly plan without a base fee; 1,550 units in April 2026: 1,000 × 0.02 + 550 ×
    0.01 = 25.50 (closed)."""
    units = meter()
    pro = plan(graduated(units))
    subscription = subscribe(pro)
    use(subscription, 1550)
    assert close(subscription).total == D("25.50")
    return pro, units, subscription


def test_a_tiers_own_package_size(april):
    """Tier 2 in packages of 100 at 1.00 a package: 550 units are 6 packages, 6.00; with tier
    1's 20.00, 26.00 (not 20.00 + 550 × 1.00)."""
    pro, units, subscription = april
    second = TierSpec(up_to=None, unit_price=D(1), package_size=D(100))
    found = row(
        replace(services.plan_spec_of(pro), charges=(graduated(units, second=second),)),
        subscription,
    )
    assert (found.old_total, found.new_total) == (D("25.50"), D(26))


def test_a_charges_minimum(april):
    """A minimum of 50.00 on the charge: 25.50 of usage, a shortfall of 24.50: 50.00."""
    pro, units, subscription = april
    draft = replace(services.plan_spec_of(pro), charges=(graduated(units, minimum_amount=D(50)),))
    found = row(draft, subscription)
    assert (found.old_total, found.new_total) == (D("25.50"), D(50))


def test_a_first_tiers_flat_fee_at_zero_usage():
    """No usage in April: 0.00. The draft's tier 1 has a flat fee of 5.00 charged at zero
    usage: 5.00."""
    units = meter()
    pro = plan(graduated(units))
    subscription = subscribe(pro)
    assert close(subscription).total == 0
    first = TierSpec(up_to=D(1000), unit_price=D("0.02"), flat_fee=D(5))
    draft = replace(
        services.plan_spec_of(pro),
        charges=(graduated(units, first=first, flat_fee_at_zero=True),),
    )
    found = row(draft, subscription)
    assert (found.old_total, found.new_total) == (D(0), D(5))


def test_a_prorated_charge_in_a_period_ended_early():
    """1,000 units on 10 April (20.00), canceled on 16 April 00:00: 15 of April's 30 days
    billed. Not prorated: 20.00; the draft prorates the charge: 20.00 × 15 / 30 = 10.00."""
    units = meter()
    pro = plan(graduated(units))
    subscription = subscribe(pro)
    use(subscription, 1000, at_time=at(2026, 4, 10))
    services.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 16))
    invoice = close(subscription, as_of=at(2026, 4, 16))
    assert invoice.total == D(20)
    draft = replace(services.plan_spec_of(pro), charges=(graduated(units, prorated=True),))
    found = row(draft, subscription)
    assert (found.old_total, found.new_total) == (D(20), D(10))
    assert Invoice.objects.get(pk=invoice.pk).total == D(20)  # nothing written


def test_every_term_of_the_spec_reaches_the_draft():
    """Each field of a plan's spec is on the draft plan, each of a charge's and a tier's on
    the draft's terms (a field added later and not carried fails here)."""
    units = meter()
    spec = services.PlanSpec(
        code="draft",
        name="Draft",
        interval="year",
        base_fee=D(1200),
        trial_days=14,
        description="a draft",
        metadata={"tier": "gold"},
        rounding="half_up",
        charges_interval="month",
        charges_interval_count=3,
        billing_time="calendar",
        billing_anchor_day=1,
        charges=(
            ChargeSpec(
                meter=units,
                price_model="graduated",
                tiers=(
                    TierSpec(up_to=D(10), unit_price=D(1), flat_fee=D(2), package_size=D(5)),
                    TierSpec(up_to=None, unit_price=D("0.5")),
                ),
                flat_fee_at_zero=True,
                minimum_amount=D(3),
                prorated=True,
            ),
        ),
    )
    draft = preview.draft_plan_of(spec)
    for name in (f.name for f in dataclasses.fields(services.PlanSpec)):
        if name in ("charges", "credit_grant"):  # the draft's terms; grants are not invoiced
            continue
        expected = getattr(spec, name)
        assert getattr(draft, name) == (expected if name != "metadata" else expected or {}), name
    terms, meters = preview.draft_terms(spec)
    assert (terms.charges_interval, terms.charges_interval_count) == ("month", 3)
    assert terms.cadence == ("month", 3)
    [charge] = terms.charges.values()
    [charge_spec] = spec.charges
    assert meters[charge.meter_id].code == units
    for name in (f.name for f in dataclasses.fields(ChargeSpec)):
        if name in ("meter", "tiers"):
            continue
        assert getattr(charge, name) == getattr(charge_spec, name), name
    for tier, tier_spec in zip(charge.tiers, charge_spec.tiers, strict=True):
        for name in (f.name for f in dataclasses.fields(TierSpec)):
            assert getattr(tier, name) == getattr(tier_spec, name), name
