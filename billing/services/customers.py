"""Customers: created with their wallet, their descriptive fields and credit limit edited."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction

from billing import errors
from billing.models import (
    DEFAULT_DAYS_UNTIL_DUE,
    MAX_DAYS_UNTIL_DUE,
    BillingMode,
    CollectionMethod,
    Customer,
)
from billing.services.locks import lock_customer_usage
from billing.services.wallets import create_wallet, set_credit_limit


def collection_terms(*, collection_method: str, days_until_due: int | None) -> int | None:
    """The ``days_until_due`` to store for ``collection_method``: for send_invoice the days
    given (``DEFAULT_DAYS_UNTIL_DUE`` when None), 0 to ``MAX_DAYS_UNTIL_DUE``; for
    charge_automatically none, and days given for it are refused (they would do nothing)."""
    if collection_method not in CollectionMethod.values:
        raise errors.ValidationFailed(
            f"collection_method must be one of {', '.join(CollectionMethod.values)}",
            param="collection_method",
        )
    if collection_method == CollectionMethod.CHARGE_AUTOMATICALLY:
        if days_until_due is not None:
            raise errors.ValidationFailed(
                "days_until_due applies to collection_method send_invoice only",
                param="days_until_due",
            )
        return None
    if days_until_due is None:
        return DEFAULT_DAYS_UNTIL_DUE
    if isinstance(days_until_due, bool) or not 0 <= days_until_due <= MAX_DAYS_UNTIL_DUE:
        raise errors.ValidationFailed(
            f"days_until_due must be a whole number from 0 to {MAX_DAYS_UNTIL_DUE}",
            param="days_until_due",
        )
    return days_until_due


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
    collection_method: str = CollectionMethod.CHARGE_AUTOMATICALLY,
    days_until_due: int | None = None,
    **details: str,
) -> Customer:
    """A customer and its wallet in ``currency``. ``details``: address fields and tax_id;
    ``collection_method`` and ``days_until_due`` as ``collection_terms`` takes them."""
    days_until_due = collection_terms(
        collection_method=collection_method, days_until_due=days_until_due
    )
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
                collection_method=collection_method,
                days_until_due=days_until_due,
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
def edit_customer(
    *,
    customer: Customer,
    credit_limit: Decimal | None = KEEP,
    collection_method: str = KEEP,
    days_until_due: int | None = KEEP,
    **changes: Any,
) -> Customer:
    """Change a customer's descriptive fields (``CUSTOMER_EDITABLE``), its collection
    method and payment terms (``collection_terms``: days given alone apply to a send_invoice
    customer; switching to send_invoice without days gives the default) and, for a postpaid
    customer, its credit limit (``set_credit_limit``), all or nothing. Only changed columns
    are written; the same changes twice write nothing the second time. The customer row is
    locked FOR NO KEY UPDATE, which does not wait on rows being inserted that refer to it
    (events, invoices). Invoices finalized before keep their due date."""
    unknown = set(changes) - CUSTOMER_EDITABLE
    if unknown:
        raise errors.ValidationFailed(
            f"cannot change {', '.join(sorted(unknown))} of a customer", param=sorted(unknown)[0]
        )
    if credit_limit is not KEEP:
        lock_customer_usage([customer.pk])  # before any row, in rating's order
    locked = Customer.objects.select_for_update(no_key=True).get(pk=customer.pk)
    if collection_method is not KEEP or days_until_due is not KEEP:
        method = locked.collection_method if collection_method is KEEP else collection_method
        if days_until_due is KEEP:
            # the customer's own terms when it stays send_invoice; the default on a switch
            days_until_due = locked.days_until_due if method == locked.collection_method else None
        changes["collection_method"] = method
        changes["days_until_due"] = collection_terms(
            collection_method=method, days_until_due=days_until_due
        )
    changed = [field for field, value in changes.items() if getattr(locked, field) != value]
    for field in changed:
        setattr(locked, field, changes[field])
    if changed:
        locked.save(update_fields=[*changed, "updated_at"])
    if credit_limit is not KEEP:
        set_credit_limit(customer=locked, credit_limit=credit_limit)
    return locked
