"""Rating a part, its customers' rating locks held: each event placed in its plan and period,
priced against the period counters, checked against its wallet (refused if the wallet cannot
cover it, with nothing changed), and the accepted handed to ``write._write``."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from billing import credits
from billing.errors import BillingError
from billing.models import (
    Aggregation,
    ConsumptionModel,
    Customer,
    Meter,
    Subscription,
)
from ledger import errors as ledger_errors
from ledger import services as ledger
from metering import errors
from metering.charges import ChargeTerms
from metering.rating import budgets
from metering.rating.base import (
    CREDITS,
    MAX_CHARGE,
    MAX_QUANTITY,
    MAX_QUANTITY_INT,
    ZERO,
    Outcome,
)
from metering.rating.prepare import COUNTED, ONE, Prepared, _quantity, fast_reading
from metering.rating.price import Counter, Pricer, _distinct_key, _Rule
from metering.rating.read import PartRead, WalletRow, _load_counters, _wallets
from metering.rating.terms import (
    PlanTerms,
    _period_for,
    _plan_at,
    charge_period,
    current_period_window,
    plan_terms,
)
from metering.rating.write import Accepted, Moved, _write


def _funds_error(wallet: WalletRow, currency: str, needed: Decimal, balance) -> BillingError:
    available = balance.available
    if currency == CREDITS:
        return errors.InsufficientCredits(
            f"{available.normalize():f} credits left; this event needs {needed.normalize():f}",
            param="customer",
        )
    if wallet.billing_mode == "postpaid":
        assert wallet.credit_limit is not None, "without a limit nothing is refused"
        return errors.CreditLimitExceeded(
            f"this event would take the {currency} wallet past its credit limit "
            f"({wallet.credit_limit.normalize():f}); balance {available.normalize():f}",
            param="customer",
        )
    return errors.InsufficientFunds(
        f"the {currency} wallet has {available.normalize():f} available; this event costs "
        f"{needed.normalize():f}",
        param="customer",
    )


def _rate(
    groups: list[tuple[Customer, Subscription | None, list[Prepared]]],
    outcomes: list[Outcome | None],
    hold_id: int | None = None,
    *,
    now: datetime | None = None,
    read: PartRead,
) -> None:
    """Rate every customer's events of a batch with a fixed number of queries, whatever the
    number of customers: the customers' rating locks are held by the caller, and ``read``
    is what ``_read_part`` found under them."""
    existing = read.existing
    # (customer, subscription, prepared, terms, period_start, period_end, trial, readings)
    placed = []
    # The plans' terms each customer's placed events are rated under, by (customer, plan).
    customer_terms: dict[tuple[int, int], PlanTerms] = {}
    # How each meter of an event's meter list reads it under a plan, worked out once per
    # list and plan: (meter, the plan's charge of it or None, ``fast_reading``'s answer).
    how_read: dict[tuple[int, int], list[tuple[Meter, ChargeTerms | None, str | None]]] = {}
    for customer, subscription, events in groups:
        customer_id = customer.id
        # From the start of its last phase on (or always, without phases), a subscription's
        # plan is one: its terms are looked up once (``_plan_at`` answers the same).
        last_terms, last_phase = None, None
        added = None  # the terms last noted in customer_terms
        window = None
        if subscription is not None:
            window = current_period_window(subscription)
            phases = subscription.phase_starts  # type: ignore[attr-defined]  # set by read
            if phases:
                last_phase = max(starts_at for starts_at, _ in phases)
        for p in events:
            key = p.source.idempotency_key
            if (customer_id, key) in existing:
                if hold_id is not None:  # settling with usage already recorded settles nothing
                    raise errors.EventAlreadyRecorded(
                        f"event {key!r} was already recorded (event "
                        f"{existing[(customer_id, key)]['id']}); settle the hold with new usage, "
                        "or release it",
                        param="event.idempotency_key",
                    )
                outcomes[p.index] = Outcome("duplicate", event=existing[(customer_id, key)])
                continue
            if subscription is None:
                outcomes[p.index] = Outcome(
                    "rejected",
                    error=errors.NoSubscription(
                        f"customer {customer.external_id} has no active subscription to rate "
                        "usage against",
                        param="customer",
                    ),
                )
                continue
            if subscription.status == "past_due":  # suspended by dunning
                outcomes[p.index] = Outcome(
                    "rejected",
                    error=errors.SubscriptionPastDue(
                        f"customer {customer.external_id}'s subscription is suspended: an "
                        "invoice is past due; usage is accepted again once it is paid",
                        param="customer",
                    ),
                )
                continue
            timestamp = p.source.timestamp
            try:
                if last_phase is None or timestamp >= last_phase:
                    if last_terms is None:
                        last_terms = plan_terms(_plan_at(subscription, timestamp))
                    terms = last_terms
                else:
                    terms = plan_terms(_plan_at(subscription, timestamp))
                if window is not None and window[0] <= timestamp < window[1]:
                    period_start, period_end, in_trial = window[2], window[1], False
                else:
                    period_start, period_end, in_trial = _period_for(subscription, terms, timestamp)
                how = how_read.get((id(p.meters), terms.plan_id))
                if how is None:
                    how = how_read[(id(p.meters), terms.plan_id)] = [
                        (meter, terms.charges.get(meter.id), fast_reading(meter))
                        for meter in p.meters
                    ]
                usage = p.usage
                readings = []
                for meter, charge, fast in how:
                    if fast is COUNTED:
                        reading = ONE
                    elif (
                        fast is not None
                        and usage is not None
                        and type(value := getattr(usage, fast)) is int
                        and 0 <= value < MAX_QUANTITY_INT
                    ):
                        reading = Decimal(value)  # what _quantity reads, charged or not
                    else:
                        reading = _quantity(meter, p, charged=charge is not None)
                    if reading is None:
                        continue
                    if charge is None or not charge.interval or in_trial:
                        readings.append((meter, reading, period_start, period_end))
                    else:  # the charge's own period: its counter's
                        start, end = charge_period(
                            subscription, charge, (period_start, period_end), in_trial, timestamp
                        )
                        readings.append((meter, reading, start, end))
            except BillingError as error:
                outcomes[p.index] = Outcome("rejected", error=error)
                continue
            placed.append(
                (customer, subscription, p, terms, period_start, period_end, in_trial, readings)
            )
            if terms is not added:
                customer_terms[(customer_id, terms.plan_id)] = added = terms
    if not placed:
        return

    wallets, overrides = _wallets(
        read, {(customer_id, t.money_currency) for (customer_id, _), t in customer_terms.items()}
    )
    hold = None
    if hold_id is not None:
        customer, _, p, terms, *_ = placed[0]
        hold = ledger.lock_hold(hold_id=hold_id)  # before the balance rows, as the ledger does
        wallet = wallets[(customer.id, terms.money_currency)]
        if hold.account_id != wallet.account_id:
            outcomes[p.index] = Outcome(
                "rejected",
                error=errors.InvalidEvent(
                    f"hold {hold.pk} reserves funds of another wallet than this usage is "
                    f"charged to ({wallet.currency} of {customer.external_id})",
                    param="customer",
                ),
            )
            return
        if hold.status != "pending":
            raise ledger_errors.HoldAlreadyResolved(f"hold {hold.pk} is already {hold.status}")
        if hold.settled_amount:
            raise errors.HoldPartlySettled(
                f"hold {hold.pk} was already settled in part by amount; settle the rest by "
                "amount, or release it and send the usage as an event",
                param="event",
            )
    # Wallets whose debits draw on grants: CREDITS, and a balance plan's money wallet (its
    # plan may grant money: billing.plan_credits).
    granting = {
        (customer_id, t.money_currency)
        for (customer_id, _), t in customer_terms.items()
        if t.consumption_model == ConsumptionModel.BALANCE
    }
    # Only wallets the locked read found due grants in: no grant can become due otherwise
    # (a grant is made with its expiry ahead, and changed only under the usage lock held).
    due_accounts = [
        w.account_id
        for key, w in wallets.items()
        if w.account_id is not None and w.due_grants and (w.currency == CREDITS or key in granting)
    ]
    expired = 0
    if due_accounts:  # credits past their expiry leave before anything is spent
        expired = credits.expire_due_for(due_accounts, now=now or timezone.now())
    balances: dict[Any, ledger.LockedBalance]
    if hold is not None:  # the hold's row first, then the balances: the ledger's order
        balances = ledger.lock_balances(
            account_ids=[w.account_id for w in wallets.values() if w.account_id is not None]
        )
    else:  # locked by _read_part; what an expiry just took is read again
        balances = dict(read.balances)
        if expired:
            balances.update(ledger.lock_balances(account_ids=due_accounts))
    for wallet in wallets.values():
        if wallet.account_id is None:  # not created yet: nothing in it, nothing below zero
            balances[_balance_key(wallet)] = ledger.LockedBalance(
                None,  # type: ignore[arg-type]  # no account yet: the ledger's type wants one
                ZERO,
                ZERO,
                ZERO,
            )
    if hold is not None:  # what is left of the hold is released when the event settles it
        b = balances[hold.account_id]
        balances[hold.account_id] = ledger.LockedBalance(
            b.account_id, b.posted, b.held - (hold.amount - hold.settled_amount), b.floor
        )
    wanted = {
        (subscription.id, meter.id, start)
        for _, subscription, _, _, _, _, _, readings in placed  # (no *_: a list an event)
        for meter, _, start, _ in readings
    }
    counters = {key: read.counters[key] for key in wanted if key in read.counters}
    counted = {key: set(values) for key, values in read.seen.items()}
    # The read looked up every meter's counter (and counted values) of each subscription's
    # current period: one of those it did not find does not exist yet (its first usage),
    # and is not looked up again. Only the counters of other periods (an event sent late,
    # a charge on its own cadence) are loaded by their keys.
    looked_up = {(s.id, s.current_period_start) for s in read.subscriptions.values()}
    missing = {key for key in wanted if key not in counters and (key[0], key[2]) not in looked_up}
    if missing:
        distinct = {
            (subscription.id, meter.id, start, _distinct_key(reading))
            for _, subscription, _, _, _, _, _, readings in placed
            for meter, reading, start, _ in readings
            if meter.aggregation == Aggregation.UNIQUE_COUNT
            and (subscription.id, meter.id, start) in missing
        }
        loaded, seen_there = _load_counters(missing, distinct)
        counters.update(loaded)
        for counter_key, values in seen_there.items():
            counted.setdefault(counter_key, set()).update(values)
    for counter_key, counter in counters.items():
        counter.distinct_values = counted.get(counter_key, set())

    budget = budgets.load(  # None (and no statement) when no event names a project
        {
            (c.id, p.source.project, start)
            for c, _, p, _, start, _, _, _ in placed
            if p.source.project is not None
        },
        hold_id,
    )
    accepted: list[Accepted] = []
    seen: dict[tuple[int, str], int] = {}
    # Each balance's (posted, held, floor) as the part's accepted events move it: what a
    # new LockedBalance an event carried, without building one (refusals build theirs).
    spending: dict[Any, list[Any]] = {}
    # One Pricer per counter and plan: what prices the counter's events, resolved once.
    pricers: dict[tuple[int, int, datetime, int], Pricer] = {}
    rules: dict[tuple, _Rule] = {}  # what the Pricers resolve, per meter and plan
    for customer, subscription, p, terms, period_start, _, in_trial, readings in placed:
        customer_id = customer.id
        event_key = (customer_id, p.source.idempotency_key)
        if event_key in seen:
            outcomes[p.index] = Outcome("duplicate", event={"_same_as": seen[event_key]})
            continue
        subscription_id = subscription.id
        steps = []
        money = ZERO
        too_big = None
        for meter, reading, counter_start, counter_end in readings:
            meter_id = meter.id
            pricer = pricers.get((subscription_id, meter_id, counter_start, terms.plan_id))
            if pricer is None:
                counter_key = (subscription_id, meter_id, counter_start)
                found = counters.get(counter_key)
                if found is None:  # the period's first usage of this meter
                    found = counters[counter_key] = Counter(
                        subscription_id,
                        meter_id,
                        counter_start,
                        counter_end,
                        distinct_values=counted.get(counter_key, set()),
                    )
                pricer = pricers[(subscription_id, meter_id, counter_start, terms.plan_id)] = (
                    Pricer(found, meter, terms, in_trial, overrides.get(customer_id, {}), rules)
                )
            step = pricer.step(reading, p)
            money += step[2] - pricer.counter.charged
            if too_big is None and step[0] >= MAX_QUANTITY:
                too_big = meter
            steps.append((pricer, step))
        if too_big is not None or abs(money) >= MAX_CHARGE:
            what = (
                f"meter {too_big.code}'s quantity this period past {MAX_QUANTITY:.0e}"
                if too_big is not None
                else f"a charge of {money.normalize():f}, beyond what one event may move"
            )
            outcomes[p.index] = Outcome(
                "rejected",
                error=errors.InvalidEvent(f"this event would take {what}", param="properties"),
            )
            continue
        currency = terms.money_currency
        wallet = wallets[(customer_id, currency)]
        balance_key = _balance_key(wallet)
        running = spending.get(balance_key)
        if running is None:
            balance = balances[balance_key]
            running = spending[balance_key] = [balance.posted, balance.held, balance.floor]
        posted, held, floor = running
        if money > 0 and not ledger.can_spend(posted, held, floor, money):
            # (replace: a wallet not created yet has a balance of account None, which a
            # compiled build would refuse to read as LockedBalance's int account_id)
            balance = replace(balances[balance_key], posted=posted, held=held, floor=floor)
            outcomes[p.index] = Outcome(
                "rejected", error=_funds_error(wallet, currency, money, balance)
            )
            continue
        project_id = None
        if budget is not None and p.source.project is not None:
            project_id, refusal = budget.charge(
                customer_id, p.source.project, period_start, money, currency
            )
            if refusal is not None:
                outcomes[p.index] = Outcome("rejected", error=refusal)
                continue
        if money:
            running[0] = posted - money
        moves: list[Moved] = []
        timestamp = p.source.timestamp
        for pricer, (quantity, amount, charged, distinct_value, included_delta) in steps:
            c = pricer.counter
            moves.append((pricer.meter, quantity - c.quantity, included_delta, amount - c.amount))
            c.quantity, c.amount, c.charged = quantity, amount, charged
            c.currency = currency
            c.event_count += 1
            c.changed = True
            if distinct_value is not None:
                c.distinct_values.add(distinct_value)
                c.new_values.append(distinct_value)
            if pricer.latest and (c.latest_at is None or timestamp >= c.latest_at):
                c.latest_at = timestamp
        seen[event_key] = p.index
        accepted.append(
            Accepted(
                p,
                customer,
                subscription,
                terms,
                period_start,
                moves,
                money,
                currency,
                wallet,
                project_id,
            )
        )
    if budget is not None:
        budget.note_refusals()
    if accepted:
        _write(
            accepted, counters, outcomes, read.event_ids, hold_id, now=now, accounts=read.accounts
        )


def _balance_key(wallet: WalletRow) -> Any:
    return wallet.account_id or ("new", wallet.customer_id, wallet.currency)
