"""The ledger accounts invoicing posts to, and the legs of its postings.

Money moves only through ``ledger.services``; the money movement map is in
``invoicing.models``. System (hot) accounts: ``@Revenue``, ``@TaxPayable``, ``@Rounding``
and each payment provider's clearing account; the customer's own: its wallet and its
receivable (``receivable_account``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from billing import services as billing_services
from billing.models import Customer
from invoicing.models import Invoice, PaymentProvider
from ledger import services as ledger
from ledger.models import Account, NormalBalance
from ledger.services import Leg

ZERO = Decimal(0)
REVENUE = "@Revenue"
TAX_PAYABLE = "@TaxPayable"
ROUNDING = "@Rounding"
# What a prepaid commitment's period left undrawn (breakage): revenue of its own.
COMMITMENT_BREAKAGE = "@CommitmentBreakage"
# A commitment invoiced in advance, until its period closes: owed to the customer as usage
# or as breakage, not revenue yet (a liability, credit-normal).
COMMITMENT_PREPAID = "@CommitmentPrepaid"
# Keyed by PaymentProvider; looked up by the provider string a payment row or Stripe gives.
CLEARING: dict[str, str] = {
    PaymentProvider.STRIPE: "@StripeClearing",
    PaymentProvider.OFFLINE: "@OfflinePayments",
}


def receivable_account(*, customer: Customer, currency: str) -> Account:
    """What the customer owes on finalized invoices: its own debit-normal account (it may
    go below zero: an overpayment is owed back)."""
    return billing_services.customer_account(
        customer=customer,
        code=f"receivable:{customer.pk}:{currency}",
        currency=currency,
        name="invoices receivable",
        normal_balance=NormalBalance.DEBIT,
        allow_negative=True,
    )


def system_account_id(code: str, currency: str, normal: str = NormalBalance.CREDIT) -> int:
    """The id of a system (hot) account of invoicing, created on first use."""
    return ledger.ensure_system_account(code=code, currency=currency, normal_balance=normal).pk


def nonzero_legs(*legs: Leg) -> list[Leg]:
    """Signed legs (positive = debit), zero legs left out."""
    return [leg for leg in legs if leg.amount]


def recognised(invoice: Invoice, *, sign: int, usage: bool = False) -> list[Leg]:
    """The system-account legs of what an invoice recognises: fees (and, with ``usage``, the
    usage rated in real time) on @Revenue but a commitment's breakage on
    @CommitmentBreakage, a commitment invoiced in advance on @CommitmentPrepaid until its
    period's invoice releases it (``commitment_deferred``, negative there), tax on
    @TaxPayable, rounding on @Rounding; ``sign`` -1 credits them (finalize), +1 debits them
    (void)."""
    currency = invoice.currency
    breakage, deferred = invoice.commitment_breakage, invoice.commitment_deferred
    revenue = (
        invoice.fees_precise - breakage - deferred + (invoice.usage_charged if usage else ZERO)
    )
    figures = (
        (REVENUE, revenue),
        (COMMITMENT_BREAKAGE, breakage),
        (COMMITMENT_PREPAID, deferred),
        (TAX_PAYABLE, invoice.tax),
        (ROUNDING, invoice.rounding),
    )
    return [
        Leg(system_account_id(code, currency), sign * amount) for code, amount in figures if amount
    ]


@dataclass(frozen=True)
class CustomerAccounts:
    """The ids of the customer's two accounts an invoice's postings move."""

    wallet_id: int
    receivable_id: int


def customer_accounts(invoice: Invoice) -> CustomerAccounts:
    wallet = billing_services.wallet_for(customer=invoice.customer, currency=invoice.currency)
    receivable = receivable_account(customer=invoice.customer, currency=invoice.currency)
    return CustomerAccounts(wallet_id=wallet.account_id, receivable_id=receivable.pk)
