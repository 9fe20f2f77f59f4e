"""The alerts that read metering's counters (metering.alerts): spend in the period, usage of
a meter against a share of its allowance, and negative margin per day, per customer and
per model — each at its boundary with figures worked out by hand (equal is no crossing),
once per crossing, re-armed by recovery, fired again at the next crossing; per-plan alerts
over every subscriber; the beat task."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core import mail

from billing import alerts, errors
from billing.models import (
    AlertFiring,
    AlertKind,
    AlertScope,
    AlertState,
    Meter,
    OutboundEvent,
)
from billing.services import ChargeSpec
from metering import alerts as metering_alerts
from metering import rating, tasks
from tests.factories import MeterFactory, unique
from tests.invoicing.conftest import at, meter, plan, subscribe, use

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal

APRIL_1 = at(2026, 4, 1)


@pytest.fixture(autouse=True)
def _mail(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def evaluate(now):
    return metering_alerts.evaluate_alerts(now=now)


def states(alert):
    return {
        (s.customer_id, s.subject_key): (s.status, s.crossings, s.last_value)
        for s in AlertState.objects.filter(alert=alert)
    }


# --- spend_above ------------------------------------------------------------------------------


def test_spend_above_fires_above_the_amount_and_re_arms_with_the_next_period():
    # 10 calls included, then 0.25 a call.
    calls = meter()
    subscription = subscribe(
        plan(ChargeSpec(meter=calls, unit_price=D("0.25"), included_quantity=D(10))),
        start=APRIL_1,
    )
    customer = subscription.customer
    alert = alerts.create_alert(
        kind=AlertKind.SPEND_ABOVE,
        scope=AlertScope.CUSTOMER,
        customer=customer,
        threshold=D(1),
        recipients=["cfo@acme.example"],
    )
    use(subscription, 14, at_time=at(2026, 4, 10))  # (14 − 10) × 0.25 = 1.00: equal
    assert evaluate(at(2026, 4, 10, 12)).triggered == []
    assert states(alert) == {(customer.pk, ""): ("armed", 0, D(1))}
    use(subscription, 1, at_time=at(2026, 4, 11))  # 1.25 > 1
    assert len(evaluate(at(2026, 4, 11, 12)).triggered) == 1
    assert evaluate(at(2026, 4, 11, 13)).triggered == []  # once
    assert states(alert) == {(customer.pk, ""): ("triggered", 1, D("1.25"))}
    assert mail.outbox[-1].subject == "Spend alert: 1.25 USD this period"
    # May: a new period, nothing spent yet: re-armed.
    assert len(evaluate(at(2026, 5, 2)).resolved) == 1
    use(subscription, 15, at_time=at(2026, 5, 3))  # 5 × 0.25 = 1.25 > 1 in May
    assert len(evaluate(at(2026, 5, 3, 12)).triggered) == 1
    assert states(alert) == {(customer.pk, ""): ("triggered", 2, D("1.25"))}
    keys = OutboundEvent.objects.filter(type="alert.triggered").values_list("dedupe_key", flat=True)
    state = AlertState.objects.get(alert=alert)
    assert sorted(keys) == [f"alert:{state.pk}:1", f"alert:{state.pk}:2"]
    assert len(mail.outbox) == 2


# --- usage_above_share ------------------------------------------------------------------------


def test_usage_above_a_share_of_the_allowance_for_every_subscriber_of_a_plan():
    calls = meter(unit="calls")
    code = unique("plan")
    pro = plan(ChargeSpec(meter=calls, unit_price=D(1), included_quantity=D(10)), code=code)
    light = subscribe(pro, start=APRIL_1)
    heavy = subscribe(pro, start=APRIL_1)
    alert = alerts.create_alert(
        kind=AlertKind.USAGE_ABOVE_SHARE,
        scope=AlertScope.PLAN,
        plan_code=code,
        meter=Meter.objects.get(code=calls),
        threshold=D("0.8"),  # 80 % of 10 = 8 calls
        recipients=["ops@seller.example"],
    )
    use(light, 8, at_time=at(2026, 4, 10))  # 8: equal to 80 %, no crossing
    use(heavy, 9, at_time=at(2026, 4, 10))  # 9 > 8
    assert len(evaluate(at(2026, 4, 10, 12)).triggered) == 1
    assert states(alert) == {
        (light.customer_id, ""): ("armed", 0, D(8)),
        (heavy.customer_id, ""): ("triggered", 1, D(9)),
    }
    state = AlertState.objects.get(alert=alert, customer_id=heavy.customer_id)
    assert state.limit == D(8)
    assert mail.outbox[-1].subject == f"Usage alert: {calls} at 9"
    event = OutboundEvent.objects.get(type="alert.triggered")
    assert (event.data["value"], event.data["limit"], event.data["unit"]) == (
        "9.000000000000",
        "8.000000000000",
        "calls",
    )
    use(light, 1, at_time=at(2026, 4, 11))  # 9 > 8 now too
    assert len(evaluate(at(2026, 4, 11, 12)).triggered) == 1
    assert evaluate(at(2026, 4, 12)).triggered == []
    # A new period recovers both; the next crossing fires again.
    assert len(evaluate(at(2026, 5, 1, 1)).resolved) == 2
    use(heavy, 9, at_time=at(2026, 5, 2))
    assert len(evaluate(at(2026, 5, 2, 12)).triggered) == 1
    assert states(alert)[(heavy.customer_id, "")] == ("triggered", 2, D(9))


def test_a_usage_alert_needs_an_allowance_of_its_meter():
    calls = meter()
    code = unique("plan")
    plan(ChargeSpec(meter=calls, unit_price=D(1)), code=code)  # nothing included
    with pytest.raises(errors.ValidationFailed) as refused:
        alerts.create_alert(
            kind=AlertKind.USAGE_ABOVE_SHARE,
            scope=AlertScope.PLAN,
            plan_code=code,
            meter=Meter.objects.get(code=calls),
            threshold=D("0.5"),
        )
    assert refused.value.param == "meter"


# --- negative_margin --------------------------------------------------------------------------

DAY = at(2026, 4, 10, 9)


def prompt(subscription, model: str, tokens: int, when=DAY) -> None:
    """An LLM call of ``tokens`` prompt tokens (no output, no cache) on ``model``."""
    outcome = rating.ingest_events(
        [
            rating.EventIn(
                idempotency_key=unique("ev"),
                customer=subscription.customer.external_id,
                event_name="llm.completion",
                timestamp=when,
                properties={
                    "model": model,
                    "usage": {
                        "prompt_tokens": tokens,
                        "completion_tokens": 0,
                        "total_tokens": tokens,
                    },
                },
            )
        ],
        now=when,
    )[0]
    assert outcome.status == "accepted", outcome


@pytest.fixture
def flat_rate(model_prices):
    """Prompt tokens sold at 2.5 USD per million whatever the model: gpt-4o costs us
    exactly that (2.5/M input), claude-sonnet-4-5 more (3/M), gpt-4o-mini less (0.15/M)."""
    tokens = MeterFactory(property="llm.prompt_tokens", code=unique("tokens"))
    return plan(ChargeSpec(meter=tokens.code, unit_price=D("0.0000025")))


def test_negative_margin_per_day_and_per_model(flat_rate):
    subscription = subscribe(flat_rate, start=APRIL_1, funds="10", billing_mode="prepaid")
    customer = subscription.customer
    daily = alerts.create_alert(
        kind=AlertKind.NEGATIVE_MARGIN,
        scope=AlertScope.CUSTOMER,
        customer=customer,
        threshold=D(0),
        recipients=["margins@seller.example"],
    )
    per_model = alerts.create_alert(
        kind=AlertKind.NEGATIVE_MARGIN,
        scope=AlertScope.CUSTOMER,
        customer=customer,
        threshold=D(0),
        per_model=True,
    )
    noon = at(2026, 4, 10, 12)
    prompt(subscription, "gpt-4o", 1000)  # charged 0.0025, costs 0.0025: margin 0
    assert evaluate(noon).triggered == []
    assert states(daily) == {(customer.pk, "day:2026-04-10"): ("armed", 0, D(0))}
    prompt(subscription, "claude-sonnet-4-5", 1000)  # charged 0.0025, costs 0.003
    assert len(evaluate(noon).triggered) == 2  # the day, and claude
    assert states(daily) == {(customer.pk, "day:2026-04-10"): ("triggered", 1, D("-0.0005"))}
    assert states(per_model) == {
        (customer.pk, "day:2026-04-10|model:openai/gpt-4o"): ("armed", 0, D(0)),
        (customer.pk, "day:2026-04-10|model:anthropic/claude-sonnet-4-5"): (
            "triggered",
            1,
            D("-0.0005"),
        ),
    }
    assert evaluate(noon).triggered == []  # once
    # gpt-4o-mini earns 0.0025 − 0.00015 = 0.00235: the day is positive again.
    prompt(subscription, "gpt-4o-mini", 1000)
    result = evaluate(noon)
    assert (len(result.triggered), len(result.resolved)) == (0, 1)
    # Five more claude calls: 0.00185 − 5 × 0.0005 = −0.00065: the day crosses again.
    for _ in range(5):
        prompt(subscription, "claude-sonnet-4-5", 1000)
    assert len(evaluate(noon).triggered) == 1
    assert states(daily)[(customer.pk, "day:2026-04-10")] == ("triggered", 2, D("-0.00065"))
    claude = states(per_model)[(customer.pk, "day:2026-04-10|model:anthropic/claude-sonnet-4-5")]
    assert claude == ("triggered", 1, D("-0.003"))  # one crossing, deeper
    # The next day is a subject of its own.
    prompt(subscription, "claude-sonnet-4-5", 1000, when=at(2026, 4, 11, 9))
    assert len(evaluate(at(2026, 4, 11, 12)).triggered) == 2
    assert len(mail.outbox) == 3  # the daily alert's crossings; the per-model one has no address
    assert mail.outbox[0].subject == "Negative margin: day:2026-04-10"


def test_negative_margin_per_model_across_every_customer(flat_rate):
    first = subscribe(flat_rate, start=APRIL_1, funds="10", billing_mode="prepaid")
    second = subscribe(flat_rate, start=APRIL_1, funds="10", billing_mode="prepaid")
    alert = alerts.create_alert(
        kind=AlertKind.NEGATIVE_MARGIN, scope=AlertScope.ALL, threshold=D(0), per_model=True
    )
    prompt(first, "claude-sonnet-4-5", 1000)  # −0.0005
    prompt(second, "gpt-4o-mini", 1000)  # +0.00235
    prompt(second, "gpt-4o", 1000)  # 0
    assert len(evaluate(at(2026, 4, 10, 12)).triggered) == 1
    assert states(alert) == {
        (None, "day:2026-04-10|model:anthropic/claude-sonnet-4-5"): ("triggered", 1, D("-0.0005")),
        (None, "day:2026-04-10|model:openai/gpt-4o-mini"): ("armed", 0, D("0.00235")),
        (None, "day:2026-04-10|model:openai/gpt-4o"): ("armed", 0, D(0)),
    }
    event = OutboundEvent.objects.get(type="alert.triggered")
    assert event.customer_id is None and event.data["customer"] is None
    assert event.data["subject"] == "day:2026-04-10|model:anthropic/claude-sonnet-4-5"
    # The same model loses money for the second customer too: still one crossing.
    prompt(second, "claude-sonnet-4-5", 1000)
    assert evaluate(at(2026, 4, 10, 12)).triggered == []
    assert AlertFiring.objects.filter(alert=alert).count() == 1


def test_the_beat_task_evaluates_every_kind(settings):
    calls = meter()
    subscription = subscribe(
        plan(ChargeSpec(meter=calls, unit_price=D(1))),
        start=APRIL_1,
        funds="5",
        billing_mode="prepaid",
    )
    alerts.create_alert(
        kind=AlertKind.BALANCE_BELOW,
        scope=AlertScope.CUSTOMER,
        customer=subscription.customer,
        threshold=D(10),
    )
    assert "metering.tasks.evaluate_alerts" in {
        entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()
    }
    assert tasks.evaluate_alerts.apply().get() == 1
    assert tasks.evaluate_alerts.apply().get() == 0
