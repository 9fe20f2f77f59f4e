"""The portal's self-service: auto top-up of a prepaid wallet (set, refused with the
service's errors on the form, its state: attempts, turned off after failures, a saved card
or not), the customer's active alerts, and changing or canceling the plan — each only
within the signed-in member's customer."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from billing import alerts, services
from billing.models import (
    Alert,
    AlertKind,
    AlertScope,
    AlertState,
    AlertStatus,
    AutoTopUp,
    BillingMode,
    Plan,
    PortalMember,
    SubscriptionStatus,
)
from invoicing import auto_top_up, stripe_gateway
from tests.billing.test_portal import customer_with_usage, member_client
from tests.factories import PlanFactory
from tests.invoicing.test_auto_top_up import stripe_server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture(autouse=True)
def _no_stripe(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = False


def auto_top_up_form(currency="USD", **values) -> dict:
    prefix = f"atu-{currency}-"
    data = {"form": "auto_top_up", "wallet": currency}
    data.update({prefix + name: value for name, value in values.items()})
    return data


def test_the_customer_turns_auto_top_up_on_and_off_for_their_prepaid_wallet():
    acme = customer_with_usage("acme")
    client = member_client(acme.customer, "ann@acme.example")
    page = client.get("/portal/settings/").content.decode()
    assert "Auto top-up of the USD wallet" in page and "Off." in page
    form = auto_top_up_form(enabled="on", threshold="20", target="100", monthly_cap="300")
    response = client.post("/portal/settings/", form)
    assert response.status_code == 302
    settings = AutoTopUp.objects.get(customer=acme.customer)
    assert settings.enabled and settings.wallet.currency == "USD"
    assert (settings.threshold, settings.target, settings.monthly_cap) == (D(20), D(100), D(300))
    page = client.get("/portal/settings/").content.decode()
    assert "falls below 20.00 USD" in page and "back to 100.00 USD" in page
    assert "at most 300.00 USD a month" in page
    assert client.post("/portal/settings/", form).status_code == 302  # a double submit
    assert AutoTopUp.objects.filter(customer=acme.customer).count() == 1
    off = auto_top_up_form(threshold="20", target="100", monthly_cap="300")
    assert client.post("/portal/settings/", off).status_code == 302
    settings.refresh_from_db()
    assert not settings.enabled
    assert "Off." in client.get("/portal/settings/").content.decode()


def test_the_services_refusals_are_shown_on_the_form_and_nothing_is_saved():
    acme = customer_with_usage("acme")
    client = member_client(acme.customer, "ann@acme.example")
    response = client.post(
        "/portal/settings/",
        auto_top_up_form(enabled="on", threshold="100", target="50", monthly_cap="300"),
    )
    assert response.status_code == 200
    assert "target must be above threshold" in response.content.decode()
    response = client.post(
        "/portal/settings/",
        auto_top_up_form(enabled="on", threshold="10", target="50", monthly_cap="0"),
    )
    assert "monthly_cap must be positive" in response.content.decode()
    assert not AutoTopUp.objects.filter(customer=acme.customer).exists()


def test_a_postpaid_wallet_or_another_customers_has_no_auto_top_up_here():
    acme = customer_with_usage("acme")
    globex = customer_with_usage("globex", billing_mode=BillingMode.POSTPAID, funds="0")
    client = member_client(globex.customer, "gil@globex.example")
    assert "Auto top-up" not in client.get("/portal/settings/").content.decode()
    form = auto_top_up_form(enabled="on", threshold="20", target="100", monthly_cap="300")
    assert client.post("/portal/settings/", form).status_code == 404
    assert not AutoTopUp.objects.exists()
    # acme's member changes acme's wallet only, and never sees globex's settings
    services.set_auto_top_up(
        wallet=acme.customer.wallets.get(currency="USD"),
        enabled=True,
        threshold=D(5),
        target=D(10),
        monthly_cap=D(20),
    )
    assert "Auto top-up" not in client.get("/portal/settings/").content.decode()


def test_failures_turn_it_off_with_the_reason_and_a_missing_card_is_explained(
    stripe_server,  # noqa: F811
):
    acme = customer_with_usage("acme")  # 49.00 USD available
    stripe_gateway.sync_customer(customer=acme.customer)
    client = member_client(acme.customer, "ann@acme.example")
    form = auto_top_up_form(enabled="on", threshold="60", target="100", monthly_cap="300")
    assert client.post("/portal/settings/", form).status_code == 302
    page = client.get("/portal/settings/").content.decode()
    assert "No saved card" in page and 'href="/portal/top-up/"' in page
    AutoTopUp.objects.filter(customer=acme.customer).update(max_failures=1, cool_off_seconds=0)
    settings = AutoTopUp.objects.get(customer=acme.customer)
    attempt = auto_top_up.start_attempt(auto_top_up_id=settings.pk)
    assert attempt is not None
    auto_top_up.process_attempt(attempt_id=attempt.pk)
    settings.refresh_from_db()
    assert not settings.enabled and settings.disabled_reason
    page = client.get("/portal/settings/").content.decode()
    assert "Turned off" in page and settings.disabled_reason in page
    assert 'data-testid="auto-top-up-attempts"' in page
    assert "51.00 USD" in page  # the refill charged: 100 − 49
    assert "no saved default payment method" in page
    # a card saved since: the page says so, and turning it on again clears the reason
    stripe_server.attach_payment_method(acme.customer.stripe_customer_id, "pm_card_visa")
    assert client.post("/portal/settings/", form).status_code == 302
    page = client.get("/portal/settings/").content.decode()
    assert "Your saved card is charged" in page and "Turned off" not in page
    settings.refresh_from_db()  # what finance set stays as it was
    assert settings.enabled and (settings.max_failures, settings.cool_off_seconds) == (1, 0)


def test_active_alerts_are_shown_on_the_overview_and_settings_and_only_the_customers_own():
    acme = customer_with_usage("acme", funds="12")  # 11.00 USD available
    globex = customer_with_usage("globex", funds="12")
    for customer in (acme.customer, globex.customer):
        alerts.update_alert_settings(customer=customer, threshold=D(20), email="ops@x.example")
    client = member_client(acme.customer, "ann@acme.example")
    assert 'data-testid="active-alerts"' not in client.get("/portal/").content.decode()
    assert alerts.check_low_balances() == 2
    spend = Alert.objects.create(
        name="Big month",
        kind=AlertKind.SPEND_ABOVE,
        scope=AlertScope.CUSTOMER,
        customer=acme.customer,
        threshold=D("0.5"),
    )
    margin = Alert.objects.create(
        kind=AlertKind.NEGATIVE_MARGIN,
        scope=AlertScope.CUSTOMER,
        customer=acme.customer,
        threshold=D(0),
    )
    now = timezone.now()
    for alert, value in ((spend, D("1")), (margin, D("-3"))):
        AlertState.objects.create(
            alert=alert,
            customer=acme.customer,
            subject_key="gpt" if alert is margin else "",
            status=AlertStatus.TRIGGERED,
            last_value=value,
            limit=alert.threshold,
            crossings=1,
            triggered_at=now,
        )
    for path in ("/portal/", "/portal/settings/"):
        page = client.get(path).content.decode()
        assert 'data-testid="active-alerts"' in page, path
        assert "Low balance: 11.00 USD available, below your alert threshold of 20.00 USD" in page
        assert "Big month</strong>: Spend this period: 1.00 USD, above your alert" in page
        assert "margin" not in page.lower() and "gpt" not in page  # the seller's own concern
    globex_page = member_client(globex.customer, "gil@globex.example").get("/portal/")
    assert "Big month" not in globex_page.content.decode()
    services.top_up(customer=acme.customer, amount=D(50), reference="refill")
    alerts.check_low_balances()
    assert "Low balance" not in client.get("/portal/").content.decode()


def offered(code: str, *, base_fee: str, name: str, self_serve: bool = True, **kw) -> Plan:
    the_plan = PlanFactory(code=code, name=name, base_fee=base_fee, **kw)
    services.set_plan_self_serve(code=code, self_serve=self_serve)
    return the_plan


def test_the_plan_page_offers_the_latest_self_serve_plans_of_the_same_currency_and_interval():
    acme = customer_with_usage("acme")  # on "Pro", 9 USD a month
    offered("team", base_fee="29", name="Team v1")
    team = offered("team", base_fee="39", name="Team")  # a new version stays self-serve
    assert team.version == 2 and team.self_serve
    offered("hidden", base_fee="5", name="Hidden", self_serve=False)
    offered("euro", base_fee="5", name="Euro", currency="EUR")
    offered("annual", base_fee="90", name="Annual", interval="year")
    client = member_client(acme.customer, "ann@acme.example")
    page = client.get("/portal/plan/").content.decode()
    assert 'data-testid="current-plan"' in page and "9.00 USD a month" in page
    assert 'data-testid="plan-team"' in page and "39.00 USD" in page
    assert "Team v1" not in page
    for name in ("Hidden", "Euro", "Annual"):
        assert name not in page, name
    assert 'href="/portal/plan/"' in page  # in the navigation
    hidden = Plan.objects.get(code="hidden")
    assert client.get(f"/portal/plan/change/?plan={hidden.pk}&at=now").status_code == 404
    response = client.post("/portal/plan/change/", {"plan": hidden.pk, "at": "now"})
    assert response.status_code == 404
    acme.refresh_from_db()
    assert acme.plan.name == "Pro"


def test_switching_now_is_confirmed_prorated_and_a_double_submit_does_it_once():
    acme = customer_with_usage("acme")
    team = offered("team", base_fee="39", name="Team")
    client = member_client(acme.customer, "ann@acme.example")
    confirm = client.get(f"/portal/plan/change/?plan={team.pk}&at=now")
    assert confirm.status_code == 200 and "Confirm the switch" in confirm.content.decode()
    acme.refresh_from_db()
    assert acme.plan.name == "Pro"  # the confirmation page changes nothing
    for _ in range(2):  # a double click
        response = client.post("/portal/plan/change/", {"plan": team.pk, "at": "now"})
        assert response.status_code == 302
    acme.refresh_from_db()
    assert acme.plan_id == team.pk
    assert acme.phases.count() == 2
    page = client.get("/portal/plan/", follow=True).content.decode()
    assert "You are now on Team" in page or "You are on Team" in page
    assert 'data-testid="proration"' in page and "Team" in page
    lines = services.base_fee_proration(subscription=acme)
    assert [line.plan.code for line in lines] == [acme.phases.first().plan.code, "team"]


def test_switching_and_canceling_at_period_end_are_shown_scheduled():
    acme = customer_with_usage("acme")
    team = offered("team", base_fee="39", name="Team")
    client = member_client(acme.customer, "ann@acme.example")
    form = {"plan": team.pk, "at": "period_end"}
    assert client.post("/portal/plan/change/", form).status_code == 302
    assert client.post("/portal/plan/change/", form).status_code == 302
    acme.refresh_from_db()
    assert acme.plan.name == "Pro" and acme.scheduled_plan_id == team.pk
    page = client.get("/portal/plan/").content.decode()
    assert 'data-testid="scheduled-change"' in page and "Changes to Team" in page
    for _ in range(2):
        assert client.post("/portal/plan/cancel/", {"at": "period_end"}).status_code == 302
    acme.refresh_from_db()
    assert acme.cancel_at_period_end and acme.status != SubscriptionStatus.CANCELED
    page = client.get("/portal/plan/").content.decode()
    assert 'data-testid="scheduled-cancel"' in page and "Switch now" not in page


def test_canceling_now_needs_the_confirmation_post_and_a_resubmit_is_harmless():
    acme = customer_with_usage("acme")
    client = member_client(acme.customer, "ann@acme.example")
    confirm = client.get("/portal/plan/cancel/?at=now").content.decode()
    assert "Confirm the cancellation" in confirm and "csrfmiddlewaretoken" in confirm
    acme.refresh_from_db()
    assert acme.status != SubscriptionStatus.CANCELED
    assert client.post("/portal/plan/cancel/", {"at": "now"}).status_code == 302
    acme.refresh_from_db()
    assert acme.status == SubscriptionStatus.CANCELED
    again = client.post("/portal/plan/cancel/", {"at": "now"}, follow=True)
    assert "Your subscription is canceled" in again.content.decode()
    page = client.get("/portal/plan/").content.decode()
    assert 'data-testid="no-subscription"' in page and "ended" in page


def test_a_member_changes_only_their_own_customers_subscription():
    acme = customer_with_usage("acme")
    globex = customer_with_usage("globex")
    team = offered("team", base_fee="39", name="Team")
    client = member_client(globex.customer, "gil@globex.example")
    assert client.post("/portal/plan/change/", {"plan": team.pk, "at": "now"}).status_code == 302
    assert client.post("/portal/plan/cancel/", {"at": "period_end"}).status_code == 302
    acme.refresh_from_db()
    globex.refresh_from_db()
    assert globex.plan_id == team.pk and globex.cancel_at_period_end
    assert acme.plan.name == "Pro" and not acme.cancel_at_period_end
    page = client.get("/portal/plan/").content.decode()
    assert "<h2>Team</h2>" in page and 'data-testid="scheduled-cancel"' in page


def test_the_plan_forms_need_the_csrf_token():
    acme = customer_with_usage("acme")
    team = offered("team", base_fee="39", name="Team")
    member_client(acme.customer, "ann@acme.example")
    client = Client(enforce_csrf_checks=True)
    client.force_login(PortalMember.objects.get(customer=acme.customer).user)
    assert client.post("/portal/plan/change/", {"plan": team.pk, "at": "now"}).status_code == 403
    assert client.post("/portal/plan/cancel/", {"at": "now"}).status_code == 403
    acme.refresh_from_db()
    assert acme.plan.name == "Pro" and acme.status != SubscriptionStatus.CANCELED


def test_a_refused_switch_is_shown_on_the_confirmation_page():
    acme = customer_with_usage("acme")  # metered
    payg = offered("payg", base_fee="0", name="Pay as you go", consumption_model="balance")
    client = member_client(acme.customer, "ann@acme.example")
    response = client.post("/portal/plan/change/", {"plan": payg.pk, "at": "now"})
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-testid="error"' in page and "takes effect at the end of the period" in page
    acme.refresh_from_db()
    assert acme.plan.name == "Pro"
    response = client.post("/portal/plan/change/", {"plan": payg.pk, "at": "period_end"})
    acme.refresh_from_db()
    assert response.status_code == 302 and acme.scheduled_plan_id == payg.pk


def test_finance_offers_a_plan_in_the_portal_from_the_admin(admin_client):
    PlanFactory(code="team", name="Team", base_fee="29")
    v2 = PlanFactory(code="team", name="Team", base_fee="39")
    response = admin_client.post(
        "/admin/billing/plan/",
        {"action": "offer_in_portal_action", "_selected_action": [v2.pk]},
    )
    assert response.status_code == 302
    assert list(Plan.objects.filter(code="team").values_list("self_serve", flat=True)) == [
        True,
        True,
    ]
    admin_client.post(
        "/admin/billing/plan/", {"action": "stop_offering_action", "_selected_action": [v2.pk]}
    )
    assert not Plan.objects.filter(code="team", self_serve=True).exists()
