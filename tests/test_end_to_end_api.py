"""Issue 3's scenario end to end: the demo price list is loaded, a key made by
``manage.py create_api_key`` creates a customer, tops it up, subscribes it to a demo plan
and reads its balance."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_key_from_the_command_runs_the_whole_flow():
    call_command("seed_demo", stdout=io.StringIO())
    out = io.StringIO()
    call_command(
        "create_api_key", name="backend", scopes="read,write", stdout=out, stderr=io.StringIO()
    )
    secret = out.getvalue().strip()
    assert secret.startswith("sk_")

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    created = api.post(
        "/api/v1/customers", {"external_id": "umbrella", "name": "Umbrella"}, format="json"
    )
    assert created.status_code == 201, created.json()
    topped = api.post(
        "/api/v1/customers/umbrella/top-ups",
        {"amount": "42.50", "reference": "pay-1"},
        format="json",
    )
    assert topped.status_code == 201, topped.json()
    subscribed = api.post(
        "/api/v1/subscriptions", {"customer": "umbrella", "plan": "pro"}, format="json"
    )
    assert subscribed.status_code == 201, subscribed.json()
    assert subscribed.json()["status"] == "trialing"  # the demo "pro" plan has a trial

    balance = api.get("/api/v1/customers/umbrella/balance").json()
    assert balance["balances"] == [
        {
            "currency": "USD",
            "posted": "42.500000000000",
            "held": "0.000000000000",
            "available": "42.500000000000",
        }
    ]
    assert {a["meter"] for a in balance["allowances"]} >= {"output_tokens"}
    customer = api.get("/api/v1/customers/umbrella").json()
    assert customer["subscription"]["plan"] == "pro"
