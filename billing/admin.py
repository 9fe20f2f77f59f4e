"""The commercial core in the admin, for finance staff.

Every write goes through ``billing.services`` and so, for money, through the ledger:
customers are created with their wallet, top-ups and adjustments are ledger transactions
(recording the staff user), plans are published as new versions and never edited, API key
secrets are shown once and never stored. What a service owns cannot be edited here.
Expected failures (``BillingError``, ``LedgerError``) are shown on the form that caused them.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal, localcontext
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.timezone import localtime

from billing import credits, jsonstrict, limits, selectors, services
from billing.api.serializers import ChargeSerializer
from billing.errors import BillingError
from billing.models import (
    PRICE_DIGITS,
    PRICE_PLACES,
    APIKey,
    BillingMode,
    ConsumptionModel,
    CreditAllocation,
    CreditGrant,
    Customer,
    GrantSource,
    GrantStatus,
    IdempotencyRecord,
    Interval,
    MarginOverride,
    Plan,
    PlanCharge,
    PortalMember,
    PriceModel,
    Subscription,
    SubscriptionPhase,
    SubscriptionStatus,
    Wallet,
)
from billing.portal import services as portal_services
from ledger import selectors as ledger_selectors
from ledger.admin import ReadOnlyAdmin, ReadOnlyInline
from ledger.errors import LedgerError
from ledger.models import AMOUNT_DIGITS, AMOUNT_PLACES

log = logging.getLogger(__name__)

RECENT_ACTIVITY = 20  # ledger transactions shown on a customer's page
CURRENCY_RE = r"^[A-Z]{3}$"
EXTERNAL_ID_RE = r"^[A-Za-z0-9._:@\-]{1,200}$"  # as the API accepts it


# --- shared helpers ----------------------------------------------------------------------------


def money(value: Decimal | None, currency: str = "") -> str:
    """An amount exactly as stored, without trailing zeros beyond the cents:
    12.5 → "12.50", 0.000002 → "0.000002". Never rounded: finance reads exact figures."""
    if value is None:
        return "—"
    with localcontext(prec=AMOUNT_DIGITS + 2):
        exact = value.normalize()
        if exact.as_tuple().exponent > -2:
            exact = exact.quantize(Decimal("0.01"))
    return f"{exact:,f} {currency}".strip()


def decimal_text(value: Decimal | None) -> str | None:
    """A Decimal as plain JSON-friendly text without trailing zeros ("1000", "0.000002")."""
    if value is None:
        return None
    with localcontext(prec=AMOUNT_DIGITS + 2):
        return format(value.normalize(), "f")


def timestamp(value) -> str:
    return "—" if value is None else date_format(localtime(value), "DATETIME_FORMAT")


def report_service_error(
    request: HttpRequest, form: forms.Form, error: BillingError | LedgerError
) -> None:
    """Show a service's expected failure: on the form field it names (``param``, e.g.
    ``charges[0].tiers`` → the charges field), else as an error message."""
    param = getattr(error, "param", None) or ""
    field = re.split(r"[.\[]", param, maxsplit=1)[0]
    if field and field in form.fields:
        form.add_error(field, error.message if field == param else f"{param}: {error.message}")
    else:
        messages.error(request, f"{error.message} ({error.code})")


class ServiceFormMixin:
    """Admin pages whose form ends in one service call (``admin/billing/service_form.html``).

    The form only validates input; the service writes. A failure the service reports is
    shown on the form, which keeps what was typed."""

    service_form_template = "admin/billing/service_form.html"

    def service_form_response(
        self,
        request: HttpRequest,
        *,
        form: forms.Form,
        title: str,
        submit_label: str,
        original: Any = None,
        intro: str = "",
        facts: Iterable[tuple[str, Any]] = (),
        fieldsets: list | None = None,
    ) -> TemplateResponse:
        admin_form = helpers.AdminForm(
            form, fieldsets or [(None, {"fields": list(form.fields)})], {}
        )
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "original": original,
            "adminform": admin_form,
            "form": form,
            "intro": intro,
            "facts": list(facts),
            "submit_label": submit_label,
            "media": self.media + admin_form.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.service_form_template, context)

    def run_service(
        self, request: HttpRequest, form: forms.Form, call: Callable[[], HttpResponse]
    ) -> HttpResponse | None:
        """``call()`` once the form is valid; None (re-render the form) if it failed."""
        if request.method != "POST" or not form.is_valid():
            return None
        try:
            return call()
        except (BillingError, LedgerError) as error:
            report_service_error(request, form, error)
            return None

    def object_or_404(self, request: HttpRequest, object_id: str):
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"{self.opts.verbose_name} {object_id!r} does not exist")
        return obj

    def change_url(self, obj) -> str:
        return reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_change",
            args=[obj.pk],
        )


def strict_json(text: str, *, path: str = "") -> Any:
    """JSON typed into the admin, read as the API reads a body (``billing.jsonstrict``): a
    key written twice, NaN or a NUL character is a form error naming what is wrong."""
    try:
        return jsonstrict.loads(text, path=path)
    except jsonstrict.DuplicateKey as error:
        raise forms.ValidationError(
            f"The key {error.path!r} is written more than once; write it once."
        ) from None
    except ValueError as error:
        raise forms.ValidationError(f"Not valid JSON: {error}") from None


class StrictJSONField(forms.JSONField):
    """Every JSON textarea of the admin (customer metadata, …): read by ``strict_json``."""

    def to_python(self, value):
        if not self.disabled and isinstance(value, str) and value.strip():
            strict_json(value)
        return super().to_python(value)


def check_currency(code: str) -> str:
    """An ISO 4217 code, as the API takes a customer's currency (``billing.limits``)."""
    problem = limits.currency_problem(code)
    if problem:
        raise forms.ValidationError(problem[0].upper() + problem[1:] + ".")
    return code


