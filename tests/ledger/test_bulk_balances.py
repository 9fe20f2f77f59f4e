"""The posting function's owned balances (ledger_post_transactions_bulk, migration 0011:
locked in account-id order by one statement, changed by one conditional UPDATE): a refusal
names the account the per-account loop it replaced named — the first, in id order, that
has no balance row or cannot cover its change — with the same message and detail, and
changes nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ledger import errors, selectors, services
from ledger.models import Balance, Transaction
from tests.conftest import unique

pytestmark = pytest.mark.django_db


def _spend(wallet, revenue, amount: str) -> services.TransactionSpec:
    return services.TransactionSpec(
        reference=unique("bulk"),
        legs=[services.debit(wallet, amount), services.credit(revenue, amount)],
    )


def test_the_first_short_account_by_id_is_named_and_nothing_changes(revenue, make_wallet):
    low, high = make_wallet("1"), make_wallet("1")
    assert low.pk < high.pk
    # The higher account first in the payload: the account named is the lower one.
    specs = [_spend(high, revenue, "2"), _spend(low, revenue, "3")]
    with pytest.raises(errors.InsufficientFunds) as caught:
        services.post_transactions(transactions=specs)
    assert caught.value.message == (
        f"account {low.pk} has 1.000000000000 available; this posting needs 3.000000000000 "
        "(floor 0.000000000000)"
    )
    assert caught.value.detail == {
        "account_id": low.pk,
        "available": Decimal("1"),
        "required": Decimal("3"),
        "floor": Decimal("0"),
    }
    assert not Transaction.objects.filter(reference__in=[s.reference for s in specs]).exists()
    for wallet in (low, high):
        balance = selectors.get_balance(account=wallet)
        assert (balance.posted, balance.version) == (Decimal("1"), 1)


def test_an_account_that_can_pay_does_not_hide_one_that_cannot(revenue, make_wallet):
    rich, poor = make_wallet("10"), make_wallet("1")
    specs = [_spend(rich, revenue, "2"), _spend(poor, revenue, "2")]
    with pytest.raises(errors.InsufficientFunds) as caught:
        services.post_transactions(transactions=specs)
    assert caught.value.detail["account_id"] == poor.pk
    assert selectors.get_balance(account=rich).posted == Decimal("10")


def test_a_missing_balance_row_before_a_short_account_is_reported(revenue, make_wallet):
    missing, short = make_wallet("5"), make_wallet("1")
    assert missing.pk < short.pk
    Balance.objects.filter(account=missing).delete()  # a hand-made state: every account has one
    specs = [_spend(short, revenue, "2"), _spend(missing, revenue, "1")]
    with pytest.raises(errors.InvalidTransaction) as caught:
        services.post_transactions(transactions=specs)
    assert caught.value.message == f"account {missing.pk} has no balance row"


def test_changes_that_cancel_out_touch_no_balance(world, revenue, make_wallet):
    wallet = make_wallet("1")
    specs = [_spend(wallet, revenue, "5"), _spend(revenue, wallet, "5")]
    posted = services.post_transactions(transactions=specs)
    assert len(posted) == 2
    balance = selectors.get_balance(account=wallet)
    assert (balance.posted, balance.version) == (Decimal("1"), 1)


def test_many_accounts_in_one_call(revenue, make_wallet):
    wallets = [make_wallet("10") for _ in range(6)]
    specs = [_spend(w, revenue, str(i + 1)) for i, w in enumerate(wallets)]
    services.post_transactions(transactions=specs)
    for i, wallet in enumerate(wallets):
        balance = selectors.get_balance(account=wallet)
        assert (balance.posted, balance.version) == (Decimal(10 - i - 1), 2)
    assert selectors.get_balance(account=revenue).posted == sum(range(1, 7))


def test_transactions_whose_references_sort_against_the_payload_keep_their_places(
    revenue, make_wallet
):
    """Each transaction answered, and its entries, are the payload's at its place, when
    the references sort in another order than the payload's (the function's arrays are
    in payload order: an aggregate that took its rows sorted by reference, as PostgreSQL
    16+ may for count(DISTINCT reference), mixed them up)."""
    base = unique("order")
    wallets = [make_wallet("100") for _ in range(5)]
    # References in reverse alphabetical order to the payload, amounts all different.
    specs = [
        services.TransactionSpec(
            reference=f"{base}-{chr(ord('z') - i)}",
            legs=[services.debit(w, str(i + 1)), services.credit(revenue, str(i + 1))],
        )
        for i, w in enumerate(wallets)
    ]
    posted = services.post_transactions(transactions=specs)
    assert [t.reference for t in posted] == [s.reference for s in specs]
    for i, (spec, wallet) in enumerate(zip(specs, wallets, strict=True)):
        stored = Transaction.objects.get(reference=spec.reference)
        assert stored.pk == posted[i].pk
        amounts = {(e.account_id, e.amount) for e in stored.entries.all()}
        assert (wallet.pk, Decimal(i + 1)) in {(a, abs(m)) for a, m in amounts}
        assert selectors.get_balance(account=wallet).posted == Decimal(100 - (i + 1))
    ids = services.post_transactions_for_ids(transactions=specs)  # all replays
    assert [row.transaction_id for row in ids] == [t.pk for t in posted]
