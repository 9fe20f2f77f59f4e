"""The orchestration of ``ingest_events``: events prepared, sorted out by customer, cut into
parts of whole customers (``_chunks``, ``RATING_CHUNK_EVENTS``), each part rated in its
own transaction under its customers' rating locks; and the caches' reset for tests."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from billing import errors as billing_errors
from billing import services as billing_services
from billing.errors import BillingError
from billing.models import (
    Customer,
)
from metering.rating import prepare
from metering.rating.accounts import _account_ids, _found_accounts, _uncached_usage_accounts
from metering.rating.base import EventIn, Outcome
from metering.rating.prepare import MeterSet, Prepared, _meters, _prepare, _take_meters
from metering.rating.rate import _rate
from metering.rating.read import _find_customers, _read_part
from metering.rating.sql import RATING_SETTINGS
from metering.rating.terms import plan_terms


def ingest_events(
    events: Sequence[EventIn],
    *,
    now: datetime | None = None,
    hold_id: int | None = None,
    after_part: Callable[[list[tuple[int, Outcome]]], None] | None = None,
) -> list[Outcome]:
    """Store, rate and post ``events``; one Outcome per event, in order.

    With ``hold_id`` (one event): the event settles that hold — what is left of the hold is
    released and the event's charge posted against it, all in one transaction.

    ``after_part`` is called inside each part's transaction with the (index, outcome) of the
    part's events, so that what the caller records of them commits with them or not at all
    (the asynchronous inbox removes the rows the part rated).

    A batch that is one part (at most ``RATING_CHUNK_EVENTS`` events: a single event, say)
    finds its customers and takes their rating locks in one statement, inside the part's
    transaction; a longer one finds them first, then locks each part's."""
    if hold_id is not None and len(events) != 1:
        raise ValueError("a hold is settled by exactly one event")
    now = now or timezone.now()
    outcomes: list[Outcome | None] = [None] * len(events)
    prepared: list[Prepared] = []
    for index, event in enumerate(events):
        try:
            prepared.append(_prepare(index, event, now))
        except BillingError as error:
            outcomes[index] = Outcome("rejected", error=error)
    if not prepared:
        return outcomes  # type: ignore[return-value]
    external_ids = {p.source.customer for p in prepared}
    # Rating's planner settings (sql.RATING_SETTINGS) in its own transactions only: set
    # inside a caller's, they would last to the end of the caller's.
    own = not connection.in_atomic_block
    if len(prepared) <= RATING_CHUNK_EVENTS:
        with transaction.atomic():
            stamp, customers = _find_customers(external_ids, lock=True, settings=own)
            by_customer = _sort_out(prepared, _meters(stamp), customers, outcomes)
            if by_customer:
                _rate_part(
                    sorted(by_customer), by_customer, _by_id(customers), outcomes, hold_id, now
                )
                if after_part is not None:
                    after_part(_part_outcomes(by_customer, outcomes))
        return outcomes  # type: ignore[return-value]
    stamp, customers = _find_customers(external_ids, lock=False)
    by_customer = _sort_out(prepared, _meters(stamp), customers, outcomes)
    chunks = _chunks(by_customer)
    by_id = _by_id(customers)
    # Inside a caller's transaction the parts are savepoints of it: its commit is the only
    # one, and its durability is the caller's (SET LOCAL would reach the caller's too).
    deferred = len(chunks) > 1 and not connection.in_atomic_block
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        with transaction.atomic():
            _lock_customers(chunk, flush=not deferred or last, settings=own)
            part = {cid: by_customer[cid] for cid in chunk}
            _rate_part(chunk, part, by_id, outcomes, hold_id, now)
            if deferred and last:
                _commit_record()
            if after_part is not None:
                after_part(_part_outcomes(part, outcomes))
    return outcomes  # type: ignore[return-value]


def _part_outcomes(
    by_customer: dict[int, list[Prepared]], outcomes: list[Outcome | None]
) -> list[tuple[int, Outcome]]:
    return [
        (p.index, outcomes[p.index])  # type: ignore[misc]
        for events in by_customer.values()
        for p in events
    ]


def _sort_out(
    prepared: list[Prepared],
    meters: MeterSet,
    customers: dict[str, Customer],
    outcomes: list[Outcome | None],
) -> dict[int, list[Prepared]]:
    """The events by customer id, each with its meters; an event no meter reads, with an
    unreadable usage or for an unknown customer is rejected (in that order of precedence)."""
    by_customer: dict[int, list[Prepared]] = defaultdict(list)
    for p in prepared:
        try:
            _take_meters(p, meters)
        except BillingError as error:
            outcomes[p.index] = Outcome("rejected", error=error)
            continue
        customer = customers.get(p.source.customer)
        if customer is None:
            outcomes[p.index] = Outcome(
                "rejected",
                error=billing_errors.CustomerNotFound(
                    f"no customer with external_id {p.source.customer!r}", param="customer"
                ),
            )
        else:
            by_customer[customer.pk].append(p)
    return by_customer


