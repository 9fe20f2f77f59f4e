"""Alerts of the core (billing.alerts): balance and credits alerts at their boundary (equal
is not below), once per crossing, re-armed by recovery and fired again at the next
crossing; per-plan alerts reach every subscriber; evaluators running at once in threads
send one e-mail and one event; definitions refused when they make no sense; the portal's
low-balance setting kept in the new model, and the data migration of the old setting."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from billing import alerts, errors, services
from billing.models import (
    Alert,
    AlertFiring,
    AlertKind,
    AlertScope,
    AlertSource,
    AlertState,
    AlertStatus,
    Customer,
    OutboundEvent,
)
from tests.databases import own_database
from tests.factories import CustomerFactory, PlanFactory, SubscriptionFactory, unique
from tests.threads import run_concurrently

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal


@pytest.fixture(autouse=True)
def _mail(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def debit(customer: Customer, amount: str, currency: str | None = None) -> None:
    services.adjust_balance(
        customer=customer,
        amount=-D(amount),
        reason="test usage",
        staff_user_id=None,
        currency=currency,
    )


def credit(customer: Customer, amount: str, currency: str | None = None) -> None:
    services.top_up(customer=customer, amount=D(amount), currency=currency, reference=unique("t"))


def events(customer: Customer, kind: str) -> list[OutboundEvent]:
    return list(OutboundEvent.objects.filter(customer=customer, type=kind).order_by("id"))


def state_of(alert: Alert, customer: Customer) -> AlertState:
    return AlertState.objects.get(alert=alert, customer=customer)


def balance_alert(customer: Customer, threshold: str, **kw) -> Alert:
    return alerts.create_alert(
        kind=AlertKind.BALANCE_BELOW,
        scope=AlertScope.CUSTOMER,
        customer=customer,
        threshold=D(threshold),
        recipients=["ops@acme.example"],
        **kw,
    )


def test_balance_below_fires_below_not_at_the_threshold_once_per_crossing():
    customer = CustomerFactory(funds="20.00")
    alert = balance_alert(customer, "20")
    # 20.00 available: equal to the threshold is not below it.
    assert alerts.evaluate_wallet_alerts().triggered == []
    state = state_of(alert, customer)
    assert (state.status, state.last_value, state.limit) == ("armed", D(20), D(20))
    debit(customer, "0.01")  # 19.99 < 20
    first = alerts.evaluate_wallet_alerts()
    assert len(first.triggered) == 1
    assert alerts.evaluate_wallet_alerts().triggered == []  # once, however often it runs
    debit(customer, "5")  # further below: the same crossing
    assert alerts.evaluate_wallet_alerts().triggered == []
    state = state_of(alert, customer)
    assert (state.status, state.crossings, state.last_value) == ("triggered", 1, D("14.99"))
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ops@acme.example"]
    assert mail.outbox[0].subject == "Low balance: 19.99 USD left"
    [triggered] = events(customer, "alert.triggered")
    assert triggered.dedupe_key == f"alert:{state.pk}:1"
    assert triggered.data["value"] == "19.990000000000"
    assert triggered.data["limit"] == "20.000000000000"
    assert triggered.data["customer"] == customer.external_id
    [low] = events(customer, "wallet.low_balance")
    assert low.data == {
        "customer": customer.external_id,
        "currency": "USD",
        "available": "19.990000000000",
        "threshold": "20.000000000000",
        "alert": alert.pk,
    }
    # Recovery to exactly the threshold re-arms (20 is not below 20): alert.resolved.
    credit(customer, "5.01")
    assert len(alerts.evaluate_wallet_alerts().resolved) == 1
    assert alerts.evaluate_wallet_alerts().resolved == []
    state = state_of(alert, customer)
    assert state.status == AlertStatus.ARMED and state.resolved_at is not None
    [resolved] = events(customer, "alert.resolved")
    assert resolved.dedupe_key == f"alert:{state.pk}:1:resolved"
    # The next crossing fires again, as crossing 2.
    debit(customer, "0.000000000001")
    assert len(alerts.evaluate_wallet_alerts().triggered) == 1
    assert [e.dedupe_key for e in events(customer, "alert.triggered")] == [
        f"alert:{state.pk}:1",
        f"alert:{state.pk}:2",
    ]
    assert len(mail.outbox) == 2
    history = AlertFiring.objects.filter(alert=alert).order_by("id")
    assert [(f.crossing, f.action) for f in history] == [
        (1, "triggered"),
        (1, "resolved"),
        (2, "triggered"),
    ]
    assert all(f.emailed_at for f in history if f.action == "triggered")


def test_credits_below_counts_the_credits_wallet():
    customer = CustomerFactory()
    services.ensure_wallet(customer=customer, currency="CREDITS")
    credit(customer, "100", currency="CREDITS")
    alert = alerts.create_alert(
        kind=AlertKind.CREDITS_BELOW,
        scope=AlertScope.CUSTOMER,
        customer=customer,
        threshold=D(50),
        recipients=["ops@acme.example"],
    )
    debit(customer, "50", currency="CREDITS")  # 50 left: equal, not below
    assert alerts.evaluate_wallet_alerts().triggered == []
    debit(customer, "1", currency="CREDITS")  # 49
    assert len(alerts.evaluate_wallet_alerts().triggered) == 1
    state = state_of(alert, customer)
    assert (state.status, state.last_value) == ("triggered", D(49))
    assert mail.outbox[-1].subject == "Low credits: 49 credits left"
    assert events(customer, "wallet.low_balance") == []  # a credits alert is not a wallet one
    credit(customer, "1", currency="CREDITS")
    assert len(alerts.evaluate_wallet_alerts().resolved) == 1


def test_a_plan_alert_watches_every_live_subscriber_of_any_version():
    code = unique("plan")
    v1 = PlanFactory(code=code)
    v2 = PlanFactory(code=code, name="Plan, renamed")  # a new version of the same plan
    assert v2.version == v1.version + 1
    other = PlanFactory()
    low1 = SubscriptionFactory(customer=CustomerFactory(funds="5"), plan=v1).customer
    low2 = SubscriptionFactory(customer=CustomerFactory(funds="5"), plan=v2).customer
    rich = SubscriptionFactory(customer=CustomerFactory(funds="50"), plan=v1).customer
    outsider = SubscriptionFactory(customer=CustomerFactory(funds="5"), plan=other).customer
    alert = alerts.create_alert(
        kind=AlertKind.BALANCE_BELOW,
        scope=AlertScope.PLAN,
        plan_code=code,
        threshold=D(10),
        recipients=["finance@seller.example"],
    )
    result = alerts.evaluate_wallet_alerts()
    assert len(result.triggered) == 2
    triggered = AlertState.objects.filter(alert=alert, status="triggered")
    assert {s.customer_id for s in triggered} == {low1.pk, low2.pk}
    assert state_of(alert, rich).status == "armed"
    assert not AlertState.objects.filter(customer=outsider).exists()
    # Only version 2: the other subscribers are not watched.
    only_v2 = alerts.create_alert(
        kind=AlertKind.BALANCE_BELOW,
        scope=AlertScope.PLAN,
        plan_code=code,
        plan_version=v2.version,
        threshold=D(10),
    )
    alerts.evaluate_wallet_alerts()
    assert [s.customer_id for s in AlertState.objects.filter(alert=only_v2)] == [low2.pk]
    # The active alerts of a subscriber, as the portal will show them.
    assert [s.alert_id for s in alerts.active_alerts(low2)] == [only_v2.pk, alert.pk]
    assert alerts.active_alerts(rich) == []


def test_a_disabled_alert_is_not_evaluated():
    customer = CustomerFactory(funds="1")
    alert = balance_alert(customer, "10", enabled=False)
    assert alerts.evaluate_wallet_alerts().observed == 0
    alerts.update_alert(alert=alert, enabled=True)
    assert len(alerts.evaluate_wallet_alerts().triggered) == 1


def test_concurrent_evaluators_fire_one_crossing_once():
    """Eight evaluators at once, over many subjects: each crossing one e-mail, one
    alert.triggered and one wallet.low_balance, however the threads interleave."""
    customers = [CustomerFactory(funds="5") for _ in range(6)]
    for customer in customers:
        balance_alert(customer, "10")
    results = run_concurrently(lambda i: alerts.evaluate_wallet_alerts(), threads=8)
    for result in results:
        assert isinstance(result, alerts.Evaluation), result
    fired = sum(len(result.triggered) for result in results)  # type: ignore[union-attr]
    assert fired == len(customers)
    assert len(mail.outbox) == len(customers)
    for customer in customers:
        assert len(events(customer, "alert.triggered")) == 1
        assert len(events(customer, "wallet.low_balance")) == 1
    assert AlertFiring.objects.count() == len(customers)


def test_changing_the_threshold_re_arms():
    customer = CustomerFactory(funds="5")
    alert = balance_alert(customer, "10")
    assert len(alerts.evaluate_wallet_alerts().triggered) == 1
    alerts.update_alert(alert=alert, recipients=["new@acme.example"])  # same threshold
    assert alerts.evaluate_wallet_alerts().triggered == []
    alerts.update_alert(alert=alert, threshold=D(8))  # still below: fires anew
    assert len(alerts.evaluate_wallet_alerts().triggered) == 1
    assert mail.outbox[-1].to == ["new@acme.example"]
    assert state_of(alert, customer).crossings == 2


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"kind": "balance_under"}, "kind"),
        ({"scope": "everyone"}, "scope"),
        ({"customer": None}, "customer"),
        ({"recipients": ["not-an-address"]}, "recipients"),
        ({"kind": AlertKind.CREDITS_BELOW, "threshold": D(-1)}, "threshold"),
        ({"kind": AlertKind.USAGE_ABOVE_SHARE}, "meter"),
        ({"kind": AlertKind.NEGATIVE_MARGIN, "threshold": D(1)}, "threshold"),
        ({"per_model": True}, "per_model"),
        ({"currency": "DOLLARS"}, "currency"),
        ({"scope": AlertScope.ALL, "customer": None}, "scope"),
        ({"scope": AlertScope.PLAN, "customer": None}, "plan"),
    ],
)
def test_definitions_that_make_no_sense_are_refused(changes, param):
    values = {
        "kind": AlertKind.BALANCE_BELOW,
        "scope": AlertScope.CUSTOMER,
        "customer": CustomerFactory(),
        "threshold": D(10),
        **changes,
    }
    with pytest.raises(errors.ValidationFailed) as refused:
        alerts.create_alert(**values)
    assert refused.value.param == param
    assert not Alert.objects.exists()


def test_a_plan_alert_of_an_unknown_plan_is_refused():
    with pytest.raises(errors.PlanNotFound):
        alerts.create_alert(
            kind=AlertKind.BALANCE_BELOW, scope=AlertScope.PLAN, plan_code="nope", threshold=D(1)
        )


def test_the_portal_setting_is_one_alert_of_its_own():
    customer = CustomerFactory(funds="11")
    alerts.update_alert_settings(customer=customer, threshold=D(20), email=" ops@acme.example ")
    alerts.update_alert_settings(customer=customer, threshold=D(15), email="ops@acme.example")
    setting = alerts.portal_low_balance(customer)
    assert setting is not None
    assert (setting.kind, setting.source, setting.threshold, setting.recipients) == (
        "balance_below",
        AlertSource.PORTAL,
        D(15),
        ["ops@acme.example"],
    )
    assert Alert.objects.filter(customer=customer).count() == 1
    # What the portal's settings page reads.
    fresh = Customer.objects.get(pk=customer.pk)
    assert (fresh.low_balance_threshold, fresh.low_balance_email) == (D(15), "ops@acme.example")
    # An API alert of the same customer is another alert, untouched by the setting.
    balance_alert(customer, "100")
    alerts.update_alert_settings(customer=customer, threshold=None, email="")
    assert alerts.portal_low_balance(customer) is None
    assert Customer.objects.get(pk=customer.pk).low_balance_threshold is None
    assert Alert.objects.filter(customer=customer).count() == 1


def test_the_old_low_balance_setting_migrates_to_an_alert():
    """In a database of its own, migrated from empty to 0010 only (the test database stays
    on the latest migrations): write the old fields as they were, migrate to 0011 and back
    (the old fields come back from the alerts), then forward to the latest migrations."""
    with own_database():
        _migrate_the_old_setting()


def _migrate_the_old_setting():
    before, after = ("billing", "0010_webhooks"), ("billing", "0011_alerts")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    apps = executor.loader.project_state([before]).apps
    OldCustomer = apps.get_model("billing", "Customer")
    ledger = {"currency": "USD", "billing_mode": "prepaid"}
    quiet = OldCustomer.objects.create(external_id=unique("c"), name="Quiet", **ledger)
    armed = OldCustomer.objects.create(
        external_id=unique("c"),
        name="Armed",
        low_balance_threshold=D("20.5"),
        low_balance_email="ops@armed.example",
        **ledger,
    )
    alerted_at = timezone.now()
    alerted = OldCustomer.objects.create(
        external_id=unique("c"),
        name="Alerted",
        low_balance_threshold=D(5),
        low_balance_email="",
        low_balance_alerted_at=alerted_at,
        **ledger,
    )
    MigrationExecutor(connection).migrate([after])
    MigrationExecutor(connection).migrate([before])
    restored = OldCustomer.objects.order_by("pk").values_list(
        "low_balance_threshold", "low_balance_email", "low_balance_alerted_at"
    )
    assert list(restored) == [
        (None, "", None),
        (D("20.5"), "ops@armed.example", None),
        (D(5), "", alerted_at),
    ]
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert not Alert.objects.filter(customer_id=quiet.pk).exists()
    one = Alert.objects.get(customer_id=armed.pk)
    assert (one.kind, one.scope, one.source, one.threshold, one.currency, one.recipients) == (
        "balance_below",
        "customer",
        "portal",
        D("20.5"),
        "",
        ["ops@armed.example"],
    )
    assert not one.states.exists()
    two = Alert.objects.get(customer_id=alerted.pk)
    assert two.recipients == []
    [state] = two.states.all()
    # Alerted already: it starts triggered, so the migration sends nothing again.
    assert (state.status, state.crossings, state.triggered_at) == ("triggered", 1, alerted_at)
    assert AlertFiring.objects.get(state=state).emailed_at == alerted_at


def test_the_demo_seeds_alerts_and_initech_s_low_balance_fires():
    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo", stdout=io.StringIO())  # again: nothing twice
    assert Alert.objects.count() == 2
    initech = Customer.objects.get(external_id="initech")
    assert alerts.evaluate_wallet_alerts(customer_ids=[initech.pk]).triggered != []
    [active] = alerts.active_alerts(initech)
    assert active.alert.source == AlertSource.PORTAL and active.last_value < D(50)
    assert mail.outbox[-1].to == ["billing@initech.example"]
