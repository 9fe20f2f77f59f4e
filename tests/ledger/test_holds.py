"""Holds: placed out of the available balance at once, settled in parts, released, expired,
and resolved at most once."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from ledger import errors, selectors, services
from ledger.models import Hold, HoldStatus, Transaction
from ledger.tasks import release_expired_holds
from tests.conftest import unique

pytestmark = pytest.mark.django_db


def balance(account):
    view = selectors.get_balance(account=account)
    return view.posted, view.held, view.available


def test_hold_takes_funds_out_of_available_at_once(revenue, make_wallet):
    wallet = make_wallet("10")
    services.place_hold(reference=unique(), account=wallet, destination=revenue, amount="4")
    assert balance(wallet) == (Decimal("10"), Decimal("4"), Decimal("6"))
    # A posting can only spend what is available, not what is held.
    with pytest.raises(errors.InsufficientFunds):
        services.post_transaction(
            reference=unique(), legs=[services.debit(wallet, "7"), services.credit(revenue, "7")]
        )


def test_hold_larger_than_available_is_refused(revenue, make_wallet):
    wallet = make_wallet("10")
    services.place_hold(reference=unique(), account=wallet, destination=revenue, amount="8")
    with pytest.raises(errors.InsufficientFunds) as caught:
        services.place_hold(reference=unique(), account=wallet, destination=revenue, amount="3")
    assert caught.value.code == "insufficient_funds"
    assert balance(wallet) == (Decimal("10"), Decimal("8"), Decimal("2"))
    assert Hold.objects.filter(account=wallet).count() == 1


def test_hold_on_overdraft_wallet_uses_its_limit(revenue, make_wallet):
    wallet = make_wallet(0, allow_negative=True, negative_limit="5")
    services.place_hold(reference=unique(), account=wallet, destination=revenue, amount="5")
    with pytest.raises(errors.InsufficientFunds):
        services.place_hold(reference=unique(), account=wallet, destination=revenue, amount="0.01")


def test_place_hold_is_idempotent(revenue, make_wallet):
    wallet = make_wallet("10")
    reference = unique()
    first = services.place_hold(
        reference=reference, account=wallet, destination=revenue, amount="4"
    )
    again = services.place_hold(
        reference=reference, account=wallet, destination=revenue, amount="4"
    )
    assert again.pk == first.pk and again.replayed
    assert balance(wallet)[1] == Decimal("4")
    with pytest.raises(errors.ReferenceReused):
        services.place_hold(reference=reference, account=wallet, destination=revenue, amount="5")


def test_settle_in_parts_then_the_rest_is_released(revenue, make_wallet):
    wallet = make_wallet("10")
    hold = services.place_hold(reference=unique(), account=wallet, destination=revenue, amount="6")
    services.settle_hold(hold_id=hold.pk, amount="1.5", reference=unique("part"))
    assert balance(wallet) == (Decimal("8.5"), Decimal("4.5"), Decimal("4"))
    services.settle_hold(hold_id=hold.pk, amount="2", reference=unique("part"), final=True)
    assert balance(wallet) == (Decimal("6.5"), Decimal("0"), Decimal("6.5"))
    hold.refresh_from_db()
    assert (hold.status, hold.settled_amount) == (HoldStatus.SETTLED, Decimal("3.5"))
    assert Transaction.objects.filter(hold=hold).count() == 2


def test_settling_the_whole_amount_resolves_the_hold(revenue, make_wallet):
    wallet = make_wallet("10")
    hold = services.place_hold(reference=unique(), account=wallet, destination=revenue, amount="6")
    services.settle_hold(hold_id=hold.pk, amount="6", reference=unique("part"))
    hold.refresh_from_db()
    assert hold.status == HoldStatus.SETTLED
    with pytest.raises(errors.HoldAlreadyResolved) as caught:
        services.settle_hold(hold_id=hold.pk, amount="1", reference=unique("part"))
    assert caught.value.code == "hold_already_resolved"


def test_settle_more_than_held_is_refused(revenue, make_wallet):
    wallet = make_wallet("10")
    hold = services.place_hold(reference=unique(), account=wallet, destination=revenue, amount="2")
    with pytest.raises(errors.HoldAmountExceeded) as caught:
        services.settle_hold(hold_id=hold.pk, amount="2.01", reference=unique("part"))
    assert caught.value.code == "hold_amount_exceeded"
    assert balance(wallet) == (Decimal("10"), Decimal("2"), Decimal("8"))


def test_settle_part_retry_is_a_replay(revenue, make_wallet):
    wallet = make_wallet("10")
    hold = services.place_hold(reference=unique(), account=wallet, destination=revenue, amount="5")
    reference = unique("part")
    first = services.settle_hold(hold_id=hold.pk, amount="1", reference=reference)
    again = services.settle_hold(hold_id=hold.pk, amount="1", reference=reference)
    assert again.replayed and again.pk == first.pk
    assert balance(wallet) == (Decimal("9"), Decimal("4"), Decimal("5"))
    with pytest.raises(errors.ReferenceReused):
        services.settle_hold(hold_id=hold.pk, amount="2", reference=reference)


def test_release_returns_the_rest_once(revenue, make_wallet):
    wallet = make_wallet("10")
    hold = services.place_hold(reference=unique(), account=wallet, destination=revenue, amount="5")
    services.settle_hold(hold_id=hold.pk, amount="1", reference=unique("part"))
    services.release_hold(hold_id=hold.pk)
    assert balance(wallet) == (Decimal("9"), Decimal("0"), Decimal("9"))
    services.release_hold(hold_id=hold.pk)  # releasing again changes nothing
    assert balance(wallet) == (Decimal("9"), Decimal("0"), Decimal("9"))
    with pytest.raises(errors.HoldAlreadyResolved):
        services.settle_hold(hold_id=hold.pk, amount="1", reference=unique("part"))


def test_release_of_a_settled_hold_is_refused(revenue, make_wallet):
    wallet = make_wallet("10")
    hold = services.place_hold(reference=unique(), account=wallet, destination=revenue, amount="5")
    services.settle_hold(hold_id=hold.pk, amount="5", reference=unique("part"))
    with pytest.raises(errors.HoldAlreadyResolved):
        services.release_hold(hold_id=hold.pk)


def test_unknown_hold(revenue):
    with pytest.raises(errors.HoldNotFound):
        services.release_hold(hold_id=10**12)


def test_expired_holds_are_released_by_the_beat_task(revenue, make_wallet):
    wallet = make_wallet("10")
    past = timezone.now() - timedelta(seconds=1)
    expired = services.place_hold(
        reference=unique(), account=wallet, destination=revenue, amount="3", expires_at=past
    )
    alive = services.place_hold(
        reference=unique(),
        account=wallet,
        destination=revenue,
        amount="2",
        expires_at=timezone.now() + timedelta(hours=1),
    )
    with pytest.raises(errors.HoldExpired) as caught:
        services.settle_hold(hold_id=expired.pk, amount="1", reference=unique("part"))
    assert caught.value.code == "hold_expired"
    assert release_expired_holds.apply().get() >= 1  # the task body, run in-process
    expired.refresh_from_db()
    alive.refresh_from_db()
    assert expired.status == HoldStatus.EXPIRED and expired.resolved_at is not None
    assert alive.status == HoldStatus.PENDING
    assert balance(wallet) == (Decimal("10"), Decimal("2"), Decimal("8"))
    assert services.release_expired_holds() == 0  # nothing left to do: safe to run twice


def test_holds_only_on_owned_credit_accounts(world, revenue, make_wallet):
    with pytest.raises(errors.HoldNotSupported):
        services.place_hold(reference=unique(), account=revenue, destination=world, amount="1")
    eur = make_wallet(10, currency="EUR")
    with pytest.raises(errors.CurrencyMismatch):
        services.place_hold(reference=unique(), account=eur, destination=revenue, amount="1")
