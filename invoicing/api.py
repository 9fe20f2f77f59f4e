"""Invoices in the product API (v1): list, detail, PDF, and the upcoming invoice — what the
current period would be invoiced with if it closed now, computed by the same function the
close uses."""

from __future__ import annotations

from dataclasses import asdict

from django.db.models import F, Prefetch, QuerySet
from django.http import FileResponse, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from billing import selectors as billing_selectors
from billing.api.fields import Money, StrictSerializer, list_response
from billing.api.idempotency import idempotent
from billing.api.pagination import PARAMETERS as PAGE_PARAMETERS
from billing.api.pagination import paginate
from billing.api.query import PAGE_PARAMS, APIView
from billing.api.views import ErrorSerializer, errors, idempotency_parameter
from billing.models import CreditGrant, Meter, Subscription, SubscriptionStatus
from invoicing import charge_periods, credit_refunds, pdf, webhooks
from invoicing import errors as invoicing_errors
from invoicing.models import Invoice, InvoiceLine, InvoiceStatus, StripeEventStatus
from invoicing.selectors import compute_invoice


class InvoiceLineSerializer(serializers.Serializer):
    kind = serializers.CharField(
        help_text="base_fee, included, usage, credits, minimum (a shortfall) or commitment "
        "(a prepaid commitment, and the usage drawn from it: negative)"
    )
    description = serializers.CharField()
    meter = serializers.CharField(source="meter_code", allow_null=True)
    tier = serializers.IntegerField(allow_null=True, help_text="1-based, for tiered charges")
    period_start = serializers.DateTimeField(source="starts_at")
    period_end = serializers.DateTimeField(source="ends_at")
    quantity = Money()
    unit_price = Money(allow_null=True)
    flat_fee = Money()
    amount = Money(help_text="Rounded to the currency's minor unit (half to even).")
    amount_precise = serializers.DecimalField(
        max_digits=60, decimal_places=24, coerce_to_string=True, help_text="Exact, unrounded."
    )


class InvoiceSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True)
    number = serializers.CharField(
        source="number_shown", allow_null=True, help_text="Null until finalized."
    )
    customer = serializers.CharField(source="customer.external_id")
    subscription = serializers.IntegerField(source="subscription_id")
    status = serializers.CharField(help_text="draft, open, past_due, paid or void")
    kind = serializers.CharField(
        help_text="period: the period's invoice, made at its close; commitment: a prepaid "
        "commitment invoiced in advance as its period opened (commitment_billing in_advance: "
        "the period's invoice draws usage down against it)"
    )
    currency = serializers.CharField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    lines = InvoiceLineSerializer(many=True, source="line_list")
    subtotal = Money()
    tax_name = serializers.CharField()
    tax_percentage = serializers.DecimalField(max_digits=9, decimal_places=4)
    tax = Money()
    total = Money()
    balance_applied = Money(help_text="Paid at finalization from the wallet's own funds.")
    amount_due = Money()
    amount_paid = Money()
    amount_credited = Money()
    amount_remaining = Money()
    commitment_unused = Money(
        help_text="What usage has not drawn of the period's prepaid commitment: on the "
        "upcoming invoice what is left to draw, on an invoice what expired (breakage); 0 "
        "without a commitment."
    )
    finalized_at = serializers.DateTimeField(allow_null=True)
    due_at = serializers.DateTimeField(allow_null=True)
    paid_at = serializers.DateTimeField(allow_null=True)
    pdf_url = serializers.CharField(allow_null=True)


# What InvoiceSerializer reads of a stored invoice as it is; the rest the API adds.
_INVOICE_ATTRIBUTES = (
    "id",
    "customer",
    "subscription_id",
    "status",
    "kind",
    "currency",
    "period_start",
    "period_end",
    "subtotal",
    "tax_name",
    "tax_percentage",
    "tax",
    "total",
    "balance_applied",
    "amount_due",
    "amount_paid",
    "amount_credited",
    "amount_remaining",
    "finalized_at",
    "due_at",
    "paid_at",
)


def _lines() -> QuerySet[InvoiceLine]:
    return InvoiceLine.objects.annotate(meter_code=F("meter__code")).order_by("position")


def _shown(invoice: Invoice, lines) -> dict:
    shown = {name: getattr(invoice, name) for name in _INVOICE_ATTRIBUTES}
    shown["number_shown"] = invoice.display_number or None
    shown["commitment_unused"] = invoice.commitment_breakage
    shown["line_list"] = lines
    shown["pdf_url"] = f"/api/v1/invoices/{invoice.pk}/pdf"
    return shown


def _invoice_data(invoice: Invoice) -> dict:
    return InvoiceSerializer(_shown(invoice, _lines().filter(invoice=invoice))).data


