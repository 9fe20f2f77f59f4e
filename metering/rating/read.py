"""What rating reads from the database: customers with their live subscription
(``load_customers``, ``_find_customers`` with the meters' stamp and the rating locks), the
one statement that reads a part's subscriptions, stored twins, wallets, margins, counters,
the distinct values its events would count that their periods have counted already, event
ids and the usage accounts this process has not cached, under its customers' locks
(``_read_part``), and the smaller reads of counters,
wallets and meters that estimates and late events need."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models import Model
from django.db.models.base import ModelState
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute
from django.db.models.signals import post_init, pre_init

from billing.models import (
    Customer,
    Meter,
    Subscription,
)
from ledger import services as ledger
from metering.rating.prepare import Prepared, _meter_from_row
from metering.rating.price import Counter, _distinct_keys
from metering.rating.sql import RATING_SETTINGS, _numeric_array, _text_array, execute_bound

CUSTOMER_FIELDS = ("id", "external_id", "name", "currency", "billing_mode")
SUBSCRIPTION_FIELDS = (
    "id",
    "customer_id",
    "plan_id",
    "status",
    "started_at",
    "billing_anchor",
    "current_period_start",
    "current_period_end",
    "trial_ends_at",
    "invoiced_through",
    "cancel_at_period_end",
)


def load_customers(
    *, external_ids: Iterable[str] = (), ids: Iterable[int] = ()
) -> dict[str, tuple[Customer, Subscription | None]]:
    """Customers with their live subscription and its plan phases, in one query (the hot
    path of every estimate): external_id → (customer, subscription or None).
    The objects carry only what rating reads; ``subscription.phase_starts`` lists
    (starts_at, plan_id) by start."""
    external_ids, ids = list(external_ids), list(ids)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.id, c.external_id, c.name, c.currency, c.billing_mode, "
            "s.id, s.customer_id, s.plan_id, s.status, s.started_at, s.billing_anchor, "
            "s.current_period_start, s.current_period_end, s.trial_ends_at, s.invoiced_through, "
            "s.cancel_at_period_end, "
            "(SELECT array_agg(ph.starts_at ORDER BY ph.starts_at, ph.id) "
            "   FROM billing_subscriptionphase ph WHERE ph.subscription_id = s.id), "
            "(SELECT array_agg(ph.plan_id ORDER BY ph.starts_at, ph.id) "
            "   FROM billing_subscriptionphase ph WHERE ph.subscription_id = s.id) "
            "FROM billing_customer c LEFT JOIN billing_subscription s "
            "  ON s.customer_id = c.id AND s.status <> 'canceled' "
            "WHERE c.external_id = ANY(%s) OR c.id = ANY(%s)",
            [external_ids, ids],
        )
        found = {}
        for row in cursor.fetchall():
            customer = Customer(**dict(zip(CUSTOMER_FIELDS, row[:5], strict=True)))
            subscription = None
            if row[5] is not None:
                subscription = Subscription(
                    **dict(zip(SUBSCRIPTION_FIELDS, row[5:16], strict=True))
                )
                subscription.phase_starts = list(  # type: ignore[attr-defined]
                    zip(row[16] or [], row[17] or [], strict=True)
                )
            found[customer.external_id] = (customer, subscription)
        return found


M = TypeVar("M", bound=Model)


def _loaded(model: type[M], names: tuple[str, ...], values: Sequence[Any]) -> M:
    """An instance of ``model`` as the database gave it, only the fields (attnames)
    ``names`` loaded, the others deferred (read from the database if ever asked for), as
    ``Model.from_db`` builds it for a queryset's ``.only()``: ``_loader``'s, for one."""
    return _loader(model, names)(values)


def _loader(model: type[M], names: tuple[str, ...]) -> Callable[[Sequence[Any]], M]:
    """What builds ``_loaded``'s instances of ``model`` from values of ``names``, for the
    rows of one read: their values put straight into each instance's ``__dict__``, without
    ``Model.__init__``'s walk over every field and its signals (a part builds about 100
    customers and 100 subscriptions: ``from_db`` was 5 % of a batch's profile, this a
    fifth of that). ``_plain_fields`` checks that nothing ``__init__`` would have run is
    skipped; otherwise ``from_db`` builds them."""
    if not _plain_fields(model, names):
        order = _field_order(model, names)

        def by_init(values: Sequence[Any]) -> M:
            return model.from_db(DEFAULT_DB_ALIAS, names, [values[i] for i in order])

        return by_init
    new, update = model.__new__, dict.update

    def load(values: Sequence[Any]) -> M:
        instance = new(model)
        state = instance._state = ModelState()
        state.adding = False
        state.db = DEFAULT_DB_ALIAS
        update(instance.__dict__, zip(names, values, strict=True))
        return instance

    return load


@functools.cache
def _field_order(model: type[Model], names: tuple[str, ...]) -> tuple[int, ...]:
    position = {f.attname: n for n, f in enumerate(model._meta.concrete_fields)}
    return tuple(sorted(range(len(names)), key=lambda i: position[names[i]]))


def _plain_fields(model: type[Model], names: tuple[str, ...]) -> bool:
    """Whether ``Model.__init__`` would do no more for ``names`` than set each attribute's
    value: nobody listens to the model's init signals, and each name is a concrete field
    whose class attribute is Django's deferred-field descriptor (a foreign key's clears only
    a cached related object, which a new instance has not). Asked for each instance, not
    cached: a receiver may be connected later (a test's)."""
    if pre_init.has_listeners(model) or post_init.has_listeners(model):
        return False
    return _django_built(model) and _deferred_attributes(model, names)


@functools.cache
def _django_built(model: type[Model]) -> bool:
    """The model builds its instances with Django's own ``__init__`` and ``from_db``
    (nothing of its own that ``_loader`` would skip)."""
    from_db = getattr(model.from_db, "__func__", None)
    return model.__init__ is Model.__init__ and from_db is getattr(Model.from_db, "__func__", 0)


@functools.cache
def _deferred_attributes(model: type[Model], names: tuple[str, ...]) -> bool:
    attnames = {f.attname for f in model._meta.concrete_fields}
    return all(
        name in attnames and type(model.__dict__.get(name)) in _PLAIN_DESCRIPTORS for name in names
    )


_PLAIN_DESCRIPTORS = (DeferredAttribute, ForeignKeyDeferredAttribute)


def _find_customers(
    external_ids: Iterable[str], *, lock: bool, settings: bool = False
) -> tuple[tuple[int, int | None], dict[str, Customer]]:
    """The meters' stamp (``_meters``) and the customers of these external ids, in one
    statement; with ``lock``, the customers' rating locks too, taken in id order (the same
    locks as ``billing.services.lock_customer_usage``). What must be read under the locks
    is read by a later statement (``_read_part``): a statement's snapshot is taken before
    the locks it acquires."""
    locking = ", pg_advisory_xact_lock(k.id) AS locked" if lock else ""
    # With ``settings``, the transaction's planner settings (RATING_SETTINGS) too: for the
    # statements after this one, the part's read first (this one is planned already).
    setting = (
        "".join(f", set_config('{name}', '{value}', true)" for name, value in RATING_SETTINGS)
        if settings
        else ""
    )
    rows = execute_bound(  # the parameter through a subquery: see _PART_SQL
        "SELECT m.n, m.last, c.id, c.external_id, c.name, c.currency, c.billing_mode "
        f"FROM (SELECT count(*) AS n, max(id) AS last{setting} FROM metering_meter) AS m "
        f"LEFT JOIN LATERAL (SELECT k.*{locking} FROM ("
        "  SELECT c.* FROM unnest((SELECT %s::text[])) AS x(external_id)"
        "   CROSS JOIN LATERAL (SELECT id, external_id, name, currency, billing_mode"
        "    FROM billing_customer c WHERE c.external_id = x.external_id OFFSET 0) AS c"
        "   ORDER BY c.id) AS k) AS c ON true",
        [_text_array(external_ids)],
    )
    load = _loader(Customer, CUSTOMER_FIELDS)
    customers = {row[3]: load(row[2:7]) for row in rows if row[2] is not None}
    return (rows[0][0], rows[0][1]), customers


@dataclass(frozen=True)
class WalletRow:
    """What rating needs of a wallet (read in one query for a whole batch)."""

    customer_id: int
    currency: str
    account_id: int | None  # None: not created yet (an empty prepaid wallet)
    billing_mode: str
    credit_limit: Decimal | None
    # As the locked read found the wallet's grants (billing.credits): some live (active,
    # something left: rating must load them to draw on them), some due (past their expiry
    # at rating's ``now``: rating expires them first). True when not read: look.
    live_grants: bool = True
    due_grants: bool = True


COUNTER_COLUMNS = (
    "u.subscription_id, u.meter_id, u.period_start, u.period_end, u.quantity, u.amount, "
    "u.charged, u.currency, u.event_count, u.latest_at"
)

CounterKey = tuple[int, int, datetime]  # (subscription id, meter id, period start)
# unique_count: per counter, which of the values asked about the period has counted already
Seen = dict[CounterKey, set[str]]


@dataclass
class PartRead:
    """What rating a part needs from the database, read under its customers' rating locks
    in one statement (``_read_part``)."""

    subscriptions: dict[int, Subscription]  # customer id → live subscription
    existing: dict[tuple[int, str], dict[str, Any]]  # events already stored, by key
    wallets: dict[tuple[int, str], WalletRow]  # (customer id, currency) → wallet
    balances: dict[int, ledger.LockedBalance]  # wallet account → its locked balance row
    overrides: dict[int, dict[int | None, Decimal]]  # customer → meter (None: all) → margin
    counters: dict[CounterKey, Counter]  # the periods the events fall in
    seen: Seen  # of the values the events would count in their current periods
    event_ids: list[int]  # one per event of the part, for those accepted
    # the ledger accounts asked for by (code, currency) that exist: their ids
    accounts: dict[tuple[str, str], int] = field(default_factory=dict)


# One statement, one JSON document: each set an array of rows, each row an array of its
# values, decoded by msgspec into typed tuples (``_PART_DOCUMENT``: numbers into exact
# Decimals, times into aware datetimes). Arrays of records loaded by a binary cursor, as
# before, cost psycopg a Python loader per record and a new adaptation context per set:
# 130 µs more of Python for a single event's read, and its PostgreSQL backend no less CPU
# (measured 2026-12-07, 4,000 reads alternated).
#
# Under READ COMMITTED its snapshot is taken after the rating locks (taken
# by an earlier statement), so it sees everything an earlier rating of these customers
# committed. The wallets' balance rows are locked here, in account-id order as
# ledger.services.lock_balances locks them, and read as their newest version — except when
# the part settles a hold, whose row is locked first (ledger.lock_hold), then the
# balances (the ledger's order). Counters are read for the subscriptions' current periods
# (a trial's included) by their unique index, subscription by subscription (OFFSET 0
# keeps the lookup per subscription: without it the generic plan, not knowing how few
# customers a part has, hashed the whole table — 48 ms at 88,000 counters, 0.02 ms this
# way); an event of another period (sent late, or before the subscription's period was
# renewed) has its counter looked up by its key (``_load_counters``), as has a charge on its
# own cadence past the first billing period of its charge period (its counter is keyed by
# the charge period's start: one statement more for the part, never one per event). The
# distinct values the part's unique_count meters would count (customer, meter, canonical
# key) are looked up the same way, in the customers' current periods, by the unique index of
# PeriodDistinctValue: a period's other values, however many, are not read. Event ids are drawn
# for every event of the part (the accepted use them; the sequence's gaps mean nothing).
# The subscriptions, wallets (their balance rows locked one by one, in account-id order),
# stored twins and margins are looked up the same way, key by key of an ``unnest`` (a
# LATERAL subquery with OFFSET 0 each, as ledger.services' posting does): with
# ``= ANY(array)`` the generic plan, not knowing how few keys a part has, seq-scanned the
# subscriptions, their phases, the wallets, every balance row and the stored events.
# Each parameter is read through a scalar subquery (``(SELECT %s::bigint[])``): planned
# without its value, the custom plans PostgreSQL tries first cost what the generic plan
# costs, so it keeps the generic one and stops planning the statement on every execution
# (given the arrays themselves, it never did: each custom plan, sized to its arrays,
# looked cheaper than the generic one; planning took twice as long as executing).
# The events' sequence is looked up once, by an InitPlan, not for every id drawn:
# ``nextval(pg_get_serial_sequence(…))`` looked it up in the catalog per row, 6.2 µs an
# id against 1.4 (measured 2026-12-07, 25,200 ids; a part of 250 events: 1.2 ms less).
_PART_SQL = """
WITH subs AS MATERIALIZED (
    SELECT s.id, s.customer_id, s.plan_id, s.status, s.started_at, s.billing_anchor,
           s.current_period_start, s.current_period_end, s.trial_ends_at,
           s.invoiced_through, s.cancel_at_period_end,
           coalesce(ph.starts, '{}') AS phase_starts, coalesce(ph.plans, '{}') AS phase_plans
      FROM unnest((SELECT %s::bigint[])) AS k(id)
     CROSS JOIN LATERAL (SELECT * FROM billing_subscription s
                          WHERE s.customer_id = k.id AND s.status <> 'canceled' OFFSET 0) AS s
     CROSS JOIN LATERAL (SELECT array_agg(ph.starts_at ORDER BY ph.starts_at, ph.id) AS starts,
                                array_agg(ph.plan_id ORDER BY ph.starts_at, ph.id) AS plans
                           FROM billing_subscriptionphase ph
                          WHERE ph.subscription_id = s.id) AS ph
), wallets AS MATERIALIZED (
    SELECT w.customer_id, w.currency, w.account_id, w.billing_mode, w.credit_limit,
           b.posted, b.held, b.floor,
           EXISTS (SELECT FROM billing_creditgrant g
                    WHERE g.wallet_id = w.id AND g.status = 'active' AND g.remaining > 0) AS live,
           EXISTS (SELECT FROM billing_creditgrant g
                    WHERE g.wallet_id = w.id AND g.status = 'active' AND g.remaining > 0
                      AND g.expires_at <= (SELECT %s::timestamptz)) AS due
      FROM (SELECT w.* FROM unnest((SELECT %s::bigint[])) AS k(id)
             CROSS JOIN LATERAL (SELECT * FROM billing_wallet w
                                  WHERE w.customer_id = k.id OFFSET 0) AS w
             ORDER BY w.account_id) AS w
     CROSS JOIN LATERAL (SELECT b.posted, b.held, b.floor FROM ledger_balance b
                          WHERE b.account_id = w.account_id AND b.bucket = 0 OFFSET 0<LOCK>) AS b
)
SELECT json_build_array(
       ARRAY(SELECT json_build_array(s.id, s.customer_id, s.plan_id, s.status, s.started_at,
                                     s.billing_anchor, s.current_period_start,
                                     s.current_period_end, s.trial_ends_at,
                                     s.invoiced_through, s.cancel_at_period_end,
                                     s.phase_starts, s.phase_plans) FROM subs s),
       ARRAY(SELECT json_build_array(e.id, e.customer_id, e.idempotency_key, e.amount, e.currency,
                                     e.ledger_transaction_id, e.cost, e.model)
               FROM unnest((SELECT %s::bigint[]), (SELECT %s::text[]))
                    AS k(customer_id, idempotency_key)
              CROSS JOIN LATERAL (
                    SELECT * FROM metering_event e
                     WHERE e.customer_id = k.customer_id AND e.idempotency_key = k.idempotency_key
                    OFFSET 0) AS e),
       ARRAY(SELECT json_build_array(w.customer_id, w.currency, w.account_id, w.billing_mode,
                                     w.credit_limit, w.posted, w.held, w.floor, w.live, w.due)
               FROM wallets w),
       ARRAY(SELECT json_build_array(o.customer_id, o.meter_id, o.margin_percent)
               FROM unnest((SELECT %s::bigint[])) AS k(id)
              CROSS JOIN LATERAL (SELECT * FROM billing_marginoverride o
                                   WHERE o.customer_id = k.id OFFSET 0) AS o),
       ARRAY(SELECT json_build_array(<COUNTERS>)
               FROM subs s CROSS JOIN LATERAL (
                    SELECT * FROM metering_periodusage p
                     WHERE p.subscription_id = s.id
                       AND p.meter_id = ANY((SELECT %s::bigint[])::bigint[])
                       AND p.period_start = s.current_period_start
                    OFFSET 0) AS u),
       ARRAY(SELECT json_build_array(s.id, d.meter_id, s.current_period_start, d.value)
               FROM unnest((SELECT %s::bigint[]), (SELECT %s::bigint[]), (SELECT %s::text[]))
                    AS k(customer_id, meter_id, value)
               JOIN subs s ON s.customer_id = k.customer_id
               CROSS JOIN LATERAL (
                    SELECT d.meter_id, d.value FROM metering_perioddistinctvalue d
                     WHERE d.subscription_id = s.id AND d.meter_id = k.meter_id
                       AND d.period_start = s.current_period_start AND d.value = k.value
                    OFFSET 0) AS d),
       ARRAY(SELECT nextval((SELECT pg_get_serial_sequence('metering_event', 'id')::regclass))
               FROM generate_series(1, (SELECT %s::int))),
       <ACCOUNTS>)::text
""".replace("<COUNTERS>", COUNTER_COLUMNS)
# The ledger accounts asked for by (code, currency), when some are (a customer's usage
# account this process has not cached): otherwise an empty list, no plan nodes for them.
_ACCOUNTS = """ARRAY(SELECT json_build_array(k.code, k.currency, a.id)
               FROM unnest((SELECT %s::text[]), (SELECT %s::text[])) AS k(code, currency)
              CROSS JOIN LATERAL (SELECT a.id FROM ledger_account a
                                   WHERE a.code = k.code AND a.currency = k.currency
                                  OFFSET 0) AS a)"""
_PART_SQLS = {
    (lock, accounts): _PART_SQL.replace("<LOCK>", " FOR UPDATE" if lock else "").replace(
        "<ACCOUNTS>", _ACCOUNTS if accounts else "'[]'::json"
    )
    for lock in (False, True)
    for accounts in (False, True)
}
# The document's shape, the columns' types in the statement's order (nullable where the
# column is): a value of another type fails the decoding, loudly.
_PART_DOCUMENT = msgspec.json.Decoder(
    tuple[
        list[  # subscriptions: SUBSCRIPTION_FIELDS, the phases' starts and plans
            tuple[
                int,
                int,
                int,
                str,
                datetime,
                datetime,
                datetime,
                datetime,
                datetime | None,
                datetime | None,
                bool,
                list[datetime],
                list[int],
            ]
        ],
        # stored twins: id, customer, key, amount, currency, transaction, cost, model
        list[tuple[int, int, str, Decimal, str, int | None, Decimal, str]],
        # wallets: customer, currency, account, mode, credit limit, posted, held, floor,
        # live grants, due grants
        list[
            tuple[int, str, int, str, Decimal | None, Decimal, Decimal, Decimal | None, bool, bool]
        ],
        list[tuple[int, int | None, Decimal]],  # margins: customer, meter (None: all), percent
        list[  # counters: COUNTER_COLUMNS
            tuple[
                int, int, datetime, datetime, Decimal, Decimal, Decimal, str, int, datetime | None
            ]
        ],
        list[tuple[int, int, datetime, str]],  # counted values: subscription, meter, start, key
        list[int],  # event ids
        list[tuple[str, str, int]],  # accounts asked for: code, currency, id
    ]
)


def _read_part(
    events: list[tuple[int, Prepared]],
    *,
    lock_balances: bool,
    now: datetime,
    accounts: Sequence[tuple[str, str]] = (),
) -> PartRead:
    """The subscriptions, stored twins, wallets (their balance rows locked, with
    ``lock_balances``; whether they have live and due grants at ``now``), margin overrides,
    counters and counted distinct values of a part's events (customer id, event), ids
    for them, and the ids of the ledger ``accounts`` (code, currency) that exist: one
    statement, its customers' rating locks held."""
    customer_ids = sorted({cid for cid, _ in events})
    # an event's meters are its name's list (prepare.MeterSet): each list looked at once
    meter_lists = {id(p.meters): p.meters for _, p in events}
    meter_ids = sorted({m.id for meters in meter_lists.values() for m in meters})
    distinct = sorted({(cid, *key) for cid, p in events for key in _distinct_keys(p)})
    customers = _numeric_array(customer_ids)
    ((document,),) = execute_bound(
        _PART_SQLS[lock_balances, bool(accounts)],
        [
            customers,
            now,
            customers,
            _numeric_array([cid for cid, _ in events]),
            _text_array([p.source.idempotency_key for _, p in events]),
            customers,
            _numeric_array(meter_ids),
            _numeric_array([k[0] for k in distinct]),
            _numeric_array([k[1] for k in distinct]),
            _text_array([k[2] for k in distinct]),
            len(events),
            *(
                [_text_array([code for code, _ in accounts]), _text_array([c for _, c in accounts])]
                if accounts
                else []
            ),
        ],
    )
    subs, twins, wallets, margins, counters, seen, ids, found = _PART_DOCUMENT.decode(document)
    read = PartRead({}, {}, {}, {}, {}, {}, {}, ids, {(code, cur): id_ for code, cur, id_ in found})
    load = _loader(Subscription, SUBSCRIPTION_FIELDS)
    for sub in subs:
        subscription = load(sub[:11])
        subscription.phase_starts = list(  # type: ignore[attr-defined]
            zip(sub[11], sub[12], strict=True)
        )
        read.subscriptions[subscription.customer_id] = subscription
    for event_id, customer_id, key, amount, currency, transaction_id, cost, model in twins:
        read.existing[(customer_id, key)] = {
            "id": event_id,
            "idempotency_key": key,
            "amount": amount,
            "currency": currency,
            "ledger_transaction_id": transaction_id,
            # the provider's cost is part of the answer for LLM events only
            **({"cost": cost} if model else {}),
        }
    for customer_id, currency, account_id, mode, limit, posted, held, floor, live, due in wallets:
        read.wallets[(customer_id, currency)] = WalletRow(
            customer_id, currency, account_id, mode, limit, live, due
        )
        if lock_balances:
            read.balances[account_id] = ledger.LockedBalance(account_id, posted, held, floor)
    for customer_id, meter_id, margin in margins:
        read.overrides.setdefault(customer_id, {})[meter_id] = margin
    for counter_row in counters:
        counter = _counter_from_row(counter_row)
        read.counters[(counter.subscription_id, counter.meter_id, counter.period_start)] = counter
    for subscription_id, meter_id, period_start, value in seen:
        read.seen.setdefault((subscription_id, meter_id, period_start), set()).add(value)
    return read


def _wallets(
    read: PartRead, wanted: set[tuple[int, str]]
) -> tuple[dict[tuple[int, str], WalletRow], dict[int, dict[int | None, Decimal]]]:
    """The wallets of (customer id, currency) pairs and the customers' margin overrides
    (customer → meter id, or None for all meters → margin percent), as ``_read_part`` found
    them. A missing wallet (a first credits plan) is an empty prepaid wallet without an
    account yet: it is created only if an accepted event moves money in it, so a refused
    event changes nothing."""
    found = {}
    for customer_id, currency in wanted:
        found[(customer_id, currency)] = read.wallets.get(
            (customer_id, currency),
            WalletRow(customer_id, currency, None, "prepaid", None, False, False),
        )
    return found, read.overrides


def _wallet_and_margins(
    customer_id: int, currency: str
) -> tuple[WalletRow | None, dict[int | None, Decimal]]:
    """The customer's wallet in this currency and its margin overrides, in one query."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT w.customer_id, w.currency, w.account_id, w.billing_mode, w.credit_limit, "
            "(SELECT array_agg(o.meter_id ORDER BY o.id) FROM billing_marginoverride o "
            " WHERE o.customer_id = k.id), "
            "(SELECT array_agg(o.margin_percent ORDER BY o.id) FROM billing_marginoverride o "
            " WHERE o.customer_id = k.id) "
            "FROM (SELECT %s::bigint AS id) AS k "
            "LEFT JOIN billing_wallet w ON w.customer_id = k.id AND w.currency = %s",
            [customer_id, currency],
        )
        row = cursor.fetchone()
    wallet = WalletRow(*row[:5]) if row[0] is not None else None
    return wallet, dict(zip(row[5] or [], row[6] or [], strict=True))


def _meters_with_counters(
    event_names: Iterable[str],
    subscription_id: int,
    period_start: datetime,
    distinct_keys: Iterable[str] = (),
) -> tuple[list[Meter], dict[CounterKey, Counter], Seen]:
    """The meters reading these events and their ``_load_counters`` for one subscription's
    period, with which of ``distinct_keys`` (canonical keys) each unique_count meter has
    counted this period, in one query."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT m.id, m.code, m.event_name, m.aggregation, m.property, m.filters, "
            f"m.group_by, {COUNTER_COLUMNS}, "
            "ARRAY(SELECT d.value FROM metering_perioddistinctvalue d "
            "  WHERE m.aggregation = 'unique_count' AND d.subscription_id = %s "
            "    AND d.meter_id = m.id AND d.period_start = %s AND d.value = ANY(%s::text[])) "
            "FROM metering_meter m LEFT JOIN metering_periodusage u ON u.meter_id = m.id "
            "AND u.subscription_id = %s AND u.period_start = %s "
            "WHERE m.event_name = ANY(%s) ORDER BY m.id",
            [
                subscription_id,
                period_start,
                sorted(set(distinct_keys)),
                subscription_id,
                period_start,
                list(event_names),
            ],
        )
        meters, counters, seen = [], {}, {}
        for row in cursor.fetchall():
            meter = _meter_from_row(row[:7])
            meters.append(meter)
            if row[7] is not None:  # the meter has a counter this period
                counter = _counter_from_row(row[7:-1])
                counters[(counter.subscription_id, counter.meter_id, counter.period_start)] = (
                    counter
                )
            if row[-1]:
                seen[(subscription_id, meter.pk, period_start)] = set(row[-1])
        return meters, counters, seen


