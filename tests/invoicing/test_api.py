"""The invoices API (v1): the list with its filters and cursor, one invoice with its lines
and totals as decimal strings, its PDF, and the upcoming invoice — which must be the invoice
the close then makes for the same period.

The plan: 20.00 USD a month; one million tokens included, then 2 USD per million up to one
million more, then 1.50 USD per million; 8.25 % tax everywhere. 1,234,567 tokens make
20.00 + 0.469134 → 0.47 = 20.47 net, 1.688775 → 1.69 tax, 22.16 in all."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services as billing
from invoicing.models import Invoice, TaxRate
from tests.billing.conftest import (
    api,
    api_key,
    assert_error,
    iso,
    make_client,
    make_customer,
    make_key,
    read_api,
)
from tests.invoicing.conftest import (
    PERIOD_END,
    START,
    ChargeSpec,
    TierSpec,
    close,
    finalize,
    meter,
    plan,
    subscribe,
    use,
)

pytestmark = pytest.mark.django_db
D = Decimal
__all__ = ["api", "api_key", "make_customer", "make_key", "read_api"]  # fixtures, by name

MEDIA = "invoices/"


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def tokens():
    return meter(name="Output tokens", unit="tokens")


@pytest.fixture
def pro(tokens):
    TaxRate.objects.create(name="Sales tax", percentage=D("8.25"))
    return plan(
        ChargeSpec(
            meter=tokens,
            price_model="graduated",
            included_quantity=D(1_000_000),
            tiers=(
                TierSpec(up_to=D(1_000_000), unit_price=D("0.000002")),
                TierSpec(up_to=None, unit_price=D("0.0000015")),
            ),
        ),
        base_fee="20",
    )


def zero(places: int = 12) -> str:
    return "0." + "0" * places


def expected_lines(tokens: str, start, end) -> list[dict]:
    common = {"period_start": iso(start), "period_end": iso(end), "flat_fee": zero()}
    return [
        {
            "kind": "base_fee",
            "description": "Pro — base fee",
            "meter": None,
            "tier": None,
            "quantity": "1.000000000000",
            "unit_price": "20.000000000000",
            "amount": "20.000000000000",
            "amount_precise": "20." + "0" * 24,
            **common,
        },
        {
            "kind": "included",
            "description": "Output tokens: included (1,000,000 tokens per period)",
            "meter": tokens,
            "tier": None,
            "quantity": "1000000.000000000000",
            "unit_price": zero(),
            "amount": zero(),
            "amount_precise": zero(24),
            **common,
        },
        {
            "kind": "usage",
            "description": "Output tokens, tier 1",
            "meter": tokens,
            "tier": 1,
            "quantity": "234567.000000000000",
            "unit_price": "0.000002000000",
            "amount": "0.470000000000",  # 0.469134, half to even
            "amount_precise": "0.469134" + "0" * 18,
            **common,
        },
    ]


TOTALS = {
    "currency": "USD",
    "subtotal": "20.470000000000",
    "tax_name": "Sales tax",
    "tax_percentage": "8.2500",
    "tax": "1.690000000000",
    "total": "22.160000000000",
}


# --- one invoice -----------------------------------------------------------------------------


def test_a_draft_has_its_lines_and_totals_as_decimal_strings_and_no_number(api, pro, tokens):
    subscription = subscribe(pro)
    use(subscription, 1_234_567)
    invoice = close(subscription)

    response = api.get(f"/api/v1/invoices/{invoice.pk}")

    assert response.status_code == 200, response.json()
    assert response.json() == {
        "id": invoice.pk,
        "number": None,
        "customer": subscription.customer.external_id,
        "subscription": subscription.pk,
        "status": "draft",
        "kind": "period",
        "period_start": iso(START),
        "period_end": iso(PERIOD_END),
        "lines": expected_lines(tokens, START, PERIOD_END),
        **TOTALS,
        "balance_applied": zero(),
        "amount_due": "22.160000000000",
        "amount_paid": zero(),
        "amount_credited": zero(),
        "amount_remaining": zero(),  # a draft is owed nothing yet
        "commitment_unused": zero(),
        "finalized_at": None,
        "due_at": None,
        "paid_at": None,
        "pdf_url": f"/api/v1/invoices/{invoice.pk}/pdf",
    }


def test_a_finalized_invoice_has_its_number_status_and_what_is_owed(api, pro, tokens):
    subscription = subscribe(pro)
    use(subscription, 1_234_567)
    invoice = finalize(close(subscription))

    body = api.get(f"/api/v1/invoices/{invoice.pk}").json()

    assert (body["number"], body["status"]) == ("INV-000001", "open")
    assert body["lines"] == expected_lines(tokens, START, PERIOD_END)
    assert {key: body[key] for key in TOTALS} == TOTALS
    assert (body["amount_due"], body["amount_remaining"]) == ("22.160000000000",) * 2
    due = PERIOD_END + timedelta(days=14)
    assert (body["finalized_at"], body["due_at"]) == (iso(PERIOD_END), iso(due))


def test_an_unknown_invoice_is_not_found(api):
    assert_error(
        api.get("/api/v1/invoices/987654321"),
        404,
        "invoice_not_found",
        message="invoice 987654321 does not exist",
    )


# --- the list --------------------------------------------------------------------------------


@pytest.fixture
def history(pro):
    """Acme: April finalized (open), May a draft. Initech: April a draft."""
    acme, initech = subscribe(pro), subscribe(pro)
    april = finalize(close(acme))
    may = close(acme, as_of=START.replace(month=6))
    other = close(initech)
    return {"acme": acme, "initech": initech, "april": april, "may": may, "other": other}


def ids(response) -> list[int]:
    assert response.status_code == 200, response.json()
    return [invoice["id"] for invoice in response.json()["data"]]


def test_the_list_is_newest_first_and_filters_by_customer_and_status(read_api, history):
    acme = history["acme"].customer.external_id
    april, may, other = history["april"].pk, history["may"].pk, history["other"].pk

    assert ids(read_api.get("/api/v1/invoices")) == [other, may, april]
    assert ids(read_api.get("/api/v1/invoices", {"customer": acme})) == [may, april]
    assert ids(read_api.get("/api/v1/invoices", {"status": "draft"})) == [other, may]
    assert ids(read_api.get("/api/v1/invoices", {"customer": acme, "status": "open"})) == [april]
    assert ids(read_api.get("/api/v1/invoices", {"status": "paid"})) == []
    listed = read_api.get("/api/v1/invoices", {"customer": acme}).json()["data"][1]
    assert listed == read_api.get(f"/api/v1/invoices/{april}").json()


def test_the_list_pages_with_has_more_and_starting_after(api, history):
    april, may, other = history["april"].pk, history["may"].pk, history["other"].pk
    first = api.get("/api/v1/invoices", {"limit": 2})
    assert ids(first) == [other, may] and first.json()["has_more"] is True
    second = api.get("/api/v1/invoices", {"limit": 2, "starting_after": may})
    assert ids(second) == [april] and second.json()["has_more"] is False
    exact = api.get("/api/v1/invoices", {"limit": 3})
    assert ids(exact) == [other, may, april] and exact.json()["has_more"] is False
    acme = history["acme"].customer.external_id
    paged = api.get("/api/v1/invoices", {"customer": acme, "limit": 1, "starting_after": may})
    assert ids(paged) == [april] and paged.json()["has_more"] is False


def test_an_unknown_customer_is_not_found(api, history):
    assert_error(
        api.get("/api/v1/invoices", {"customer": "nobody"}),
        404,
        "customer_not_found",
        param="customer",
        message="no customer with external_id 'nobody'",
    )


@pytest.mark.parametrize("status", ["upcoming", "DRAFT", "", "open,paid"])
def test_an_unknown_status_is_refused(api, history, status):
    assert_error(
        api.get("/api/v1/invoices", {"status": status}),
        400,
        "invalid_parameter",
        param="status",
        message="status must be one of draft, open, past_due, paid, void",
    )


@pytest.mark.parametrize(
    ("query", "param"),
    [({"limit": 0}, "limit"), ({"starting_after": "x"}, "starting_after")],
    ids=["limit", "starting_after"],
)
def test_bad_page_parameters_are_refused(api, query, param):
    assert_error(api.get("/api/v1/invoices", query), 400, "invalid_parameter", param=param)


def test_a_key_is_required_and_any_read_key_suffices(make_key, history):
    invoice = history["april"].pk
    paths = [
        "/api/v1/invoices",
        f"/api/v1/invoices/{invoice}",
        f"/api/v1/invoices/{invoice}/pdf",
        f"/api/v1/customers/{history['acme'].customer.external_id}/upcoming-invoice",
    ]
    for path in paths:
        assert_error(make_client().get(path), 401, "authentication_required")
        assert_error(
            make_client(make_key(("ingest",))[1]).get(path),
            403,
            "insufficient_scope",
            message="this API key lacks the 'read' scope",
        )
        assert make_client(make_key(("read",))[1]).get(path).status_code == 200, path


# --- PDF ---------------------------------------------------------------------------------------


def pdf_bytes(response) -> bytes:
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    # (the test client closes the response itself: closing it again would close the database
    # connection, as the end of a real request does)
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_a_finalized_invoice_pdf_is_stored_once_and_served(api, pro, settings):
    subscription = subscribe(pro)
    use(subscription, 1_234_567)
    invoice = finalize(close(subscription))

    first = pdf_bytes(api.get(f"/api/v1/invoices/{invoice.pk}/pdf"))
    assert first.startswith(b"%PDF")
    invoice.refresh_from_db()
    assert invoice.pdf.name == f"{MEDIA}INV-000001.pdf"
    stored = (settings.MEDIA_ROOT / invoice.pdf.name).read_bytes()
    assert stored == first
    assert pdf_bytes(api.get(f"/api/v1/invoices/{invoice.pk}/pdf")) == first  # not re-rendered


def test_a_draft_pdf_renders_without_being_stored(api, pro, settings):
    invoice = close(subscribe(pro))
    assert pdf_bytes(api.get(f"/api/v1/invoices/{invoice.pk}/pdf")).startswith(b"%PDF")
    invoice.refresh_from_db()
    assert invoice.pdf.name == ""
    assert not (settings.MEDIA_ROOT / "invoices").exists()


def test_the_pdf_of_an_unknown_invoice_is_not_found(api):
    assert_error(api.get("/api/v1/invoices/987654321/pdf"), 404, "invoice_not_found")


# --- the upcoming invoice ----------------------------------------------------------------------


def test_the_upcoming_invoice_is_what_the_close_then_makes(api, pro, tokens):
    start = timezone.now().replace(microsecond=0) - timedelta(days=3)
    subscription = subscribe(pro, start=start)
    end = subscription.current_period_end
    assert subscription.current_period_start == start < timezone.now() < end
    for units in (1_000_000, 234_567):
        assert use(subscription, units, at_time=timezone.now() - timedelta(hours=1)).status == (
            "accepted"
        )
    external_id = subscription.customer.external_id

    response = api.get(f"/api/v1/customers/{external_id}/upcoming-invoice")

    assert response.status_code == 200, response.json()
    upcoming = response.json()
    assert upcoming == {
        "id": None,
        "number": None,
        "customer": external_id,
        "subscription": subscription.pk,
        "status": "upcoming",
        "kind": "period",
        "period_start": iso(start),
        "period_end": iso(end),
        "lines": expected_lines(tokens, start, end),
        **TOTALS,
        "balance_applied": zero(),
        "amount_due": "22.160000000000",
        "amount_paid": zero(),
        "amount_credited": zero(),
        "amount_remaining": "22.160000000000",
        "commitment_unused": zero(),
        "finalized_at": None,
        "due_at": None,
        "paid_at": None,
        "pdf_url": None,
        "accruing": [],  # no charge on its own cadence (tests/invoicing/test_charge_cadence.py)
    }
    assert Invoice.objects.count() == 0  # reading it made nothing

    invoice = close(subscription, as_of=end)
    closed = api.get(f"/api/v1/invoices/{invoice.pk}").json()
    assert closed["lines"] == upcoming["lines"]
    same = ("currency", "period_start", "period_end", *TOTALS, "amount_due", "subscription")
    assert {key: closed[key] for key in same} == {key: upcoming[key] for key in same}
    assert (invoice.subtotal, invoice.tax, invoice.total) == (D("20.47"), D("1.69"), D("22.16"))


def test_the_upcoming_invoice_in_a_trial_matches_the_close(api, pro):
    start = timezone.now().replace(microsecond=0) - timedelta(days=3)
    subscription = subscribe(pro, start=start, trial_days=14)
    assert subscription.status == "trialing"
    use(subscription, 1_500_000, at_time=timezone.now() - timedelta(hours=1))
    external_id = subscription.customer.external_id

    upcoming = api.get(f"/api/v1/customers/{external_id}/upcoming-invoice").json()
    invoice = close(subscription, as_of=subscription.current_period_end)
    closed = api.get(f"/api/v1/invoices/{invoice.pk}").json()

    assert upcoming["period_end"] == iso(start + timedelta(days=14))
    assert closed["lines"] == upcoming["lines"]
    assert (closed["subtotal"], closed["total"]) == (upcoming["subtotal"], upcoming["total"])
    assert all(line["kind"] != "base_fee" for line in upcoming["lines"])  # no fee in a trial


def test_no_live_subscription_has_no_upcoming_invoice(api, pro, make_customer):
    lonely = make_customer()
    assert_error(
        api.get(f"/api/v1/customers/{lonely.external_id}/upcoming-invoice"),
        422,
        "no_active_subscription",
        param="customer",
        type="invalid_request_error",
        message=f"customer {lonely.external_id} has no live subscription",
    )
    subscription = subscribe(pro, start=timezone.now() - timedelta(days=3))
    billing.cancel_subscription(subscription_id=subscription.pk)
    external_id = subscription.customer.external_id
    assert_error(
        api.get(f"/api/v1/customers/{external_id}/upcoming-invoice"),
        422,
        "no_active_subscription",
        param="customer",
        type="invalid_request_error",
    )
    assert Invoice.objects.count() == 0


def test_the_upcoming_invoice_of_an_unknown_customer_is_not_found(api):
    assert_error(api.get("/api/v1/customers/nobody/upcoming-invoice"), 404, "customer_not_found")
