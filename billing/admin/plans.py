"""Plans in the admin: read-only, since a published version never changes. "Publish new
version" opens a version's spec in a form and publishes it through
``billing.services.publish_plan``; the charges are typed as the API takes them (its
``ChargeSerializer``), so the admin and the API accept the same plans."""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from billing import selectors, services
from billing.admin.common import (
    CURRENCY_RE,
    PriceField,
    ServiceFormMixin,
    check_currency,
    date_cell,
    decimal_text,
    money_cell,
    quantity,
    strict_json,
    unit_price_cell,
)
from billing.api.serializers import ChargeSerializer
from billing.models import (
    BillingTime,
    CommitmentBilling,
    ConsumptionModel,
    Interval,
    Plan,
    PlanCharge,
    PriceModel,
    RoundingRule,
)
from ledger.admin import ReadOnlyInline


def _units(value: Decimal, unit: str) -> str:
    return f"{quantity(value)} {unit}".strip()


def tiers_text(charge: PlanCharge) -> str:
    """Each tier as "up to 100,000,000 tokens: 0.30 USD / M tokens": its price read as the
    charge's unit price is (``unit_price_cell``: per million tokens, exact on hover)."""
    currency, unit = charge.plan.currency, charge.meter.unit
    lines = []
    previous = None
    for tier in charge.tiers.all():
        bound = (
            f"up to {_units(tier.up_to, unit)}"
            if tier.up_to is not None
            else (f"above {_units(previous, unit)}" if previous is not None else "all units")
        )
        price: str
        if tier.package_size is not None:
            price = format_html(
                "{} per started block of {}",
                money_cell(tier.unit_price, currency),
                _units(tier.package_size, unit),
            )
        else:
            price = unit_price_cell(tier.unit_price, currency, unit)
        if tier.flat_fee:
            price = format_html("{} + {} flat", price, money_cell(tier.flat_fee, currency))
        lines.append((bound, price))
        previous = tier.up_to
    if not lines:
        return "—"
    return format_html_join(mark_safe("<br>"), "{}: {}", lines)


TIERED = (PriceModel.GRADUATED, PriceModel.VOLUME)


def charge_terms(charge: PlanCharge) -> str:
    """The optional terms of a charge, those set only, in one cell: a margin over the
    catalog, a flat fee at zero usage, a minimum, proration."""
    terms = []
    if charge.margin_percent is not None:
        terms.append(f"margin {decimal_text(charge.margin_percent)} %")
    if charge.flat_fee_at_zero:
        terms.append("first tier's flat fee at zero usage")
    if charge.minimum_amount is not None:
        terms.append(
            format_html("minimum {}", money_cell(charge.minimum_amount, charge.plan.currency))
        )
    if charge.prorated:
        terms.append("prorated")
    if charge.interval:
        count = charge.interval_count
        terms.append(
            f"billed every {count} {charge.interval}"
            if count != 1
            else f"billed every {charge.interval}"
        )
    return format_html_join(mark_safe("<br>"), "{}", ((t,) for t in terms)) if terms else "—"


class PlanChargeInline(ReadOnlyInline):
    model = PlanCharge
    # Six columns: the optional terms share one (ten ran the table off a laptop screen).
    fields = ("meter", "price_model", "included", "unit_price_display", "tiers", "terms")
    readonly_fields = fields
    show_change_link = False
    verbose_name_plural = "charges (read-only: a published version never changes)"

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("meter", "plan")
            .prefetch_related("tiers")
            .order_by("id")
        )

    @admin.display(description="included")
    def included(self, charge):
        return _units(charge.included_quantity, charge.meter.unit)

    @admin.display(description="unit price")
    def unit_price_display(self, charge):
        """A tiered charge is priced by its tiers alone: no unit price of its own."""
        if charge.price_model in TIERED:
            return "—"
        if charge.price_model == PriceModel.PACKAGE and charge.package_size is not None:
            return format_html(
                "{} per {}",
                money_cell(charge.unit_price, charge.plan.currency),
                _units(charge.package_size, charge.meter.unit),
            )
        return unit_price_cell(charge.unit_price, charge.plan.currency, charge.meter.unit)

    @admin.display(description="terms")
    def terms(self, charge):
        return charge_terms(charge)

    @admin.display(description="tiers")
    def tiers(self, charge):
        return tiers_text(charge)


