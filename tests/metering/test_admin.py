"""The metering side of the finance admin: the model price catalog (add a model or a new
price version; a saved version's prices cannot change), events, counters and margins, and
a customer's margin override."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import MarginOverride
from billing.services import ChargeSpec
from metering import catalog
from metering.models import ModelPrice, ModelUsage
from metering.rating import EventIn, ingest_events
from tests.conftest import unique
from tests.factories import CustomerFactory, MeterFactory, PlanFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("finance", "f@x.test", None))
    return client


@pytest.fixture
def rated(model_prices):
    """A pay-as-you-go customer with one rated gpt-4o call (margin 20 %)."""
    meter = MeterFactory(code=unique("in"), property="llm.input_tokens", group_by=["model"])
    plan = PlanFactory(
        code=unique("payg"),
        name="PAYG",
        consumption_model="balance",
        charges=(ChargeSpec(meter=meter.code, margin_percent=Decimal(20)),),
    )
    customer = CustomerFactory(name="Acme", funds=10)
    SubscriptionFactory(customer=customer, plan=plan)
    [outcome] = ingest_events(
        [
            EventIn(
                unique("k"),
                customer.external_id,
                "llm.completion",
                timezone.now(),
                {"model": "gpt-4o", "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 0}},
            )
        ]
    )
    assert outcome.status == "accepted"
    return customer, meter, outcome


def test_metering_pages_render(staff_client, rated):
    customer, _, outcome = rated
    for name in (
        "metering_modelprice",
        "metering_event",
        "metering_periodusage",
        "metering_modelusage",
    ):
        page = staff_client.get(reverse(f"admin:{name}_changelist"))
        assert page.status_code == 200, name
    events = staff_client.get(reverse("admin:metering_event_changelist")).content.decode()
    # the event links to the ledger transaction it became
    assert (
        reverse("admin:ledger_transaction_change", args=[outcome.event["ledger_transaction_id"]])
        in events
    )
    page = staff_client.get(reverse("admin:metering_event_change", args=[outcome.event["id"]]))
    assert page.status_code == 200


def test_model_usage_shows_the_margin(staff_client, rated):
    customer, _, _ = rated
    row = ModelUsage.objects.get(customer=customer)
    # 1M uncached input tokens of gpt-4o: cost 2.50 $, charged +20 % = 3.00 $
    assert (row.cost, row.amount) == (Decimal("2.5"), Decimal("3"))
    page = staff_client.get(reverse("admin:metering_modelusage_changelist")).content.decode()
    # rounded to cents, the exact margin on hover
    assert '<span class="money" title="0.5 USD (exact)">0.50 USD</span>' in page


def test_adding_a_model_price_makes_it_usable_at_once(staff_client, model_prices):
    assert catalog.catalog().resolve("mistral", "my-finetune") is None
    response = staff_client.post(
        reverse("admin:metering_modelprice_add"),
        {
            "provider": "mistral",
            "model": "my-finetune",
            "name": "Our fine-tune",
            "effective_from_0": "2020-01-01",
            "effective_from_1": "00:00:00",
            "input_mtok": "0.4",
            "output_mtok": "1.2",
            "tiers": "[]",
            "match": "{}",
            "position": "0",
            "notes": "",
        },
    )
    assert response.status_code == 302, response.context and response.context["errors"]
    row = ModelPrice.objects.get(provider="mistral", model="my-finetune")
    assert row.source == "manual"
    price = catalog.find_price(provider="mistral", model="my-finetune", at=datetime.now(UTC))
    assert price.pk == row.pk and price.output_mtok == Decimal("1.2")


def test_a_saved_price_version_cannot_be_edited_or_deleted(staff_client, model_prices):
    row = model_prices["gpt-4o"]
    page = staff_client.get(reverse("admin:metering_modelprice_change", args=[row.pk]))
    html = page.content.decode()
    assert 'name="input_mtok"' not in html and 'name="notes"' in html
    staff_client.post(
        reverse("admin:metering_modelprice_change", args=[row.pk]),
        {"name": "", "match": "{}", "position": "0", "notes": "checked", "input_mtok": "99"},
    )
    row.refresh_from_db()
    assert row.input_mtok == Decimal("2.5") and row.notes == "checked"
    response = staff_client.post(
        reverse("admin:metering_modelprice_delete", args=[row.pk]), {"post": "yes"}
    )
    assert response.status_code == 403
    assert ModelPrice.objects.filter(pk=row.pk).exists()


def test_a_margin_override_on_the_customer_page_reprices_usage(staff_client, rated):
    customer, meter, _ = rated
    form = {
        "name": customer.name,
        "email": "",
        "tax_id": "",
        "metadata": "{}",
        "address_line1": "",
        "address_line2": "",
        "city": "",
        "state": "",
        "postal_code": "",
        "country": "",
        "wallets-TOTAL_FORMS": "0",
        "wallets-INITIAL_FORMS": "0",
        "subscriptions-TOTAL_FORMS": "0",
        "subscriptions-INITIAL_FORMS": "0",
        "members-TOTAL_FORMS": "0",
        "members-INITIAL_FORMS": "0",
        "margins-TOTAL_FORMS": "1",
        "margins-INITIAL_FORMS": "0",
        "margins-0-meter": str(meter.pk),
        "margins-0-margin_percent": "50",
    }
    response = staff_client.post(reverse("admin:billing_customer_change", args=[customer.pk]), form)
    assert response.status_code == 302, response.context and response.context["errors"]
    assert MarginOverride.objects.get(customer=customer).margin_percent == Decimal(50)
    [outcome] = ingest_events(
        [
            EventIn(
                unique("k"),
                customer.external_id,
                "llm.completion",
                timezone.now(),
                {"model": "gpt-4o", "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 0}},
            )
        ]
    )
    assert outcome.event["amount"] == Decimal("3.75")  # 2.50 $ + 50 %
