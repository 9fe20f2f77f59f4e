"""What a customer's page leads with: balance, plan, open invoices and recent usage, read
in a handful of queries (``invoicing.finance``: open invoices, the daily usage counters)
and shown above the form by ``admin/billing/customer/change_form.html``."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.urls import reverse
from django.utils import timezone

from billing import selectors
from billing.admin import charts
from billing.models import Customer
from billing.web.money import money_cell
from invoicing import finance

USAGE_DAYS = 30

if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _ModelAdmin = object


def customer_summary(customer: Customer) -> dict[str, Any]:
    now = timezone.now()
    wallets = list(customer.wallets.select_related("account").order_by("currency"))
    balances = selectors.wallet_balances([w.account for w in wallets])
    subscription = finance.live_subscription(customer)
    invoices = finance.open_invoices(customer)
    usage = finance.recent_usage(customer, now=now, days=USAGE_DAYS)

    owed: dict[str, Decimal] = defaultdict(Decimal)
    for invoice in invoices:
        owed[invoice.currency] += invoice.amount_remaining
    by_currency: dict[str, dict[Any, Decimal]] = defaultdict(dict)
    events: dict[str, int] = defaultdict(int)
    for day in usage:
        by_currency[day.currency][day.day] = day.amount
        events[day.currency] += day.events
    first_day = now.astimezone(UTC).date() - timedelta(days=USAGE_DAYS - 1)
    days = [first_day + timedelta(days=i) for i in range(USAGE_DAYS)]
    return {
        "balances": [
            {
                "currency": w.currency,
                "available": money_cell(balances[w.account_id].available, w.currency),
                "held": money_cell(balances[w.account_id].held, w.currency)
                if balances[w.account_id].held
                else "",
                "mode": w.get_billing_mode_display(),
            }
            for w in wallets
        ],
        "subscription": subscription,
        "subscription_url": reverse("admin:billing_subscription_change", args=[subscription.pk])
        if subscription
        else "",
        "invoices": [
            {
                "number": str(invoice),
                "url": reverse("admin:invoicing_invoice_change", args=[invoice.pk]),
                "remaining": money_cell(invoice.amount_remaining, invoice.currency),
                "due_at": invoice.due_at,
                "overdue": invoice.due_at is not None and invoice.due_at < now,
            }
            for invoice in invoices
        ],
        "owed": [money_cell(amount, currency) for currency, amount in sorted(owed.items())],
        "usage": [
            {
                "currency": currency,
                "total": money_cell(sum(amounts.values(), Decimal(0)), currency),
                "events": events[currency],
                "chart": charts.sparkline(
                    [amounts.get(day, Decimal(0)) for day in days],
                    title=f"Rated usage per day, last {USAGE_DAYS} days, {currency}",
                ),
            }
            for currency, amounts in sorted(by_currency.items())
        ],
        "usage_days": USAGE_DAYS,
    }


class CustomerSummaryMixin(_ModelAdmin):
    """The customer's page opens with its summary (``customer_summary``)."""

    def change_view(self, request, object_id, form_url="", extra_context=None):
        customer = self.get_object(request, unquote(object_id))
        if customer is not None:
            extra_context = {**(extra_context or {}), "summary": customer_summary(customer)}
        return super().change_view(request, object_id, form_url, extra_context)
