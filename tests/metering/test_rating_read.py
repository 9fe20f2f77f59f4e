"""How rating talks to PostgreSQL on a single event's path (metering.rating.sql, .read):
arrays sent as their text read back as themselves, one cursor per connection, and the part's
read decoded from its JSON document into exact values."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection

from billing.models import Customer, Subscription
from metering.rating import read as rating_read
from metering.rating import sql as rating_sql

pytestmark = pytest.mark.django_db

AWKWARD = [
    'quote " and back \\ slash',
    "comma, {brace} and }",
    "NULL",
    "",
    " spaces around ",
    "ü € 日本 \t tab\nnew line",
    "\\",
    '"',
]


def test_array_texts_read_back_as_the_arrays_themselves():
    """What the read's ``::text[]`` and ``::bigint[]`` casts make of ``_text_array`` and
    ``_numeric_array``: every string as itself (quotes, backslashes, commas, braces, ``NULL``,
    the empty string), every integer, an empty array empty."""
    ((texts, ints, empty_texts, empty_ints),) = rating_sql.execute_bound(
        "SELECT %s::text[], %s::bigint[], %s::text[], %s::bigint[]",
        [
            rating_sql._text_array(AWKWARD),
            rating_sql._numeric_array([1, -2, 2**62, 0]),
            rating_sql._text_array([]),
            rating_sql._numeric_array([]),
        ],
    )
    assert texts == AWKWARD
    assert ints == [1, -2, 2**62, 0]
    assert empty_texts == [] and empty_ints == []


@pytest.mark.django_db(transaction=True)
def test_one_cursor_per_connection_and_a_new_one_after_reconnecting():
    """execute_bound keeps its cursor for the connection's life; once Django has closed the
    connection and opened another, a cursor of the new one is made."""
    connection.ensure_connection()
    first = rating_sql._cursor(connection.connection)
    assert rating_sql._cursor(connection.connection) is first
    assert rating_sql.execute_bound("SELECT %s::int", [7]) == [(7,)]
    assert rating_sql._cursor(connection.connection) is first
    connection.close()
    assert rating_sql.execute_bound("SELECT %s::int", [8]) == [(8,)]
    assert rating_sql._cursor(connection.connection) is not first


def test_the_part_document_decodes_exact_values():
    """The read's JSON document: decimals exactly as stored (their scale kept), times as
    aware datetimes, NULLs where a column allows them; a value of another type refuses."""
    document = (
        '[[[5, 3, 2, "active", "2026-04-01T00:00:00+00:00", "2026-04-01T00:00:00+00:00",'
        ' "2026-04-01T00:00:00+00:00", "2026-05-01T00:00:00+00:00", null, null, false,'
        ' ["2026-04-01T00:00:00+00:00"], [2]]],'
        ' [[9, 3, "k", 0.001309680000, "USD", null, 0E-12, ""]],'
        ' [[3, "USD", 11, "prepaid", null, 12.500000000000, 0.000000000000, 0E-12,'
        " false, false]],"
        " [[3, null, 12.5000]],"
        ' [[5, 1, "2026-04-01T05:30:00+05:30", "2026-05-01T00:00:00+00:00",'
        ' 78802.000000000000, 0.081922080000000000000000, 0.081922080000, "USD", 32, null]],'
        ' [[5, 4, "2026-04-01T00:00:00+00:00", "{\\"model\\":\\"x\\"}"]],'
        " [101],"
        ' [["tokens:3", "TOKENS", 17]]]'
    )
    decoded = rating_read._PART_DOCUMENT.decode(document)
    subs, twins, wallets, margins, counters, seen, ids, accounts = decoded
    assert subs[0][4] == datetime(2026, 4, 1, tzinfo=UTC) and subs[0][8] is None
    assert str(twins[0][3]) == "0.001309680000" and str(twins[0][6]) == "0E-12"
    assert wallets[0][4] is None and str(wallets[0][5]) == "12.500000000000"
    assert margins == [(3, None, Decimal("12.5000"))]
    assert str(margins[0][2]) == "12.5000"
    assert counters[0][2] == datetime(2026, 4, 1, tzinfo=UTC)
    assert str(counters[0][5]) == "0.081922080000000000000000"
    assert seen == [(5, 4, datetime(2026, 4, 1, tzinfo=UTC), '{"model":"x"}')]
    assert ids == [101]
    assert accounts == [("tokens:3", "TOKENS", 17)]
    with pytest.raises(rating_read.msgspec.ValidationError):
        rating_read._PART_DOCUMENT.decode(document.replace('"active"', "null"))


def test_loaded_instances_keep_their_fields_whatever_the_order():
    """``_loaded`` builds an instance from named values in any order (``Model.from_db``
    wants them in the model's field order): each field gets its own value, the others are
    deferred."""
    names = ("status", "id", "cancel_at_period_end", "invoiced_through", "customer_id")
    at = datetime(2026, 4, 1, tzinfo=UTC)
    subscription = rating_read._loaded(Subscription, names, ["active", 5, True, at, 3])
    assert (subscription.pk, subscription.customer_id, subscription.status) == (5, 3, "active")
    assert subscription.cancel_at_period_end is True and subscription.invoiced_through == at
    assert "plan_id" in subscription.get_deferred_fields()
    assert not subscription._state.adding
    customer = rating_read._loaded(
        Customer, rating_read.CUSTOMER_FIELDS, [1, "x", "X", "USD", "prepaid"]
    )
    assert (customer.external_id, customer.currency, customer.billing_mode) == (
        "x",
        "USD",
        "prepaid",
    )


def test_loaded_instances_are_what_from_db_builds():
    """``_loaded`` puts the values straight into the instance: the same fields, values,
    deferred fields and state as ``Model.from_db`` gives (what a queryset's ``.only()``
    builds), a deferred field still read from the database when asked for."""
    names = rating_read.SUBSCRIPTION_FIELDS
    at = datetime(2026, 4, 1, tzinfo=UTC)
    values = [5, 3, 7, "active", at, at, at, at, None, None, False]
    fast = rating_read._loaded(Subscription, names, values)
    order = rating_read._field_order(Subscription, names)
    slow = Subscription.from_db("default", names, [values[i] for i in order])
    assert {k: v for k, v in fast.__dict__.items() if k != "_state"} == {
        k: v for k, v in slow.__dict__.items() if k != "_state"
    }
    assert fast.get_deferred_fields() == slow.get_deferred_fields()
    assert (fast._state.adding, fast._state.db) == (slow._state.adding, slow._state.db)
    assert fast == slow


def test_loaded_instances_run_init_when_someone_listens():
    """A receiver of the model's init signals gets its call: ``_loaded`` builds the
    instance by ``Model.from_db`` then, as a queryset would."""
    from django.db.models.signals import post_init

    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance)

    post_init.connect(receiver, sender=Customer)
    try:
        customer = rating_read._loaded(
            Customer, rating_read.CUSTOMER_FIELDS, [1, "x", "X", "USD", "prepaid"]
        )
    finally:
        post_init.disconnect(receiver, sender=Customer)
    assert seen == [customer] and customer.external_id == "x"
    assert (
        rating_read._loaded(
            Customer, rating_read.CUSTOMER_FIELDS, [2, "y", "Y", "USD", "prepaid"]
        ).external_id
        == "y"
    )
    assert len(seen) == 1


def test_a_model_with_its_own_from_db_builds_its_instances(monkeypatch):
    """A model that builds its instances its own way (its own ``from_db``) is not built
    straight into ``__dict__`` by ``_loaded``: its ``from_db`` builds them."""
    from django.db.models import Model

    built = []
    django_from_db = Model.from_db.__func__

    def own_from_db(cls, db, field_names, values):
        instance = django_from_db(cls, db, field_names, values)
        built.append(instance)
        return instance

    rating_read._django_built.cache_clear()
    monkeypatch.setattr(Customer, "from_db", classmethod(own_from_db))
    try:
        customer = rating_read._loaded(
            Customer, rating_read.CUSTOMER_FIELDS, [3, "z", "Z", "USD", "prepaid"]
        )
    finally:
        rating_read._django_built.cache_clear()  # the patch is undone after the test
    assert built == [customer] and customer.external_id == "z"
