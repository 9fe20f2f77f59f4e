"""A plan's recurring credit grant read from its declared form: the ONE reader the pricing
file (``plans[i].credit_grant``), ``POST /api/v1/plans`` (``credit_grant``) and the admin's
plan forms all use, so the three accept exactly the same grants and refuse the same
mistakes with the same words. The rules that involve the rest of the plan (a credits or
balance plan only) are ``billing.services.validate_plan_spec``'s, which every publisher runs
too.

    credit_grant:
      amount: 1000            # per grant: credits (credits plan) or money (balance plan)
      cadence: month          # period (default) | month | once
      expiry: period_end      # period_end (default) | days | never
      expiry_days: 90         # with expiry: days
      rollover: capped        # none (default) | all | capped
      rollover_cap: 500       # with rollover: capped
      rollover_periods: 2     # with rollover all or capped; left out: no limit
      priority: 30            # drain order; lower first (default 30)
      name: Monthly credits
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from billing import services
from billing.models import GrantCadence, GrantExpiry, Rollover
from billing.pricing.reading import LinedMapping, Number, PricingFileInvalid
from billing.pricing.values import MISSING, ValueReader

FIELDS = (
    "amount",
    "cadence",
    "expiry",
    "expiry_days",
    "rollover",
    "rollover_cap",
    "rollover_periods",
    "priority",
    "name",
)


def read_credit_grant(reader: ValueReader, value: Any, where: str) -> services.CreditGrantSpec:
    """The grant declared at ``where``; refuses (``PricingFileInvalid``, naming the field)
    anything it cannot express."""
    if isinstance(value, list):
        reader.fail(where, "a plan carries one recurring credit grant: a mapping, not a list")
    data = reader.mapping(value, where, required=("amount",), allowed=FIELDS)
    expiry = reader.choice(
        data, "expiry", where, choices=GrantExpiry.values, default=GrantExpiry.PERIOD_END
    )
    rollover = reader.choice(
        data, "rollover", where, choices=Rollover.values, default=Rollover.NONE
    )
    expiry_days = _whole(reader, data, "expiry_days", where, maximum=services.MAX_EXPIRY_DAYS)
    if expiry == GrantExpiry.DAYS and expiry_days is None:
        reader.fail(where, "expiry: days needs 'expiry_days' (how many days a grant lasts)")
    if expiry != GrantExpiry.DAYS and expiry_days is not None:
        reader.fail(f"{where}.expiry_days", "applies to expiry: days only")
    cap = reader.decimal(data, "rollover_cap", where, default=None, nullable=True, positive=True)
    if rollover == Rollover.CAPPED and cap is None:
        reader.fail(where, "rollover: capped needs 'rollover_cap' (the most that rolls over)")
    if rollover != Rollover.CAPPED and cap is not None:
        reader.fail(f"{where}.rollover_cap", "applies to rollover: capped only")
    periods = _whole(reader, data, "rollover_periods", where, maximum=services.MAX_ROLLOVER_PERIODS)
    priority = _whole(reader, data, "priority", where, maximum=services.MAX_GRANT_PRIORITY)
    spec = services.CreditGrantSpec(
        amount=reader.decimal(data, "amount", where, positive=True),
        cadence=reader.choice(
            data, "cadence", where, choices=GrantCadence.values, default=GrantCadence.PERIOD
        ),
        expiry=expiry,
        expiry_days=expiry_days,
        rollover=rollover,
        rollover_cap=cap,
        rollover_periods=periods,
        priority=services.PLAN_GRANT_PRIORITY if priority is None else priority,
        name=reader.string(data, "name", where, default=""),
    )
    if spec.cadence == GrantCadence.ONCE and rollover != Rollover.NONE:
        reader.fail(
            f"{where}.rollover",
            "a grant made once has no next grant to roll over into; leave rollover out",
        )
    if periods is not None and rollover == Rollover.NONE:
        reader.fail(f"{where}.rollover_periods", "applies to rollover: all or capped")
    if periods == 0 or expiry_days == 0:
        reader.fail(
            f"{where}.{'rollover_periods' if periods == 0 else 'expiry_days'}",
            "must be at least 1",
        )
    return spec


def _whole(reader: ValueReader, data: dict, key: str, where: str, *, maximum: int) -> int | None:
    value = data.get(key, MISSING)
    if value is MISSING or value is None:
        return None
    return reader.integer(data, key, where, default=0, maximum=maximum)


def _as_document(value: Any) -> Any:
    """Parsed JSON (the API's, the admin's) in the shape the pricing file's reader reads:
    numbers as ``Number`` built from their exact text. Floats never reach here: the API's
    JSON parser and the admin's read numbers as ``Decimal``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return Number(str(value), value)
    if isinstance(value, Decimal):  # a number written with a fraction: never a whole one
        return Number(format(value, "f"), None)
    if isinstance(value, dict):
        mapping = LinedMapping()
        for k, v in value.items():
            mapping[k] = _as_document(v)
        return mapping
    if isinstance(value, list):
        return [_as_document(v) for v in value]
    return value


def credit_grant_from_json(value: Any, *, source: str = "credit_grant") -> services.CreditGrantSpec:
    """The API's and the admin's entry: parsed JSON read by ``read_credit_grant``. Raises
    ``PricingFileInvalid`` whose ``location`` names the field at fault."""
    return read_credit_grant(ValueReader(source), _as_document(value), "credit_grant")


def credit_grant_as_json(spec: services.CreditGrantSpec | None) -> dict[str, Any] | None:
    """What the API returns and the admin's form shows: every field, decimals as exact
    strings, fields that do not apply left out."""
    if spec is None:
        return None
    data: dict[str, Any] = {
        "amount": format(spec.amount.normalize(), "f"),
        "cadence": spec.cadence,
        "expiry": spec.expiry,
        "rollover": spec.rollover,
        "priority": spec.priority,
    }
    if spec.expiry_days is not None:
        data["expiry_days"] = spec.expiry_days
    if spec.rollover_cap is not None:
        data["rollover_cap"] = format(spec.rollover_cap.normalize(), "f")
    if spec.rollover_periods is not None:
        data["rollover_periods"] = spec.rollover_periods
    if spec.name:
        data["name"] = spec.name
    return data


__all__ = [
    "FIELDS",
    "PricingFileInvalid",
    "credit_grant_as_json",
    "credit_grant_from_json",
    "read_credit_grant",
]
