"""Customers: created with their wallet, their descriptive fields and credit limit edited."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction

from billing import errors
from billing.models import (
    BillingMode,
    Customer,
)
from billing.services.locks import lock_customer_usage
from billing.services.wallets import create_wallet, set_credit_limit


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
