"""Writes of metering besides rating itself: holds that reserve what estimated usage would
cost, and their settlement (with the actual usage, rated, or by amount)."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing import credits, projects
from billing import errors as billing_errors
from billing import services as billing_services
from billing.errors import BillingError, WalletNotFound
from billing.selectors import get_customer
from ledger import errors as ledger_errors
from ledger import services as ledger
from ledger.models import Account, Hold
from ledger.models import Transaction as LedgerTransaction
from metering import errors, rating
from metering.selectors import EstimateRequest, estimate_usage

# An estimate's refusal reason → the error rating raises for the same reason.
REFUSALS: dict[str, type[BillingError]] = {
    error.code: error
    for error in (
        errors.InsufficientFunds,
        errors.InsufficientCredits,
        errors.CreditLimitExceeded,
        errors.SubscriptionPastDue,
        billing_errors.BudgetExceeded,
        billing_errors.ProjectArchived,
    )
}


PROJECT_REFUSALS = {billing_errors.BudgetExceeded.code, billing_errors.ProjectArchived.code}


@dataclass(frozen=True)
class PlacedHold:
    hold: Hold
    created: bool  # False: the reference's hold already stood (a replay)


def place_usage_hold(
    *, request: EstimateRequest, expires_in: int, reference: str | None = None
) -> PlacedHold:
    """Reserve what ``request`` would cost now (``estimate_usage``) on the customer's
    wallet, out of its available balance at once, for ``expires_in`` seconds. Idempotent on
    the client's ``reference`` (one hold per reference and customer; without one, a new
    hold each time): the same reference with the same wallet and amount is that hold again,
    with another amount or wallet ``HoldReferenceReused``.

    Refused like rating refuses (402 with rating's code), when it costs nothing now
    (``NothingToHold``) or the customer has no wallet in the currency.

    With a ``project``: checked against the project's budget and counted against it while
    pending (``billing.projects.link_hold``), under the customer's usage lock, so that two
    holds (or a hold and an event) cannot both fit in what is left of the limit."""
    if request.project is None:
        return _place_usage_hold(request, expires_in, reference)
    refused: list[tuple[Decimal, str]] = []  # (amount, currency) refused for the budget
    try:
        with transaction.atomic():
            customer = get_customer(external_id=request.customer, param="customer")
            billing_services.lock_customer_usage([customer.pk])
            project = projects.get_project(customer=customer, key=request.project, param="project")
            # A retry of a hold placed already (its reference): that hold was checked
            # against the budget and counts in it now; checked again it would be counted
            # twice. Only a hold placed for this very project is that hold: one placed
            # without a project (or for another) was never checked against this budget
            # and is never linked to it afterwards.
            earlier = (
                reference is not None
                and Hold.objects.filter(reference=f"hold:{customer.pk}:{reference}").exists()
            )
            checked = dataclasses.replace(request, project=None) if earlier else request
            placed = _place_usage_hold(checked, expires_in, reference, refused=refused)
            if not placed.created:
                linked = projects.hold_project(hold_id=placed.hold.pk)
                if linked is None or linked.pk != project.pk:
                    raise errors.HoldReferenceReused(
                        f"hold reference {reference!r} was used for a hold "
                        + ("without a project" if linked is None else "of another project"),
                        param="reference",
                    )
                return placed
            projects.link_hold(project=project, hold_id=placed.hold.pk)
            return placed
    except billing_errors.BudgetExceeded:
        # Refused like an event past the budget: the first refusal of the period emits
        # budget.exceeded (outside the rolled-back placement, so that it stays).
        for amount, currency in refused:
            projects.note_hold_refused(project=project, amount=amount, currency=currency)
        raise


def _place_usage_hold(
    request: EstimateRequest,
    expires_in: int,
    reference: str | None,
    *,
    refused: list[tuple[Decimal, str]] | None = None,
) -> PlacedHold:
    result = estimate_usage(request=request)
    if result.amount <= 0:
        raise errors.NothingToHold(
            "the estimated usage costs nothing now (inside the allowance or free)",
            param="amount" if request.amount is not None else "model",
        )
    wallet = result.wallet
    if not result.allowed:  # the same reasons and codes as rating and /authorize
        assert result.reason is not None, "a refused estimate names its reason"
        if result.reason == billing_errors.BudgetExceeded.code and refused is not None:
            refused.append((result.amount, result.currency))
        if result.reason in PROJECT_REFUSALS:
            why = f"project {request.project!r} " + (
                "is archived"
                if result.reason == billing_errors.ProjectArchived.code
                else "has not that much left of its budget this period"
            )
        else:
            why = (
                "no such wallet" if wallet is None else f"{result.balance.normalize():f} available"
            )
        raise REFUSALS[result.reason](
            f"cannot reserve {result.amount.normalize():f} {result.currency}: {why}",
            param="project" if result.reason in PROJECT_REFUSALS else "customer",
        )
    # (A wallet the estimate found exists, with its account: only a batch's new credits
    # wallet is without one, and rating makes that.)
    if wallet is None or wallet.account_id is None:
        raise WalletNotFound(f"no {result.currency} wallet", param="currency")
    destination = ledger.ensure_system_account(
        code=rating.CREDITS_USED if result.currency == rating.CREDITS else rating.REVENUE,
        currency=result.currency,
    )
    key = f"hold:{wallet.customer_id}:{reference or uuid.uuid4().hex}"
    earlier = _same_hold(key, wallet.account_id, result.amount, reference)
    if earlier is not None:
        return PlacedHold(earlier, created=False)
    if result.currency == rating.CREDITS:
        # Credits past their expiry leave first, as rating does before it spends: the
        # estimate did not count them, and the hold's own balance check must not either
        # (the beat task may not have run yet).
        credits.expire_due_for([wallet.account_id], now=timezone.now())
    try:
        hold = ledger.place_hold(
            reference=key,
            account=Account.objects.get(pk=wallet.account_id),
            destination=destination,
            amount=result.amount,
            expires_at=timezone.now() + timedelta(seconds=expires_in),
            description="Reserved for usage",
            metadata={"customer": result.customer.external_id},
        )
    except ledger_errors.ReferenceReused:
        # A concurrent identical request placed it first: the ledger compares expiries
        # too, and each request computed its own from its own clock. The same reference,
        # wallet and amount is the same hold (a replay); anything else is refused.
        earlier = _same_hold(key, wallet.account_id, result.amount, reference)
        if earlier is None:
            raise
        return PlacedHold(earlier, created=False)
    return PlacedHold(hold, created=not hold.replayed)


def _same_hold(key: str, account_id: int, amount: Decimal, reference: str | None) -> Hold | None:
    """The hold ``key`` already placed, when it is the same hold (same wallet and amount;
    its expiry was computed from the first request's time); None when there is none;
    ``HoldReferenceReused`` (naming the client's ``reference``) when it is another hold."""
    earlier = Hold.objects.filter(reference=key).first()
    if earlier is None:
        return None
    if earlier.account_id != account_id or earlier.amount != amount:
        raise errors.HoldReferenceReused(
            f"hold reference {reference!r} was used for another hold ({earlier.pk})",
            param="reference",
        )
    return earlier


def settle_hold_with_usage(*, hold_id: int, event: rating.EventIn) -> rating.Outcome:
    """Rate ``event`` and post it against the hold, releasing the rest, in one transaction
    (usage costing more than was held takes the excess from the available balance). A
    refusal is raised and the hold stays. The event is charged to the hold's project when
    it names none (naming another is refused)."""
    project = projects.hold_project(hold_id=hold_id)
    if project is not None:
        if event.project is None:
            event.project = project.key
        elif event.project != project.key:
            raise errors.InvalidEvent(
                f"hold {hold_id} was placed for project {project.key!r}, not {event.project!r}",
                param="event.project",
            )
    outcome = rating.ingest_events([event], hold_id=hold_id)[0]
    if outcome.status == "rejected":
        assert outcome.error is not None, "a rejected event carries its error"
        raise outcome.error
    return outcome


def settle_hold_by_amount(
    *, hold_id: int, amount: Decimal, final: bool, reference: str | None = None
) -> LedgerTransaction:
    """Settle ``amount`` of the hold (``final``: and release the rest); the part is drawn on
    the wallet's grants where rating would draw on them (``credits.draws_on_grants``: a
    ``CREDITS`` hold, or one on a balance plan's money wallet). Idempotent on the client's
    ``reference`` per hold (``ledger.errors.ReferenceReused`` when it settled something
    else). What is settled of a project's hold is that project's spend this period."""
    with transaction.atomic():
        posted = credits.settle_hold(
            hold_id=hold_id,
            amount=amount,
            reference=f"hold-settle:{hold_id}:{reference or uuid.uuid4().hex}",
            final=final,
        )
        if not getattr(posted, "replayed", False):
            hold = Hold.objects.get(pk=hold_id)
            projects.record_hold_spend(hold_id=hold_id, amount=amount, currency=hold.currency)
    return posted
