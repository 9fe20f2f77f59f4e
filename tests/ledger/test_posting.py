"""Posting rules, each with its stable error code, and worked examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ledger import errors, selectors, services
from ledger.models import Balance, Entry, Transaction
from ledger.services import posting
from tests.conftest import unique

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True, params=["statement", "function"])
def posting_function(request, monkeypatch):
    """Every test here runs against the two ways a posting is written: the single statement
    that single transactions use (ledger.services.posting._POST_ONE), and the posting function
    (ledger_post_transactions_bulk) that everything else uses, single transactions
    included when ONE_STATEMENT_MAX_LEGS is 0."""
    if request.param == "function":
        monkeypatch.setattr(posting, "ONE_STATEMENT_MAX_LEGS", 0)
    return request.param


def test_top_up_then_usage_worked_example(world, revenue, make_wallet):
    wallet = make_wallet(0)
    services.post_transaction(
        reference=unique(), legs=[services.debit(world, "100"), services.credit(wallet, "100")]
    )
    spend = services.post_transaction(
        reference=unique(),
        legs=[services.debit(wallet, "0.000001845"), services.credit(revenue, "0.000001845")],
        description="123 tokens at $0.015 per million",
    )
    wallet_balance = selectors.get_balance(account=wallet)
    assert wallet_balance.posted == Decimal("99.999998155")
    assert wallet_balance.available == Decimal("99.999998155")
    assert wallet_balance.version == 2
    assert selectors.get_balance(account=revenue).posted >= Decimal("0.000001845")
    entries = list(Entry.objects.filter(transaction_id=spend.id).order_by("id"))
    assert [(e.account_id, e.amount) for e in entries] == [
        (wallet.id, Decimal("0.000001845")),
        (revenue.id, Decimal("-0.000001845")),
    ]
    assert spend.replayed is False


def test_smallest_amount_is_kept_exactly(world, make_wallet):
    wallet = make_wallet(0)
    services.post_transaction(
        reference=unique(),
        legs=[services.debit(world, "0.000000000001"), services.credit(wallet, "0.000000000001")],
    )
    assert selectors.get_balance(account=wallet).posted == Decimal("1e-12")


@pytest.mark.parametrize(
    "amount, message",
    [
        (0.1, "not float"),
        ("0.0000000000001", "more than 12 decimal places"),
        ("NaN", "not a finite number"),
        ("abc", "not a number"),
        ("-5", "must be positive"),
        ("0", "must be positive"),
        ("1e30", "too large"),
    ],
)
def test_bad_amounts_are_refused(amount, message, world, make_wallet):
    with pytest.raises(errors.InvalidAmount, match=message) as caught:
        services.debit(world, amount)
    assert caught.value.code == "invalid_amount"


def test_unbalanced_transaction_is_refused_and_changes_nothing(world, make_wallet):
    wallet = make_wallet(10)
    before = Transaction.objects.count()
    with pytest.raises(errors.UnbalancedTransaction) as caught:
        services.post_transaction(
            reference=unique(), legs=[services.debit(world, "5"), services.credit(wallet, "4")]
        )
    assert caught.value.code == "unbalanced_transaction"
    assert Transaction.objects.count() == before
    assert selectors.get_balance(account=wallet).posted == Decimal("10")


def test_balance_is_per_currency(world, make_wallet):
    usd = make_wallet(10)
    tokens = make_wallet(0, currency="TOKENS")
    with pytest.raises(errors.UnbalancedTransaction, match="does not balance in"):
        # 5 USD against 5 TOKENS sums to zero overall but not per currency
        services.post_transaction(
            reference=unique(), legs=[services.debit(usd, "5"), services.credit(tokens, "5")]
        )


def test_single_leg_transaction_is_refused(world):
    with pytest.raises(errors.LedgerError):
        services.post_transaction(reference=unique(), legs=[services.debit(world, "5")])


def test_unknown_account_is_refused(world):
    with pytest.raises(errors.AccountNotFound) as caught:
        services.post_transaction(
            reference=unique(),
            legs=[services.debit(world, "1"), services.credit(987654321, "1")],
        )
    assert caught.value.code == "account_not_found"


def test_overdraft_is_refused_and_changes_nothing(revenue, make_wallet):
    wallet = make_wallet("10.00")
    version = selectors.get_balance(account=wallet).version
    with pytest.raises(errors.InsufficientFunds) as caught:
        services.post_transaction(
            reference=unique(),
            legs=[
                services.debit(wallet, "10.000000000001"),
                services.credit(revenue, "10.000000000001"),
            ],
        )
    assert caught.value.code == "insufficient_funds"
    assert caught.value.http_status == 402
    assert caught.value.detail["available"] == Decimal("10")
    after = selectors.get_balance(account=wallet)
    assert (after.posted, after.version) == (Decimal("10"), version)


def test_spending_exactly_to_zero_is_allowed(revenue, make_wallet):
    wallet = make_wallet("10.00")
    services.post_transaction(
        reference=unique(), legs=[services.debit(wallet, "10"), services.credit(revenue, "10")]
    )
    assert selectors.get_balance(account=wallet).available == 0


def test_overdraft_limit_is_enforced(revenue, make_wallet):
    wallet = make_wallet(0, allow_negative=True, negative_limit="50")
    services.post_transaction(
        reference=unique(), legs=[services.debit(wallet, "50"), services.credit(revenue, "50")]
    )
    assert selectors.get_balance(account=wallet).available == Decimal("-50")
    with pytest.raises(errors.InsufficientFunds):
        services.post_transaction(
            reference=unique(),
            legs=[services.debit(wallet, "0.01"), services.credit(revenue, "0.01")],
        )


def test_unlimited_overdraft(revenue, make_wallet):
    wallet = make_wallet(0, allow_negative=True)
    services.post_transaction(
        reference=unique(),
        legs=[services.debit(wallet, "1000000"), services.credit(revenue, "1000000")],
    )
    assert selectors.get_balance(account=wallet).posted == Decimal("-1000000")


def test_set_overdraft_refuses_a_floor_above_the_balance(revenue, make_wallet):
    wallet = make_wallet(0, allow_negative=True)
    services.post_transaction(
        reference=unique(), legs=[services.debit(wallet, "30"), services.credit(revenue, "30")]
    )
    with pytest.raises(errors.OverdraftLimitBelowBalance):
        services.set_overdraft(account=wallet, allow_negative=True, negative_limit=Decimal("20"))
    services.set_overdraft(account=wallet, allow_negative=True, negative_limit=Decimal("40"))
    assert Balance.objects.get(account=wallet).floor == Decimal("-40")


def test_retry_with_same_reference_returns_the_original(world, make_wallet):
    wallet = make_wallet(0)
    reference = unique()
    legs = [services.debit(world, "7.5"), services.credit(wallet, "7.5")]
    first = services.post_transaction(reference=reference, legs=legs, description="first")
    again = services.post_transaction(reference=reference, legs=legs, description="retry")
    assert again.replayed is True
    assert again.id == first.id
    assert again.description == "first"  # the original, not the retry
    assert Transaction.objects.filter(reference=reference).count() == 1
    assert selectors.get_balance(account=wallet).posted == Decimal("7.5")


def test_same_reference_different_payload_is_refused(world, make_wallet):
    wallet = make_wallet(0)
    reference = unique()
    services.post_transaction(
        reference=reference, legs=[services.debit(world, "7.5"), services.credit(wallet, "7.5")]
    )
    with pytest.raises(errors.ReferenceReused) as caught:
        services.post_transaction(
            reference=reference, legs=[services.debit(world, "8"), services.credit(wallet, "8")]
        )
    assert caught.value.code == "reference_reused"
    assert selectors.get_balance(account=wallet).posted == Decimal("7.5")


def test_amount_written_differently_is_the_same_payload(world, make_wallet):
    wallet = make_wallet(0)
    reference = unique()
    services.post_transaction(
        reference=reference, legs=[services.debit(world, "7.5"), services.credit(wallet, "7.5")]
    )
    again = services.post_transaction(
        reference=reference,
        legs=[services.debit(world, Decimal("7.500")), services.credit(wallet, "7.50000")],
    )
    assert again.replayed


def test_bulk_posting_is_all_or_nothing(world, revenue, make_wallet):
    wallet = make_wallet("1.00")
    tokens_source = services.ensure_system_account(
        code="@Tokens", currency="TOKENS", normal_balance="debit"
    )
    usage = make_wallet(0, currency="TOKENS")
    token_leg = services.TransactionSpec(
        reference=unique("tok"),
        legs=[services.debit(tokens_source, 1000), services.credit(usage, 1000)],
    )
    too_expensive = services.TransactionSpec(
        reference=unique("usd"),
        legs=[services.debit(wallet, "2"), services.credit(revenue, "2")],
    )
    with pytest.raises(errors.InsufficientFunds):
        services.post_transactions(transactions=[token_leg, too_expensive])
    assert not Transaction.objects.filter(reference=token_leg.reference).exists()
    assert selectors.get_balance(account=usage).posted == 0

    affordable = services.TransactionSpec(
        reference=unique("usd"),
        legs=[services.debit(wallet, "0.25"), services.credit(revenue, "0.25")],
    )
    posted = services.post_transactions(transactions=[token_leg, affordable])
    assert [t.reference for t in posted] == [token_leg.reference, affordable.reference]
    assert selectors.get_balance(account=usage).posted == 1000
    assert selectors.get_balance(account=wallet).posted == Decimal("0.75")
    replayed = services.post_transactions(transactions=[token_leg, affordable])
    assert [t.replayed for t in replayed] == [True, True]
    assert [t.id for t in replayed] == [t.id for t in posted]


def test_posting_for_ids_answers_what_was_posted_and_replays(world, revenue, make_wallet):
    """``post_transactions_for_ids`` posts as ``post_transactions`` does (one transaction by
    the statement, several by the function) and answers each one's id, times and whether it
    was a replay, in the caller's order; a reference reused with other legs is refused."""
    wallet = make_wallet("10")
    specs = [
        services.TransactionSpec(
            reference=unique("ids"),
            legs=[services.debit(wallet, amount), services.credit(revenue, amount)],
        )
        for amount in ("1", "2")
    ]
    for batch in (specs[:1], specs):
        posted = services.post_transactions_for_ids(transactions=batch)
        stored = Transaction.objects.in_bulk([p.transaction_id for p in posted])
        assert [stored[p.transaction_id].reference for p in posted] == [s.reference for s in batch]
        assert [p.recorded_at for p in posted] == [
            stored[p.transaction_id].recorded_at for p in posted
        ]
        assert [p.replayed for p in posted] == [s is specs[0] and batch is specs for s in batch]
    assert selectors.get_balance(account=wallet).posted == Decimal("7")
    again = services.post_transactions(transactions=specs)
    assert [t.id for t in again] == [p.transaction_id for p in posted]
    assert all(t.replayed for t in again)
    reused = services.TransactionSpec(
        reference=specs[0].reference,
        legs=[services.debit(wallet, "3"), services.credit(revenue, "3")],
    )
    with pytest.raises(errors.ReferenceReused):
        services.post_transactions_for_ids(transactions=[reused])
    with pytest.raises(errors.ReferenceReused):
        services.post_transactions_for_ids(transactions=[reused, specs[1]])


