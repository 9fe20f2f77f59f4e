"""Alerts in the admin: created through the service (a definition that makes no sense is
shown on the form), changed only in what may change, their states and history listed; a
customer's page lists its alerts."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from billing import alerts
from billing.models import Alert, AlertState
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("finance", "f@x.example", None))
    return client


def test_an_alert_is_created_changed_and_its_states_shown(staff_client):
    customer = CustomerFactory(external_id="acme", funds="5")
    add = reverse("admin:billing_alert_add")
    assert staff_client.get(add).status_code == 200
    form = {
        "name": "Low",
        "kind": "balance_below",
        "scope": "customer",
        "customer": "acme",
        "threshold": "10",
        "recipients": "ops@acme.example, cfo@acme.example",
        "enabled": "on",
    }
    response = staff_client.post(add, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    alert = Alert.objects.get()
    assert (alert.source, alert.threshold, alert.recipients) == (
        "admin",
        D(10),
        ["ops@acme.example", "cfo@acme.example"],
    )
    alerts.evaluate_wallet_alerts()
    change = reverse("admin:billing_alert_change", args=[alert.pk])
    page = staff_client.get(change).content.decode()
    assert "triggered" in page and "ops@acme.example, cfo@acme.example" in page
    response = staff_client.post(
        change,
        {
            "name": "Low",
            "threshold": "4",
            "currency": "",
            "recipients": "ops@acme.example",
            "enabled": "on",
            "states-TOTAL_FORMS": "1",
            "states-INITIAL_FORMS": "1",
            "firings-TOTAL_FORMS": "1",
            "firings-INITIAL_FORMS": "1",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    alert.refresh_from_db()
    assert (alert.threshold, alert.recipients) == (D(4), ["ops@acme.example"])
    assert AlertState.objects.get(alert=alert).status == "armed"  # a new threshold re-arms
    history = staff_client.get(reverse("admin:billing_alertfiring_changelist"))
    assert history.status_code == 200 and "Triggered" in history.content.decode()
    active = staff_client.get(reverse("admin:billing_alertstate_changelist") + "?status=triggered")
    assert active.status_code == 200 and "0 alert states" in active.content.decode()
    customer_page = staff_client.get(reverse("admin:billing_customer_change", args=[customer.pk]))
    assert "Low" in customer_page.content.decode()


def test_a_definition_that_makes_no_sense_is_shown_on_the_form(staff_client):
    CustomerFactory(external_id="acme")
    response = staff_client.post(
        reverse("admin:billing_alert_add"),
        {
            "kind": "usage_above_share",
            "scope": "customer",
            "customer": "acme",
            "threshold": "0.8",
            "enabled": "on",
        },
    )
    assert response.status_code == 200
    assert "a usage alert names its meter" in response.content.decode()
    assert not Alert.objects.exists()