def _by_id(customers: dict[str, Customer]) -> dict[int, Customer]:
    return {customer.id: customer for customer in customers.values()}


def _rate_part(
    chunk: list[int],
    by_customer: dict[int, list[Prepared]],
    customers: dict[int, Customer],
    outcomes: list[Outcome | None],
    hold_id: int | None,
    now: datetime,
) -> None:
    """One part, its customers' rating locks held: what rating needs read in one statement,
    then rated and written. ``customers`` by id."""
    read = _read_part(
        [(cid, p) for cid in chunk for p in by_customer[cid]],
        lock_balances=hold_id is None,
        now=now,
        accounts=_uncached_usage_accounts(chunk),
    )
    _found_accounts(read.accounts)
    _rate(
        [(customers[cid], read.subscriptions.get(cid), by_customer[cid]) for cid in chunk],
        outcomes,
        hold_id,
        now=now,
        read=read,
    )


# A batch is rated in transactions of whole customers and at least this many events each.
# A transaction holds its customers' rating locks until it commits, so two batches for the
# same customers (a backend's workers sending at once) ran one after the other when a
# batch was one transaction; in parts, the second rates its first part while the first
# rates its next one. A customer's events stay together, in one transaction. Each part is
# committed before the next begins; after a crash between parts, the client's retry finds
# the committed events as duplicates (the idempotency key), so nothing is charged twice.
#
# Every part but the last commits with synchronous_commit off (``_lock_customers``): its
# COMMIT returns without waiting for its WAL to reach the disk, so the parts cost one
# fsync, not one each. Nothing is acknowledged undurable: the answer is sent after the
# LAST part's commit, which is synchronous and writes a commit record even when that part
# changed nothing (``_commit_record``); PostgreSQL's WAL is one sequence flushed in order,
# so flushing that record flushes every earlier part's WAL with it. A crash before the
# last commit may lose some of the earlier parts (each whole or not at all: asynchronous
# commit keeps a transaction atomic) and answers nothing; the client's retry finds what
# stood as duplicates and rates the rest, as after a crash between parts.
#
# Shorter parts shorten the lock holds but cost Python per part (its read, posting and
# write; about 5 ms each). Measured 2026-12-07 on a busy shared 2-core machine: in process
# through the test client (bench/ingest_cpu.py --http, two alternating rounds) the server's
# CPU per event was 0.24-0.31 ms with 250, 0.29-0.36 with 100, 0.37-0.43 with 50, 0.39-0.43
# with 25; with make bench-ingest (4 clients, batches of 1,000 over all 200 customers) 25
# took Lock:advisory from 24-27 % of the sessions' time to 3-13 % while batch ÷ raw
# ceiling stayed within the noise (docs/metering.md has the figures). Then on a quiet
# machine, one make bench-ingest run each, back to back, the same code but this number:
# 250 gave batch ÷ raw 0.107 (3,891 events/s, server 0.28 ms CPU an event), 100 gave
# 0.065 (2,662 events/s, 0.39 ms): a part's fixed cost outweighs the shorter lock holds.
RATING_CHUNK_EVENTS = 250


def _chunks(by_customer: dict[int, list[Prepared]]) -> list[list[int]]:
    """The customers in id order (the rating locks' order), cut into parts of at least
    RATING_CHUNK_EVENTS events, whole customers each."""
    chunks: list[list[int]] = []
    chunk: list[int] = []
    events = 0
    for customer_id in sorted(by_customer):
        chunk.append(customer_id)
        events += len(by_customer[customer_id])
        if events >= RATING_CHUNK_EVENTS:
            chunks.append(chunk)
            chunk, events = [], 0
    if chunk:
        chunks.append(chunk)
    return chunks


def _lock_customers(customer_ids: list[int], *, flush: bool = True, settings: bool) -> None:
    """The part's customers' rating locks; without ``flush`` the part commits with
    synchronous_commit off (see RATING_CHUNK_EVENTS); with ``settings``, rating's planner
    settings for the part's transaction (sql.RATING_SETTINGS)."""
    billing_services.lock_customer_usage(
        customer_ids, wait_for_flush=flush, settings=RATING_SETTINGS if settings else ()
    )


def _commit_record() -> None:
    """Make the last part's COMMIT write (and so flush) a commit record even if the part
    wrote nothing: a transaction without an id commits without touching the WAL, which
    would leave the earlier parts' asynchronous commits unflushed when the answer goes out.
    (A guard: the part's read locks balance rows and draws event ids, which give it an id
    in every case found so far; one statement a batch of several parts.)"""
    with connection.cursor() as cursor:
        cursor.execute("SELECT txid_current()")


def clear_caches() -> None:
    """Forget cached plans, meters and account ids (for tests, which empty the tables)."""
    _account_ids.clear()
    plan_terms.cache_clear()
    prepare._meter_set = None
