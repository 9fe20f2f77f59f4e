"""Four-eyes approval of large manual adjustments (``billing.models.AdjustmentRequest``).

``request_adjustment`` is how staff adjust a balance: below the currency's threshold
(``ADJUSTMENT_APPROVAL_THRESHOLD``) it posts at once through ``adjust_balance``; at or above
it, it stores a pending request. ``approve_adjustment`` by a second, different staff user
posts it — through ``adjust_balance`` as well, with a ledger reference derived from the
request — and ``reject_adjustment`` closes it without posting.

Race safety: a decision locks the request row first (``SELECT … FOR UPDATE``), then the
posting locks the wallet's balance as every posting does; two approvers at once post once
(the second finds it approved and returns it), and the ledger's unique reference would
refuse a second posting anyway. The database refuses a decision by the requester."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import errors
from billing.models import AdjustmentRequest, ApprovalStatus, Customer
from billing.services.wallets import adjust_balance, wallet_for
from ledger.models import Transaction as LedgerTransaction


def approval_threshold(currency: str) -> Decimal | None:
    """The size from which an adjustment in ``currency`` needs approval (None: never)."""
    thresholds: dict[str, Decimal] = settings.ADJUSTMENT_APPROVAL_THRESHOLD
    return thresholds.get(currency, thresholds.get("*"))


def needs_approval(*, amount: Decimal, currency: str) -> bool:
    threshold = approval_threshold(currency)
    return threshold is not None and abs(amount) >= threshold


@dataclass(frozen=True)
class AdjustmentOutcome:
    """Posted (``transaction``) or waiting for approval (``request``)."""

    transaction: LedgerTransaction | None = None
    request: AdjustmentRequest | None = None


def request_adjustment(
    *,
    customer: Customer,
    amount: Decimal,
    reason: str,
    staff_user_id: int,
    reference: str,
    currency: str | None = None,
) -> AdjustmentOutcome:
    """A staff user's manual adjustment: posted now, or a pending request when it is large.
    Idempotent by ``reference`` (the form's token): the same one posts or asks once."""
    reason = reason.strip()
    if not reason:
        raise errors.ValidationFailed("an adjustment needs a reason", param="reason")
    if amount == 0:
        raise errors.ValidationFailed("an adjustment cannot be zero", param="amount")
    wallet = wallet_for(customer=customer, currency=currency)
    if not needs_approval(amount=amount, currency=wallet.currency):
        posted = adjust_balance(
            customer=customer,
            amount=amount,
            reason=reason,
            staff_user_id=staff_user_id,
            currency=wallet.currency,
            reference=reference,
        )
        return AdjustmentOutcome(transaction=posted)
    request, _ = AdjustmentRequest.objects.get_or_create(
        reference=reference,
        defaults={
            "customer": customer,
            "currency": wallet.currency,
            "amount": amount,
            "reason": reason,
            "requested_by_id": staff_user_id,
        },
    )
    return AdjustmentOutcome(request=request)


def _lock(request_id: int) -> AdjustmentRequest:
    return (
        AdjustmentRequest.objects.select_for_update(of=("self",))
        .select_related("customer")
        .get(pk=request_id)
    )


@transaction.atomic
def approve_adjustment(*, request_id: int, approver_id: int, note: str = "") -> AdjustmentRequest:
    """Post a pending request, once: approving an approved request returns it unchanged."""
    request = _lock(request_id)
    if request.status == ApprovalStatus.APPROVED:
        return request
    if request.status != ApprovalStatus.PENDING:
        raise errors.AdjustmentAlreadyDecided(f"this adjustment was already {request.status}")
    if request.requested_by_id == approver_id:
        raise errors.ApprovalBySameUser(
            "the staff user who asked for an adjustment cannot approve it: a second person must"
        )
    request.ledger_transaction = adjust_balance(
        customer=request.customer,
        amount=request.amount,
        reason=request.reason,
        staff_user_id=request.requested_by_id,
        currency=request.currency,
        reference=f"approval:{request.pk}",
        approved_by_id=approver_id,
    )
    request.status = ApprovalStatus.APPROVED
    request.decided_by_id, request.decided_at = approver_id, timezone.now()
    request.decision_note = note.strip()
    request.save(
        update_fields=["status", "decided_by", "decided_at", "decision_note", "ledger_transaction"]
    )
    return request


@transaction.atomic
def reject_adjustment(*, request_id: int, decider_id: int, note: str = "") -> AdjustmentRequest:
    """Close a pending request without posting; rejecting it again returns it unchanged."""
    request = _lock(request_id)
    if request.status == ApprovalStatus.REJECTED:
        return request
    if request.status != ApprovalStatus.PENDING:
        raise errors.AdjustmentAlreadyDecided(f"this adjustment was already {request.status}")
    if request.requested_by_id == decider_id:
        raise errors.ApprovalBySameUser(
            "the staff user who asked for an adjustment cannot decide it: a second person must"
        )
    request.status = ApprovalStatus.REJECTED
    request.decided_by_id, request.decided_at = decider_id, timezone.now()
    request.decision_note = note.strip()
    request.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
    return request
