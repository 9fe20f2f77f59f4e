"""The reconciliation report in the admin: run now for a day or a range, the history with
checks passed and failed, the differences on a run's page, the provider usage upload, and
who may do what."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from invoicing.models import ReconciliationRun
from metering.models import Event
from tests.invoicing.recon_books import make_books, triggers_off
from tests.invoicing.test_provider_usage import (
    ANTHROPIC_USAGE,
    OPENAI_COSTS,
    OPENAI_USAGE,
    metered,
)

pytestmark = pytest.mark.django_db

RUN = reverse("admin:invoicing_reconciliationrun_run")
LIST = reverse("admin:invoicing_reconciliationrun_changelist")
UPLOAD = reverse("admin:invoicing_reconciliationrun_provider_usage")


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("finance", "f@x.test", None))
    return client


def test_run_now_finds_a_planted_difference_and_the_report_lists_it(staff_client):
    make_books()
    event = Event.objects.filter(amount__gt=0).order_by("id").first()
    with triggers_off() as cursor:
        cursor.execute("UPDATE metering_event SET amount = amount + 1 WHERE id = %s", [event.pk])
    response = staff_client.post(
        RUN, {"first_day": "2026-04-01", "last_day": "2026-05-01", "currency": "USD"}
    )
    run = ReconciliationRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse(
        "admin:invoicing_reconciliationrun_change", args=[run.pk]
    )
    assert run.triggered_by == "admin: finance" and run.scope == "USD"
    page = staff_client.get(response["Location"]).content.decode()
    assert "FAILED" in page
    assert f"transaction {event.ledger_transaction_id} usage:" in page
    assert "Σ events ≠ the transaction&#x27;s leg" in page
    listing = staff_client.get(LIST).content.decode()
    assert "2026-04-01 – 2026-05-01" in listing
    assert "3/5 passed" in listing and "✗ usage_ledger" in listing
    assert "Run now…" in listing


def test_a_range_ending_before_it_starts_is_refused(staff_client):
    response = staff_client.post(RUN, {"first_day": "2026-04-10", "last_day": "2026-04-01"})
    assert response.status_code == 200
    assert "The last day is before the first day." in response.content.decode()
    assert not ReconciliationRun.objects.exists()


def test_the_provider_upload_lists_the_gaps(staff_client):
    metered(
        "anthropic",
        "claude-sonnet-4-5",
        input_tokens=1500,
        cache_read_tokens=200,
        cache_write_tokens=1500,
        output_tokens=400,  # they say 500
    )
    upload = SimpleUploadedFile("usage.json", json.dumps(ANTHROPIC_USAGE).encode())
    response = staff_client.post(UPLOAD, {"provider": "anthropic", "usage_file": upload})
    page = response.content.decode()
    assert response.status_code == 200
    assert "1 day/model rows, 1 with gaps" in page
    assert "+100 tokens" in page
    bad = SimpleUploadedFile("usage.json", b'{"data": 1}')
    response = staff_client.post(UPLOAD, {"provider": "anthropic", "usage_file": bad})
    assert "usage.json: not an export" in response.content.decode()


def test_a_viewer_sees_the_report_but_may_not_run_it(client, django_user_model):
    viewer = django_user_model.objects.create_user("viewer", "v@x.test", None, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_reconciliationrun"))
    client.force_login(viewer)
    listing = client.get(LIST)
    assert listing.status_code == 200
    assert "Run now…" not in listing.content.decode()
    assert client.post(RUN, {"first_day": "2026-04-10"}).status_code == 403
    assert not ReconciliationRun.objects.exists()


def test_the_reports_amounts_read_as_money_with_the_exact_figure(staff_client):
    """Totals rounded to the minor unit with the exact figure on hover, and a difference
    exactly (a fraction of a cent is a difference): not the checks' raw decimals
    ("1244.567890123")."""
    make_books()
    event = Event.objects.filter(amount__gt=0).order_by("id").first()
    with triggers_off() as cursor:
        cursor.execute(
            "UPDATE metering_event SET amount = amount + 1234.567890123 WHERE id = %s",
            [event.pk],
        )
    response = staff_client.post(
        RUN, {"first_day": "2026-04-01", "last_day": "2026-05-01", "currency": "USD"}
    )
    page = staff_client.get(response["Location"]).content.decode()
    usage = page[page.index('id="check-usage_ledger"') :]
    usage = usage[: usage.index("</section>")]
    assert '<span class="money" title="1,244.567890123 USD (exact)">1,244.57 USD</span>' in usage
    assert "-1,234.567890123 USD" in usage  # actual − expected, exactly
    assert "1244.567890123" not in page


def test_the_provider_upload_shows_tokens_grouped_and_costs_as_money(staff_client):
    """Costs read as money, rounded to the cent with the exact figure on hover (our cost is
    a 12-place sum: it read "3.999999999999"), token counts grouped ("1,000,000")."""
    metered(
        "openai",
        "gpt-4o",
        input_tokens=600_000,  # + the cached: the whole prompt, as OpenAI counts it
        cache_read_tokens=400_000,
        output_tokens=200_000,
        cost=Decimal("3.999999999999"),
    )
    usage = SimpleUploadedFile("usage.json", json.dumps(OPENAI_USAGE).encode())
    costs = SimpleUploadedFile("costs.json", json.dumps(OPENAI_COSTS).encode())
    page = staff_client.post(
        UPLOAD, {"provider": "openai", "usage_file": usage, "cost_file": costs}
    ).content.decode()
    start = page.index('id="provider-usage-rows"')
    row = page[start : page.index("</table>", start)]
    row = row[row.index("<td>gpt-4o</td>") :]
    row = row[: row.index("</tr>")]
    assert "<td>1,000,000 / 1,000,000</td>" in row, row
    assert '<span class="money" title="4 USD (exact)">4.00 USD</span>' in row, row
    assert '<span class="money" title="3.999999999999 USD (exact)">4.00 USD</span>' in row, row
