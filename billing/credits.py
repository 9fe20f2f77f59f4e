"""Credit grants: blocks of a customer's ``CREDITS`` wallet with their own priority and expiry.

    grant_credits(customer, amount, …)     a promotional (or adjustment) grant, posted now
    record_purchase(transaction, …)        the grant behind a credit pack bought (top-up)
    GrantBook                              allocates debits of wallets to their live grants
    expire_due_grants(now) / expire_grant  what is left at expiry leaves the wallet
    void_grant(grant)                      take what is left back now
    expire_part(grant, amount)             part of what is left expires now (plan rollover)
    due_expiring(now) / notify_expiring    credits.expiring, once per grant, days ahead

Plan grants (source ``plan``: a plan's recurring allowance, ``billing.plan_credits``) are
made by ``grant_credits`` too, from ``@PlanCredits``, in the wallet of the plan's unit
(``CREDITS`` on a credits plan, the money currency on a balance plan).

How credits are drawn
---------------------
Every credit into the wallet that is a grant posts one ledger transaction (funding account
debited, wallet credited) and one ``CreditGrant`` row with ``remaining = amount``. Every
debit of the wallet — a usage event rated on a credits plan, a hold settled, a negative
adjustment — is split across the wallet's *live* grants (active, not yet expired) in drain
order: lowest ``priority`` first (promotional grants default to 10, purchases to 50), then
the soonest expiry (grants that never expire last), then the oldest. What no grant covers
comes from the wallet's ungranted funds (credits added before grants existed, reversals):
the wallet's ledger balance is the truth, the grants say which block of it paid.

The split is decided before the debit is posted and written into the debit's ledger
metadata (``"grants": [[grant id, amount], …]``) — so the ledger itself says which grant
paid for each debit — and recorded as ``CreditAllocation`` rows in the same database
transaction, with each grant's ``remaining`` lowered. All of it happens under the
customer's usage lock (``billing.services.lock_customer_usage``, the lock rating holds), so
two debits never draw on the same remainder.

At ``expires_at`` the beat task ``billing.tasks.expire_credit_grants`` debits what is left
from the wallet to ``@CreditsExpired`` (breakage). Held credits are not taken: if a hold
keeps part of the remainder unavailable, that part expires at the next run after the hold
resolves. A grant past its expiry is never drawn on, even before the task has run.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from billing import errors, outbox
from billing.models import (
    AllocationKind,
    ConsumptionModel,
    CreditAllocation,
    CreditGrant,
    Customer,
    EventType,
    GrantSource,
    GrantStatus,
    Subscription,
    SubscriptionStatus,
    Wallet,
)
from billing.webhooks import credit_grant_data
from ledger import errors as ledger_errors
from ledger import services as ledger
from ledger.models import NormalBalance
from ledger.models import Transaction as LedgerTransaction

CREDITS = "CREDITS"
PROMOTIONS = "@Promotions"  # the cost of free credits given away
CREDITS_EXPIRED = "@CreditsExpired"  # credits that expired unused (breakage)
ADJUSTMENTS = "@Adjustments"
PLAN_CREDITS = "@PlanCredits"  # the cost of the allowances plans give
DEFAULT_PRIORITY: dict[str, int] = {
    GrantSource.PROMOTIONAL: 10,
    GrantSource.ADJUSTMENT: 20,
    GrantSource.PLAN: 30,
    GrantSource.PURCHASE: 50,
}
FUNDING: dict[str, str] = {
    GrantSource.PROMOTIONAL: PROMOTIONS,
    GrantSource.ADJUSTMENT: ADJUSTMENTS,
    GrantSource.PLAN: PLAN_CREDITS,
}
MAX_PRIORITY = 1000
ZERO = Decimal(0)


def _lock(customer_id: int) -> None:
    from billing.services import lock_customer_usage

    lock_customer_usage([customer_id])


def _credits_wallet(customer: Customer, currency: str = CREDITS) -> Wallet:
    from billing.services import ensure_wallet

    return ensure_wallet(customer=customer, currency=currency)


def _validate(
    *, amount: Any, priority: int | None, expires_at: datetime | None, now: datetime
) -> Decimal:
    try:
        value = ledger.to_amount(amount, positive=True)
    except ledger_errors.LedgerError as error:
        raise errors.ValidationFailed(str(error), param="amount") from None
    if priority is not None and not (0 <= priority <= MAX_PRIORITY):
        raise errors.ValidationFailed(
            f"priority must be between 0 and {MAX_PRIORITY}", param="priority"
        )
    if expires_at is not None:
        if timezone.is_naive(expires_at):
            raise errors.ValidationFailed("expires_at needs a time zone", param="expires_at")
        if expires_at <= now:
            raise errors.ValidationFailed("expires_at must be in the future", param="expires_at")
    return value


class GrantConflict(errors.BillingError):
    code = "reference_reused"
    http_status = 409


def grant_credits(
    *,
    customer: Customer,
    amount: Decimal | int | str,
    name: str = "",
    source: str = GrantSource.PROMOTIONAL,
    priority: int | None = None,
    expires_at: datetime | None = None,
    reference: str | None = None,
    staff_user_id: int | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
    currency: str = CREDITS,
) -> CreditGrant:
    """Give the customer credits (promotional, an adjustment by finance staff, or a plan's
    allowance): one ledger transaction (``@Promotions``, ``@Adjustments`` or
    ``@PlanCredits`` debited, the wallet of ``currency`` — ``CREDITS`` unless a balance
    plan grants money — credited) and the grant. Idempotent on ``reference``: the same
    reference returns the first grant (``.replayed``); with other terms it is refused
    (``reference_reused``)."""
    now = now or timezone.now()
    if source not in FUNDING:
        raise errors.ValidationFailed(
            "grants given here are promotional or adjustments; purchases are top-ups",
            param="source",
        )
    # A retry replays even once its expiry has passed: the expiry is checked for new grants.
    value = _validate(amount=amount, priority=priority, expires_at=None, now=now)
    priority = DEFAULT_PRIORITY[source] if priority is None else priority
    default_names: dict[str, str] = {
        GrantSource.PROMOTIONAL: "Promotional credits",
        GrantSource.ADJUSTMENT: "Credit adjustment",
        GrantSource.PLAN: "Plan credits",
    }
    name = (name or "").strip() or default_names[source]
    full_reference = f"credit-grant:{customer.pk}:{reference or uuid.uuid4().hex}"
    with transaction.atomic():
        _lock(customer.pk)
        existing = CreditGrant.objects.filter(reference=full_reference).first()
        if existing is not None:
            same = (existing.amount, existing.priority, existing.expires_at, existing.source) == (
                value,
                priority,
                expires_at,
                source,
            )
            if not same:
                raise GrantConflict(
                    f"reference {reference!r} was already used for another grant ({existing.pk})",
                    param="reference",
                )
            existing.replayed = True
            return existing
        _validate(amount=value, priority=priority, expires_at=expires_at, now=now)
        wallet = _credits_wallet(customer, currency)
        funding = ledger.ensure_system_account(
            code=FUNDING[source], currency=currency, normal_balance=NormalBalance.DEBIT
        )
        posted = ledger.post_transaction(
            reference=full_reference,
            legs=[ledger.debit(funding, value), ledger.credit(wallet.account_id, value)],
            description=f"Credit grant: {name}",
            metadata={
                "kind": "credit_grant",
                "customer": customer.external_id,
                "source": source,
                "name": name,
                "priority": priority,
                "expires_at": expires_at.isoformat() if expires_at else None,
                "staff_user_id": staff_user_id,
            },
        )
        grant = CreditGrant.objects.create(
            customer=customer,
            wallet=wallet,
            currency=currency,
            name=name,
            source=source,
            priority=priority,
            amount=value,
            remaining=value,
            expires_at=expires_at,
            reference=full_reference,
            ledger_transaction_id=posted.pk,
            created_by_id=staff_user_id,
            # where the credits came from (for finance: voiding uses the source, not this)
            metadata={"funding_account_id": funding.pk, **(metadata or {})},
        )
        _emit_granted(grant)
    grant.replayed = False
    return grant


def _emit_granted(grant: CreditGrant) -> None:
    outbox.emit(
        EventType.CREDITS_GRANTED,
        data=credit_grant_data(grant),
        customer=grant.customer,
        dedupe_key=f"credits.granted:{grant.pk}",
    )


def record_purchase(
    *,
    customer: Customer,
    wallet: Wallet,
    posted: LedgerTransaction,
    amount: Decimal,
    name: str,
    funding_account_id: int,
    now: datetime | None = None,
) -> CreditGrant:
    """The grant behind credits bought (a top-up of the ``CREDITS`` wallet), posted by the
    caller in its transaction. Expires after ``CREDIT_PURCHASE_EXPIRY_DAYS`` (empty: never).
    A replayed top-up returns its grant."""
    existing = CreditGrant.objects.filter(ledger_transaction_id=posted.pk).first()
    if existing is not None:
        return existing
    now = now or timezone.now()
    days = settings.CREDIT_PURCHASE_EXPIRY_DAYS
    grant = CreditGrant.objects.create(
        customer=customer,
        wallet=wallet,
        currency=CREDITS,
        name=name,
        source=GrantSource.PURCHASE,
        priority=DEFAULT_PRIORITY[GrantSource.PURCHASE],
        amount=amount,
        remaining=amount,
        expires_at=now + timedelta(days=days) if days else None,
        reference=posted.reference,
        ledger_transaction_id=posted.pk,
        # how it was paid for, when the top-up says (a card payment: refunds go back to it)
        metadata={
            "funding_account_id": funding_account_id,
            **({"payment": posted.metadata["payment"]} if "payment" in posted.metadata else {}),
        },
    )
    _emit_granted(grant)
    return grant


# --- drawing on grants --------------------------------------------------------------------


@dataclass
class _Live:
    id: int
    remaining: Decimal
    expired: bool  # past its expiry, still active: what is left of it is held
    taken: Decimal = ZERO


class GrantBook:
    """The active grants of some wallets (by ledger account id), in drain order, for
    deciding how debits split across them. The caller holds the customers' usage locks from
    ``load`` to ``save``; ``take`` only decides, ``save`` writes what was taken.

    A grant past its expiry that is still active keeps only credits a hold reserved before
    it expired (``expire_due_for`` took the rest): a hold's settlement draws on those
    first; any other debit never draws on it."""

    def __init__(self, grants: dict[int, list[_Live]], *, now: datetime):
        self._grants = grants
        self.now = now
        self._allocations: list[tuple[int, int, Decimal, str]] = []

    @classmethod
    def load(cls, account_ids, *, now: datetime | None = None) -> GrantBook:
        account_ids = sorted({a for a in account_ids if a is not None})
        grants: dict[int, list[_Live]] = defaultdict(list)
        now = now or timezone.now()
        book = cls(grants, now=now)
        if not account_ids:
            return book
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT w.account_id, g.id, g.remaining, "
                "coalesce(g.expires_at <= %s, false) AS expired FROM billing_creditgrant g "
                "JOIN billing_wallet w ON w.id = g.wallet_id "
                "WHERE w.account_id = ANY(%s) AND g.status = 'active' AND g.remaining > 0 "
                "ORDER BY w.account_id, expired DESC, g.priority, g.expires_at ASC NULLS LAST, "
                "g.id FOR UPDATE OF g",
                [now, account_ids],
            )
            for account_id, grant_id, remaining, expired in cursor.fetchall():
                grants[account_id].append(_Live(grant_id, remaining, expired))
        return book

    def __bool__(self) -> bool:
        return any(self._grants.values())

    def take(
        self, account_id: int, amount: Decimal, *, settling_hold: bool = False
    ) -> list[tuple[int, Decimal]]:
        """How a debit of ``amount`` from the wallet splits across its grants (what is left
        over comes from ungranted funds). Lowers the grants' remainders in memory. Only a
        hold's settlement draws on the held remainder of an expired grant."""
        parts: list[tuple[int, Decimal]] = []
        left = amount
        for grant in self._grants.get(account_id, ()):
            if left <= 0:
                break
            if grant.expired and not settling_hold:
                continue
            free = grant.remaining - grant.taken
            if free <= 0:
                continue
            part = min(free, left)
            grant.taken += part
            left -= part
            parts.append((grant.id, part))
        return parts

    def record(self, transaction_id: int, parts: list[tuple[int, Decimal]], kind: str) -> None:
        self._allocations += [(gid, transaction_id, amount, kind) for gid, amount in parts]

    def save(self, *, now: datetime | None = None) -> None:
        """Write the recorded allocations and the grants' new remainders (one statement:
        the allocations' INSERT a data-modifying CTE of the grants' UPDATE)."""
        if not self._allocations:
            return
        now = now or self.now
        grant_ids, tx_ids, amounts, kinds = (list(c) for c in zip(*self._allocations, strict=True))
        taken: dict[int, Decimal] = defaultdict(Decimal)
        for gid, _, amount, _ in self._allocations:
            taken[gid] += amount
        with connection.cursor() as cursor:
            # used up: "depleted", or "expired" for a grant past its expiry (its held
            # remainder spent by the hold's settlement)
            cursor.execute(
                "WITH allocated AS (INSERT INTO billing_creditallocation "
                "(grant_id, ledger_transaction_id, amount, kind, created_at) "
                "SELECT g, t, a, k, %s FROM unnest(%s::bigint[], %s::bigint[], "
                "%s::numeric[], %s::text[]) AS u(g, t, a, k) RETURNING 1) "
                "UPDATE billing_creditgrant g SET remaining = g.remaining - u.taken, "
                "status = CASE WHEN g.remaining - u.taken > 0 THEN g.status "
                "              WHEN g.expires_at <= %s THEN 'expired' ELSE 'depleted' END, "
                "ended_at = CASE WHEN g.remaining - u.taken = 0 THEN %s ELSE g.ended_at END "
                "FROM unnest(%s::bigint[], %s::numeric[]) AS u(id, taken) WHERE g.id = u.id",
                [
                    now,
                    grant_ids,
                    tx_ids,
                    amounts,
                    kinds,
                    now,
                    now,
                    list(taken),
                    list(taken.values()),
                ],
            )
        self._allocations = []


