"""The finance pages of exports and usage previews: the API routes and the admin pages.

API (read scope): ``GET /api/v1/exports/{kind}?from=&to=`` streams a CSV
(``invoicing.exports``); ``POST /api/v1/plans/{code}/preview`` prices the last invoiced
period of the plan's subscriptions under a draft version (``invoicing.preview``) and
writes nothing. Admin (staff, under ``/admin/finance/``): the Exports page, a plan's
"Preview against last period" and a catalog row's "Preview price change". Every CSV cell of
text goes through ``billing.portal.spreadsheet.safe_cell``: a spreadsheet runs no formula
from it. Numbers we format ourselves are written as they are.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from billing import selectors as billing_selectors
from billing import services
from billing.admin.common import decimal_text
from billing.admin.plans import PlanVersionForm, charges_json, credit_grant_json
from billing.api.fields import Money, StrictSerializer
from billing.api.query import APIView, parse_moment
from billing.api.serializers import ChargeSerializer
from billing.api.views import errors
from billing.errors import BillingError
from billing.models import Plan
from billing.portal.spreadsheet import safe_cell
from invoicing import errors as invoicing_errors
from invoicing import exports, preview
from metering.models import ModelPrice

# --- CSV ------------------------------------------------------------------------------------


class _Echo:
    """A file whose write returns what it was given: csv.writer's lines, one at a time."""

    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> str:
    shown = exports.text(value)
    return safe_cell(shown) if isinstance(value, str) else shown


def csv_lines(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(list(header))
    for row in rows:
        yield writer.writerow([_cell(v) for v in row])


def csv_response(export: exports.Export) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        csv_lines(export.header, export.rows), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    return response


# --- API: exports ---------------------------------------------------------------------------


def _range(request) -> tuple[datetime, datetime]:
    values = []
    for name in ("from", "to"):
        raw = request.query_params.get(name)
        if raw is None:
            raise invoicing_errors.InvoicingValidation(
                f"{name} is required: an export covers [from, to)", param=name
            )
        values.append(parse_moment(raw, name))
    return values[0], values[1]


class ExportView(APIView):
    query_params = {"GET": ("from", "to")}

    def perform_content_negotiation(self, request, force=False):
        # The body is CSV whatever the client accepts; an error is the API's JSON body.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="exports_retrieve",
        tags=["exports"],
        summary="An accounting export of a period as CSV (streamed)",
        description=(
            "kind: journal (every ledger entry), journal-import (a daily summary journal per "
            "currency in QuickBooks/Xero general-journal columns; whole UTC days only, else "
            "400 invalid_range), invoices (finalized), credit-notes, payments, usage (the "
            "daily usage counters). The range is half-open [from, to) and checked before "
            "anything streams; the rows are read in one consistent snapshot. Columns in "
            "docs/exports.md. Money is exact decimal text, with the minor-unit rounding "
            "beside it where it differs."
        ),
        parameters=[
            OpenApiParameter("kind", str, OpenApiParameter.PATH, enum=list(exports.KINDS)),
            OpenApiParameter(
                "from",
                OpenApiTypes.DATETIME,
                required=True,
                description="Inclusive: a date (midnight UTC) or an RFC 3339 timestamp.",
            ),
            OpenApiParameter(
                "to",
                OpenApiTypes.DATETIME,
                required=True,
                description="Exclusive: a date (midnight UTC) or an RFC 3339 timestamp.",
            ),
        ],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV, UTF-8"),
            **errors(404),
        },
    )
    def get(self, request, kind: str):
        start, end = _range(request)
        return csv_response(exports.export(kind=kind, start=start, end=end))


# --- API: plan preview ----------------------------------------------------------------------


class PlanPreviewSerializer(StrictSerializer):
    name = serializers.CharField(max_length=200, required=False)
    base_fee = Money(required=False, min_value=Decimal(0))
    units_per_credit = Money(required=False, allow_null=True)
    charges = ChargeSerializer(many=True, help_text="The draft's charges, as POST /plans takes.")
    customer = serializers.CharField(
        max_length=200, required=False, help_text="Preview one customer (external_id)."
    )


