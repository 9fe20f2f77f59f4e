"""Customers in the admin: the list with each one's available balance and live plan, the
page with its wallets, subscriptions, margin overrides, portal users, credit grants and
recent ledger activity. A customer is created with its wallet
(``billing.services.create_customer``); afterwards only what finance owns may change. The
money, credit and invitation pages of a customer come from ``wallets``, ``credit_grants``
and ``portal_users``."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from billing import limits, selectors, services
from billing.admin.alerts import CustomerAlertsMixin
from billing.admin.common import (
    CURRENCY_RE,
    PriceField,
    ServiceFormMixin,
    StrictJSONField,
    check_currency,
    money_cell,
    timestamp,
)
from billing.admin.credit_grants import CustomerGrantViews
from billing.admin.customer_summary import CustomerSummaryMixin
from billing.admin.portal_users import CustomerInviteView, PortalMemberInline
from billing.admin.projects import CustomerProjectsMixin
from billing.admin.wallets import CustomerMoneyViews, WalletInline
from billing.errors import BillingError
from billing.models import (
    CollectionMethod,
    Customer,
    MarginOverride,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from ledger.admin import EstimatedCountPaginator, ReadOnlyInline, system_currencies, values_filter

RECENT_ACTIVITY = 20  # ledger transactions shown on a customer's page
EXTERNAL_ID_RE = r"^[A-Za-z0-9._:@\-]{1,200}$"  # as the API accepts it
ADDRESS_FIELDS = ("address_line1", "address_line2", "city", "state", "postal_code", "country")
# What finance may change on an existing customer. Currency and billing mode belong to the
# wallets (ledger accounts), the external id to the product, the Stripe id to Stripe.
CUSTOMER_EDITABLE = services.CUSTOMER_EDITABLE


COLLECTION_FIELDS = ("collection_method", "days_until_due")


class CollectionTermsForm(forms.ModelForm):
    """The collection method and its payment terms, as ``services.collection_terms`` takes
    them: send_invoice without days gets the default, days with charge_automatically are
    refused (they would do nothing). A method left out of a post stays as it is."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "collection_method" in self.fields:
            self.fields["collection_method"].required = False

    def clean(self):
        super().clean()
        data = self.cleaned_data
        if "collection_method" in data:
            # left out: as it is (a new customer: charged automatically)
            data["collection_method"] = data["collection_method"] or (
                self.instance.collection_method
                if self.instance.pk
                else CollectionMethod.CHARGE_AUTOMATICALLY
            )
            try:
                data["days_until_due"] = services.collection_terms(
                    collection_method=data["collection_method"],
                    days_until_due=data.get("days_until_due"),
                )
            except BillingError as error:
                self.add_error("days_until_due", error.message)
        return data


class CustomerChangeForm(CollectionTermsForm):
    """The change page's form: the admin lists its fields (the fieldsets, less the
    read-only ones)."""

    class Meta:
        model = Customer
        fields = [*sorted(CUSTOMER_EDITABLE), *COLLECTION_FIELDS]


class CustomerCreateForm(CollectionTermsForm):
    external_id = forms.RegexField(
        EXTERNAL_ID_RE,
        max_length=200,
        help_text="The product's own id for the customer: letters, digits and . _ : @ -",
    )
    currency = forms.RegexField(
        CURRENCY_RE, initial="USD", help_text="ISO 4217 code of the customer's wallet."
    )
    credit_limit = PriceField(
        required=False,
        min_value=Decimal(0),
        limit=limits.MAX_AMOUNT,
        help_text="Postpaid only: how far below zero the wallet may go; empty = no limit.",
    )

    class Meta:
        model = Customer
        fields = [
            "external_id",
            "name",
            "email",
            "currency",
            "billing_mode",
            *COLLECTION_FIELDS,
            *ADDRESS_FIELDS,
            "tax_id",
            "metadata",
        ]
        field_classes = {"metadata": StrictJSONField}

    def clean_currency(self) -> str:
        return check_currency(self.cleaned_data["currency"])

    def clean(self):
        super().clean()
        data = self.cleaned_data
        if data.get("credit_limit") is not None and data.get("billing_mode") != "postpaid":
            self.add_error("credit_limit", "A credit limit applies to postpaid customers only.")
        return data


