"""An event's customer, subscription, model price and project exist, enforced by PostgreSQL
without per-row foreign keys (metering migration 0015): one statement-level check refuses an
insert naming a missing row, and row triggers on the referenced tables refuse deleting or
re-keying a row events refer to — both with a foreign-key violation (SQLSTATE 23503, an
IntegrityError), as the keys did. Deletes here are raw SQL: Django's PROTECT would refuse
first in Python, and the rule must hold whoever writes the SQL."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import IntegrityError, connection, connections, transaction

from billing.models import Customer, Project
from metering.models import Event, ModelPrice
from tests.factories import ModelPriceFactory, SubscriptionFactory
from tests.metering.test_rating import DAY

MISSING = 2_000_000_000


def event(key: str, **refs) -> Event:
    return Event(idempotency_key=key, event_name="api.call", timestamp=DAY, properties={}, **refs)


def refused(sql_or_callable, *params) -> IntegrityError:
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        if callable(sql_or_callable):
            sql_or_callable()
        else:
            with connection.cursor() as cursor:
                cursor.execute(sql_or_callable, params)
    assert caught.value.__cause__.sqlstate == "23503"
    return caught.value


@pytest.fixture
def referenced(db):
    """An event referring to a customer, its subscription, a model price and a project."""
    subscription = SubscriptionFactory()
    customer = subscription.customer
    price = ModelPriceFactory()
    project = Project.objects.create(customer=customer, key="chat")
    Event.objects.bulk_create(
        [
            event(
                "e1",
                customer=customer,
                subscription=subscription,
                model_price=price,
                project=project,
            )
        ]
    )
    return customer, subscription, price, project


@pytest.mark.parametrize(
    "reference", ["customer_id", "subscription_id", "model_price_id", "project_id"]
)
def test_an_insert_naming_a_missing_row_is_refused_and_writes_nothing(referenced, reference):
    customer, subscription, price, project = referenced
    refs = {
        "customer_id": customer.pk,
        "subscription_id": subscription.pk,
        "model_price_id": price.pk,
        "project_id": project.pk,
    }
    good = event("good", **refs)
    bad = event("bad", **{**refs, reference: MISSING})
    error = refused(lambda: Event.objects.bulk_create([good, bad]))
    assert f"({reference})=({MISSING})" in str(error.__cause__.diag.message_detail)
    assert list(Event.objects.values_list("idempotency_key", flat=True)) == ["e1"]
    # the same rows without the bad one are accepted
    Event.objects.bulk_create([event("good", **refs)])
    assert Event.objects.count() == 2


@pytest.mark.parametrize(
    "table, pick",
    [
        ("billing_customer", lambda c, s, m, p: c.pk),
        ("billing_subscription", lambda c, s, m, p: s.pk),
        ("metering_modelprice", lambda c, s, m, p: m.pk),
        ("billing_project", lambda c, s, m, p: p.pk),
    ],
)
def test_deleting_or_rekeying_a_row_events_refer_to_is_refused(referenced, table, pick):
    key = pick(*referenced)
    error = refused(f"DELETE FROM {table} WHERE id = %s", key)
    assert "metering_event" in str(error)
    refused(f"UPDATE {table} SET id = %s WHERE id = %s", MISSING, key)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table} WHERE id = %s", [key])
        assert cursor.fetchone()[0] == 1


def test_a_model_price_no_event_refers_to_can_be_deleted_and_other_updates_pass(referenced):
    customer, _, used, _ = referenced
    unused = ModelPriceFactory()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE metering_modelprice SET notes = 'x' WHERE id = %s", [used.pk])
        cursor.execute("UPDATE billing_customer SET name = 'Renamed' WHERE id = %s", [customer.pk])
        cursor.execute("DELETE FROM metering_modelprice WHERE id = %s", [unused.pk])
    assert list(ModelPrice.objects.values_list("pk", flat=True)) == [used.pk]
    assert Customer.objects.get(pk=customer.pk).name == "Renamed"


# --- concurrency: two connections, committing for real ----------------------------------


def waiting_on_a_lock(pid: int, *, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
            row = cursor.fetchone()
            if row and row[0] == "Lock":
                return True
            time.sleep(0.02)
    return False


class Other(threading.Thread):
    """Runs ``work`` on its own connection inside one transaction; commits (or rolls back)
    when told."""

    def __init__(self, work, *, commit: bool = True) -> None:
        super().__init__(daemon=True)
        self.work, self.commit = work, commit
        self.pid: int | None = None
        self.done_work = threading.Event()
        self.finish = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = connections["default"]
            with transaction.atomic():
                with conn.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    self.pid = cursor.fetchone()[0]
                self.work()
                self.done_work.set()
                self.finish.wait(20)
                if not self.commit:
                    transaction.set_rollback(True)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            self.error = error
        finally:
            self.done_work.set()
            connections["default"].close()


def setup_rows():
    subscription = SubscriptionFactory()
    return subscription.customer, ModelPriceFactory()


def delete_price(price_id: int) -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("DELETE FROM metering_modelprice WHERE id = %s", [price_id])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("inserter_commits", [True, False])
def test_a_delete_waits_for_an_uncommitted_event_and_is_refused_once_it_commits(
    inserter_commits,
):
    customer, price = setup_rows()
    inserter = Other(
        lambda: Event.objects.bulk_create([event("e", customer=customer, model_price=price)]),
        commit=inserter_commits,
    )
    inserter.start()
    assert inserter.done_work.wait(10) and inserter.error is None
    deleter = Other(lambda: delete_price(price.pk))
    deleter.start()
    assert waiting_on_a_lock(_pid_of(deleter))
    inserter.finish.set()
    inserter.join(10)
    deleter.finish.set()
    deleter.join(10)
    if inserter_commits:
        assert isinstance(deleter.error, IntegrityError)
        assert ModelPrice.objects.filter(pk=price.pk).exists()
        assert Event.objects.filter(model_price=price).count() == 1
    else:
        assert deleter.error is None
        assert not ModelPrice.objects.filter(pk=price.pk).exists()
        assert not Event.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("deleter_commits", [True, False])
def test_an_event_waits_for_an_uncommitted_delete_and_is_refused_once_it_commits(
    deleter_commits,
):
    customer, price = setup_rows()
    deleter = Other(lambda: delete_price(price.pk), commit=deleter_commits)
    deleter.start()
    assert deleter.done_work.wait(10) and deleter.error is None
    inserter = Other(
        lambda: Event.objects.bulk_create([event("e", customer=customer, model_price=price)])
    )
    inserter.start()
    assert waiting_on_a_lock(_pid_of(inserter))
    deleter.finish.set()
    deleter.join(10)
    inserter.finish.set()
    inserter.join(10)
    if deleter_commits:
        assert isinstance(inserter.error, IntegrityError)
        assert inserter.error.__cause__.sqlstate == "23503"
        assert not Event.objects.exists()
    else:
        assert inserter.error is None
        assert Event.objects.filter(model_price=price).count() == 1


def _pid_of(thread: Other, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while thread.pid is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread.pid is not None
    return thread.pid