def charges_json(charges: Iterable[services.ChargeSpec]) -> str:
    """The charges as the JSON the form edits: decimals as exact strings, empty keys left out."""
    items = []
    for charge in charges:
        item: dict[str, Any] = {
            "meter": charge.meter,
            "price_model": charge.price_model,
            "included_quantity": decimal_text(charge.included_quantity),
            "unit_price": decimal_text(charge.unit_price),
        }
        if charge.package_size is not None:
            item["package_size"] = decimal_text(charge.package_size)
        if charge.margin_percent is not None:
            item["margin_percent"] = decimal_text(charge.margin_percent)
        if charge.tiers:
            item["tiers"] = [_tier_json(t) for t in charge.tiers]
        if charge.flat_fee_at_zero:
            item["flat_fee_at_zero"] = True
        if charge.minimum_amount is not None:
            item["minimum_amount"] = decimal_text(charge.minimum_amount)
        if charge.prorated:
            item["prorated"] = True
        if charge.interval:
            item["interval"] = charge.interval
            if charge.interval_count != 1:
                item["interval_count"] = charge.interval_count
        items.append(item)
    return json.dumps(items, indent=2)


def _tier_json(tier: services.TierSpec) -> dict[str, Any]:
    item = {
        "up_to": decimal_text(tier.up_to),
        "unit_price": decimal_text(tier.unit_price),
        "flat_fee": decimal_text(tier.flat_fee),
    }
    if tier.package_size is not None:
        item["package_size"] = decimal_text(tier.package_size)
    return item


