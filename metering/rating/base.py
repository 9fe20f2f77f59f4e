"""The figures every part of rating shares: the bounds that keep an event inside its
columns, the one rounding rule (``ledger_round``: the ledger's 12 places, half-even), the
ledger's sinks, and what comes in and goes out (``EventIn``, ``Outcome``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

from billing.errors import BillingError
from billing.meters import LLM_FIELDS

ZERO = Decimal(0)
LLM_FIELD_NAMES = frozenset(LLM_FIELDS)
LEDGER_QUANTUM = Decimal("1e-12")
EXACT_QUANTUM = Decimal("1e-24")
REVENUE = "@Revenue"
CREDITS_USED = "@CreditsUsed"
CREDITS = "CREDITS"
FUTURE_TOLERANCE = timedelta(minutes=5)
# Bounds that keep every figure inside its column (NUMERIC(38, 12) and friends): a reading
# and a period's quantity stay below MAX_QUANTITY, one event moves less than MAX_CHARGE.
MAX_QUANTITY = Decimal(10) ** 20
MAX_QUANTITY_INT = 10**20  # the same bound, for comparing an int without a Decimal
MAX_CHARGE = Decimal(10) ** 18
RESERVED_PROPERTY = "llm"


ROUNDING = Context(prec=80, rounding=ROUND_HALF_EVEN)  # (Pricer.step inlines the two below)


def ledger_round(amount: Decimal) -> Decimal:
    """To the ledger's 12 places, half-even: the one rounding rule of rating."""
    return amount.quantize(LEDGER_QUANTUM, context=ROUNDING)


def exact(amount: Decimal) -> Decimal:
    return amount.quantize(EXACT_QUANTUM, context=ROUNDING)


# --- input and outcome ---------------------------------------------------------------------


@dataclass(slots=True)  # one an event: slots, cheaper to make and read
class EventIn:
    idempotency_key: str
    customer: str
    event_name: str
    timestamp: datetime
    properties: dict[str, Any] = field(default_factory=dict)
    # When we received it: now, or the moment an asynchronous acceptance stored it.
    received_at: datetime | None = None
    # The customer's project (its key) the event is charged to (metering.rating.budgets).
    project: str | None = None
    # ``properties`` as JSON text, when the caller has it already (the API measures the
    # properties' size by it): written as is instead of dumped again.
    properties_json: str | None = None


@dataclass(slots=True)  # one an event: slots, cheaper to make and read
class Outcome:
    status: str  # "accepted", "duplicate" or "rejected"
    event: dict[str, Any] | None = None
    error: BillingError | None = None
