"""Writes of the commercial core. Money moves only through ``ledger.services``.

create_customer, top_up, adjust_balance
create_meter, ensure_meter, publish_plan
create_subscription, change_subscription, cancel_subscription
create_api_key, revoke_api_key
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing import errors, limits
from billing.meters import CATALOG_KINDS, LLM_FIELDS
from billing.models import (
    Aggregation,
    APIKey,
    BillingMode,
    ConsumptionModel,
    Customer,
    GrantSource,
    IdempotencyRecord,
    Interval,
    Meter,
    Plan,
    PlanCharge,
    PriceModel,
    PriceTier,
    Subscription,
    SubscriptionPhase,
    SubscriptionStatus,
    Wallet,
)
from billing.periods import period_containing, prorate, utc
from ledger import errors as ledger_errors
from ledger import selectors as ledger_selectors
from ledger import services as ledger
from ledger.models import Account, NormalBalance
from ledger.models import Transaction as LedgerTransaction

# What a meter may read under llm. (the normalised usage), and which of those the model
# catalog can price (billing.meters).
LLM_PATHS = LLM_FIELDS
CATALOG_METER_PROPERTIES = tuple(CATALOG_KINDS)

WORLD = "@World"  # money entering from outside (top-ups until Stripe clears them)
ADJUSTMENTS = "@Adjustments"  # the other side of manual adjustments by finance staff


# --- customers and wallets -----------------------------------------------------------------


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
def create_customer(
    *,
    external_id: str,
    name: str,
    email: str = "",
    currency: str = "USD",
    billing_mode: str = BillingMode.PREPAID,
    credit_limit: Decimal | None = None,
    metadata: dict[str, Any] | None = None,
    **details: str,
) -> Customer:
    """A customer and its wallet in ``currency``. ``details``: address fields and tax_id."""
    if credit_limit is not None and billing_mode != BillingMode.POSTPAID:
        raise errors.ValidationFailed(
            "credit_limit applies to postpaid customers only", param="credit_limit"
        )
    if credit_limit is not None and credit_limit < 0:
        raise errors.ValidationFailed("credit_limit cannot be negative", param="credit_limit")
    try:
        with transaction.atomic():
            customer = Customer.objects.create(
                external_id=external_id,
                name=name,
                email=email,
                currency=currency,
                billing_mode=billing_mode,
                metadata=metadata or {},
                **details,
            )
    except IntegrityError:
        raise errors.CustomerExists(
            f"a customer with external_id {external_id!r} already exists", param="external_id"
        ) from None
    create_wallet(
        customer=customer, currency=currency, billing_mode=billing_mode, credit_limit=credit_limit
    )
    return customer


CUSTOMER_EDITABLE = frozenset(
    {
        "name",
        "email",
        "address_line1",
        "address_line2",
        "city",
        "state",
        "postal_code",
        "country",
        "tax_id",
        "metadata",
    }
)


@transaction.atomic
def update_customer(*, customer: Customer, **changes: Any) -> Customer:
    """Change a customer's descriptive fields (never its id, currency or billing mode:
    those shape its wallets and ledger accounts). Only the changed columns are written."""
    unknown = set(changes) - CUSTOMER_EDITABLE
    if unknown:
        raise errors.ValidationFailed(
            f"cannot change {', '.join(sorted(unknown))} of a customer", param=sorted(unknown)[0]
        )
    locked = Customer.objects.select_for_update().get(pk=customer.pk)
    changed = [field for field, value in changes.items() if getattr(locked, field) != value]
    for field in changed:
        setattr(locked, field, changes[field])
    if changed:
        locked.save(update_fields=[*changed, "updated_at"])
    return locked


KEEP: Any = object()  # edit_customer: leave the credit limit as it is


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


@transaction.atomic
def edit_customer(
    *, customer: Customer, credit_limit: Decimal | None = KEEP, **changes: Any
) -> Customer:
    """Change a customer's descriptive fields (``CUSTOMER_EDITABLE``) and, for a postpaid
    customer, its credit limit (``set_credit_limit``), all or nothing. Only changed columns
    are written; the same changes twice write nothing the second time. The customer row is
    locked FOR NO KEY UPDATE, which does not wait on rows being inserted that refer to it
    (events, invoices)."""
    unknown = set(changes) - CUSTOMER_EDITABLE
    if unknown:
        raise errors.ValidationFailed(
            f"cannot change {', '.join(sorted(unknown))} of a customer", param=sorted(unknown)[0]
        )
    if credit_limit is not KEEP:
        lock_customer_usage([customer.pk])  # before any row, in rating's order
    locked = Customer.objects.select_for_update(no_key=True).get(pk=customer.pk)
    changed = [field for field, value in changes.items() if getattr(locked, field) != value]
    for field in changed:
        setattr(locked, field, changes[field])
    if changed:
        locked.save(update_fields=[*changed, "updated_at"])
    if credit_limit is not KEEP:
        set_credit_limit(customer=locked, credit_limit=credit_limit)
    return locked


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
) -> LedgerTransaction:
    """A manual adjustment by finance staff: a positive ``amount`` credits the wallet, a
    negative one debits it (subject to the wallet's floor). The reason and the staff user
    are recorded on the ledger transaction."""
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
        },
    )


# --- meters and plans ------------------------------------------------------------------------


METER_FIELDS = ("event_name", "aggregation", "property", "filters", "group_by")


def _validate_meter(spec: dict[str, Any]) -> None:
    if spec.get("aggregation") not in Aggregation.values:
        raise errors.ValidationFailed(
            f"aggregation must be one of {', '.join(Aggregation.values)}", param="aggregation"
        )
    if spec["aggregation"] != Aggregation.COUNT and not spec.get("property"):
        raise errors.ValidationFailed(
            f"a {spec['aggregation']} meter needs the property it reads", param="property"
        )
    path = spec.get("property") or ""
    if path.startswith("llm.") and path[4:] not in LLM_PATHS:
        raise errors.ValidationFailed(
            f"{path} is not a normalised LLM usage field; one of "
            + ", ".join(f"llm.{name}" for name in LLM_PATHS),
            param="property",
        )
    if not isinstance(spec.get("filters", {}), dict):
        raise errors.ValidationFailed("filters must be an object", param="filters")
    if not isinstance(spec.get("group_by", []), list):
        raise errors.ValidationFailed("group_by must be a list", param="group_by")


@transaction.atomic
def create_meter(**spec: Any) -> Meter:
    _validate_meter(spec)
    try:
        with transaction.atomic():
            return Meter.objects.create(**spec)
    except IntegrityError:
        raise errors.MeterExists(f"meter {spec['code']!r} already exists", param="code") from None


def ensure_meter(**spec: Any) -> tuple[Meter, bool]:
    """Create the meter, or accept it unchanged. What a meter counts never changes once it
    exists (past usage would change meaning); its name and unit may."""
    existing = Meter.objects.filter(code=spec["code"]).first()
    if existing is None:
        return create_meter(**spec), True
    _validate_meter(spec)
    changed = [f for f in METER_FIELDS if f in spec and getattr(existing, f) != spec[f]]
    if changed:
        raise errors.MeterConflict(
            f"meter {existing.code!r} exists with a different {', '.join(changed)}; "
            "create a new meter instead",
            param="code",
        )
    updates = {
        k: spec[k] for k in ("name", "unit") if k in spec and getattr(existing, k) != spec[k]
    }
    if updates:
        Meter.objects.filter(pk=existing.pk).update(**updates)
    return existing, False


def rename_meter(*, meter: Meter, name: str, unit: str) -> Meter:
    """A meter's name and unit may change; what it counts may not."""
    Meter.objects.filter(pk=meter.pk).update(name=name, unit=unit)
    meter.name, meter.unit = name, unit
    return meter


@dataclass(frozen=True)
class TierSpec:
    up_to: Decimal | None
    unit_price: Decimal = Decimal(0)
    flat_fee: Decimal = Decimal(0)


@dataclass(frozen=True)
class ChargeSpec:
    meter: str
    price_model: str = PriceModel.PER_UNIT
    included_quantity: Decimal = Decimal(0)
    unit_price: Decimal = Decimal(0)
    package_size: Decimal | None = None
    margin_percent: Decimal | None = None
    tiers: tuple[TierSpec, ...] = ()


@dataclass(frozen=True)
class PlanSpec:
    code: str
    name: str
    currency: str = "USD"
    interval: str = Interval.MONTH
    base_fee: Decimal = Decimal(0)
    trial_days: int = 0
    consumption_model: str = ConsumptionModel.METERED
    units_per_credit: Decimal | None = None
    description: str = ""
    metadata: dict[str, Any] | None = None
    charges: tuple[ChargeSpec, ...] = ()

    def canonical_hash(self) -> str:
        def plain(value: Any) -> Any:
            if isinstance(value, Decimal):
                return format(value.normalize(), "f")
            if isinstance(value, tuple | list):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in sorted(value.items())}
            if hasattr(value, "__dataclass_fields__"):
                return {k: plain(getattr(value, k)) for k in value.__dataclass_fields__}
            return value

        body = plain(self)
        body["metadata"] = body["metadata"] or {}  # None and {} publish the same plan
        encoded = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()