def draws_on_grants(*, currency: str, consumption_model: str | None) -> bool:
    """The one rule of which wallet debits draw on the wallet's grants (rating, and a hold
    settled by amount): the ``CREDITS`` wallet always; a money wallet when the customer's
    plan is a balance plan (its plan may grant money: ``billing.plan_credits``), so its
    allowance is spent before the customer's own money."""
    return currency == CREDITS or consumption_model == ConsumptionModel.BALANCE


def _consumption_model(customer_id: int) -> str | None:
    """The consumption model of the customer's live subscription's plan (None without)."""
    return (
        Subscription.objects.filter(customer_id=customer_id)
        .exclude(status=SubscriptionStatus.CANCELED)
        .values_list("plan__consumption_model", flat=True)
        .first()
    )


def grants_metadata(parts: list[tuple[int, Decimal]]) -> list[list[Any]]:
    """How a debit's ledger metadata names the grants that paid it."""
    return [[grant_id, str(amount)] for grant_id, amount in parts]


def debit_wallet(
    *,
    customer: Customer,
    wallet: Wallet,
    amount: Decimal,
    reference: str,
    counter_account_id: int,
    description: str,
    metadata: dict[str, Any],
    kind: str = AllocationKind.ADJUSTMENT,
) -> LedgerTransaction:
    """Debit the ``CREDITS`` wallet (an adjustment, say), drawing on its grants in order.
    The caller's transaction holds; the usage lock is taken here."""
    return _draw(
        customer_id=customer.pk,
        account_id=wallet.account_id,
        amount=amount,
        kind=kind,
        post=lambda grants: ledger.post_transaction(
            reference=reference,
            legs=[
                ledger.debit(wallet.account_id, amount),
                ledger.credit(counter_account_id, amount),
            ],
            description=description,
            metadata={**metadata, **grants},
        ),
    )


