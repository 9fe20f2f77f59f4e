"""Alerts (``billing.models.alerts``): their definitions written and checked, the wallet
kinds evaluated, and every crossing recorded and delivered.

    create_alert / update_alert / delete_alert   definitions, checked (ValidationFailed)
    update_alert_settings / portal_low_balance   the portal's low-balance setting
    evaluate_wallet_alerts(now)                  balance_below and credits_below, set-based
    apply_observations(observations, now)        states moved: fire once, re-arm on recovery
    active_alerts(customer) / alert_states(…)    what is triggered now, for the portal and API

The metering kinds (spend, usage share, negative margin) read metering's counters and are
evaluated by ``metering.alerts``, which hands its observations to ``apply_observations``;
``metering.alerts.evaluate_alerts`` (beat, every minute) runs every kind.

Firing once
-----------
An evaluation reads every subject's value in one statement per kind and records it in the
subject's ``AlertState`` (one upsert, in a stable order so two evaluators never deadlock).
A crossing is then one short transaction per subject whose side changed: a conditional
``UPDATE … SET status = 'triggered' WHERE status = 'armed' RETURNING crossings`` (the
evaluator that loses the race updates nothing and sends nothing), the ``AlertFiring``
history row, and the outbox events (``alert.triggered``, and ``wallet.low_balance`` for a
balance alert) with the dedupe key ``alert:{state id}:{crossing}``. The e-mail goes after
the commit. Recovery is the same transition backwards (``alert.resolved``, no e-mail).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from billing import errors, limits, outbox
from billing.models import (
    Alert,
    AlertFiring,
    AlertKind,
    AlertScope,
    AlertSource,
    AlertState,
    AlertStatus,
    Customer,
    EventType,
    FiringAction,
    Meter,
    Plan,
    PlanCharge,
)

log = logging.getLogger(__name__)

CREDITS = "CREDITS"  # the credits wallet's ledger unit (billing.services.CREDITS)
MAX_RECIPIENTS = 20
MAX_SHARE = Decimal(1000)  # usage_above_share: a share above 1000× the allowance is a typo
CHUNK = 1000  # observations upserted per statement
WALLET_KINDS = (AlertKind.BALANCE_BELOW, AlertKind.CREDITS_BELOW)
LIVE = ("trialing", "active", "past_due")  # subscription statuses a plan alert watches


class AlertNotFound(errors.BillingError):
    code = "alert_not_found"
    http_status = 404


# --- definitions ---------------------------------------------------------------------------


def clean_recipients(values: Iterable[str]) -> list[str]:
    cleaned: list[str] = []
    for value in values:
        address = str(value).strip()
        try:
            validate_email(address)
        except DjangoValidationError:
            raise errors.ValidationFailed(
                f"{address!r} is not an e-mail address", param="recipients"
            ) from None
        if address.lower() not in (known.lower() for known in cleaned):
            cleaned.append(address)
    if len(cleaned) > MAX_RECIPIENTS:
        raise errors.ValidationFailed(f"at most {MAX_RECIPIENTS} recipients", param="recipients")
    return cleaned


def _check_threshold(kind: str, threshold: Decimal, currency: str) -> None:
    if limits.amount_problem(threshold):
        raise errors.ValidationFailed(limits.amount_problem(threshold) or "", param="threshold")
    if kind == AlertKind.BALANCE_BELOW:
        return  # a postpaid balance may be watched below zero
    if threshold < 0:
        raise errors.ValidationFailed("the threshold cannot be negative", param="threshold")
    if kind == AlertKind.USAGE_ABOVE_SHARE and not (0 < threshold <= MAX_SHARE):
        raise errors.ValidationFailed(
            "a share of the allowance above 0 (0.8 = 80 %)", param="threshold"
        )
    if kind == AlertKind.NEGATIVE_MARGIN and threshold != 0:
        raise errors.ValidationFailed(
            "a negative-margin alert has no threshold (it fires when cost exceeds price)",
            param="threshold",
        )
    del currency


def check_definition(
    *,
    kind: str,
    scope: str,
    customer: Customer | None,
    plan_code: str,
    plan_version: int | None,
    threshold: Decimal,
    currency: str,
    meter: Meter | None,
    per_model: bool,
) -> None:
    if kind not in AlertKind.values:
        raise errors.ValidationFailed(f"unknown alert kind {kind!r}", param="kind")
    if scope not in AlertScope.values:
        raise errors.ValidationFailed(f"unknown scope {scope!r}", param="scope")
    if scope == AlertScope.CUSTOMER:
        if customer is None:
            raise errors.ValidationFailed("a customer alert names its customer", param="customer")
        if plan_code or plan_version is not None:
            raise errors.ValidationFailed("a customer alert names no plan", param="plan")
    elif scope == AlertScope.PLAN:
        if customer is not None:
            raise errors.ValidationFailed("a plan alert names no customer", param="customer")
        if not plan_code:
            raise errors.ValidationFailed("a plan alert names its plan", param="plan")
        versions = Plan.objects.filter(code=plan_code)
        if plan_version is not None:
            versions = versions.filter(version=plan_version)
        if not versions.exists():
            raise errors.PlanNotFound(
                f"no plan {plan_code!r}"
                + ("" if plan_version is None else f" version {plan_version}"),
                param="plan_version" if plan_version is not None else "plan",
            )
        if kind == AlertKind.USAGE_ABOVE_SHARE and meter is not None:
            allowance = PlanCharge.objects.filter(
                plan__in=versions, meter=meter, included_quantity__gt=0
            )
            if not allowance.exists():
                raise errors.ValidationFailed(
                    f"plan {plan_code!r} includes no allowance of meter {meter.code!r}",
                    param="meter",
                )
    else:  # all
        if kind != AlertKind.NEGATIVE_MARGIN:
            raise errors.ValidationFailed(
                "only a negative-margin alert may watch every customer", param="scope"
            )
        if customer is not None or plan_code:
            raise errors.ValidationFailed(
                "an alert on every customer names no customer or plan", param="scope"
            )
    if kind == AlertKind.USAGE_ABOVE_SHARE:
        if meter is None:
            raise errors.ValidationFailed("a usage alert names its meter", param="meter")
    elif meter is not None:
        raise errors.ValidationFailed("only a usage alert names a meter", param="meter")
    if per_model and kind != AlertKind.NEGATIVE_MARGIN:
        raise errors.ValidationFailed(
            "only a negative-margin alert is split per model", param="per_model"
        )
    if currency:
        if kind not in (AlertKind.BALANCE_BELOW, AlertKind.SPEND_ABOVE, AlertKind.CREDITS_BELOW):
            raise errors.ValidationFailed(f"a {kind} alert has no currency", param="currency")
        if kind == AlertKind.CREDITS_BELOW and currency != CREDITS:
            raise errors.ValidationFailed("a credits alert counts CREDITS", param="currency")
        problem = limits.currency_problem(currency, units=limits.LEDGER_UNITS)
        if problem:
            raise errors.ValidationFailed(problem, param="currency")
    _check_threshold(kind, threshold, currency)


@transaction.atomic
def create_alert(
    *,
    kind: str,
    scope: str,
    threshold: Decimal,
    customer: Customer | None = None,
    plan_code: str = "",
    plan_version: int | None = None,
    currency: str = "",
    meter: Meter | None = None,
    per_model: bool = False,
    recipients: Sequence[str] = (),
    enabled: bool = True,
    name: str = "",
    source: str = AlertSource.API,
) -> Alert:
    """A new alert definition; refused (``ValidationFailed``, ``plan_not_found``) when it
    does not make sense. Its states appear at the next evaluation."""
    check_definition(
        kind=kind,
        scope=scope,
        customer=customer,
        plan_code=plan_code,
        plan_version=plan_version,
        threshold=threshold,
        currency=currency,
        meter=meter,
        per_model=per_model,
    )
    return Alert.objects.create(
        name=name.strip(),
        kind=kind,
        scope=scope,
        customer=customer,
        plan_code=plan_code,
        plan_version=plan_version,
        threshold=threshold,
        currency="" if kind == AlertKind.CREDITS_BELOW else currency,  # always CREDITS
        meter=meter,
        per_model=per_model,
        recipients=clean_recipients(recipients),
        enabled=enabled,
        source=source,
    )


KEEP: Any = object()  # update_alert: leave this field as it is


@transaction.atomic
def update_alert(
    *,
    alert: Alert,
    name: str = KEEP,
    threshold: Decimal = KEEP,
    currency: str = KEEP,
    recipients: Sequence[str] = KEEP,
    enabled: bool = KEEP,
) -> Alert:
    """Change what an alert compares with, whom it tells, or whether it runs. What it
    watches (kind, scope, customer, plan, meter) is fixed: another subject is another alert.

    A new threshold or currency re-arms its triggered states (without an ``alert.resolved``):
    a subject still past the new threshold fires again at the next evaluation, with the new
    figures — as the portal's setting always did."""
    alert = Alert.objects.select_for_update().get(pk=alert.pk)
    new_threshold = alert.threshold if threshold is KEEP else threshold
    new_currency = alert.currency if currency is KEEP else currency
    check_definition(
        kind=alert.kind,
        scope=alert.scope,
        customer=alert.customer,
        plan_code=alert.plan_code,
        plan_version=alert.plan_version,
        threshold=new_threshold,
        currency=new_currency,
        meter=alert.meter,
        per_model=alert.per_model,
    )
    if alert.kind == AlertKind.CREDITS_BELOW:
        new_currency = ""  # always the CREDITS wallet
    rearm = new_threshold != alert.threshold or new_currency != alert.currency
    alert.threshold, alert.currency = new_threshold, new_currency
    if name is not KEEP:
        alert.name = name.strip()
    if recipients is not KEEP:
        alert.recipients = clean_recipients(recipients)
    if enabled is not KEEP:
        alert.enabled = bool(enabled)
    alert.save()
    if rearm:
        alert.states.filter(status=AlertStatus.TRIGGERED).update(
            status=AlertStatus.ARMED, updated_at=timezone.now()
        )
    return alert


