"""Writing a part's accepted events: one ledger posting per customer (``UsagePosting``, its
legs the sums of its events; credits drawn on the grants), then the event rows (INSERT, or
COPY for many), the inbox's forgotten twins and the period, daily and model counters in
one round trip (with ``MarginUsage``'s rollups). A part of one posting and few events (a
single event) posts it in that same statement (``_write_posting_with``). The accounts'
ids are cached in ``rating.accounts``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from django.db import DatabaseError
from django.utils import timezone

from billing import credits
from billing import services as billing_services
from billing.models import (
    AllocationKind,
    Customer,
    Meter,
    Subscription,
)
from ledger import errors as ledger_errors
from ledger import services as ledger
from ledger.services import Leg
from metering import errors
from metering.models import MARGIN_SLOTS
from metering.normalize import NormalizedUsage
from metering.rating import budgets
from metering.rating.accounts import _system_account_id, _usage_account_id
from metering.rating.base import CREDITS, CREDITS_USED, REVENUE, ZERO, Outcome, ledger_round
from metering.rating.prepare import Prepared, _path_value
from metering.rating.read import WalletRow
from metering.rating.sql import (
    Statement,
    _execute_after,
    _execute_together,
    _rows,
    copy_binary,
)
from metering.rating.terms import PlanTerms

# What an accepted event did to one counter: (meter, quantity moved, included quantity
# moved, exact amount moved) — a tuple, not an object: a batch makes four an event.
Moved = tuple[Meter, Decimal, Decimal, Decimal]


@dataclass(slots=True)
class Accepted:
    p: Prepared
    customer: Customer
    subscription: Subscription
    terms: PlanTerms
    period_start: datetime
    moves: list[Moved]
    money: Decimal
    currency: str
    wallet: WalletRow
    project_id: int | None = None  # the customer's project charged (rating.budgets)


def _reference(customer_id: int, key: str) -> str:
    """The ledger reference of an event: its key as sent, or its SHA-256 when the key is
    long or could be mistaken for a hashed one."""
    reference = f"usage:{customer_id}:{key}"
    if len(reference) > 255 or key.startswith("sha256:"):
        reference = f"usage:{customer_id}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return reference


@dataclass
class UsagePosting:
    """One customer's accepted events of one rating part, as one ledger transaction: its
    legs are the sums of the events' (tokens to ``@TokensServed``; per currency, the wallet
    to ``@Revenue`` or ``@CreditsUsed``), and every event with something to post points
    at it. Its reference is the first such event's (``_reference``): unique, because that
    event is stored once and in no other transaction, and the same as the one-transaction-
    per-event reference for a part of one event."""

    customer: Customer
    first_key: str
    event_ids: list[int] = field(default_factory=list)
    tokens: int = 0
    money: dict[tuple[int, str], Decimal] = field(default_factory=dict)  # (wallet, currency)
    cost: Decimal = ZERO
    models: set[tuple[str, str]] = field(default_factory=set)
    effective_at: datetime | None = None
    names: set[str] = field(default_factory=set)
    metadata: dict[str, Any] = field(default_factory=dict)
    legs: list[Leg] = field(default_factory=list)

    def spec(self) -> ledger.TransactionSpec:
        name = next(iter(self.names)) if len(self.names) == 1 else "events"
        return ledger.TransactionSpec(
            reference=_reference(self.customer.id, self.first_key),
            legs=self.legs,
            description=f"Usage: {name}"
            + (f" ({len(self.event_ids)} events)" if len(self.event_ids) > 1 else ""),
            metadata=self.metadata,
            effective_at=self.effective_at,
        )


def _usage_postings(
    accepted: list[Accepted],
    event_ids: list[int],
    costs: list[Decimal | None],
    tokens_served,
    sinks: dict[str, int],
    accounts: dict[tuple[str, str], int],
) -> list[UsagePosting]:
    """The part's accepted events summed per customer into one posting each (an event with
    neither tokens nor money has nothing to post and points at no transaction); ``costs``:
    each event's provider cost to the ledger's places (``_costs``)."""
    postings: dict[int, UsagePosting] = {}
    posting = None  # the last event's: a part's events come customer by customer
    for event_id, a, cost in zip(event_ids, accepted, costs, strict=True):
        money, usage, source = a.money, a.p.usage, a.p.source
        tokens = usage.total_tokens if usage is not None else 0
        if not tokens and not money:
            continue
        customer = a.customer
        if posting is None or posting.customer is not customer:
            posting = postings.get(customer.id)
            if posting is None:
                posting = postings[customer.id] = UsagePosting(customer, source.idempotency_key)
        posting.event_ids.append(event_id)
        posting.tokens += tokens
        if money:
            assert a.wallet.account_id is not None, "created by _write for moving money"
            key = (a.wallet.account_id, a.currency)
            posting.money[key] = posting.money.get(key, ZERO) + money
        if cost is not None:
            posting.cost += cost
        if usage is not None:
            posting.models.add((usage.provider, usage.model))
        posting.names.add(source.event_name)
        timestamp = source.timestamp
        if posting.effective_at is None or timestamp > posting.effective_at:
            posting.effective_at = timestamp
    result = []
    for posting in postings.values():
        # Amounts here are exact already (whole tokens; money rounded to the ledger's 12
        # places, and sums of them), so the legs are built directly; the ledger checks
        # them again in SQL, and the database checks that they are the events' sums.
        legs = []
        if posting.tokens:
            legs += [
                Leg(_usage_account_id(posting.customer, accounts), Decimal(posting.tokens)),
                Leg(tokens_served, -Decimal(posting.tokens)),
            ]
        for (wallet_account, currency), money in sorted(posting.money.items()):
            if money:  # a period's credits back may cancel its charges
                legs += [Leg(wallet_account, money), Leg(sinks[currency], -money)]
        if not legs:  # nothing moves: the events point at no transaction
            continue
        posting.legs = legs
        metadata: dict[str, Any] = {
            "kind": "usage",
            "event_id": posting.event_ids[0],
            "events": len(posting.event_ids),
            "customer": posting.customer.external_id,
        }
        if len(posting.models) == 1:
            provider, model = next(iter(posting.models))
            metadata.update(model=model, provider=provider)
        if posting.models:
            metadata["cost_usd"] = str(posting.cost)
        posting.metadata = metadata
        result.append(posting)
    return result


def _write(
    accepted: list[Accepted],
    counters,
    outcomes,
    event_ids: list[int],
    hold_id=None,
    *,
    now=None,
    accounts: dict[tuple[str, str], int],
) -> None:
    """``accounts``: the ledger accounts the part's read found, by (code, currency)."""
    created: dict[tuple[int, str], WalletRow] = {}
    for a in accepted:
        if a.wallet.account_id is None and a.money:
            key = (a.customer.id, a.currency)
            if key not in created:
                wallet = billing_services.ensure_wallet(customer=a.customer, currency=a.currency)
                created[key] = WalletRow(
                    a.customer.id, a.currency, wallet.account_id, wallet.billing_mode, None
                )
            a.wallet = created[key]
    event_ids = event_ids[: len(accepted)]  # drawn by _read_part, one per event of the part
    has_tokens = any(a.p.usage is not None and a.p.usage.total_tokens for a in accepted)
    tokens_served = (
        _system_account_id(billing_services.TOKENS_SERVED, "TOKENS") if has_tokens else None
    )
    sinks = {
        currency: _system_account_id(CREDITS_USED if currency == CREDITS else REVENUE, currency)
        for currency in {a.currency for a in accepted}
    }
    # Credits debited are drawn from the wallets' grants in drain order (billing.credits);
    # the customers' usage locks are held, so no other debit draws on the same remainder.
    # Debits of CREDITS, and of a balance plan's money wallet (its plan may grant money:
    # billing.plan_credits), draw on the wallet's grants. A money wallet the locked read
    # found without live grants has none now (money grants are made, and changed, only
    # under the usage lock held): its grants are not loaded. A CREDITS wallet's are, always:
    # a top-up makes its purchase grant without the usage lock (its balance row, locked
    # by the read, is the newest version; the read's snapshot of grants may be older).
    granting = {
        a.wallet.account_id
        for a in accepted
        if a.money > 0
        and (a.currency == CREDITS or a.wallet.live_grants)
        and credits.draws_on_grants(
            currency=a.currency, consumption_model=a.terms.consumption_model
        )
    }
    book = credits.GrantBook.load(granting, now=now)
    costs = _costs(accepted)
    postings = _usage_postings(accepted, event_ids, costs, tokens_served, sinks, accounts)
    specs, allocations = [], []
    for posting in postings:
        parts: list[tuple[int, Decimal]] = []
        for (wallet_account, _currency), money in posting.money.items():
            if book and money > 0 and wallet_account in granting:
                parts += book.take(wallet_account, money, settling_hold=hold_id is not None)
        if parts:
            posting.metadata["grants"] = credits.grants_metadata(parts)
        allocations.append(parts)
        specs.append(posting.spec())
    # A part whose accepted events are few and post one transaction (a single event, say)
    # posts it in the statement that writes them: the ledger's posting statement as the
    # statement's first CTEs (``ledger.posting_ctes``), the events pointing at its
    # ``posting_id``; one round trip and one statement less than posting first.
    embedded = None
    if hold_id is None and len(specs) == 1 and len(accepted) <= EVENTS_BY_INSERT:
        embedded = ledger.posting_ctes(specs[0])
    transaction_ids: dict[int, int] = {}
    if embedded is not None:
        for event_id in postings[0].event_ids:
            transaction_ids[event_id] = POSTING_ID  # the posting's, once the write is done
    else:
        try:
            # (transaction id, replayed) of each posting
            posted: list[tuple[int, bool]] = []
            if hold_id is not None:
                settled = ledger.settle_hold_with(hold_id=hold_id, spec=specs[0] if specs else None)
                if settled is not None:
                    posted = [(settled.pk, getattr(settled, "replayed", False))]
            elif specs:
                # No savepoint: any error here abandons the part's whole transaction. Ids,
                # not Transaction instances: nothing here reads more of them.
                posted = [
                    (t.transaction_id, t.replayed)
                    for t in ledger.post_transactions_for_ids(transactions=specs, savepoint=False)
                ]
        except ledger_errors.ReferenceReused as error:
            raise errors.InvalidEvent(str(error), param="idempotency_key") from None
        for posting, parts, (transaction_id, replayed) in zip(
            postings, allocations, posted, strict=True
        ):
            for event_id in posting.event_ids:
                transaction_ids[event_id] = transaction_id
            if parts and not replayed:
                book.record(transaction_id, parts, AllocationKind.USAGE)
        book.save()
    event_rows, answers = _event_rows(event_ids, accepted, costs, transaction_ids, outcomes)
    # Duplicates inside the batch point at the accepted twin.
    for outcome in outcomes:
        if (
            outcome is not None
            and outcome.status == "duplicate"
            and outcome.event
            and "_same_as" in outcome.event
        ):
            twin = outcomes[outcome.event["_same_as"]]
            outcome.event = twin.event if twin is not None else None

    days = _days(accepted)
    model_totals = _model_totals(accepted, costs, days)
    # No conflict is possible: the customer's rating lock is held and its duplicates were
    # sorted out above (the unique index still stands behind that).
    if embedded is not None:
        transaction_id, replayed = _write_posting_with(
            embedded, event_rows, accepted, counters, model_totals, days, answers
        )
        if allocations[0] and not replayed:
            book.record(transaction_id, allocations[0], AllocationKind.USAGE)
            book.save()
        return
    if len(event_rows) <= EVENTS_BY_INSERT:
        # A few events: inserted by the statement that moves the counters, one round trip.
        _execute_together(
            None, [_insert_events(event_rows), *_moves(accepted, counters, model_totals, days)]
        )
        return
    # COPY, binary: the fastest way in for many rows.
    copy_binary(
        f"COPY metering_event ({EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)", EVENT_TYPES, event_rows
    )
    _execute_together(None, _moves(accepted, counters, model_totals, days))


