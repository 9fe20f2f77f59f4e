"""PostgreSQL itself refuses what the ledger forbids, whoever writes the SQL."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction

from ledger import errors, services
from ledger.models import Balance, Entry, Transaction
from tests.conftest import unique

pytestmark = pytest.mark.django_db


@pytest.fixture
def posted(world, make_wallet) -> Transaction:
    wallet = make_wallet(0)
    return services.post_transaction(
        reference=unique(), legs=[services.debit(world, "5"), services.credit(wallet, "5")]
    )


def sql(statement: str, params=()) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entry SET amount = amount * 2 WHERE transaction_id = %s",
        "DELETE FROM ledger_entry WHERE transaction_id = %s",
        "UPDATE ledger_transaction SET description = 'edited' WHERE id = %s",
        "DELETE FROM ledger_transaction WHERE id = %s",
    ],
)
def test_entries_and_transactions_cannot_be_changed(posted, statement):
    with pytest.raises(DatabaseError) as caught, transaction.atomic():
        sql(statement, [posted.id])
    assert caught.value.__cause__.sqlstate == "LG010"
    ledger_error = errors.from_database_error(caught.value)
    assert isinstance(ledger_error, errors.LedgerImmutable)
    assert "immutable" in ledger_error.message


def test_orm_update_of_an_entry_is_refused(posted):
    with pytest.raises(DatabaseError), transaction.atomic():
        Entry.objects.filter(transaction_id=posted.id).update(amount=Decimal("1"))


def test_an_entry_insert_that_does_not_balance_is_refused(world, make_wallet):
    wallet = make_wallet(0)
    with pytest.raises(DatabaseError) as caught, transaction.atomic():
        tx = Transaction.objects.create(
            reference=unique(), payload_hash="x", effective_at="2026-01-01T00:00:00Z"
        )
        # One leg at a time can never balance: the first statement is refused.
        Entry.objects.create(transaction=tx, account=wallet, currency="USD", amount=Decimal("-5"))
    assert caught.value.__cause__.sqlstate == "LG003"


def test_a_multi_row_insert_must_balance_per_currency(world, make_wallet):
    wallet = make_wallet(0)
    with pytest.raises(DatabaseError) as caught, transaction.atomic():
        tx = Transaction.objects.create(
            reference=unique(), payload_hash="x", effective_at="2026-01-01T00:00:00Z"
        )
        sql(
            "INSERT INTO ledger_entry (transaction_id, account_id, currency, amount) "
            "VALUES (%s, %s, 'USD', -5), (%s, %s, 'USD', 4)",
            [tx.pk, wallet.pk, tx.pk, world.pk],
        )
    assert caught.value.__cause__.sqlstate == "LG003"
    assert "does not balance in USD" in str(caught.value)


def test_entry_currency_must_match_its_account(world, make_wallet):
    wallet = make_wallet(0)
    with pytest.raises(IntegrityError), transaction.atomic():
        tx = Transaction.objects.create(
            reference=unique(), payload_hash="x", effective_at="2026-01-01T00:00:00Z"
        )
        Entry.objects.create(transaction=tx, account=wallet, currency="EUR", amount=Decimal("-5"))


def test_zero_entry_is_refused(world):
    with pytest.raises(IntegrityError), transaction.atomic():
        tx = Transaction.objects.create(
            reference=unique(), payload_hash="x", effective_at="2026-01-01T00:00:00Z"
        )
        Entry.objects.create(transaction=tx, account=world, currency="USD", amount=Decimal("0"))


def test_balance_row_cannot_go_below_its_floor(make_wallet):
    wallet = make_wallet("5")
    with pytest.raises(IntegrityError), transaction.atomic():
        Balance.objects.filter(account=wallet).update(posted=Decimal("-1"))


def test_reference_is_unique(posted):
    with pytest.raises(IntegrityError), transaction.atomic():
        Transaction.objects.create(
            reference=posted.reference, payload_hash="x", effective_at="2026-01-01T00:00:00Z"
        )


def test_entries_references_are_checked_per_statement_not_per_row():
    """Migration 0009: no foreign-key row triggers on ledger_entry (two RI queries an
    entry); the entries' statement trigger checks the references once per INSERT."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'ledger_entry'::regclass "
            "AND tgisinternal"
        )
        (row_triggers,) = cursor.fetchone()
    assert row_triggers == 0


def test_an_entry_insert_locks_its_accounts_but_not_its_transaction(world, make_wallet):
    """Migration 0010: a transaction row can be neither deleted nor updated (LG010), so the
    entries' check only looks it up; their accounts, which can be deleted, it locks FOR KEY
    SHARE (the lock shows as the row's xmax)."""
    wallet = make_wallet(0)
    with transaction.atomic():
        tx = Transaction.objects.create(
            reference=unique(), payload_hash="x", effective_at="2026-01-01T00:00:00Z"
        )
        sql(
            "INSERT INTO ledger_entry (transaction_id, account_id, currency, amount) "
            "VALUES (%s, %s, 'USD', -5), (%s, %s, 'USD', 5)",
            [tx.pk, wallet.pk, tx.pk, world.pk],
        )
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT (SELECT xmax::text FROM ledger_transaction WHERE id = %s), "
                "(SELECT xmax::text FROM ledger_account WHERE id = %s)",
                [tx.pk, wallet.pk],
            )
            transaction_xmax, account_xmax = cursor.fetchone()
    assert transaction_xmax == "0"
    assert account_xmax != "0"  # locked (by the savepoint's subtransaction)


def test_an_entry_naming_a_missing_transaction_is_refused_by_its_statement(world, make_wallet):
    """Refused at the end of the INSERT (the deferred key waited for the commit), with the
    foreign key's SQLSTATE, and before the balance is looked at."""
    wallet = make_wallet(0)
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        sql(
            "INSERT INTO ledger_entry (transaction_id, account_id, currency, amount) "
            "VALUES (-1, %s, 'USD', -5), (-1, %s, 'USD', 4)",
            [wallet.pk, world.pk],
        )
    assert caught.value.__cause__.sqlstate == "23503"
    assert "Key (transaction_id)=(-1) is not present" in str(
        caught.value.__cause__.diag.message_detail
    )


def test_an_account_entries_refer_to_cannot_be_deleted_or_rekeyed(posted):
    account_id = posted.entries.order_by("id").values_list("account_id", flat=True)[0]
    for statement in (
        "DELETE FROM ledger_balance WHERE account_id = %(a)s; "
        "DELETE FROM ledger_account WHERE id = %(a)s",
        "UPDATE ledger_account SET currency = 'EUR' WHERE id = %(a)s",
    ):
        with pytest.raises(IntegrityError) as caught, transaction.atomic():
            sql(statement, {"a": account_id})
        assert 'is still referenced from table "ledger_entry"' in str(
            caught.value.__cause__.diag.message_detail
        )
