"""Reads of the commercial core."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import CharField, F, Max, OuterRef, Prefetch, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from billing import errors
from billing.models import (
    BillingTime,
    CommitmentBilling,
    CreditGrant,
    Customer,
    GrantStatus,
    Plan,
    PlanCharge,
    Subscription,
    SubscriptionPhase,
    SubscriptionStatus,
    Wallet,
)
from billing.services import ChargeSpec, PlanSpec, TierSpec
from ledger import errors as ledger_errors
from ledger import selectors as ledger_selectors
from ledger.models import Account, Balance, Entry, Hold, NormalBalance
from ledger.models import Transaction as LedgerTransaction


def get_customer(*, external_id: str, param: str | None = None) -> Customer:
    customer = Customer.objects.filter(external_id=external_id).first()
    if customer is None:
        raise errors.CustomerNotFound(f"no customer with external_id {external_id!r}", param=param)
    return customer


def customer_accounts(customer: Customer) -> QuerySet[Account]:
    return Account.objects.filter(owner_type="billing.customer", owner_id=str(customer.pk))


def customer_credits(customer: Customer, *, now=None, wallets=None) -> list[dict[str, Any]]:
    """The customer's ``CREDITS`` wallets with their grants (``billing.credits``): ``live``
    (active and not expired, in the order they are drawn), ``ended`` (used up, expired,
    voided; newest first), and the credits outside any grant (``ungranted``: the posted
    balance less what the live grants hold). ``wallets``: the CREDITS wallets with their
    balances, when the caller has read them already."""
    now = now or timezone.now()
    if wallets is None:
        wallets = [
            (wallet, ledger_selectors.get_balance(account=wallet.account))
            for wallet in customer.wallets.filter(currency="CREDITS").select_related("account")
        ]
    result = []
    for wallet, view in wallets:
        live, pending, ended = [], [], []
        for g in CreditGrant.objects.filter(wallet=wallet):  # in drain order (Meta.ordering)
            if g.status != GrantStatus.ACTIVE:
                ended.append(g)
            elif g.expires_at is None or g.expires_at > now:
                live.append(g)
            else:
                pending.append(g)
        ended.sort(key=lambda g: g.ended_at or g.created_at, reverse=True)
        in_grants = sum((g.remaining for g in live + pending), Decimal(0))
        result.append(
            {
                "wallet": wallet,
                "currency": wallet.currency,
                "posted": view.posted,
                "held": view.held,
                "available": view.available,
                "live": live,
                "expiring": pending,  # past their expiry, waiting for the expiry task
                "ended": ended,
                "ungranted": max(view.posted - in_grants, Decimal(0)),
            }
        )
    return result


# The newest transactions touching any of the customer's accounts below a cursor: per
# account, its entries' transactions newest first from the (account, transaction) index
# (LATERAL, at most ``limit`` each), merged. Read this way its cost is the page's, however
# large the ledger: asked as ``pk IN (entries of the accounts)`` ordered by id, PostgreSQL
# merged the whole transaction table, newest first, with the customer's entries, walking
# every transaction posted since the customer's newest (docs/benchmarks.md, Session 11).
_TRANSACTION_IDS = """
SELECT DISTINCT page.transaction_id
  FROM ledger_account a
 CROSS JOIN LATERAL (
       SELECT DISTINCT e.transaction_id FROM ledger_entry e
        WHERE e.account_id = a.id AND e.transaction_id < %s
        ORDER BY e.transaction_id DESC LIMIT %s) AS page
 WHERE a.owner_type = 'billing.customer' AND a.owner_id = %s
 ORDER BY page.transaction_id DESC
 LIMIT %s
"""


def customer_transaction_ids(
    customer: Customer, *, limit: int | None, before: int | None = None
) -> list[int]:
    """Ids of the newest ``limit`` ledger transactions (all with None) touching the
    customer's accounts, below ``before`` if given, newest first; index-driven."""
    cap = 2**63 - 1
    with connection.cursor() as cursor:
        cursor.execute(
            _TRANSACTION_IDS,
            [cap if before is None else before, limit or cap, str(customer.pk), limit or cap],
        )
        return [row[0] for row in cursor.fetchall()]


def transactions_with_entries(ids: list[int]) -> QuerySet[LedgerTransaction]:
    return LedgerTransaction.objects.filter(pk__in=ids).prefetch_related(
        Prefetch("entries", queryset=Entry.objects.select_related("account").order_by("id"))
    )


def ledger_transaction(transaction_id: int) -> LedgerTransaction:
    return LedgerTransaction.objects.prefetch_related(
        Prefetch("entries", queryset=Entry.objects.select_related("account").order_by("id"))
    ).get(pk=transaction_id)


@dataclass(frozen=True)
class WalletChange:
    """What one ledger entry did to one of the customer's own accounts, in the wallet's
    own direction: positive is money in, negative money out."""

    amount: Decimal
    currency: str