def _event_rows(
    event_ids: list[int],
    accepted: list[Accepted],
    costs: list[Decimal | None],
    transaction_ids: dict[int, int],
    outcomes: list[Outcome | None],
) -> tuple[list[tuple], list[dict[str, Any]]]:
    """The part's event rows (``EVENT_COLUMNS``' order) and answers; each event's outcome
    set to its answer. An event without LLM usage takes ``_NO_USAGE``'s columns: one test
    an event rather than one a column."""
    event_rows = []
    answers = []
    received_at = timezone.now()
    for event_id, a, cost in zip(event_ids, accepted, costs, strict=True):
        p, money, currency = a.p, a.money, a.currency
        source, u, price = p.source, p.usage, p.price
        if cost is None:
            cost = ZERO
        transaction_id = transaction_ids.get(event_id)
        row = {
            "id": event_id,
            "idempotency_key": source.idempotency_key,
            "amount": money,
            "currency": currency,
            "cost": cost,
            "ledger_transaction_id": transaction_id,
        }
        answers.append(row)
        outcomes[p.index] = Outcome("accepted", row)
        if u is None:
            u = _NO_USAGE
        event_rows.append(
            (
                event_id,
                a.customer.id,
                source.idempotency_key,
                source.event_name,
                source.timestamp,
                source.properties_json or json.dumps(source.properties, default=str),
                a.subscription.id,
                a.period_start,
                u.provider,
                u.model,
                price.id if price is not None else None,
                u.input_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.output_tokens,
                u.reasoning_tokens,
                currency,
                money,
                cost,
                transaction_id,
                source.received_at or received_at,
                a.project_id,
            )
        )
    return event_rows, answers


