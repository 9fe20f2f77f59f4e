"""Auto top-up settings of a prepaid wallet, and which wallets are due for a refill.

    set_auto_top_up(wallet, …)   the one write of the settings: the admin, the API and
                                 (later) the portal call it
    due_auto_top_ups(now)        the enabled settings whose wallet's available balance is
                                 below the threshold, out of their cool-off, with nothing in
                                 flight: one query over the ledger's balance rows
    charge_currency(wallet)      the money an auto top-up of the wallet is charged in

Charging is invoicing's (``invoicing.auto_top_up``): Stripe is there, and this layer may
not import it. See docs/auto-top-up.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import (
    DateTimeField,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
)
from django.utils import timezone

from billing import errors, limits
from billing.models import (
    IN_FLIGHT_STATUSES,
    AutoTopUp,
    AutoTopUpAttempt,
    BillingMode,
    Wallet,
)
from billing.models.auto_top_up import DEFAULT_COOL_OFF_SECONDS, DEFAULT_MAX_FAILURES
from billing.services.wallets import CREDITS
from ledger.models import Balance

MAX_COOL_OFF_SECONDS = 31 * 24 * 3600  # a month: a longer cool-off is a switched-off refill
MAX_AUTO_TOP_UP_FAILURES = 100


class AutoTopUpNotFound(errors.BillingError):
    code = "auto_top_up_not_found"
    http_status = 404


class WalletNotPrepaid(errors.BillingError):
    code = "wallet_not_prepaid"
    http_status = 409


def charge_currency(wallet: Wallet) -> str:
    """What a refill of ``wallet`` is paid in: its own currency, or for credits the
    customer's (credits are bought at ``CREDIT_PRICE`` each)."""
    return wallet.customer.currency if wallet.currency == CREDITS else wallet.currency


def _amount(value: Decimal, param: str) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise errors.ValidationFailed(f"{param} must be an exact decimal amount", param=param)
    problem = limits.amount_problem(value)
    if problem:
        raise errors.ValidationFailed(problem, param=param)
    if value != value.quantize(Decimal("1e-12")):
        raise errors.ValidationFailed(f"{param} has more than 12 decimal places", param=param)
    return value


def _validate(
    *,
    threshold: Decimal,
    target: Decimal,
    monthly_cap: Decimal,
    cool_off_seconds: int,
    max_failures: int,
) -> None:
    _amount(threshold, "threshold")
    _amount(target, "target")
    _amount(monthly_cap, "monthly_cap")
    if threshold < 0:
        raise errors.ValidationFailed("threshold cannot be negative", param="threshold")
    if target <= threshold:
        raise errors.ValidationFailed("target must be above threshold", param="target")
    if monthly_cap <= 0:
        raise errors.ValidationFailed("monthly_cap must be positive", param="monthly_cap")
    if isinstance(cool_off_seconds, bool) or not 0 <= cool_off_seconds <= MAX_COOL_OFF_SECONDS:
        raise errors.ValidationFailed(
            f"cool_off_seconds must be 0 to {MAX_COOL_OFF_SECONDS}", param="cool_off_seconds"
        )
    if isinstance(max_failures, bool) or not 1 <= max_failures <= MAX_AUTO_TOP_UP_FAILURES:
        raise errors.ValidationFailed(
            f"max_failures must be 1 to {MAX_AUTO_TOP_UP_FAILURES}", param="max_failures"
        )


