"""Budgets inside a customer, as rating keeps them (``metering.rating.budgets``): events,
batches, asynchronous acceptance, /authorize and holds naming a ``project``; the spend per
project and period counted exactly; past the limit a refusal with ``budget_exceeded`` while
the other projects (and events without one) go on; ``budget.exceeded`` once per crossing.

The plan charges 1 USD per unit of ``api.call``'s ``units``, so an event's amount is its
units; the project ``team-a`` may spend 10 a period. Figures are worked out by hand."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from billing import projects, services
from billing.api.webhook_schema import BudgetExceededData
from billing.models import OutboundEvent, Project, ProjectSpend
from ledger import selectors as ledger_selectors
from metering import inbox
from metering.models import Event, IncomingEvent
from tests.billing.conftest import ChargeSpec, assert_error, iso
from tests.metering import test_api_usage as usage_tests
from tests.metering.test_api_usage import DAY1, START

api, api_key, make_key = usage_tests.api, usage_tests.api_key, usage_tests.make_key
make_customer, make_meter, make_plan = (
    usage_tests.make_customer,
    usage_tests.make_meter,
    usage_tests.make_plan,
)

pytestmark = pytest.mark.django_db

D = Decimal


@pytest.fixture
def acme(make_customer, make_meter, make_plan):
    """acme, prepaid with 100 USD, on 1 USD per unit; project team-a limited to 10, team-b
    without a limit."""
    make_meter("units", event_name="api.call", property="units")
    plan = make_plan("per-unit", charges=[ChargeSpec(meter="units", unit_price=D(1))])
    customer = make_customer("acme", funds=100)
    usage_tests.subscribe(customer, plan)
    projects.create_project(customer=customer, key="team-a", spend_limit=D(10))
    projects.create_project(customer=customer, key="team-b")
    return customer


def body(key: str, units: int, project: str | None = "team-a", **extra) -> dict:
    event = {
        "idempotency_key": key,
        "customer": "acme",
        "event_name": "api.call",
        "timestamp": iso(DAY1),
        "properties": {"units": units},
        **extra,
    }
    if project is not None:
        event["project"] = project
    return event


def spend(key: str = "team-a") -> ProjectSpend | None:
    return ProjectSpend.objects.filter(project__key=key).first()


def available(customer) -> Decimal:
    return ledger_selectors.get_balance(
        account=services.wallet_for(customer=customer).account
    ).available


def test_an_event_is_charged_to_its_project(api, acme):
    response = api.post("/api/v1/events", body("e1", 4))
    assert response.status_code == 201, response.json()
    event = Event.objects.get(idempotency_key="e1")
    assert event.project == Project.objects.get(key="team-a")
    counted = spend()
    assert (counted.amount, counted.event_count, counted.currency) == (D(4), 1, "USD")
    assert counted.period_start == START  # the subscription's period
    shown = api.get("/api/v1/customers/acme/projects/team-a").json()
    assert (shown["spent"], shown["remaining"], shown["event_count"]) == (
        "4.000000000000",
        "6.000000000000",
        1,
    )


def test_an_event_without_a_project_is_charged_to_none(api, acme):
    assert api.post("/api/v1/events", body("e1", 4, project=None)).status_code == 201
    assert Event.objects.get().project is None
    assert not ProjectSpend.objects.exists()


def test_past_the_limit_the_event_is_refused_with_402_and_changes_nothing(api, acme):
    assert api.post("/api/v1/events", body("e1", 8)).status_code == 201
    before = available(acme)
    refused = api.post("/api/v1/events", body("e2", 3))
    assert_error(refused, 402, "budget_exceeded", param="project")
    assert available(acme) == before
    assert not Event.objects.filter(idempotency_key="e2").exists()
    assert spend().amount == D(8)
    # up to the limit exactly is allowed (8 + 2 = 10)
    assert api.post("/api/v1/events", body("e3", 2)).status_code == 201
    assert spend().amount == D(10)
    assert_error(api.post("/api/v1/events", body("e4", 1)), 402, "budget_exceeded", param="project")
    # another project and events without one go on
    assert api.post("/api/v1/events", body("e5", 30, project="team-b")).status_code == 201
    assert api.post("/api/v1/events", body("e6", 5, project=None)).status_code == 201


def test_a_retry_is_a_duplicate_not_a_refusal_and_counts_once(api, acme):
    first = api.post("/api/v1/events", body("e1", 6))
    assert first.status_code == 201
    # the budget has 4 left: the same event again would not fit, but it is a duplicate
    again = api.post("/api/v1/events", body("e1", 6))
    assert again.status_code == 200, again.json()
    assert again.json()["status"] == "duplicate"
    # the same Idempotency-Key replays the first answer
    headers = {"HTTP_IDEMPOTENCY_KEY": "req-7"}
    one = api.post("/api/v1/events", body("e2", 3), **headers)
    two = api.post("/api/v1/events", body("e2", 3), **headers)
    assert (one.status_code, two.status_code) == (201, 201)
    assert two.headers["Idempotent-Replayed"] == "true"
    assert (spend().amount, spend().event_count) == (D(9), 2)


def test_a_batch_refuses_only_the_events_past_their_budget(api, acme):
    events = [
        body("b1", 6),
        body("b2", 6),  # 12 > 10: refused
        body("b3", 6, project=None),
        body("b4", 6, project="team-b"),
        body("b5", 1, project="no-such-team"),
        body("b6", 4),  # 6 + 4 = 10: fits
    ]
    response = api.post("/api/v1/events/batch", {"events": events})
    assert response.status_code == 200, response.json()
    results = response.json()["data"]
    assert [r["status"] for r in results] == [
        "accepted",
        "rejected",
        "accepted",
        "accepted",
        "rejected",
        "accepted",
    ]
    assert results[1]["error"]["code"] == "budget_exceeded"
    assert results[4]["error"]["code"] == "project_not_found"
    assert results[4]["error"]["param"] == "project"
    assert (spend().amount, spend().event_count) == (D(10), 2)
    assert (spend("team-b").amount, spend("team-b").event_count) == (D(6), 1)
    assert available(acme) == D(100 - 6 - 6 - 6 - 4)


def test_an_unknown_project_is_refused_not_created(api, acme):
    assert_error(
        api.post("/api/v1/events", body("e1", 1, project="typo")),
        404,
        "project_not_found",
        param="project",
    )
    assert not Project.objects.filter(key="typo").exists()
    assert not Event.objects.exists()


def test_project_must_be_a_string(api, acme):
    for value in (7, None, "", ["team-a"]):
        response = api.post("/api/v1/events", body("e1", 1, project=None) | {"project": value})
        assert response.status_code == 400, (value, response.json())
        assert response.json()["error"]["param"] == "project"


def test_an_archived_project_refuses_usage(api, acme):
    patched = api.patch("/api/v1/customers/acme/projects/team-a", {"status": "archived"})
    assert patched.status_code == 200 and patched.json()["status"] == "archived"
    assert_error(
        api.post("/api/v1/events", body("e1", 1)), 409, "project_archived", param="project"
    )
    api.patch("/api/v1/customers/acme/projects/team-a", {"status": "active"})
    assert api.post("/api/v1/events", body("e1", 1)).status_code == 201


def test_a_higher_limit_applies_to_the_next_event(api, acme):
    assert api.post("/api/v1/events", body("e1", 9)).status_code == 201
    assert_error(api.post("/api/v1/events", body("e2", 3)), 402, "budget_exceeded", param="project")
    api.patch("/api/v1/customers/acme/projects/team-a", {"spend_limit": "12"})
    assert api.post("/api/v1/events", body("e2", 3)).status_code == 201
    api.patch("/api/v1/customers/acme/projects/team-a", {"spend_limit": None})
    assert api.post("/api/v1/events", body("e3", 50)).status_code == 201
    assert spend().amount == D(62)


# --- budget.exceeded ------------------------------------------------------------------------------


def test_budget_exceeded_is_emitted_once_per_crossing(api, acme):
    assert api.post("/api/v1/events", body("e1", 9)).status_code == 201
    for key in ("e2", "e3"):
        assert_error(
            api.post("/api/v1/events", body(key, 3)), 402, "budget_exceeded", param="project"
        )
    [emitted] = OutboundEvent.objects.filter(type="budget.exceeded")
    assert emitted.customer == acme
    assert emitted.data["project"] == "team-a"
    assert emitted.data["spent"] == "9.000000000000"
    assert emitted.data["refused_amount"] == "3.000000000000"
    documented = BudgetExceededData(data=emitted.data)  # the schema's webhooks section
    assert documented.is_valid(), documented.errors
    assert set(documented.fields) == set(emitted.data)
    assert spend().exceeded_at is not None
    # a new limit re-arms it: the next refusal emits again
    api.patch("/api/v1/customers/acme/projects/team-a", {"spend_limit": "11"})
    assert_error(api.post("/api/v1/events", body("e4", 3)), 402, "budget_exceeded", param="project")
    assert OutboundEvent.objects.filter(type="budget.exceeded").count() == 2


# --- asynchronous acceptance ----------------------------------------------------------------------

ASYNC = {"HTTP_PREFER": "respond-async"}


def test_async_events_are_charged_to_their_project_when_rated(api, acme):
    events = [body("a1", 6), body("a2", 6), body("a3", 1, project="nope")]
    response = api.post("/api/v1/events/batch", {"events": events}, **ASYNC)
    assert response.status_code == 202, response.json()
    assert response.json()["pending"] == 3
    assert IncomingEvent.objects.get(idempotency_key="a1").project == "team-a"
    inbox.rate_pending()
    assert Event.objects.get(idempotency_key="a1").project.key == "team-a"
    refused = {row.idempotency_key: row.error_code for row in IncomingEvent.objects.all()}
    assert refused == {"a2": "budget_exceeded", "a3": "project_not_found"}
    assert spend().amount == D(6)


# --- /authorize -----------------------------------------------------------------------------------


def test_authorize_checks_the_project_budget(api, acme):
    assert api.post("/api/v1/events", body("e1", 8)).status_code == 201
    ask = {"customer": "acme", "amount": "3", "project": "team-a"}
    refused = api.post("/api/v1/authorize", ask)
    assert refused.status_code == 200, refused.json()
    assert (refused.json()["allowed"], refused.json()["reason"]) == (False, "budget_exceeded")
    fits = api.post("/api/v1/authorize", ask | {"amount": "2"})
    assert (fits.json()["allowed"], fits.json()["reason"]) == (True, None)
    # without the project the wallet alone decides
    alone = api.post("/api/v1/authorize", {"customer": "acme", "amount": "3"})
    assert alone.json()["allowed"] is True
    assert_error(
        api.post("/api/v1/authorize", ask | {"project": "typo"}),
        404,
        "project_not_found",
        param="project",
    )


# --- holds ----------------------------------------------------------------------------------------


def test_a_pending_hold_counts_against_the_budget(api, acme):
    hold = api.post("/api/v1/holds", {"customer": "acme", "amount": "7", "project": "team-a"})
    assert hold.status_code == 201, hold.json()
    shown = api.get("/api/v1/customers/acme/projects/team-a").json()
    assert (shown["held"], shown["remaining"]) == ("7.000000000000", "3.000000000000")
    assert_error(api.post("/api/v1/events", body("e1", 4)), 402, "budget_exceeded", param="project")
    assert_error(
        api.post("/api/v1/holds", {"customer": "acme", "amount": "4", "project": "team-a"}),
        402,
        "budget_exceeded",
        param="project",
    )
    authorize = api.post(
        "/api/v1/authorize", {"customer": "acme", "amount": "4", "project": "team-a"}
    )
    assert authorize.json()["reason"] == "budget_exceeded"
    released = api.post(f"/api/v1/holds/{hold.json()['id']}/release", {})
    assert released.status_code == 200
    assert api.post("/api/v1/events", body("e1", 4)).status_code == 201


def test_a_holds_retry_with_its_reference_is_that_hold_not_a_refusal(api, acme):
    ask = {"customer": "acme", "amount": "7", "project": "team-a", "reference": "job-1"}
    first = api.post("/api/v1/holds", ask)
    again = api.post("/api/v1/holds", ask)
    assert (first.status_code, again.status_code) == (201, 200), again.json()
    assert again.json()["id"] == first.json()["id"]
    shown = api.get("/api/v1/customers/acme/projects/team-a").json()
    assert shown["held"] == "7.000000000000"
    other = api.post("/api/v1/holds", ask | {"reference": "job-2"})
    assert_error(other, 402, "budget_exceeded", param="project")


def test_a_hold_reference_placed_without_a_project_is_never_linked_to_one(api, acme):
    """Review: a hold of 50 placed without a project, then its reference replayed naming
    team-a (limit 10): that hold was never checked against team-a's budget; linking it
    would make team-a hold 50 of its 10. Refused as a reused reference, nothing linked."""
    ask = {"customer": "acme", "amount": "50", "reference": "job-1"}
    first = api.post("/api/v1/holds", ask)
    assert first.status_code == 201, first.json()
    assert_error(
        api.post("/api/v1/holds", ask | {"project": "team-a"}),
        409,
        "reference_reused",
        param="reference",
    )
    shown = api.get("/api/v1/customers/acme/projects/team-a").json()
    assert shown["held"] == "0.000000000000"
    assert projects.hold_project(hold_id=first.json()["id"]) is None
    # the replay without a project is still that hold
    assert api.post("/api/v1/holds", ask).json()["id"] == first.json()["id"]


def test_a_hold_reference_of_another_project_is_refused(api, acme):
    ask = {"customer": "acme", "amount": "5", "reference": "job-1", "project": "team-b"}
    first = api.post("/api/v1/holds", ask)
    assert first.status_code == 201, first.json()
    assert_error(
        api.post("/api/v1/holds", ask | {"project": "team-a"}),
        409,
        "reference_reused",
        param="reference",
    )
    assert projects.hold_project(hold_id=first.json()["id"]).key == "team-b"
    assert api.get("/api/v1/customers/acme/projects/team-a").json()["held"] == ("0.000000000000")


def test_a_hold_refused_for_the_budget_emits_budget_exceeded_once(api, acme):
    """docs/budgets.md: the first refusal of a period (event, batch event or hold) emits
    budget.exceeded; a later refusal, hold or event, does not emit it again."""
    ask = {"customer": "acme", "amount": "11", "project": "team-a"}
    assert_error(api.post("/api/v1/holds", ask), 402, "budget_exceeded", param="project")
    [emitted] = OutboundEvent.objects.filter(type="budget.exceeded")
    assert (emitted.data["project"], emitted.data["refused_amount"]) == (
        "team-a",
        "11.000000000000",
    )
    assert emitted.data["period_start"] == spend().period_start.isoformat()
    assert spend().exceeded_at is not None and spend().amount == 0
    assert_error(api.post("/api/v1/holds", ask), 402, "budget_exceeded", param="project")
    assert_error(
        api.post("/api/v1/events", body("e1", 11)), 402, "budget_exceeded", param="project"
    )
    assert OutboundEvent.objects.filter(type="budget.exceeded").count() == 1


def test_a_hold_settled_with_an_event_charges_its_project(api, acme):
    hold = api.post("/api/v1/holds", {"customer": "acme", "amount": "9", "project": "team-a"})
    assert hold.status_code == 201
    # the hold's own 9 do not block its settlement: 5 + (9 held by it) is within 10 once
    # the rest is released
    settle = api.post(
        f"/api/v1/holds/{hold.json()['id']}/settle", {"event": body("s1", 5, project=None)}
    )
    assert settle.status_code == 200, settle.json()
    assert Event.objects.get(idempotency_key="s1").project.key == "team-a"
    assert spend().amount == D(5)
    shown = api.get("/api/v1/customers/acme/projects/team-a").json()
    assert (shown["held"], shown["remaining"]) == ("0.000000000000", "5.000000000000")
    other = api.post("/api/v1/holds", {"customer": "acme", "amount": "1", "project": "team-a"})
    wrong = api.post(
        f"/api/v1/holds/{other.json()['id']}/settle",
        {"event": body("s2", 1, project="team-b")},
    )
    assert_error(wrong, 400, "invalid_event", param="event.project")


def test_a_hold_settled_by_amount_counts_as_spend_once(api, acme):
    hold = api.post("/api/v1/holds", {"customer": "acme", "amount": "6", "project": "team-a"})
    url = f"/api/v1/holds/{hold.json()['id']}/settle"
    part = {"amount": "2", "final": False, "reference": "p1"}
    assert api.post(url, part).status_code == 200
    assert api.post(url, part).status_code == 200  # the same part again: a replay
    assert spend().amount == D(2)
    shown = api.get("/api/v1/customers/acme/projects/team-a").json()
    assert (shown["spent"], shown["held"]) == ("2.000000000000", "4.000000000000")


def test_a_long_batch_written_by_copy_records_its_projects(api, acme):
    """More than EVENTS_BY_INSERT events go in by COPY: the project column with them."""
    events = [body(f"c{n}", 1, project="team-b" if n % 2 else "team-a") for n in range(40)]
    response = api.post("/api/v1/events/batch", {"events": events})
    assert response.status_code == 200
    # team-a takes 10 of its 20 (its limit), team-b all 20
    assert (response.json()["accepted"], response.json()["rejected"]) == (30, 10)
    assert Event.objects.filter(project__key="team-a").count() == 10
    assert Event.objects.filter(project__key="team-b").count() == 20
    assert (spend().amount, spend("team-b").amount) == (D(10), D(20))


# --- the hot path ---------------------------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch) -> list[str]:
    statements: list[str] = []
    for name in ("execute", "copy"):
        original = getattr(psycopg.Cursor, name)

        def counted(self, query, *args, _original=original, **kwargs):
            statements.append(str(query))
            return _original(self, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, name, counted)
    return statements


def test_a_project_costs_one_statement_more_and_none_without(
    api, acme, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/events", body("warm", 1)).status_code == 201
    sent.clear()
    assert api.post("/api/v1/events", body("plain", 1, project=None)).status_code == 201
    without = len(sent)
    assert not any("billing_project" in q for q in sent)
    sent.clear()
    assert api.post("/api/v1/events", body("charged", 1)).status_code == 201
    assert len(sent) == without + 1, "\n".join(q[:100] for q in sent)
    assert spend().amount == D(2)


# --- reading it back ------------------------------------------------------------------------------


def test_events_and_the_usage_report_show_the_project(api, acme):
    assert api.post("/api/v1/events", body("e1", 4)).status_code == 201
    assert api.post("/api/v1/events", body("e2", 30, project="team-b")).status_code == 201
    assert api.post("/api/v1/events", body("e3", 2, project=None)).status_code == 201
    assert api.post("/api/v1/events", body("e4", 3)).status_code == 201
    listed = api.get("/api/v1/events", {"customer": "acme"}).json()["data"]
    assert {e["idempotency_key"]: e["project"] for e in listed} == {
        "e1": "team-a",
        "e2": "team-b",
        "e3": None,
        "e4": "team-a",
    }
    report = api.get("/api/v1/customers/acme/usage", {"group_by": "project"})
    assert report.status_code == 200, report.json()
    assert report.json()["projects"] == [
        {"project": "team-a", "currency": "USD", "events": 2, "amount": "7"},
        {"project": "team-b", "currency": "USD", "events": 1, "amount": "30"},
        {"project": None, "currency": "USD", "events": 1, "amount": "2"},
    ]
    assert "projects" not in api.get("/api/v1/customers/acme/usage").json()
