"""Auto top-up: charging the saved card of a customer whose prepaid wallet ran low.

    run_due(now)                 beat (every 30 s): start an attempt for each due wallet
    start_attempt(id, now)       one attempt, if still due: amount planned under the cap
    process_attempt(id)          charge it (Stripe, off-session) or, in offline mode, not
    complete_attempt(id, …)      credit the wallet once (the synchronous answer and the
                                 ``payment_intent.succeeded`` webhook both end here)
    fail_attempt(id, …)          record a failure; N in a row turn the auto top-up off
    resume_stalled(now)          attempts left in flight by a lost task: sent again with
                                 the same Stripe idempotency key (charged at most once)

The settings and which wallets are due are the core's (``billing.services.auto_top_up``);
this module owns the attempts because Stripe is here. No Stripe call runs inside a
database transaction.

Amounts. A money wallet is refilled by ``target − available`` rounded **up** to the
currency's minor unit (the wallet reaches at least the target). A ``CREDITS`` wallet by
``target − available`` rounded up to a whole credit, priced at ``CREDIT_PRICE`` each in the
customer's currency, the price rounded up to the minor unit. What was charged this
calendar month (UTC; attempts succeeded, in flight, or failed with an unknown outcome —
a late success still credits those —, offline ones included) plus the new
charge never exceeds ``monthly_cap``: the charge is lowered to what the cap leaves (whole
minor units; for credits, whole credits whose price fits), and when nothing is left the
refill is skipped, recorded on the settings (``skipped_reason``) and reported once a month
(``auto_top_up.failed`` with the code ``monthly_cap_reached``).

Lock order: the ``AutoTopUp`` row, then the attempt row, then the ledger posting's balance
rows (``billing.services.top_up``). Rating never locks the first two, so no cycle.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing import outbox
from billing import services as billing_services
from billing.models import (
    IN_FLIGHT_STATUSES,
    AttemptStatus,
    AutoTopUp,
    AutoTopUpAttempt,
    EventType,
)
from invoicing import payments, services, stripe_gateway
from invoicing.money import ceil_to_minor_unit, floor_to_minor_unit
from ledger import selectors as ledger_selectors
from ledger import services as ledger
from ledger.models import NormalBalance
from ledger.services import Leg, TransactionSpec

log = logging.getLogger(__name__)
CREDITS = billing_services.CREDITS
CREDITS_SOLD = "@CreditsSold"
# A lost task's attempt is sent again after this long; after STALE_GIVE_UP (Stripe keeps
# idempotency keys 24 hours) it is failed instead (a charge it made is still credited when
# its webhook arrives).
STALE_AFTER = timedelta(minutes=5)
STALE_GIVE_UP = timedelta(hours=23)
# Stripe errors worth retrying (the same key makes a retry safe); any other is a failure.
# An IdempotencyError (409: the key is in use by an overlapping request, e.g. a resumed
# worker while the first request still runs) says nothing about the payment: transient too,
# the attempt stays in flight (its slot occupied) until the answer or its webhook arrives.
TRANSIENT_STRIPE_ERRORS = (
    stripe.APIConnectionError,
    stripe.RateLimitError,
    stripe.APIError,
    stripe.IdempotencyError,
)
# A failed attempt whose charge may still have gone through (no answer before giving up):
# counted toward the monthly cap like one in flight (a late success still credits it).
OUTCOME_UNKNOWN = "outcome_unknown"


def month_start(now: datetime) -> datetime:
    moment = now.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def charged_this_month(*, auto_top_up: AutoTopUp, now: datetime) -> Decimal:
    """Money charged (or being charged, or perhaps charged) by the wallet's auto top-up this
    calendar month: attempts succeeded, in flight, or failed with their outcome unknown (a
    late success still credits those, so they count toward the cap until then)."""
    total = (
        AutoTopUpAttempt.objects.filter(
            auto_top_up=auto_top_up,
            created_at__gte=month_start(now),
        )
        .filter(
            Q(status__in=[*IN_FLIGHT_STATUSES, AttemptStatus.SUCCEEDED])
            | Q(status=AttemptStatus.FAILED, failure_code=OUTCOME_UNKNOWN)
        )
        .values_list("amount", flat=True)
        .order_by()
    )
    return sum(total, Decimal(0))


def plan_refill(
    *, auto_top_up: AutoTopUp, available: Decimal, charged: Decimal, now: datetime
) -> tuple[Decimal, Decimal] | str:
    """(money to charge, amount to credit in the wallet's unit), or why nothing is charged."""
    wallet = auto_top_up.wallet
    currency = billing_services.charge_currency(wallet)
    room = floor_to_minor_unit(auto_top_up.monthly_cap - charged, currency)
    if wallet.currency == CREDITS:
        price_each = settings.CREDIT_PRICE
        credit = (auto_top_up.target - available).to_integral_value(rounding=ROUND_CEILING)
        charge = ceil_to_minor_unit(credit * price_each, currency)
        if charge > room:
            credit = (room / price_each).to_integral_value(rounding=ROUND_FLOOR)
            charge = ceil_to_minor_unit(credit * price_each, currency)
    else:
        charge = ceil_to_minor_unit(auto_top_up.target - available, currency)
        charge = min(charge, room)
        credit = charge
    if credit <= 0 or charge <= 0:
        return (
            f"monthly cap reached: {charged.normalize():f} of "
            f"{auto_top_up.monthly_cap.normalize():f} {currency} charged since "
            f"{month_start(now):%Y-%m-%d}"
        )
    return charge, credit


def _event_data(attempt: AutoTopUpAttempt, **extra: Any) -> dict[str, Any]:
    return {
        "attempt_id": attempt.pk,
        "customer": attempt.customer.external_id,
        "wallet_currency": attempt.wallet_currency,
        "amount": str(attempt.amount),
        "currency": attempt.charge_currency,
        "credit_amount": str(attempt.credit_amount),
        "balance_before": str(attempt.balance_before),
        "payment_intent": attempt.payment_intent_id,
        "offline": attempt.offline,
        "status": attempt.status,
        **extra,
    }


def start_attempt(*, auto_top_up_id: int, now: datetime | None = None) -> AutoTopUpAttempt | None:
    """Start one attempt if the wallet is still due (enabled, below the threshold, out of
    its cool-off, nothing in flight, room under the cap); None otherwise. Decided under the
    settings row's lock; the partial unique index refuses a second attempt in flight even
    so."""
    now = now or timezone.now()
    with transaction.atomic():
        auto = (
            AutoTopUp.objects.select_for_update(no_key=True, of=("self",))
            .select_related("wallet__account", "wallet__customer", "customer")
            .get(pk=auto_top_up_id)
        )
        if not auto.enabled:
            return None
        if (
            auto.last_attempt_at
            and auto.last_attempt_at + timedelta(seconds=auto.cool_off_seconds) > now
        ):
            return None
        if AutoTopUpAttempt.objects.filter(
            wallet_id=auto.wallet_id, status__in=IN_FLIGHT_STATUSES
        ).exists():
            return None
        available = ledger_selectors.get_balance(account=auto.wallet.account).available
        if available >= auto.threshold:
            return None
        planned = plan_refill(
            auto_top_up=auto,
            available=available,
            charged=charged_this_month(auto_top_up=auto, now=now),
            now=now,
        )
        if isinstance(planned, str):
            _report_cap_reached(auto, planned, now)
            return None
        charge, credit = planned
        try:
            with transaction.atomic():
                attempt = AutoTopUpAttempt.objects.create(
                    auto_top_up=auto,
                    wallet_id=auto.wallet_id,
                    customer_id=auto.customer_id,
                    amount=charge,
                    charge_currency=billing_services.charge_currency(auto.wallet),
                    credit_amount=credit,
                    wallet_currency=auto.wallet.currency,
                    balance_before=available,
                    offline=payments.offline_mode(),
                    idempotency_key=f"pending-{uuid.uuid4().hex}",
                    created_at=now,
                )
                # The key Stripe sees is derived from the attempt's own id: stable for
                # every retry of this attempt, new for the next one.
                attempt.idempotency_key = f"auto-top-up-attempt-{attempt.pk}"
                attempt.save(update_fields=["idempotency_key"])
        except IntegrityError:  # another attempt in flight (the partial unique index)
            return None
        auto.last_attempt_at = now
        auto.skipped_reason = ""
        auto.save(update_fields=["last_attempt_at", "skipped_reason", "updated_at"])
    return attempt


def _report_cap_reached(auto: AutoTopUp, reason: str, now: datetime) -> None:
    if auto.skipped_reason != reason:
        auto.skipped_reason = reason
        auto.save(update_fields=["skipped_reason", "updated_at"])
    outbox.emit(
        EventType.AUTO_TOP_UP_FAILED,
        data={
            "attempt_id": None,
            "customer": auto.customer.external_id,
            "wallet_currency": auto.wallet.currency,
            "code": "monthly_cap_reached",
            "message": reason,
            "monthly_cap": str(auto.monthly_cap),
            "currency": billing_services.charge_currency(auto.wallet),
            "disabled": False,
        },
        customer=auto.customer,
        dedupe_key=f"auto_top_up.cap_reached:{auto.pk}:{month_start(now):%Y-%m}",
    )


def run_due(*, now: datetime | None = None) -> list[int]:
    """Beat: start an attempt for every wallet due; the ids of the attempts started. With no
    payment provider (neither Stripe nor the opted-in offline mode) nothing is attempted."""
    if not payments.provider_available():
        return []
    now = now or timezone.now()
    started = []
    for auto_top_up_id in billing_services.due_auto_top_ups(now=now):
        attempt = start_attempt(auto_top_up_id=auto_top_up_id, now=now)
        if attempt is not None:
            started.append(attempt.pk)
    return started


def process_attempt(*, attempt_id: int, now: datetime | None = None) -> AutoTopUpAttempt:
    """Charge the attempt (safe to run again, even at once: the Stripe request carries the
    attempt's idempotency key, and crediting is keyed by the attempt). A transient Stripe
    error is raised for the task to retry; the attempt stays in flight."""
    attempt = AutoTopUpAttempt.objects.select_related("customer").get(pk=attempt_id)
    if attempt.status not in IN_FLIGHT_STATUSES:
        return attempt
    if attempt.offline:  # started in offline mode: completed as it was recorded
        return complete_attempt(
            attempt_id=attempt.pk, received=attempt.amount, currency=attempt.charge_currency
        )[0]
    if not payments.stripe_enabled():
        return fail_attempt(
            attempt_id=attempt.pk,
            code="payments_unavailable",
            message="no payment provider is configured",
            now=now,
        )
    AutoTopUpAttempt.objects.filter(pk=attempt.pk, status=AttemptStatus.PENDING).update(
        status=AttemptStatus.PROCESSING, sent_at=now or timezone.now()
    )
    try:
        stripe_customer = stripe_gateway.sync_customer(customer=attempt.customer)
        method = stripe_gateway.default_payment_method(stripe_customer)
        if method is None:
            return fail_attempt(
                attempt_id=attempt.pk,
                code="no_payment_method",
                message="the customer has no saved default payment method at Stripe",
                now=now,
            )
        intent_id, received = stripe_gateway.charge(
            stripe_customer_id=stripe_customer,
            payment_method=method,
            amount=attempt.amount,
            currency=attempt.charge_currency,
            idempotency_key=attempt.idempotency_key,
            metadata={
                "kind": "auto_top_up",
                "attempt_id": str(attempt.pk),
                "customer_id": str(attempt.customer_id),
                "wallet_currency": attempt.wallet_currency,
                "credit_amount": str(attempt.credit_amount),
            },
            description=(
                f"Auto top-up of {attempt.credit_amount.normalize():f} {attempt.wallet_currency}"
            ),
        )
    except stripe_gateway.ChargeInFlight as in_flight:
        # processing at Stripe: stays in flight (its slot and its amount under the cap) until
        # the webhook says; a resend with the same key gets the same PaymentIntent
        AutoTopUpAttempt.objects.filter(pk=attempt.pk, status__in=IN_FLIGHT_STATUSES).update(
            payment_intent_id=in_flight.payment_intent_id
        )
        attempt.refresh_from_db()
        return attempt
    except stripe_gateway.ChargeDeclined as declined:
        return fail_attempt(
            attempt_id=attempt.pk,
            code=declined.code,
            message=declined.message,
            payment_intent_id=declined.payment_intent_id,
            now=now,
        )
    except TRANSIENT_STRIPE_ERRORS:
        raise
    except stripe.StripeError as error:  # refused as sent (no card, a bad request): final
        return fail_attempt(
            attempt_id=attempt.pk,
            code="payment_error",
            message=getattr(error, "user_message", None) or str(error),
            now=now,
        )
    return complete_attempt(
        attempt_id=attempt.pk,
        payment_intent_id=intent_id,
        received=received,
        currency=attempt.charge_currency,
        now=now,
    )[0]


def _locked(attempt_id: int) -> tuple[AutoTopUp, AutoTopUpAttempt]:
    """The attempt's settings row, then the attempt row, locked (the lock order)."""
    auto_top_up_id = AutoTopUpAttempt.objects.values_list("auto_top_up_id", flat=True).get(
        pk=attempt_id
    )
    auto = AutoTopUp.objects.select_for_update(no_key=True).get(pk=auto_top_up_id)
    attempt = (
        AutoTopUpAttempt.objects.select_for_update(no_key=True, of=("self",))
        .select_related("customer")
        .get(pk=attempt_id)
    )
    return auto, attempt


def complete_attempt(
    *,
    attempt_id: int,
    received: Decimal,
    currency: str,
    payment_intent_id: str | None = None,
    now: datetime | None = None,
) -> tuple[AutoTopUpAttempt, str]:
    """The charge succeeded: credit the wallet once, reset the failures in a row, emit
    ``auto_top_up.succeeded``. The synchronous answer and the webhook both call this; the
    second finds the attempt succeeded and changes nothing. A success reported after the
    attempt was failed (its outcome was unknown) still credits: the money was received.
    ``received`` is what the payment provider says was paid: a different amount credits
    in proportion, and the outcome says so."""
    now = now or timezone.now()
    with transaction.atomic():
        auto, attempt = _locked(attempt_id)
        if attempt.status == AttemptStatus.SUCCEEDED:
            return attempt, "duplicate"
        if currency != attempt.charge_currency:
            raise ValueError(f"paid in {currency}, charged in {attempt.charge_currency}")
        credit, outcome = attempt.credit_amount, "wallet credited"
        if received != attempt.amount:
            if attempt.wallet_currency == CREDITS:
                credit = (attempt.credit_amount * received / attempt.amount).quantize(
                    Decimal("1e-12"), rounding=ROUND_FLOOR
                )
            else:
                credit = received
            outcome = (
                f"amount mismatch: {received} {currency} paid, {attempt.amount} {currency} "
                f"asked; {credit} {attempt.wallet_currency} credited"
            )
        posted = _credit(attempt, credit=credit, received=received, intent=payment_intent_id)
        attempt.status = AttemptStatus.SUCCEEDED
        attempt.payment_intent_id = payment_intent_id or attempt.payment_intent_id
        attempt.ledger_transaction_id = posted.pk
        attempt.completed_at = now
        attempt.failure_code = attempt.failure_message = ""
        attempt.save()
        auto.consecutive_failures = 0
        auto.save(update_fields=["consecutive_failures", "updated_at"])
        outbox.emit(
            EventType.AUTO_TOP_UP_SUCCEEDED,
            data=_event_data(attempt, credited=str(credit), ledger_transaction=posted.reference),
            customer=attempt.customer,
            dedupe_key=f"auto_top_up.succeeded:{attempt.pk}",
        )
    return attempt, outcome


def _credit(attempt: AutoTopUpAttempt, *, credit: Decimal, received: Decimal, intent: str | None):
    """The ledger postings of a paid attempt, with references derived from its id (so a
    second call posts nothing): money wallets from the provider's clearing account; credits
    bought as ``billing.services.top_up`` does for a Checkout purchase (a purchase grant),
    their money received into ``@CreditsSold``."""
    customer = attempt.customer
    reference = f"auto-top-up:{attempt.pk}"
    if attempt.offline:
        return billing_services.top_up(
            customer=customer,
            amount=credit,
            currency=attempt.wallet_currency,
            reference=reference,
            description=(
                f"Auto top-up (offline mode) of {credit.normalize():f} {attempt.wallet_currency}"
            ),
            source_code=services.CLEARING["offline"],
            metadata={
                "auto_top_up_attempt": attempt.pk,
                # what was paid, and how: a refund of unused credits is capped at its share
                "payment": _payment(attempt, provider="offline", received=received),
            },
        )
    clearing_code = services.CLEARING["stripe"]
    if attempt.wallet_currency != CREDITS:
        return billing_services.top_up(
            customer=customer,
            amount=credit,
            currency=attempt.wallet_currency,
            reference=reference,
            description=f"Auto top-up by card ({intent})",
            source_code=clearing_code,
            metadata={"auto_top_up_attempt": attempt.pk, "payment_intent": intent},
        )
    money = attempt.charge_currency
    clearing = services.system_account_id(clearing_code, money, NormalBalance.DEBIT)
    sold = services.system_account_id(CREDITS_SOLD, money)
    ledger.post_transactions(
        transactions=[
            TransactionSpec(
                reference=f"{reference}:payment",
                legs=[Leg(clearing, received), Leg(sold, -received)],
                description=f"Credits bought by auto top-up ({intent})",
                metadata={"kind": "credits_sale", "customer": customer.external_id},
            )
        ]
    )
    return billing_services.top_up(
        customer=customer,
        amount=credit,
        currency=CREDITS,
        reference=reference,
        description=f"Credits bought by auto top-up ({intent})",
        # what was paid, and how (as for a Checkout purchase): a refund of unused credits
        # returns its share of what was paid to the card
        metadata={
            "auto_top_up_attempt": attempt.pk,
            "payment_intent": intent,
            "payment": _payment(attempt, provider="stripe", received=received, intent=intent),
        },
    )


def _payment(
    attempt: AutoTopUpAttempt, *, provider: str, received: Decimal, intent: str | None = None
) -> dict[str, str]:
    intent = intent or attempt.payment_intent_id
    return {
        "provider": provider,
        **({"payment_intent": intent} if intent else {}),
        "auto_top_up_attempt": str(attempt.pk),
        "amount": str(received),
        "currency": attempt.charge_currency,
    }


def fail_attempt(
    *,
    attempt_id: int,
    code: str,
    message: str,
    payment_intent_id: str | None = None,
    now: datetime | None = None,
) -> AutoTopUpAttempt:
    """The charge failed: record it, count it, and after ``max_failures`` in a row turn the
    auto top-up off with the reason; emit ``auto_top_up.failed``. An attempt already ended
    (a repeated or late failure, a failure after success) changes nothing."""
    now = now or timezone.now()
    with transaction.atomic():
        auto, attempt = _locked(attempt_id)
        if attempt.status not in IN_FLIGHT_STATUSES:
            return attempt
        attempt.status = AttemptStatus.FAILED
        attempt.failure_code = code[:50]
        attempt.failure_message = message[:2000]
        attempt.payment_intent_id = payment_intent_id or attempt.payment_intent_id
        attempt.completed_at = now
        attempt.save()
        auto.consecutive_failures += 1
        disabled = auto.enabled and auto.consecutive_failures >= auto.max_failures
        fields = ["consecutive_failures", "updated_at"]
        if disabled:
            auto.enabled = False
            auto.disabled_at = now
            auto.disabled_reason = (
                f"turned off after {auto.consecutive_failures} failed attempts in a row; "
                f"the last: {message}"
            )[:2000]
            fields += ["enabled", "disabled_at", "disabled_reason"]
            log.warning("auto top-up %s turned off: %s", auto.pk, auto.disabled_reason)
        auto.save(update_fields=fields)
        outbox.emit(
            EventType.AUTO_TOP_UP_FAILED,
            data=_event_data(
                attempt,
                code=attempt.failure_code,
                message=attempt.failure_message,
                consecutive_failures=auto.consecutive_failures,
                disabled=disabled,
                disabled_reason=auto.disabled_reason if disabled else "",
            ),
            customer=attempt.customer,
            dedupe_key=f"auto_top_up.failed:{attempt.pk}",
        )
    return attempt


def stalled_attempt_ids(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Attempts in flight that were last sent (or, never sent, created) ``STALE_AFTER`` ago
    or more."""
    now = now or timezone.now()
    cut = now - STALE_AFTER
    return list(
        AutoTopUpAttempt.objects.filter(status__in=IN_FLIGHT_STATUSES)
        .filter(Q(sent_at__lte=cut) | Q(sent_at__isnull=True, created_at__lte=cut))
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )


def resume_stalled(*, now: datetime | None = None) -> list[int]:
    """Attempts a lost task left in flight: the ids to process again (with the same key
    Stripe answers what it did the first time); those older than ``STALE_GIVE_UP`` are
    failed instead (``outcome_unknown``), so the wallet is not blocked for ever."""
    now = now or timezone.now()
    again = []
    for attempt_id in stalled_attempt_ids(now=now):
        created = AutoTopUpAttempt.objects.values_list("created_at", flat=True).get(pk=attempt_id)
        if created <= now - STALE_GIVE_UP:
            fail_attempt(
                attempt_id=attempt_id,
                code=OUTCOME_UNKNOWN,
                message="no answer from the payment provider; a charge it made is still "
                "credited when its webhook arrives",
                now=now,
            )
        else:
            # sent again now: the next resumption waits another STALE_AFTER (a Stripe
            # outage does not queue a task per attempt every beat run)
            AutoTopUpAttempt.objects.filter(pk=attempt_id).update(sent_at=now)
            again.append(attempt_id)
    return again


# --- Stripe webhooks (invoicing.webhooks dispatches kind=auto_top_up here) -------------------


def attempt_of(intent: dict[str, Any]) -> AutoTopUpAttempt | None:
    raw = (intent.get("metadata") or {}).get("attempt_id", "")
    if not str(raw).isdigit():
        return None
    return AutoTopUpAttempt.objects.filter(pk=int(raw)).first()