@transaction.atomic
def delete_alert(*, alert: Alert) -> None:
    """The definition, its states and its history go; the outbox keeps what was told."""
    Alert.objects.filter(pk=alert.pk).delete()


def get_alert(*, alert_id: int) -> Alert:
    alert = Alert.objects.select_related("customer", "meter").filter(pk=alert_id).first()
    if alert is None:
        raise AlertNotFound(f"no alert {alert_id}")
    return alert


def list_alerts(
    *, customer: Customer | None = None, kind: str | None = None, plan_code: str | None = None
) -> QuerySet[Alert]:
    """Newest first (the API's cursor order)."""
    alerts = Alert.objects.select_related("customer", "meter").order_by("-id")
    if customer is not None:
        alerts = alerts.filter(customer=customer)
    if kind is not None:
        alerts = alerts.filter(kind=kind)
    if plan_code is not None:
        alerts = alerts.filter(plan_code=plan_code)
    return alerts


# --- the portal's low-balance setting ---------------------------------------------------------


def portal_low_balance(customer: Customer) -> Alert | None:
    """The customer's own low-balance alert (set in the portal), if any."""
    return Alert.objects.filter(customer=customer, source=AlertSource.PORTAL).first()


@transaction.atomic
def update_alert_settings(*, customer: Customer, threshold: Decimal | None, email: str) -> Customer:
    """The portal's low-balance alert: below ``threshold`` available (in the customer's
    currency), ``email`` is told once each time the balance falls below it. No threshold
    removes the alert. Kept as an alert of source ``portal``, one per customer."""
    if threshold is not None and threshold < 0:
        raise errors.ValidationFailed("the threshold cannot be negative", param="threshold")
    Customer.objects.select_for_update().filter(pk=customer.pk).first()  # one writer
    existing = portal_low_balance(customer)
    address = email.strip()
    if threshold is None:
        if existing is not None:
            delete_alert(alert=existing)
    elif existing is None:
        create_alert(
            kind=AlertKind.BALANCE_BELOW,
            scope=AlertScope.CUSTOMER,
            customer=customer,
            threshold=threshold,
            recipients=[address] if address else [],
            name="Low balance",
            source=AlertSource.PORTAL,
        )
    else:
        update_alert(
            alert=existing,
            threshold=threshold,
            recipients=[address] if address else [],
            enabled=True,
        )
    customer.refresh_from_db()
    return customer


