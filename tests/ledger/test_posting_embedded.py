"""A posting embedded in a caller's statement (ledger.services.posting_ctes): the single
statement's CTEs, which rating puts before the events it writes. It posts what
post_transaction posts, its ``posting_id`` is what the caller's rows point at (the one
posted before with the same payload on a replay, NULL for a reused reference), and a
refusal is the ledger's error."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction

from ledger import errors, selectors, services
from ledger.models import Entry, Transaction
from tests.conftest import unique

pytestmark = pytest.mark.django_db


def embed(posting: services.PostingCtes) -> tuple[int | None, int | None]:
    """The caller's statement: the posting's CTEs, one CTE of the caller's reading
    ``posting_id``, and (posted id, posting_id)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH {posting.sql}, mine AS (SELECT id FROM posting_id) "
            "SELECT (SELECT id FROM posted), (SELECT id FROM mine)",
            posting.params,
        )
        return cursor.fetchone()


def refuse(posting: services.PostingCtes) -> None:
    """The caller's statement in a savepoint, its error the ledger's (which reads the
    refused accounts' balances: after the savepoint's rollback)."""
    try:
        with transaction.atomic():
            embed(posting)
    except DatabaseError as error:
        services.raise_refusal(error, posting)


def spec(reference: str, legs: list[services.Leg]) -> services.TransactionSpec:
    return services.TransactionSpec(
        reference=reference, legs=legs, description="usage", metadata={"kind": "usage"}
    )


def test_an_embedded_posting_posts_what_post_transaction_posts(world, revenue, make_wallet):
    wallet = make_wallet("10")
    legs = [services.debit(wallet, "1.5"), services.credit(revenue, "1.5")]
    posting = services.posting_ctes(spec(reference := unique(), legs))
    assert posting is not None
    posted, pointed = embed(posting)
    assert posted is not None and pointed == posted
    row = Transaction.objects.get(pk=posted)
    assert (row.reference, row.payload_hash) == (reference, posting.payload_hash)
    entries = Entry.objects.filter(transaction_id=posted).order_by("id")
    assert [(e.account_id, e.amount) for e in entries] == [
        (wallet.id, Decimal("1.5")),
        (revenue.id, Decimal("-1.5")),
    ]
    assert selectors.get_balance(account=wallet).posted == Decimal("8.5")
    # the same reference and legs through post_transaction: the same posting, replayed
    assert services.post_transaction(
        reference=reference, legs=legs, description="usage", metadata={"kind": "usage"}
    ).replayed


def test_a_replay_points_at_the_original_and_writes_nothing(world, revenue, make_wallet):
    wallet = make_wallet("10")
    legs = [services.debit(wallet, "1"), services.credit(revenue, "1")]
    first = services.post_transaction(
        reference=(reference := unique()),
        legs=legs,
        description="usage",
        metadata={"kind": "usage"},
    )
    posting = services.posting_ctes(spec(reference, legs))
    assert posting is not None
    count = Transaction.objects.count()
    assert embed(posting) == (None, first.pk)
    original = services.replayed(posting)
    assert (original.pk, original.replayed) == (first.pk, True)
    assert Transaction.objects.count() == count
    assert selectors.get_balance(account=wallet).posted == Decimal("9")


def test_a_reused_reference_points_at_nothing_and_is_refused(world, revenue, make_wallet):
    wallet = make_wallet("10")
    reference = unique()
    services.post_transaction(
        reference=reference, legs=[services.debit(wallet, "1"), services.credit(revenue, "1")]
    )
    posting = services.posting_ctes(
        spec(reference, [services.debit(wallet, "2"), services.credit(revenue, "2")])
    )
    assert posting is not None
    assert embed(posting) == (None, None)
    with pytest.raises(errors.ReferenceReused):
        services.replayed(posting)
    assert selectors.get_balance(account=wallet).posted == Decimal("9")


def test_a_refusal_is_the_ledgers_error(world, revenue, make_wallet):
    wallet = make_wallet("1")
    posting = services.posting_ctes(
        spec(unique(), [services.debit(wallet, "2"), services.credit(revenue, "2")])
    )
    assert posting is not None
    with pytest.raises(errors.InsufficientFunds) as caught:
        refuse(posting)
    assert caught.value.detail["account_id"] == wallet.id
    unknown = services.posting_ctes(
        spec(unique(), [services.debit(wallet, "1"), services.credit(10**12, "1")])
    )
    assert unknown is not None
    with pytest.raises(errors.AccountNotFound):
        refuse(unknown)
    assert selectors.get_balance(account=wallet).posted == Decimal("1")


def test_what_the_single_statement_does_not_take_is_not_embedded(world, make_wallet):
    wallet = make_wallet(0)
    legs = [services.debit(world, "3"), services.credit(wallet, "1"), services.credit(wallet, "2")]
    assert services.posting_ctes(spec(unique(), legs)) is None
