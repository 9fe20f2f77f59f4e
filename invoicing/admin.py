"""Invoicing in the admin, for finance staff.

Invoices are never edited here: drafts change only by being computed again from the usage
counters, finalized invoices never (the database refuses). Every action is one service
call — close due periods, finalize, void, credit note, record a payment, collect payment
again, e-mail again — and the PDF is one click away. When no Stripe key is set, every
invoice page says so: offline mode (``PAYMENTS_OFFLINE``) or no payment provider at all.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from billing.admin.common import (
    ExactDecimalField,
    ServiceFormMixin,
    admin_link,
    money,
    money_cell,
    time_cell,
    timestamp,
    token_cell,
)
from billing.errors import BillingError
from invoicing import payments, pdf, services
from invoicing.models import (
    CreditNote,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    NumberSeries,
    Payment,
    StripeEvent,
    StripeEventStatus,
    TaxRate,
)
from ledger.admin import (
    EstimatedCountPaginator,
    ReadOnlyAdmin,
    ReadOnlyInline,
    system_currencies,
    values_filter,
)
from ledger.errors import LedgerError

OFFLINE_NOTICE = (
    "Payments run in OFFLINE MODE (PAYMENTS_OFFLINE is on and no STRIPE_SECRET_KEY is set): "
    "nothing is charged to a card and portal top-ups are credited without payment. Finalized "
    "invoices are recorded as paid through the @OfflinePayments clearing account{auto}."
)
NO_PROVIDER_NOTICE = (
    "No payment provider: no STRIPE_SECRET_KEY is set and offline payments are off "
    "(PAYMENTS_OFFLINE). Nothing pays itself: finalized invoices stay open until a payment "
    "received out of band is recorded (Record payment…, with its reference), and portal "
    "top-ups and payments are refused."
)


def offline_notice() -> str | None:
    """What the invoice pages say about payments when Stripe is not configured."""
    if payments.stripe_enabled():
        return None
    if not payments.offline_mode():
        return NO_PROVIDER_NOTICE
    from django.conf import settings

    auto = (
        " at once (OFFLINE_AUTO_PAY; those of customers who pay by invoice, send_invoice, wait)"
        if settings.OFFLINE_AUTO_PAY
        else " when staff record them"
    )
    return OFFLINE_NOTICE.format(auto=auto)


class InvoiceLineInline(ReadOnlyInline):
    model = InvoiceLine
    fields = (
        "position",
        "kind",
        "description",
        "quantity_shown",
        "unit_price_shown",
        "amount_shown",
        "amount_precise",
    )
    readonly_fields = fields
    show_change_link = False

    @admin.display(description="quantity")
    def quantity_shown(self, line):
        return f"{line.quantity.normalize():,f}"

    @admin.display(description="unit price")
    def unit_price_shown(self, line):
        return "—" if line.unit_price is None else f"{line.unit_price.normalize():f}"

    @admin.display(description="amount")
    def amount_shown(self, line):
        return money(line.amount, line.invoice.currency)  # rounded already; exact beside it


class CreditNoteInline(ReadOnlyInline):
    model = CreditNote
    fields = (
        "display_number",
        "reason",
        "amount",
        "tax",
        "total",
        "against_receivable",
        "to_balance",
        "created_at",
    )
    readonly_fields = fields
    show_change_link = False


class PaymentInline(ReadOnlyInline):
    model = Payment
    fields = ("provider", "provider_payment_id", "amount", "amount_refunded", "created_at")
    readonly_fields = fields
    show_change_link = False


class CloseForm(forms.Form):
    as_of = forms.DateTimeField(
        required=False, help_text="Close periods ended by this time (UTC). Empty: now."
    )
    finalize = forms.BooleanField(
        required=False, help_text="Also finalize drafts whose grace period has passed by then."
    )


class VoidForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}))


class CreditNoteForm(forms.Form):
    amount = ExactDecimalField(
        digits=26, places=3, help_text="Net of tax; its tax is credited with it."
    )
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}))
    reference = forms.CharField(
        max_length=200, widget=forms.HiddenInput, help_text="Idempotency: a resubmit is one note."
    )


class OfflinePaymentForm(forms.Form):
    reference = forms.CharField(
        max_length=100, help_text="The bank transfer's or cheque's reference (recorded once)."
    )


@admin.register(Invoice)
class InvoiceAdmin(ServiceFormMixin, ReadOnlyAdmin):
    list_display = (
        "number_shown",
        "customer_link",
        "period",
        "status",
        "total_shown",
        "remaining_shown",
        "finalized_at",
        "pdf_link",
    )
    # No date hierarchy (the distinct periods of every invoice on every page): the period
    # filter's ranges; the list reads the newest-first index a page at a time.
    list_filter = (
        "status",
        values_filter("currency", "currency", system_currencies),
        ("period_start", admin.DateFieldListFilter),
    )
    search_fields = ("display_number", "customer__external_id", "customer__name")
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    # 50 rows a page: rendering the rows is most of the page's time (a 100-row page of
    # this list took 300-450 ms at 100,000 customers, its queries a few of them)
    list_per_page = 50
    list_select_related = ("customer",)
    # The stored file is never linked directly: invoices are private and MEDIA_ROOT is not
    # served (its URL answered 404); the PDF goes through pdf_view, behind the admin's login.
    exclude = ("pdf",)
    readonly_fields = [f.name for f in Invoice._meta.fields if f.name != "pdf"] + [
        "amount_remaining",
        "pdf_link",
    ]
    inlines = [InvoiceLineInline, CreditNoteInline, PaymentInline]
    actions = ["finalize_action", "collect_action", "resend_action", "refresh_action"]
    change_list_template = "admin/invoicing/invoice/change_list.html"
    change_form_template = "admin/invoicing/invoice/change_form.html"

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm("invoicing.change_invoice")

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("invoicing.view_invoice") or self.has_change_permission(
            request
        )

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields

    @admin.display(description="number", ordering="number")
    def number_shown(self, invoice):
        return invoice.display_number or f"Draft #{invoice.pk}"

    @admin.display(description="customer", ordering="customer__external_id")
    def customer_link(self, invoice):
        return admin_link(invoice.customer)

    @admin.display(description="period", ordering="period_start")
    def period(self, invoice):
        return f"{invoice.period_start:%Y-%m-%d} → {invoice.period_end:%Y-%m-%d}"

    @admin.display(description="total", ordering="total")
    def total_shown(self, invoice):
        return money_cell(invoice.total, invoice.currency)

    @admin.display(description="still owed")
    def remaining_shown(self, invoice):
        return money_cell(invoice.amount_remaining, invoice.currency)

    @admin.display(description="PDF")
    def pdf_link(self, invoice):
        url = reverse("admin:invoicing_invoice_pdf", args=[invoice.pk])
        return format_html('<a href="{}">{}</a>', url, "PDF" if invoice.number else "preview")

    # --- pages ------------------------------------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("close/", wrap(self.close_view), name="invoicing_invoice_close"),
            path("<path:object_id>/pdf/", wrap(self.pdf_view), name="invoicing_invoice_pdf"),
            path("<path:object_id>/void/", wrap(self.void_view), name="invoicing_invoice_void"),
            path(
                "<path:object_id>/credit-note/",
                wrap(self.credit_note_view),
                name="invoicing_invoice_credit_note",
            ),
            path(
                "<path:object_id>/record-payment/",
                wrap(self.payment_view),
                name="invoicing_invoice_record_payment",
            ),
            *super().get_urls(),
        ]

    def _require_change(self, request):
        if not self.has_change_permission(request):
            raise PermissionDenied

    def changelist_view(self, request, extra_context=None):
        extra = {"offline_notice": offline_notice(), **(extra_context or {})}
        return super().changelist_view(request, extra)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = {"offline_notice": offline_notice(), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra)

    def close_view(self, request: HttpRequest) -> HttpResponse:
        self._require_change(request)
        form = CloseForm(request.POST or None)

        def close() -> HttpResponse:
            as_of = form.cleaned_data["as_of"] or timezone.now()
            closed = services.close_due_periods(as_of=as_of)
            text = f"{closed} period(s) closed into draft invoices"
            if form.cleaned_data["finalize"]:
                text += f"; {services.finalize_due_invoices(as_of=as_of)} invoice(s) finalized"
            messages.success(request, text + ".")
            return HttpResponseRedirect(reverse("admin:invoicing_invoice_changelist"))

        return self.run_service(request, form, close) or self.service_form_response(
            request,
            form=form,
            title="Close due periods",
            submit_label="Close periods",
            intro="Every subscription whose period has ended gets its draft invoice (once: "
            "closing again changes nothing) and moves to its next period. Beat does the same "
            "every five minutes.",
        )

    def pdf_view(self, request: HttpRequest, object_id: str) -> HttpResponse | FileResponse:
        invoice = self.object_or_404(request, object_id)
        if not self.has_view_permission(request, invoice):
            raise PermissionDenied
        if invoice.status == InvoiceStatus.DRAFT:
            data = pdf.render_invoice_pdf(invoice)
            return HttpResponse(
                data,
                content_type="application/pdf",
                headers={"Content-Disposition": f'inline; filename="draft-{invoice.pk}.pdf"'},
            )
        invoice = pdf.store_invoice_pdf(invoice_id=invoice.pk)
        if not invoice.pdf:
            raise Http404("no PDF")
        return FileResponse(
            invoice.pdf.open("rb"),
            content_type="application/pdf",
            filename=f"{invoice.display_number}.pdf",
        )

    def void_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        self._require_change(request)
        invoice = self.object_or_404(request, object_id)
        form = VoidForm(request.POST or None)

        def void() -> HttpResponse:
            services.void_invoice(invoice_id=invoice.pk, reason=form.cleaned_data["reason"])
            self.log_change(request, invoice, f"Voided: {form.cleaned_data['reason']}")
            messages.success(request, f"Invoice {invoice} voided.")
            return HttpResponseRedirect(self.change_url(invoice))

        return self.run_service(request, form, void) or self.service_form_response(
            request,
            form=form,
            original=invoice,
            title=f"Void invoice {invoice}",
            submit_label="Void invoice",
            intro="The customer will owe nothing for this invoice: its revenue, tax and "
            "rounding are taken back in the ledger and the balance it used is returned. "
            "An invoice with payments or credit notes takes a credit note instead.",
            facts=[
                ("Total", money(invoice.total, invoice.currency)),
                ("Status", invoice.get_status_display()),
            ],
        )

    def credit_note_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        self._require_change(request)
        invoice = self.object_or_404(request, object_id)
        form = CreditNoteForm(request.POST or None, initial={"reference": uuid.uuid4().hex})

        def credit() -> HttpResponse:
            data = form.cleaned_data
            note = services.create_credit_note(
                invoice_id=invoice.pk,
                amount=data["amount"],
                reason=data["reason"],
                reference=f"admin:{data['reference']}",
                created_by_id=request.user.pk,
            )
            self.log_change(request, invoice, f"Credit note {note} for {note.total}")
            messages.success(
                request, f"Credit note {note} issued: {money(note.total, invoice.currency)}."
            )
            return HttpResponseRedirect(self.change_url(invoice))

        credited = sum((n.amount for n in invoice.credit_notes.all()), Decimal(0))
        return self.run_service(request, form, credit) or self.service_form_response(
            request,
            form=form,
            original=invoice,
            title=f"Credit note for invoice {invoice}",
            submit_label="Issue credit note",
            intro="The credit reduces what the invoice still owes; anything beyond that is "
            "credited to the customer's wallet.",
            facts=[
                ("Subtotal", money(invoice.subtotal, invoice.currency)),
                ("Already credited (net)", money(credited, invoice.currency)),
                ("Tax rate", f"{invoice.tax_percentage.normalize():f} %"),
                ("Still owed", money(invoice.amount_remaining, invoice.currency)),
            ],
        )

    def payment_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        self._require_change(request)
        invoice = self.object_or_404(request, object_id)
        form = OfflinePaymentForm(request.POST or None)

        def record() -> HttpResponse:
            payment = payments.record_offline_payment(
                invoice_id=invoice.pk, reference=form.cleaned_data["reference"]
            )
            self.log_change(request, invoice, f"Offline payment {payment.provider_payment_id}")
            messages.success(request, f"Payment of {money(payment.amount)} recorded.")
            return HttpResponseRedirect(self.change_url(invoice))

        return self.run_service(request, form, record) or self.service_form_response(
            request,
            form=form,
            original=invoice,
            title=f"Record a payment for invoice {invoice}",
            submit_label="Record payment",
            intro="What the invoice still owes, paid out of band (received outside Stripe: a "
            "bank transfer, a cheque). Record it only once the money has arrived.",
            facts=[("Still owed", money(invoice.amount_remaining, invoice.currency))],
        )

    # --- actions on the list ------------------------------------------------------------

    def _each(self, request, queryset, call, done_text: str) -> None:
        done = 0
        for invoice in queryset:
            try:
                call(invoice)
            except (BillingError, LedgerError) as error:
                messages.error(request, f"{invoice}: {error.message} ({error.code})")
                continue
            done += 1
        if done:
            messages.success(request, f"{done} invoice(s) {done_text}.")

    @admin.action(description="Finalize the selected drafts now", permissions=["change"])
    def finalize_action(self, request, queryset):
        self._each(
            request,
            queryset.filter(status=InvoiceStatus.DRAFT),
            lambda i: services.finalize_invoice(invoice_id=i.pk),
            "finalized",
        )

    @admin.action(description="Recompute the selected drafts from usage", permissions=["change"])
    def refresh_action(self, request, queryset):
        self._each(
            request,
            queryset.filter(status=InvoiceStatus.DRAFT),
            lambda i: services.refresh_draft(invoice_id=i.pk),
            "recomputed",
        )

    @admin.action(description="Retry payment of the selected invoices", permissions=["change"])
    def collect_action(self, request, queryset):
        outcomes: dict[str, list[str]] = {}
        counts = {"paid": 0, "failed": 0, "skipped": 0}

        def collect(invoice):
            result = payments.collect(invoice_id=invoice.pk)
            counts[result.status] = counts.get(result.status, 0) + 1
            text = result.status + (f" ({result.message})" if result.message else "")
            outcomes.setdefault(text, []).append(str(invoice))

        selected = queryset.filter(status__in=(InvoiceStatus.OPEN, InvoiceStatus.PAST_DUE))
        for invoice in selected:
            try:
                collect(invoice)
            except (BillingError, LedgerError) as error:
                counts["failed"] += 1
                messages.error(request, f"{invoice}: {error.message} ({error.code})")
        # The summary counts what happened, not what was tried.
        tried = sum(counts.values())
        summary = f"Retried {tried} invoice(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())
        level = messages.SUCCESS if tried and counts["paid"] == tried else messages.WARNING
        messages.add_message(request, level, summary + ".")
        # what each attempt came to: paid, failed (and why), or skipped (no provider, …)
        for text, invoices in outcomes.items():
            level = messages.SUCCESS if text.startswith("paid") else messages.WARNING
            messages.add_message(request, level, f"{', '.join(invoices)}: {text}")

    @admin.action(description="E-mail the selected invoices again", permissions=["change"])
    def resend_action(self, request, queryset):
        from invoicing import emails

        def resend(invoice):
            Invoice.objects.filter(pk=invoice.pk).update(emailed_at=None)
            emails.send_invoice_email(invoice_id=invoice.pk)

        self._each(request, queryset.exclude(status=InvoiceStatus.DRAFT), resend, "e-mailed")


@admin.register(TaxRate)
class TaxRateAdmin(admin.ModelAdmin):
    list_display = ("name", "percentage", "country", "state", "customer", "active")
    list_filter = ("active", "country")
    search_fields = ("name", "customer__external_id")
    autocomplete_fields = ("customer",)

    def has_delete_permission(self, request, obj=None):
        return False  # retire a rate (active off): invoices name the rates they used


@admin.register(NumberSeries)
class NumberSeriesAdmin(ReadOnlyAdmin):
    list_display = ("code", "prefix", "next_number")


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    list_display = ("display_number", "invoice", "total_shown", "reason", "created_at")
    search_fields = ("display_number", "invoice__display_number")
    list_select_related = ("invoice",)

    @admin.display(description="total", ordering="total")
    def total_shown(self, note: CreditNote):
        return money_cell(note.total, note.invoice.currency)


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = (
        "provider_payment_id",
        "provider",
        "invoice",
        "amount_shown",
        "to_balance_shown",
        "refunded_shown",
        "created_at",
    )
    list_filter = ("provider",)
    search_fields = ("provider_payment_id", "invoice__display_number")
    list_select_related = ("invoice",)

    @admin.display(description="amount", ordering="amount")
    def amount_shown(self, payment: Payment):
        return money_cell(payment.amount, payment.currency)

    @admin.display(description="to balance", ordering="to_balance")
    def to_balance_shown(self, payment: Payment):
        return money_cell(payment.to_balance, payment.currency)

    @admin.display(description="refunded", ordering="amount_refunded")
    def refunded_shown(self, payment: Payment):
        return money_cell(payment.amount_refunded, payment.currency)


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    """Stripe's webhook events as stored: those that need finance — ``needs_review`` (the
    amount or currency differed from what we asked for; what was paid is booked, the outcome
    says how) and ``failed`` (given up after the last attempt) — found by the status filter,
    and a failed one retried by the action once its cause is fixed."""

    list_display = (
        "event",
        "event_type",
        "status",
        "tries",
        "next_attempt",
        "received",
        "error_shown",
        "outcome_shown",
    )
    # Stripe's event id and type cut short (whole on hover), short headers and times to the
    # minute: the list was 1,074 px wide in the 900 px a 1280 px screen leaves beside the
    # sidebar
    list_filter = ("status", "type")
    search_fields = ("event_id", "outcome", "last_error")
    date_hierarchy = "received_at"
    readonly_fields = [f.name for f in StripeEvent._meta.fields]
    actions = ["retry_action"]

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm("invoicing.change_stripeevent")

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("invoicing.view_stripeevent") or self.has_change_permission(
            request
        )

    @admin.display(description="event", ordering="event_id")
    def event(self, event):
        return token_cell(event.event_id)

    @admin.display(description="type", ordering="type")
    def event_type(self, event):
        return token_cell(event.type)

    @admin.display(description="tries", ordering="attempts")
    def tries(self, event):
        return event.attempts

    @admin.display(description="next try", ordering="next_attempt_at")
    def next_attempt(self, event):
        return time_cell(event.next_attempt_at)

    @admin.display(description="received", ordering="received_at")
    def received(self, event):
        return time_cell(event.received_at)

    @admin.display(description="last error")
    def error_shown(self, event):
        return event.last_error[:200]

    @admin.display(description="outcome")
    def outcome_shown(self, event):
        return event.outcome[:200]

    @admin.action(description="Retry the selected events now", permissions=["change"])
    def retry_action(self, request, queryset):
        from invoicing import webhooks

        done = 0
        for event in queryset.filter(
            status__in=(StripeEventStatus.PENDING, StripeEventStatus.FAILED)
        ):
            handled = webhooks.process(event_id=event.pk, retry_failed=True)
            if handled.status in (StripeEventStatus.PENDING, StripeEventStatus.FAILED):
                messages.error(request, f"{handled}: {handled.last_error}")
            else:
                done += 1
        if done:
            messages.success(request, f"{done} event(s) handled.")


__all__ = ["InvoiceAdmin", "timestamp"]


# The reconciliation report and the provider usage import (their own module: a page of
# their own, not invoices).
from invoicing import admin_reconciliation  # noqa: E402, F401