class ExactDecimalField(forms.DecimalField):
    """A Decimal read from text, never through float; ``places`` beyond the scale refused;
    at most ``limit`` in absolute value (the documented maximum amount unless told, None:
    only the column's digits bound it)."""

    def __init__(
        self,
        *,
        digits: int = AMOUNT_DIGITS,
        places: int = AMOUNT_PLACES,
        limit: Decimal | None = limits.MAX_AMOUNT,
        **kwargs,
    ):
        self.limit = limit
        super().__init__(max_digits=digits, decimal_places=places, **kwargs)

    def validate(self, value):
        super().validate(value)
        if value is not None and self.limit is not None:
            problem = limits.amount_problem(value, limit=self.limit)
            if problem:
                raise forms.ValidationError(problem[0].upper() + problem[1:] + ".")


class PriceField(ExactDecimalField):
    """A plan's price (its column bounds it); ``limit`` given for an amount (a credit limit)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("limit", None)
        super().__init__(digits=PRICE_DIGITS, places=PRICE_PLACES, **kwargs)


def admin_link(obj, text: str | None = None) -> str:
    if obj is None:
        return "—"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else str(obj))


# --- customers --------------------------------------------------------------------------------

ADDRESS_FIELDS = ("address_line1", "address_line2", "city", "state", "postal_code", "country")
# What finance may change on an existing customer. Currency and billing mode belong to the
# wallets (ledger accounts), the external id to the product, the Stripe id to Stripe.
CUSTOMER_EDITABLE = services.CUSTOMER_EDITABLE


class CustomerCreateForm(forms.ModelForm):
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
            *ADDRESS_FIELDS,
            "tax_id",
            "metadata",
        ]
        field_classes = {"metadata": StrictJSONField}

    def clean_currency(self) -> str:
        return check_currency(self.cleaned_data["currency"])

    def clean(self):
        data = super().clean()
        if data.get("credit_limit") is not None and data.get("billing_mode") != "postpaid":
            self.add_error("credit_limit", "A credit limit applies to postpaid customers only.")
        return data


class MoneyForm(forms.Form):
    """What the top-up and adjustment pages share. ``token`` is drawn when the page is
    shown and becomes the posting's reference: submitting the same page twice posts once."""

    currency = forms.ChoiceField(help_text="The wallet to post to.")
    token = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args, customer: Customer, **kwargs):
        kwargs.setdefault("initial", {}).setdefault("token", uuid.uuid4().hex)
        kwargs["initial"].setdefault("currency", customer.currency)
        super().__init__(*args, **kwargs)
        currencies = customer.wallets.order_by("currency").values_list("currency", flat=True)
        self.fields["currency"].choices = [(c, c) for c in currencies]
        self.order_fields(["amount", "currency"])

    def clean_token(self) -> str:
        token = self.cleaned_data["token"]
        if not re.fullmatch(r"[0-9a-f]{32}", token):
            raise forms.ValidationError("This form has expired; open it again.")
        return token


class InviteForm(forms.Form):
    email = forms.EmailField()
    name = forms.CharField(max_length=200, required=False)


class TopUpForm(MoneyForm):
    amount = ExactDecimalField(help_text="Exact, up to 12 decimal places.")
    description = forms.CharField(
        max_length=500, required=False, help_text="Optional; e.g. the bank transfer's reference."
    )

    def clean_amount(self) -> Decimal:
        amount = self.cleaned_data["amount"]
        if amount <= 0:
            raise forms.ValidationError("A top-up must be positive.")
        return amount


