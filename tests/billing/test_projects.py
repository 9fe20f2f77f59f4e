"""Projects (``billing.projects``) and their API: created once per key, listed with their
spend this period, changed (limit, name, archive); input refused when unknown or negative;
the budget period a subscription gives, or a calendar month without one."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing import errors, projects
from billing.models import Project, ProjectSpend
from tests.billing.conftest import assert_error
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

D = Decimal
URL = "/api/v1/customers/acme/projects"


@pytest.fixture
def acme(make_customer):
    return make_customer("acme", funds=10)


# --- the services ------------------------------------------------------------------------------


def test_a_key_is_unique_per_customer(acme, make_customer):
    projects.create_project(customer=acme, key="team-a", spend_limit=D(5))
    with pytest.raises(errors.ProjectExists):
        projects.create_project(customer=acme, key="team-a")
    # another customer's project may share the key
    other = make_customer("globex")
    assert projects.create_project(customer=other, key="team-a").name == "team-a"


def test_a_negative_limit_is_refused_by_the_service_and_the_database(acme):
    with pytest.raises(errors.ValidationFailed):
        projects.create_project(customer=acme, key="team-a", spend_limit=D(-1))
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Project.objects.create(customer=acme, key="raw", spend_limit=D("-0.01"))


def test_without_a_subscription_the_period_is_the_calendar_month(acme):
    start, end = projects.budget_period(acme, at=datetime(2026, 2, 17, 8, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))


def test_with_a_subscription_the_period_is_its_current_one(acme, make_plan):
    subscription = SubscriptionFactory(customer=acme, plan=make_plan("basic"))
    assert projects.budget_period(acme) == (
        subscription.current_period_start,
        subscription.current_period_end,
    )


def test_a_new_limit_re_arms_the_exceeded_mark(acme):
    project = projects.create_project(customer=acme, key="team-a", spend_limit=D(5))
    start, _ = projects.budget_period(acme)
    assert projects.note_budget_exceeded(
        project_id=project.pk, period_start=start, currency="USD", amount=D(1)
    )
    assert not projects.note_budget_exceeded(
        project_id=project.pk, period_start=start, currency="USD", amount=D(1)
    )
    projects.update_project(project=project, spend_limit=D(6))
    assert ProjectSpend.objects.get(project=project).exceeded_at is None
    assert projects.note_budget_exceeded(
        project_id=project.pk, period_start=start, currency="USD", amount=D(1)
    )


# --- the API -----------------------------------------------------------------------------------


def test_create_then_read_list_and_update(api, acme):
    created = api.post(URL, {"key": "team-a", "name": "Team A", "spend_limit": "25.50"})
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["key"] == "team-a" and body["customer"] == "acme"
    assert (body["spend_limit"], body["spent"], body["held"], body["remaining"]) == (
        "25.500000000000",
        "0.000000000000",
        "0.000000000000",
        "25.500000000000",
    )
    assert (body["status"], body["currency"], body["archived_at"]) == ("active", "USD", None)
    assert api.get(f"{URL}/team-a").json() == body
    patched = api.patch(f"{URL}/team-a", {"name": "Search", "spend_limit": None})
    assert patched.status_code == 200, patched.json()
    assert (patched.json()["name"], patched.json()["spend_limit"]) == ("Search", None)
    assert patched.json()["remaining"] is None
    archived = api.patch(f"{URL}/team-a", {"status": "archived"}).json()
    assert archived["status"] == "archived" and archived["archived_at"] is not None
    assert [p["key"] for p in api.get(URL, {"status": "archived"}).json()["data"]] == ["team-a"]
    assert api.get(URL, {"status": "active"}).json()["data"] == []


def test_the_list_is_cursor_paginated_newest_first(api, acme):
    for n in range(3):
        projects.create_project(customer=acme, key=f"p{n}")
    first = api.get(URL, {"limit": 2}).json()
    assert [p["key"] for p in first["data"]] == ["p2", "p1"] and first["has_more"]
    rest = api.get(URL, {"limit": 2, "starting_after": first["data"][-1]["id"]}).json()
    assert [p["key"] for p in rest["data"]] == ["p0"] and not rest["has_more"]


def test_the_list_shows_each_projects_spend_this_period(api, acme):
    team = projects.create_project(customer=acme, key="team-a", spend_limit=D(10))
    start, _ = projects.budget_period(acme)
    projects.add_spend(project_id=team.pk, period_start=start, currency="USD", amount=D("3.25"))
    old = datetime(2020, 1, 1, tzinfo=UTC)  # another period's spend is not this one's
    projects.add_spend(project_id=team.pk, period_start=old, currency="USD", amount=D(99))
    [shown] = api.get(URL).json()["data"]
    assert (shown["spent"], shown["remaining"]) == ("3.250000000000", "6.750000000000")


def test_a_taken_key_is_409_and_a_replay_is_the_first_answer(api, acme):
    headers = {"HTTP_IDEMPOTENCY_KEY": "create-team-a"}
    first = api.post(URL, {"key": "team-a"}, **headers)
    again = api.post(URL, {"key": "team-a"}, **headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
    assert_error(api.post(URL, {"key": "team-a"}), 409, "project_exists", param="key")
    assert Project.objects.count() == 1


@pytest.mark.parametrize(
    ("payload", "code", "param"),
    [
        ({"key": "t", "limit": "5"}, "unknown_parameter", "limit"),
        ({"key": "t", "spend_limit": "-1"}, "invalid_parameter", "spend_limit"),
        ({"key": "t", "spend_limit": "1e400"}, "amount_too_large", "spend_limit"),
        ({"key": "a/b"}, "invalid_parameter", "key"),
        ({"key": ""}, "invalid_parameter", "key"),
        ({"key": 7}, "invalid_parameter", "key"),
        ({"key": ["team-a"]}, "invalid_parameter", "key"),
        ({"key": "team\na"}, "invalid_parameter", "key"),
        ({"key": "team\x7f"}, "invalid_parameter", "key"),
        ({}, "parameter_missing", "key"),
    ],
)
def test_bad_input_is_refused(api, acme, payload, code, param):
    response = api.post(URL, payload)
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["code"] == code
    assert not Project.objects.exists()


def test_an_update_refuses_unknown_fields_and_negative_limits(api, acme):
    projects.create_project(customer=acme, key="team-a", spend_limit=D(5))
    assert_error(
        api.patch(f"{URL}/team-a", {"archived": True}), 400, "unknown_parameter", param="archived"
    )
    assert_error(
        api.patch(f"{URL}/team-a", {"spend_limit": "-3"}),
        400,
        "invalid_parameter",
        param="spend_limit",
    )
    assert Project.objects.get().spend_limit == D(5)


def test_an_empty_string_limit_is_refused_not_read_as_no_limit(api, acme):
    """Review: ``spend_limit: ""`` used to remove the limit silently; only ``null`` does."""
    projects.create_project(customer=acme, key="team-a", spend_limit=D(5))
    for blank in ("", "  "):
        assert_error(
            api.patch(f"{URL}/team-a", {"spend_limit": blank}, format="json"),
            400,
            "invalid_parameter",
            param="spend_limit",
        )
    assert Project.objects.get().spend_limit == D(5)
    assert_error(
        api.post(URL, {"key": "team-b", "spend_limit": ""}, format="json"),
        400,
        "invalid_parameter",
        param="spend_limit",
    )
    assert not Project.objects.filter(key="team-b").exists()
    removed = api.patch(f"{URL}/team-a", {"spend_limit": None}, format="json")
    assert removed.status_code == 200 and removed.json()["spend_limit"] is None


def test_unknown_customer_or_project_is_404(api, acme):
    assert_error(api.get("/api/v1/customers/nobody/projects"), 404, "customer_not_found")
    assert_error(api.get(f"{URL}/nope"), 404, "project_not_found", param=None)
    assert_error(api.patch(f"{URL}/nope", {"name": "x"}), 404, "project_not_found")


def test_a_read_key_reads_but_does_not_write(read_api, acme):
    projects.create_project(customer=acme, key="team-a")
    assert read_api.get(URL).status_code == 200
    assert_error(read_api.post(URL, {"key": "b"}), 403, "insufficient_scope")