def _page_data(invoices: list[Invoice]) -> list[dict]:
    """A page of invoices as ``_invoice_data`` shows each, their lines read in one query
    (``line_list``, a Prefetch) and one serializer for the page: no query per invoice, and
    no serializer's fields built again for each (DRF deep-copies them per instance)."""
    page = InvoiceSerializer(
        [_shown(invoice, invoice.line_list) for invoice in invoices],  # type: ignore[attr-defined]
        many=True,
    )
    return list(page.data)  # (a ReturnList; typed as the dict a single instance gives)


def _get_invoice(invoice_id: int) -> Invoice:
    invoice = Invoice.objects.select_related("customer").filter(pk=invoice_id).first()
    if invoice is None:
        raise invoicing_errors.InvoicingNotFound(f"invoice {invoice_id} does not exist")
    return invoice


class InvoiceListView(APIView):
    query_params = {"GET": ("customer", "status", *PAGE_PARAMS)}

    @extend_schema(
        operation_id="invoices_list",
        tags=["invoices"],
        summary="Invoices, newest first (of one customer with ?customer=)",
        parameters=[
            OpenApiParameter("customer", str, description="The customer's external_id."),
            OpenApiParameter("status", str, description="draft, open, past_due, paid, void"),
            *PAGE_PARAMETERS,
        ],
        responses={200: list_response(InvoiceSerializer), **errors(400, 404)},
    )
    def get(self, request):
        queryset = Invoice.objects.select_related("customer").prefetch_related(
            Prefetch("lines", queryset=_lines(), to_attr="line_list")
        )
        external_id = request.query_params.get("customer")
        if external_id is not None:
            if "\x00" in external_id or len(external_id) > 200:
                raise invoicing_errors.InvoicingValidation(
                    "customer must be an external_id", param="customer"
                )
            customer = billing_selectors.get_customer(external_id=external_id, param="customer")
            queryset = queryset.filter(customer=customer)
        wanted = request.query_params.get("status")
        if wanted is not None:
            if wanted not in InvoiceStatus.values:
                raise invoicing_errors.InvoicingValidation(
                    f"status must be one of {', '.join(InvoiceStatus.values)}", param="status"
                )
            queryset = queryset.filter(status=wanted)
        page = paginate(request, queryset, lambda invoice: invoice)
        page["data"] = _page_data(page["data"])
        return Response(page)


class InvoiceDetailView(APIView):
    @extend_schema(
        operation_id="invoices_retrieve",
        tags=["invoices"],
        summary="An invoice with its lines and totals",
        responses={200: InvoiceSerializer, **errors(404)},
    )
    def get(self, request, invoice_id: int):
        return Response(_invoice_data(_get_invoice(invoice_id)))


class InvoicePDFView(APIView):
    @extend_schema(
        operation_id="invoices_pdf",
        tags=["invoices"],
        summary="The invoice as a PDF (a draft renders marked DRAFT and is not stored)",
        responses={
            (200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY, description="PDF"),
            **errors(404),
        },
    )
    def get(self, request, invoice_id: int):
        invoice = _get_invoice(invoice_id)
        if invoice.status == InvoiceStatus.DRAFT:
            return HttpResponse(pdf.render_invoice_pdf(invoice), content_type="application/pdf")
        invoice = pdf.store_invoice_pdf(invoice_id=invoice.pk)
        return FileResponse(
            invoice.pdf.open("rb"),
            content_type="application/pdf",
            filename=f"{invoice.display_number}.pdf",
        )


class AccruingLineSerializer(InvoiceLineSerializer):
    invoiced_on = serializers.DateTimeField(
        help_text="When its charge period ends: the invoice of the billing period ending "
        "then carries it."
    )


class UpcomingInvoiceSerializer(InvoiceSerializer):
    accruing = AccruingLineSerializer(
        many=True,
        help_text="Charges billed on their own cadence (a quarter on a monthly plan) whose "
        "charge period is still running: what they have accrued so far, rated, not on this "
        "invoice (a later one carries them, on invoiced_on). Empty for other plans.",
    )