class AdjustmentForm(MoneyForm):
    amount = ExactDecimalField(
        help_text="Exact, up to 12 decimal places. Positive credits the wallet, negative "
        "debits it (a prepaid wallet cannot go below zero)."
    )
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required. Recorded on the ledger transaction with your user id.",
    )

    def clean_amount(self) -> Decimal:
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError("An adjustment cannot be zero.")
        return amount

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("An adjustment needs a reason.")
        return reason


class GrantCreditsForm(forms.Form):
    """Promotional credits or a credit adjustment, into the CREDITS wallet."""

    amount = ExactDecimalField(help_text="Credits, exact, up to 12 decimal places.")
    name = forms.CharField(
        max_length=200, required=False, help_text="What the customer sees, e.g. “Welcome credits”."
    )
    source = forms.ChoiceField(
        choices=[
            (GrantSource.PROMOTIONAL, "Promotional (free, funded by @Promotions)"),
            (GrantSource.ADJUSTMENT, "Adjustment (funded by @Adjustments)"),
        ]
    )
    priority = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=credits.MAX_PRIORITY,
        help_text="Lower is drawn first. Empty: 10 for promotional, 20 for adjustments "
        "(credits bought have 50).",
    )
    expires_at = forms.DateTimeField(
        required=False,
        help_text="Empty: never. E.g. 2027-01-31 00:00 (in the site's time zone).",
    )
    token = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("initial", {}).setdefault("token", uuid.uuid4().hex)
        super().__init__(*args, **kwargs)

    def clean_amount(self) -> Decimal:
        amount = self.cleaned_data["amount"]
        if amount <= 0:
            raise forms.ValidationError("A grant must be positive.")
        return amount

    def clean_token(self) -> str:
        token = self.cleaned_data["token"]
        if not re.fullmatch(r"[0-9a-f]{32}", token):
            raise forms.ValidationError("This form has expired; open it again.")
        return token


def grants_table(grants: Iterable[CreditGrant]) -> str:
    rows = [
        (
            reverse("admin:billing_creditgrant_change", args=[g.pk]),
            g.name,
            g.get_source_display(),
            g.priority,
            money(g.amount),
            money(g.remaining),
            g.get_status_display(),
            timestamp(g.expires_at) if g.expires_at else "never",
        )
        for g in grants
    ]
    if not rows:
        return "No credit grants."
    return format_html(
        "<table><thead><tr><th>grant</th><th>source</th><th>priority</th><th>granted</th>"
        "<th>left</th><th>status</th><th>expires</th></tr></thead><tbody>{}</tbody></table>",
        format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td>'
            '<td style="text-align:right">{}</td><td style="text-align:right">{}</td>'
            "<td>{}</td><td>{}</td></tr>",
            rows,
        ),
    )


def _balance(wallet: Wallet) -> ledger_selectors.BalanceView:
    """The wallet's balance, read once per wallet and page."""
    if not hasattr(wallet, "_balance_view"):
        wallet._balance_view = ledger_selectors.get_balance(account=wallet.account)
    return wallet._balance_view


class WalletInline(ReadOnlyInline):
    model = Wallet
    fields = (
        "currency",
        "billing_mode",
        "credit_limit_display",
        "ledger_account",
        "posted",
        "held",
        "available",
    )
    readonly_fields = fields
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("account").order_by("currency")

    @admin.display(description="credit limit")
    def credit_limit_display(self, wallet):
        if wallet.billing_mode != BillingMode.POSTPAID:
            return "— (prepaid)"
        return "unlimited" if wallet.credit_limit is None else money(wallet.credit_limit)

    @admin.display(description="ledger account")
    def ledger_account(self, wallet):
        return admin_link(wallet.account, wallet.account.code)

    @admin.display(description="posted")
    def posted(self, wallet):
        return money(_balance(wallet).posted)

    @admin.display(description="held")
    def held(self, wallet):
        return money(_balance(wallet).held)

    @admin.display(description="available")
    def available(self, wallet):
        return money(_balance(wallet).available)