def set_auto_top_up(
    *,
    wallet: Wallet,
    enabled: bool,
    threshold: Decimal,
    target: Decimal,
    monthly_cap: Decimal,
    cool_off_seconds: int = DEFAULT_COOL_OFF_SECONDS,
    max_failures: int = DEFAULT_MAX_FAILURES,
    staff_user_id: int | None = None,
) -> AutoTopUp:
    """Create or replace the wallet's auto top-up settings (all of them: what is not given
    takes its default). Prepaid wallets only (a postpaid one is invoiced, not refilled).

    Turning it on (again) clears the failures in a row and the reason it was turned off:
    finance or the customer has looked at it. Setting the same values again changes
    nothing but ``updated_at``. The row is locked while it changes, so a concurrent attempt
    start (``invoicing.auto_top_up``, which locks it too) sees either the old or the new
    settings, never half of each."""
    _validate(
        threshold=threshold,
        target=target,
        monthly_cap=monthly_cap,
        cool_off_seconds=cool_off_seconds,
        max_failures=max_failures,
    )
    if wallet.billing_mode != BillingMode.PREPAID:
        raise WalletNotPrepaid(
            f"the {wallet.currency} wallet is postpaid (invoiced): only a prepaid wallet is "
            "topped up automatically",
            param="currency",
        )
    values = {
        "threshold": threshold,
        "target": target,
        "monthly_cap": monthly_cap,
        "cool_off_seconds": cool_off_seconds,
        "max_failures": max_failures,
        "updated_by_id": staff_user_id,
    }
    with transaction.atomic():
        settings = AutoTopUp.objects.select_for_update(no_key=True).filter(wallet=wallet).first()
        if settings is None:
            try:
                with transaction.atomic():
                    settings = AutoTopUp.objects.create(
                        wallet=wallet, customer_id=wallet.customer_id, enabled=enabled, **values
                    )
                return settings
            except IntegrityError:  # created concurrently: change that one
                settings = AutoTopUp.objects.select_for_update(no_key=True).get(wallet=wallet)
        turned_on = enabled and not settings.enabled
        for name, value in values.items():
            setattr(settings, name, value)
        settings.enabled = enabled
        if turned_on:
            settings.consecutive_failures = 0
            settings.disabled_reason = ""
            settings.disabled_at = None
        settings.save()
    return settings


def get_auto_top_up(*, wallet: Wallet) -> AutoTopUp:
    settings = AutoTopUp.objects.filter(wallet=wallet).select_related("wallet").first()
    if settings is None:
        raise AutoTopUpNotFound(
            f"the {wallet.currency} wallet of {wallet.customer.external_id} has no auto top-up",
            param="currency",
        )
    return settings


def _cool_off() -> ExpressionWrapper:
    return ExpressionWrapper(
        F("cool_off_seconds") * Value(timedelta(seconds=1), output_field=DurationField()),
        output_field=DurationField(),
    )


def available_balance_subquery(account_ref: str = "wallet__account_id") -> Subquery:
    """The available balance (posted − held, the sum of the account's balance rows) of the
    account ``account_ref`` names, as a subquery: the balance rows, never the entries."""
    return Subquery(
        Balance.objects.filter(account_id=OuterRef(account_ref))
        .values("account_id")
        .annotate(total=Sum(F("posted") - F("held")))
        .values("total")[:1]
    )


def due_auto_top_ups(*, now: datetime | None = None, limit: int = 1000) -> list[int]:
    """The ids of the enabled auto top-ups whose wallet is below its threshold, whose
    cool-off has passed and which have no attempt in flight: one statement, reading each
    wallet's balance row. Whether the monthly cap leaves room is decided per wallet when
    the attempt starts (under the settings row's lock)."""
    now = now or timezone.now()
    in_flight = AutoTopUpAttempt.objects.filter(
        wallet_id=OuterRef("wallet_id"), status__in=IN_FLIGHT_STATUSES
    )
    next_allowed = ExpressionWrapper(
        F("last_attempt_at") + _cool_off(), output_field=DateTimeField()
    )
    return list(
        AutoTopUp.objects.filter(enabled=True)
        .annotate(available=available_balance_subquery(), next_allowed_at=next_allowed)
        .filter(available__lt=F("threshold"))
        .filter(Q(last_attempt_at__isnull=True) | Q(next_allowed_at__lte=now))
        .exclude(Exists(in_flight))
        .order_by("last_attempt_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
