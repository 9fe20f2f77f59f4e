"""POST /holds under concurrency on real PostgreSQL (real threads, each with its own
connection, ``transaction=True``): identical requests sharing one ``reference`` are one hold,
and every one of them answers with it — none is refused as ``reference_reused``."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest

from billing import services
from billing.models import Wallet
from ledger import selectors
from ledger.models import Hold
from tests.billing.conftest import make_client
from tests.conftest import unique
from tests.threads import run_concurrently

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

THREADS = 20
ROUNDS = 3


def test_identical_concurrent_holds_with_one_reference_are_one_hold():
    _, secret = services.create_api_key(name=unique("key"), scopes=["ingest", "read"])
    customer = services.create_customer(external_id=unique("cus"), name="Acme Robotics")
    services.top_up(customer=customer, amount=Decimal(100))
    account = Wallet.objects.get(customer=customer, currency="USD").account
    for round_ in range(ROUNDS):
        body = {
            "customer": customer.external_id,
            "amount": "1.50",
            "reference": f"job-{round_}",
            "expires_in": 600,
        }

        def send(i: int, body=body):
            response = make_client(secret).post("/api/v1/holds", body, format="json")
            return response.status_code, response.json()

        results = run_concurrently(send, THREADS)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors
        statuses = Counter(status for status, _ in results)
        assert statuses == {201: 1, 200: THREADS - 1}, [b for _, b in results]
        assert len({body["id"] for _, body in results}) == 1
    assert Hold.objects.filter(account=account).count() == ROUNDS
    assert selectors.get_balance(account=account).held == Decimal("4.5")


def test_a_reused_reference_names_the_clients_reference_not_ours():
    _, secret = services.create_api_key(name=unique("key"), scopes=["ingest", "read"])
    customer = services.create_customer(external_id=unique("cus"), name="Acme Robotics")
    services.top_up(customer=customer, amount=Decimal(100))
    api = make_client(secret)
    body = {"customer": customer.external_id, "amount": "1", "reference": "job-9"}
    first = api.post("/api/v1/holds", body, format="json").json()
    response = api.post("/api/v1/holds", {**body, "amount": "2"}, format="json")
    assert response.status_code == 409
    message = response.json()["error"]["message"]
    assert "'job-9'" in message and str(first["id"]) in message
    assert "hold:" not in message


def test_a_reused_top_up_or_settle_reference_names_the_clients_reference():
    _, secret = services.create_api_key(name=unique("key"), scopes=["ingest", "read", "write"])
    customer = services.create_customer(external_id=unique("cus"), name="Acme Robotics")
    api = make_client(secret)
    url = f"/api/v1/customers/{customer.external_id}/top-ups"
    assert api.post(url, {"amount": "50", "reference": "pay-1"}).status_code == 201
    response = api.post(url, {"amount": "60", "reference": "pay-1"})
    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("reference_reused", "reference")
    assert "'pay-1'" in error["message"] and "top-up:" not in error["message"]

    body = {"customer": customer.external_id, "amount": "5"}
    hold = api.post("/api/v1/holds", body).json()
    url = f"/api/v1/holds/{hold['id']}/settle"
    first = api.post(url, {"amount": "1", "final": False, "reference": "part-1"})
    assert first.status_code == 200, first.json()
    response = api.post(url, {"amount": "2", "final": False, "reference": "part-1"})
    assert response.status_code == 409
    error = response.json()["error"]
    assert "'part-1'" in error["message"] and "hold-settle:" not in error["message"]
    assert error["param"] == "reference"

    released = api.post(f"/api/v1/holds/{hold['id']}/release").json()
    late = api.post(url, {"amount": "1"})
    assert late.status_code == 409
    assert f"hold {released['id']} " in late.json()["error"]["message"]
    assert "hold:" not in late.json()["error"]["message"]