class PortalMemberInline(ReadOnlyInline):
    model = PortalMember
    fk_name = "customer"
    fields = ("user", "invited_by", "created_at")
    readonly_fields = fields
    show_change_link = False
    verbose_name = "portal user"


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
class CustomerAdmin(ServiceFormMixin, admin.ModelAdmin):
    list_display = (
        "external_id",
        "name",
        "email",
        "billing_mode",
        "currency",
        "live_plan",
        "available_balance",
    )
    list_filter = ("billing_mode", "currency", SubscriptionStatusFilter)
    search_fields = ("external_id", "name", "email", "tax_id", "stripe_customer_id")
    ordering = ("-created_at", "-id")
    fieldsets = (
        (None, {"fields": ("external_id", "name", "email", "tax_id", "metadata")}),
        ("Address", {"fields": ADDRESS_FIELDS}),
        (
            "Billing",
            {
                "fields": (
                    "currency",
                    "billing_mode",
                    "stripe_customer_id",
                    "created_at",
                    "updated_at",
                ),
            },
        ),
        ("Credit grants", {"fields": ("credit_grants",)}),
        ("Recent ledger activity", {"fields": ("recent_activity",)}),
    )
    readonly_fields = (
        "credit_grants",
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
        return money(customer.wallet_available, customer.currency)

    @admin.display(description="last 20 ledger transactions")
    def recent_activity(self, customer):
        rows = [
            (
                timestamp(activity.transaction.effective_at),
                reverse("admin:ledger_transaction_change", args=[activity.transaction.pk]),
                activity.transaction.reference,
                activity.transaction.description,
                ", ".join(
                    f"{'+' if change.amount > 0 else ''}{money(change.amount, change.currency)}"
                    for change in activity.changes
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
                '<td style="text-align:right">{}</td></tr>',
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
                ("Address", {"fields": list(ADDRESS_FIELDS)}),
            ],
        )

    def save_model(self, request, obj, form, change):
        # Only the columns finance may change are written: a full save would write back
        # every other column as it was read (a Stripe id set meanwhile, for one).
        fields = [f for f in form.changed_data if f in CUSTOMER_EDITABLE]
        if fields:
            services.update_customer(customer=obj, **{f: getattr(obj, f) for f in fields})

    # Money: top-ups and adjustments, each one ledger transaction.

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

    def invite_view(self, request, object_id):
        customer = self._money_customer(request, object_id)
        form = InviteForm(request.POST or None)

        def post() -> HttpResponse:
            # The invitation is kept even when the e-mail cannot go (Stripe's dashboard keeps
            # a pending invite too): inviting the same address again sends a new link.
            email = form.cleaned_data["email"].strip().lower()
            again = customer.members.filter(user__email__iexact=email).exists()
            member = portal_services.invite_member(
                customer=customer,
                email=email,
                name=form.cleaned_data["name"],
                invited_by_id=request.user.pk,
                send_link=False,
            )
            email = member.user.email
            if not again:
                self.log_change(request, customer, f"Invited {email} to the portal")
            try:
                portal_services.send_sign_in_link(email=email, invited=not again)
            except Exception as error:  # noqa: BLE001 - any mail failure: reported, not a 500
                log.exception("the portal invitation e-mail to %s could not be sent", email)
                messages.warning(
                    request,
                    f"{email} {'is a portal user' if again else 'was invited'}, but the "
                    f"sign-in link e-mail could not be sent ({type(error).__name__}: {error}). "
                    "Check the mail settings (EMAIL_HOST), then invite the same address again "
                    "to resend the link.",
                )
            else:
                messages.success(
                    request,
                    f"{email} is already a portal user: a new sign-in link is on its way."
                    if again
                    else f"{email} was invited: a sign-in link is on its way.",
                )
            return HttpResponseRedirect(self.change_url(customer))

        return self.run_service(request, form, post) or self.service_form_response(
            request,
            form=form,
            title=f"Invite a portal user for {customer}",
            submit_label="Send invitation",
            original=customer,
            intro="They will sign in to the customer portal with an e-mailed link (and may set "
            "a password there) and see this customer's balance, usage and invoices only. "
            "Inviting a portal user again sends them a new link.",
            facts=[
                (
                    "Portal users",
                    ", ".join(m.user.email for m in customer.members.select_related("user"))
                    or "none yet",
                )
            ],
        )

    def _money_page(self, request, customer, form, *, title, submit_label, post):
        posted = self.run_service(request, form, post)
        if posted is not None:
            return posted
        facts = [
            (
                f"{wallet.currency} wallet ({wallet.billing_mode})",
                f"available {money(_balance(wallet).available)}, "
                f"posted {money(_balance(wallet).posted)}",
            )
            for wallet in customer.wallets.select_related("account").order_by("currency")
        ]
        return self.service_form_response(
            request,
            form=form,
            title=title,
            submit_label=submit_label,
            original=customer,
            facts=facts,
        )

    def _money_customer(self, request, object_id) -> Customer:
        customer = self.object_or_404(request, object_id)
        if not self.has_change_permission(request, customer):
            raise PermissionDenied
        return customer

    def top_up_view(self, request, object_id):
        customer = self._money_customer(request, object_id)
        form = TopUpForm(request.POST or None, customer=customer)

        def post() -> HttpResponse:
            data = form.cleaned_data
            txn = services.top_up(
                customer=customer,
                amount=data["amount"],
                currency=data["currency"],
                reference=f"admin:{data['token']}",
                description=data["description"],
                metadata={"source": "admin"},
                staff_user_id=request.user.pk,
            )
            summary = f"Top-up of {money(data['amount'], data['currency'])}"
            self.log_change(request, customer, f"{summary}: ledger transaction {txn.reference}")
            messages.success(request, f"{summary} posted as ledger transaction {txn.reference}.")
            return HttpResponseRedirect(self.change_url(customer))

        return self._money_page(
            request,
            customer,
            form,
            title=f"Top up {customer}",
            submit_label="Post top-up",
            post=post,
        )

    def adjust_view(self, request, object_id):
        customer = self._money_customer(request, object_id)
        form = AdjustmentForm(request.POST or None, customer=customer)

        def post() -> HttpResponse:
            data = form.cleaned_data
            txn = services.adjust_balance(
                customer=customer,
                amount=data["amount"],
                reason=data["reason"],
                staff_user_id=request.user.pk,
                currency=data["currency"],
                reference=f"admin:{data['token']}",
            )
            summary = f"Adjustment of {money(data['amount'], data['currency'])}"
            self.log_change(
                request,
                customer,
                f"{summary} ({data['reason']}): ledger transaction {txn.reference}",
            )
            messages.success(request, f"{summary} posted as ledger transaction {txn.reference}.")
            return HttpResponseRedirect(self.change_url(customer))

        return self._money_page(
            request,
            customer,
            form,
            title=f"Adjust the balance of {customer}",
            submit_label="Post adjustment",
            post=post,
        )

    @admin.display(description="credit grants")
    def credit_grants(self, customer):
        if customer.pk is None:
            return "—"
        live = customer.credit_grants.filter(status=GrantStatus.ACTIVE)
        ended = customer.credit_grants.exclude(status=GrantStatus.ACTIVE).order_by("-ended_at")
        return grants_table([*live, *ended[:10]])

    def grant_view(self, request, object_id):
        customer = self._money_customer(request, object_id)
        form = GrantCreditsForm(request.POST or None)

        def post() -> HttpResponse:
            data = form.cleaned_data
            grant = credits.grant_credits(
                customer=customer,
                amount=data["amount"],
                name=data["name"],
                source=data["source"],
                priority=data["priority"],
                expires_at=data["expires_at"],
                reference=f"admin:{data['token']}",
                staff_user_id=request.user.pk,
            )
            summary = f"Granted {money(grant.amount)} credits ({grant.name})"
            self.log_change(request, customer, f"{summary}: grant {grant.pk}")
            messages.success(request, f"{summary}.")
            return HttpResponseRedirect(self.change_url(customer))

        live = customer.credit_grants.filter(status=GrantStatus.ACTIVE)
        return self.run_service(request, form, post) or self.service_form_response(
            request,
            form=form,
            title=f"Grant credits to {customer}",
            submit_label="Grant credits",
            original=customer,
            intro="The credits land in the customer's CREDITS wallet at once. Usage draws on "
            "grants lowest priority first, then the soonest expiry; whatever is left at the "
            "expiry leaves the wallet for @CreditsExpired.",
            facts=[("Live grants", grants_table(live))],
        )

    @admin.action(description="Grant credits to the selected customer…", permissions=["change"])
    def grant_action(self, request, queryset):
        return self._to_one(request, queryset, "grant", "grant credits to")

    def _to_one(self, request, queryset, url_name: str, what: str):
        if queryset.count() != 1:
            messages.warning(request, f"Select exactly one customer to {what}.")
            return None
        return HttpResponseRedirect(
            reverse(f"admin:billing_customer_{url_name}", args=[queryset.get().pk])
        )

    @admin.action(description="Top up the selected customer…", permissions=["change"])
    def top_up_action(self, request, queryset):
        return self._to_one(request, queryset, "top_up", "top up")

    @admin.action(description="Adjust the selected customer's balance…", permissions=["change"])
    def adjust_action(self, request, queryset):
        return self._to_one(request, queryset, "adjust", "adjust")


class CreditAllocationInline(ReadOnlyInline):
    model = CreditAllocation
    fields = ("created_at", "kind", "amount_display", "transaction_link")
    readonly_fields = fields
    show_change_link = False
    ordering = ("-id",)

    @admin.display(description="amount")
    def amount_display(self, allocation):
        return money(allocation.amount)

    @admin.display(description="ledger transaction")
    def transaction_link(self, allocation):
        return admin_link(allocation.ledger_transaction, allocation.ledger_transaction.reference)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("ledger_transaction")


class GrantLiveFilter(admin.SimpleListFilter):
    title = "live"
    parameter_name = "live"

    def lookups(self, request, model_admin):
        return [("yes", "Live (active)"), ("no", "Ended")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(status=GrantStatus.ACTIVE)
        if self.value() == "no":
            return queryset.exclude(status=GrantStatus.ACTIVE)
        return queryset


@admin.register(CreditGrant)
class CreditGrantAdmin(ReadOnlyAdmin):
    """Grants are made from the customer page (or the API) and change only through usage,
    expiry and voiding: read-only here, with the allocations that drew on each."""

    list_display = (
        "id",
        "customer",
        "name",
        "source",
        "priority",
        "granted",
        "left",
        "status",
        "expires_at",
        "created_at",
    )
    list_filter = (GrantLiveFilter, "status", "source")
    search_fields = ("customer__external_id", "customer__name", "name", "reference")
    list_select_related = ("customer",)
    ordering = ("-id",)
    fields = (
        "customer",
        "name",
        "source",
        "priority",
        "granted",
        "left",
        "status",
        "expires_at",
        "ended_at",
        "reference",
        "funding_transaction",
        "created_by",
        "created_at",
    )
    readonly_fields = fields
    inlines = [CreditAllocationInline]
    actions = ["void_action", "expire_action"]

    @admin.display(description="granted", ordering="amount")
    def granted(self, grant):
        return money(grant.amount)

    @admin.display(description="left", ordering="remaining")
    def left(self, grant):
        return money(grant.remaining)

    @admin.display(description="ledger transaction")
    def funding_transaction(self, grant):
        return admin_link(grant.ledger_transaction, grant.ledger_transaction.reference)

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Void the selected grants (take back what is left)")
    def void_action(self, request, queryset):
        done = 0
        for grant in queryset.filter(status=GrantStatus.ACTIVE):
            try:
                credits.void_grant(grant_id=grant.pk, staff_user_id=request.user.pk)
            except (BillingError, LedgerError) as error:
                messages.error(request, f"Grant {grant.pk}: {error}")
                continue
            self.log_change(request, grant, "Voided")
            done += 1
        messages.success(request, f"{done} grant(s) voided.")

    @admin.action(description="Expire the selected grants that are past their expiry now")
    def expire_action(self, request, queryset):
        due = list(
            queryset.filter(status=GrantStatus.ACTIVE, expires_at__lte=timezone.now()).values_list(
                "pk", flat=True
            )
        )
        for grant_id in due:
            credits.expire_grant(grant_id=grant_id)
        messages.success(request, f"{len(due)} grant(s) looked at.")


# --- plans -------------------------------------------------------------------------------------


def tiers_text(charge: PlanCharge) -> str:
    lines = []
    previous = None
    for tier in charge.tiers.all():
        bound = (
            f"up to {money(tier.up_to)}"
            if tier.up_to is not None
            else (f"above {money(previous)}" if previous is not None else "all units")
        )
        price = f"{money(tier.unit_price)} per unit"
        if tier.flat_fee:
            price += f" + {money(tier.flat_fee)} flat"
        lines.append((bound, price))
        previous = tier.up_to
    if not lines:
        return "—"
    return format_html_join(mark_safe("<br>"), "{}: {}", lines)


class PlanChargeInline(ReadOnlyInline):
    model = PlanCharge
    fields = (
        "meter",
        "price_model",
        "included",
        "unit_price_display",
        "package_size_display",
        "margin_percent",
        "tiers",
    )
    readonly_fields = fields
    show_change_link = False
    verbose_name_plural = "charges (read-only: a published version never changes)"

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("meter")
            .prefetch_related("tiers")
            .order_by("id")
        )

    @admin.display(description="included")
    def included(self, charge):
        return money(charge.included_quantity)

    @admin.display(description="unit price")
    def unit_price_display(self, charge):
        return money(charge.unit_price)

    @admin.display(description="package size")
    def package_size_display(self, charge):
        return money(charge.package_size)

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
            item["tiers"] = [
                {
                    "up_to": decimal_text(t.up_to),
                    "unit_price": decimal_text(t.unit_price),
                    "flat_fee": decimal_text(t.flat_fee),
                }
                for t in charge.tiers
            ]
        items.append(item)
    return json.dumps(items, indent=2)


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
    '"0.01", "flat_fee": "0"}, …, {"up_to": null, …}]</code>; package charges take '
    "package_size; margin_percent is optional. Write decimals as strings: they are kept exactly."
)


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


class PlanCreateForm(PlanVersionForm):
    code = forms.SlugField(max_length=100, help_text="Stable; versions share it.")
    currency = forms.RegexField(CURRENCY_RE, initial="USD")
    interval = forms.ChoiceField(choices=Interval.choices, initial=Interval.MONTH)
    consumption_model = forms.ChoiceField(
        choices=ConsumptionModel.choices, initial=ConsumptionModel.METERED
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
    ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, consumption_model=ConsumptionModel.CREDITS, **kwargs)

    def clean(self):
        data = super().clean()
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
        "currency",
        "interval",
        "base_fee_display",
        "consumption_model",
        "published_at",
    )
    list_filter = ("consumption_model", "interval", "currency")
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
        "metadata",
        "spec_hash",
        "published_at",
        "published_by",
    )
    readonly_fields = fields
    inlines = [PlanChargeInline]
    actions = ["publish_new_version_action"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # subscriptions and invoices point at versions

    @admin.display(description="base fee", ordering="base_fee")
    def base_fee_display(self, plan):
        return money(plan.base_fee, plan.currency)

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
            },
        )

        def publish() -> HttpResponse:
            data = form.cleaned_data
            new_spec = selectors.plan_spec_from_validated(
                {
                    "code": spec.code,
                    "currency": spec.currency,
                    "interval": spec.interval,
                    "consumption_model": spec.consumption_model,
                    "metadata": spec.metadata,
                    "units_per_credit": data.get("units_per_credit", spec.units_per_credit),
                    **{
                        k: data[k]
                        for k in ("name", "description", "base_fee", "trial_days", "charges")
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
                ("interval", plan.get_interval_display()),
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

    @admin.action(description="Publish a new version of the selected plan…", permissions=["add"])
    def publish_new_version_action(self, request, queryset):
        if queryset.count() != 1:
            messages.warning(request, "Select exactly one plan version to start from.")
            return None
        return HttpResponseRedirect(reverse("admin:billing_plan_publish", args=[queryset.get().pk]))


# --- subscriptions ---------------------------------------------------------------------------


class SubscriptionPhaseInline(ReadOnlyInline):
    model = SubscriptionPhase
    fields = ("plan", "starts_at", "ends_at")
    readonly_fields = fields
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("plan").order_by("starts_at", "id")


class PlanCodeFilter(admin.AllValuesFieldListFilter):
    title = "plan"


class SubscriptionCreateForm(forms.Form):
    customer = forms.ModelChoiceField(
        queryset=Customer.objects.order_by("external_id"), help_text="Who subscribes."
    )
    plan = forms.ModelChoiceField(
        queryset=selectors.latest_plans().order_by("code"),
        help_text="The latest published version of each plan.",
    )
    start = forms.DateTimeField(
        required=False,
        help_text="Empty = now. A start in the past back-dates: every period since it is "
        "invoiced by the period close (UTC).",
    )
    trial_days = forms.IntegerField(
        required=False, min_value=0, max_value=3650, help_text="Empty = the plan's trial."
    )


@admin.register(Subscription)
class SubscriptionAdmin(ServiceFormMixin, ReadOnlyAdmin):
    list_display = (
        "id",
        "customer_link",
        "plan_version",
        "status",
        "current_period",
        "cancel_at_period_end",
    )
    list_filter = ("status", ("plan__code", PlanCodeFilter), "cancel_at_period_end")
    search_fields = ("customer__external_id",)
    list_select_related = ("customer", "plan")
    readonly_fields = [f.name for f in Subscription._meta.fields]
    inlines = [SubscriptionPhaseInline]
    actions = ["cancel_at_period_end_action", "cancel_now_action"]

    def has_cancel_permission(self, request):
        return request.user.has_perm("billing.change_subscription")

    def has_add_permission(self, request, obj=None):
        return request.user.has_perm("billing.add_subscription")

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = SubscriptionCreateForm(request.POST or None, initial=request.GET.dict())

        def create() -> HttpResponse:
            data = form.cleaned_data
            subscription = services.create_subscription(
                customer=data["customer"],
                plan=data["plan"],
                start=data["start"],
                trial_days=data["trial_days"],
            )
            self.log_addition(request, subscription, "Subscribed in the admin.")
            messages.success(request, f"{subscription} created ({subscription.status}).")
            return HttpResponseRedirect(self.change_url(subscription))

        return self.run_service(request, form, create) or self.service_form_response(
            request,
            form=form,
            title="Add subscription",
            submit_label="Subscribe",
            intro="The customer keeps this plan version until it is changed; the first "
            "period starts at the start (or when the trial ends).",
        )

    @admin.display(description="customer", ordering="customer__external_id")
    def customer_link(self, subscription):
        return admin_link(subscription.customer)

    @admin.display(description="plan", ordering="plan__code")
    def plan_version(self, subscription):
        return f"{subscription.plan.code}@v{subscription.plan.version}"

    @admin.display(description="current period", ordering="current_period_start")
    def current_period(self, subscription):
        return (
            f"{timestamp(subscription.current_period_start)} → "
            f"{timestamp(subscription.current_period_end)}"
        )

    def _cancel(self, request, queryset: QuerySet[Subscription], *, at_period_end: bool, action):
        queryset = queryset.select_related("customer", "plan")
        if request.POST.get("post") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Cancel at period end" if at_period_end else "Cancel now",
                "opts": self.opts,
                "subscriptions": queryset,
                "action": action,
                "at_period_end": at_period_end,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            }
            request.current_app = self.admin_site.name
            return TemplateResponse(
                request, "admin/billing/subscription/cancel_confirmation.html", context
            )
        done = 0
        for subscription in queryset:
            try:
                services.cancel_subscription(
                    subscription_id=subscription.pk, at_period_end=at_period_end
                )
            except BillingError as error:
                messages.error(request, f"{subscription}: {error.message} ({error.code})")
                continue
            done += 1
            what = "at period end" if at_period_end else "now"
            self.log_change(request, subscription, f"Canceled {what} in the admin.")
        if done:
            when = "at the end of their period" if at_period_end else "now"
            messages.success(request, f"{done} subscription(s) canceled {when}.")
        return None

    @admin.action(description="Cancel at period end…", permissions=["cancel"])
    def cancel_at_period_end_action(self, request, queryset):
        return self._cancel(
            request, queryset, at_period_end=True, action="cancel_at_period_end_action"
        )

    @admin.action(description="Cancel now…", permissions=["cancel"])
    def cancel_now_action(self, request, queryset):
        return self._cancel(request, queryset, at_period_end=False, action="cancel_now_action")


# --- API keys ------------------------------------------------------------------------------------


class APIKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() in ("active", "revoked"):
            return queryset.filter(revoked_at__isnull=self.value() == "active")
        return queryset


class APIKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Which backend uses it, e.g. prod-api.")
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in APIKey.SCOPES],
        widget=forms.CheckboxSelectMultiple,
        initial=["read", "write", "ingest"],
    )
    ingest_async = forms.BooleanField(
        required=False,
        label="Asynchronous ingestion",
        help_text="Answer its usage events with 202 once stored and rate them a moment later "
        "(as Prefer: respond-async does per request): more throughput, no per-event answer.",
    )


