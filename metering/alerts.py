"""The alerts that read metering's counters, and the evaluation of every alert.

    evaluate_alerts(now)        every enabled alert of every kind (beat, every minute)
    observe_spend               spend_above: the period's usage worth, from PeriodUsage
    observe_usage_share         usage_above_share: a meter's quantity against share × allowance
    observe_negative_margin     negative_margin: per UTC day (and model), from ModelUsage
                                and, across every customer per model, MarginUsage

Definitions, states, firing and delivery are the core's (``billing.alerts``); this module
only reads values, set-based: one statement per kind over the counters rating keeps in its
own transaction (``PeriodUsage``, ``ModelUsage``, ``MarginUsage``), never over raw events.
Nothing here runs on the ingest path.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from billing import alerts
from billing.alerts import TARGETS_SQL, Evaluation, Observation
from billing.models import AlertKind

# The model price catalog's currency: a provider's cost is in it, so a margin is read only
# from usage charged in it (a customer charged in EUR or in credits has none to compare).
CATALOG_CURRENCY = "USD"
# negative_margin: today and yesterday (UTC) are evaluated, so that usage timestamped just
# before midnight and rated after it is still seen.
MARGIN_DAYS = 2

_SPEND_SQL = (
    "WITH "
    + TARGETS_SQL
    + """
SELECT t.alert_id, t.customer_id, cur.code, t.threshold,
       COALESCE((SELECT SUM(pu.amount) FROM metering_periodusage pu
                 WHERE pu.subscription_id = t.subscription_id AND pu.currency = cur.code
                   AND pu.period_start <= %(now)s AND pu.period_end > %(now)s), 0)
FROM targets t
JOIN billing_customer c ON c.id = t.customer_id
CROSS JOIN LATERAL (SELECT COALESCE(NULLIF(t.currency, ''), c.currency) AS code) cur
WHERE t.subscription_id IS NOT NULL
"""
)

_USAGE_SQL = (
    "WITH "
    + TARGETS_SQL
    + """
SELECT t.alert_id, t.customer_id, m.unit, t.threshold * pc.included_quantity,
       COALESCE((SELECT SUM(pu.quantity) FROM metering_periodusage pu
                 WHERE pu.subscription_id = t.subscription_id AND pu.meter_id = t.meter_id
                   AND pu.period_start <= %(now)s AND pu.period_end > %(now)s), 0)
FROM targets t
JOIN billing_plancharge pc
  ON pc.plan_id = t.plan_id AND pc.meter_id = t.meter_id AND pc.included_quantity > 0
JOIN metering_meter m ON m.id = t.meter_id
"""
)

# negative_margin's reads, by the grain each subject needs:
# - a customer's alerts (scope customer or plan): its ModelUsage rows of the two days, by
#   the (customer, day) index;
# - scope all, per day and model: MarginUsage's rows per day and model (customer null, a
#   row per slot), at most days × models × MARGIN_SLOTS whatever the number of customers —
#   the same sums as ModelUsage's, kept by rating in the same statement batch;
# - scope all, per customer and day: ModelUsage (MarginUsage keeps customers per month, not
#   per day); and per day and model when only some customers are evaluated
#   (``customer_ids``: their rows alone, as before).
_MARGIN_SQL = (
    "WITH "
    + TARGETS_SQL
    + """
SELECT t.alert_id, t.customer_id, x.day, x.subject, x.margin
FROM (SELECT DISTINCT alert_id, customer_id, per_model FROM targets) t
-- a subquery per subject, grouped inside: it cannot be flattened into a hash join with a
-- scan of the window's rows, so each subject reads its own rows by the (customer, day)
-- index whatever the statistics say
CROSS JOIN LATERAL (
    SELECT mu.day,
           CASE WHEN t.per_model THEN mu.provider || '/' || mu.model ELSE '' END AS subject,
           SUM(mu.amount) - SUM(mu.cost) AS margin
    FROM metering_modelusage mu
    WHERE mu.customer_id = t.customer_id AND mu.day >= %(since)s
      AND mu.currency = %(currency)s
    GROUP BY 1, 2
) x
UNION ALL
SELECT a.id, CASE WHEN a.per_model THEN NULL ELSE mu.customer_id END, mu.day,
       CASE WHEN a.per_model THEN mu.provider || '/' || mu.model ELSE '' END,
       SUM(mu.amount) - SUM(mu.cost)
