"""Estimates for /authorize and holds: what usage would be charged now under the customer's
plan, allowance and tiers, and whether its wallet may spend it; read from the same balances
and counters rating uses, nothing written or locked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from billing import credits
from billing.errors import BillingError
from billing.models import (
    Customer,
    Subscription,
)
from ledger import services as ledger
from metering import catalog, errors
from metering.normalize import normalize_usage
from metering.rating.base import CREDITS, LLM_FIELD_NAMES, ZERO, EventIn, ledger_round
from metering.rating.prepare import Prepared, _quantity
from metering.rating.price import Counter, _distinct_key, _move
from metering.rating.read import (
    WalletRow,
    _load_counters,
    _meters_with_counters,
    _wallet_and_margins,
    load_customers,
)
from metering.rating.terms import _period_for, _plan_at, charge_period, plan_terms

# --- estimates: authorize and holds -----------------------------------------------------------


NOT_LOADED = object()  # estimate(): the caller did not load the subscription


@dataclass
class Estimate:
    customer: Customer
    currency: str
    amount: Decimal  # what the usage would be charged now
    balance: Decimal  # posted − held
    available: Decimal | None  # what may still be spent; None: no limit
    allowed: bool
    reason: str | None
    wallet: WalletRow | None = None
    cost: Decimal | None = None  # the provider's cost of the estimated usage (USD)


def estimate(
    *,
    customer: Customer,
    subscription: Subscription | None | object = NOT_LOADED,
    amount: Decimal | None = None,
    currency: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    event_name: str | None = None,
    now: datetime | None = None,
) -> Estimate:
    """May ``customer`` spend ``amount`` — or what an LLM call of ``model`` with these token
    counts would be charged now, under its plan, allowance and tiers? Read from the same
    balances and counters rating uses; nothing is written or locked."""
    now = now or timezone.now()
    if subscription is NOT_LOADED:
        _, subscription = load_customers(ids=[customer.pk]).get(customer.external_id, (None, None))
    assert subscription is None or isinstance(subscription, Subscription)
    terms = plan_terms(_plan_at(subscription, now)) if subscription is not None else None
    cost = None
    if amount is None and terms is not None:
        currency = terms.money_currency
    currency = currency or (terms.money_currency if terms else customer.currency)
    # the wallet and the customer's margin overrides in one query (the estimate's hot path)
    wallet, overrides = _wallet_and_margins(customer.pk, currency)
    if amount is None:
        if terms is None:
            raise errors.NoSubscription(
                f"customer {customer.external_id} has no active subscription to price usage "
                "against; authorize an amount instead",
                param="customer",
            )
        amount, cost = _estimate_usage(
            customer,
            subscription,
            terms,
            model,
            provider,
            input_tokens,
            output_tokens,
            event_name,
            now,
            overrides,
        )
    if wallet is None:
        return Estimate(
            customer,
            currency,
            amount,
            ZERO,
            ZERO,
            amount <= 0,
            None if amount <= 0 else "insufficient_funds",
        )
    assert wallet.account_id is not None, "a stored wallet has its account"
    state = ledger.read_balances(account_ids=[wallet.account_id])[wallet.account_id]
    if currency == CREDITS:
        # Credits of grants past their expiry that the expiry task has not taken yet are not
        # spendable: rating would expire them first (billing.credits.expire_due_for).
        gone = credits.expired_remaining(wallet.account_id, now=now)
        if gone > 0:
            taken = min(gone, max(state.available - (state.floor or ZERO), ZERO))
            state = ledger.LockedBalance(
                state.account_id, state.posted - taken, state.held, state.floor
            )
    spendable = None if state.floor is None else state.available - state.floor
    allowed = amount <= 0 or state.can_spend(amount)
    reason = None
    if subscription is not None and subscription.status == "past_due":
        allowed, reason = False, "subscription_past_due"  # suspended by dunning
    elif not allowed:
        if currency == CREDITS:
            reason = "insufficient_credits"
        elif wallet.billing_mode == "postpaid":
            reason = "credit_limit_exceeded"
        else:
            reason = "insufficient_funds"
    return Estimate(
        customer=customer,
        currency=currency,
        amount=amount,
        balance=state.available,
        available=spendable,
        allowed=allowed,
        reason=reason,
        wallet=wallet,
        cost=cost,
    )


def _estimate_usage(
    customer,
    subscription,
    terms,
    model,
    provider,
    input_tokens,
    output_tokens,
    event_name,
    now,
    overrides,
) -> tuple[Decimal, Decimal | None]:
    if not model:
        raise errors.InvalidEvent("give an amount, or a model with token estimates", param="model")
    usage = normalize_usage(
        {"input_tokens": input_tokens, "output_tokens": output_tokens},
        provider=provider,
        model=model,
    )
    price = catalog.find_price(provider=usage.provider, model=usage.model, at=now)
    cost = catalog.cost_of(price, usage, now)
    names = {event_name} if event_name else set(terms.llm_event_names)
    period_start, period_end, in_trial = _period_for(subscription, terms, now)
    properties = {"model": model, **({"provider": provider} if provider else {})}
    # what a unique_count meter could read of the estimated event: its properties or usage
    readable = [*properties.values(), *(getattr(usage, name) for name in LLM_FIELD_NAMES)]
    meters, counters, seen = _meters_with_counters(
        names, subscription.pk, period_start, [_distinct_key(v) for v in readable]
    )
    prepared = Prepared(
        index=0,
        source=EventIn("estimate", customer.external_id, next(iter(names), ""), now, properties),
        meters=meters,
        usage=usage,
        price=price,
        cost=cost,
    )
    # A charge on its own cadence counts over its own period: that counter, read apart.
    spans = {
        meter.pk: charge_period(
            subscription, terms.charges.get(meter.pk), (period_start, period_end), in_trial, now
        )
        for meter in meters
    }
    own = {(subscription.pk, m, start) for m, (start, _) in spans.items() if start != period_start}
    if own:
        loaded, seen_there = _load_counters(
            own,
            [(*key, _distinct_key(v)) for key in own for v in readable],
        )
        counters.update(loaded)
        seen.update(seen_there)
    money = ZERO
    for meter in meters:
        try:
            reading = _quantity(meter, prepared)
        except BillingError:
            continue  # a meter reading a property the estimate cannot know
        if reading is None:
            continue
        start, end = spans[meter.pk]
        key = (subscription.pk, meter.pk, start)
        counter = counters.get(key, Counter(subscription.pk, meter.pk, start, end))
        counter.distinct_values = seen.get(key, set())
        move = _move(counter, meter, reading, prepared, terms, in_trial, overrides)
        money += move.charged - counter.charged
    return money, ledger_round(cost.total)