def test_bulk_with_a_duplicate_reference_is_refused(world, make_wallet):
    wallet = make_wallet(0)
    spec = services.TransactionSpec(
        reference=unique(), legs=[services.debit(world, "1"), services.credit(wallet, "1")]
    )
    with pytest.raises(errors.InvalidTransaction, match="twice"):
        services.post_transactions(transactions=[spec, spec])


def test_a_bulk_inserts_its_transactions_in_reference_order(world, make_wallet):
    """Calls that share references take their locks on them (the unique index's, on a new
    reference) in one order whatever order each lists them in, so no two calls can wait for
    each other in a cycle. Results still come back in the caller's order."""
    wallet = make_wallet(0)
    stem = unique("order")
    specs = [
        services.TransactionSpec(
            reference=f"{stem}-{letter}",
            legs=[services.debit(world, "1"), services.credit(wallet, "1")],
        )
        for letter in "cab"
    ]
    posted = services.post_transactions(transactions=specs)
    assert [t.reference for t in posted] == [spec.reference for spec in specs]
    inserted = Transaction.objects.filter(reference__startswith=stem).order_by("id")
    assert [t.reference for t in inserted] == [f"{stem}-{letter}" for letter in "abc"]


def test_reversal_mirrors_the_original_once(world, revenue, make_wallet):
    wallet = make_wallet("10")
    spend = services.post_transaction(
        reference=unique(), legs=[services.debit(wallet, "4"), services.credit(revenue, "4")]
    )
    reference = unique("rev")
    reversal = services.reverse_transaction(transaction_id=spend.id, reference=reference)
    assert reversal.reverses_id == spend.id
    assert selectors.get_balance(account=wallet).posted == Decimal("10")
    mirrored = sorted(
        Entry.objects.filter(transaction_id=reversal.id).values_list("amount", flat=True)
    )
    assert mirrored == [Decimal("-4"), Decimal("4")]
    # A retry of the same reversal is a replay; another reversal is refused.
    assert services.reverse_transaction(transaction_id=spend.id, reference=reference).replayed
    with pytest.raises(errors.AlreadyReversed) as caught:
        services.reverse_transaction(transaction_id=spend.id, reference=unique("rev"))
    assert caught.value.code == "already_reversed"
    with pytest.raises(errors.CannotReverseReversal):
        services.reverse_transaction(transaction_id=reversal.id, reference=unique("rev"))
    with pytest.raises(errors.TransactionNotFound):
        services.reverse_transaction(transaction_id=10**12, reference=unique("rev"))


