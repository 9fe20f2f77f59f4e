"""The audit trail (billing.models.audit, django-pghistory): staff actions are recorded with
who, when, what changed and why, whatever path made them; the admin lists and searches them;
a customer's and a plan's pages link to their history; the ingest path records nothing and
its tables carry no trigger."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.utils import ProgrammingError
from django.urls import reverse

from billing import services
from billing.models import AdjustmentRequest, APIKey, AuditEvent, Customer
from billing.models.audit import TRACKED
from tests.factories import CustomerFactory, PlanFactory, staff_user
from tests.metering import test_api_usage as usage_tests
from tests.metering.test_api_usage import CHAT, DAY1, llm_body

# the API usage tests' fixtures: an authenticated API client and a customer on a plan
api, api_key, make_key = usage_tests.api, usage_tests.api_key, usage_tests.make_key
make_customer, make_meter, make_plan = (
    usage_tests.make_customer,
    usage_tests.make_meter,
    usage_tests.make_plan,
)
acme, ai_plan, ai = usage_tests.acme, usage_tests.ai_plan, usage_tests.ai

pytestmark = pytest.mark.django_db

AUDIT = reverse("admin:billing_auditevent_changelist")


def events_of(obj):
    return AuditEvent.objects.tracks(obj).order_by("pgh_created_at", "pgh_id")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser("auditor", "a@example.com", None)


@pytest.fixture
def operators(db):
    return [staff_user(name, "Finance operator") for name in ("olga", "omar")]


def test_a_change_by_any_path_is_recorded_with_before_and_after():
    customer = CustomerFactory(name="Acme Robotics")
    services.update_customer(customer=customer, name="Acme Robotics GmbH")
    insert, update = events_of(customer)
    assert insert.pgh_label == "insert" and update.pgh_label == "update"
    assert update.pgh_diff == {"name": ["Acme Robotics", "Acme Robotics GmbH"]}
    assert update.pgh_context is None  # no request: a command, a shell, the API


def test_an_admin_action_records_the_staff_user_the_page_and_the_reason(
    client, settings, operators
):
    settings.ADJUSTMENT_APPROVAL_THRESHOLD = {"*": Decimal("100")}
    olga, omar = operators
    customer = CustomerFactory(funds=50)
    client.force_login(olga)
    client.post(
        reverse("admin:billing_customer_adjust", args=[customer.pk]),
        {
            "amount": "250",
            "currency": "USD",
            "reason": "SLA credit, ticket 42",
            "token": uuid.uuid4().hex,
        },
    )
    request = AdjustmentRequest.objects.get()
    client.force_login(omar)
    client.post(
        reverse("admin:billing_adjustmentrequest_approve", args=[request.pk]),
        {"decision_note": "Ticket checked"},
    )
    asked, approved = events_of(request)
    assert asked.pgh_label == "insert" and asked.user_id == olga.pk
    assert asked.reason == "SLA credit, ticket 42"
    assert asked.url == reverse("admin:billing_customer_adjust", args=[customer.pk])
    assert approved.pgh_label == "update" and approved.user_id == omar.pk
    assert approved.reason == "Ticket checked"
    assert approved.pgh_diff["status"] == ["pending", "approved"]
    assert approved.pgh_diff["decided_by_id"] == [None, omar.pk]


def test_api_keys_created_and_revoked_in_the_admin_are_recorded(client, staff):
    client.force_login(staff)
    client.post(
        reverse("admin:billing_apikey_add"), {"name": "prod-api", "scopes": ["read", "ingest"]}
    )
    key = APIKey.objects.get(name="prod-api")
    client.post(
        reverse("admin:billing_apikey_changelist"),
        {"action": "revoke_action", "_selected_action": [key.pk]},
    )
    created, revoked = events_of(key)
    assert created.user_id == staff.pk and revoked.user_id == staff.pk
    assert list(revoked.pgh_diff) == ["revoked_at"]
    assert "secret_hash" not in created.pgh_data  # never copied into the trail


def test_the_audit_list_searches_and_filters(client, settings, staff, operators):
    settings.ADJUSTMENT_APPROVAL_THRESHOLD = {"*": Decimal("1")}
    olga, _ = operators
    customer = CustomerFactory(name="Initech")
    other = CustomerFactory(name="Globex")
    client.force_login(olga)
    client.post(
        reverse("admin:billing_customer_adjust", args=[customer.pk]),
        {"amount": "5", "currency": "USD", "reason": "Rounding fix", "token": uuid.uuid4().hex},
    )
    assert AdjustmentRequest.objects.filter(requested_by=olga).exists()
    services.update_customer(customer=other, name="Globex Corp")
    client.force_login(staff)

    everything = client.get(AUDIT).content.decode()
    assert "Globex Corp" in everything and "Rounding fix" in everything
    by_user = client.get(AUDIT, {"user": olga.pk}).content.decode()
    assert "Rounding fix" in by_user and "Globex Corp" not in by_user
    by_reason = client.get(AUDIT, {"q": "rounding"}).content.decode()
    assert "Rounding fix" in by_reason and "Globex Corp" not in by_reason
    by_id = client.get(AUDIT, {"q": str(other.pk)}).content.decode()
    assert "Globex Corp" in by_id
    by_object = client.get(
        AUDIT, {"obj": f"billing.Customer:{other.pk}", "method": "tracks"}
    ).content.decode()
    assert "Globex Corp" in by_object and "Rounding fix" not in by_object
    by_model = client.get(AUDIT, {"event_model": "billing.adjustmentrequestevent"})
    assert "Rounding fix" in by_model.content.decode()
    assert "Globex Corp" not in by_model.content.decode()
    today = client.get(AUDIT, {"since": "1"}).content.decode()
    assert "Globex Corp" in today
    # an event's own page (linked from the list) opens, read-only
    event = AuditEvent.objects.tracks(other).get(pgh_label="update")
    detail = reverse("admin:billing_auditevent_change", args=[event.pk])
    page = client.get(detail)
    assert page.status_code == 200 and "Globex Corp" in page.content.decode()


def test_the_user_filter_with_a_bad_value_lists_nothing_not_500(client, staff):
    services.update_customer(customer=CustomerFactory(name="Initech"), name="Initech Corp")
    client.raise_request_exception = False
    client.force_login(staff)
    assert "Initech Corp" in client.get(AUDIT).content.decode()
    for bad in ("abc", "99999999999999999999999", "-1"):
        response = client.get(AUDIT, {"user": bad})
        assert response.status_code == 200, (bad, response.status_code)
        assert "Initech Corp" not in response.content.decode()


def test_customer_and_plan_pages_link_to_their_history(client, staff):
    customer = CustomerFactory()
    plan = PlanFactory()
    client.force_login(staff)
    for obj, label in ((customer, "billing.Customer"), (plan, "billing.Plan")):
        name = f"admin:billing_{obj._meta.model_name}_change"
        page = client.get(reverse(name, args=[obj.pk])).content.decode()
        link = f"{AUDIT}?method=tracks&amp;obj={label}:{obj.pk}"
        assert link in page
        history = client.get(AUDIT, {"method": "tracks", "obj": f"{label}:{obj.pk}"})
        assert history.status_code == 200
        assert str(obj.pk) in history.content.decode()


def test_events_are_append_only():
    customer = CustomerFactory()
    event_model = AuditEvent.objects.tracks(customer).get().pgh_model
    table = f"billing_{event_model.split('.')[1].lower()}"
    with pytest.raises(ProgrammingError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET name = 'forged'")  # noqa: S608 - a fixed name


HOT_TABLES = [
    "metering_event",
    "metering_incomingevent",
    "metering_periodusage",
    "metering_dailyusage",
    "metering_modelusage",
    "metering_perioddistinctvalue",
    "ledger_transaction",
    "ledger_entry",
    "ledger_balance",
    "ledger_hold",
    "billing_alertstate",
]


def test_no_history_trigger_on_the_ingest_tables():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND c.relname = ANY(%s) AND t.tgname LIKE 'pgtrigger_%%'",
            [HOT_TABLES],
        )
        assert cursor.fetchall() == []
        cursor.execute(
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE c.relname = 'billing_customer' AND t.tgname LIKE 'pgtrigger_%%'"
        )
        assert cursor.fetchone()[0] == 3  # insert, update, delete: the check above can see them
    tracked = {model._meta.db_table for model, _ in TRACKED}
    assert not tracked & set(HOT_TABLES)


def test_ingesting_usage_records_no_audit_event(api, ai, django_capture_on_commit_callbacks):
    before = AuditEvent.objects.count()
    with django_capture_on_commit_callbacks(execute=True):
        for key in ("a-1", "a-2"):
            assert api.post("/api/v1/events", llm_body(key, CHAT, when=DAY1)).status_code == 201
    # rating touched the wallet's balance, the API key's last use, the counters: none audited
    assert AuditEvent.objects.count() == before
    assert Customer.objects.filter(pk=ai.pk).exists()


def test_a_project_budget_change_is_recorded():
    """A project's spend limit is a setting finance changes (issue 16's budgets): its
    history is in the audit trail like a customer's."""
    from billing import projects

    customer = CustomerFactory()
    project = projects.create_project(customer=customer, key="team-a", spend_limit=Decimal(100))
    projects.update_project(project=project, spend_limit=Decimal("250.50"))
    insert, update = events_of(project)
    assert (insert.pgh_label, update.pgh_label) == ("insert", "update")
    assert update.pgh_diff == {"spend_limit": [Decimal(100), Decimal("250.50")]}
