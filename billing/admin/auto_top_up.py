"""Auto top-ups in the admin: finance staff set a prepaid wallet's auto top-up (opened from
the wallet's row on the customer page), see its state (failures in a row, why it was
turned off, why the cap skipped it) and its attempts, read-only. Every write goes through
``billing.services.set_auto_top_up``, the service the API and the portal use."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from billing import services
from billing.admin.common import (
    ExactDecimalField,
    admin_link,
    date_cell,
    money_cell,
    time_cell,
    token_cell,
)
from billing.errors import BillingError
from billing.models import AutoTopUp, AutoTopUpAttempt, BillingMode, Wallet
from ledger.admin import ReadOnlyAdmin, ReadOnlyInline

SETTINGS_FIELDS = (
    "enabled",
    "threshold",
    "target",
    "monthly_cap",
    "cool_off_seconds",
    "max_failures",
)


class AutoTopUpForm(forms.ModelForm):
    threshold = ExactDecimalField(
        help_text="Refill when the available balance falls below this (money, or credits "
        "for a CREDITS wallet)."
    )
    target = ExactDecimalField(help_text="Refill up to this available balance.")
    monthly_cap = ExactDecimalField(
        help_text="At most this much money charged per calendar month (UTC), in the wallet's "
        "currency (for credits: the customer's currency)."
    )
    cool_off_seconds = forms.IntegerField(
        min_value=0,
        max_value=services.MAX_COOL_OFF_SECONDS,
        initial=600,
        help_text="At least this long between two attempts.",
    )
    max_failures = forms.IntegerField(
        min_value=1,
        max_value=services.MAX_AUTO_TOP_UP_FAILURES,
        initial=3,
        help_text="Turned off after this many failed attempts in a row.",
    )

    class Meta:
        model = AutoTopUp
        fields = ("wallet", *SETTINGS_FIELDS)

    def clean_wallet(self) -> Wallet:
        wallet = self.cleaned_data["wallet"]
        if wallet.billing_mode != BillingMode.PREPAID:
            raise forms.ValidationError("Only a prepaid wallet is topped up automatically.")
        return wallet

    def clean(self):
        data = super().clean() or {}
        threshold, target = data.get("threshold"), data.get("target")
        if threshold is not None and threshold < 0:
            self.add_error("threshold", "The threshold cannot be negative.")
        if threshold is not None and target is not None and target <= threshold:
            self.add_error("target", "The target must be above the threshold.")
        cap = data.get("monthly_cap")
        if cap is not None and cap <= 0:
            self.add_error("monthly_cap", "The monthly cap must be positive.")
        return data


class AutoTopUpAttemptInline(ReadOnlyInline):
    model = AutoTopUpAttempt
    fk_name = "auto_top_up"
    fields = (
        "created_at",
        "status",
        "charged",
        "credited",
        "payment_intent_id",
        "offline",
        "failure_code",
        "failure_message",
        "completed_at",
    )
    readonly_fields = fields
    ordering = ("-id",)
    show_change_link = False

    @admin.display(description="charged")
    def charged(self, attempt):
        return money_cell(attempt.amount, attempt.charge_currency)

    @admin.display(description="credited")
    def credited(self, attempt):
        return money_cell(attempt.credit_amount, attempt.wallet_currency)


@admin.register(AutoTopUp)
class AutoTopUpAdmin(admin.ModelAdmin):
    form = AutoTopUpForm
    list_display = (
        "wallet",
        "enabled",
        "threshold",
        "target",
        "monthly_cap",
        "failures",
        "last_attempt",
        "state",
    )
    list_filter = ("enabled",)
    search_fields = ("customer__external_id", "customer__name")
    list_select_related = ("wallet__customer",)
    raw_id_fields = ("wallet",)
    readonly_fields = (
        "customer_link",
        "consecutive_failures",
        "last_attempt_at",
        "disabled_reason",
        "disabled_at",
        "skipped_reason",
        "updated_by",
        "updated_at",
    )
    inlines = (AutoTopUpAttemptInline,)

    def get_fieldsets(self, request, obj=None):
        wallet = ("customer_link",) if obj else ("wallet",)
        return (
            (None, {"fields": (*wallet, *SETTINGS_FIELDS)}),
            (
                "State",
                {
                    "fields": (
                        "consecutive_failures",
                        "last_attempt_at",
                        "disabled_reason",
                        "disabled_at",
                        "skipped_reason",
                        "updated_by",
                        "updated_at",
                    )
                },
            ),
        )

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is not None:  # the wallet of an auto top-up never changes
            kwargs["fields"] = SETTINGS_FIELDS
        return super().get_form(request, obj, change=change, **kwargs)

    def has_delete_permission(self, request, obj=None):
        return False  # turn it off instead: its attempts stay with it

    @admin.display(description="wallet")
    def customer_link(self, auto):
        return admin_link(auto.wallet.customer, f"{auto.wallet}")

    @admin.display(description="last attempt")
    def last_attempt(self, auto):
        return date_cell(auto.last_attempt_at)

    @admin.display(description="failures", ordering="consecutive_failures")
    def failures(self, auto):
        return auto.consecutive_failures

    @admin.display(description="state")
    def state(self, auto):
        return auto.disabled_reason or auto.skipped_reason or ("on" if auto.enabled else "off")

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        wallet = obj.wallet if change else data["wallet"]
        try:
            saved = services.set_auto_top_up(
                wallet=wallet,
                staff_user_id=request.user.pk,
                **{name: data[name] for name in SETTINGS_FIELDS},
            )
        except BillingError as error:  # the form checked the same rules: a race, at most
            messages.error(request, f"{error.message} ({error.code})")
            raise
        obj.pk = saved.pk
        obj.refresh_from_db()


@admin.register(AutoTopUpAttempt)
class AutoTopUpAttemptAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "wallet",
        "status",
        "charged",
        "credited",
        "payment_intent",
        "offline",
        "failure_code",
        "created",
    )
    # the charge's currency in its amount's cell, the payment intent cut short (whole on hover)
    # and the time to the minute: the list was 1,171 px wide in the 900 px beside the sidebar

    @admin.display(description="charged", ordering="amount")
    def charged(self, attempt):
        return money_cell(attempt.amount, attempt.charge_currency)

    @admin.display(description="credited", ordering="credit_amount")
    def credited(self, attempt):
        return money_cell(attempt.credit_amount, attempt.wallet_currency)

    @admin.display(description="payment intent", ordering="payment_intent_id")
    def payment_intent(self, attempt):
        return token_cell(attempt.payment_intent_id)

    @admin.display(description="created", ordering="created_at")
    def created(self, attempt):
        return time_cell(attempt.created_at)

    list_filter = ("status", "offline")
    search_fields = ("customer__external_id", "payment_intent_id")
    list_select_related = ("wallet__customer",)