def _draw(
    *,
    customer_id: int,
    account_id: int,
    amount: Decimal,
    kind: str,
    post,
    settling_hold: bool = False,
) -> LedgerTransaction:
    """One debit of a wallet drawn on its grants: under the customer's usage lock,
    the split decided, ``post(metadata naming the grants)`` called, the split recorded
    (not again for a replayed posting)."""
    _lock(customer_id)
    book = GrantBook.load([account_id])
    parts = book.take(account_id, amount, settling_hold=settling_hold)
    posted = post({"grants": grants_metadata(parts)} if parts else {})
    if not posted.replayed:
        book.record(posted.pk, parts, kind)
        book.save()
    return posted


def settle_hold(
    *, hold_id: int, amount: Decimal, reference: str, final: bool = False
) -> LedgerTransaction:
    """Settle part of a hold by amount (``ledger.services.settle_hold``); a hold on a wallet
    whose debits draw on grants (``draws_on_grants``, the rule rating follows: ``CREDITS``,
    or a balance plan's money wallet) draws the part on the wallet's grants."""
    from ledger.models import Hold

    account_id = Hold.objects.filter(pk=hold_id).values_list("account_id", flat=True).first()
    wallet = (
        Wallet.objects.filter(account_id=account_id).first() if account_id is not None else None
    )
    if wallet is None or not draws_on_grants(
        currency=wallet.currency, consumption_model=_consumption_model(wallet.customer_id)
    ):
        return ledger.settle_hold(hold_id=hold_id, amount=amount, reference=reference, final=final)
    value = ledger.to_amount(amount, positive=True)
    with transaction.atomic():
        return _draw(
            customer_id=wallet.customer_id,
            account_id=wallet.account_id,
            amount=value,
            kind=AllocationKind.USAGE,
            settling_hold=True,
            post=lambda grants: ledger.settle_hold(
                hold_id=hold_id,
                amount=value,
                reference=reference,
                final=final,
                metadata=grants or None,
            ),
        )


