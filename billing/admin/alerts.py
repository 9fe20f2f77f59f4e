"""Alerts in the admin (``billing.alerts``): definitions created through the service and
changed only in what may change (name, threshold, currency, recipients, enabled; what an
alert watches is fixed), each with its subjects' states and its history of crossings; the
states (filter "triggered" for the active ones) and the firings listed read-only. A
customer's page lists its alerts (``CustomerAlertsMixin``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from billing import alerts, errors, limits
from billing.admin.common import (
    PriceField,
    ServiceFormMixin,
    money,
    quantity,
    report_service_error,
    time_cell,
    token_cell,
)
from billing.models import (
    Alert,
    AlertFiring,
    AlertKind,
    AlertScope,
    AlertSource,
    AlertState,
    AlertStatus,
    Customer,
    Meter,
)
from ledger.admin import ReadOnlyAdmin, ReadOnlyInline


def _addresses(text: str) -> list[str]:
    return [part for part in (p.strip() for p in text.replace("\n", ",").split(",")) if part]


class RecipientsField(forms.CharField):
    """E-mail addresses, separated by commas or lines."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("required", False)
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 2}))
        kwargs.setdefault("help_text", "E-mail addresses, separated by commas.")
        super().__init__(**kwargs)

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list) else value


class AlertCreateForm(forms.Form):
    name = forms.CharField(max_length=200, required=False)
    kind = forms.ChoiceField(choices=AlertKind.choices)
    scope = forms.ChoiceField(choices=AlertScope.choices)
    customer = forms.CharField(
        max_length=200, required=False, help_text="Scope customer: the customer's external id."
    )
    plan_code = forms.SlugField(max_length=100, required=False, help_text="Scope plan.")
    plan_version = forms.IntegerField(
        min_value=1, max_value=2**31 - 1, required=False, help_text="Empty: every version."
    )
    threshold = PriceField(
        required=False,
        limit=limits.MAX_AMOUNT,
        help_text="An amount, a number of credits or a share (0.8 = 80 %); empty for margins.",
    )
    currency = forms.CharField(
        max_length=16, required=False, help_text="Empty: the customer's own currency."
    )
    meter = forms.ModelChoiceField(
        Meter.objects.order_by("code"), required=False, to_field_name="code"
    )
    per_model = forms.BooleanField(required=False, help_text="Negative margin: per model.")
    recipients = RecipientsField()
    enabled = forms.BooleanField(required=False, initial=True)


class AlertChangeForm(forms.ModelForm):
    threshold = PriceField(limit=limits.MAX_AMOUNT)
    recipients = RecipientsField()

    class Meta:
        model = Alert
        fields = ["name", "threshold", "currency", "recipients", "enabled"]

    def clean_recipients(self) -> list[str]:
        try:
            return alerts.clean_recipients(_addresses(self.cleaned_data["recipients"] or ""))
        except errors.BillingError as error:
            raise forms.ValidationError(error.message) from None

    def clean(self):
        data = super().clean() or {}
        alert = self.instance
        try:
            alerts.check_definition(
                kind=alert.kind,
                scope=alert.scope,
                customer=alert.customer,
                plan_code=alert.plan_code,
                plan_version=alert.plan_version,
                threshold=data.get("threshold", alert.threshold),
                currency=data.get("currency", alert.currency) or "",
                meter=alert.meter,
                per_model=alert.per_model,
            )
        except errors.BillingError as error:
            field = error.param if error.param in self.fields else None
            self.add_error(field, error.message)
        return data


class AlertStateInline(ReadOnlyInline):
    model = AlertState
    fields = (
        "customer",
        "subject_key",
        "status",
        "value",
        "compared_with",
        "crossings",
        "triggered_at",
        "resolved_at",
    )
    readonly_fields = fields
    ordering = ("-status", "-id")  # triggered first

    @admin.display(description="value")
    def value(self, state):
        return "" if state.last_value is None else money(state.last_value)

    @admin.display(description="limit")
    def compared_with(self, state):
        return "" if state.limit is None else money(state.limit)