def validate_plan_spec(spec: PlanSpec) -> None:
    """The one set of rules a plan obeys, whoever publishes it (the API, the pricing file,
    the admin): publish_plan runs it, the pricing file runs it early to name the line."""

    def fail(message: str, param: str) -> None:
        raise errors.ValidationFailed(message, param=param)

    def money(value: Decimal, param: str) -> None:
        if value < 0:
            fail("prices cannot be negative", param)
        problem = limits.amount_problem(value, limit=limits.MAX_PRICE)
        if problem:
            fail(problem, param)

    problem = limits.currency_problem(spec.currency)
    if problem:
        fail(problem, "currency")
    if spec.interval not in Interval.values:
        fail(f"interval must be one of {', '.join(Interval.values)}", "interval")
    if spec.consumption_model not in ConsumptionModel.values:
        fail(
            f"consumption_model must be one of {', '.join(ConsumptionModel.values)}",
            "consumption_model",
        )
    money(spec.base_fee, "base_fee")
    if spec.consumption_model == ConsumptionModel.CREDITS and not (
        spec.units_per_credit and spec.units_per_credit > 0
    ):
        fail("a credits plan needs units_per_credit > 0", "units_per_credit")
    if spec.consumption_model != ConsumptionModel.CREDITS and spec.units_per_credit is not None:
        fail("units_per_credit applies to credits plans only", "units_per_credit")
    meters = [c.meter for c in spec.charges]
    if len(set(meters)) != len(meters):
        fail("a plan has at most one charge per meter", "charges")
    for i, charge in enumerate(spec.charges):
        param = f"charges[{i}]"
        if charge.price_model not in PriceModel.values:
            fail(
                f"price_model must be one of {', '.join(PriceModel.values)}", f"{param}.price_model"
            )
        if charge.included_quantity < 0:
            fail("quantities cannot be negative", f"{param}.included_quantity")
        money(charge.unit_price, f"{param}.unit_price")
        tiered = charge.price_model in (PriceModel.GRADUATED, PriceModel.VOLUME)
        if tiered and charge.unit_price:
            fail(
                f"a {charge.price_model} charge is priced by its tiers; move the price into "
                "its tiers",
                f"{param}.unit_price",
            )
        if tiered and not charge.tiers:
            fail(f"a {charge.price_model} charge needs tiers", f"{param}.tiers")
        if not tiered and charge.tiers:
            fail(f"a {charge.price_model} charge has no tiers", f"{param}.tiers")
        if charge.price_model == PriceModel.PACKAGE and not (
            charge.package_size and charge.package_size > 0
        ):
            fail("a package charge needs package_size > 0", f"{param}.package_size")
        if charge.price_model != PriceModel.PACKAGE and charge.package_size is not None:
            fail("package_size applies to package charges only", f"{param}.package_size")
        if charge.margin_percent is not None:
            if charge.price_model != PriceModel.PER_UNIT or charge.unit_price or charge.tiers:
                fail(
                    "margin_percent prices a charge from the model catalog (provider cost × "
                    "(1 + margin)); it cannot also have a unit_price, tiers or packages",
                    f"{param}.margin_percent",
                )
            if charge.margin_percent <= -100:
                fail("margin_percent must be above -100", f"{param}.margin_percent")
        previous = Decimal(0)
        for j, tier in enumerate(charge.tiers):
            last = j == len(charge.tiers) - 1
            money(tier.unit_price, f"{param}.tiers[{j}].unit_price")
            money(tier.flat_fee, f"{param}.tiers[{j}].flat_fee")
            if tier.up_to is None and not last:
                fail("only the last tier may be open-ended", f"{param}.tiers[{j}].up_to")
            if last and tier.up_to is not None:
                fail("the last tier must be open-ended (up_to null)", f"{param}.tiers[{j}].up_to")
            if tier.up_to is not None:
                if tier.up_to <= previous:
                    fail("tier bounds must increase", f"{param}.tiers[{j}].up_to")
                previous = tier.up_to


