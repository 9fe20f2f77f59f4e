"""The transactional outbox (billing.outbox): an event exists exactly when its change
committed, and a dedupe key records an occurrence once."""

from __future__ import annotations

import pytest
from django.db import transaction

from billing import outbox
from billing.models import EventType, OutboundEvent
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_event_is_recorded_with_its_type_customer_and_data():
    customer = CustomerFactory()
    event = outbox.emit(EventType.CREDITS_GRANTED, customer=customer, data={"amount": "10"})
    assert event is not None
    stored = OutboundEvent.objects.get(pk=event.pk)
    assert stored.public_id.startswith("evt_") and len(stored.public_id) == 36
    assert (stored.type, stored.customer_id, stored.data) == (
        "credits.granted",
        customer.pk,
        {"amount": "10"},
    )


def test_a_dedupe_key_records_the_occurrence_once_and_keeps_the_transaction_usable():
    with transaction.atomic():
        first = outbox.emit(EventType.INVOICE_PAID, data={"id": "inv_1"}, dedupe_key="k:inv_1")
        second = outbox.emit(EventType.INVOICE_PAID, data={"id": "inv_1"}, dedupe_key="k:inv_1")
        # The duplicate rolled back its savepoint only: the transaction goes on.
        after = outbox.emit(EventType.INVOICE_PAID, data={"id": "inv_2"}, dedupe_key="k:inv_2")
    assert first is not None and second is None and after is not None
    assert OutboundEvent.objects.filter(dedupe_key__in=["k:inv_1", "k:inv_2"]).count() == 2


def test_an_event_of_a_rolled_back_change_does_not_exist():
    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        outbox.emit(EventType.INVOICE_PAID, data={"id": "x"}, dedupe_key="k:rolled-back")
        raise Boom
    assert not OutboundEvent.objects.filter(dedupe_key="k:rolled-back").exists()


def test_an_unknown_type_is_refused():
    with pytest.raises(ValueError):
        outbox.emit("invoice.exploded", data={})
