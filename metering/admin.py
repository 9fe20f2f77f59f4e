"""Meters in the admin. Created through ``billing.services.create_meter``; afterwards only
the name and unit may change (``rename_meter``): what a meter counts never changes, or past
usage would change meaning."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from billing import services
from billing.admin.common import (
    ServiceFormMixin,
    StrictJSONField,
    date_cell,
    money_cell,
    token_cell,
)
from billing.models import Aggregation, Meter
from invoicing.money import exact_amount
from ledger.admin import EstimatedCountPaginator, ReadOnlyAdmin, system_currencies, values_filter
from metering import catalog
from metering.alerts import CATALOG_CURRENCY
from metering.models import (
    Event,
    IncomingEvent,
    ModelPrice,
    ModelUsage,
    PeriodUsage,
)

MEANING_FIELDS = ("code", *services.METER_FIELDS)  # fixed once the meter exists


class MeterCreateForm(forms.Form):
    """Input only: the service validates what a meter may be (a sum needs its property, the
    code is unique) and its errors land on these fields."""

    code = forms.SlugField(max_length=100, help_text="Stable; plans refer to it.")
    name = forms.CharField(max_length=200, required=False)
    event_name = forms.CharField(max_length=200, help_text="Which usage events it reads.")
    aggregation = forms.ChoiceField(choices=Aggregation.choices)
    property = forms.CharField(
        max_length=200, required=False, help_text=Meter._meta.get_field("property").help_text
    )
    filters = StrictJSONField(
        required=False, initial=dict, help_text=Meter._meta.get_field("filters").help_text
    )
    group_by = StrictJSONField(
        required=False, initial=list, help_text=Meter._meta.get_field("group_by").help_text
    )
    unit = forms.CharField(max_length=30, required=False, help_text="e.g. tokens")

    def clean_filters(self):
        filters = self.cleaned_data["filters"]
        if filters is None:
            return {}
        if not isinstance(filters, dict):
            raise forms.ValidationError('A JSON object, e.g. {"tier": ["pro"]}.')
        return filters

    def clean_group_by(self):
        group_by = self.cleaned_data["group_by"]
        if group_by is None:
            return []
        if not isinstance(group_by, list) or not all(isinstance(g, str) for g in group_by):
            raise forms.ValidationError('A JSON list of property paths, e.g. ["model"].')
        return group_by


@admin.register(Meter)
class MeterAdmin(ServiceFormMixin, admin.ModelAdmin):
    list_display = ("code", "name", "event_name", "aggregation", "property", "unit", "created_at")
    list_filter = ("aggregation",)
    search_fields = ("code", "name", "event_name", "property")
    fields = (
        "code",
        "name",
        "unit",
        "event_name",
        "aggregation",
        "property",
        "filters",
        "group_by",
        "created_at",
    )
    readonly_fields = (*MEANING_FIELDS, "created_at")

    def has_delete_permission(self, request, obj=None):
        return False  # plans and usage refer to it

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = MeterCreateForm(request.POST or None)

        def create() -> HttpResponse:
            meter = services.create_meter(**form.cleaned_data)
            self.log_addition(request, meter, "Created in the admin.")
            messages.success(request, f"Meter {meter.code} created.")
            return HttpResponseRedirect(self.change_url(meter))

        return self.run_service(request, form, create) or self.service_form_response(
            request,
            form=form,
            title="Add meter",
            submit_label="Create meter",
            intro="What a meter counts (event, aggregation, property, filters, grouping) "
            "cannot change once it exists; its name and unit can.",
        )

    def save_model(self, request, obj, form, change):
        services.rename_meter(meter=obj, name=obj.name, unit=obj.unit)


# --- the model price catalog --------------------------------------------------------------------

PRICE_FIELDS = (
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "cache_write_mtok",
    "cache_write_1h_mtok",
    "reasoning_mtok",
    "requests_kcount",
    "tiers",
    "time_windows",
)


def _per_million(value):
    return (
        "—" if value is None else format_html('<span class="money">{}</span>', exact_amount(value))
    )


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Finance staff see what each provider charges and add models or new price versions.
    A saved version's prices never change (events were rated with them): a new price is a
    new row with a later ``effective_from``."""

    list_display = (
        "provider",
        "model_name",
        "effective",
        "input_price",
        "output_price",
        "cache_read_price",
        "cache_write_price",
    )
    # the source is a filter and on the version's page; with it, full times and the longest
    # model names the list was 1,000 px wide in the 900 px beside the sidebar

    @admin.display(description="model", ordering="model")
    def model_name(self, price: ModelPrice):
        return token_cell(price.model)

    @admin.display(description="effective", ordering="effective_from")
    def effective(self, price: ModelPrice):
        return date_cell(price.effective_from)

    # The catalog keeps USD per million tokens (18 places): shown without trailing zeros.
    @admin.display(description="input $/M", ordering="input_mtok")
    def input_price(self, price: ModelPrice):
        return _per_million(price.input_mtok)

    @admin.display(description="output $/M", ordering="output_mtok")
    def output_price(self, price: ModelPrice):
        return _per_million(price.output_mtok)

    @admin.display(description="cache read $/M", ordering="cache_read_mtok")
    def cache_read_price(self, price: ModelPrice):
        return _per_million(price.cache_read_mtok)

    @admin.display(description="cache write $/M", ordering="cache_write_mtok")
    def cache_write_price(self, price: ModelPrice):
        return _per_million(price.cache_write_mtok)

    list_filter = ("provider", "source")
    search_fields = ("model", "name", "provider")
    date_hierarchy = "effective_from"
    formfield_overrides = {models.JSONField: {"form_class": StrictJSONField}}
    fields = (
        "provider",
        "model",
        "name",
        "effective_from",
        *PRICE_FIELDS,
        "match",
        "position",
        "source",
        "notes",
        "created_at",
    )

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ("source", "created_at")
        return ("provider", "model", "effective_from", *PRICE_FIELDS, "source", "created_at")

    def has_delete_permission(self, request, obj=None):
        return False  # rated events refer to the version that priced them

    actions = ["preview_price_change_action"]

    @admin.action(description="Preview a price change…")
    def preview_price_change_action(self, request, queryset):
        # the page is invoicing's (invoicing/finance_views.py): it reprices customers' usage
        if queryset.count() != 1:
            messages.warning(request, "Select exactly one price version.")
            return None
        return HttpResponseRedirect(reverse("finance-price-preview", args=[queryset.get().pk]))

    def save_model(self, request, obj, form, change):
        if not change:
            obj.source = "manual"
        super().save_model(request, obj, form, change)
        catalog.invalidate()