@transaction.atomic
def publish_plan(*, spec: PlanSpec, published_by_id: int | None = None) -> tuple[Plan, bool]:
    """Publish ``spec`` as the next version of plan ``spec.code``; an unchanged spec returns
    the current version (``created`` False). The pricing file, the API and the admin all
    come through here."""
    validate_plan_spec(spec)
    meters = {m.code: m for m in Meter.objects.filter(code__in=[c.meter for c in spec.charges])}
    for i, charge in enumerate(spec.charges):
        if charge.meter not in meters:
            raise errors.MeterNotFound(
                f"meter {charge.meter!r} does not exist", param=f"charges[{i}].meter"
            )
        meter = meters[charge.meter]
        if charge.margin_percent is not None and (
            meter.property not in CATALOG_METER_PROPERTIES or meter.aggregation != Aggregation.SUM
        ):
            raise errors.ValidationFailed(
                f"meter {meter.code} does not sum LLM tokens (its property would be one of "
                f"{', '.join(CATALOG_METER_PROPERTIES)}), so the model catalog cannot price it; "
                "give it a unit_price instead of a margin",
                param=f"charges[{i}].margin_percent",
            )
    # Versions of one plan are allocated one at a time (the unique index backs this up).
    # The two-int key space (namespace, key): the single bigint space is the usage locks'.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [PLAN_VERSION_LOCK, spec.code]
        )
    current = Plan.objects.filter(code=spec.code).order_by("-version").first()
    spec_hash = spec.canonical_hash()
    if current is not None and current.spec_hash == spec_hash:
        return current, False
    plan = Plan.objects.create(
        code=spec.code,
        version=(current.version + 1) if current else 1,
        name=spec.name,
        description=spec.description,
        currency=spec.currency,
        interval=spec.interval,
        base_fee=spec.base_fee,
        trial_days=spec.trial_days,
        consumption_model=spec.consumption_model,
        units_per_credit=spec.units_per_credit,
        metadata=spec.metadata or {},
        spec_hash=spec_hash,
        published_by_id=published_by_id,
    )
    for charge_spec in spec.charges:
        plan_charge = PlanCharge.objects.create(
            plan=plan,
            meter=meters[charge_spec.meter],
            included_quantity=charge_spec.included_quantity,
            price_model=charge_spec.price_model,
            unit_price=charge_spec.unit_price,
            package_size=charge_spec.package_size,
            margin_percent=charge_spec.margin_percent,
        )
        PriceTier.objects.bulk_create(
            PriceTier(
                charge=plan_charge,
                position=n,
                up_to=t.up_to,
                unit_price=t.unit_price,
                flat_fee=t.flat_fee,
            )
            for n, t in enumerate(charge_spec.tiers)
        )
    return plan, True