# An event row's LLM columns when it has no LLM usage.
_NO_USAGE = NormalizedUsage(
    provider="",
    model="",
    input_tokens=0,
    cache_read_tokens=0,
    cache_write_tokens=0,
    cache_write_1h_tokens=0,
    output_tokens=0,
    reasoning_tokens=0,
)


def _moves(
    accepted: list[Accepted], counters, model_totals: dict[tuple, list], days: list[date]
) -> list:
    """What a part's events move besides their own rows, in the order written: the inbox
    rows they came from, the period counters and their distinct values, the daily, per
    model and margin rollups, the projects' spend."""
    return [
        _forget_incoming(accepted),
        _upsert_counters(counters),
        _insert_distinct_values(counters),
        _upsert_daily(accepted, days),
        _upsert_model_usage(model_totals),
        _upsert_margin_usage(model_totals),
        budgets.upsert_spend(accepted),
    ]


def _write_posting_with(
    posting: ledger.PostingCtes,
    event_rows: list[tuple],
    accepted: list[Accepted],
    counters,
    model_totals: dict[tuple, list],
    days: list[date],
    answers: list[dict[str, Any]],
) -> tuple[int, bool]:
    """The part's one posting, its events (those with something to post point at it:
    ``POSTING_ID`` in their rows) and the counters, in one statement; the answers' rows
    get the transaction's id. The transaction's id, and whether it was posted before."""
    try:
        posted_id, pointed_id = _execute_after(
            (posting.sql, posting.params),
            [
                _insert_events(event_rows, posted_by="(SELECT id FROM posting_id)"),
                *_moves(accepted, counters, model_totals, days),
            ],
            "SELECT (SELECT id FROM posted), (SELECT id FROM posting_id)",
        )
    except DatabaseError as error:
        ledger.raise_refusal(error, posting)
    if posted_id is None:  # its reference was posted before: the same posting, or raises
        try:
            pointed_id = ledger.replayed(posting).pk
        except ledger_errors.ReferenceReused as error:
            raise errors.InvalidEvent(str(error), param="idempotency_key") from None
    for answer in answers:
        if answer["ledger_transaction_id"] == POSTING_ID:
            answer["ledger_transaction_id"] = pointed_id
    return pointed_id, posted_id is None