# --- usage: events and counters (read-only) ---------------------------------------------


EventNameFilter = values_filter(
    "event_name", "event name", lambda: Meter.objects.values_list("event_name", flat=True)
)
ProviderFilter = values_filter(
    "provider", "provider", lambda: ModelPrice.objects.values_list("provider", flat=True)
)
CurrencyFilter = values_filter("currency", "currency", system_currencies)


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "timestamp",
        "customer",
        "model_name",
        "total_tokens",
        "amount_display",
        "cost_display",
        "transaction_link",
    )
    # The event name is a filter and on the event's page: with its column the list was 943 px
    # wide in the 900 px beside the sidebar.
    # Events are many: no date hierarchy (the distinct dates of every event), filters whose
    # choices come from small tables, a bounded count (docs/benchmarks.md, Session 11).
    list_filter = (
        EventNameFilter,
        ProviderFilter,
        CurrencyFilter,
        ("timestamp", admin.DateFieldListFilter),
    )
    search_fields = ("idempotency_key", "customer__external_id", "model")
    list_select_related = ("customer",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    @admin.display(description="model", ordering="model")
    def model_name(self, event: Event):
        return token_cell(event.model)

    @admin.display(description="tokens")
    def total_tokens(self, event: Event) -> int:
        return (
            event.input_tokens
            + event.cache_read_tokens
            + event.cache_write_tokens
            + event.output_tokens
        )

    @admin.display(description="amount", ordering="amount")
    def amount_display(self, event: Event):
        return money_cell(event.amount, event.currency) if event.currency else "—"

    @admin.display(description="provider cost", ordering="cost")
    def cost_display(self, event: Event):
        return money_cell(event.cost, CATALOG_CURRENCY)

    @admin.display(description="ledger")
    def transaction_link(self, event: Event):
        if event.ledger_transaction_id is None:
            return "—"
        url = reverse("admin:ledger_transaction_change", args=[event.ledger_transaction_id])
        return format_html('<a href="{}">{}</a>', url, event.ledger_transaction_id)


@admin.register(IncomingEvent)
class IncomingEventAdmin(ReadOnlyAdmin):
    """Events accepted asynchronously and not rated yet, or refused by rating (with why)."""

    list_display = (
        "id",
        "received_at",
        "customer",
        "idempotency_key",
        "event_name",
        "status",
        "error_code",
        "rated_at",
    )
    list_filter = ("status", "error_code", "event_name")
    search_fields = ("idempotency_key", "customer__external_id")
    list_select_related = ("customer",)
    show_full_result_count = False


@admin.register(PeriodUsage)
class PeriodUsageAdmin(ReadOnlyAdmin):
    list_display = (
        "subscription",
        "meter",
        "period",
        "quantity_display",
        "charged_display",
        "event_count",
    )
    # a row per subscription, meter and period, every period kept: the currency filter's
    # choices from the system accounts (not a DISTINCT over every row), a bounded count
    # (not two COUNT(*) of the table on every page)
    list_filter = ("meter", CurrencyFilter)
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    @admin.display(description="period", ordering="period_start")
    def period(self, row: PeriodUsage):
        """One cell, as the invoices list's: the two full times were 340 px of the list."""
        return format_html(
            '<span class="nowrap">{}</span> → <span class="nowrap">{}</span>',
            f"{row.period_start:%Y-%m-%d}",
            f"{row.period_end:%Y-%m-%d}",
        )

    @admin.display(description="quantity", ordering="quantity")
    def quantity_display(self, row: PeriodUsage):
        return exact_amount(row.quantity)

    @admin.display(description="charged", ordering="charged")
    def charged_display(self, row: PeriodUsage):
        return money_cell(row.charged, row.currency)

    list_select_related = ("subscription__customer", "subscription__plan", "meter")
    search_fields = ("subscription__customer__external_id",)


@admin.register(ModelUsage)
class ModelUsageAdmin(ReadOnlyAdmin):
    """Margin per customer, model and day: what was charged beside what the provider costs."""

    list_display = (
        "day",
        "customer",
        "provider",
        "model",
        "event_count",
        "amount_display",
        "cost_display",
        "margin",
    )
    # a row per customer, model and day: millions (as the events' list, no date hierarchy)
    list_filter = (ProviderFilter, CurrencyFilter, ("day", admin.DateFieldListFilter))
    search_fields = ("customer__external_id", "model")
    list_select_related = ("customer",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    @admin.display(description="margin")
    def margin(self, row: ModelUsage):
        if row.currency != CATALOG_CURRENCY:
            return "— (charged in credits)"
        margin = row.amount - row.cost
        return format_html(
            '<span class="{}">{}</span>',
            "negative-margin" if margin < 0 else "",
            money_cell(margin, row.currency),
        )

    @admin.display(description="amount", ordering="amount")
    def amount_display(self, row: ModelUsage):
        return money_cell(row.amount, row.currency)

    @admin.display(description="provider cost", ordering="cost")
    def cost_display(self, row: ModelUsage):
        return money_cell(row.cost, CATALOG_CURRENCY)
