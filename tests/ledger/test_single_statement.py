"""The single-statement posting (ledger.services.posting._POST_ONE): what it takes, what it hands
to the posting function, and that PostgreSQL keeps its plan. The posting rules themselves
run against it in test_posting (the "statement" parameter) and test_concurrency."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection, transaction

from billing.project.settings import database_from_url
from ledger import errors, selectors, services
from ledger.models import Entry
from tests.conftest import unique

pytestmark = pytest.mark.django_db


def prepared_posting_statements() -> list[tuple[int, int]]:
    """(generic_plans, custom_plans) of this connection's prepared single-statement
    postings."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE %s",
            ["%ledger_posting_guard%"],
        )
        return cursor.fetchall()


def test_a_single_posting_runs_one_prepared_statement_on_a_generic_plan(world, make_wallet):
    wallet = make_wallet(0)
    for _ in range(12):
        services.post_transaction(
            reference=unique(), legs=[services.debit(world, "1"), services.credit(wallet, "1")]
        )
    (generic, custom), *others = prepared_posting_statements()
    assert others == []
    # PostgreSQL tries five custom plans, then keeps the generic one when it costs no more;
    # with the legs' count unknown (an array) it re-planned every time.
    assert custom <= 5
    assert generic >= 7
    assert selectors.get_balance(account=wallet).posted == Decimal("12")


def test_three_legs_post_in_one_statement_in_leg_order(world, revenue, make_wallet):
    wallet = make_wallet("10")
    tax = make_wallet(0)
    posted = services.post_transaction(
        reference=unique(),
        legs=[
            services.debit(wallet, "1.20"),
            services.credit(revenue, "1.00"),
            services.credit(tax, "0.20"),
        ],
    )
    assert prepared_posting_statements() != []
    entries = list(Entry.objects.filter(transaction_id=posted.id).order_by("id"))
    assert [(e.account_id, e.amount) for e in entries] == [
        (wallet.id, Decimal("1.20")),
        (revenue.id, Decimal("-1.00")),
        (tax.id, Decimal("-0.20")),
    ]
    assert selectors.get_balance(account=wallet).posted == Decimal("8.80")
    assert selectors.get_balance(account=tax).posted == Decimal("0.20")


def test_legs_on_one_account_twice_go_through_the_posting_function(world, make_wallet):
    wallet = make_wallet(0)
    posted = services.post_transaction(
        reference=unique(),
        legs=[
            services.debit(world, "3"),
            services.credit(wallet, "1"),
            services.credit(wallet, "2"),
        ],
    )
    assert prepared_posting_statements() == []
    assert Entry.objects.filter(transaction_id=posted.id).count() == 3
    assert selectors.get_balance(account=wallet).posted == Decimal("3")


def test_two_owned_accounts_move_together(make_wallet):
    payer = make_wallet("5")
    payee = make_wallet(0)
    services.post_transaction(
        reference=unique(), legs=[services.debit(payer, "2"), services.credit(payee, "2")]
    )
    with pytest.raises(errors.InsufficientFunds) as caught:
        services.post_transaction(
            reference=unique(), legs=[services.debit(payer, "4"), services.credit(payee, "4")]
        )
    assert caught.value.detail == {
        "account_id": payer.id,
        "available": Decimal("3"),
        "required": Decimal("4"),
        "floor": Decimal("0"),
    }
    assert f"account {payer.id} has 3" in caught.value.message
    assert selectors.get_balance(account=payer).posted == Decimal("3")
    assert selectors.get_balance(account=payee).posted == Decimal("2")


def test_a_refusal_inside_a_transaction_leaves_it_usable(world, revenue, make_wallet):
    wallet = make_wallet("1")
    with transaction.atomic():
        with pytest.raises(errors.InsufficientFunds):
            services.post_transaction(
                reference=unique(),
                legs=[services.debit(wallet, "2"), services.credit(revenue, "2")],
            )
        with pytest.raises(errors.AccountNotFound):
            services.post_transaction(
                reference=unique(),
                legs=[services.debit(wallet, "1"), services.credit(10**12, "1")],
            )
        services.post_transaction(
            reference=unique(), legs=[services.debit(wallet, "1"), services.credit(revenue, "1")]
        )
    assert selectors.get_balance(account=wallet).posted == Decimal("0")


def test_prepared_statements_can_be_turned_off_for_a_pooler(monkeypatch):
    url = "postgresql://u@db.example:5432/billing"
    assert database_from_url(url)["OPTIONS"]["prepare_threshold"] == 5
    assert database_from_url(url + "?prepare_threshold=2")["OPTIONS"]["prepare_threshold"] == 2
    monkeypatch.setenv("DB_PREPARED_STATEMENTS", "0")
    assert database_from_url(url)["OPTIONS"]["prepare_threshold"] is None
