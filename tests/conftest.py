"""Shared fixtures. The suite runs on real PostgreSQL and Redis (see billing.devservices)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from ledger import services
from ledger.models import Account, NormalBalance


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def world(db) -> Account:
    """The outside world: debit-normal, hot, may go negative."""
    return services.ensure_system_account(
        code="@World", currency="USD", normal_balance=NormalBalance.DEBIT
    )


@pytest.fixture
def revenue(db) -> Account:
    return services.ensure_system_account(code="@Revenue", currency="USD")


@pytest.fixture
def make_wallet(db, world):
    """make_wallet(funds=..., allow_negative=..., negative_limit=..., currency=...)"""

    def make(
        funds: Decimal | str | int = 0,
        *,
        allow_negative: bool = False,
        negative_limit: Decimal | str | None = None,
        currency: str = "USD",
    ) -> Account:
        wallet = services.create_account(
            code=unique("wallet"),
            currency=currency,
            allow_negative=allow_negative,
            negative_limit=Decimal(negative_limit) if negative_limit is not None else None,
            owner_type="tests.customer",
            owner_id=unique("cus"),
        )
        if Decimal(funds):
            source = (
                world
                if currency == "USD"
                else services.ensure_system_account(
                    code="@World", currency=currency, normal_balance=NormalBalance.DEBIT
                )
            )
            services.post_transaction(
                reference=unique("fund"),
                legs=[services.debit(source, funds), services.credit(wallet, funds)],
            )
        return wallet

    return make