# In an event's row, instead of a transaction id: the event points at the transaction its
# statement posts (``_write_posting_with``; no transaction's id is 0).
POSTING_ID = 0

# A part with at most this many accepted events inserts them with an INSERT … SELECT FROM
# unnest() sent with the counters' statement; more go by COPY first.
EVENTS_BY_INSERT = 32
EVENT_COLUMNS = (
    "id, customer_id, idempotency_key, event_name, timestamp, properties, subscription_id, "
    "period_start, provider, model, model_price_id, input_tokens, cache_read_tokens, "
    "cache_write_tokens, output_tokens, reasoning_tokens, currency, amount, cost, "
    "ledger_transaction_id, received_at, project_id"
)
# The columns' own types, for a binary COPY (``sql.copy_binary``): varchar columns as text.
EVENT_TYPES = (
    "int8", "int8", "text", "text", "timestamptz", "jsonb", "int8", "timestamptz", "text",
    "text", "int8", "int8", "int8", "int8", "int8", "int8", "text", "numeric", "numeric",
    "int8", "timestamptz", "int8",
)  # fmt: skip
_EVENT_ROW = (
    "id bigint, customer_id bigint, idempotency_key text, event_name text, "
    "timestamp timestamptz, properties text, subscription_id bigint, period_start timestamptz, "
    "provider text, model text, model_price_id bigint, input_tokens bigint, "
    "cache_read_tokens bigint, cache_write_tokens bigint, output_tokens bigint, "
    "reasoning_tokens bigint, currency text, amount numeric, cost numeric, "
    "ledger_transaction_id bigint, received_at timestamptz, project_id bigint"
)