def test_reversal_that_would_overdraw_is_refused(world, revenue, make_wallet):
    wallet = make_wallet(0)
    top_up = services.post_transaction(
        reference=unique(), legs=[services.debit(world, "10"), services.credit(wallet, "10")]
    )
    services.post_transaction(
        reference=unique(), legs=[services.debit(wallet, "8"), services.credit(revenue, "8")]
    )
    with pytest.raises(errors.InsufficientFunds):
        services.reverse_transaction(transaction_id=top_up.id, reference=unique("rev"))


def test_balance_as_of_and_statement(world, make_wallet):
    wallet = make_wallet(0)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for day, amount in [(0, "10"), (1, "5"), (2, "2.5")]:
        services.post_transaction(
            reference=unique(),
            legs=[services.debit(world, amount), services.credit(wallet, amount)],
            effective_at=t0 + timedelta(days=day),
        )
    assert selectors.get_balance(account=wallet, as_of=t0).posted == Decimal("10")
    assert selectors.get_balance(account=wallet, as_of=t0 + timedelta(days=1)).posted == 15
    statement = selectors.get_statement(
        account=wallet, start=t0 + timedelta(days=1), end=t0 + timedelta(days=3)
    )
    assert statement.opening_balance == Decimal("10")
    assert [line.running_balance for line in statement.lines] == [Decimal("15"), Decimal("17.5")]
    assert statement.closing_balance == Decimal("17.5")
    assert selectors.balance_from_entries(account=wallet) == Decimal("17.5")