def expire_due_for(account_ids, *, now: datetime) -> int:
    """Expire, now, the due grants of these wallets (rating calls this under the customers'
    usage locks before it checks what a credits wallet may spend, so that credits past
    their expiry are never spent, even before the beat task has run)."""
    due = list(
        CreditGrant.objects.filter(
            wallet__account_id__in=list(account_ids),
            status=GrantStatus.ACTIVE,
            expires_at__lte=now,
            remaining__gt=0,
        )
        .order_by("id")
        .values_list("pk", flat=True)
    )
    for grant_id in due:
        expire_grant(grant_id=grant_id, now=now)
    return len(due)


def expired_remaining(account_id: int, *, now: datetime) -> Decimal:
    """What active grants of this wallet past their expiry still hold (read, no lock):
    credits the next expiry run takes, as far as they are not held."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(g.remaining), 0) FROM billing_creditgrant g "
            "JOIN billing_wallet w ON w.id = g.wallet_id WHERE w.account_id = %s "
            "AND g.status = 'active' AND g.expires_at <= %s",
            [account_id, now],
        )
        return cursor.fetchone()[0]


# --- ending grants ------------------------------------------------------------------------


def _end(
    grant: CreditGrant,
    *,
    status: str,
    counter_code: str,
    kind: str,
    now: datetime,
    limit: Decimal | None = None,
    metadata: dict[str, Any] | None = None,
) -> int:
    """Debit what is left of the grant (as much as is not held; at most ``limit``) to
    ``counter_code``; end the grant when nothing is left. The caller holds the usage lock
    and the grant's row."""
    wallet_account = grant.wallet.account_id
    balance = ledger.lock_balances(account_ids=[wallet_account])[wallet_account]
    room = balance.available if balance.floor is None else balance.available - balance.floor
    take = min(grant.remaining, max(room, ZERO))
    if limit is not None:
        take = min(take, limit)
    if take > 0:
        counter = ledger.ensure_system_account(
            code=counter_code,
            currency=grant.currency,
            normal_balance=NormalBalance.DEBIT
            if counter_code != CREDITS_EXPIRED
            else NormalBalance.CREDIT,
        )
        posted = ledger.post_transaction(
            reference=f"credit-{kind}:{grant.pk}:{grant.remaining}",
            legs=[ledger.debit(wallet_account, take), ledger.credit(counter, take)],
            description=f"Credit grant {kind}: {grant.name}",
            metadata={
                "kind": f"credit_{kind}",
                "customer": grant.customer.external_id,
                "grants": grants_metadata([(grant.pk, take)]),
                **(metadata or {}),
            },
            effective_at=now,
        )
        CreditAllocation.objects.get_or_create(
            grant=grant, ledger_transaction_id=posted.pk, defaults={"amount": take, "kind": kind}
        )
        grant.remaining -= take
    if grant.remaining == 0:
        grant.status, grant.ended_at = status, now
    grant.save(update_fields=["remaining", "status", "ended_at", "metadata"])
    return 1 if take > 0 else 0


