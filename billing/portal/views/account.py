"""The customer's own account: topping a wallet up (Stripe Checkout, or offline mode) and
the settings page (the low-balance alert, a password to sign in with)."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django import forms
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.forms import SetPasswordForm
from django.shortcuts import redirect, render
from django.urls import reverse

from billing import alerts
from billing.errors import BillingError
from billing.portal.views.common import portal_view
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


@portal_view
def portal_settings(request):
    customer = request.customer
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
        {"customer": customer, "alert": alert, "password": password},
    )
