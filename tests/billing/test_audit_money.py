"""Every staff path in the admin that moves money or grants credits shows in the audit trail
with who, when, what and why — the small ones that need no approval as well as the large
ones (issue 17, item 5). A small adjustment, top-up or credit grant is recorded as an
``applied`` AdjustmentRequest (billing.services.approvals) linked to its ledger posting.
(Voids and refunds of grants, invoice voids, credit notes and offline payments change a
tracked row already: billing.models.audit, invoicing.models.)"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from billing.models import AdjustmentRequest, ApprovalStatus, AuditEvent, CreditGrant, GrantSource
from tests.factories import CustomerFactory, staff_user

pytestmark = pytest.mark.django_db

AUDIT = reverse("admin:billing_auditevent_changelist")


@pytest.fixture
def people(settings, db):
    settings.ADJUSTMENT_APPROVAL_THRESHOLD = {"*": Decimal("500")}
    return staff_user("olga", "Finance operator"), staff_user("ada", "Administrator")


def form(client, url: str) -> dict:
    form = client.get(url).context["form"]
    return {name: form[name].value() for name in form.fields if form[name].value() is not None}


def trail(client, reader, **params) -> str:
    client.force_login(reader)
    response = client.get(AUDIT, params)
    assert response.status_code == 200
    return response.content.decode()


def the_event(model: str) -> AuditEvent:
    return AuditEvent.objects.get(pgh_obj_model=model, pgh_label="insert")


def test_a_small_adjustment_is_an_applied_request_in_the_trail(client, people):
    olga, ada = people
    customer = CustomerFactory(funds=100)
    client.force_login(olga)
    url = reverse("admin:billing_customer_adjust", args=[customer.pk])
    data = {**form(client, url), "amount": "-25.5", "reason": "Double charge, ticket 77"}
    assert client.post(url, data).status_code == 302
    client.post(url, data)  # the same form again: one posting, one record

    record = AdjustmentRequest.objects.get()
    assert (record.kind, record.status, record.amount) == (
        "adjustment",
        ApprovalStatus.APPLIED,
        Decimal("-25.5"),
    )
    assert record.requested_by == olga and record.decided_by is None
    assert record.decided_at is not None
    txn = record.ledger_transaction
    assert txn.reference == f"adjustment:{customer.pk}:admin:{data['token']}"
    assert txn.metadata["staff_user_id"] == olga.pk  # the posting as before
    event = the_event("billing.AdjustmentRequest")
    assert (event.user_id, event.reason) == (olga.pk, "Double charge, ticket 77")
    page = trail(client, ada, q="ticket 77")
    assert "olga" in page and "-25.5" in page and "applied" in page
    assert "Double charge, ticket 77" in page


def test_a_small_top_up_is_an_applied_request_in_the_trail(client, people):
    olga, ada = people
    customer = CustomerFactory(funds=100)
    client.force_login(olga)
    url = reverse("admin:billing_customer_top_up", args=[customer.pk])
    data = {**form(client, url), "amount": "40", "description": "wire REF-9"}
    assert client.post(url, data).status_code == 302
    client.post(url, data)

    record = AdjustmentRequest.objects.get()
    assert (record.kind, record.status, record.reason) == ("top_up", "applied", "wire REF-9")
    assert record.ledger_transaction.description == "wire REF-9"
    event = the_event("billing.AdjustmentRequest")
    assert (event.user_id, event.reason) == (olga.pk, "wire REF-9")
    page = trail(client, ada, q="REF-9")
    assert "olga" in page and "top_up" in page and "40" in page


def test_a_small_credit_grant_is_an_applied_request_in_the_trail(client, people):
    olga, ada = people
    customer = CustomerFactory(funds=100)
    client.force_login(olga)
    url = reverse("admin:billing_customer_grant", args=[customer.pk])
    data = {**form(client, url), "amount": "300", "name": "Welcome credits"}
    data.update(source=GrantSource.PROMOTIONAL)
    assert client.post(url, data).status_code == 302
    client.post(url, data)

    grant = CreditGrant.objects.get()
    record = AdjustmentRequest.objects.get()
    assert (record.kind, record.status, record.currency) == ("credit_grant", "applied", "CREDITS")
    assert record.ledger_transaction == grant.ledger_transaction
    assert record.details["source"] == GrantSource.PROMOTIONAL
    event = the_event("billing.AdjustmentRequest")
    assert (event.user_id, event.reason) == (olga.pk, "Welcome credits")
    assert the_event("billing.CreditGrant").user_id == olga.pk  # the grant itself, as before
    page = trail(client, ada, q="Welcome credits")
    assert "olga" in page and "credit_grant" in page