def plan_spec_of(plan: Plan) -> PlanSpec:
    """The spec a plan version was published from (for "publish new version" edits)."""
    return PlanSpec(
        code=plan.code,
        name=plan.name,
        currency=plan.currency,
        interval=plan.interval,
        base_fee=plan.base_fee,
        trial_days=plan.trial_days,
        consumption_model=plan.consumption_model,
        units_per_credit=plan.units_per_credit,
        description=plan.description,
        metadata=plan.metadata or None,
        charges=tuple(
            ChargeSpec(
                meter=c.meter.code,
                price_model=c.price_model,
                included_quantity=c.included_quantity,
                unit_price=c.unit_price,
                package_size=c.package_size,
                margin_percent=c.margin_percent,
                tiers=tuple(
                    TierSpec(up_to=t.up_to, unit_price=t.unit_price, flat_fee=t.flat_fee)
                    for t in c.tiers.all()
                ),
            )
            for c in plan.charges.select_related("meter").prefetch_related("tiers").order_by("id")
        ),
    )


def latest_plan(*, code: str) -> Plan:
    plan = Plan.objects.filter(code=code).order_by("-version").first()
    if plan is None:
        raise errors.PlanNotFound(f"plan {code!r} does not exist", param="plan")
    return plan


# --- subscriptions ---------------------------------------------------------------------------