class MarginOverrideInline(admin.TabularInline):
    """This customer's own markup over the provider's cost on catalog-priced charges; it
    replaces the plan charge's margin (one meter, or every meter when left empty)."""

    model = MarginOverride
    extra = 0
    fields = ("meter", "margin_percent", "created")
    readonly_fields = ("created",)
    verbose_name = "margin override"

    @admin.display(description="created at")
    def created(self, override):
        # An unsaved row (the "add another" template) has the database's default, not a time.
        return timestamp(override.created_at) if override.pk else "—"


class CustomerSubscriptionInline(ReadOnlyInline):
    model = Subscription
    fields = (
        "plan",
        "status",
        "current_period_start",
        "current_period_end",
        "cancel_at_period_end",
        "ended_at",
    )
    readonly_fields = fields
    verbose_name_plural = "subscriptions"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("plan").order_by("-started_at")


CustomerCurrencyFilter = values_filter(
    "currency",
    "currency",
    lambda: [*system_currencies(), *Plan.objects.values_list("currency", flat=True)],
)


class SubscriptionStatusFilter(admin.SimpleListFilter):
    title = "subscription status"
    parameter_name = "subscription"
    NONE = "none"

    def lookups(self, request, model_admin):
        live = [SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE]
        return [(s.value, s.label) for s in live] + [(self.NONE, "No live subscription")]

    def queryset(self, request, queryset):
        value = self.value()
        live = Subscription.objects.exclude(status=SubscriptionStatus.CANCELED)
        if value == self.NONE:
            return queryset.exclude(pk__in=live.values("customer_id"))
        if value:
            return queryset.filter(pk__in=live.filter(status=value).values("customer_id"))
        return queryset