class AlertFiringInline(ReadOnlyInline):
    model = AlertFiring
    fk_name = "alert"
    fields = ("created_at", "action", "customer", "crossing", "value", "limit", "emailed_at")
    readonly_fields = fields
    ordering = ("-id",)
    show_change_link = False


@admin.register(Alert)
class AlertAdmin(ServiceFormMixin, admin.ModelAdmin):
    list_display = (
        "__str__",
        "kind",
        "watches",
        "threshold_display",
        "enabled",
        "triggered_now",
        "source",
    )
    list_filter = ("kind", "scope", "enabled", "source")
    search_fields = ("name", "customer__external_id", "plan_code")
    list_select_related = ("customer", "meter")
    ordering = ("-id",)
    form = AlertChangeForm
    fieldsets = [
        (
            "Watches (fixed)",
            {
                "fields": (
                    "kind",
                    "scope",
                    "customer",
                    "plan_code",
                    "plan_version",
                    "meter",
                    "per_model",
                    "source",
                    "created_at",
                )
            },
        ),
        (None, {"fields": ("name", "threshold", "currency", "recipients", "enabled")}),
    ]
    readonly_fields = (
        "kind",
        "scope",
        "customer",
        "plan_code",
        "plan_version",
        "meter",
        "per_model",
        "source",
        "created_at",
    )
    inlines = [AlertStateInline, AlertFiringInline]

    @admin.display(description="watches")
    def watches(self, alert: Alert) -> str:
        if alert.scope == AlertScope.CUSTOMER and alert.customer is not None:
            return alert.customer.external_id
        if alert.scope == AlertScope.PLAN:
            version = "" if alert.plan_version is None else f" v{alert.plan_version}"
            return f"plan {alert.plan_code}{version}"
        return "every customer" + (", per model" if alert.per_model else "")

    @admin.display(description="threshold", ordering="threshold")
    def threshold_display(self, alert: Alert) -> str:
        unit = alert.currency or (alert.meter.code if alert.meter else "")
        return f"{alert.threshold.normalize():f} {unit}".strip()

    @admin.display(description="triggered now")
    def triggered_now(self, alert: Alert) -> int:
        return alert.states.filter(status=AlertStatus.TRIGGERED).count()

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = AlertCreateForm(request.POST or None)

        def create() -> HttpResponse:
            data = form.cleaned_data
            customer = None
            if data["customer"]:
                customer = Customer.objects.filter(external_id=data["customer"]).first()
                if customer is None:
                    raise errors.CustomerNotFound(
                        f"no customer {data['customer']!r}", param="customer"
                    )
            alert = alerts.create_alert(
                name=data["name"],
                kind=data["kind"],
                scope=data["scope"],
                customer=customer,
                plan_code=data["plan_code"] or "",
                plan_version=data["plan_version"],
                threshold=Decimal(0) if data["threshold"] is None else data["threshold"],
                currency=data["currency"].strip().upper(),
                meter=data["meter"],
                per_model=data["per_model"],
                recipients=_addresses(data["recipients"] or ""),
                enabled=data["enabled"],
                source=AlertSource.ADMIN,
            )
            self.log_addition(request, alert, "Created in the admin.")
            return HttpResponseRedirect(self.change_url(alert))

        return self.run_service(request, form, create) or self.service_form_response(
            request,
            form=form,
            title="Add alert",
            submit_label="Create alert",
            intro="Fires once each time the value crosses the threshold (a value equal to it "
            "is no crossing) and re-arms when it recovers; e-mails the recipients and emits "
            "alert.triggered. Evaluated every minute.",
        )

    def save_model(self, request, obj, form, change):
        if not change:  # additions go through add_view
            raise PermissionDenied
        try:
            alerts.update_alert(
                alert=obj,
                name=form.cleaned_data["name"],
                threshold=form.cleaned_data["threshold"],
                currency=form.cleaned_data["currency"] or "",
                recipients=form.cleaned_data["recipients"],
                enabled=form.cleaned_data["enabled"],
            )
        except errors.BillingError as error:  # checked by the form; a race at most
            report_service_error(request, form, error)

    def delete_model(self, request, obj):
        alerts.delete_alert(alert=obj)

    def delete_queryset(self, request, queryset):
        for alert in queryset:
            alerts.delete_alert(alert=alert)