def _insert_events(event_rows: list[tuple], posted_by: str | None = None) -> Statement:
    """The events' rows (as written by COPY: properties as JSON text) in one INSERT; with
    ``posted_by`` (an SQL expression), a row's ``POSTING_ID`` is replaced by its value."""
    source, params = _rows("r", _EVENT_ROW, event_rows)
    names = EVENT_COLUMNS.replace("properties", "properties::jsonb")
    if posted_by is not None:
        names = names.replace(
            "ledger_transaction_id",
            f"CASE WHEN ledger_transaction_id = {POSTING_ID} THEN {posted_by} "
            "ELSE ledger_transaction_id END",
        )
    return (f"INSERT INTO metering_event ({EVENT_COLUMNS}) SELECT {names} FROM {source}", params)


def _forget_incoming(accepted: list[Accepted]) -> Statement:
    """An event rated here may wait in the asynchronous inbox under the same key (pending,
    or refused and now sent again synchronously): it is rated now, so the inbox forgets
    it, or it would be listed refused though charged (metering.inbox)."""
    source, params = _rows(
        "k", "c bigint, key text", [(a.customer.id, a.p.source.idempotency_key) for a in accepted]
    )
    return (
        f"DELETE FROM metering_incomingevent i USING {source} "
        "WHERE i.customer_id = k.c AND i.idempotency_key = k.key",
        params,
    )


def _upsert_counters(counters: dict) -> Statement | None:
    rows = [
        (
            c.subscription_id,
            c.meter_id,
            c.period_start,
            c.period_end,
            c.quantity,
            c.amount,
            c.charged,
            c.currency,
            c.event_count,
            c.latest_at,
        )
        for c in counters.values()
        if c.changed
    ]
    if not rows:
        return None
    source, params = _rows(
        "r",
        "s bigint, m bigint, ps timestamptz, pe timestamptz, q numeric, a numeric, c numeric, "
        "cur text, n bigint, la timestamptz",
        rows,
    )
    return (
        "INSERT INTO metering_periodusage (subscription_id, meter_id, period_start, period_end, "
        "quantity, amount, charged, currency, event_count, latest_at, updated_at) "
        f"SELECT s, m, ps, pe, q, a, c, cur, n, la, now() FROM {source} "
        "ON CONFLICT (subscription_id, meter_id, period_start) DO UPDATE SET "
        "quantity = EXCLUDED.quantity, amount = EXCLUDED.amount, charged = EXCLUDED.charged, "
        "currency = EXCLUDED.currency, event_count = EXCLUDED.event_count, "
        "latest_at = EXCLUDED.latest_at, "
        "updated_at = now()",
        params,
    )


