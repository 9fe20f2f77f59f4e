"""Service-level rules of the commercial core that the API and admin tests rely on."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import DatabaseError, transaction

from billing import errors, services
from billing.models import APIKey, Meter
from tests.conftest import unique
from tests.factories import MeterFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def meter():
    return MeterFactory(code=unique("m"), property="usage.output_tokens")


@pytest.mark.parametrize("metadata", [None, {}])
def test_republishing_a_plan_read_back_is_unchanged(meter, metadata):
    spec = services.PlanSpec(
        code=unique("plan"),
        name="Pro",
        base_fee=Decimal("49.00"),
        metadata=metadata,
        charges=(services.ChargeSpec(meter=meter.code, unit_price=Decimal("0.000002")),),
    )
    plan, created = services.publish_plan(spec=spec)
    assert created
    again, created_again = services.publish_plan(spec=services.plan_spec_of(plan))
    assert (again.pk, created_again) == (plan.pk, False)


def test_update_customer_changes_only_descriptive_fields():
    customer = services.create_customer(external_id=unique("c"), name="Acme")
    updated = services.update_customer(customer=customer, name="Acme Inc", city="Berlin")
    assert (updated.name, updated.city) == ("Acme Inc", "Berlin")
    with pytest.raises(errors.ValidationFailed) as caught:
        services.update_customer(customer=customer, currency="EUR")
    assert caught.value.param == "currency"


def test_revoking_twice_keeps_the_first_time():
    key, _ = services.create_api_key(name="k", scopes=["read"])
    first = services.revoke_api_key(api_key=key).revoked_at
    assert first is not None
    stale = APIKey.objects.get(pk=key.pk)
    assert services.revoke_api_key(api_key=stale).revoked_at == first


def test_top_up_records_the_staff_user():
    customer = services.create_customer(external_id=unique("c"), name="Acme")
    posted = services.top_up(customer=customer, amount=Decimal("5"), staff_user_id=7)
    assert posted.metadata["staff_user_id"] == 7


@pytest.mark.parametrize(
    "change",
    [
        {"event_name": "other.event"},
        {"aggregation": "max"},
        {"property": "llm.input_tokens"},
        {"filters": {"tier": ["pro"]}},
        {"group_by": ["model"]},
        {"code": "renamed-code"},
    ],
)
def test_a_meters_definition_is_fixed_by_the_database(change):
    """Rating caches meters per process and sees only added ones (billing 0008): whatever
    path tries to redefine a meter — the ORM here, raw SQL, a data migration — is refused.
    Its name and unit still change."""
    meter = MeterFactory()
    with pytest.raises(DatabaseError, match="its definition is fixed once created"):
        with transaction.atomic():
            Meter.objects.filter(pk=meter.pk).update(**change)
    Meter.objects.filter(pk=meter.pk).update(name="Output tokens", unit="tok")
    meter.refresh_from_db()
    assert (meter.name, meter.unit, meter.event_name, meter.filters) == (
        "Output tokens",
        "tok",
        "llm.completion",
        {},
    )
