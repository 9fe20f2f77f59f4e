"""The ledger admin: every page renders for staff, searches work, nothing can be changed."""

from __future__ import annotations

import pytest
from django.urls import reverse

from ledger import services
from ledger.models import Account, Hold, Transaction
from tests.conftest import unique

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("finance", "f@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def history(world, revenue, make_wallet):
    wallet = make_wallet("25")
    spend = services.post_transaction(
        reference=unique("spend"),
        legs=[services.debit(wallet, "2.5"), services.credit(revenue, "2.5")],
        description="usage",
    )
    hold = services.place_hold(
        reference=unique("hold"), account=wallet, destination=revenue, amount="1"
    )
    return wallet, spend, hold


@pytest.mark.parametrize("model", [Account, Transaction, Hold])
def test_changelists_and_detail_pages_render(staff_client, history, model):
    name = model._meta.model_name
    response = staff_client.get(reverse(f"admin:ledger_{name}_changelist"))
    assert response.status_code == 200
    obj = model.objects.order_by("-pk").first()
    response = staff_client.get(reverse(f"admin:ledger_{name}_change", args=[obj.pk]))
    assert response.status_code == 200


def test_ledger_admin_is_read_only(staff_client, history):
    wallet, spend, _ = history
    assert staff_client.get(reverse("admin:ledger_transaction_add")).status_code == 403
    url = reverse("admin:ledger_transaction_delete", args=[spend.pk])
    assert staff_client.post(url, {"post": "yes"}).status_code == 403
    assert Transaction.objects.filter(pk=spend.pk).exists()
    page = staff_client.get(reverse("admin:ledger_transaction_change", args=[spend.pk]))
    assert b'name="_save"' not in page.content


def test_search_by_reference_and_account(staff_client, history):
    wallet, spend, _ = history
    changelist = reverse("admin:ledger_transaction_changelist")
    assert spend.reference.encode() in staff_client.get(changelist, {"q": spend.reference}).content
    by_account = staff_client.get(changelist, {"q": wallet.code})
    assert spend.reference.encode() in by_account.content
    # the list's amount column: the transaction's debits, rounded, exact on hover
    assert b'title="2.5 ' in by_account.content and b">2.50 " in by_account.content
    accounts = staff_client.get(reverse("admin:ledger_account_changelist"), {"q": wallet.code})
    assert b'title="22.5 ' in accounts.content  # posted, exactly on hover
    assert b">22.50 " in accounts.content  # and rounded to the minor unit
    assert b">21.50 " in accounts.content  # available: 1 is held
