"""Invoicing in the finance admin: the invoice pages, the offline-mode notice, and every
action as one service call — close due periods, finalize, void, credit note, record a
payment — with its failures shown as messages on the page, never as a 500.

The plan: 20.00 USD a month and 0.001 USD per API call; 1,500 calls in April make
20.00 + 1.50 = 21.50, with 10 % tax 2.15, 23.65 in all. Customers are postpaid with no
funds, so a finalized invoice is owed in full."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils.html import escape
from django.utils.text import capfirst

from invoicing import errors
from invoicing import services as invoicing
from invoicing.models import CreditNote, Invoice, InvoiceStatus, Payment, TaxRate
from tests.invoicing.conftest import (
    PERIOD_END,
    START,
    ChargeSpec,
    account_posted,
    at,
    close,
    finalize,
    meter,
    plan,
    receivable,
    subscribe,
    use,
    wallet_posted,
)

pytestmark = pytest.mark.django_db
D = Decimal
OFFLINE = "Payments run in OFFLINE MODE"
NO_PROVIDER = "No payment provider: no STRIPE_SECRET_KEY is set"


@pytest.fixture(autouse=True)
def _offline_with_media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True  # the opt-in: these tests run the demo's offline mode
    settings.OFFLINE_AUTO_PAY = True


@pytest.fixture
def staff_client(client, django_user_model):
    # No password: force_login needs none, and hashing one costs a second per test.
    client.force_login(django_user_model.objects.create_superuser("finance", "f@x.test", None))
    return client


@pytest.fixture
def pro():
    TaxRate.objects.create(name="VAT", percentage=D(10))
    return plan(
        ChargeSpec(meter=meter(name="API calls", unit="calls"), unit_price=D("0.001")),
        base_fee="20",
    )


def drafted(the_plan, **kw) -> Invoice:
    subscription = subscribe(the_plan, **kw)
    use(subscription, 1500)
    return close(subscription)


def url(name: str, *args) -> str:
    return reverse(f"admin:invoicing_invoice_{name}", args=args)


def submit(client, path: str, data: dict):
    """POST a form and follow its redirect, as a browser does."""
    return client.post(path, data, follow=True)


def redirected_to(response, target: str) -> bool:
    return response.status_code == 200 and response.redirect_chain == [(target, 302)]


def messages(response) -> list[str]:
    """The messages the page shows (each one checked to be on it)."""
    texts = [str(m) for m in get_messages(response.wsgi_request)]
    for text in texts:
        assert escape(capfirst(text)) in response.content.decode(), text
    return texts


def reload(invoice: Invoice) -> Invoice:
    return Invoice.objects.get(pk=invoice.pk)


# --- the list and the invoice page -------------------------------------------------------------


@pytest.mark.parametrize(
    ("auto_pay", "tail"),
    [
        (
            True,
            "account at once (OFFLINE_AUTO_PAY; those of customers who pay by invoice, "
            "send_invoice, wait).",
        ),
        (False, "account when staff record them."),
    ],
    ids=["auto-pay", "by-hand"],
)
def test_without_a_stripe_key_every_invoice_page_says_payments_are_offline(
    staff_client, pro, settings, auto_pay, tail
):
    settings.OFFLINE_AUTO_PAY = auto_pay
    invoice = drafted(pro)
    notice = (
        "Payments run in OFFLINE MODE (PAYMENTS_OFFLINE is on and no STRIPE_SECRET_KEY is "
        "set): nothing is charged to a card and portal top-ups are credited without payment. "
        f"Finalized invoices are recorded as paid through the @OfflinePayments clearing {tail}"
    )
    for page in (url("changelist"), url("change", invoice.pk)):
        response = staff_client.get(page)
        assert response.status_code == 200
        assert f'<li class="warning">{notice}</li>' in response.content.decode()


def test_with_a_stripe_key_there_is_no_offline_notice(staff_client, pro, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_123"
    invoice = drafted(pro)
    for page in (url("changelist"), url("change", invoice.pk)):
        response = staff_client.get(page)
        assert response.status_code == 200
        assert OFFLINE not in response.content.decode()
        assert NO_PROVIDER not in response.content.decode()


def test_without_a_provider_every_invoice_page_says_nothing_pays_itself(
    staff_client, pro, settings
):
    settings.PAYMENTS_OFFLINE = False
    invoice = drafted(pro)
    for page in (url("changelist"), url("change", invoice.pk)):
        content = staff_client.get(page).content.decode()
        assert OFFLINE not in content
        assert NO_PROVIDER in content and "Nothing pays itself" in content


def test_the_list_shows_numbers_totals_and_filters_by_status(staff_client, pro):
    draft = drafted(pro)
    final = finalize(drafted(pro))
    page = staff_client.get(url("changelist"))
    text = page.content.decode()
    assert f"Draft #{draft.pk}" in text and "INV-000001" in text
    assert "23.65 USD" in text
    assert url("close") in text  # "Close due periods…"
    assert {i.pk for i in page.context["cl"].result_list} == {draft.pk, final.pk}
    for status, expected in (("draft", draft), ("open", final)):
        filtered = staff_client.get(url("changelist"), {"status__exact": status})
        assert [i.pk for i in filtered.context["cl"].result_list] == [expected.pk]
    paid = staff_client.get(url("changelist"), {"status__exact": "paid"})
    assert list(paid.context["cl"].result_list) == []


def line_rows(html: str) -> list[list[str]]:
    """The cells of the lines table on an invoice page, row by row (position first)."""
    table = html[html.index('id="lines-group"') : html.index('id="credit_notes-group"')]
    rows = table.split('<tr class="form-row')[1:]
    return [re.findall(r'<td class="field-\w+">\s*<p>(.*?)</p>', row) for row in rows]


def test_the_invoice_page_shows_its_lines_exactly(staff_client, pro):
    invoice = drafted(pro)
    html = staff_client.get(url("change", invoice.pk)).content.decode()
    assert line_rows(html) == [
        ["1", "Base fee", "Pro — base fee", "1", "20", "20.00 USD", "20." + "0" * 24],
        ["2", "Usage", "API calls", "1,500", "0.001", "1.50 USD", "1.5" + "0" * 23],
    ]


def paid_by_wire(invoice):
    invoicing.record_payment(
        invoice_id=invoice.pk, amount=D("23.65"), provider="offline", provider_payment_id="w1"
    )


def credit(invoice):
    invoicing.create_credit_note(invoice_id=invoice.pk, amount=D(5), reason="x", reference="r1")


def void(invoice):
    invoicing.void_invoice(invoice_id=invoice.pk, reason="x")


PREPAID = {"billing_mode": "prepaid", "funds": "100"}  # finalizing pays from the balance


@pytest.mark.parametrize(
    ("customer", "make", "status", "links"),
    [
        ({}, None, "draft", {"Preview PDF"}),
        ({}, str, "open", {"Download PDF", "Credit note…", "Record payment…", "Void…"}),
        ({}, paid_by_wire, "paid", {"Download PDF", "Credit note…"}),
        ({}, void, "void", {"Download PDF"}),
        (PREPAID, str, "paid", {"Download PDF", "Credit note…", "Void…"}),
        # its credit note went to the balance: the service refuses a void now
        (PREPAID, credit, "paid", {"Download PDF", "Credit note…"}),
    ],
    ids=["draft", "open", "paid", "void", "paid-from-balance", "credited-to-balance"],
)
def test_the_invoice_page_offers_the_actions_its_status_allows(
    staff_client, pro, customer, make, status, links
):
    invoice = drafted(pro, **customer)
    if make is not None:
        make(finalize(invoice))
    assert reload(invoice).status == status
    text = staff_client.get(url("change", invoice.pk)).content.decode()
    offered = {
        label
        for label, name in (
            ("Preview PDF", "pdf"),
            ("Download PDF", "pdf"),
            ("Credit note…", "credit_note"),
            ("Record payment…", "record_payment"),
            ("Void…", "void"),
        )
        if f'<a href="{url(name, invoice.pk)}">{label}</a>' in text
    }
    assert offered == links


# --- PDF ---------------------------------------------------------------------------------------


def test_the_pdf_link_downloads_the_stored_pdf_of_a_final_invoice(staff_client, pro, settings):
    invoice = finalize(drafted(pro))
    assert url("pdf", invoice.pk) in staff_client.get(url("changelist")).content.decode()
    response = staff_client.get(url("pdf", invoice.pk))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == 'inline; filename="INV-000001.pdf"'
    data = b"".join(response.streaming_content)
    assert data.startswith(b"%PDF")
    assert reload(invoice).pdf.name == "invoices/INV-000001.pdf"
    assert (settings.MEDIA_ROOT / "invoices" / "INV-000001.pdf").read_bytes() == data


def test_a_draft_pdf_is_a_preview_and_not_stored(staff_client, pro, settings):
    invoice = drafted(pro)
    response = staff_client.get(url("pdf", invoice.pk))
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'inline; filename="draft-{invoice.pk}.pdf"'
    assert response.content.startswith(b"%PDF")
    assert reload(invoice).pdf.name == ""
    assert not (settings.MEDIA_ROOT / "invoices").exists()


# --- close due periods -------------------------------------------------------------------------


def test_close_due_periods_closes_as_of_the_given_time_and_finalizes_when_asked(staff_client, pro):
    april = subscribe(pro)  # its period ends on 1 May
    mid = subscribe(pro, start=at(2026, 4, 15))  # on 15 May
    use(april, 1500)
    assert staff_client.get(url("close")).status_code == 200

    first = submit(staff_client, url("close"), {"as_of": "2026-05-01 00:00:00"})
    assert redirected_to(first, url("changelist"))
    assert messages(first) == ["1 period(s) closed into draft invoices."]
    invoice = Invoice.objects.get()
    assert (invoice.subscription_id, invoice.status) == (april.pk, InvoiceStatus.DRAFT)
    assert (invoice.period_start, invoice.total) == (START, D("23.65"))
    april.refresh_from_db()
    assert april.current_period_start == PERIOD_END

    again = submit(staff_client, url("close"), {"as_of": "2026-05-01 00:00:00"})
    assert messages(again) == ["0 period(s) closed into draft invoices."]
    assert Invoice.objects.count() == 1

    later = submit(staff_client, url("close"), {"as_of": "2026-05-16 00:00:00", "finalize": "on"})
    assert messages(later) == ["1 period(s) closed into draft invoices; 2 invoice(s) finalized."]
    invoices = Invoice.objects.order_by("subscription_id")
    assert [(i.subscription_id, i.status) for i in invoices] == [
        (april.pk, InvoiceStatus.OPEN),
        (mid.pk, InvoiceStatus.OPEN),
    ]
    assert {i.finalized_at for i in invoices} == {at(2026, 5, 16)}
    assert receivable(april) == D("23.65")


def test_close_with_a_bad_time_shows_the_form_again(staff_client, pro):
    subscribe(pro)
    response = submit(staff_client, url("close"), {"as_of": "the first of May"})
    assert response.status_code == 200 and not response.redirect_chain
    assert "as_of" in response.context["form"].errors
    assert Invoice.objects.count() == 0


# --- finalize ----------------------------------------------------------------------------------


def finalize_action(staff_client, invoices):
    return submit(
        staff_client,
        url("changelist"),
        {"action": "finalize_action", "_selected_action": [i.pk for i in invoices]},
    )


def test_the_finalize_action_finalizes_the_selected_drafts_only(staff_client, pro):
    already = finalize(drafted(pro))
    drafts = [drafted(pro), drafted(pro)]
    response = finalize_action(staff_client, [already, *drafts])
    assert redirected_to(response, url("changelist"))
    assert messages(response) == ["2 invoice(s) finalized."]
    finalized = [reload(i) for i in drafts]
    assert {i.status for i in finalized} == {InvoiceStatus.OPEN}
    assert {i.display_number for i in finalized} == {"INV-000002", "INV-000003"}
    assert reload(already).display_number == "INV-000001"
    for invoice in finalized:
        assert receivable(invoice.subscription) == D("23.65")


def test_a_finalize_that_fails_is_reported_and_the_others_go_on(staff_client, pro, monkeypatch):
    failing, fine = drafted(pro), drafted(pro)
    real = invoicing.finalize_invoice

    def finalize_invoice(*, invoice_id, **kw):
        if invoice_id == failing.pk:
            raise errors.InvoiceNotDraft("it changed under us")
        return real(invoice_id=invoice_id, **kw)

    monkeypatch.setattr(invoicing, "finalize_invoice", finalize_invoice)
    response = finalize_action(staff_client, [failing, fine])
    assert redirected_to(response, url("changelist"))
    assert messages(response) == [
        f"Draft {failing.pk}: it changed under us (invoice_not_draft)",
        "1 invoice(s) finalized.",
    ]
    assert (reload(failing).status, reload(fine).status) == ("draft", "open")


# --- void --------------------------------------------------------------------------------------


def test_void_needs_a_reason_then_takes_the_invoice_back(staff_client, pro):
    invoice = finalize(drafted(pro))
    subscription = invoice.subscription
    assert receivable(subscription) == D("23.65")
    page = staff_client.get(url("void", invoice.pk))
    assert page.status_code == 200 and "23.65 USD" in page.content.decode()

    blank = submit(staff_client, url("void", invoice.pk), {"reason": "  "})
    assert blank.status_code == 200 and not blank.redirect_chain
    assert "reason" in blank.context["form"].errors
    assert reload(invoice).status == InvoiceStatus.OPEN

    done = submit(staff_client, url("void", invoice.pk), {"reason": "Billed in error"})
    assert redirected_to(done, url("change", invoice.pk))
    assert messages(done) == ["Invoice INV-000001 voided."]
    voided = reload(invoice)
    assert (voided.status, voided.void_reason) == (InvoiceStatus.VOID, "Billed in error")
    assert receivable(subscription) == 0
    assert (account_posted("@Revenue"), account_posted("@TaxPayable")) == (0, 0)
    assert wallet_posted(subscription) == 0
    entry = LogEntry.objects.get(object_id=str(invoice.pk))
    assert entry.get_change_message() == "Voided: Billed in error"


HAS_PAYMENTS = (
    "invoice INV-000001 has payments or credit notes; issue a credit note instead "
    "(invoice_has_payments)"
)


@pytest.mark.parametrize(
    ("customer", "make", "expected"),
    [
        ({}, None, "a draft is not voided: it has not been issued (invoice_not_final)"),
        ({}, paid_by_wire, HAS_PAYMENTS),
        (PREPAID, credit, HAS_PAYMENTS),  # credited to the balance only
    ],
    ids=["draft", "paid", "credited-to-balance"],
)
def test_a_void_the_service_refuses_is_shown_as_an_error(
    staff_client, pro, customer, make, expected
):
    invoice = drafted(pro, **customer)
    if make is not None:
        make(finalize(invoice))
    before = reload(invoice).status
    response = submit(staff_client, url("void", invoice.pk), {"reason": "Billed in error"})
    assert response.status_code == 200
    assert response.redirect_chain == [] and messages(response) == [expected]
    assert reload(invoice).status == before


# --- credit notes ------------------------------------------------------------------------------


def credit_form(staff_client, invoice) -> dict:
    page = staff_client.get(url("credit_note", invoice.pk))
    assert page.status_code == 200
    return {"reference": page.context["form"]["reference"].value()}


def test_a_credit_note_reduces_what_is_owed_and_a_resubmit_issues_no_second(staff_client, pro):
    invoice = finalize(drafted(pro))
    subscription = invoice.subscription
    form = {**credit_form(staff_client, invoice), "amount": "5.00", "reason": "Goodwill"}
    assert len(form["reference"]) == 32

    first = submit(staff_client, url("credit_note", invoice.pk), form)
    assert redirected_to(first, url("change", invoice.pk))
    assert messages(first) == ["Credit note CN-000001 issued: 5.50 USD."]
    again = submit(staff_client, url("credit_note", invoice.pk), form)
    assert redirected_to(again, url("change", invoice.pk))
    assert messages(again) == ["Credit note CN-000001 issued: 5.50 USD."]  # the same note

    note = CreditNote.objects.get()
    assert (note.reference, note.amount, note.tax, note.total) == (
        f"admin:{form['reference']}",
        D(5),
        D("0.50"),
        D("5.50"),
    )
    assert (note.against_receivable, note.to_balance) == (D("5.50"), D(0))
    assert note.created_by.username == "finance"
    assert receivable(subscription) == D("18.15")  # 23.65 − 5.50
    assert account_posted("@TaxPayable") == D("1.65")  # 2.15 − 0.50
    assert account_posted("@Revenue") == D("16.50")  # 21.50 − 5.00
    invoice = reload(invoice)
    assert (invoice.amount_credited, invoice.amount_remaining) == (D("5.50"), D("18.15"))
    assert invoice.status == InvoiceStatus.OPEN


def test_a_credit_note_on_a_paid_invoice_goes_to_the_balance(staff_client, pro):
    invoice = finalize(drafted(pro))
    paid_by_wire(invoice)
    wallet_before = wallet_posted(invoice.subscription)
    form = {**credit_form(staff_client, invoice), "amount": "10", "reason": "Outage"}
    assert redirected_to(
        submit(staff_client, url("credit_note", invoice.pk), form), url("change", invoice.pk)
    )
    note = CreditNote.objects.get()
    assert (note.against_receivable, note.to_balance) == (D(0), D(11))
    assert wallet_posted(invoice.subscription) == wallet_before + D(11)
    assert receivable(invoice.subscription) == 0


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        ("5.005", "amount must be positive, in whole minor units of USD"),
        ("21.51", "at most 21.5"),  # the subtotal net of tax
    ],
    ids=["sub-cent", "over-subtotal"],
)
def test_a_credit_note_amount_the_service_refuses_is_shown_on_the_form(
    staff_client, pro, amount, error
):
    invoice = finalize(drafted(pro))
    form = {**credit_form(staff_client, invoice), "amount": amount, "reason": "Goodwill"}
    response = submit(staff_client, url("credit_note", invoice.pk), form)
    assert response.status_code == 200 and not response.redirect_chain
    assert any(error in e for e in response.context["form"].errors["amount"])
    assert CreditNote.objects.count() == 0
    assert receivable(invoice.subscription) == D("23.65")


def test_credit_note_refusals_are_shown_as_errors(staff_client, pro):
    draft = drafted(pro)
    form = {**credit_form(staff_client, draft), "amount": "5", "reason": "Goodwill"}
    response = submit(staff_client, url("credit_note", draft.pk), form)
    assert response.status_code == 200 and not response.redirect_chain
    assert messages(response) == [f"invoice Draft {draft.pk} is draft (invoice_not_final)"]

    invoice = finalize(drafted(pro))
    form = {**credit_form(staff_client, invoice), "amount": "5", "reason": "Goodwill"}
    assert redirected_to(
        submit(staff_client, url("credit_note", invoice.pk), form), url("change", invoice.pk)
    )
    reused = submit(staff_client, url("credit_note", invoice.pk), {**form, "amount": "6"})
    assert reused.status_code == 200 and not reused.redirect_chain
    assert messages(reused) == [
        f"reference 'admin:{form['reference']}' made another credit note (reference_reused)"
    ]
    assert CreditNote.objects.count() == 1


# --- record a payment --------------------------------------------------------------------------


def test_recording_a_payment_pays_the_invoice_once(staff_client, pro):
    invoice = finalize(drafted(pro))
    page = staff_client.get(url("record_payment", invoice.pk))
    assert page.status_code == 200 and "23.65 USD" in page.content.decode()

    done = submit(staff_client, url("record_payment", invoice.pk), {"reference": "WIRE-4711"})
    assert redirected_to(done, url("change", invoice.pk))
    assert messages(done) == ["Payment of 23.65 recorded."]
    again = submit(staff_client, url("record_payment", invoice.pk), {"reference": "WIRE-4711"})
    assert redirected_to(again, url("change", invoice.pk))

    payment = Payment.objects.get()
    assert (payment.provider, payment.provider_payment_id, payment.amount) == (
        "offline",
        "WIRE-4711",
        D("23.65"),
    )
    paid = reload(invoice)
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", D("23.65"), 0)
    assert paid.paid_at is not None
    assert receivable(invoice.subscription) == 0
    assert account_posted("@OfflinePayments") == D("23.65")


@pytest.mark.parametrize("state", ["draft", "paid"])
def test_a_payment_the_service_refuses_is_shown_as_an_error(staff_client, pro, state):
    invoice = drafted(pro)
    if state == "paid":
        paid_by_wire(finalize(invoice))
    response = submit(staff_client, url("record_payment", invoice.pk), {"reference": "WIRE-9"})
    assert response.status_code == 200 and not response.redirect_chain
    expected = {
        "draft": f"invoice Draft {invoice.pk} is draft; it cannot be paid (invoice_not_final)",
        "paid": "invoice INV-000001 owes nothing (nothing_owed)",
    }[state]
    assert messages(response) == [expected]
    assert not Payment.objects.filter(provider_payment_id="WIRE-9").exists()


# --- permissions -------------------------------------------------------------------------------


@pytest.fixture
def clerk_client(client, django_user_model):
    """Staff, without any invoicing permission."""
    client.force_login(django_user_model.objects.create_user("clerk", is_staff=True))
    return client


def action_pages(invoice) -> list[tuple[str, dict]]:
    return [
        (url("close"), {"as_of": "2026-06-01 00:00:00", "finalize": "on"}),
        (url("void", invoice.pk), {"reason": "no"}),
        (url("credit_note", invoice.pk), {"amount": "5", "reason": "no", "reference": "r"}),
        (url("record_payment", invoice.pk), {"reference": "WIRE-1"}),
    ]


def test_staff_without_invoicing_permissions_may_not_act(clerk_client, pro):
    invoice = finalize(drafted(pro))
    for page, form in action_pages(invoice):
        assert clerk_client.get(page).status_code == 403, page
        assert clerk_client.post(page, form).status_code == 403, page
    assert clerk_client.get(url("changelist")).status_code == 403
    invoice = reload(invoice)
    assert (invoice.status, invoice.amount_paid, invoice.amount_credited) == ("open", 0, 0)
    assert Invoice.objects.count() == 1
    assert not CreditNote.objects.exists() and not Payment.objects.exists()


def test_staff_who_may_only_view_invoices_may_not_act(clerk_client, pro, django_user_model):
    clerk = django_user_model.objects.get(username="clerk")
    clerk.user_permissions.add(Permission.objects.get(codename="view_invoice"))
    invoice = finalize(drafted(pro))
    assert clerk_client.get(url("change", invoice.pk)).status_code == 200
    assert clerk_client.get(url("pdf", invoice.pk)).status_code == 200
    for page, form in action_pages(invoice):
        assert clerk_client.post(page, form).status_code == 403, page
    response = finalize_action(clerk_client, [drafted(pro)])
    assert Invoice.objects.filter(status="draft").count() == 1, response.status_code


def test_staff_without_invoicing_permissions_may_not_read_invoice_pdfs(clerk_client, pro):
    invoice = finalize(drafted(pro))
    assert clerk_client.get(url("pdf", invoice.pk)).status_code == 403
    assert reload(invoice).pdf.name == ""