class MeterChangeSerializer(serializers.Serializer):
    meter = serializers.CharField()
    quantity = serializers.DecimalField(max_digits=38, decimal_places=12, coerce_to_string=True)
    old_amount = serializers.DecimalField(max_digits=60, decimal_places=24, coerce_to_string=True)
    new_amount = serializers.DecimalField(max_digits=60, decimal_places=24, coerce_to_string=True)
    delta = serializers.DecimalField(max_digits=60, decimal_places=24, coerce_to_string=True)
    note = serializers.CharField()


class CustomerChangeSerializer(serializers.Serializer):
    customer = serializers.CharField()
    subscription = serializers.IntegerField(source="subscription_id")
    plan = serializers.CharField(help_text="The version that priced the period.")
    currency = serializers.CharField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    old_total = Money(help_text="The period's invoice total (tax included, minor unit).")
    new_total = Money()
    delta = Money()
    old_subtotal = Money()
    new_subtotal = Money()
    approximate = serializers.BooleanField()
    meters = MeterChangeSerializer(many=True)


class TotalsSerializer(serializers.Serializer):
    currency = serializers.CharField()
    customers = serializers.IntegerField()
    old = Money()
    new = Money()
    delta = Money()


class SkippedSerializer(serializers.Serializer):
    customer = serializers.CharField()
    reason = serializers.CharField()


class PlanPreviewAnswerSerializer(serializers.Serializer):
    plan = serializers.CharField(source="code")
    totals = TotalsSerializer(many=True)
    # a declared field is popped from the class, so DRF's .data property stays
    data = CustomerChangeSerializer(many=True, source="rows")  # type: ignore[assignment]
    skipped = SkippedSerializer(many=True)
    truncated = serializers.BooleanField(
        help_text=f"More than {preview.MAX_SUBSCRIPTIONS} subscriptions: preview per customer."
    )


# What a draft may change (the API's preview takes the first four, the admin's page all).
DRAFTED = ("name", "base_fee", "units_per_credit", "charges", "description", "trial_days")


def draft_spec(plan: Plan, changes: dict[str, Any]) -> services.PlanSpec:
    """The spec of ``plan`` with the draft's changes (``DRAFTED``, and its credit grant).
    Every other term is the current version's — code, currency, interval and cadence,
    consumption model (versions of one plan bill alike), its rounding, its minimum, and any
    term added later — so a draft previews what it changes and nothing else."""
    spec = services.plan_spec_of(plan)
    data: dict[str, Any] = {
        "code": spec.code,
        "currency": spec.currency,
        "interval": spec.interval,
        "consumption_model": spec.consumption_model,
        "metadata": spec.metadata,
        "name": spec.name,
        "description": spec.description,
        "base_fee": spec.base_fee,
        "trial_days": spec.trial_days,
        "units_per_credit": spec.units_per_credit,
        "credit_grant": spec.credit_grant,
    }
    data.update(changes)
    draft = billing_selectors.plan_spec_from_validated(data)
    drafted = {name: getattr(draft, name) for name in DRAFTED}
    return replace(spec, **drafted, credit_grant=draft.credit_grant)


class PlanPreviewView(APIView):
    required_scopes = {"POST": "read"}  # computes, writes nothing

    @extend_schema(
        operation_id="plans_preview",
        tags=["plans"],
        summary="Price the last invoiced period under a draft version (writes nothing)",
        description=(
            "Each subscription on the plan (or the one customer's): its last invoiced "
            "period's invoice as computed now and as the draft would compute it, with the "
            "difference per meter. Read from the usage counters in a read-only transaction; "
            "nothing is published or posted. See docs/exports.md (Usage preview)."
        ),
        request=PlanPreviewSerializer,
        responses={200: PlanPreviewAnswerSerializer, **errors(404, 422)},
    )
    def post(self, request, code: str):
        plan = Plan.objects.filter(code=code).order_by("-version").first()
        if plan is None:
            raise invoicing_errors.InvoicingNotFound(f"plan {code!r} does not exist", param="code")
        data = PlanPreviewSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        external_id = changes.pop("customer", None)
        customer = None
        if external_id is not None:
            customer = billing_selectors.get_customer(external_id=external_id, param="customer")
        result = preview.preview_plan_version(spec=draft_spec(plan, changes), customer=customer)
        answer = {
            "code": result.code,
            "totals": result.totals,
            "rows": result.rows,
            "skipped": [{"customer": c, "reason": r} for c, r in result.skipped],
            "truncated": result.truncated,
        }
        return Response(PlanPreviewAnswerSerializer(answer).data)