def _locked_grant(grant_id: int) -> CreditGrant | None:
    customer_id = (
        CreditGrant.objects.filter(pk=grant_id).values_list("customer_id", flat=True).first()
    )
    if customer_id is None:
        return None
    _lock(customer_id)
    return (
        CreditGrant.objects.select_for_update(of=("self",))
        .select_related("wallet", "customer")
        .filter(pk=grant_id)
        .first()
    )


def expire_grant(*, grant_id: int, now: datetime | None = None) -> CreditGrant | None:
    """Expire one grant if it is due: what is left (and not held) leaves the wallet for
    ``@CreditsExpired``. Safe to run again: an ended grant is left alone."""
    now = now or timezone.now()
    with transaction.atomic():
        grant = _locked_grant(grant_id)
        if grant is None or grant.status != GrantStatus.ACTIVE:
            return grant
        if grant.expires_at is None or grant.expires_at > now:
            return grant
        before = grant.remaining
        _end(
            grant,
            status=GrantStatus.EXPIRED,
            counter_code=CREDITS_EXPIRED,
            kind=AllocationKind.EXPIRY,
            now=now,
        )
        expired = before - grant.remaining
        if expired > 0:  # once per amount taken (credits held wait; the rest expires later)
            outbox.emit(
                EventType.CREDITS_EXPIRED,
                data=credit_grant_data(grant, expired=expired),
                customer=grant.customer,
                dedupe_key=f"credits.expired:{grant.pk}:{before}",
            )
    return grant