def _insert_distinct_values(counters: dict) -> Statement | None:
    """The values unique_count meters counted in this part, one row each; a period's rows
    are only ever added to. Nothing conflicts (the customers' rating locks are held and the
    part counted only values its read did not find); the unique index stands behind that."""
    rows = [
        (c.subscription_id, c.meter_id, c.period_start, value)
        for c in counters.values()
        for value in c.new_values
    ]
    if not rows:
        return None
    source, params = _rows("r", "s bigint, m bigint, ps timestamptz, v text", rows)
    return (
        "INSERT INTO metering_perioddistinctvalue (subscription_id, meter_id, period_start, "
        f"value) SELECT s, m, ps, v FROM {source} ON CONFLICT DO NOTHING",
        params,
    )


def _dimensions(meter: Meter, p: Prepared, known: dict[tuple, tuple[str, str]]) -> tuple[str, str]:
    """The dimension key of the event's daily row for this meter (its group_by values) and
    those values as JSON. ``known`` keeps what a part has rendered already, by the values:
    a part's events have few distinct ones (a model name, say), and JSON costs."""
    if not meter.group_by:
        return "", "{}"
    group_by = tuple(meter.group_by)
    properties, usage = p.source.properties, p.usage
    # Values that are all text (or absent) render as themselves: looked up by them, before
    # anything is built (a part's events repeat a few). Any other kind (a number, a list)
    # is rendered first and looked up by its rendering: 1, 1.0 and True are one dict key.
    if len(group_by) == 1:  # the usual case (by model, say), without a loop
        value = _path_value(properties, usage, group_by[0])
        raw: tuple[Any, ...] = (value,)
        plain = value is None or type(value) is str
    else:
        raw = tuple([_path_value(properties, usage, path) for path in group_by])
        plain = all(value is None or type(value) is str for value in raw)
    if plain:
        rendered = known.get((_AS_TEXT, group_by, raw))
        if rendered is not None:
            return rendered
    dims = {}
    for path, value in zip(group_by, raw, strict=True):
        if isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True, default=str)
        dims[path] = None if value is None else (value if isinstance(value, str) else str(value))
    values = tuple(dims.items())
    rendered = known.get(values)
    if rendered is None:
        key = json.dumps(dims, sort_keys=True, separators=(",", ":"))
        if len(key) > 200:  # the column holds 500; long values are keyed by their hash
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        rendered = known[values] = (key, json.dumps(dims))
    if plain:
        known[(_AS_TEXT, group_by, raw)] = rendered
    return rendered


# Tags ``known``'s keys by text values (its other keys are tuples of (path, text) pairs).
_AS_TEXT = object()