def _counter_from_row(row: Sequence[Any]) -> Counter:
    """A Counter from the COUNTER_COLUMNS of a PeriodUsage row."""
    return Counter(
        subscription_id=row[0],
        meter_id=row[1],
        period_start=row[2],
        period_end=row[3],
        quantity=row[4],
        amount=row[5],
        charged=row[6],
        currency=row[7],
        event_count=row[8],
        latest_at=row[9],
    )


def _load_counters(
    wanted: set[CounterKey], distinct: Iterable[tuple[int, int, datetime, str]] = ()
) -> tuple[dict[CounterKey, Counter], Seen]:
    """The PeriodUsage rows of these (subscription, meter, period start) keys, and which of
    the ``distinct`` values (counter key, canonical key) their periods have counted, in one
    query."""
    if not wanted:
        return {}, {}
    keys, values = list(wanted), sorted(set(distinct))
    ((rows, found),) = execute_bound(
        f"SELECT ARRAY(SELECT ROW({COUNTER_COLUMNS}) "
        "  FROM metering_periodusage u JOIN unnest(%s::bigint[], %s::bigint[], "
        "  %s::timestamptz[]) AS k(s, m, p) "
        "  ON u.subscription_id = k.s AND u.meter_id = k.m AND u.period_start = k.p), "
        "ARRAY(SELECT ROW(d.subscription_id, d.meter_id, d.period_start, d.value) "
        "  FROM metering_perioddistinctvalue d JOIN unnest(%s::bigint[], %s::bigint[], "
        "  %s::timestamptz[], %s::text[]) AS k(s, m, p, v) "
        "  ON d.subscription_id = k.s AND d.meter_id = k.m AND d.period_start = k.p "
        "  AND d.value = k.v)",
        [
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [v[0] for v in values],
            [v[1] for v in values],
            [v[2] for v in values],
            [v[3] for v in values],
        ],
        binary=True,
    )
    counters = {}
    for row in rows:
        counter = _counter_from_row(row)
        counters[(counter.subscription_id, counter.meter_id, counter.period_start)] = counter
    seen: Seen = {}
    for subscription_id, meter_id, period_start, value in found:
        seen.setdefault((subscription_id, meter_id, period_start), set()).add(value)
    return counters, seen
