"""Rounding per currency and the loose ends of issue 18's first part: the rule's precedence
(the plan's explicit rule > the currency's > half even) applied by one function
(invoicing.money.rounding_rule_for), the portal's projected total rounded by it, a
finalized invoice's rule frozen, minimums owed slice by slice of a plan change, and the
usage preview priced by the draft's own minimum and commitment. Figures by hand in the
comments. Subscriptions start on 1 April 2026 (a 30-day period to 1 May)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from unittest import mock

import pytest
from django.db import DatabaseError, transaction
from django.urls import reverse

from billing import services as billing
from billing.models import CurrencySetting
from billing.portal.selectors import period_overview
from invoicing import preview
from invoicing.models import Invoice, TaxRate
from invoicing.money import rounding_rule_for
from tests.invoicing.conftest import (
    ChargeSpec,
    at,
    close,
    finalize,
    lines,
    meter,
    plan,
    subscribe,
    use,
)
from tests.invoicing.test_pricing_shapes import rounding_plan, upcoming_agrees

pytestmark = pytest.mark.django_db
D = Decimal


# --- the precedence ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan_rule", "currency_rule", "fee", "usage", "tax", "rule"),
    [
        # no rule anywhere: half even. 10.005 → 10.00; 0.125 → 0.12; 10.12 × 25 % = 2.53
        (None, None, D("10.00"), D("0.12"), D("2.53"), "half_even"),
        # the currency says half up: 10.01; 0.13; 10.14 × 25 % = 2.535 → 2.54
        (None, "half_up", D("10.01"), D("0.13"), D("2.54"), "half_up"),
        # the plan's explicit rule wins over the currency's, either way
        ("half_even", "half_up", D("10.00"), D("0.12"), D("2.53"), "half_even"),
        ("half_up", "half_even", D("10.01"), D("0.13"), D("2.54"), "half_up"),
    ],
)
def test_the_plans_rule_then_the_currencys_then_half_even(
    plan_rule, currency_rule, fee, usage, tax, rule
):
    if currency_rule:
        CurrencySetting.objects.create(currency="USD", rounding=currency_rule)
    TaxRate.objects.create(name="VAT", percentage=D(25))
    subscription = subscribe(rounding_plan(plan_rule))
    use(subscription, 50)
    invoice = close(subscription)
    assert [line.amount for line in invoice.lines.order_by("position")] == [fee, usage]
    assert (invoice.subtotal, invoice.tax, invoice.total) == (fee + usage, tax, fee + usage + tax)
    assert invoice.rounding_rule == rule
    upcoming_agrees(subscription, invoice)


def test_another_currencys_setting_changes_nothing():
    CurrencySetting.objects.create(currency="EUR", rounding="half_up")
    assert rounding_rule_for(plan_rounding="", currency="USD") == "half_even"
    assert rounding_rule_for(plan_rounding="", currency="EUR") == "half_up"
    assert rounding_rule_for(plan_rounding="half_even", currency="EUR") == "half_even"


def test_the_admin_edits_a_currencys_rule_and_refuses_a_bad_code(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("fin", "f@x.example", None))
    url = reverse("admin:billing_currencysetting_add")
    refused = client.post(url, {"currency": "XYZ", "rounding": "half_up"})
    assert refused.status_code == 200 and "is not an ISO 4217" in str(
        refused.context["adminform"].form.errors
    )
    refused = client.post(url, {"currency": "EUR", "rounding": "bankers"})
    assert refused.status_code == 200 and "rounding" in refused.context["adminform"].form.errors
    assert client.post(url, {"currency": "eur", "rounding": "half_up"}).status_code == 302
    assert CurrencySetting.objects.get().currency == "EUR"


# --- the portal's projected total ----------------------------------------------------------------


@pytest.mark.parametrize(("rule", "projected"), [("half_even", D("0.24")), ("half_up", D("0.26"))])
def test_the_portals_projection_rounds_by_the_invoices_rule(rule, projected):
    """50 calls at 0.0025 = 0.125 by 16 April, half of April: the upcoming invoice 0.125 →
    0.12 (half even) or 0.13 (half up), and as much again to come, rounded alike:
    0.24 or 0.26 (before, the projection rounded half even whatever the rule: 0.25)."""
    subscription = subscribe(plan(ChargeSpec(meter=meter(), unit_price=D("0.0025")), rounding=rule))
    use(subscription, 50)
    subscription.refresh_from_db()
    with mock.patch("billing.portal.selectors.timezone.now", return_value=at(2026, 4, 16)):
        overview = period_overview(subscription)
    assert overview["projected"] == projected


# --- a finalized invoice's rule is frozen ---------------------------------------------------------


def test_a_finalized_invoices_rounding_rule_cannot_change():
    subscription = subscribe(plan(base_fee="10.005", rounding="half_up"))
    invoice = finalize(close(subscription))
    with pytest.raises(DatabaseError, match="is finalized"), transaction.atomic():
        Invoice.objects.filter(pk=invoice.pk).update(rounding_rule="half_even")
    with pytest.raises(DatabaseError, match="is finalized"), transaction.atomic():
        Invoice.objects.filter(pk=invoice.pk).update(commitment_breakage=D(1))
    invoice.refresh_from_db()
    assert invoice.rounding_rule == "half_up" and invoice.total == D("10.01")


# --- minimums of a plan changed mid-period -------------------------------------------------------


def test_each_part_of_the_period_owes_the_minimum_of_the_plan_in_force_then():
    """A minimum of 100.00 until 16 April (15 of 30 days: 50.00), 200.00 after (100.00):
    150.00 owed; 300 calls at 0.10 = 30.00, 120.00 short (the plan at the end alone would
    have said 200.00, 170.00 short)."""
    code = meter(name="Calls")
    small = plan(ChargeSpec(meter=code, unit_price=D("0.10")), minimum_amount=D(100), name="S")
    large = plan(ChargeSpec(meter=code, unit_price=D("0.10")), minimum_amount=D(200), name="L")
    subscription = subscribe(small)
    use(subscription, 300, at_time=at(2026, 4, 10))
    billing.change_subscription(subscription_id=subscription.pk, plan=large, now=at(2026, 4, 16))
    invoice = close(subscription)
    assert lines(invoice)[-1] == (
        "minimum", "L — minimum of each plan version in force, per period, shortfall", D(1),
        D(120),
    )  # fmt: skip
    assert invoice.total == D(150)
    upcoming_agrees(subscription, invoice)


def test_a_change_on_the_periods_last_day_owes_one_day_of_the_new_minimum():
    """Changed on 30 April 00:00, April's last day: 29 of 30 days of 100.00 (96.666666666667)
    and 1 of 200.00 (6.666666666667): 103.333333333333 owed, presented 103.33; 300 calls =
    30.00, 73.33 short; the period is invoiced 103.33."""
    code = meter(name="Calls")
    small = plan(ChargeSpec(meter=code, unit_price=D("0.10")), minimum_amount=D(100), name="S")
    large = plan(ChargeSpec(meter=code, unit_price=D("0.10")), minimum_amount=D(200), name="L")
    subscription = subscribe(small)
    use(subscription, 300, at_time=at(2026, 4, 10))
    billing.change_subscription(subscription_id=subscription.pk, plan=large, now=at(2026, 4, 30))
    invoice = close(subscription)
    assert lines(invoice)[-1] == (
        "minimum", "L — minimum of each plan version in force, per period, shortfall", D(1),
        D("73.33"),
    )  # fmt: skip
    assert invoice.lines.get(kind="minimum").metadata["minimum"] == "103.333333333334"
    assert invoice.total == D("103.33")
    upcoming_agrees(subscription, invoice)


def test_a_charge_minimum_is_owed_by_the_part_of_the_period_its_plan_was_in_force():
    """The charge's minimum of 30.00 only on the first plan, until 11 April (10 of 30 days):
    10.00 owed; 50 calls = 5.00: 5.00 short."""
    code = meter(name="Calls")
    first = plan(ChargeSpec(meter=code, unit_price=D("0.10"), minimum_amount=D(30)), name="A")
    second = plan(ChargeSpec(meter=code, unit_price=D("0.10")), name="B")
    subscription = subscribe(first)
    use(subscription, 50, at_time=at(2026, 4, 5))
    billing.change_subscription(subscription_id=subscription.pk, plan=second, now=at(2026, 4, 11))
    invoice = close(subscription)
    assert lines(invoice)[-1] == (
        "minimum", "Calls: minimum 30 USD per period, shortfall", D(1), D(5)
    )  # fmt: skip


# --- the usage preview prices the draft's own terms ---------------------------------------------


@pytest.mark.parametrize(
    ("change", "total"),
    [
        # 20.00 of fees and usage, 80.00 short of the draft's 100.00 minimum; tax 10 %
        ({"minimum_amount": D(100)}, D("110.00")),
        # 10.00 fee + 10.00 usage + 50.00 committed − 10.00 drawn = 60.00; tax 10 %
        ({"commitment_amount": D(50)}, D("66.00")),
    ],
)
def test_a_usage_preview_uses_the_drafts_minimum_and_commitment(change, total):
    TaxRate.objects.create(name="VAT", percentage=D(10))
    pro = plan(ChargeSpec(meter=meter(), unit_price=D("0.10")), base_fee="10")
    subscription = subscribe(pro)
    use(subscription, 100)
    finalize(close(subscription))
    draft = replace(billing.plan_spec_of(pro), **change)
    [row] = preview.preview_plan_version(spec=draft).rows
    assert (row.old_total, row.new_total) == (D(22), total)


def test_an_unchanged_file_saying_half_even_publishes_no_new_version():
    """A plan published before "not said" ("") existed: half_even was the default, stored
    as half_even and left out of the spec's hash. Its pricing file says rounding: half_even;
    applied again, unchanged, it is the same plan (no version 2), and the stored half_even
    stays explicit (a currency set to half_up later does not move it). A file that then says
    half_up is a change (version 2)."""
    from billing.models import Plan
    from billing.services.plans import plan_spec_of, publish_plan

    spec = replace(
        plan_spec_of(plan(ChargeSpec(meter=meter(), unit_price=D(1)))), rounding="half_even"
    )
    published, created = publish_plan(spec=spec)
    assert created
    # as the version was stored before this change (the hash without half_even)
    Plan.objects.filter(pk=published.pk).update(spec_hash=spec.canonical_hash(legacy_rounding=True))
    again, created = publish_plan(spec=spec)
    assert (again.pk, created, again.rounding) == (published.pk, False, "half_even")
    changed, created = publish_plan(spec=replace(spec, rounding="half_up"))
    assert created and changed.version == published.version + 1