# --- admin pages ----------------------------------------------------------------------------


def _page(request, template: str, title: str, **context) -> TemplateResponse:
    return TemplateResponse(
        request, template, {**admin.site.each_context(request), "title": title, **context}
    )


def _midnight(day) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


class ExportForm(forms.Form):
    kind = forms.ChoiceField(choices=[(k, k) for k in exports.KINDS])
    start = forms.DateField(label="From (inclusive, UTC)", widget=forms.DateInput({"type": "date"}))
    end = forms.DateField(label="To (exclusive, UTC)", widget=forms.DateInput({"type": "date"}))

    def __init__(self, *args, kinds: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = [(k, k) for k in kinds]  # type: ignore[attr-defined]

    def clean(self):
        data = super().clean() or {}
        if data.get("start") and data.get("end") and data["end"] <= data["start"]:
            self.add_error("end", "To must be after From.")
        return data


# The view permissions each export needs: the data it holds, no narrower.
EXPORT_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "journal": ("ledger.view_transaction", "ledger.view_entry"),
    "journal-import": ("ledger.view_transaction", "ledger.view_entry"),
    "invoices": ("invoicing.view_invoice",),
    "credit-notes": ("invoicing.view_creditnote",),
    "payments": ("invoicing.view_payment",),
    "usage": ("metering.view_dailyusage",),
}
# The previews list every customer with their invoice totals / charges.
CUSTOMER_FIGURES = ("billing.view_customer", "invoicing.view_invoice")
PLAN_PREVIEW_PERMISSIONS = ("billing.view_plan", *CUSTOMER_FIGURES)
PRICE_PREVIEW_PERMISSIONS = (
    "metering.view_modelprice",
    "metering.view_modelusage",
    *CUSTOMER_FIGURES,
)


def allowed_exports(user) -> list[str]:
    """The kinds ``user`` may download: each needs the view permissions of what it holds."""
    return [kind for kind in exports.KINDS if user.has_perms(EXPORT_PERMISSIONS[kind])]


def exports_page(request: HttpRequest) -> HttpResponseBase:
    allowed = allowed_exports(request.user)
    if not allowed:
        raise PermissionDenied
    if request.GET.get("kind") in EXPORT_PERMISSIONS and request.GET["kind"] not in allowed:
        raise PermissionDenied
    form = ExportForm(request.GET if "kind" in request.GET else None, kinds=allowed)
    if form.is_bound and form.is_valid():
        d = form.cleaned_data
        try:
            export = exports.export(
                kind=d["kind"], start=_midnight(d["start"]), end=_midnight(d["end"])
            )
        except BillingError as error:
            form.add_error(None, error.message)
        else:
            return csv_response(export)
    return _page(
        request,
        "admin/invoicing/exports.html",
        "Exports for accounting",
        form=form,
        kinds=[(k, text) for k, text in EXPORT_DESCRIPTIONS if k in allowed],
    )


EXPORT_DESCRIPTIONS = [
    (
        "journal",
        "Every ledger entry of the period: exact debit and credit, and rounded to the "
        "minor unit (balanced per transaction).",
    ),
    (
        "journal-import",
        "A summary journal entry per day and currency, per account "
        "(QuickBooks / Xero general journal columns): what an accounting system imports.",
    ),
    ("invoices", "Finalized invoices by finalization time, with totals and the exact usage."),
    ("credit-notes", "Credit notes issued in the period."),
    ("payments", "Payments received in the period."),
    ("usage", "The daily usage counters: per customer, meter, day and dimension."),
]


