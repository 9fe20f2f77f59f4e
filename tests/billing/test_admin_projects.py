"""Projects in the admin: created and changed through ``billing.projects`` (a negative
limit refused on the form), archived by an action, never deleted; the customer's page lists
its projects with their spend this period."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from billing import projects
from billing.models import Project
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("finance", "f@x.example", None))
    return client


def test_a_project_is_created_changed_archived_and_listed_on_its_customer(staff_client):
    customer = CustomerFactory(external_id="acme", funds="5")
    add = reverse("admin:billing_project_add")
    form = {"customer": customer.pk, "key": "team-a", "name": "Search", "spend_limit": "-1"}
    refused = staff_client.post(add, form)
    assert refused.status_code == 200 and not Project.objects.exists()
    response = staff_client.post(add, form | {"spend_limit": "12.50"})
    assert response.status_code == 302, response.content.decode()[:2000]
    project = Project.objects.get()
    assert (project.key, project.name, project.spend_limit) == ("team-a", "Search", D("12.5"))
    duplicate = staff_client.post(add, form | {"spend_limit": ""})
    assert duplicate.status_code == 200 and Project.objects.count() == 1

    change = reverse("admin:billing_project_change", args=[project.pk])
    assert "0.00 USD of 12.50 USD" in staff_client.get(change).content.decode()
    staff_client.post(change, {"name": "Search team", "spend_limit": ""})
    project.refresh_from_db()
    assert (project.name, project.spend_limit) == ("Search team", None)

    changelist = reverse("admin:billing_project_changelist")
    staff_client.post(changelist, {"action": "archive", "_selected_action": [project.pk]})
    project.refresh_from_db()
    assert project.status == "archived"
    assert (
        staff_client.get(reverse("admin:billing_project_delete", args=[project.pk])).status_code
        == 403
    )

    page = staff_client.get(reverse("admin:billing_customer_change", args=[customer.pk]))
    html = page.content.decode()
    assert "team-a" in html and "Search team" in html and "archived" in html


def test_the_list_shows_spend_this_period(staff_client):
    customer = CustomerFactory(external_id="acme")
    project = projects.create_project(customer=customer, key="team-a", spend_limit=D(10))
    start, _ = projects.budget_period(customer)
    projects.add_spend(project_id=project.pk, period_start=start, currency="USD", amount=D(4))
    html = staff_client.get(reverse("admin:billing_project_changelist")).content.decode()
    assert "4.00 USD of 10.00 USD" in html
