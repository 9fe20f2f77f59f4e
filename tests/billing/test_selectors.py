"""Reads of the commercial core that the admin's customer pages show."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import credits, selectors, services
from billing.models import Customer
from billing.selectors import WalletChange
from tests.conftest import unique
from tests.factories import MeterFactory, PlanFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def plan():
    meter = MeterFactory(code=unique("m"), aggregation="count")
    return PlanFactory(
        code=unique("pro"),
        name="Pro",
        charges=(services.ChargeSpec(meter=meter.code, unit_price=Decimal("0.01")),),
    )


def test_recent_activity_is_latest_first_in_the_wallets_direction():
    customer = services.create_customer(external_id=unique("acme"), name="Acme")
    other = services.create_customer(external_id=unique("other"), name="Other")
    top_up = services.top_up(customer=customer, amount=Decimal("100"))
    services.top_up(customer=other, amount=Decimal("1"))
    adjustment = services.adjust_balance(
        customer=customer, amount=Decimal("-12.345678"), reason="correction", staff_user_id=None
    )

    activity = selectors.customer_recent_activity(customer, limit=20)

    # Only the customer's own account is shown, not the counterparty: money in is positive.
    assert [(a.transaction.pk, a.changes) for a in activity] == [
        (adjustment.pk, [WalletChange(amount=Decimal("-12.345678"), currency="USD")]),
        (top_up.pk, [WalletChange(amount=Decimal("100"), currency="USD")]),
    ]
    assert [a.transaction.pk for a in selectors.customer_recent_activity(customer, limit=1)] == [
        adjustment.pk
    ]


def test_customers_carry_their_available_balance_and_live_plan(plan):
    subscribed = services.create_customer(external_id=unique("a"), name="A")
    canceled = services.create_customer(external_id=unique("b"), name="B")
    services.top_up(customer=subscribed, amount=Decimal("30"))
    services.create_subscription(customer=subscribed, plan=plan)
    gone = services.create_subscription(customer=canceled, plan=plan)
    services.cancel_subscription(subscription_id=gone.pk, at_period_end=False)

    euros = services.create_customer(external_id=unique("c"), name="C", currency="EUR")
    # Another wallet of the customer (credits) is not its available balance.
    credits.grant_credits(customer=subscribed, amount=Decimal("5"), source="promotional")

    rows = selectors.with_available_and_live_plan(
        Customer.objects.filter(pk__in=[subscribed.pk, canceled.pk, euros.pk]).order_by("id")
    )

    assert [(c.wallet_available, c.live_plan_label) for c in rows] == [
        (Decimal("30"), f"{plan.code} v1 (active)"),
        (Decimal("0"), None),
        (Decimal("0"), None),
    ]
