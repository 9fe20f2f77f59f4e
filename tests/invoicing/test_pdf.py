"""invoicing.pdf and invoicing.emails: the invoice PDF shows the invoice's own figures exactly
as presented, is stored once, and is e-mailed once with the PDF attached.

The invoice is made through the services: a customer on "Pro" (49.00 USD a month, one million
input tokens included, then 2.50 USD per million; output tokens 10.00 USD per million) since
1 April 2026, LLM usage rated on 10 April, the period closed and finalized on 1 May, with
8.25 % sales tax."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.core import mail
from pypdf import PdfReader

from billing import services as billing
from billing.models import BillingMode
from billing.services import ChargeSpec
from invoicing import errors
from invoicing import services as invoicing
from invoicing.emails import send_invoice_email
from invoicing.models import Invoice, InvoiceStatus, TaxRate
from invoicing.pdf import (
    css_string,
    format_money,
    format_period,
    format_quantity,
    format_unit_price,
    render_invoice_pdf,
    store_invoice_pdf,
)
from metering import rating
from tests.factories import CustomerFactory, MeterFactory, PlanFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

D = Decimal
START = datetime(2026, 4, 1, tzinfo=UTC)
RATED_AT = datetime(2026, 4, 10, 9, tzinfo=UTC)
CLOSED_AT = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _media_mail_and_catalog(settings, tmp_path, model_prices):
    settings.MEDIA_ROOT = tmp_path
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.DEFAULT_FROM_EMAIL = "billing@demo.example"
    settings.BILLING_COMPANY = {
        "name": "Demo AI Inc.",
        "address": "1 Market Street, San Francisco, CA 94105",
        "email": "billing@demo.example",
        "tax_id": "US-12-3456789",
    }


def pro_plan():
    for code, prop in (
        ("input-tokens-pdf", "llm.input_tokens"),
        ("output-tokens-pdf", "llm.output_tokens"),
    ):
        MeterFactory(
            code=code, name=code.split("-")[0].title() + " tokens", property=prop, unit="tokens"
        )
    return PlanFactory(
        code="pro-pdf",
        name="Pro",
        base_fee="49.00",
        charges=(
            ChargeSpec(
                meter="input-tokens-pdf",
                unit_price=D("0.0000025"),
                included_quantity=D(1_000_000),
            ),
            ChargeSpec(meter="output-tokens-pdf", unit_price=D("0.00001")),
        ),
    )


def customer_on_pro(external_id: str = "acme-pdf", email: str = "ap@acme.example"):
    customer = CustomerFactory(
        external_id=external_id,
        email=email,
        billing_mode=BillingMode.POSTPAID,
        country="US",
        state="IL",
        city="Springfield",
        postal_code="62701",
        address_line1="1 Main St",
        tax_id="US-98-7654321",
    )
    subscription = SubscriptionFactory(
        customer=customer, plan=pro_plan(), start=START, trial_days=0, now=START
    )
    return customer, subscription


def use_tokens(external_id: str, prompt: int, completion: int, key: str) -> None:
    [outcome] = rating.ingest_events(
        [
            rating.EventIn(
                idempotency_key=key,
                customer=external_id,
                event_name="llm.completion",
                timestamp=RATED_AT,
                properties={
                    "model": "gpt-4o",
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
                },
            )
        ],
        now=RATED_AT,
    )
    assert outcome.status == "accepted", outcome.error


def draft_invoice(external_id: str = "acme-pdf", email: str = "ap@acme.example") -> Invoice:
    TaxRate.objects.create(name="Sales tax", percentage=D("8.25"), country="US")
    customer, subscription = customer_on_pro(external_id, email)
    use_tokens(external_id, 9_000_000, 1_000_000, "r1")
    use_tokens(external_id, 3_345_678, 234_567, "r2")
    result = invoicing.close_period(subscription_id=subscription.pk, as_of=CLOSED_AT)
    assert result is not None and result.created
    return result.invoice


def final_invoice(**kw) -> Invoice:
    return invoicing.finalize_invoice(invoice_id=draft_invoice(**kw).pk, now=CLOSED_AT)


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def flat(text: str) -> str:
    """The text with line breaks and runs of spaces collapsed (extraction wraps lines)."""
    return " ".join(text.split())


# --- formatting ------------------------------------------------------------------------------


def test_money_has_separators_and_exactly_the_minor_unit_places():
    assert format_money(D("1234.5"), "USD") == "1,234.50 USD"
    assert format_money(D("1234567.890000000000"), "EUR") == "1,234,567.89 EUR"
    assert format_money(D("1500"), "JPY") == "1,500 JPY"
    assert format_money(D("1.250"), "KWD") == "1.250 KWD"
    assert format_money(D("-12.3"), "USD") == "-12.30 USD"
    assert format_money(D("-0.000"), "USD") == "0.00 USD"


def test_quantities_lose_trailing_zeros_and_tiny_unit_prices_read_per_million():
    assert format_quantity(D("12345678.000000000000")) == "12,345,678"
    assert format_quantity(D("1E+7")) == "10,000,000"
    assert format_quantity(D("2.500")) == "2.5"
    assert format_unit_price(D("0.0000025"), "USD", "tokens") == "2.50 USD / 1M tokens"
    assert format_unit_price(D("0.00000015"), "USD", "tokens") == "0.15 USD / 1M tokens"
    assert format_unit_price(D("0.002"), "USD") == "0.002 USD"
    assert format_unit_price(D("49.000000000000"), "USD") == "49.00 USD"
    assert format_unit_price(D("1250"), "USD") == "1,250.00 USD"


def test_a_period_reads_as_the_days_it_covers():
    assert format_period(START, CLOSED_AT) == "1 April 2026 – 30 April 2026"
    assert (
        format_period(START, datetime(2026, 4, 1, 15, tzinfo=UTC)) == "1 April 2026 – 1 April 2026"
    )


def test_the_footer_string_cannot_break_out_of_its_css():
    assert css_string('A "B" </style>') == '"A \\22 B\\22  \\3c \\2f style\\3e "'


# --- the document ----------------------------------------------------------------------------


def test_a_finalized_invoice_shows_its_figures_exactly_as_presented():
    invoice = final_invoice()
    assert invoice.status == InvoiceStatus.OPEN
    data = render_invoice_pdf(invoice)
    assert data.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    assert reader.pages[0].mediabox.width == pytest.approx(595.28, abs=0.5)  # A4, in points
    text = flat(pdf_text(data))

    # input 12,345,678 tokens: 1,000,000 included, 11,345,678 × 2.50/M = 28.364195 → 28.36
    # output 1,234,567 tokens × 10.00/M = 12.34567 → 12.35
    lines = [(line.description, line.quantity, line.amount) for line in invoice.lines.all()]
    assert lines == [
        ("Pro — base fee", D(1), D("49.00")),
        ("Input tokens: included (1,000,000 tokens per period)", D(1_000_000), D(0)),
        ("Input tokens, beyond the included", D(11_345_678), D("28.36")),
        ("Output tokens", D(1_234_567), D("12.35")),
    ]
    # 89.71 × 8.25 % = 7.401075 → 7.40
    assert (invoice.subtotal, invoice.tax, invoice.total) == (D("89.71"), D("7.40"), D("97.11"))

    assert invoice.display_number in text
    assert f"Invoice number {invoice.display_number}" in text
    for expected in [
        "Demo AI Inc.",
        "1 Market Street, San Francisco, CA 94105",
        "Tax ID: US-12-3456789",
        "BILL TO Acme Robotics",
        "1 Main St",
        "62701 Springfield, IL",
        "ap@acme.example",
        "Tax ID: US-98-7654321",
        "Issue date 1 May 2026",
        "Due date 15 May 2026",
        "Billing period 1 April 2026 – 30 April 2026",
        "Pro — base fee 1 49.00 USD 49.00 USD",
        "Input tokens: included (1,000,000 tokens per period) 1,000,000 tokens Included 0.00 USD",
        "Input tokens, beyond the included 11,345,678 tokens 2.50 USD / 1M tokens 28.36 USD",
        "Output tokens 1,234,567 tokens 10.00 USD / 1M tokens 12.35 USD",
        "Subtotal 89.71 USD",
        "Sales tax (8.25 %) 7.40 USD",
        "Total 97.11 USD",
        "Amount due 97.11 USD",
    ]:
        assert expected in text, expected
    for absent in ("Paid from balance", "Payments", "Credits", "DRAFT", "PAID", "VOID"):
        assert absent not in text


def test_a_draft_renders_watermarked_without_a_number():
    invoice = draft_invoice()
    text = flat(pdf_text(render_invoice_pdf(invoice)))
    assert "DRAFT" in text
    assert "Draft — not a tax document" in text
    assert "Invoice number" not in text and "INV-" not in text
    assert "Total 97.11 USD" in text


def test_an_invoice_paid_from_the_balance_is_stamped_paid():
    TaxRate.objects.create(name="Sales tax", percentage=D("8.25"), country="US")
    customer, subscription = customer_on_pro()
    billing.top_up(customer=customer, amount=D("100"), reference="fund-pdf")
    draft = invoicing.close_period(subscription_id=subscription.pk, as_of=CLOSED_AT).invoice
    invoice = invoicing.finalize_invoice(invoice_id=draft.pk, now=CLOSED_AT)
    assert (invoice.status, invoice.total, invoice.balance_applied) == (
        "paid",
        D("53.04"),
        D("53.04"),
    )
    text = flat(pdf_text(render_invoice_pdf(invoice)))
    assert "PAID" in text
    assert "Paid from balance -53.04 USD" in text
    assert "Amount due 0.00 USD" in text


# --- storing ---------------------------------------------------------------------------------


def test_the_pdf_is_stored_once(settings):
    invoice = final_invoice()
    stored = store_invoice_pdf(invoice_id=invoice.pk)
    name = f"invoices/{invoice.display_number}.pdf"
    assert stored.pdf.name == name
    assert Invoice.objects.get(pk=invoice.pk).pdf.name == name
    path = Path(settings.MEDIA_ROOT) / name
    first = path.read_bytes()
    assert first.startswith(b"%PDF")
    assert invoice.display_number in pdf_text(first)
    mtime = path.stat().st_mtime_ns

    again = store_invoice_pdf(invoice_id=invoice.pk)
    assert again.pdf.name == name
    assert path.stat().st_mtime_ns == mtime and path.read_bytes() == first
    assert [p.name for p in (Path(settings.MEDIA_ROOT) / "invoices").iterdir()] == [path.name]


def test_a_missing_file_is_rendered_again_under_the_same_name(settings):
    invoice = store_invoice_pdf(invoice_id=final_invoice().pk)
    path = Path(settings.MEDIA_ROOT) / invoice.pdf.name
    path.unlink()
    assert store_invoice_pdf(invoice_id=invoice.pk).pdf.name == invoice.pdf.name
    assert path.read_bytes().startswith(b"%PDF")


def test_an_orphan_file_is_replaced_not_suffixed(settings):
    invoice = final_invoice()
    orphan = Path(settings.MEDIA_ROOT) / "invoices" / f"{invoice.display_number}.pdf"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a rolled-back transaction")
    stored = store_invoice_pdf(invoice_id=invoice.pk)
    assert stored.pdf.name == f"invoices/{invoice.display_number}.pdf"
    assert orphan.read_bytes().startswith(b"%PDF")


def test_a_draft_has_no_stored_pdf():
    invoice = draft_invoice()
    with pytest.raises(errors.InvoiceNotFinal):
        store_invoice_pdf(invoice_id=invoice.pk)
    assert not Invoice.objects.get(pk=invoice.pk).pdf


# --- e-mail ----------------------------------------------------------------------------------


def test_the_invoice_is_emailed_once_with_its_pdf():
    invoice = final_invoice()
    assert send_invoice_email(invoice_id=invoice.pk) is True
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["ap@acme.example"]
    assert message.from_email == "billing@demo.example"
    assert message.subject == (
        f"Invoice {invoice.display_number} from Demo AI Inc. — 97.11 USD due 15 May 2026"
    )
    assert "97.11 USD is due by 15 May 2026" in message.body
    assert "Sales tax (8.25 %): 7.40 USD" in message.body
    [(html, mimetype)] = message.alternatives
    assert mimetype == "text/html" and "97.11 USD" in html
    [(filename, content, attached_type)] = message.attachments
    assert filename == f"{invoice.display_number}.pdf"
    assert attached_type == "application/pdf" and content.startswith(b"%PDF")
    stored = Invoice.objects.get(pk=invoice.pk)
    assert stored.emailed_at is not None
    assert content == stored.pdf.open("rb").read()

    assert send_invoice_email(invoice_id=invoice.pk) is False
    assert len(mail.outbox) == 1


def test_a_customer_without_email_gets_nothing():
    invoice = final_invoice(email="")
    assert send_invoice_email(invoice_id=invoice.pk) is False
    assert mail.outbox == []
    assert Invoice.objects.get(pk=invoice.pk).emailed_at is None