def test_hot_account_balance_is_the_sum_of_its_buckets(world, revenue, make_wallet):
    assert Balance.objects.filter(account=revenue).count() > 1
    before = selectors.get_balance(account=revenue).posted
    wallet = make_wallet("3")
    for _ in range(3):
        services.post_transaction(
            reference=unique(), legs=[services.debit(wallet, "1"), services.credit(revenue, "1")]
        )
    assert selectors.get_balance(account=revenue).posted == before + 3
    assert selectors.balance_from_entries(account=revenue) == before + 3


def test_naive_effective_time_is_refused(world, make_wallet):
    wallet = make_wallet(0)
    with pytest.raises(errors.InvalidTransaction, match="timezone-aware"):
        services.post_transaction(
            reference=unique(),
            legs=[services.debit(world, "1"), services.credit(wallet, "1")],
            effective_at=datetime(2026, 1, 1),  # noqa: DTZ001 - the point of the test
        )


def test_large_amounts_keep_every_digit(world, make_wallet):
    wallet = make_wallet(0, allow_negative=True)
    big = Decimal("12345678901234567890123.000000000001")  # 35 significant digits
    services.post_transaction(
        reference=unique(), legs=[services.debit(world, big), services.credit(wallet, big)]
    )
    services.post_transaction(
        reference=unique(), legs=[services.debit(world, big), services.credit(wallet, big)]
    )
    assert selectors.get_balance(account=wallet).posted == Decimal(
        "24691357802469135780246.000000000002"
    )


def test_system_account_with_another_sign_convention_is_refused(world):
    with pytest.raises(errors.InvalidTransaction, match="debit-normal"):
        services.ensure_system_account(code="@World", currency="USD", normal_balance="credit")
    assert (
        services.ensure_system_account(code="@World", currency="USD", normal_balance="debit").pk
        == world.pk
    )


def test_refused_overdraft_change_leaves_the_account_object_alone(revenue, make_wallet):
    wallet = make_wallet(0, allow_negative=True, negative_limit="10")
    services.post_transaction(
        reference=unique(), legs=[services.debit(wallet, "5"), services.credit(revenue, "5")]
    )
    with pytest.raises(errors.OverdraftLimitBelowBalance):
        services.set_overdraft(account=wallet, allow_negative=True, negative_limit=Decimal("1"))
    assert wallet.negative_limit == Decimal("10")
    with pytest.raises(errors.InvalidTransaction):
        services.set_overdraft(account=wallet, allow_negative=False, negative_limit=Decimal("5"))
    with pytest.raises(errors.InvalidAmount):
        services.set_overdraft(account=wallet, allow_negative=True, negative_limit=Decimal("-5"))
    assert (wallet.allow_negative, wallet.negative_limit) == (True, Decimal("10"))
    assert Balance.objects.get(account=wallet).floor == Decimal("-10")