def _upsert_daily(accepted: list[Accepted], days: list[date]) -> Statement | None:
    totals: dict[tuple, list] = {}
    known: dict[tuple, tuple[str, str]] = {}
    # each meter's group_by as a tuple (its meters share them), by the meter's id (a
    # part's meters come from one MeterSet: one meter, so one group_by, per id)
    groups: dict[int, tuple[str, ...]] = {}
    for a, day in zip(accepted, days, strict=True):
        subscription_id, customer_id = a.subscription.id, a.customer.id
        period_start = a.period_start
        # the event's rendering of the group_by last seen: its meters share one, mostly
        last_group: tuple[str, ...] | None = None
        key_text, dims = "", "{}"
        for meter, quantity_delta, included_delta, amount_delta in a.moves:
            meter_id = meter.id
            group_by = groups.get(meter_id)
            if group_by is None:
                group_by = groups[meter_id] = tuple(meter.group_by or ())
            if group_by != last_group:
                last_group = group_by
                key_text, dims = _dimensions(meter, a.p, known) if group_by else ("", "{}")
            key = (subscription_id, customer_id, meter_id, period_start, day, key_text)
            entry = totals.get(key)
            if entry is None:
                totals[key] = [dims, quantity_delta, included_delta, amount_delta, a.currency, 1]
            else:
                entry[1] += quantity_delta
                entry[2] += included_delta
                entry[3] += amount_delta
                entry[5] += 1
    rows = [
        (
            subscription_id,
            customer_id,
            meter_id,
            period_start,
            day,
            key_text,
            dims,
            quantity,
            included,
            amount,
            currency,
            count,
        )
        for (subscription_id, customer_id, meter_id, period_start, day, key_text), (
            dims,
            quantity,
            included,
            amount,
            currency,
            count,
        ) in totals.items()
    ]
    if not rows:
        return None
    source, params = _rows(
        "r",
        "s bigint, c bigint, m bigint, ps timestamptz, d date, k text, dims text, q numeric, "
        "i numeric, a numeric, cur text, n bigint",
        rows,
    )
    return (
        "INSERT INTO metering_dailyusage (subscription_id, customer_id, meter_id, period_start, "
        "day, dimension_key, dimensions, quantity, included_quantity, amount, currency, "
        "event_count, updated_at) "
        f"SELECT s, c, m, ps, d, k, dims::jsonb, q, i, a, cur, n, now() FROM {source} "
        "ON CONFLICT (subscription_id, meter_id, period_start, day, dimension_key) DO "
        "UPDATE SET quantity = metering_dailyusage.quantity + EXCLUDED.quantity, "
        "included_quantity = metering_dailyusage.included_quantity + EXCLUDED.included_quantity, "
        "amount = metering_dailyusage.amount + EXCLUDED.amount, "
        "event_count = metering_dailyusage.event_count + EXCLUDED.event_count, updated_at = now()",
        params,
    )


def _costs(accepted: list[Accepted]) -> list[Decimal | None]:
    """Each event's provider cost rounded to the ledger's places (None: not an LLM event),
    worked out once for the posting, the event's row and the model counters."""
    return [ledger_round(a.p.cost.total) if a.p.cost is not None else None for a in accepted]


def _days(accepted: list[Accepted]) -> list[date]:
    """Each event's UTC day (its daily and model counters'); a part's events share few
    timestamps, each converted once."""
    days: dict[datetime, date] = {}
    result = []
    for a in accepted:
        timestamp = a.p.source.timestamp
        day = days.get(timestamp)
        if day is None:
            day = days[timestamp] = timestamp.astimezone(UTC).date()
        result.append(day)
    return result


def _model_totals(
    accepted: list[Accepted], costs: list[Decimal | None], days: list[date]
) -> dict[tuple, list]:
    """The part's LLM usage per (customer, subscription, period, UTC day, provider, model,
    currency): [events, the five token kinds, amount charged, provider cost]."""
    totals: dict[tuple, list] = {}
    for a, cost, day in zip(accepted, costs, days, strict=True):
        p, money = a.p, a.money
        if p.usage is None:
            continue
        u = p.usage
        key = (
            a.customer.id,
            a.subscription.id,
            a.period_start,
            day,
            u.provider,
            u.model,
            a.currency,
        )
        entry = totals.get(key)
        if entry is None:
            entry = totals[key] = [0, 0, 0, 0, 0, 0, ZERO, ZERO]
        entry[0] += 1
        entry[1] += u.input_tokens
        entry[2] += u.cache_read_tokens
        entry[3] += u.cache_write_tokens
        entry[4] += u.output_tokens
        entry[5] += u.reasoning_tokens
        entry[6] += money
        assert cost is not None, "priced with its usage (prepare._llm_usage)"
        entry[7] += cost
    return totals


