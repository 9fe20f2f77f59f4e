"""Wallets: created with the customer or on first use, their credit limits, the customer's other
ledger accounts, top-ups and adjustments. Money moves only through ``ledger.services``."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction

from billing import errors
from billing.models import (
    BillingMode,
    Customer,
    GrantSource,
    Wallet,
)
from billing.services.locks import lock_customer_usage
from ledger import errors as ledger_errors
from ledger import selectors as ledger_selectors
from ledger import services as ledger
from ledger.models import Account, NormalBalance
from ledger.models import Transaction as LedgerTransaction

WORLD = "@World"  # money entering from outside (top-ups until Stripe clears them)
ADJUSTMENTS = "@Adjustments"  # the other side of manual adjustments by finance staff


def _wallet_account_code(customer: Customer, currency: str) -> str:
    return f"wallet:{customer.pk}:{currency}"


def create_wallet(
    *, customer: Customer, currency: str, billing_mode: str, credit_limit: Decimal | None = None
) -> Wallet:
    postpaid = billing_mode == BillingMode.POSTPAID
    account = ledger.create_account(
        code=_wallet_account_code(customer, currency),
        name=f"{customer.name} — {currency} wallet",
        currency=currency,
        normal_balance=NormalBalance.CREDIT,
        allow_negative=postpaid,
        negative_limit=credit_limit if postpaid else None,
        owner_type="billing.customer",
        owner_id=str(customer.pk),
    )
    return Wallet.objects.create(
        customer=customer,
        currency=currency,
        account=account,
        billing_mode=billing_mode,
        credit_limit=credit_limit if postpaid else None,
    )


@transaction.atomic
def set_credit_limit(*, customer: Customer, credit_limit: Decimal | None) -> Wallet:
    """Change how far below zero the postpaid customer's wallet (in its own currency) may
    go; None: no limit. The wallet's ``credit_limit`` and its ledger account's overdraft
    floor change together, in one transaction: rating refuses by the floor and explains by
    the limit, so the two must never differ. Refused (``credit_limit_below_balance``) when
    the wallet is already further below zero than the new limit allows. Setting the limit
    it already has writes nothing."""
    if customer.billing_mode != BillingMode.POSTPAID:
        raise errors.ValidationFailed(
            "credit_limit applies to postpaid customers only", param="credit_limit"
        )
    if credit_limit is not None and credit_limit < 0:
        raise errors.ValidationFailed("credit_limit cannot be negative", param="credit_limit")
    # The usage lock first (rating takes it before the balance rows), then the wallet.
    lock_customer_usage([customer.pk])
    wallet = (
        Wallet.objects.select_for_update(no_key=True, of=("self",))
        .select_related("account")
        .filter(customer_id=customer.pk, currency=customer.currency)
        .first()
    )
    if wallet is None:
        raise errors.WalletNotFound(
            f"customer {customer.external_id} has no {customer.currency} wallet",
            param="credit_limit",
        )
    account = wallet.account
    if wallet.credit_limit == credit_limit and account.negative_limit == credit_limit:
        return wallet
    try:
        with transaction.atomic():
            ledger.set_overdraft(account=account, allow_negative=True, negative_limit=credit_limit)
    except ledger_errors.OverdraftLimitBelowBalance:
        assert credit_limit is not None, "no limit is never below the balance"
        available = ledger_selectors.get_balance(account=account).available
        raise errors.CreditLimitBelowBalance(
            f"the {wallet.currency} wallet's available balance is {available.normalize():f}: "
            f"a credit limit of {credit_limit.normalize():f} would leave it below the limit",
            param="credit_limit",
        ) from None
    wallet.credit_limit = credit_limit
    wallet.save(update_fields=["credit_limit"])
    return wallet


def wallet_for(*, customer: Customer, currency: str | None = None) -> Wallet:
    currency = currency or customer.currency
    wallet = (
        Wallet.objects.select_related("account")
        .filter(customer=customer, currency=currency)
        .first()
    )
    if wallet is None:
        raise errors.WalletNotFound(
            f"customer {customer.external_id} has no {currency} wallet", param="currency"
        )
    return wallet


def ensure_wallet(*, customer: Customer, currency: str) -> Wallet:
    """The customer's wallet in ``currency``, created on first use (a credits plan's
    ``CREDITS`` wallet, say). A wallet in another currency than the customer's own is
    prepaid: credits are bought before they are spent."""
    try:
        return wallet_for(customer=customer, currency=currency)
    except errors.WalletNotFound:
        pass
    billing_mode = customer.billing_mode if currency == customer.currency else BillingMode.PREPAID
    try:
        with transaction.atomic():
            return create_wallet(customer=customer, currency=currency, billing_mode=billing_mode)
    except IntegrityError:  # created concurrently
        return wallet_for(customer=customer, currency=currency)


TOKENS = "TOKENS"
CREDITS = "CREDITS"
TOKENS_SERVED = "@TokensServed"


def customer_account(
    *,
    customer: Customer,
    code: str,
    currency: str,
    name: str,
    normal_balance: str,
    allow_negative: bool = False,
) -> Account:
    """An owned ledger account of the customer's other than a wallet (its tokens used, what
    it owes on invoices), created on first use; safe when two create it at once."""
    account = Account.objects.filter(code=code, currency=currency).first()
    if account is not None:
        return account
    try:
        with transaction.atomic():
            return ledger.create_account(
                code=code,
                name=f"{customer.name} — {name}",
                currency=currency,
                normal_balance=normal_balance,
                allow_negative=allow_negative,
                owner_type="billing.customer",
                owner_id=str(customer.pk),
            )
    except IntegrityError:
        return Account.objects.get(code=code, currency=currency)


def usage_account(*, customer: Customer) -> Account:
    """The customer's ``TOKENS`` account: debited with every token it uses (the token leg of
    each usage posting), against the ``@TokensServed`` system account."""
    return customer_account(
        customer=customer,
        code=f"tokens:{customer.pk}",
        currency=TOKENS,
        name="tokens used",
        normal_balance=NormalBalance.DEBIT,
    )


@transaction.atomic
def top_up(
    *,
    customer: Customer,
    amount: Decimal,
    currency: str | None = None,
    reference: str | None = None,
    description: str = "",
    source_code: str = WORLD,
    metadata: dict[str, Any] | None = None,
    staff_user_id: int | None = None,
) -> LedgerTransaction:
    """Add funds to the customer's wallet from the outside world (or a clearing account).

    With a ``reference`` the top-up is idempotent: the same reference posts once. A top-up
    made by finance staff records who made it."""
    metadata = dict(metadata or {})
    if staff_user_id is not None:
        metadata["staff_user_id"] = staff_user_id
    wallet = wallet_for(customer=customer, currency=currency)
    source = ledger.ensure_system_account(
        code=source_code, currency=wallet.currency, normal_balance=NormalBalance.DEBIT
    )
    description = description or f"Top-up of {amount.normalize():f} {wallet.currency}"
    posted = ledger.post_transaction(
        reference=f"top-up:{customer.pk}:{reference or uuid.uuid4().hex}",
        legs=[ledger.debit(source, amount), ledger.credit(wallet.account, amount)],
        description=description,
        metadata={"kind": "top_up", "customer": customer.external_id, **metadata},
    )
    if wallet.currency == CREDITS:
        # Credits bought are a grant of their own: drawn after promotional credits, with
        # the purchase expiry (billing.credits).
        from billing import credits

        credits.record_purchase(
            customer=customer,
            wallet=wallet,
            posted=posted,
            amount=ledger.to_amount(amount),
            name=description,
            funding_account_id=source.pk,
        )
    return posted


@transaction.atomic
def adjust_balance(
    *,
    customer: Customer,
    amount: Decimal,
    reason: str,
    staff_user_id: int | None,
    currency: str | None = None,
    reference: str | None = None,
    approved_by_id: int | None = None,
) -> LedgerTransaction:
    """A manual adjustment by finance staff: a positive ``amount`` credits the wallet, a
    negative one debits it (subject to the wallet's floor). The reason and the staff user
    are recorded on the ledger transaction, and the second staff user who approved it when
    it needed approval (``billing.services.approvals``)."""
    if not reason.strip():
        raise errors.ValidationFailed("an adjustment needs a reason", param="reason")
    if amount == 0:
        raise errors.ValidationFailed("an adjustment cannot be zero", param="amount")
    wallet = wallet_for(customer=customer, currency=currency)
    adjustments = ledger.ensure_system_account(
        code=ADJUSTMENTS, currency=wallet.currency, normal_balance=NormalBalance.DEBIT
    )
    magnitude = abs(amount)
    if wallet.currency == CREDITS:
        # Credits added are a grant (used after promotional ones, never expiring); credits
        # taken away are drawn from the grants in their usual order (billing.credits).
        return _adjust_credits(
            customer=customer,
            wallet=wallet,
            amount=amount,
            reason=reason.strip(),
            staff_user_id=staff_user_id,
            reference=reference,
            adjustments=adjustments,
            approved_by_id=approved_by_id,
        )
    if amount > 0:
        legs = [ledger.debit(adjustments, magnitude), ledger.credit(wallet.account, magnitude)]
    else:
        legs = [ledger.debit(wallet.account, magnitude), ledger.credit(adjustments, magnitude)]
    return ledger.post_transaction(
        reference=f"adjustment:{customer.pk}:{reference or uuid.uuid4().hex}",
        legs=legs,
        description=f"Adjustment: {reason.strip()}",
        metadata={
            "kind": "adjustment",
            "reason": reason.strip(),
            "staff_user_id": staff_user_id,
            "customer": customer.external_id,
            **({"approved_by_id": approved_by_id} if approved_by_id is not None else {}),
        },
    )


def _adjust_credits(
    *,
    customer: Customer,
    wallet: Wallet,
    amount: Decimal,
    reason: str,
    staff_user_id: int | None,
    reference: str | None,
    adjustments: Account,
    approved_by_id: int | None = None,
) -> LedgerTransaction:
    from billing import credits

    if amount > 0:
        grant = credits.grant_credits(
            customer=customer,
            amount=amount,
            name=f"Adjustment: {reason}",
            source=GrantSource.ADJUSTMENT,
            reference=f"adjustment:{reference or uuid.uuid4().hex}",
            staff_user_id=staff_user_id,
        )
        return grant.ledger_transaction
    return credits.debit_wallet(
        customer=customer,
        wallet=wallet,
        amount=ledger.to_amount(-amount),
        reference=f"adjustment:{customer.pk}:{reference or uuid.uuid4().hex}",
        counter_account_id=adjustments.pk,
        description=f"Adjustment: {reason}",
        metadata={
            "kind": "adjustment",
            "reason": reason,
            "staff_user_id": staff_user_id,
            "customer": customer.external_id,
            **({"approved_by_id": approved_by_id} if approved_by_id is not None else {}),
        },
    )