class PlanDraftForm(PlanVersionForm):
    """The publish form's fields (the same reading of the charges), and a customer."""

    customer = forms.CharField(
        required=False, max_length=200, help_text="One customer's external_id; empty: all."
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("charges", "credit_grant"):  # a style attribute is inline style: the CSP
            attrs = self.fields[name].widget.attrs  # refuses it; the stylesheet sets the font
            attrs.pop("style", None)
            attrs["class"] = "finance-json"


@permission_required(PLAN_PREVIEW_PERMISSIONS, raise_exception=True)
def plan_preview_page(request: HttpRequest, plan_id: int) -> HttpResponse:
    plan = get_object_or_404(Plan, pk=plan_id)
    spec = services.plan_spec_of(plan)
    form = PlanDraftForm(
        request.POST or None,
        consumption_model=plan.consumption_model,
        initial={
            "name": spec.name,
            "description": spec.description,
            "base_fee": decimal_text(spec.base_fee),
            "trial_days": spec.trial_days,
            "units_per_credit": decimal_text(spec.units_per_credit),
            "charges": charges_json(spec.charges),
            "credit_grant": credit_grant_json(spec.credit_grant),
        },
    )
    result = None
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        changes = {
            k: d[k]
            for k in ("name", "description", "base_fee", "trial_days", "charges", "credit_grant")
        }
        if "units_per_credit" in d:
            changes["units_per_credit"] = d["units_per_credit"]
        try:
            customer = None
            if d["customer"]:
                customer = billing_selectors.get_customer(
                    external_id=d["customer"], param="customer"
                )
            result = preview.preview_plan_version(spec=draft_spec(plan, changes), customer=customer)
        except BillingError as error:
            form.add_error(None, f"{error.param or 'draft'}: {error.message}")
    return _page(
        request,
        "admin/invoicing/plan_preview.html",
        f"Preview a new version of {plan.code} against the last period",
        plan=plan,
        form=form,
        result=result,
    )


class PricePreviewForm(forms.Form):
    start = forms.DateField(label="From (inclusive, UTC)", widget=forms.DateInput({"type": "date"}))
    end = forms.DateField(label="To (exclusive, UTC)", widget=forms.DateInput({"type": "date"}))
    customer = forms.CharField(required=False, max_length=200, help_text="Empty: all customers.")

    def __init__(self, *args, price: ModelPrice, **kwargs):
        super().__init__(*args, **kwargs)
        for column in preview.PRICE_COLUMNS:
            unit = "per thousand requests" if column == "requests_kcount" else "per million"
            self.fields[column] = forms.DecimalField(
                required=False,
                min_value=Decimal(0),
                max_digits=32,
                decimal_places=18,
                label=f"{column} (USD {unit})",
                initial=decimal_text(getattr(price, column)),
            )

    def clean(self):
        data = super().clean() or {}
        if data.get("start") and data.get("end") and data["end"] <= data["start"]:
            self.add_error("end", "To must be after From.")
        return data


@permission_required(PRICE_PREVIEW_PERMISSIONS, raise_exception=True)
def price_preview_page(request: HttpRequest, price_id: int) -> HttpResponse:
    price = get_object_or_404(ModelPrice, pk=price_id)
    start, end = preview.last_month()
    form = PricePreviewForm(
        request.POST or None,
        price=price,
        initial={"start": start.date(), "end": end.date()},
    )
    result = None
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        try:
            customer = None
            if d["customer"]:
                customer = billing_selectors.get_customer(
                    external_id=d["customer"], param="customer"
                )
            result = preview.preview_model_price(
                price=price,
                prices={c: d[c] for c in preview.PRICE_COLUMNS},
                start=_midnight(d["start"]),
                end=_midnight(d["end"]),
                customer=customer,
            )
        except BillingError as error:
            form.add_error(None, error.message)
    return _page(
        request,
        "admin/invoicing/price_preview.html",
        f"Preview a price change of {price.provider}/{price.model}",
        price=price,
        form=form,
        result=result,
    )


def admin_urls() -> list:
    """The pages under /admin/finance/ (billing/project/urls.py), behind the admin's login."""
    view = admin.site.admin_view
    return [
        path("exports/", view(exports_page), name="finance-exports"),
        path("preview/plan/<int:plan_id>/", view(plan_preview_page), name="finance-plan-preview"),
        path(
            "preview/model-price/<int:price_id>/",
            view(price_preview_page),
            name="finance-price-preview",
        ),
    ]
