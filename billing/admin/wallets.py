"""A customer's wallets in the admin: their balances (read from the ledger) on the customer
page, and the two ways finance moves money, each one ledger transaction recording the staff
user: a top-up and an adjustment (``billing.services.request_top_up``,
``request_adjustment``: posted at once and recorded as an applied request, or waiting for a
second person's approval when large — either way a row in the audit trail)."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from billing import services
from billing.admin.common import ExactDecimalField, ServiceFormMixin, admin_link, money, money_cell
from billing.models import AutoTopUp, BillingMode, Customer, Wallet
from billing.web.staff import record_reason
from ledger import selectors as ledger_selectors
from ledger.admin import ReadOnlyInline


def wallet_balance(wallet: Wallet) -> ledger_selectors.BalanceView:
    """The wallet's balance, read once per wallet and page (kept in the instance's own
    ``__dict__``, as ``cached_property`` keeps its values)."""
    cached = wallet.__dict__.get("_balance_view")
    if cached is None:
        cached = wallet.__dict__["_balance_view"] = ledger_selectors.get_balance(
            account=wallet.account
        )
    return cached


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
        "auto_top_up_link",
    )
    readonly_fields = fields
    show_change_link = False

    @admin.display(description="auto top-up")
    def auto_top_up_link(self, wallet):
        if wallet.billing_mode != BillingMode.PREPAID:
            return "—"
        auto = AutoTopUp.objects.filter(wallet=wallet).first()
        if auto is None:
            url = reverse("admin:billing_autotopup_add") + f"?wallet={wallet.pk}"
            return format_html('<a href="{}">set up</a>', url)
        label = (
            f"on: below {money(auto.threshold)} → {money(auto.target)}" if auto.enabled else "off"
        )
        return admin_link(auto, label)

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
        return money_cell(wallet_balance(wallet).posted, wallet.currency)

    @admin.display(description="held")
    def held(self, wallet):
        return money_cell(wallet_balance(wallet).held, wallet.currency)

    @admin.display(description="available")
    def available(self, wallet):
        return money_cell(wallet_balance(wallet).available, wallet.currency)


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
        currency = self.fields["currency"]
        assert isinstance(currency, forms.ChoiceField)
        currency.choices = [(c, c) for c in currencies]
        self.order_fields(["amount", "currency"])

    def clean_token(self) -> str:
        token = self.cleaned_data["token"]
        if not re.fullmatch(r"[0-9a-f]{32}", token):
            raise forms.ValidationError("This form has expired; open it again.")
        return token


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


class CustomerMoneyViews(ServiceFormMixin):
    """The customer admin's top-up and adjustment pages and the actions that open them
    (their URLs are in ``CustomerAdmin.get_urls``)."""

    def _money_page(self, request, customer, form, *, title, submit_label, post):
        posted = self.run_service(request, form, post)
        if posted is not None:
            return posted
        facts = [
            (
                f"{wallet.currency} wallet ({wallet.billing_mode})",
                f"available {money(wallet_balance(wallet).available)}, "
                f"posted {money(wallet_balance(wallet).posted)}",
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

    def top_up_view(self, request, object_id):
        customer = self.changeable_object_or_404(request, object_id)
        form = TopUpForm(request.POST or None, customer=customer)

        def post() -> HttpResponse:
            data = form.cleaned_data
            record_reason(data["description"])  # the trail's "why": the payment's reference
            # Large top-ups wait for a second staff user, as adjustments do (even with a
            # payment's reference in the description: one person typed it). Small ones post
            # at once, recorded as an applied request (billing.services.approvals).
            outcome = services.request_top_up(
                customer=customer,
                amount=data["amount"],
                currency=data["currency"],
                reference=f"admin:{data['token']}",
                description=data["description"],
                staff_user_id=request.user.pk,
            )
            summary = f"Top-up of {money(data['amount'], data['currency'])}"
            if outcome.request is not None:
                self.log_change(request, customer, f"{summary}: awaiting approval")
                messages.warning(
                    request,
                    f"{summary} is at or above the approval threshold: it waits for another "
                    "staff user's approval before it posts.",
                )
                return HttpResponseRedirect(
                    reverse("admin:billing_adjustmentrequest_change", args=[outcome.request.pk])
                )
            txn = outcome.transaction
            assert txn is not None
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
        customer = self.changeable_object_or_404(request, object_id)
        form = AdjustmentForm(request.POST or None, customer=customer)

        def post() -> HttpResponse:
            data = form.cleaned_data
            # Large adjustments wait for a second staff user (billing.services.approvals).
            outcome = services.request_adjustment(
                customer=customer,
                amount=data["amount"],
                reason=data["reason"],
                staff_user_id=request.user.pk,
                currency=data["currency"],
                reference=f"admin:{data['token']}",
            )
            summary = f"Adjustment of {money(data['amount'], data['currency'])}"
            if outcome.request is not None:
                self.log_change(
                    request, customer, f"{summary} ({data['reason']}): awaiting approval"
                )
                messages.warning(
                    request,
                    f"{summary} is at or above the approval threshold: it waits for another "
                    "staff user's approval before it posts.",
                )
                return HttpResponseRedirect(
                    reverse("admin:billing_adjustmentrequest_change", args=[outcome.request.pk])
                )
            txn = outcome.transaction
            assert txn is not None
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

    @admin.action(description="Top up the selected customer…", permissions=["change"])
    def top_up_action(self, request, queryset):
        return self.redirect_to_one(request, queryset, "top_up", "top up")

    @admin.action(description="Adjust the selected customer's balance…", permissions=["change"])
    def adjust_action(self, request, queryset):
        return self.redirect_to_one(request, queryset, "adjust", "adjust")