class UpcomingInvoiceView(APIView):
    @extend_schema(
        operation_id="customers_upcoming_invoice",
        tags=["invoices"],
        summary="The invoice the current period would produce if it closed now",
        responses={200: UpcomingInvoiceSerializer, **errors(404, 422)},
    )
    def get(self, request, external_id: str):
        customer = billing_selectors.get_customer(external_id=external_id)
        subscription = (
            Subscription.objects.select_related("plan", "customer")
            .filter(customer=customer)
            .exclude(status=SubscriptionStatus.CANCELED)
            .first()
        )
        if subscription is None:
            raise invoicing_errors.NoLiveSubscription(
                f"customer {external_id} has no live subscription", param="customer"
            )
        draft = compute_invoice(
            subscription=subscription,
            period_start=subscription.current_period_start,
            period_end=subscription.current_period_end,
        )
        accruing = charge_periods.accruing_lines(
            subscription, subscription.current_period_start, subscription.current_period_end
        )
        meter_ids = [line.meter_id for line in [*draft.lines, *accruing] if line.meter_id]
        codes = dict(Meter.objects.filter(pk__in=meter_ids).values_list("pk", "code"))
        lines = [
            asdict(line) | {"meter_code": codes.get(line.meter_id) if line.meter_id else None}
            for line in draft.lines
        ]
        accrued = [
            asdict(line)
            | {"meter_code": codes.get(line.meter_id or 0), "invoiced_on": line.ends_at}
            for line in accruing
        ]
        upcoming = {
            "id": None,
            "number_shown": None,
            "customer": customer,
            "subscription_id": subscription.pk,
            "status": "upcoming",
            "kind": "period",
            "currency": draft.currency,
            "period_start": subscription.current_period_start,
            "period_end": subscription.current_period_end,
            "line_list": lines,
            "subtotal": draft.subtotal,
            "tax_name": draft.tax_name,
            "tax_percentage": draft.tax_percentage,
            "tax": draft.tax,
            "total": draft.total,
            "balance_applied": 0,
            "amount_due": draft.total,
            "amount_paid": 0,
            "amount_credited": 0,
            "amount_remaining": draft.total,
            "commitment_unused": draft.commitment_breakage,
            "finalized_at": None,
            "due_at": None,
            "paid_at": None,
            "pdf_url": None,
            "accruing": accrued,
        }
        return Response(UpcomingInvoiceSerializer(upcoming).data)


class WebhookAnswerSerializer(serializers.Serializer):
    received = serializers.BooleanField()
    duplicate = serializers.BooleanField(help_text="This event id was received before.")
    processed = serializers.BooleanField()
    status = serializers.ChoiceField(
        choices=StripeEventStatus.choices,
        help_text="pending (retried later), processed, needs_review (amount or currency "
        "differed from what was asked), failed (given up)",
    )
    outcome = serializers.CharField()


class StripeWebhookView(APIView):
    """Stripe's webhooks: authenticated by Stripe's signature, not by an API key."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []
    query_params = None  # the URL Stripe calls is the operator's to configure

    @extend_schema(
        operation_id="webhooks_stripe",
        tags=["webhooks"],
        summary="Stripe's webhook events (signature verified; stored once, handled once)",
        request={"application/json": OpenApiTypes.OBJECT},
        parameters=[
            OpenApiParameter(
                "Stripe-Signature",
                str,
                OpenApiParameter.HEADER,
                required=True,
                description="Stripe's signature of the body (t=…,v1=…)",
            )
        ],
        responses={200: WebhookAnswerSerializer, 400: errors(400)[400]},
    )
    def post(self, request):
        event, created = webhooks.receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
        return Response(
            {
                "received": True,
                "duplicate": not created,
                "processed": event.processed_at is not None,
                "status": event.status,
                "outcome": event.outcome,
            }
        )


# --- refunds of unused purchased credits ---------------------------------------------------


class CreditRefundCreateSerializer(StrictSerializer):
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class CreditRefundSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    grant = serializers.IntegerField(source="grant_id")
    customer = serializers.CharField(source="customer.external_id")
    method = serializers.CharField(
        help_text="stripe (back to the card), offline (paid back out of band: offline "
        "payments only) or credit_note (credited to the customer's balance)"
    )
    status = serializers.CharField(help_text="pending, succeeded or failed")
    credits = Money(help_text="The credits taken back from the wallet.")
    amount = Money(help_text="The money refunded, in whole minor units.")
    currency = serializers.CharField()
    reason = serializers.CharField()
    stripe_refund_id = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    refunded_at = serializers.DateTimeField(allow_null=True)


class CreditGrantRefundView(APIView):
    @extend_schema(
        operation_id="customers_refund_credit_grant",
        tags=["customers"],
        summary="Refund what is left of a purchased credit grant",
        description=(
            "The unused credits leave the CREDITS wallet at once (under the customer's usage "
            "lock, so no usage draws on them meanwhile) and their money goes back: to the card "
            "by a Stripe refund when they were bought by card (the unused share of what was "
            "paid), otherwise paid back out of band where offline payments are enabled, or "
            "credited to the customer's balance (a credit note; credits × CREDIT_PRICE). Once "
            "per grant: a retry returns the refund (200)."
        ),
        request=CreditRefundCreateSerializer,
        responses={
            201: CreditRefundSerializer,
            200: CreditRefundSerializer,
            **errors(400, 404, 409),
            502: OpenApiResponse(
                ErrorSerializer, description="Stripe refused the refund (refund_failed); retry"
            ),
        },
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request, external_id: str, grant_id: int):
        customer = billing_selectors.get_customer(external_id=external_id)
        if not CreditGrant.objects.filter(pk=grant_id, customer=customer).exists():
            raise invoicing_errors.CreditGrantNotFound(
                f"customer {external_id} has no credit grant {grant_id}", param="grant"
            )
        data = CreditRefundCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        refund = credit_refunds.refund_unused_credits(
            grant_id=grant_id, reason=data.validated_data["reason"]
        )
        code = 200 if refund.replayed else 201
        return Response(CreditRefundSerializer(refund).data, status=code)