@admin.register(Customer)
class CustomerAdmin(
    CustomerSummaryMixin,
    CustomerMoneyViews,
    CustomerGrantViews,
    CustomerInviteView,
    CustomerAlertsMixin,
    CustomerProjectsMixin,
    ServiceFormMixin,
    admin.ModelAdmin,
):
    list_display = (
        "external_id",
        "name",
        "email",
        "billing_mode",
        "live_plan",
        "available_balance",  # in the customer's currency, which it names
    )
    list_filter = ("billing_mode", CustomerCurrencyFilter, SubscriptionStatusFilter)
    search_fields = ("external_id", "name", "email", "tax_id", "stripe_customer_id")
    # a page from the (created_at, id) index and a bounded count, never the whole table
    # sorted and counted (docs/benchmarks.md, Session 11)
    ordering = ("-created_at", "-id")
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    form = CustomerChangeForm
    fieldsets = (
        (None, {"fields": ("external_id", "name", "email", "tax_id", "metadata")}),
        ("Address", {"fields": ADDRESS_FIELDS}),
        (
            "Billing",
            {
                "fields": (
                    "currency",
                    "billing_mode",
                    *COLLECTION_FIELDS,
                    "stripe_customer_id",
                    "created_at",
                    "updated_at",
                ),
            },
        ),
        ("Credit grants", {"fields": ("credit_grants",)}),
        ("Alerts", {"fields": ("customer_alerts",)}),
        ("Projects", {"fields": ("customer_projects",)}),
        ("Recent ledger activity", {"fields": ("recent_activity",)}),
    )
    readonly_fields = (
        "credit_grants",
        "customer_alerts",
        "customer_projects",
        "external_id",
        "currency",
        "billing_mode",
        "stripe_customer_id",
        "created_at",
        "updated_at",
        "recent_activity",
    )
    inlines = [WalletInline, CustomerSubscriptionInline, MarginOverrideInline, PortalMemberInline]
    formfield_overrides = {models.JSONField: {"form_class": StrictJSONField}}
    actions = ["top_up_action", "adjust_action", "grant_action"]

    def has_delete_permission(self, request, obj=None):
        return False  # its wallets are ledger accounts, kept forever

    def get_queryset(self, request):
        return selectors.with_available_and_live_plan(super().get_queryset(request))

    @admin.display(description="live subscription", ordering="live_plan_label")
    def live_plan(self, customer):
        return customer.live_plan_label or "—"

    @admin.display(description="available", ordering="wallet_available")
    def available_balance(self, customer):
        return money_cell(customer.wallet_available, customer.currency)

    @admin.display(description="last 20 ledger transactions")
    def recent_activity(self, customer):
        rows = [
            (
                timestamp(activity.transaction.effective_at),
                reverse("admin:ledger_transaction_change", args=[activity.transaction.pk]),
                activity.transaction.reference,
                activity.transaction.description,
                format_html_join(
                    ", ",
                    "{}",
                    ((money_cell(c.amount, c.currency, signed=True),) for c in activity.changes),
                ),
            )
            for activity in selectors.customer_recent_activity(customer, limit=RECENT_ACTIVITY)
        ]
        if not rows:
            return "No ledger activity yet."
        return format_html(
            "<table><thead><tr><th>effective</th><th>transaction</th><th>description</th>"
            "<th>wallet change</th></tr></thead><tbody>{}</tbody></table>",
            format_html_join(
                "",
                '<tr><td>{}</td><td><a href="{}">{}</a></td><td>{}</td>'
                '<td class="money">{}</td></tr>',
                rows,
            ),
        )

    # Creating: through billing.services.create_customer, so the wallet exists from the start.

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = CustomerCreateForm(request.POST or None)

        def create() -> HttpResponse:
            customer = services.create_customer(**form.cleaned_data)
            self.log_addition(request, customer, "Created with its wallet in the admin.")
            messages.success(
                request, f"Customer {customer} created with a {customer.currency} wallet."
            )
            return HttpResponseRedirect(self.change_url(customer))

        return self.run_service(request, form, create) or self.service_form_response(
            request,
            form=form,
            title="Add customer",
            submit_label="Create customer and wallet",
            intro="The customer is created with its wallet (a ledger account) in its currency.",
            fieldsets=[
                (None, {"fields": ["external_id", "name", "email", "tax_id", "metadata"]}),
                ("Wallet", {"fields": ["currency", "billing_mode", "credit_limit"]}),
                ("Collection", {"fields": list(COLLECTION_FIELDS)}),
                ("Address", {"fields": list(ADDRESS_FIELDS)}),
            ],
        )

    def save_model(self, request, obj, form, change):
        # Only the columns finance may change are written: a full save would write back
        # every other column as it was read (a Stripe id set meanwhile, for one).
        fields = [f for f in form.changed_data if f in CUSTOMER_EDITABLE]
        if fields:
            services.update_customer(customer=obj, **{f: getattr(obj, f) for f in fields})
        if set(form.changed_data) & set(COLLECTION_FIELDS):
            services.edit_customer(
                customer=obj,
                collection_method=obj.collection_method,
                days_until_due=obj.days_until_due,
            )

    # The pages of money (top-ups, adjustments: wallets), credits and portal invitations.

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/top-up/", view(self.top_up_view), name="billing_customer_top_up"
            ),
            path(
                "<path:object_id>/adjust/", view(self.adjust_view), name="billing_customer_adjust"
            ),
            path(
                "<path:object_id>/invite/", view(self.invite_view), name="billing_customer_invite"
            ),
            path(
                "<path:object_id>/grant-credits/",
                view(self.grant_view),
                name="billing_customer_grant",
            ),
            *super().get_urls(),
        ]