def expire_part(*, grant: CreditGrant, amount: Decimal, now: datetime, reason: str) -> Decimal:
    """Part of what is left of a grant expires now (a plan grant's rollover beyond its cap):
    ``amount`` at most, as much as is not held, debited to ``@CreditsExpired``. The caller
    holds the customer's usage lock and the grant's row (``GrantBook``'s lock order).
    Returns what expired."""
    before = grant.remaining
    if amount <= 0 or before <= 0:
        return ZERO
    _end(
        grant,
        status=GrantStatus.EXPIRED,
        counter_code=CREDITS_EXPIRED,
        kind=AllocationKind.EXPIRY,
        now=now,
        limit=amount,
        metadata={"reason": reason},
    )
    return before - grant.remaining


def due_expiring(*, now: datetime, within: timedelta):
    """Active grants with credits left whose expiry falls in (now, now + within] and that
    were not announced yet: no ``credits.expiring`` event with the grant's key
    (``expiring_key``, annotated: the grant and its expiry, so that an expiry moved later
    is announced again)."""
    from django.db.models import CharField, Exists, OuterRef, Value
    from django.db.models.functions import Cast, Concat

    from billing.models import OutboundEvent

    return (
        CreditGrant.objects.filter(
            status=GrantStatus.ACTIVE,
            remaining__gt=0,
            expires_at__gt=now,
            expires_at__lte=now + within,
        )
        .annotate(
            expiring_key=Concat(
                Value("credits.expiring:"),
                Cast("pk", CharField()),
                Value(":"),
                Cast("expires_at", CharField()),
                output_field=CharField(),
            )
        )
        .annotate(
            announced=Exists(OutboundEvent.objects.filter(dedupe_key=OuterRef("expiring_key")))
        )
        .filter(announced=False)
        .select_related("customer")
        .order_by("expires_at", "id")
    )


