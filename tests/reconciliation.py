"""The usage reconciliation every subscription must pass: what rating took from the
customer's wallets for usage is exactly what invoices carry plus what the periods still
open hold —

    Σ usage posted to the wallets = Σ usage on invoices + Σ usage of open periods

per currency. A period is *open* while it can still be closed: a live subscription's
current period and those after it; for a canceled one, its current period (up to its end)
until it has an invoice. Usage rated into any other period — before the current one with
no invoice, or after a canceled subscription's end — is charged and never invoiced, and
the check fails on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Sum

from billing.models import Subscription, SubscriptionStatus, Wallet
from invoicing.models import Invoice, InvoiceStatus, LineKind
from ledger.models import Entry
from metering.models import PeriodUsage

ZERO = Decimal(0)


@dataclass
class Reconciliation:
    posted: dict[str, Decimal] = field(default_factory=dict)  # usage debited from wallets
    invoiced: dict[str, Decimal] = field(default_factory=dict)  # usage on invoices
    open: dict[str, Decimal] = field(default_factory=dict)  # usage of open periods
    stray: list[tuple] = field(default_factory=list)  # (period_start, currency, charged)

    def balanced(self) -> bool:
        currencies = set(self.posted) | set(self.invoiced) | set(self.open)
        return not self.stray and all(
            self.posted.get(c, ZERO) == self.invoiced.get(c, ZERO) + self.open.get(c, ZERO)
            for c in currencies
        )


def _add(totals: dict[str, Decimal], currency: str, amount: Decimal) -> None:
    if amount:
        totals[currency] = totals.get(currency, ZERO) + amount


def reconcile(subscription: Subscription) -> Reconciliation:
    """The three sums of one subscription (the customer's only one), read from the ledger,
    the invoices and the period counters."""
    subscription = Subscription.objects.select_related("plan").get(pk=subscription.pk)
    result = Reconciliation()
    wallets = Wallet.objects.filter(customer_id=subscription.customer_id)
    for wallet in wallets:
        posted = (
            Entry.objects.filter(
                account_id=wallet.account_id,
                transaction__reference__startswith=f"usage:{subscription.customer_id}:",
            ).aggregate(total=Sum("amount"))["total"]
            or ZERO
        )
        _add(result.posted, wallet.currency, posted)  # a debit: positive
    invoices = Invoice.objects.filter(subscription=subscription).exclude(status=InvoiceStatus.VOID)
    invoiced_periods = set()
    for invoice in invoices.prefetch_related("lines"):
        invoiced_periods.add(invoice.period_start)
        _add(result.invoiced, invoice.currency, invoice.usage_charged)
        for line in invoice.lines.all():
            if line.kind == LineKind.CREDITS:
                _add(result.invoiced, line.metadata["currency"], Decimal(line.metadata["credits"]))
    canceled = subscription.status == SubscriptionStatus.CANCELED
    for counter in PeriodUsage.objects.filter(subscription=subscription):
        currency = counter.currency or subscription.plan.currency
        if counter.period_start in invoiced_periods:
            continue
        is_open = counter.period_start >= subscription.current_period_start and (
            not canceled or counter.period_start < subscription.ended_at
        )
        if is_open:
            _add(result.open, currency, counter.charged)
        elif counter.charged:
            result.stray.append((counter.period_start, currency, counter.charged))
    return result


def assert_reconciled(subscription: Subscription) -> Reconciliation:
    result = reconcile(subscription)
    assert result.balanced(), result
    return result
