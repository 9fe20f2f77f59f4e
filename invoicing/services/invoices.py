"""An invoice's row as every step takes it: locked in the lock order (``locked_invoice``),
numbered without gaps (``allocate_number``), its lines and figures written from a computed
draft (``write_lines``, ``apply_figures``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import F
from django.utils import timezone

from billing import services as billing_services
from billing.periods import utc
from invoicing import errors
from invoicing.models import Invoice, InvoiceLine, NumberSeries
from invoicing.selectors import InvoiceDraft, LineDraft

INVOICE_SERIES = "invoices"
CREDIT_NOTE_SERIES = "credit-notes"


def resolve_now(now: datetime | None) -> datetime:
    """``now`` (the current time when None) in UTC."""
    return utc(now or timezone.now())


@dataclass(frozen=True)
class Number:
    """A number taken from a series: the row, the number in it, and how it is shown."""

    series: NumberSeries
    number: int
    display: str


def allocate_number(series_code: str, prefix: str) -> Number:
    """The next number of a series, under its row lock until the caller's transaction ends:
    a rolled-back finalization gives its number back, so numbers have no gaps."""
    NumberSeries.objects.get_or_create(code=series_code, defaults={"prefix": prefix})
    series = NumberSeries.objects.select_for_update().get(code=series_code)
    number = series.next_number
    NumberSeries.objects.filter(pk=series.pk).update(next_number=F("next_number") + 1)
    return Number(series=series, number=number, display=f"{series.prefix}{number:06d}")


def locked_invoice(invoice_id: int, *, usage_lock: bool = False) -> Invoice:
    row = Invoice.objects.filter(pk=invoice_id).values_list("customer_id", flat=True).first()
    if row is None:
        raise errors.InvoicingNotFound(f"invoice {invoice_id} does not exist")
    # The customer's usage lock before the row (the lock order, docs/architecture.md): no
    # usage is rated into a period being closed, nor against a status being changed.
    if usage_lock:
        billing_services.lock_customer_usage([row])
    return (
        Invoice.objects.select_for_update(of=("self",))
        .select_related("customer", "subscription", "subscription__plan", "subscription__customer")
        .get(pk=invoice_id)
    )


def write_lines(invoice: Invoice, lines: list[LineDraft]) -> None:
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            position=position,
            kind=line.kind,
            description=line.description[:300],
            meter_id=line.meter_id,
            plan_id=line.plan_id,
            tier=line.tier,
            starts_at=line.starts_at,
            ends_at=line.ends_at,
            quantity=line.quantity,
            unit_price=line.unit_price,
            flat_fee=line.flat_fee,
            amount_precise=line.amount_precise,
            amount=line.amount,
            metadata=line.metadata,
        )
        for position, line in enumerate(lines, start=1)
    )


def apply_figures(invoice: Invoice, draft: InvoiceDraft) -> None:
    invoice.subtotal = draft.subtotal
    invoice.tax_name = draft.tax_name
    invoice.tax_percentage = draft.tax_percentage
    invoice.tax = draft.tax
    invoice.total = draft.total
    invoice.usage_charged = draft.usage_charged
    invoice.fees_precise = draft.fees_precise
    invoice.rounding = draft.rounding
    invoice.rounding_rule = draft.rounding_rule
    invoice.commitment_breakage = draft.commitment_breakage
    invoice.commitment_deferred = draft.commitment_deferred
    invoice.amount_due = draft.total