# --- evaluation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One subject's value as an evaluation read it, and what it was compared with."""

    alert_id: int
    customer_id: int | None
    subject_key: str
    value: Decimal
    limit: Decimal
    breached: bool
    unit: str = ""  # the currency, CREDITS, or the meter's unit, for messages


@dataclass
class Evaluation:
    """What one evaluation did: subjects observed, crossings fired and resolved."""

    observed: int = 0
    triggered: list[int] = field(default_factory=list)  # AlertFiring ids
    resolved: list[int] = field(default_factory=list)

    def add(self, other: Evaluation) -> None:
        self.observed += other.observed
        self.triggered += other.triggered
        self.resolved += other.resolved


# The subjects of the enabled alerts of one kind, as a CTE ``targets``: one row per (alert,
# customer) with the customer's live subscription (if any) and its plan. Plan alerts expand
# to the plan's live subscribers. ``%(customers)s``: only these customers (NULL: all).
TARGETS_SQL = """
targets AS (
    SELECT a.id AS alert_id, a.customer_id, a.threshold, a.currency, a.meter_id, a.per_model,
           s.id AS subscription_id, s.plan_id
    FROM billing_alert a
    LEFT JOIN billing_subscription s
           ON s.customer_id = a.customer_id AND s.status IN ('trialing', 'active', 'past_due')
    WHERE a.enabled AND a.kind = %(kind)s AND a.scope = 'customer'
      AND (%(customers)s::bigint[] IS NULL OR a.customer_id = ANY(%(customers)s::bigint[]))
    UNION ALL
    SELECT a.id, s.customer_id, a.threshold, a.currency, a.meter_id, a.per_model, s.id, s.plan_id
    FROM billing_alert a
    JOIN billing_plan p
      ON p.code = a.plan_code AND (a.plan_version IS NULL OR p.version = a.plan_version)
    JOIN billing_subscription s
      ON s.plan_id = p.id AND s.status IN ('trialing', 'active', 'past_due')
    WHERE a.enabled AND a.kind = %(kind)s AND a.scope = 'plan'
      AND (%(customers)s::bigint[] IS NULL OR s.customer_id = ANY(%(customers)s::bigint[]))
)
"""