FROM billing_alert a
JOIN metering_modelusage mu ON mu.day >= %(since)s AND mu.currency = %(currency)s
WHERE a.enabled AND a.kind = 'negative_margin' AND a.scope = 'all'
  AND (NOT a.per_model OR %(customers)s::bigint[] IS NOT NULL)
  AND (%(customers)s::bigint[] IS NULL OR mu.customer_id = ANY(%(customers)s::bigint[]))
  -- uncorrelated: a one-time filter, so without such an alert ModelUsage is not scanned
  -- at all (a join from billing_alert may be planned as a scan of the window's rows)
  AND EXISTS (SELECT FROM billing_alert g
              WHERE g.enabled AND g.kind = 'negative_margin' AND g.scope = 'all'
                AND (NOT g.per_model OR %(customers)s::bigint[] IS NOT NULL))
GROUP BY 1, 2, 3, 4
UNION ALL
SELECT a.id, NULL::bigint, mg.day, mg.provider || '/' || mg.model,
       SUM(mg.amount) - SUM(mg.cost)
FROM billing_alert a
JOIN metering_marginusage mg
  ON mg.customer_id IS NULL AND mg.day >= %(since)s AND mg.currency = %(currency)s
WHERE a.enabled AND a.kind = 'negative_margin' AND a.scope = 'all' AND a.per_model
  AND %(customers)s::bigint[] IS NULL
GROUP BY 1, 2, 3, 4
"""
)


def observe_spend(*, now: datetime, customer_ids: Sequence[int] | None = None) -> list[Observation]:
    """spend_above: the exact worth of the usage of the subscriber's current period (the
    base fee aside), in the alert's currency (empty: the customer's), strictly above the
    threshold. A customer without a live subscription has no period and is left out."""
    rows = alerts.run_targets_query(
        _SPEND_SQL, kind=AlertKind.SPEND_ABOVE, customer_ids=customer_ids, now=now
    )
    return [
        Observation(
            alert_id=alert_id,
            customer_id=customer_id,
            subject_key="",
            value=spend,
            limit=threshold,
            breached=spend > threshold,
            unit=currency,
        )
        for alert_id, customer_id, currency, threshold, spend in rows
    ]


def observe_usage_share(
    *, now: datetime, customer_ids: Sequence[int] | None = None
) -> list[Observation]:
    """usage_above_share: the meter's quantity this period strictly above threshold × the
    included quantity of that meter in the subscriber's plan. A plan without an allowance
    of the meter gives no subject (a share of nothing is not a share)."""
    rows = alerts.run_targets_query(
        _USAGE_SQL, kind=AlertKind.USAGE_ABOVE_SHARE, customer_ids=customer_ids, now=now
    )
    return [
        Observation(
            alert_id=alert_id,
            customer_id=customer_id,
            subject_key="",
            value=quantity,
            limit=limit,
            breached=quantity > limit,
            unit=unit,
        )
        for alert_id, customer_id, unit, limit, quantity in rows
    ]


def margin_subject(day: object, model: str) -> str:
    return f"day:{day}" + (f"|model:{model}" if model else "")


def observe_negative_margin(
    *, now: datetime, customer_ids: Sequence[int] | None = None
) -> list[Observation]:
    """negative_margin: per UTC day (today and yesterday), what the customer was charged
    minus what the provider charges us, from the per-day model counters; breached when the
    cost exceeds the price (a margin below zero; zero is not negative). One subject per
    day, or per day and model with ``per_model``."""
    since = (now.astimezone(UTC) - timedelta(days=MARGIN_DAYS - 1)).date()
    rows = alerts.run_targets_query(
        _MARGIN_SQL,
        kind=AlertKind.NEGATIVE_MARGIN,
        customer_ids=customer_ids,
        since=since,
        currency=CATALOG_CURRENCY,
    )
    return [
        Observation(
            alert_id=alert_id,
            customer_id=customer_id,
            subject_key=margin_subject(day, model),
            value=margin,
            limit=Decimal(0),
            breached=margin < 0,
            unit=CATALOG_CURRENCY,
        )
        for alert_id, customer_id, day, model, margin in rows
    ]


def evaluate_alerts(
    *, now: datetime | None = None, customer_ids: Sequence[int] | None = None
) -> Evaluation:
    """Every enabled alert of every kind, each kind read in one statement (``customer_ids``:
    only these customers' subjects)."""
    now = now or timezone.now()
    result = alerts.evaluate_wallet_alerts(now=now, customer_ids=customer_ids)
    for observe in (observe_spend, observe_usage_share, observe_negative_margin):
        result.add(alerts.apply_observations(observe(now=now, customer_ids=customer_ids), now=now))
    return result
