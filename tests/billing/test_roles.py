"""The staff roles (billing migration 0019_staff_roles) through the admin, over HTTP with
the real permission checks: what a finance viewer, a finance operator and an administrator
can and cannot do."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from billing.models import CreditGrant, GrantStatus
from ledger.models import Transaction as LedgerTransaction
from tests.factories import CreditGrantFactory, CustomerFactory, staff_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_role(client):
    def sign_in(group: str):
        client.force_login(staff_user(uuid.uuid4().hex[:12], group))
        return client

    return sign_in


@pytest.fixture
def customer(db):
    return CustomerFactory(funds=100)


def status(client, name, *args) -> int:
    return client.get(reverse(f"admin:{name}", args=args)).status_code


# what only the administrator may open: keys, settings, users, plans, devices
ADMIN_ONLY = [
    "billing_apikey_add",
    "billing_webhookendpoint_add",
    "billing_alert_add",
    "billing_autotopup_add",
    "billing_plan_add",
    "auth_user_add",
    "auth_user_changelist",
    "auth_group_add",
    "otp_totp_totpdevice_add",
]
READS = [
    "billing_customer_changelist",
    "billing_creditgrant_changelist",
    "billing_plan_changelist",
    "billing_apikey_changelist",
    "billing_auditevent_changelist",
    "billing_adjustmentrequest_changelist",
    "invoicing_invoice_changelist",
    "ledger_transaction_changelist",
]


def test_the_three_groups_exist_with_their_permissions():
    staff_user("someone", "Finance viewer")  # (made again if a flush emptied them)
    viewer, operator, administrator = (
        Group.objects.get(name=n) for n in ("Finance viewer", "Finance operator", "Administrator")
    )
    viewer_perms = set(viewer.permissions.values_list("codename", flat=True))
    assert viewer_perms and all(p.startswith("view_") for p in viewer_perms)
    operator_perms = set(operator.permissions.values_list("codename", flat=True))
    assert viewer_perms < operator_perms
    assert {"approve_adjustmentrequest", "change_invoice", "change_customer"} <= operator_perms
    assert not {"add_apikey", "change_webhookendpoint", "add_user"} & operator_perms
    assert administrator.permissions.count() > operator.permissions.count()


def test_a_viewer_reads_everything_and_changes_nothing(as_role, customer):
    client = as_role("Finance viewer")
    for name in READS:
        assert status(client, name) == 200, name
    assert status(client, "billing_customer_change", customer.pk) == 200
    for name in ("billing_customer_adjust", "billing_customer_top_up", "billing_customer_grant"):
        assert status(client, name, customer.pk) == 403, name
    assert status(client, "invoicing_invoice_void", 1) == 403
    assert status(client, "invoicing_invoice_credit_note", 1) == 403
    for name in ADMIN_ONLY:
        assert status(client, name) == 403, name
    before = LedgerTransaction.objects.count()
    response = client.post(
        reverse("admin:billing_customer_adjust", args=[customer.pk]),
        {"amount": "5", "currency": "USD", "reason": "x", "token": uuid.uuid4().hex},
    )
    assert response.status_code == 403
    assert LedgerTransaction.objects.count() == before


def test_a_viewer_cannot_void_a_grant_through_the_list_action(as_role, customer):
    grant = CreditGrantFactory(customer=customer, amount=Decimal(10))
    client = as_role("Finance viewer")
    page = client.get(reverse("admin:billing_creditgrant_changelist")).content.decode()
    assert "void_action" not in page
    client.post(
        reverse("admin:billing_creditgrant_changelist"),
        {"action": "void_action", "_selected_action": [grant.pk], "post": "yes", "reason": "x"},
    )
    grant.refresh_from_db()
    assert grant.status == GrantStatus.ACTIVE


def test_an_operator_moves_money_but_manages_no_keys_settings_or_users(as_role, customer):
    client = as_role("Finance operator")
    for name in READS:
        assert status(client, name) == 200, name
    for name in ("billing_customer_adjust", "billing_customer_top_up", "billing_customer_grant"):
        assert status(client, name, customer.pk) == 200, name
    # past the permission check (the invoice does not exist)
    assert status(client, "invoicing_invoice_void", 999999) == 404
    assert status(client, "invoicing_invoice_credit_note", 999999) == 404
    for name in ADMIN_ONLY:
        assert status(client, name) == 403, name
    response = client.post(
        reverse("admin:billing_customer_adjust", args=[customer.pk]),
        {"amount": "5", "currency": "USD", "reason": "Goodwill", "token": uuid.uuid4().hex},
    )
    assert response.status_code == 302
    assert LedgerTransaction.objects.filter(metadata__kind="adjustment").count() == 1
    grant = CreditGrantFactory(customer=customer, amount=Decimal(10))
    client.post(
        reverse("admin:billing_creditgrant_changelist"),
        {"action": "void_action", "_selected_action": [grant.pk], "post": "yes", "reason": "x"},
    )
    assert CreditGrant.objects.get(pk=grant.pk).status != GrantStatus.ACTIVE


def test_an_administrator_can_do_everything(as_role, customer):
    client = as_role("Administrator")
    for name in READS + ADMIN_ONLY:
        assert status(client, name) == 200, name
    assert status(client, "billing_customer_adjust", customer.pk) == 200


@pytest.mark.django_db(transaction=True)
def test_roles_gain_the_permissions_of_models_added_after_the_roles_migration():
    """0019 gave the groups the permissions there were then; a model added later (here: one
    model's permissions taken away again, as if it had come after) is in the administrator's
    and the viewers' groups after the next ``migrate``, and a deleted group stays deleted."""
    from django.contrib.auth.models import Permission
    from django.core.management import call_command

    staff_user("someone", "Finance viewer")  # the groups (a flush may have emptied them)
    later = Permission.objects.filter(
        content_type__app_label="billing", content_type__model="project"
    )
    view_later = later.get(codename="view_project")
    administrator = Group.objects.get(name="Administrator")
    viewer = Group.objects.get(name="Finance viewer")
    operator = Group.objects.get(name="Finance operator")
    administrator.permissions.remove(*later)
    viewer.permissions.remove(view_later)
    operator.permissions.remove(view_later)
    Group.objects.filter(name="Finance operator").delete()

    call_command("migrate", verbosity=0)

    assert set(later) <= set(administrator.permissions.all())
    assert set(Permission.objects.all()) == set(administrator.permissions.all())
    assert view_later in viewer.permissions.all()
    assert not viewer.permissions.exclude(codename__startswith="view_").exists()
    assert not Group.objects.filter(name="Finance operator").exists()