_WALLET_SQL = (
    "WITH "
    + TARGETS_SQL
    + """
SELECT t.alert_id, t.customer_id, w.currency, t.threshold,
       COALESCE((SELECT SUM(b.posted - b.held) FROM ledger_balance b
                 WHERE b.account_id = w.account_id), 0) AS available
FROM targets t
JOIN billing_customer c ON c.id = t.customer_id
JOIN billing_wallet w ON w.customer_id = t.customer_id
 AND w.currency = CASE WHEN %(kind)s = 'credits_below' THEN 'CREDITS'
                       ELSE COALESCE(NULLIF(t.currency, ''), c.currency) END
ORDER BY t.alert_id, t.customer_id
"""
)


def run_targets_query(
    sql: str, *, kind: str, customer_ids: Sequence[int] | None, **params: Any
) -> list[tuple]:
    """Run a statement built on ``TARGETS_SQL`` (shared with ``metering.alerts``)."""
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {
                "kind": kind,
                "customers": None if customer_ids is None else list(customer_ids),
                **params,
            },
        )
        return cursor.fetchall()


def observe_wallet_alerts(
    *, kind: str, customer_ids: Sequence[int] | None = None
) -> list[Observation]:
    """balance_below / credits_below: each subject's available balance against the
    threshold, strictly below (equal is not a crossing). A customer without a wallet in
    the currency has no balance to watch and is left out."""
    return [
        Observation(
            alert_id=alert_id,
            customer_id=customer_id,
            subject_key="",
            value=available,
            limit=threshold,
            breached=available < threshold,
            unit=currency,
        )
        for alert_id, customer_id, currency, threshold, available in run_targets_query(
            _WALLET_SQL, kind=kind, customer_ids=customer_ids
        )
    ]