def _upsert_model_usage(totals: dict[tuple, list]) -> Statement | None:
    if not totals:
        return None
    source, params = _rows(
        "x",
        "c bigint, s bigint, ps timestamptz, d date, pr text, mo text, cur text, n bigint, "
        "i bigint, cr bigint, cw bigint, o bigint, r bigint, a numeric, co numeric",
        [(*key, *values) for key, values in totals.items()],
    )
    return (
        "INSERT INTO metering_modelusage (customer_id, subscription_id, period_start, day, "
        "provider, model, currency, event_count, input_tokens, cache_read_tokens, "
        "cache_write_tokens, output_tokens, reasoning_tokens, amount, cost, updated_at) "
        f"SELECT c, s, ps, d, pr, mo, cur, n, i, cr, cw, o, r, a, co, now() FROM {source} "
        "ON CONFLICT (subscription_id, period_start, day, provider, model, currency) DO UPDATE SET "
        "event_count = metering_modelusage.event_count + EXCLUDED.event_count, "
        "input_tokens = metering_modelusage.input_tokens + EXCLUDED.input_tokens, "
        "cache_read_tokens = metering_modelusage.cache_read_tokens + EXCLUDED.cache_read_tokens, "
        "cache_write_tokens = metering_modelusage.cache_write_tokens "
        "+ EXCLUDED.cache_write_tokens, "
        "output_tokens = metering_modelusage.output_tokens + EXCLUDED.output_tokens, "
        "reasoning_tokens = metering_modelusage.reasoning_tokens + EXCLUDED.reasoning_tokens, "
        "amount = metering_modelusage.amount + EXCLUDED.amount, "
        "cost = metering_modelusage.cost + EXCLUDED.cost, updated_at = now()",
        params,
    )


def _upsert_margin_usage(totals: dict[tuple, list]) -> Statement | None:
    """The part's amounts and costs added to ``MarginUsage``'s two grains in one
    statement: per customer and month, and per day and model in this connection's slot.
    Rows are locked in the unique key's order (the ORDER BY), so two parts sharing a slot
    wait for each other but never deadlock."""
    summed: dict[tuple, list] = {}
    for (customer_id, _s, _ps, day, provider, model, currency), values in totals.items():
        entry = summed.setdefault((customer_id, day, provider, model, currency), [0, ZERO, ZERO])
        entry[0] += values[0]
        entry[1] += values[6]
        entry[2] += values[7]
    if not summed:
        return None
    source, params = _rows(
        "x",
        "c bigint, d date, m date, pr text, mo text, cur text, n bigint, a numeric, co numeric",
        [
            (c, day, day.replace(day=1), provider, model, cur, *values)
            for (c, day, provider, model, cur), values in summed.items()
        ],
    )
    return (
        "INSERT INTO metering_marginusage (customer_id, day, provider, model, currency, slot, "
        "event_count, amount, cost, updated_at) "
        "SELECT CASE WHEN g.k THEN c END, CASE WHEN g.k THEN m ELSE d END, "
        "CASE WHEN g.k THEN '' ELSE pr END, CASE WHEN g.k THEN '' ELSE mo END, cur, "
        f"CASE WHEN g.k THEN 0 ELSE pg_backend_pid() %% {MARGIN_SLOTS} END AS sl, "
        f"sum(n), sum(a), sum(co), now() FROM {source} "
        "CROSS JOIN (VALUES (true), (false)) AS g(k) GROUP BY 1, 2, 3, 4, 5, 6 "
        "ORDER BY 1 NULLS FIRST, 2, 3, 4, 5, 6 "
        "ON CONFLICT ON CONSTRAINT metering_margin_usage DO UPDATE SET "
        "event_count = metering_marginusage.event_count + EXCLUDED.event_count, "
        "amount = metering_marginusage.amount + EXCLUDED.amount, "
        "cost = metering_marginusage.cost + EXCLUDED.cost, updated_at = now()",
        params,
    )