@admin.register(APIKey)
class APIKeyAdmin(ServiceFormMixin, admin.ModelAdmin):
    """Keys are created and revoked, never edited; the secret is shown once."""

    list_display = (
        "name",
        "prefix",
        "scopes_display",
        "created_at",
        "created_by",
        "last_used_at",
        "revoked_at",
    )
    list_filter = (APIKeyStatusFilter,)
    search_fields = ("name", "prefix")
    list_select_related = ("created_by",)
    # secret_hash stays out of sight: it is of no use to a person.
    fields = (
        "name",
        "prefix",
        "scopes_display",
        "rate_limit_per_minute",
        "ingest_async",
        "created_at",
        "created_by",
        "last_used_at",
        "revoked_at",
    )
    readonly_fields = fields
    actions = ["revoke_action"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_revoke_permission(self, request):
        return request.user.has_perm("billing.change_apikey")

    @admin.display(description="scopes")
    def scopes_display(self, key):
        return ", ".join(key.scopes)

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = APIKeyCreateForm(request.POST or None)

        def create() -> HttpResponse:
            key, secret = services.create_api_key(
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                created_by_id=request.user.pk,
                ingest_async=form.cleaned_data["ingest_async"],
            )
            self.log_addition(request, key, "Created in the admin.")
            # The one time the secret exists outside its owner's hands: only its hash is kept.
            messages.warning(
                request,
                format_html(
                    "API key “{}” created. Copy its secret now, it will not be shown again: "
                    "<code>{}</code>",
                    key.name,
                    secret,
                ),
            )
            return HttpResponseRedirect(self.change_url(key))

        return self.run_service(request, form, create) or self.service_form_response(
            request,
            form=form,
            title="Add API key",
            submit_label="Create key",
            intro="The secret is shown once, after creating the key; only its hash is stored.",
        )

    @admin.action(description="Revoke the selected API keys", permissions=["revoke"])
    def revoke_action(self, request, queryset):
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            services.revoke_api_key(api_key=key)
            self.log_change(request, key, "Revoked in the admin.")
            revoked += 1
        messages.success(request, f"{revoked} API key(s) revoked.")


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ("key", "api_key", "method", "path", "status_code", "created_at")
    list_filter = ("method", "status_code")
    search_fields = ("key", "path")
    list_select_related = ("api_key",)
    readonly_fields = [f.name for f in IdempotencyRecord._meta.fields]
    show_full_result_count = False