def evaluate_wallet_alerts(
    *, now: datetime | None = None, customer_ids: Sequence[int] | None = None
) -> Evaluation:
    """The balance and credits alerts (those the core can read without metering)."""
    now = now or timezone.now()
    result = Evaluation()
    for kind in WALLET_KINDS:
        result.add(
            apply_observations(observe_wallet_alerts(kind=kind, customer_ids=customer_ids), now=now)
        )
    return result


def check_low_balances(*, now: datetime | None = None) -> int:
    """The balance and credits alerts evaluated; how many fired (the former beat job's
    name, kept for the task of that name)."""
    return len(evaluate_wallet_alerts(now=now).triggered)


_UPSERT_STATES = """
INSERT INTO billing_alertstate
    (alert_id, customer_id, subject_key, status, last_value, "limit", crossings, updated_at)
SELECT x.a, x.c, x.k, 'armed', x.v, x.l, 0, %(now)s
FROM unnest(%(a)s::bigint[], %(c)s::bigint[], %(k)s::text[], %(v)s::numeric[],
            %(l)s::numeric[]) WITH ORDINALITY AS x(a, c, k, v, l, n)
ORDER BY x.n
ON CONFLICT ON CONSTRAINT billing_alert_state_subject DO UPDATE
SET last_value = EXCLUDED.last_value, "limit" = EXCLUDED."limit", updated_at = EXCLUDED.updated_at
WHERE billing_alertstate.last_value IS DISTINCT FROM EXCLUDED.last_value
   OR billing_alertstate."limit" IS DISTINCT FROM EXCLUDED."limit"
"""

# Equalities only (a state without a customer matched as customer 0), so that a plan alert's
# thousands of subjects are matched by a hash join, not each against all of the alert's.
_READ_STATES = """
SELECT s.id, s.status, x.n
FROM unnest(%(a)s::bigint[], %(c)s::bigint[], %(k)s::text[]) WITH ORDINALITY AS x(a, c, k, n)
JOIN billing_alertstate s
  ON s.alert_id = x.a AND COALESCE(s.customer_id, 0) = COALESCE(x.c, 0) AND s.subject_key = x.k
WHERE s.alert_id = ANY(%(a)s::bigint[])
"""


def _sort_key(observation: Observation) -> tuple[int, int, str]:
    return (observation.alert_id, observation.customer_id or 0, observation.subject_key)


def apply_observations(
    observations: Sequence[Observation], *, now: datetime | None = None
) -> Evaluation:
    """Record each subject's value in its state, then move the states whose side changed:
    armed and breached fires, triggered and recovered re-arms (see the module doc)."""
    now = now or timezone.now()
    result = Evaluation()
    # One row per subject, in one lock order for every evaluator.
    ordered = sorted({_sort_key(o): o for o in observations}.values(), key=_sort_key)
    result.observed = len(ordered)
    for start in range(0, len(ordered), CHUNK):
        chunk = ordered[start : start + CHUNK]
        columns: dict[str, Any] = {
            "a": [o.alert_id for o in chunk],
            "c": [o.customer_id for o in chunk],
            "k": [o.subject_key for o in chunk],
        }
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                _UPSERT_STATES,
                {
                    **columns,
                    "v": [o.value for o in chunk],
                    "l": [o.limit for o in chunk],
                    "now": now,
                },
            )
        with connection.cursor() as cursor:
            cursor.execute(_READ_STATES, columns)
            states = {n - 1: (state_id, status) for state_id, status, n in cursor.fetchall()}
        for i, observation in enumerate(chunk):
            state_id, status = states[i]
            if observation.breached and status == AlertStatus.ARMED:
                firing = _fire(state_id=state_id, observation=observation, now=now)
                if firing is not None:
                    result.triggered.append(firing)
            elif not observation.breached and status == AlertStatus.TRIGGERED:
                firing = _resolve(state_id=state_id, observation=observation, now=now)
                if firing is not None:
                    result.resolved.append(firing)
    return result


