"""The demo (`make run`) shows budgets and a reconciliation: seed_demo makes acme's projects
with their limits and reconciles the history it seeded; the simulator names those projects
in acme's calls and does not top a wallet up when a budget, not the wallet, refused."""

from __future__ import annotations

import io
import random
from decimal import Decimal

import pytest
from django.core.management import call_command

from billing.models import Customer
from invoicing.models import ReconciliationRun, ReconciliationStatus
from metering.management.commands import simulate_usage

pytestmark = pytest.mark.django_db


def test_the_demo_has_projects_with_budgets_and_a_passed_reconciliation():
    call_command("seed_demo", stdout=io.StringIO())
    acme = Customer.objects.get(external_id="acme")
    assert {p.key: p.spend_limit for p in acme.projects.all()} == {
        "search-api": Decimal("40.00"),
        "chat-assistant": Decimal("1.50"),
    }
    run = ReconciliationRun.objects.get(triggered_by="seed_demo")
    assert run.status == ReconciliationStatus.PASSED, run.checks


def test_the_simulator_names_acme_s_projects_and_leaves_a_budget_refusal_alone(monkeypatch):
    command = simulate_usage.Command()
    rng = random.Random(3)
    named = {command._event("acme", rng).get("project") for _ in range(60)}
    assert named == {"search-api", "chat-assistant", None}
    assert all("project" not in command._event("globex", rng) for _ in range(20))

    refills = []
    monkeypatch.setattr(command, "_refill", refills.append)
    answers = iter(
        [
            (402, {"error": {"code": "budget_exceeded"}}),
            (402, {"error": {"code": "insufficient_funds"}}),
        ]
    )
    monkeypatch.setattr(command, "_post", lambda path, body: next(answers))
    monkeypatch.setattr(rng, "random", lambda: 0.9)  # a single event, not a batch or a hold
    command._round("acme", rng)
    assert refills == []
    command._round("acme", rng)
    assert refills == ["acme"]