def _flatten_errors(errors: Any, where: str) -> Iterable[str]:
    """DRF's nested error lists and dicts as "charges[0].meter: …" lines."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            if key == "non_field_errors":
                yield from _flatten_errors(value, where)
            elif isinstance(key, int):  # an item of a list
                yield from _flatten_errors(value, f"{where}[{key}]")
            else:
                yield from _flatten_errors(value, f"{where}.{key}")
    elif isinstance(errors, list):
        for index, value in enumerate(errors):
            if isinstance(value, str):
                yield f"{where}: {value}"
            else:
                yield from _flatten_errors(value, f"{where}[{index}]")
    else:
        yield f"{where}: {errors}"


CHARGES_HELP = (
    "A JSON list, one object per meter: "
    '<code>{"meter": "tokens", "price_model": "per_unit", "included_quantity": "1000000", '
    '"unit_price": "0.000002"}</code>. price_model is one of '
    + ", ".join(PriceModel.values)
    + '; graduated and volume charges take <code>"tiers": [{"up_to": "1000", "unit_price": '
    '"0.01", "flat_fee": "0"}, …, {"up_to": null, …}]</code> (a tier may take its own '
    "package_size: its units counted in blocks, rounded up, unit_price per block); package "
    "charges take package_size; margin_percent is optional; flat_fee_at_zero (true or false) "
    "invoices the first tier's flat fee even without usage; minimum_amount is the least the "
    "charge is invoiced per period; prorated (true or false) prorates its amount for a "
    "period billed in part; interval (with interval_count) bills the charge on its own "
    "cadence, a whole multiple of the billing period (GPU hours quarterly on a monthly "
    "plan). Write decimals as strings: they "
    "are kept exactly."
)


CREDIT_GRANT_HELP = (
    "Optional, credits and balance plans: the plan's recurring grant as a JSON object, "
    'e.g. <code>{"amount": "1000", "cadence": "month", "expiry": "period_end", '
    '"rollover": "capped", "rollover_cap": "500", "rollover_periods": 2}</code>. cadence is '
    "period, month or once; expiry period_end, days (with expiry_days) or never; rollover "
    "none, all or capped (with rollover_cap). The same fields as the pricing file and the API "
    "(docs/pricing-file.md). Leave empty for none."
)


def credit_grant_json(spec: services.CreditGrantSpec | None) -> str:
    from billing.pricing.grants import credit_grant_as_json

    data = credit_grant_as_json(spec)
    return "" if data is None else json.dumps(data, indent=2)


class PlanVersionForm(forms.Form):
    """A new version of an existing plan. Code, currency, interval and consumption model
    stay: subscriptions move between versions of one plan, which must bill alike."""

    # Not stripped: an untouched form must reproduce the published spec exactly.
    name = forms.CharField(max_length=200, strip=False)
    description = forms.CharField(
        required=False, strip=False, widget=forms.Textarea(attrs={"rows": 3})
    )
    base_fee = PriceField(min_value=Decimal(0), help_text="Per interval, exact.")
    trial_days = forms.IntegerField(min_value=0, max_value=3650)
    units_per_credit = PriceField(
        required=False, help_text="Credits plans: how many units one credit buys."
    )
    charges = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 16, "cols": 90, "style": "font-family: monospace"}),
        help_text=CHARGES_HELP,
    )
    credit_grant = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "cols": 90, "style": "font-family: monospace"}),
        help_text=CREDIT_GRANT_HELP,
    )
    rounding = forms.ChoiceField(
        choices=[("", "The currency's rule (half to even unless set)"), *RoundingRule.choices],
        initial="",
        required=False,  # left out: the currency's rule, else half_even
        help_text="How its invoices round each line and the tax to the minor unit.",
    )
    minimum_amount = PriceField(
        required=False,
        help_text="Optional: the least a subscription is invoiced per period before tax; "
        "the shortfall is its own line.",
    )
    commitment_amount = PriceField(
        required=False,
        help_text="Optional, metered plans: a prepaid commitment per period, drawn down by "
        "usage charges; overage beyond it, what is left expires.",
    )
    commitment_billing = forms.ChoiceField(
        choices=CommitmentBilling.choices,
        initial=CommitmentBilling.IN_ARREARS,
        required=False,  # left out: in_arrears, the default
        help_text="When the commitment is invoiced: at the period's close, or when the "
        "period opens (paid up front).",
    )
    # Ranges are validate_plan_spec's (the pricing file's and the API's message).
    billing_time = forms.ChoiceField(
        choices=BillingTime.choices,
        initial=BillingTime.ANNIVERSARY,
        required=False,  # left out: anniversary, the default
        help_text="What new subscriptions count their periods from (they may choose).",
    )
    billing_anchor_day = forms.IntegerField(
        required=False,
        help_text="Calendar billing: day of the month 1–31 (month, quarter, year) or ISO "
        "weekday 1 Monday … 7 Sunday (week). Empty: the 1st, or Monday.",
    )

    def __init__(self, *args, consumption_model: str, **kwargs):
        super().__init__(*args, **kwargs)
        if consumption_model != ConsumptionModel.CREDITS:
            del self.fields["units_per_credit"]

    def clean_description(self) -> str:
        # Browsers send a textarea's line breaks as CRLF.
        return self.cleaned_data["description"].replace("\r\n", "\n")

    def clean_charges(self) -> list[dict[str, Any]]:
        raw = strict_json(self.cleaned_data["charges"] or "[]", path="charges")
        if not isinstance(raw, list):
            raise forms.ValidationError("The charges must be a JSON list.")
        # The API's own input shape, so the admin and the API accept the same charges.
        serializer = ChargeSerializer(data=raw, many=True)
        if not serializer.is_valid():
            raise forms.ValidationError(list(_flatten_errors(serializer.errors, "charges")))
        return serializer.validated_data

    def clean_credit_grant(self) -> services.CreditGrantSpec | None:
        from billing.pricing.grants import PricingFileInvalid, credit_grant_from_json

        text = (self.cleaned_data.get("credit_grant") or "").strip()
        if not text or text == "null":
            return None
        raw = strict_json(text, path="credit_grant")
        try:  # the reader the pricing file and the API use
            return credit_grant_from_json(raw)
        except PricingFileInvalid as exc:
            raise forms.ValidationError(f"{exc.location or 'credit_grant'}: {exc.reason}") from None


class PlanCreateForm(PlanVersionForm):
    code = forms.SlugField(max_length=100, help_text="Stable; versions share it.")
    currency = forms.RegexField(CURRENCY_RE, initial="USD")
    interval = forms.ChoiceField(choices=Interval.choices, initial=Interval.MONTH)
    interval_count = forms.IntegerField(
        required=False,  # left out: 1
        initial=1,
        help_text="A period lasts this many intervals (2 with week: fortnightly).",
    )
    consumption_model = forms.ChoiceField(
        choices=ConsumptionModel.choices, initial=ConsumptionModel.METERED
    )
    # What is allowed is validate_plan_spec's (the pricing file's and the API's message).
    charges_interval = forms.ChoiceField(
        choices=[("", "The plan's own interval"), *Interval.choices],
        required=False,
        help_text="Metered plans: usage charges billed on a finer cadence dividing the "
        "plan's period (a yearly plan's usage monthly); the base fee stays per plan period.",
    )
    charges_interval_count = forms.IntegerField(
        required=False,  # left out: 1
        initial=1,
        help_text="With a charges interval: the charges' period lasts this many of them.",
    )

    field_order = [
        "code",
        "name",
        "description",
        "currency",
        "interval",
        "consumption_model",
        "base_fee",
        "trial_days",
        "units_per_credit",
        "charges",
        "credit_grant",
        "rounding",
        "minimum_amount",
        "commitment_amount",
        "commitment_billing",
        "interval_count",
        "billing_time",
        "billing_anchor_day",
        "charges_interval",
        "charges_interval_count",
    ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, consumption_model=ConsumptionModel.CREDITS, **kwargs)

    def clean(self):
        super().clean()
        data = self.cleaned_data
        credits = data.get("consumption_model") == ConsumptionModel.CREDITS
        if data.get("units_per_credit") is not None and not credits:
            self.add_error("units_per_credit", "Only credits plans have units per credit.")
        return data

    def clean_currency(self) -> str:
        return check_currency(self.cleaned_data["currency"])

    def clean_code(self) -> str:
        code = self.cleaned_data["code"]
        if Plan.objects.filter(code=code).exists():
            raise forms.ValidationError(
                f"Plan {code!r} exists; publish a new version from its page instead."
            )
        return code


@admin.register(Plan)
class PlanAdmin(ServiceFormMixin, admin.ModelAdmin):
    """Read-only: a published version never changes. "Publish new version" opens the
    version's spec in a form and publishes it through ``billing.services.publish_plan``."""

    list_display = (
        "code",
        "version",
        "name",
        "interval",
        "base_fee_display",
        "consumption",
        "portal",
        "published",
    )
    # the currency is in the base fee's cell; with its own column and full times the list
    # was 948 px wide in the 900 px a 1280 px screen leaves beside the sidebar
    list_filter = ("consumption_model", "interval", "currency", "self_serve")
    search_fields = ("code", "name")
    fields = (
        "code",
        "version",
        "name",
        "description",
        "currency",
        "interval",
        "base_fee_display",
        "trial_days",
        "consumption_model",
        "units_per_credit",
        "credit_grant_display",
        "rounding",
        "minimum_amount",
        "commitment_amount",
        "commitment_billing",
        "interval_count",
        "billing_time",
        "billing_anchor_day",
        "charges_interval",
        "charges_interval_count",
        "metadata",
        "self_serve",
        "spec_hash",
        "published_at",
        "published_by",
    )
    readonly_fields = fields
    inlines = [PlanChargeInline]
    actions = [
        "publish_new_version_action",
        "preview_new_version_action",
        "offer_in_portal_action",
        "stop_offering_action",
    ]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # subscriptions and invoices point at versions

    @admin.display(description="recurring credit grant")
    def credit_grant_display(self, plan):
        spec = services.credit_grant_spec_of(plan)
        if spec is None:
            return "—"
        return credit_grant_json(spec)

    @admin.display(description="consumption", ordering="consumption_model")
    def consumption(self, plan):
        """The model's name ("Metered"), its description on hover and the plan's page."""
        label = plan.get_consumption_model_display()
        return format_html('<span title="{}">{}</span>', label, label.partition(":")[0])

    @admin.display(description="portal", boolean=True, ordering="self_serve")
    def portal(self, plan):
        return plan.self_serve

    @admin.display(description="published", ordering="published_at")
    def published(self, plan):
        return date_cell(plan.published_at)

    @admin.display(description="base fee", ordering="base_fee")
    def base_fee_display(self, plan):
        return money_cell(plan.base_fee, plan.currency)

    def get_urls(self):
        return [
            path(
                "<path:object_id>/publish/",
                self.admin_site.admin_view(self.publish_view),
                name="billing_plan_publish",
            ),
            *super().get_urls(),
        ]

    def _published(self, request, plan: Plan, created: bool) -> HttpResponse:
        if created:
            self.log_addition(request, plan, f"Published version {plan.version} in the admin.")
            messages.success(request, f"Published {plan.code} version {plan.version}.")
        else:
            messages.info(request, f"Plan {plan.code} unchanged, still version {plan.version}.")
        return HttpResponseRedirect(self.change_url(plan))

    def publish_view(self, request, object_id):
        if not self.has_add_permission(request):
            raise PermissionDenied
        plan = self.object_or_404(request, object_id)
        spec = services.plan_spec_of(plan)
        latest = services.latest_plan(code=plan.code)
        form = PlanVersionForm(
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
                "rounding": spec.rounding,
                "minimum_amount": decimal_text(spec.minimum_amount),
                "commitment_amount": decimal_text(spec.commitment_amount),
                "commitment_billing": spec.commitment_billing,
                "billing_time": spec.billing_time,
                "billing_anchor_day": spec.billing_anchor_day,
            },
        )

        def publish() -> HttpResponse:
            data = form.cleaned_data
            new_spec = selectors.plan_spec_from_validated(
                {
                    "code": spec.code,
                    "currency": spec.currency,
                    "interval": spec.interval,
                    "interval_count": spec.interval_count,
                    "charges_interval": spec.charges_interval,  # kept, as the interval is
                    "charges_interval_count": spec.charges_interval_count,
                    "consumption_model": spec.consumption_model,
                    "metadata": spec.metadata,
                    "units_per_credit": data.get("units_per_credit", spec.units_per_credit),
                    **{
                        k: data[k]
                        for k in (
                            "name",
                            "description",
                            "base_fee",
                            "trial_days",
                            "charges",
                            "credit_grant",
                            "rounding",
                            "minimum_amount",
                            "commitment_amount",
                            "commitment_billing",
                            "billing_time",
                            "billing_anchor_day",
                        )
                    },
                }
            )
            return self._published(
                request, *services.publish_plan(spec=new_spec, published_by_id=request.user.pk)
            )

        intro = (
            f"Publishing creates version {latest.version + 1} of {plan.code}; version "
            f"{plan.version} stays as it is for the subscriptions on it. An unchanged form "
            "publishes nothing."
        )
        if latest.pk != plan.pk:
            intro += (
                f" Note: this form starts from version {plan.version}, not from the latest "
                f"version {latest.version}."
            )
        return self.run_service(request, form, publish) or self.service_form_response(
            request,
            form=form,
            title=f"Publish a new version of {plan.code}",
            submit_label="Publish new version",
            original=plan,
            intro=intro,
            facts=[
                ("code", plan.code),
                ("currency", plan.currency),
                (
                    "interval",
                    plan.get_interval_display() if plan.interval_count == 1 else plan.per_interval,
                ),
                ("consumption model", plan.get_consumption_model_display()),
            ],
        )

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = PlanCreateForm(
            request.POST or None, initial={"charges": "[]", "trial_days": 0, "base_fee": "0"}
        )

        def publish() -> HttpResponse:
            spec = selectors.plan_spec_from_validated({**form.cleaned_data, "metadata": None})
            return self._published(
                request, *services.publish_plan(spec=spec, published_by_id=request.user.pk)
            )

        return self.run_service(request, form, publish) or self.service_form_response(
            request,
            form=form,
            title="Publish a new plan",
            submit_label="Publish version 1",
            intro="A plan is published as version 1 and never changes afterwards; later "
            "edits publish new versions.",
        )

    def _set_self_serve(self, request, queryset, self_serve: bool) -> None:
        codes = sorted(set(queryset.values_list("code", flat=True)))
        for code in codes:
            services.set_plan_self_serve(code=code, self_serve=self_serve)
        state = "offered in" if self_serve else "no longer offered in"
        messages.success(request, f"{', '.join(codes)}: {state} the customer portal.")

    @admin.action(
        description="Offer the selected plans in the portal (self-serve)", permissions=["add"]
    )
    def offer_in_portal_action(self, request, queryset):
        self._set_self_serve(request, queryset, True)

    @admin.action(description="Stop offering the selected plans in the portal", permissions=["add"])
    def stop_offering_action(self, request, queryset):
        self._set_self_serve(request, queryset, False)

    @admin.action(description="Publish a new version of the selected plan…", permissions=["add"])
    def publish_new_version_action(self, request, queryset):
        if queryset.count() != 1:
            messages.warning(request, "Select exactly one plan version to start from.")
            return None
        return HttpResponseRedirect(reverse("admin:billing_plan_publish", args=[queryset.get().pk]))

    @admin.action(description="Preview a new version against the last period…")
    def preview_new_version_action(self, request, queryset):
        # the page is invoicing's (invoicing/finance_views.py): it prices invoices
        if queryset.count() != 1:
            messages.warning(request, "Select exactly one plan version to start from.")
            return None
        return HttpResponseRedirect(reverse("finance-plan-preview", args=[queryset.get().pk]))