def _money(value: Decimal) -> str:
    return format(value.quantize(Decimal("1e-12")), "f")


def _payload(
    *,
    alert: Alert,
    customer: Customer | None,
    state_id: int,
    observation: Observation,
    crossing: int,
    at: datetime,
) -> dict[str, Any]:
    return {
        "alert": {
            "id": alert.pk,
            "name": alert.name,
            "kind": alert.kind,
            "scope": alert.scope,
            "plan": alert.plan_code or None,
            "threshold": _money(alert.threshold),
            "currency": alert.currency or None,
            "meter": alert.meter.code if alert.meter_id and alert.meter else None,
            "per_model": alert.per_model,
        },
        "state": state_id,
        "customer": customer.external_id if customer is not None else None,
        "subject": observation.subject_key,
        "value": _money(observation.value),
        "limit": _money(observation.limit),
        "unit": observation.unit,
        "crossing": crossing,
        "at": at.isoformat(),
    }


_TRANSITIONS = {
    # action: (the SET clause, the status it leaves)
    FiringAction.TRIGGERED: (
        "status = 'triggered', crossings = crossings + 1, triggered_at = %s",
        "armed",
    ),
    FiringAction.RESOLVED: ("status = 'armed', resolved_at = %s", "triggered"),
}


def _transition(
    *, state_id: int, observation: Observation, now: datetime, action: FiringAction
) -> tuple[AlertFiring, dict] | None:
    """The conditional transition of one state (only one evaluator wins it), its history
    row and its payload; None when another evaluator made it first."""
    assignment, leaving = _TRANSITIONS[action]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE billing_alertstate SET {assignment}, "
            'last_value = %s, "limit" = %s, updated_at = %s '
            "WHERE id = %s AND status = %s RETURNING crossings",
            [now, observation.value, observation.limit, now, state_id, leaving],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    crossing = row[0]
    alert = Alert.objects.select_related("meter").get(pk=observation.alert_id)
    customer = Customer.objects.get(pk=observation.customer_id) if observation.customer_id else None
    firing = AlertFiring.objects.create(
        state_id=state_id,
        alert=alert,
        customer=customer,
        crossing=crossing,
        action=action,
        value=observation.value,
        limit=observation.limit,
        unit=observation.unit,
    )
    data = _payload(
        alert=alert,
        customer=customer,
        state_id=state_id,
        observation=observation,
        crossing=crossing,
        at=now,
    )
    return firing, data


@transaction.atomic
def _fire(*, state_id: int, observation: Observation, now: datetime) -> int | None:
    """One crossing, at most once: the conditional transition, its history row, its outbox
    events; the e-mail after the commit. None when another evaluator fired it first."""
    done = _transition(
        state_id=state_id, observation=observation, now=now, action=FiringAction.TRIGGERED
    )
    if done is None:
        return None
    firing, data = done
    alert, customer = firing.alert, firing.customer
    key = f"alert:{state_id}:{firing.crossing}"
    outbox.emit(EventType.ALERT_TRIGGERED, data=data, customer=customer, dedupe_key=key)
    if alert.kind == AlertKind.BALANCE_BELOW and customer is not None:
        outbox.emit(
            EventType.WALLET_LOW_BALANCE,
            data={
                "customer": customer.external_id,
                "currency": observation.unit,
                "available": _money(observation.value),
                "threshold": _money(observation.limit),
                "alert": alert.pk,
            },
            customer=customer,
            dedupe_key=f"{key}:wallet.low_balance",
        )
    firing_id = firing.pk
    transaction.on_commit(lambda: send_firing_email(firing_id=firing_id), robust=True)
    return firing_id