@dataclass(frozen=True)
class WalletActivity:
    """One ledger transaction touching the customer, with its changes to the customer's
    own accounts (in entry order)."""

    transaction: LedgerTransaction
    changes: list[WalletChange]


def customer_recent_activity(customer: Customer, *, limit: int) -> list[WalletActivity]:
    """The customer's last ``limit`` ledger transactions, latest first (by effective time,
    then id), each with what it did to the customer's own wallets."""
    own = {a.pk: a for a in customer_accounts(customer)}
    # By effective time, which the index does not order: every id of the customer's (its
    # own history's size, never the ledger's), then the newest ``limit`` of them.
    ids = customer_transaction_ids(customer, limit=None)
    transactions = transactions_with_entries(ids).order_by("-effective_at", "-id")[:limit]
    activity = []
    for txn in transactions:
        changes = []
        for entry in txn.entries.all():
            account = own.get(entry.account_id)
            if account is not None:
                # A credit-normal account (a wallet) grows with credits.
                credit_normal = account.normal_balance == NormalBalance.CREDIT
                amount = -entry.amount if credit_normal else entry.amount
                changes.append(WalletChange(amount=amount, currency=entry.currency))
        activity.append(WalletActivity(transaction=txn, changes=changes))
    return activity


def with_available_and_live_plan(customers: QuerySet[Customer]) -> QuerySet[Customer]:
    """The customers, each annotated with ``wallet_available`` (posted − held of its wallet
    in its own currency, None without one) and ``live_plan_label`` ("code vN (status)" of a
    subscription not canceled, None without one): a list page's columns in one query."""
    wallet_available = (
        Balance.objects.filter(
            account__wallet__customer=OuterRef("pk"),
            account__wallet__currency=OuterRef("currency"),
        )
        .values("account_id")
        .annotate(total=Sum(F("posted") - F("held")))
        .values("total")[:1]
    )
    live_plan = (
        Subscription.objects.filter(customer=OuterRef("pk"))
        .exclude(status=SubscriptionStatus.CANCELED)
        .annotate(
            label=Concat(
                F("plan__code"),
                Value(" v"),
                Cast("plan__version", CharField()),
                Value(" ("),
                F("status"),
                Value(")"),
                output_field=CharField(),
            )
        )
        .values("label")[:1]
    )
    return customers.annotate(
        wallet_available=Subquery(wallet_available), live_plan_label=Subquery(live_plan)
    )


def _plans_with_charges() -> QuerySet[Plan]:
    return Plan.objects.select_related("credit_grant").prefetch_related(
        Prefetch(
            "charges",
            queryset=PlanCharge.objects.select_related("meter")
            .prefetch_related("tiers")
            .order_by("id"),
        )
    )


def latest_plans() -> QuerySet[Plan]:
    latest = (
        Plan.objects.filter(code=OuterRef("code"))
        .values("code")
        .annotate(v=Max("version"))
        .values("v")
    )
    return _plans_with_charges().filter(version=Subquery(latest))


def plan_with_charges(plan_id: int) -> Plan:
    return _plans_with_charges().get(pk=plan_id)


def get_plan(*, code: str, version: Any = None, param: str | None = None) -> Plan:
    plans = _plans_with_charges().filter(code=code)
    if version not in (None, ""):
        try:
            number = int(version)
            if not 1 <= number <= 2**31 - 1:
                raise ValueError
        except (TypeError, ValueError):
            raise errors.ValidationFailed(
                "version must be a positive integer", param="version"
            ) from None
        plan = plans.filter(version=number).first()
    else:
        plan = plans.order_by("-version").first()
    if plan is None:
        raise errors.PlanNotFound(
            f"plan {code!r} does not exist" + (f" in version {version}" if version else ""),
            param=param,
        )
    return plan


def plan_spec_from_validated(data: dict[str, Any]) -> PlanSpec:
    return PlanSpec(
        code=data["code"],
        name=data["name"],
        currency=data["currency"],
        interval=data["interval"],
        base_fee=data["base_fee"],
        trial_days=data["trial_days"],
        consumption_model=data["consumption_model"],
        units_per_credit=data.get("units_per_credit"),
        description=data.get("description", ""),
        metadata=data.get("metadata") or None,
        rounding=data.get("rounding") or "",
        minimum_amount=data.get("minimum_amount"),
        commitment_amount=data.get("commitment_amount"),
        commitment_billing=data.get("commitment_billing") or CommitmentBilling.IN_ARREARS,
        interval_count=1 if data.get("interval_count") is None else data["interval_count"],
        billing_time=data.get("billing_time") or BillingTime.ANNIVERSARY,
        billing_anchor_day=data.get("billing_anchor_day"),
        charges_interval=data.get("charges_interval") or "",
        charges_interval_count=1
        if data.get("charges_interval_count") is None
        else data["charges_interval_count"],
        charges=tuple(
            ChargeSpec(
                meter=c["meter"]["code"],
                price_model=c["price_model"],
                included_quantity=c["included_quantity"],
                unit_price=c["unit_price"],
                package_size=c.get("package_size"),
                margin_percent=c.get("margin_percent"),
                flat_fee_at_zero=c.get("flat_fee_at_zero", False),
                minimum_amount=c.get("minimum_amount"),
                prorated=c.get("prorated", False),
                interval=c.get("interval") or "",
                interval_count=1 if c.get("interval_count") is None else c["interval_count"],
                tiers=tuple(
                    TierSpec(
                        up_to=t.get("up_to"),
                        unit_price=t["unit_price"],
                        flat_fee=t["flat_fee"],
                        package_size=t.get("package_size"),
                    )
                    for t in c.get("tiers", [])
                ),
            )
            for c in data.get("charges", [])
        ),
        credit_grant=data.get("credit_grant"),
    )