FUTURE_START_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True)
class ProrationLine:
    plan: Plan
    starts_at: datetime
    ends_at: datetime
    amount: Decimal  # the base fee for [starts_at, ends_at) of the current period


@transaction.atomic
def create_subscription(
    *,
    customer: Customer,
    plan: Plan,
    start: datetime | None = None,
    trial_days: int | None = None,
    now: datetime | None = None,
) -> Subscription:
    """Subscribe ``customer`` to ``plan`` from ``start`` (default now).

    A start in the past back-dates the subscription, as Stripe's backdated start and Orb's
    past start date do: its first period is the one that begins at the start (a trial
    first, when it has one), and every period that has ended by now is invoiced by the
    period close (beat's ``close_due_periods``, or ``manage.py close_periods``), one
    period after the other. So every event the subscription accepts — whatever its
    timestamp since the start — lands on the invoice of its period; nothing is rated into
    a period no invoice will ever carry. A customer whose past periods were billed
    elsewhere subscribes from now instead."""
    now = utc(now or timezone.now())
    # Subscriptions start on whole seconds: usage timestamps are usually sent to the second
    # (RFC 3339 without a fraction), and an event stamped in the second the subscription
    # started must fall inside it, not be refused as timestamp_before_subscription. The
    # anchor, the periods and a trial's end follow from the start, so they are whole too.
    start = (utc(start) if start else now).replace(microsecond=0)
    if start > now + FUTURE_START_TOLERANCE:
        raise errors.ValidationFailed("start cannot lie in the future", param="start")
    if plan.currency != customer.currency:
        raise errors.CurrencyMismatch(
            f"plan {plan.code} bills in {plan.currency}; the customer uses {customer.currency}",
            param="plan",
        )
    trial_days = plan.trial_days if trial_days is None else trial_days
    if trial_days < 0:
        raise errors.ValidationFailed("trial_days cannot be negative", param="trial_days")
    trial_ends_at = start + timedelta(days=trial_days) if trial_days else None
    if trial_ends_at is not None:
        # The trial is the first period (closed, free, like any trial's); a trial that
        # ended in the past is over, so the subscription is active, its trial period due.
        status = SubscriptionStatus.TRIALING if trial_ends_at > now else SubscriptionStatus.ACTIVE
        anchor, period_start, period_end = trial_ends_at, start, trial_ends_at
    else:
        status, anchor = SubscriptionStatus.ACTIVE, start
        period_start, period_end = period_containing(anchor, plan.interval, anchor)
    try:
        with transaction.atomic():
            subscription = Subscription.objects.create(
                customer=customer,
                plan=plan,
                status=status,
                started_at=start,
                billing_anchor=anchor,
                current_period_start=period_start,
                current_period_end=period_end,
                trial_ends_at=trial_ends_at,
            )
    except IntegrityError:
        raise errors.SubscriptionExists(
            f"customer {customer.external_id} already has a live subscription", param="customer"
        ) from None
    SubscriptionPhase.objects.create(subscription=subscription, plan=plan, starts_at=start)
    if plan.consumption_model == ConsumptionModel.CREDITS:
        ensure_wallet(customer=customer, currency=CREDITS)  # so credits can be bought
    return subscription


