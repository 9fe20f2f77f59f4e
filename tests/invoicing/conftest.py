"""Set-up for invoicing tests: customers on plans since a fixed date, usage rated with a
fixed clock, and readers of ledger balances by account code."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from billing.models import BillingMode, Customer, Plan, Subscription, Wallet
from billing.services import ChargeSpec, TierSpec
from invoicing import services as invoicing
from invoicing.models import Invoice
from ledger import selectors as ledger_selectors
from ledger.models import Account
from metering import rating
from tests.billing.conftest import at
from tests.factories import CustomerFactory, MeterFactory, PlanFactory, SubscriptionFactory, unique

D = Decimal
START = at(2026, 4, 1)  # periods run from the 1st: April has 30 days
PERIOD_END = at(2026, 5, 1)
IN_APRIL = at(2026, 4, 10, 9)

__all__ = ["ChargeSpec", "TierSpec", "at"]


def meter(code: str | None = None, **kw) -> str:
    code = code or unique("m")
    MeterFactory(code=code, api_call=True, **kw)
    return code


def plan(*charges: ChargeSpec, base_fee: str = "0", **kw) -> Plan:
    kw.setdefault("name", "Pro")
    if not kw.get("code"):
        kw.pop("code", None)
    return PlanFactory(base_fee=base_fee, charges=charges, **kw)


def subscribe(
    the_plan: Plan,
    *,
    external_id: str | None = None,
    billing_mode: str = BillingMode.POSTPAID,
    funds: str = "0",
    start: datetime = START,
    trial_days: int = 0,
    **customer_fields,
) -> Subscription:
    customer = CustomerFactory(
        external_id=external_id or unique("cus"),
        email="ap@acme.example",
        billing_mode=billing_mode,
        funds=funds,
        funds_reference=unique("fund"),
        **customer_fields,
    )
    return SubscriptionFactory(
        customer=customer, plan=the_plan, start=start, trial_days=trial_days, now=start
    )


def use(subscription: Subscription, units, *, at_time: datetime = IN_APRIL, key=None, now=None):
    """One api.call event of ``units``, rated as of ``now`` (default: just after it)."""
    customer = Customer.objects.get(pk=subscription.customer_id)
    outcome = rating.ingest_events(
        [
            rating.EventIn(
                idempotency_key=key or unique("ev"),
                customer=customer.external_id,
                event_name="api.call",
                timestamp=at_time,
                properties={"units": D(units) if not isinstance(units, D) else units},
            )
        ],
        now=now or at_time,
    )[0]
    return outcome


def close(subscription: Subscription, as_of: datetime = PERIOD_END) -> Invoice:
    result = invoicing.close_period(subscription_id=subscription.pk, as_of=as_of)
    assert result is not None, "nothing was due"
    return result.invoice


def finalize(invoice: Invoice, now: datetime = PERIOD_END) -> Invoice:
    return invoicing.finalize_invoice(invoice_id=invoice.pk, now=now)


def wallet_posted(subscription: Subscription, currency: str = "USD") -> Decimal:
    wallet = Wallet.objects.get(customer_id=subscription.customer_id, currency=currency)
    return ledger_selectors.get_balance(account=wallet.account).posted


def account_posted(code: str, currency: str = "USD") -> Decimal:
    account = Account.objects.filter(code=code, currency=currency).first()
    return ledger_selectors.get_balance(account=account).posted if account else D(0)


def receivable(subscription: Subscription, currency: str = "USD") -> Decimal:
    return account_posted(f"receivable:{subscription.customer_id}:{currency}", currency)


def lines(invoice: Invoice) -> list[tuple[str, str, Decimal, Decimal]]:
    """(kind, description, quantity, amount) per line, normalised for comparison."""
    return [
        (line.kind, line.description, line.quantity.normalize(), line.amount.normalize())
        for line in invoice.lines.order_by("position")
    ]