@transaction.atomic
def _resolve(*, state_id: int, observation: Observation, now: datetime) -> int | None:
    done = _transition(
        state_id=state_id, observation=observation, now=now, action=FiringAction.RESOLVED
    )
    if done is None:
        return None
    firing, data = done
    outbox.emit(
        EventType.ALERT_RESOLVED,
        data=data,
        customer=firing.customer,
        dedupe_key=f"alert:{state_id}:{firing.crossing}:resolved",
    )
    return firing.pk


# --- delivery by e-mail ----------------------------------------------------------------------


def _figure(value: Decimal) -> str:
    return f"{value.normalize():f}"


def describe_firing(firing: AlertFiring) -> tuple[str, str]:
    """The e-mail's subject and body for a crossing."""
    alert, state = firing.alert, firing.state
    who = firing.customer.name if firing.customer is not None else "All customers"
    value, limit, unit = _figure(firing.value), _figure(firing.limit), firing.unit
    if alert.kind == AlertKind.BALANCE_BELOW:
        return (
            f"Low balance: {value} {unit} left",
            f"The available balance of {who} is {value} {unit}, below your alert threshold "
            f"of {limit}. Top up in the billing portal to keep using the service.",
        )
    if alert.kind == AlertKind.CREDITS_BELOW:
        return (
            f"Low credits: {value} credits left",
            f"{who} has {value} credits available, below your alert threshold of {limit}.",
        )
    if alert.kind == AlertKind.SPEND_ABOVE:
        return (
            f"Spend alert: {value} {unit} this period",
            f"The usage of {who} this billing period is worth {value} {unit}, above your "
            f"alert threshold of {limit} {unit}.",
        )
    if alert.kind == AlertKind.USAGE_ABOVE_SHARE:
        meter = alert.meter.code if alert.meter else ""
        return (
            f"Usage alert: {meter} at {value}",
            f"{who} has used {value} {unit} of {meter} this period, above "
            f"{_figure(alert.threshold)} of the included allowance ({limit}).",
        )
    return (
        f"Negative margin: {state.subject_key or who}",
        f"What the provider charges exceeds what {who} was charged "
        f"({state.subject_key}): the margin is {value} {unit}.",
    )


def send_firing_email(*, firing_id: int) -> bool:
    """E-mail a crossing to its alert's recipients, once (``emailed_at``)."""
    firing = (
        AlertFiring.objects.select_related("alert__meter", "customer", "state")
        .filter(pk=firing_id, emailed_at__isnull=True)
        .first()
    )
    if firing is None or not firing.alert.recipients:
        return False
    subject, body = describe_firing(firing)
    send_mail(
        subject=subject,
        message=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=list(firing.alert.recipients),
    )
    AlertFiring.objects.filter(pk=firing_id).update(emailed_at=timezone.now())
    return True


# --- reads for the portal and the API -----------------------------------------------------------


def active_alerts(customer: Customer) -> list[AlertState]:
    """The customer's alerts triggered now (of enabled alerts), newest first: what the
    portal shows."""
    return list(
        AlertState.objects.filter(
            customer=customer, status=AlertStatus.TRIGGERED, alert__enabled=True
        )
        .select_related("alert", "alert__meter")
        .order_by("-triggered_at", "-id")
    )


def alert_states(*, customer: Customer) -> QuerySet[AlertState]:
    """Every state of the customer's subjects (armed and triggered), newest first."""
    return (
        AlertState.objects.filter(customer=customer)
        .select_related("alert", "alert__meter")
        .order_by("-id")
    )
