"""The customer's own account: topping a wallet up (Stripe Checkout, or offline mode) and
the settings page (auto top-up of each prepaid wallet, the low-balance alert, a password to
sign in with)."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django import forms
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.forms import SetPasswordForm
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse

from billing import alerts, services
from billing.errors import BillingError
from billing.models import AutoTopUp, Customer
from billing.portal import selectors
from billing.portal.views.common import active_alerts, money, portal_view
from invoicing import payments
from invoicing.money import to_minor_unit


class TopUpForm(forms.Form):
    amount = forms.DecimalField(min_value=Decimal("1"), max_digits=14, decimal_places=2)
    currency = forms.ChoiceField()
    request_id = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args, currencies: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        currency = self.fields["currency"]
        assert isinstance(currency, forms.ChoiceField)
        currency.choices = [(c, c) for c in currencies]


@portal_view
def top_up(request):
    customer = request.customer
    currencies = list(customer.wallets.order_by("currency").values_list("currency", flat=True))
    form = TopUpForm(
        request.POST or None,
        currencies=currencies,
        initial={"request_id": uuid.uuid4().hex, "currency": customer.currency},
    )
    if request.method == "POST" and form.is_valid():
        back = request.build_absolute_uri(reverse("portal:overview"))
        try:
            start = payments.checkout_top_up(
                customer=customer,
                amount=form.cleaned_data["amount"],
                currency=form.cleaned_data["currency"],
                success_url=back + "?topped_up=1",
                cancel_url=request.build_absolute_uri(reverse("portal:top_up")),
                request_id=form.cleaned_data["request_id"],
            )
        except BillingError as error:
            form.add_error(None, error.message)
        else:
            if start.offline:
                messages.success(
                    request,
                    f"Added {form.cleaned_data['amount']} {form.cleaned_data['currency']} "
                    "(offline mode: no card was charged).",
                )
            return redirect(start.url)
    return render(
        request,
        "portal/top_up.html",
        {
            "customer": customer,
            "form": form,
            "offline": payments.offline_mode(),
            "payments_available": payments.provider_available(),
        },
    )


class AlertForm(forms.Form):
    threshold = forms.DecimalField(
        required=False, min_value=Decimal(0), max_digits=20, decimal_places=2
    )
    email = forms.EmailField(required=False)


class AutoTopUpForm(forms.Form):
    """A wallet's auto top-up as the customer sets it; the rules (target above threshold,
    a positive cap, limits) are the service's, and its errors land on these fields."""

    enabled = forms.BooleanField(required=False)
    threshold = forms.DecimalField(max_digits=26, decimal_places=12)
    target = forms.DecimalField(max_digits=26, decimal_places=12)
    monthly_cap = forms.DecimalField(max_digits=26, decimal_places=12)


def _figure(value: Decimal, unit: str) -> Decimal:
    """An amount as the form shows it: money in its minor unit, credits exactly."""
    return value.normalize() if unit == "CREDITS" else to_minor_unit(value, unit)


def _auto_top_up_form(customer: Customer, entry: dict, data) -> AutoTopUpForm:
    wallet, current = entry["wallet"], entry["settings"]
    initial: dict = {"enabled": False}
    if isinstance(current, AutoTopUp):
        initial = {
            "enabled": current.enabled,
            "threshold": _figure(current.threshold, wallet.currency),
            "target": _figure(current.target, wallet.currency),
            "monthly_cap": _figure(current.monthly_cap, services.charge_currency(wallet)),
        }
    return AutoTopUpForm(data, prefix=f"atu-{wallet.currency}", initial=initial)


def _save_auto_top_up(request, customer: Customer, entries: list[dict]):
    """Save one wallet's form; the form with its errors when the service refuses."""
    currency = request.POST.get("wallet", "")
    entry = next((e for e in entries if e["wallet"].currency == currency), None)
    if entry is None:  # not a prepaid wallet of this customer
        raise Http404("no such wallet")
    form = _auto_top_up_form(customer, entry, request.POST)
    entry["form"] = form
    if not form.is_valid():
        return None
    current = entry["settings"]
    # The cool-off and the failures allowed are finance's: the customer's save keeps them.
    kept = (
        {"cool_off_seconds": current.cool_off_seconds, "max_failures": current.max_failures}
        if isinstance(current, AutoTopUp)
        else {}
    )
    try:
        services.set_auto_top_up(
            wallet=entry["wallet"],
            enabled=form.cleaned_data["enabled"],
            threshold=form.cleaned_data["threshold"],
            target=form.cleaned_data["target"],
            monthly_cap=form.cleaned_data["monthly_cap"],
            **kept,
        )
    except BillingError as error:
        form.add_error(error.param if error.param in form.fields else None, error.message)
        return None
    state = "on" if form.cleaned_data["enabled"] else "off"
    messages.success(request, f"Auto top-up of your {currency} wallet saved ({state}).")
    return redirect("portal:settings")


def _auto_top_up_context(customer: Customer, entries: list[dict]) -> list[dict]:
    for entry in entries:
        wallet = entry["wallet"]
        charged_in = services.charge_currency(wallet)
        entry["charge_currency"] = charged_in
        entry["attempt_rows"] = [
            {
                "attempt": attempt,
                "amount": money(attempt.amount, attempt.charge_currency),
                "credited": money(attempt.credit_amount, attempt.wallet_currency),
            }
            for attempt in entry["attempts"]
        ]
        if isinstance(entry["settings"], AutoTopUp):
            settings = entry["settings"]
            entry["threshold"] = money(settings.threshold, wallet.currency)
            entry["target"] = money(settings.target, wallet.currency)
            entry["monthly_cap"] = money(settings.monthly_cap, charged_in)
    return entries


@portal_view
def portal_settings(request):
    customer = request.customer
    entries = selectors.auto_top_ups(customer)
    for entry in entries:
        entry["form"] = _auto_top_up_form(customer, entry, None)
    if request.method == "POST" and request.POST.get("form") == "auto_top_up":
        saved = _save_auto_top_up(request, customer, entries)
        if saved is not None:
            return saved
    current = alerts.portal_low_balance(customer)
    alert = AlertForm(
        request.POST if request.POST.get("form") == "alert" else None,
        initial={
            "threshold": None
            if current is None or current.threshold is None
            else to_minor_unit(current.threshold, customer.currency),
            "email": ", ".join(current.recipients) if current else request.user.email,
        },
    )
    password = SetPasswordForm(
        request.user, request.POST if request.POST.get("form") == "password" else None
    )
    if request.method == "POST":
        if request.POST.get("form") == "alert" and alert.is_valid():
            alerts.update_alert_settings(
                customer=customer,
                threshold=alert.cleaned_data["threshold"],
                email=alert.cleaned_data["email"] or "",
            )
            messages.success(request, "Alert saved.")
            return redirect("portal:settings")
        if request.POST.get("form") == "password" and password.is_valid():
            password.save()
            login(request, request.user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, "Password set: you can sign in with it from now on.")
            return redirect("portal:settings")
    return render(
        request,
        "portal/settings.html",
        {
            "customer": customer,
            "alerts": active_alerts(customer),
            "alert": alert,
            "password": password,
            "auto_top_ups": _auto_top_up_context(customer, entries),
            "saved_card": payments.has_saved_card(customer=customer) if entries else None,
            "offline": payments.offline_mode(),
        },
    )