@admin.register(AlertState)
class AlertStateAdmin(ReadOnlyAdmin):
    """Where each subject stands; filter status "triggered" for the alerts active now."""

    list_display = (
        "alert",
        "customer",
        "subject",
        "status",
        "value",
        "limit_shown",
        "crossings",
        "triggered",
    )
    # values without their 24 stored places, the subject key cut short, the last trigger to
    # the minute (the resolution on the state's page): the list was 1,440 px wide in the
    # 900 px a 1280 px screen leaves it beside the sidebar

    @admin.display(description="subject", ordering="subject_key")
    def subject(self, state: AlertState) -> str:
        return token_cell(state.subject_key)

    @admin.display(description="last value", ordering="last_value")
    def value(self, state: AlertState) -> str:
        return quantity(state.last_value)

    @admin.display(description="limit", ordering="limit")
    def limit_shown(self, state: AlertState) -> str:
        return quantity(state.limit)

    @admin.display(description="triggered", ordering="triggered_at")
    def triggered(self, state: AlertState) -> str:
        return time_cell(state.triggered_at)

    list_filter = ("status", "alert__kind")
    search_fields = ("customer__external_id", "subject_key", "alert__name")
    list_select_related = ("alert", "customer")
    ordering = ("-triggered_at", "-id")


@admin.register(AlertFiring)
class AlertFiringAdmin(ReadOnlyAdmin):
    """The history: every crossing, triggered and resolved, and when it was e-mailed."""

    list_display = (
        "created",
        "alert",
        "action",
        "customer",
        "crossing",
        "value_shown",
        "limit_shown",
        "emailed",
    )
    # as the states', the unit in the value's cell: the list was 1,383 px wide in the 900 px
    # beside the sidebar

    @admin.display(description="at", ordering="created_at")
    def created(self, firing: AlertFiring) -> str:
        return time_cell(firing.created_at)

    @admin.display(description="value", ordering="value")
    def value_shown(self, firing: AlertFiring) -> str:
        return f"{quantity(firing.value)} {firing.unit}".strip()

    @admin.display(description="limit", ordering="limit")
    def limit_shown(self, firing: AlertFiring) -> str:
        return quantity(firing.limit)

    @admin.display(description="e-mailed", ordering="emailed_at")
    def emailed(self, firing: AlertFiring) -> str:
        return time_cell(firing.emailed_at)

    list_filter = ("action", "alert__kind")
    search_fields = ("customer__external_id", "alert__name")
    list_select_related = ("alert", "customer")
    ordering = ("-id",)


class CustomerAlertsMixin:
    """The customer's page: its own alerts, each with how many of its subjects are
    triggered now, and the link to add one (plan alerts reach it too: see the states)."""

    @admin.display(description="alerts")
    def customer_alerts(self, customer: Customer) -> str:
        if customer.pk is None:
            return "—"
        own = Alert.objects.filter(customer=customer).order_by("id")
        triggered = set(
            AlertState.objects.filter(customer=customer, status=AlertStatus.TRIGGERED).values_list(
                "alert_id", flat=True
            )
        )
        rows = format_html_join(
            "",
            '<li><a href="{}">{}</a> — {} {}{}</li>',
            (
                (
                    reverse("admin:billing_alert_change", args=[alert.pk]),
                    str(alert),
                    alert.get_kind_display(),
                    f"{alert.threshold.normalize():f}",
                    " (triggered)" if alert.pk in triggered else "",
                )
                for alert in own
            ),
        )
        active = AlertState.objects.filter(customer=customer, status=AlertStatus.TRIGGERED)
        return format_html(
            '<ul>{}</ul><p>{} triggered now (own and plan alerts). <a href="{}">Add an '
            "alert</a></p>",
            rows or format_html("<li>{}</li>", "none of its own"),
            active.count(),
            reverse("admin:billing_alert_add"),
        )
