"""Refunds of unused purchased credits: what is left of a ``purchase`` grant goes back.

    refund_unused_credits(grant_id, …)   take the credits back, then return the money, once

How it runs
-----------
1. One transaction, under the customer's usage lock (the lock rating holds, so no usage can
   draw on the same remainder: docs/architecture.md's lock order), then the grant's row:
   what is left of the grant leaves the ``CREDITS`` wallet for the account the credits came
   from (a ``refund`` allocation; the grant ends ``refunded``), and a ``CreditRefund`` row
   (one per grant, ``OneToOne``: a retry finds it) records what the money is worth:
   - bought by card (the purchase's Stripe payment is on the grant): the unused share of
     what was paid, ``paid × left / bought``, rounded down to the minor unit;
   - otherwise: ``left × CREDIT_PRICE``, rounded down — and never more than the unused share
     of what was paid when the purchase says (``payment.amount``, e.g. an auto top-up in
     offline mode). Credits whose payment is not recorded (a top-up through the API or by
     staff) are valued at the current ``CREDIT_PRICE``: the caller of that top-up chose it.
   Credits past their expiry are expired first (``billing.credits.expire_due_for``, as
   rating does under the same lock): they are not refunded.
2. The money goes back:
   - **stripe**: a Stripe refund of the purchase's PaymentIntent, outside any transaction,
     with the idempotency key ``credit-refund-<id>`` (a retry refunds once). Then ``@CreditsSold``
     (what was owed in credits) is debited and ``@StripeClearing`` credited. A refusal
     leaves the refund ``failed`` — the credits stay out of the wallet — and a retry sends
     it again.
   - **offline** (only where offline payments are enabled, ``PAYMENTS_OFFLINE``): paid back
     out of band, ``@Refunds`` debited and ``@OfflinePayments`` credited.
   - **credit_note** (otherwise): the money is credited to the customer's wallet in its
     currency (it pays the next invoices), ``@Refunds`` debited.
Held credits are never refunded: a grant with part of its remainder held is refused until
the hold resolves.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import credits
from billing import services as billing_services
from billing.models import AllocationKind, CreditAllocation, CreditGrant, GrantSource, GrantStatus
from invoicing import errors, payments, services, stripe_gateway
from invoicing.models import CreditRefund, CreditRefundMethod, CreditRefundStatus
from invoicing.money import floor_to_minor_unit
from ledger import services as ledger
from ledger.models import NormalBalance

REFUNDS = "@Refunds"
CREDITS_SOLD = "@CreditsSold"
ZERO = Decimal(0)


def refund_unused_credits(
    *,
    grant_id: int,
    reason: str = "",
    staff_user_id: int | None = None,
    now: datetime | None = None,
) -> CreditRefund:
    """Refund what is left of a purchased credit grant (see the module's docstring). A
    second call returns the first refund (``replayed``), sending a failed Stripe refund
    again."""
    now = now or timezone.now()
    refund = _take_back(grant_id=grant_id, reason=reason, staff_user_id=staff_user_id, now=now)
    if refund.status == CreditRefundStatus.SUCCEEDED:
        return refund
    if refund.method != CreditRefundMethod.STRIPE:  # booked with the credits; never pending
        return refund
    try:
        refund_id, _ = stripe_gateway.refund(
            payment_intent_id=refund.stripe_payment_intent_id,
            amount=refund.amount,
            currency=refund.currency,
            idempotency_key=f"credit-refund-{refund.pk}",
            metadata={
                "kind": "credit_refund",
                "credit_refund_id": str(refund.pk),
                "grant_id": str(refund.grant_id),
            },
        )
    except stripe_gateway.RefundError as error:
        CreditRefund.objects.filter(pk=refund.pk, status=CreditRefundStatus.PENDING).update(
            status=CreditRefundStatus.FAILED, error=str(error)
        )
        raise errors.RefundFailed(
            f"Stripe did not refund {refund.amount} {refund.currency}: {error}. The credits "
            "are out of the wallet; retry the refund.",
            param="grant",
        ) from None
    done = _refunded_by_stripe(refund_id=refund.pk, stripe_refund_id=refund_id, now=now)
    done.replayed = refund.replayed
    return done


def _method(grant: CreditGrant) -> str:
    payment = grant.metadata.get("payment") or {}
    if payment.get("provider") == "stripe":
        if not payments.stripe_enabled():
            raise errors.PaymentsUnavailable(
                "these credits were paid by card, and Stripe is not configured here",
                param="grant",
            )
        return CreditRefundMethod.STRIPE
    return CreditRefundMethod.OFFLINE if payments.offline_mode() else CreditRefundMethod.CREDIT_NOTE


def _take_back(
    *, grant_id: int, reason: str, staff_user_id: int | None, now: datetime
) -> CreditRefund:
    found = (
        CreditGrant.objects.filter(pk=grant_id)
        .values_list("customer_id", "wallet__account_id")
        .first()
    )
    if found is None:
        raise errors.CreditGrantNotFound(f"no credit grant {grant_id}", param="grant")
    customer_id, account_id = found
    with transaction.atomic():
        # Credits past their expiry are worthless to rating (it expires them first, under
        # the same lock): expire what is due now, kept even when the refund is refused.
        billing_services.lock_customer_usage([customer_id])
        credits.expire_due_for([account_id], now=now)
    with transaction.atomic():
        billing_services.lock_customer_usage([customer_id])  # before the grant: lock order
        grant = (
            CreditGrant.objects.select_for_update(of=("self",))
            .select_related("wallet", "customer")
            .get(pk=grant_id)
        )
        existing = CreditRefund.objects.select_for_update().filter(grant=grant).first()
        if existing is not None:
            existing.replayed = True
            if existing.status == CreditRefundStatus.FAILED:  # sent again below
                existing.status = CreditRefundStatus.PENDING
                existing.save(update_fields=["status"])
            return existing
        if grant.source != GrantSource.PURCHASE:
            raise errors.NotRefundable(
                f"grant {grant.pk} is {grant.source} credits; only purchased credits are "
                "refunded (void the others)",
                param="grant",
            )
        if grant.expires_at is not None and grant.expires_at <= now:
            raise errors.NotRefundable(
                f"grant {grant.pk}'s credits expired on {grant.expires_at:%Y-%m-%d %H:%M} UTC: "
                "nothing left to refund",
                param="grant",
            )
        if grant.status != GrantStatus.ACTIVE or grant.remaining <= 0:
            raise errors.NotRefundable(
                f"grant {grant.pk} is {grant.status}: nothing left to refund", param="grant"
            )
        wallet_account = grant.wallet.account_id
        balance = ledger.lock_balances(account_ids=[wallet_account])[wallet_account]
        room = balance.available if balance.floor is None else balance.available - balance.floor
        if room < grant.remaining:
            raise errors.NotRefundable(
                f"part of grant {grant.pk}'s credits is held; settle or release the hold first",
                param="grant",
            )
        left = grant.remaining
        method = _method(grant)
        payment = grant.metadata.get("payment") or {}
        if method == CreditRefundMethod.STRIPE:
            currency = payment["currency"]
            paid = Decimal(payment["amount"])
            amount = floor_to_minor_unit(paid * left / grant.amount, currency)
        else:
            currency = grant.customer.currency
            amount = floor_to_minor_unit(left * settings.CREDIT_PRICE, currency)
            if payment.get("amount") and payment.get("currency") == currency:
                # never more than the unused share of what was paid (the price may have
                # risen since)
                paid = Decimal(payment["amount"])
                amount = min(amount, floor_to_minor_unit(paid * left / grant.amount, currency))
        if amount <= 0:
            raise errors.NotRefundable(
                f"the {left.normalize():f} credits left are worth less than the smallest "
                f"unit of {currency}",
                param="grant",
            )
        funding_id = (
            grant.metadata.get("funding_account_id")
            or ledger.ensure_system_account(
                code=billing_services.WORLD,
                currency=grant.currency,
                normal_balance=NormalBalance.DEBIT,
            ).pk
        )
        posted = ledger.post_transaction(
            reference=f"credit-refund:{grant.pk}",
            legs=[ledger.debit(wallet_account, left), ledger.credit(funding_id, left)],
            description=f"Unused credits refunded: {grant.name}",
            metadata={
                "kind": "credit_refund",
                "customer": grant.customer.external_id,
                "grants": credits.grants_metadata([(grant.pk, left)]),
                "method": method,
                "amount": str(amount),
                "currency": currency,
                "staff_user_id": staff_user_id,
            },
            effective_at=now,
        )
        CreditAllocation.objects.create(
            grant=grant, ledger_transaction_id=posted.pk, amount=left, kind=AllocationKind.REFUND
        )
        grant.remaining = ZERO
        grant.status, grant.ended_at = GrantStatus.REFUNDED, now
        grant.metadata = {**grant.metadata, "refunded_by": staff_user_id}
        grant.save(update_fields=["remaining", "status", "ended_at", "metadata"])
        refund = CreditRefund.objects.create(
            grant=grant,
            customer=grant.customer,
            method=method,
            status=CreditRefundStatus.PENDING,
            credits=left,
            amount=amount,
            currency=currency,
            reason=reason,
            stripe_payment_intent_id=payment.get("payment_intent", "")
            if method == CreditRefundMethod.STRIPE
            else "",
            credits_transaction=posted,
            created_by_id=staff_user_id,
        )
        if method != CreditRefundMethod.STRIPE:
            _book_money(refund, now=now)
    refund.replayed = False
    return refund


def _book_money(refund: CreditRefund, *, now: datetime) -> None:
    """The money side of a refund, in its transaction: Stripe's (``@CreditsSold`` →
    ``@StripeClearing``), offline (``@Refunds`` → ``@OfflinePayments``) or a credit note
    (``@Refunds`` → the customer's wallet)."""
    currency, amount = refund.currency, refund.amount
    if refund.method == CreditRefundMethod.STRIPE:
        debit_id = services.system_account_id(CREDITS_SOLD, currency)
        credit_id = services.system_account_id(
            services.CLEARING["stripe"], currency, NormalBalance.DEBIT
        )
    elif refund.method == CreditRefundMethod.OFFLINE:
        debit_id = services.system_account_id(REFUNDS, currency, NormalBalance.DEBIT)
        credit_id = services.system_account_id(
            services.CLEARING["offline"], currency, NormalBalance.DEBIT
        )
    else:
        debit_id = services.system_account_id(REFUNDS, currency, NormalBalance.DEBIT)
        credit_id = billing_services.ensure_wallet(
            customer=refund.customer, currency=currency
        ).account_id
    posted = ledger.post_transaction(
        reference=f"credit-refund:{refund.grant_id}:money",
        legs=[ledger.debit(debit_id, amount), ledger.credit(credit_id, amount)],
        description=f"Refund of unused credits ({refund.get_method_display()})",
        metadata={
            "kind": "credit_refund_money",
            "customer": refund.customer.external_id,
            "credit_refund_id": refund.pk,
            "method": refund.method,
            "stripe_refund_id": refund.stripe_refund_id or None,
        },
        effective_at=now,
    )
    refund.money_transaction = posted
    refund.status = CreditRefundStatus.SUCCEEDED
    refund.refunded_at = now
    refund.error = ""
    refund.save(
        update_fields=["money_transaction", "status", "refunded_at", "error", "stripe_refund_id"]
    )


def _refunded_by_stripe(*, refund_id: int, stripe_refund_id: str, now: datetime) -> CreditRefund:
    with transaction.atomic():
        refund = (
            CreditRefund.objects.select_for_update().select_related("customer").get(pk=refund_id)
        )
        if refund.status != CreditRefundStatus.SUCCEEDED:
            refund.stripe_refund_id = stripe_refund_id
            _book_money(refund, now=now)
    return refund


def book_refunded_by_stripe(
    *, credit_refund_id: int, stripe_refund_id: str, now: datetime | None = None
) -> bool:
    """Stripe says it made this refund (its ``charge.refunded`` webhook): book its money
    side if that is not done yet (the process that asked died before booking). True when
    this call booked it; a second call books nothing."""
    now = now or timezone.now()
    with transaction.atomic():
        refund = (
            CreditRefund.objects.select_for_update()
            .select_related("customer")
            .filter(pk=credit_refund_id, method=CreditRefundMethod.STRIPE)
            .first()
        )
        if refund is None or refund.status == CreditRefundStatus.SUCCEEDED:
            return False
        refund.stripe_refund_id = stripe_refund_id
        _book_money(refund, now=now)
    return True


# A pending Stripe refund older than this was left by a process that died between asking
# Stripe and booking: sent again (the same idempotency key: refunded once) and booked.
STALE_PENDING_AFTER = timedelta(minutes=5)


def stale_pending_grant_ids(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    now = now or timezone.now()
    return list(
        CreditRefund.objects.filter(
            method=CreditRefundMethod.STRIPE,
            status=CreditRefundStatus.PENDING,
            created_at__lte=now - STALE_PENDING_AFTER,
        )
        .order_by("created_at", "id")
        .values_list("grant_id", flat=True)[:limit]
    )


def retry_stale_pending(*, now: datetime | None = None) -> int:
    """Beat: finish the Stripe refunds left pending (see ``STALE_PENDING_AFTER``); how many
    were booked. A refusal marks the refund ``failed`` (staff retry it) and goes on."""
    booked = 0
    for grant_id in stale_pending_grant_ids(now=now):
        try:
            refund = refund_unused_credits(grant_id=grant_id, now=now)
        except errors.RefundFailed:
            continue
        booked += refund.status == CreditRefundStatus.SUCCEEDED
    return booked


def is_credit_refund(payment_intent_id: str | None) -> bool:
    """Whether Stripe's refund of this payment is one of ours (its webhook books nothing)."""
    return (
        bool(payment_intent_id)
        and CreditRefund.objects.filter(stripe_payment_intent_id=payment_intent_id).exists()
    )