def notify_expiring(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Beat: emit ``credits.expiring`` once per grant (and expiry),
    ``CREDITS_EXPIRING_NOTICE_DAYS`` before it expires. The dedupe key makes a second run,
    or two at once, record nothing more."""
    from billing.outbox import emit

    now = now or timezone.now()
    within = timedelta(days=settings.CREDITS_EXPIRING_NOTICE_DAYS)
    emitted = 0
    for grant in due_expiring(now=now, within=within)[:limit]:
        assert grant.expires_at is not None  # filtered on
        event = emit(
            "credits.expiring",
            customer=grant.customer,
            data={
                "customer": grant.customer.external_id,
                "grant_id": grant.pk,
                "name": grant.name,
                "source": grant.source,
                "currency": grant.currency,
                "amount": str(grant.amount),
                "remaining": str(grant.remaining),
                "expires_at": grant.expires_at.isoformat(),
            },
            dedupe_key=grant.expiring_key,  # annotated by due_expiring
        )
        emitted += event is not None
    return emitted


def expire_due_grants(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Expire the grants whose time has come (each in its own transaction); returns how
    many were looked at. Pages through all of them, ``limit`` at a time in (expiry, id)
    order, each page after the last one's key: a grant whose credits are held stays active
    until its hold resolves and is looked at again on every run, and a first page full of
    those must not keep the grants behind them from expiring."""
    now = now or timezone.now()
    looked = 0
    due = CreditGrant.objects.filter(status=GrantStatus.ACTIVE, expires_at__lte=now)
    page = due
    while True:
        keys = list(page.order_by("expires_at", "id").values_list("expires_at", "pk")[:limit])
        for _, grant_id in keys:
            expire_grant(grant_id=grant_id, now=now)
        looked += len(keys)
        if len(keys) < limit:
            return looked
        last_expiry, last_id = keys[-1]
        page = due.filter(Q(expires_at__gt=last_expiry) | Q(expires_at=last_expiry, pk__gt=last_id))


def void_grant(
    *,
    grant_id: int,
    staff_user_id: int | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> CreditGrant:
    """Take back what is left of a grant now (a promotion withdrawn, a mistake): debited
    from the wallet to ``@Promotions`` for a promotional grant, else ``@Adjustments``. Held
    credits stay until released. ``reason`` (the admin asks for one) is kept on the grant
    and on the posting's metadata."""
    now = now or timezone.now()
    with transaction.atomic():
        grant = _locked_grant(grant_id)
        if grant is None:
            raise errors.ValidationFailed(f"no credit grant {grant_id}", param="grant")
        if grant.status != GrantStatus.ACTIVE:
            raise errors.ValidationFailed(
                f"grant {grant_id} is {grant.status}: nothing to void", param="grant"
            )
        why = {"void_reason": reason} if reason else {}
        grant.metadata = {**grant.metadata, "voided_by": staff_user_id, **why}
        _end(
            grant,
            status=GrantStatus.VOIDED,
            counter_code=PROMOTIONS if grant.source == GrantSource.PROMOTIONAL else ADJUSTMENTS,
            kind=AllocationKind.VOID,
            now=now,
            metadata={"reason": reason} if reason else None,
        )
    return grant
