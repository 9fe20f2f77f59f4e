"""Auto top-ups in the admin: set up from the wallet's row on the customer page, written
through set_auto_top_up (the staff user recorded), refused with the form's errors when the
settings are wrong, never deleted; attempts read-only."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from billing import services
from billing.models import AutoTopUp, Wallet
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db
D = Decimal
ADD = reverse("admin:billing_autotopup_add")


@pytest.fixture
def staff_client(client, django_user_model):
    staff = django_user_model.objects.create_superuser("finance", "f@example.com", None)
    client.force_login(staff)
    client.staff = staff
    return client


def form(wallet: Wallet, **change) -> dict:
    return {
        "wallet": wallet.pk,
        "enabled": "on",
        "threshold": "10",
        "target": "50",
        "monthly_cap": "200",
        "cool_off_seconds": "600",
        "max_failures": "3",
        "attempts-TOTAL_FORMS": "0",
        "attempts-INITIAL_FORMS": "0",
        **change,
    }


def test_set_up_from_the_customer_page_then_changed(staff_client):
    customer = CustomerFactory(funds="5")
    wallet = services.wallet_for(customer=customer)
    page = staff_client.get(reverse("admin:billing_customer_change", args=[customer.pk]))
    assert f"{ADD}?wallet={wallet.pk}" in page.content.decode()

    response = staff_client.post(ADD, form(wallet))

    assert response.status_code == 302, response.content.decode()[:3000]
    auto = AutoTopUp.objects.get(wallet=wallet)
    assert (auto.enabled, auto.threshold, auto.target, auto.monthly_cap) == (
        True,
        D(10),
        D(50),
        D(200),
    )
    assert auto.updated_by_id == staff_client.staff.pk
    change = reverse("admin:billing_autotopup_change", args=[auto.pk])
    assert staff_client.get(change).status_code == 200
    edited = form(wallet, target="80")
    del edited["enabled"]  # unchecked: off
    assert staff_client.post(change, edited).status_code == 302
    auto.refresh_from_db()
    assert (auto.enabled, auto.target) == (False, D(80))
    assert staff_client.get(reverse("admin:billing_autotopupattempt_changelist")).status_code == 200
    assert staff_client.get(reverse("admin:billing_autotopup_changelist")).status_code == 200


@pytest.mark.parametrize(
    "change, field",
    [
        ({"target": "10"}, "target"),
        ({"threshold": "-1"}, "threshold"),
        ({"monthly_cap": "0"}, "monthly_cap"),
        ({"max_failures": "0"}, "max_failures"),
        ({"threshold": "0.0000000000001"}, "threshold"),
    ],
)
def test_wrong_settings_are_shown_on_the_form(staff_client, change, field):
    wallet = services.wallet_for(customer=CustomerFactory())
    response = staff_client.post(ADD, form(wallet, **change))
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert AutoTopUp.objects.count() == 0


def test_a_postpaid_wallet_is_refused(staff_client):
    wallet = services.wallet_for(customer=CustomerFactory(billing_mode="postpaid"))
    response = staff_client.post(ADD, form(wallet))
    assert response.status_code == 200
    assert "wallet" in response.context["adminform"].form.errors
    assert AutoTopUp.objects.count() == 0
