"""Ingestion and real-time rating: accepted usage events are stored, priced and posted to the
ledger in one database transaction, with the usage counters they move — one ledger
transaction per customer per rating part, whose legs are the sums of its events.

    ingest_events(events) → one Outcome per event: accepted, duplicate or rejected

How a batch is rated
--------------------
1. Each event is checked on its own, without the database: timestamp not in the future,
   a known ``event_name`` (meters are cached per process, reloaded when the stamp read
   with the customers says one was added), the provider's raw ``usage`` normalised, the
   model priced from the catalog (cached the same way). A bad event is rejected with its
   error; the others go on.
2. Per customer, in customer-id order, inside one transaction per part of the batch
   (whole customers, at least ``RATING_CHUNK_EVENTS`` = 250 events each, so that batches
   for the same customers overlap instead of queueing): an advisory lock on the
   customer serialises everything that rates its usage (so counters and balance checks
   see one order). Then one statement (``_read_part``) reads what rating needs under the
   locks: the live subscriptions, events already stored under the same idempotency keys
   (reported as duplicates — the unique (customer, idempotency_key) constraint backs this
   up), the wallets with their balance rows locked, the margin overrides, the counters of
   the events' periods, which of the values the events' unique_count meters would count
   their periods have counted already (``PeriodDistinctValue``, looked up value by value:
   a period's other values are never read), and ids for the events.
3. Events are priced in batch order against the period counters. Every meter reading the
   event moves its ``PeriodUsage``; a charge's exact worth moves by
   ``worth(q₁) − worth(q₀)`` (``metering.charges``), or for catalog-priced charges by
   the provider's cost of the billable tokens × (1 + margin). The money leg of the event
   is what the rounded period total moved: ``round(amount₁) − round(amount₀)`` to the
   ledger's 12 places (half-even), so the ledger never drifts from the exact total by
   more than one rounding, however many events. A part prices each counter's events with
   one ``Pricer`` (its charge, included quantity, catalog kinds and margin resolved once,
   the counter's worth carried from event to event): still in order, event by event, so
   each costs what it would cost rated alone.
4. An event the wallet cannot cover is rejected (``insufficient_funds`` for a prepaid
   wallet, ``credit_limit_exceeded`` past a postpaid credit limit, ``insufficient_credits``
   on a credits plan) and changes nothing; later events of the batch may still fit.
5. The accepted events are written. Each customer's accepted events of the part are posted
   as ONE ledger transaction (``UsagePosting``) whose legs are their sums: a token leg in
   ``TOKENS`` (customer's usage account debited, ``@TokensServed`` credited) and, per
   currency, a money leg (wallet debited, ``@Revenue`` — or ``@CreditsUsed`` on a credits
   plan — credited); a credits debit is drawn on the grants once, for the sum. All of a
   part's transactions are posted by one ``ledger.services.post_transactions_for_ids`` call
   (``post_transactions``, answering ids, not Transaction instances); then
   one statement writes the event rows (a part of one posting and few events — a single
   event — embeds the posting in that statement: ``ledger.services.posting_ctes``), each
   with its own exact amount, cost, tokens and catalog price version and the id of its
   customer's transaction (an event with nothing to post points at none), the period,
   daily and model counters and the distinct values counted now (a part of many events
   sends its rows by COPY first). PostgreSQL refuses events whose transaction's legs are
   not their sums (metering migration 0006). The
   transaction's reference is its first event's, ``usage:<customer id>:<idempotency
   key>``: unique, since that event is stored once, so a part of one event posts exactly
   what one transaction per event did. A retried batch finds its stored events as
   duplicates under the customer's rating lock and posts nothing for them.
6. Every part of a batch but the last commits with ``synchronous_commit`` off; the last
   commits synchronously, with a commit record even if it wrote nothing, before the answer
   goes out. The WAL is flushed in order, so that flush makes every earlier part durable
   too: one fsync a batch, nothing acknowledged undurable; after a crash the retry finds
   what stood as duplicates (``ingest.RATING_CHUNK_EVENTS`` says more). Inside a caller's
   transaction nothing is set.

A single event (a part of one event) thus costs three statements in its transaction: its
customer found and locked (with the meters' stamp), what rating needs read, the posting
with the write; six round trips with BEGIN, COMMIT and the API key's lookup before them.
An event naming a customer's ``project`` costs one statement more: its budget read
(``budgets``, docs/budgets.md); the project's spend is upserted with the write.

Consumption models: *metered* and *balance* plans debit money (postpaid wallets go into
overdraft down to their credit limit; prepaid ones refuse what they cannot cover);
*credits* plans debit ``CREDITS`` at ``billable units / units_per_credit``. Usage inside a
trial period is counted and costed but free.

The package: one job a module, each importing only those listed above it
-------------------------------------------------------------------------
``base``       bounds, the rounding rule, the ledger's sinks, ``EventIn`` and ``Outcome``
``sql``        server-bound statements, rows as JSON or arrays, statements in one round trip
``prepare``    step 1: each event checked, normalised and priced alone; the meters, cached
``terms``      plan terms (cached), the plan at a moment, the period an event falls in
``price``      pricing: a counter's ``Pricer`` (what an event does to it); catalog deltas, margins
``read``       customers and subscriptions; the part's one read under the locks (step 2)
``budgets``    projects' budgets: the spend read under the lock, checked, upserted (write)
``write``      step 5: the postings, the event rows and the counters
``rate``       steps 3-4: a part's events priced, checked against their wallets, accepted
``ingest``     ``ingest_events``: parts of whole customers, their transactions and locks
``estimates``  ``estimate``: what usage would cost now, for /authorize and holds
"""

from metering.rating.base import (
    CREDITS,
    CREDITS_USED,
    LEDGER_QUANTUM,
    REVENUE,
    EventIn,
    Outcome,
    ledger_round,
)
from metering.rating.estimates import Estimate, estimate
from metering.rating.ingest import clear_caches, ingest_events  # RATING_CHUNK_EVENTS: set it there
from metering.rating.prepare import check_event
from metering.rating.read import load_customers
from metering.rating.sql import execute_bound
from metering.rating.terms import PlanTerms, charge_terms_of, plan_terms

__all__ = [
    "CREDITS",
    "CREDITS_USED",
    "LEDGER_QUANTUM",
    "REVENUE",
    "Estimate",
    "EventIn",
    "Outcome",
    "PlanTerms",
    "check_event",
    "clear_caches",
    "estimate",
    "execute_bound",
    "ingest_events",
    "ledger_round",
    "load_customers",
    "charge_terms_of",
    "plan_terms",
]
