"""Staff adjustments, each one a row; four eyes on the large ones
(``billing.models.AdjustmentRequest``).

``request_adjustment`` is how staff adjust a balance: below the currency's threshold
(``ADJUSTMENT_APPROVAL_THRESHOLD``) it posts at once through ``adjust_balance`` and records
the posting as an ``applied`` request (same transaction, the posting linked: every staff
adjustment is a row the audit trail and the approvals list see); at or above it, it stores
a pending request. ``approve_adjustment`` by a second, different staff user
posts it — through ``adjust_balance`` as well, with a ledger reference derived from the
request — and ``reject_adjustment`` closes it without posting. Admin top-ups
(``request_top_up``) and admin credit grants funded as an adjustment or a promotion
(``request_credit_grant``) go through the same requests (``kind``): approving one posts it
through ``top_up`` or ``billing.credits.grant_credits``. A top-up asks for approval at or
above the threshold even when its description names a real payment (a bank transfer's
reference): the reference is typed by the same one person, so it proves nothing.

Race safety: a decision locks the request row first (``SELECT … FOR UPDATE``), then the
posting locks the wallet's balance as every posting does; two approvers at once post once
(the second finds it approved and returns it), and the ledger's unique reference would
refuse a second posting anyway. The database refuses a decision by the requester.

``withdraw_adjustment``: the requester takes a pending request back (a mistake, a changed
mind) — only the requester, and only while it is pending; the same row lock orders it
against an approval racing it, so exactly one of the two happens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import errors
from billing.models import AdjustmentRequest, ApprovalKind, ApprovalStatus, Customer
from billing.services.wallets import adjust_balance, top_up, wallet_for
from ledger.models import Transaction as LedgerTransaction

if TYPE_CHECKING:
    from billing.models import CreditGrant


def approval_threshold(currency: str) -> Decimal | None:
    """The size from which an adjustment in ``currency`` needs approval (None: never)."""
    thresholds: dict[str, Decimal] = settings.ADJUSTMENT_APPROVAL_THRESHOLD
    return thresholds.get(currency, thresholds.get("*"))


def needs_approval(*, amount: Decimal, currency: str) -> bool:
    threshold = approval_threshold(currency)
    return threshold is not None and abs(amount) >= threshold


@dataclass(frozen=True)
class AdjustmentOutcome:
    """Posted (``transaction``; a credit grant's ``grant``; ``record``, the ``applied``
    request that records it) or waiting for approval (``request``)."""

    transaction: LedgerTransaction | None = None
    request: AdjustmentRequest | None = None
    grant: CreditGrant | None = None
    record: AdjustmentRequest | None = None


def _recorded(reference: str) -> AdjustmentRequest | None:
    """The request a form's reference already made, if any: the same form submitted again
    (say with another amount) returns what the first submission did, never a second one."""
    return (
        AdjustmentRequest.objects.select_related("ledger_transaction")
        .filter(reference=reference)
        .first()
    )


def _outcome_of(request: AdjustmentRequest) -> AdjustmentOutcome:
    if request.status == ApprovalStatus.APPLIED:
        return AdjustmentOutcome(transaction=request.ledger_transaction, record=request)
    return AdjustmentOutcome(request=request)


def _record(
    *,
    kind: str,
    customer: Customer,
    currency: str,
    amount: Decimal,
    reason: str,
    staff_user_id: int,
    reference: str,
    details: dict[str, Any],
    **decision: Any,
) -> AdjustmentRequest:
    """The request under ``reference``, made with these terms (and ``decision``'s fields)
    unless it exists: the form's token makes a second submission find the first."""
    request, _ = AdjustmentRequest.objects.get_or_create(
        reference=reference,
        defaults={
            "kind": kind,
            "customer": customer,
            "currency": currency,
            "amount": amount,
            "reason": reason,
            "requested_by_id": staff_user_id,
            "details": details,
            **decision,
        },
    )
    return request


def _applied(*, posted: LedgerTransaction, **terms: Any) -> AdjustmentRequest:
    """Record a posting below the threshold as an ``applied`` request: the requester posted
    it, nobody else decided (``decided_by`` empty), ``decided_at`` is when it posted."""
    return _record(
        **terms,
        status=ApprovalStatus.APPLIED,
        decided_at=timezone.now(),
        ledger_transaction=posted,
    )


@transaction.atomic
def request_adjustment(
    *,
    customer: Customer,
    amount: Decimal,
    reason: str,
    staff_user_id: int,
    reference: str,
    currency: str | None = None,
) -> AdjustmentOutcome:
    """A staff user's manual adjustment: posted now and recorded as an ``applied`` request,
    or a pending request when it is large. Idempotent by ``reference`` (the form's token):
    the same one posts or asks once."""
    reason = reason.strip()
    if not reason:
        raise errors.ValidationFailed("an adjustment needs a reason", param="reason")
    if amount == 0:
        raise errors.ValidationFailed("an adjustment cannot be zero", param="amount")
    wallet = wallet_for(customer=customer, currency=currency)
    if (done := _recorded(reference)) is not None:
        return _outcome_of(done)
    request: dict[str, Any] = {
        "kind": ApprovalKind.ADJUSTMENT,
        "customer": customer,
        "currency": wallet.currency,
        "amount": amount,
        "reason": reason,
        "staff_user_id": staff_user_id,
        "reference": reference,
        "details": {},
    }
    if not needs_approval(amount=amount, currency=wallet.currency):
        posted = adjust_balance(
            customer=customer,
            amount=amount,
            reason=reason,
            staff_user_id=staff_user_id,
            currency=wallet.currency,
            reference=reference,
        )
        return AdjustmentOutcome(transaction=posted, record=_applied(**request, posted=posted))
    return _ask(**request)


def _ask(**terms: Any) -> AdjustmentOutcome:
    """A request waiting for a second person (``_record``'s terms)."""
    return AdjustmentOutcome(request=_record(**terms))


@transaction.atomic
def request_top_up(
    *,
    customer: Customer,
    amount: Decimal,
    staff_user_id: int,
    reference: str,
    currency: str | None = None,
    description: str = "",
) -> AdjustmentOutcome:
    """A staff user's top-up from the admin: posted now (``top_up``, reference
    ``reference``) and recorded as an ``applied`` request, or a pending request at or above
    the threshold — whatever the description says about a payment received. Idempotent by
    ``reference``."""
    wallet = wallet_for(customer=customer, currency=currency)
    if (done := _recorded(reference)) is not None:
        return _outcome_of(done)
    request: dict[str, Any] = {
        "kind": ApprovalKind.TOP_UP,
        "customer": customer,
        "currency": wallet.currency,
        "amount": amount,
        "reason": description.strip() or "Top-up",
        "staff_user_id": staff_user_id,
        "reference": reference,
        "details": {"description": description},
    }
    if not needs_approval(amount=amount, currency=wallet.currency):
        posted = top_up(
            customer=customer,
            amount=amount,
            currency=wallet.currency,
            reference=reference,
            description=description,
            metadata={"source": "admin"},
            staff_user_id=staff_user_id,
        )
        return AdjustmentOutcome(transaction=posted, record=_applied(**request, posted=posted))
    return _ask(**request)


@transaction.atomic
def request_credit_grant(
    *,
    customer: Customer,
    amount: Decimal,
    name: str,
    source: str,
    priority: int | None,
    expires_at: datetime | None,
    staff_user_id: int,
    reference: str,
) -> AdjustmentOutcome:
    """A staff user's credit grant from the admin. One funded as an adjustment or as a
    promotion (``GrantSource.ADJUSTMENT``, ``PROMOTIONAL``: credits from nowhere, one as
    much as the other) at or above the CREDITS threshold is a pending request; any other
    is granted now and recorded as an ``applied`` request. Idempotent by ``reference``."""
    from billing import credits
    from billing.models import CreditGrant, GrantSource

    if (done := _recorded(reference)) is not None:
        outcome = _outcome_of(done)
        if done.status != ApprovalStatus.APPLIED:
            return outcome
        grant = CreditGrant.objects.get(ledger_transaction=done.ledger_transaction)
        return AdjustmentOutcome(transaction=outcome.transaction, grant=grant, record=done)
    request: dict[str, Any] = {
        "kind": ApprovalKind.CREDIT_GRANT,
        "customer": customer,
        "currency": credits.CREDITS,
        "amount": amount,
        "reason": name.strip() or "Credit grant",
        "staff_user_id": staff_user_id,
        "reference": reference,
        "details": {
            "name": name,
            "source": source,
            "priority": priority,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    }
    free = source in (GrantSource.ADJUSTMENT, GrantSource.PROMOTIONAL)
    if free and needs_approval(amount=amount, currency=credits.CREDITS):
        return _ask(**request)
    grant = credits.grant_credits(
        customer=customer,
        amount=amount,
        name=name,
        source=source,
        priority=priority,
        expires_at=expires_at,
        reference=reference,
        staff_user_id=staff_user_id,
    )
    posted = grant.ledger_transaction
    assert posted is not None
    record = _applied(**request, posted=posted)
    return AdjustmentOutcome(transaction=posted, grant=grant, record=record)


def _post(request: AdjustmentRequest, approver_id: int) -> LedgerTransaction:
    """Post an approved request through the service its kind names, once (the reference
    is the request's)."""
    reference = f"approval:{request.pk}"
    if request.kind == ApprovalKind.TOP_UP:
        return top_up(
            customer=request.customer,
            amount=request.amount,
            currency=request.currency,
            reference=reference,
            description=request.details.get("description", ""),
            metadata={"source": "admin", "approved_by_id": approver_id},
            staff_user_id=request.requested_by_id,
        )
    if request.kind == ApprovalKind.CREDIT_GRANT:
        from billing import credits

        details = request.details
        expires_at = details.get("expires_at")
        grant = credits.grant_credits(
            customer=request.customer,
            amount=request.amount,
            name=details["name"],
            source=details["source"],
            priority=details["priority"],
            expires_at=datetime.fromisoformat(expires_at) if expires_at else None,
            reference=reference,
            staff_user_id=request.requested_by_id,
        )
        assert grant.ledger_transaction is not None
        return grant.ledger_transaction
    return adjust_balance(
        customer=request.customer,
        amount=request.amount,
        reason=request.reason,
        staff_user_id=request.requested_by_id,
        currency=request.currency,
        reference=reference,
        approved_by_id=approver_id,
    )


def _lock(request_id: int) -> AdjustmentRequest:
    return (
        AdjustmentRequest.objects.select_for_update(of=("self",))
        .select_related("customer")
        .get(pk=request_id)
    )


def _decide(
    *, request_id: int, staff_id: int, status: str, note: str
) -> tuple[AdjustmentRequest, bool]:
    """Lock the request and check that ``staff_id`` may take it to ``status``: the request
    and whether it is still to be decided (False: already in ``status``, returned as it is)."""
    request = _lock(request_id)
    if request.status == status:
        return request, False
    if request.status != ApprovalStatus.PENDING:
        raise errors.AdjustmentAlreadyDecided(f"this adjustment was already {request.status}")
    if status == ApprovalStatus.WITHDRAWN:
        if request.requested_by_id != staff_id:
            raise errors.WithdrawalByOther(
                "only the staff user who asked for an adjustment can withdraw it; reject it instead"
            )
    elif request.requested_by_id == staff_id:
        raise errors.ApprovalBySameUser(
            "the staff user who asked for an adjustment cannot decide it: a second person must"
        )
    request.status = status
    request.decided_at = timezone.now()
    request.decision_note = note.strip()
    return request, True


@transaction.atomic
def approve_adjustment(*, request_id: int, approver_id: int, note: str = "") -> AdjustmentRequest:
    """Post a pending request, once: approving an approved request returns it unchanged."""
    request, fresh = _decide(
        request_id=request_id, staff_id=approver_id, status=ApprovalStatus.APPROVED, note=note
    )
    if fresh:
        request.ledger_transaction = _post(request, approver_id)
        request.decided_by_id = approver_id
        request.save(
            update_fields=[
                "status",
                "decided_by",
                "decided_at",
                "decision_note",
                "ledger_transaction",
            ]
        )
    return request


@transaction.atomic
def reject_adjustment(*, request_id: int, decider_id: int, note: str = "") -> AdjustmentRequest:
    """Close a pending request without posting; rejecting it again returns it unchanged."""
    request, fresh = _decide(
        request_id=request_id, staff_id=decider_id, status=ApprovalStatus.REJECTED, note=note
    )
    if fresh:
        request.decided_by_id = decider_id
        request.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
    return request


@transaction.atomic
def withdraw_adjustment(
    *, request_id: int, staff_user_id: int, note: str = ""
) -> AdjustmentRequest:
    """The requester takes back a pending request (nothing is posted; no one decided it, so
    ``decided_by`` stays empty); withdrawing it again returns it unchanged."""
    request, fresh = _decide(
        request_id=request_id, staff_id=staff_user_id, status=ApprovalStatus.WITHDRAWN, note=note
    )
    if fresh:
        request.save(update_fields=["status", "decided_at", "decision_note"])
    return request
