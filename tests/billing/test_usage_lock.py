"""The usage lock (``billing.services.lock_customer_usage``) works for every customer id a
bigint column can hold: ids past 2^31 once broke it (the id was cast to ``int``)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services as billing
from billing.models import BillingMode, Customer
from invoicing import services as invoicing
from tests.billing.conftest import ChargeSpec
from tests.invoicing.conftest import IN_APRIL, PERIOD_END, START, meter, plan, use

pytestmark = pytest.mark.django_db

BIG_ID = 2**31 + 7  # one past what a PostgreSQL integer holds


def big_customer() -> Customer:
    customer = Customer.objects.create(
        pk=BIG_ID, external_id="big", name="Big Id", billing_mode=BillingMode.POSTPAID
    )
    billing.create_wallet(
        customer=customer, currency="USD", billing_mode=BillingMode.POSTPAID, credit_limit=None
    )
    return customer


def test_usage_of_a_customer_past_2_31_is_rated_changed_and_closed():
    code = meter()
    metered = plan(ChargeSpec(meter=code, unit_price=Decimal("0.10")))
    other = plan(ChargeSpec(meter=code, unit_price=Decimal("0.20")))
    customer = big_customer()
    subscription = billing.create_subscription(
        customer=customer, plan=metered, start=START, now=START
    )
    billing.lock_customer_usage([BIG_ID, 1])  # two ids either side of 2^31, one statement
    assert use(subscription, 10).status == "accepted"
    billing.change_subscription(subscription_id=subscription.pk, plan=other, now=IN_APRIL)
    result = invoicing.close_period(subscription_id=subscription.pk, as_of=PERIOD_END)
    assert result is not None and result.created
    assert result.invoice.customer_id == BIG_ID
    assert billing.lock_subscription_customer(subscription.pk) == BIG_ID