# pg_advisory_xact_lock(customer id): held by whatever rates a customer's usage
# (metering.rating) or changes what it is rated against (a plan change, a cancellation), so
# that rating never prices an event against a subscription that is changing under it.
# The key is the customer's bigint id itself, in PostgreSQL's single-bigint key space (which
# never overlaps the two-int space): every other advisory lock of the project uses the
# two-int form (namespace, key), so nothing else can take a usage lock by accident. Never
# cast the id to int: customer ids are bigints and pass 2^31.
PLAN_VERSION_LOCK = 4243  # (namespace, hashtext(plan code)): publish_plan


def lock_customer_usage(customer_ids: list[int]) -> None:
    """Take the usage locks of these customers, in id order, until the transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(s.id) FROM "
            "(SELECT unnest(%s::bigint[]) AS id ORDER BY 1) AS s",
            [sorted(set(customer_ids))],
        )


def lock_subscription_customer(subscription_id: int) -> int | None:
    """Take the usage lock of the subscription's customer (as ``lock_customer_usage``) and
    return the customer's id; None if there is no such subscription."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT s.customer_id, pg_advisory_xact_lock(s.customer_id) "
            "FROM billing_subscription s WHERE s.id = %s",
            [subscription_id],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def _locked_live_subscription(subscription_id: int) -> Subscription:
    lock_subscription_customer(subscription_id)  # the rating lock first, then the row
    subscription = (
        Subscription.objects.select_for_update()
        .select_related("plan", "customer")
        .filter(pk=subscription_id)
        .first()
    )
    if subscription is None:
        raise errors.SubscriptionNotFound(f"subscription {subscription_id} does not exist")
    if subscription.status == SubscriptionStatus.CANCELED:
        raise errors.SubscriptionCanceled(f"subscription {subscription_id} is canceled")
    return subscription


def _ensure_period_current(subscription: Subscription, now: datetime) -> None:
    """A change at period end means at the end of the period containing now. While the
    close has not caught up (a back-dated subscription's first periods, or beat behind),
    the current period is one that has ended: refuse rather than end or change the
    subscription in the past; the close rolls it on within minutes."""
    if subscription.current_period_end <= now:
        raise errors.PeriodClosePending(
            f"subscription {subscription.pk}'s period ended at "
            f"{subscription.current_period_end.isoformat()} and is not closed yet; a change at "
            "period end applies once the period close has caught up (within minutes)",
        )


def base_fee_proration(*, subscription: Subscription) -> list[ProrationLine]:
    """How the current period's base fee splits between the plan versions that applied in
    it: each phase's fee prorated by the time it covered. Trials cost nothing."""
    if subscription.status == SubscriptionStatus.TRIALING:
        return []
    start, end = subscription.current_period_start, subscription.current_period_end
    lines = []
    for phase in subscription.phases.select_related("plan").filter(starts_at__lt=end):
        phase_end = min(phase.ends_at or end, end)
        phase_start = max(phase.starts_at, start)
        if phase_end <= phase_start:
            continue
        amount = prorate(
            phase.plan.base_fee,
            used_from=phase_start,
            used_until=phase_end,
            period_start=start,
            period_end=end,
        )
        lines.append(ProrationLine(phase.plan, phase_start, phase_end, amount))
    return lines


