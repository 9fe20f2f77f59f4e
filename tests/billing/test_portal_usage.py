"""The portal's usage page data (/portal/usage/data): amounts in the unit the customer is
charged in (CREDITS on a credits plan, never shown as USD), and a by-model table whose
rows — with an "other usage" row for usage that is not an LLM model's — add up to the total
shown above them, to the cent (largest remainder)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from billing import services
from billing.models import Customer
from billing.portal import services as portal
from billing.services import ChargeSpec
from metering import rating
from tests.conftest import unique
from tests.factories import CustomerFactory, MeterFactory, PlanFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db
D = Decimal


def member_client(customer: Customer) -> Client:
    member = portal.invite_member(customer=customer, email=f"{unique('m')}@example.com")
    client = Client()
    client.force_login(member.user)
    return client


def llm(customer: Customer, key: str, model: str, output_tokens: int, now) -> None:
    outcome = rating.ingest_events(
        [
            rating.EventIn(
                idempotency_key=key,
                customer=customer.external_id,
                event_name="llm.completion",
                timestamp=now - timedelta(minutes=5),
                properties={
                    "model": model,
                    "provider": "openai",
                    "usage": {"prompt_tokens": 0, "completion_tokens": output_tokens},
                },
            )
        ],
        now=now,
    )[0]
    assert outcome.status == "accepted", outcome.error


def call(customer: Customer, key: str, units: int, now) -> None:
    outcome = rating.ingest_events(
        [
            rating.EventIn(
                idempotency_key=key,
                customer=customer.external_id,
                event_name="api.call",
                timestamp=now - timedelta(minutes=5),
                properties={"units": units},
            )
        ],
        now=now,
    )[0]
    assert outcome.status == "accepted", outcome.error


def subscribed(spec_kw: dict, *charges: ChargeSpec, funds: str | None = "10") -> Customer:
    customer = CustomerFactory(name="Hooli")
    the_plan = PlanFactory(charges=charges, **spec_kw)
    SubscriptionFactory(customer=customer, plan=the_plan, start=timezone.now() - timedelta(days=2))
    if funds:
        currency = "CREDITS" if spec_kw.get("consumption_model") == "credits" else "USD"
        services.ensure_wallet(customer=customer, currency=currency)
        services.top_up(customer=customer, amount=D(funds), currency=currency)
    return customer


@pytest.fixture
def meters(db, model_prices):
    tokens = MeterFactory(code=unique("out"))
    calls = MeterFactory(code=unique("calls"), api_call=True)
    return tokens.code, calls.code


def shown_sum(rows: list[dict], unit: str) -> Decimal:
    total = D(0)
    for row in rows:
        number, row_unit = row["amount"].rsplit(" ", 1)
        assert row_unit.lower() == unit.lower(), row
        total += D(number.replace(",", ""))
    return total


def test_a_credits_customer_sees_credits_not_usd(meters):
    tokens, calls = meters
    customer = subscribed(
        {"consumption_model": "credits", "units_per_credit": D(1000)},
        ChargeSpec(meter=tokens),
        funds="500",
    )
    now = timezone.now()
    llm(customer, "a", "gpt-4o", 2500, now)  # 2.5 credits
    data = member_client(customer).get("/portal/usage/data").json()
    assert data["currency"] == "CREDITS"  # the axis and tooltips say credits
    assert [row["amount"] for row in data["totals"]] == ["2.5 credits"]
    assert data["total"] == "2.5 credits"
    assert [D(day["amount"]) for day in data["days"]] == [D("2.5")]
    assert "USD" not in str(data)


def test_the_model_rows_add_up_to_the_total_shown(meters):
    tokens, calls = meters
    customer = subscribed(
        {},
        ChargeSpec(meter=tokens, unit_price=D("0.000005")),  # 5 USD per million output tokens
        ChargeSpec(meter=calls, unit_price=D("0.25")),
    )
    now = timezone.now()
    llm(customer, "a", "gpt-4o", 1000, now)  # 0.005
    llm(customer, "b", "gpt-4o-mini", 1000, now)  # 0.005
    call(customer, "c", 1, now)  # 0.25, not an LLM model's
    data = member_client(customer).get("/portal/usage/data").json()
    # 0.265 shown half-even as 0.26; each 0.005 alone would show 0.00 (0.25 in all)
    assert data["total"] == "0.26 USD"
    assert shown_sum(data["totals"], "USD") == D("0.26")
    assert [row["model"] for row in data["totals"]][-1] == "Other usage"
    assert sorted(row["amount"] for row in data["totals"]) == ["0.00 USD", "0.01 USD", "0.25 USD"]


def test_no_usage_yet(meters):
    tokens, _ = meters
    customer = subscribed({}, ChargeSpec(meter=tokens, unit_price=D("0.000005")))
    data = member_client(customer).get("/portal/usage/data").json()
    assert (data["totals"], data["days"], data["total"]) == ([], [], "0.00 USD")