def subscription_with_relations(subscription_id: int) -> Subscription:
    subscription = (
        Subscription.objects.select_related("customer", "plan", "scheduled_plan")
        .prefetch_related(
            Prefetch(
                "phases",
                queryset=SubscriptionPhase.objects.select_related("plan").order_by(
                    "starts_at", "id"
                ),
            )
        )
        .filter(pk=subscription_id)
        .first()
    )
    if subscription is None:
        raise errors.SubscriptionNotFound(f"subscription {subscription_id} does not exist")
    return subscription


# --- lists (GET /customers, GET /subscriptions) --------------------------------------------


def _subscriptions_with_relations() -> QuerySet[Subscription]:
    return Subscription.objects.select_related(
        "customer", "plan", "scheduled_plan"
    ).prefetch_related(
        Prefetch(
            "phases",
            queryset=SubscriptionPhase.objects.select_related("plan").order_by("starts_at", "id"),
        )
    )


def list_customers(
    *,
    email: str | None = None,
    billing_mode: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
) -> QuerySet[Customer]:
    """Customers matching the filters (``email`` exactly, ignoring case; created in
    [``created_from``, ``created_to``)), each with its wallets (and their accounts) and its
    live subscriptions (``live_subscriptions``, oldest first) prefetched, so that a page
    costs the same few queries whatever its size (balances: ``wallet_balances``)."""
    customers = Customer.objects.prefetch_related(
        Prefetch("wallets", queryset=Wallet.objects.select_related("account").order_by("id")),
        Prefetch(
            "subscriptions",
            queryset=_subscriptions_with_relations()
            .exclude(status=SubscriptionStatus.CANCELED)
            .order_by("id"),
            to_attr="live_subscriptions",
        ),
    )
    if email is not None:
        customers = customers.filter(email__iexact=email)
    if billing_mode is not None:
        customers = customers.filter(billing_mode=billing_mode)
    if created_from is not None:
        customers = customers.filter(created_at__gte=created_from)
    if created_to is not None:
        customers = customers.filter(created_at__lt=created_to)
    return customers


def wallet_balances(accounts: list[Account]) -> dict[int, ledger_selectors.BalanceView]:
    """The balances of these accounts now, by account id, in one query (what
    ``ledger.selectors.get_balance`` gives for each: the sum of its balance rows)."""
    totals = {
        row["account_id"]: row
        for row in Balance.objects.filter(account_id__in=[a.pk for a in accounts])
        .values("account_id")
        .annotate(posted=Sum("posted"), held=Sum("held"), version=Sum("version"))
    }
    result = {}
    for account in accounts:
        row = totals.get(account.pk, {})
        result[account.pk] = ledger_selectors.BalanceView(
            currency=account.currency,
            posted=row.get("posted") or Decimal(0),
            held=row.get("held") or Decimal(0),
            version=int(row.get("version") or 0),
        )
    return result


def list_subscriptions(
    *, customer: Customer | None = None, status: str | None = None
) -> QuerySet[Subscription]:
    """Subscriptions with their customer, plans and phases, of one customer and/or in one
    status."""
    subscriptions = _subscriptions_with_relations()
    if customer is not None:
        subscriptions = subscriptions.filter(customer=customer)
    if status is not None:
        subscriptions = subscriptions.filter(status=status)
    return subscriptions


def get_wallet_hold(*, hold_id: int) -> Hold:
    """A hold on a customer's wallet (the API shows no other)."""
    hold = Hold.objects.filter(pk=hold_id).first()
    if hold is None or not Wallet.objects.filter(account_id=hold.account_id).exists():
        raise ledger_errors.HoldNotFound(f"hold {hold_id} does not exist")
    return hold


def hold_customer(*, hold: Hold) -> Customer:
    """The customer whose wallet ``hold`` is on."""
    return Wallet.objects.select_related("customer").get(account_id=hold.account_id).customer