@transaction.atomic
def change_subscription(
    *, subscription_id: int, plan: Plan, at_period_end: bool = False, now: datetime | None = None
) -> Subscription:
    """Move to another plan (version): now, with the base fee prorated by time between the
    two, or at the end of the current period."""
    now = utc(now or timezone.now())
    subscription = _locked_live_subscription(subscription_id)
    if plan.pk == subscription.plan_id:
        raise errors.ValidationFailed("the subscription is already on this plan", param="plan")
    if plan.currency != subscription.plan.currency:
        raise errors.CurrencyMismatch("plans of different currencies", param="plan")
    if plan.interval != subscription.plan.interval:
        raise errors.ValidationFailed(
            "changing the billing interval is not supported mid-period; cancel and resubscribe",
            param="plan",
        )
    if plan.consumption_model != subscription.plan.consumption_model and not at_period_end:
        raise errors.ValidationFailed(
            f"a change from a {subscription.plan.consumption_model} plan to a "
            f"{plan.consumption_model} plan takes effect at the end of the period "
            "(at: period_end): a period is rated in one way only",
            param="plan",
        )
    if at_period_end:
        _ensure_period_current(subscription, now)
        subscription.scheduled_plan = plan
        subscription.save(update_fields=["scheduled_plan"])
        return subscription
    change_at = max(now, subscription.current_period_start)
    subscription.phases.filter(ends_at__isnull=True).update(ends_at=change_at)
    SubscriptionPhase.objects.create(subscription=subscription, plan=plan, starts_at=change_at)
    subscription.plan = plan
    subscription.scheduled_plan = None
    subscription.save(update_fields=["plan", "scheduled_plan"])
    return subscription


@transaction.atomic
def cancel_subscription(
    *, subscription_id: int, at_period_end: bool = False, now: datetime | None = None
) -> Subscription:
    now = utc(now or timezone.now())
    subscription = _locked_live_subscription(subscription_id)
    if at_period_end:
        _ensure_period_current(subscription, now)
        subscription.cancel_at_period_end = True
        subscription.save(update_fields=["cancel_at_period_end"])
        return subscription
    ended_at = max(now, subscription.started_at)  # a start a moment ahead ends no earlier
    subscription.phases.filter(ends_at__isnull=True).update(ends_at=ended_at)
    subscription.status = SubscriptionStatus.CANCELED
    subscription.canceled_at = now
    subscription.ended_at = ended_at
    subscription.save(update_fields=["status", "canceled_at", "ended_at"])
    return subscription


# --- API keys --------------------------------------------------------------------------------

SECRET_PREFIX = "sk_"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    *,
    name: str,
    scopes: list[str],
    created_by_id: int | None = None,
    ingest_async: bool = False,
) -> tuple[APIKey, str]:
    """A new key and its secret. The secret is returned once and never stored.
    ``ingest_async``: its ingest requests are answered 202 and rated a moment later, as if
    each sent ``Prefer: respond-async`` (metering.inbox)."""
    unknown = set(scopes) - set(APIKey.SCOPES)
    if unknown or not scopes:
        raise errors.ValidationFailed(
            f"scopes must be a non-empty subset of {', '.join(APIKey.SCOPES)}", param="scopes"
        )
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = APIKey.objects.create(
        name=name,
        prefix=secret[:11],
        secret_hash=hash_secret(secret),
        scopes=sorted(set(scopes)),
        created_by_id=created_by_id,
        ingest_async=ingest_async,
    )
    return key, secret


def revoke_api_key(*, api_key: APIKey) -> APIKey:
    """Revoke a key; revoking it again keeps the first revocation time."""
    APIKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


IDEMPOTENCY_RETENTION = timedelta(hours=48)  # API.md promises at least 24 hours


def purge_idempotency_records(*, now: datetime | None = None) -> int:
    cutoff = (now or timezone.now()) - IDEMPOTENCY_RETENTION
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
