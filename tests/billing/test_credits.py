"""billing.credits: credit grants on a customer's CREDITS wallet.

Granting (promotional, adjustments, purchases through top-ups), the drain order usage and
negative adjustments follow (lowest priority, then soonest expiry, then oldest, then the
credits outside any grant), expiry and voiding, the API, and usage rated by many threads at
once. Every split and balance below is worked out by hand.

The credits plan here prices one unit at one credit (``units_per_credit`` 1, nothing
included); the subscription started at midnight UTC ten days ago, so usage stamped now is in
its current period whatever the date the suite runs."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing import credits, errors, services, tasks
from billing.models import (
    CreditAllocation,
    CreditGrant,
    Customer,
    GrantSource,
    GrantStatus,
    Wallet,
)
from billing.selectors import customer_credits
from billing.services import ChargeSpec
from ledger import errors as ledger_errors
from ledger import selectors as ledger_selectors
from ledger import services as ledger
from ledger.models import Account, Entry, NormalBalance
from ledger.models import Transaction as LedgerTransaction
from metering import rating
from tests.billing import conftest as billing_fixtures
from tests.billing.conftest import assert_error, iso
from tests.conftest import unique
from tests.factories import (
    CreditGrantFactory,
    CustomerFactory,
    MeterFactory,
    PlanFactory,
    SubscriptionFactory,
)
from tests.threads import run_concurrently

api = billing_fixtures.api
api_key = billing_fixtures.api_key
make_key = billing_fixtures.make_key

pytestmark = pytest.mark.django_db

D = Decimal
START = datetime.combine(timezone.now().date() - timedelta(days=10), time(), tzinfo=UTC)


# --- set-up ---------------------------------------------------------------------------------------


def credits_customer(external_id: str = "acme") -> Customer:
    """A prepaid customer on a credits plan (one ``api.call`` unit costs one credit), with an
    empty CREDITS wallet."""
    customer = CustomerFactory(external_id=external_id)
    meter = MeterFactory(code=unique("units"), api_call=True)
    SubscriptionFactory(
        customer=customer,
        plan=PlanFactory(
            name="Credits",
            consumption_model="credits",
            units_per_credit=1,
            charges=(ChargeSpec(meter=meter.code),),
        ),
        start=START,
    )
    services.ensure_wallet(customer=customer, currency="CREDITS")
    return customer


@pytest.fixture
def acme(db) -> Customer:
    return credits_customer()


def wallet_of(customer: Customer) -> Wallet:
    return Wallet.objects.select_related("account").get(customer=customer, currency="CREDITS")


def balance(customer: Customer) -> tuple[Decimal, Decimal, Decimal]:
    view = ledger_selectors.get_balance(account=wallet_of(customer).account)
    return view.posted, view.held, view.available


def posted(customer: Customer) -> Decimal:
    return balance(customer)[0]


def system_posted(code: str) -> Decimal:
    account = Account.objects.filter(code=code, currency="CREDITS").first()
    return D(0) if account is None else ledger_selectors.get_balance(account=account).posted


def fund_ungranted(customer: Customer, amount: str) -> LedgerTransaction:
    """Credits straight into the wallet, outside any grant (as before grants existed)."""
    world = ledger.ensure_system_account(
        code="@World", currency="CREDITS", normal_balance=NormalBalance.DEBIT
    )
    return ledger.post_transaction(
        reference=unique("ungranted"),
        legs=[ledger.debit(world, amount), ledger.credit(wallet_of(customer).account_id, amount)],
    )


def grant(customer: Customer, amount: str, **kwargs) -> CreditGrant:
    return CreditGrantFactory(customer=customer, amount=D(amount), **kwargs)


def in_days(days: float) -> datetime:
    return timezone.now() + timedelta(days=days)


def event(key: str, units: int | str, *, customer: str = "acme") -> rating.EventIn:
    return rating.EventIn(
        idempotency_key=key,
        customer=customer,
        event_name="api.call",
        timestamp=timezone.now() - timedelta(seconds=1),
        properties={"units": D(units) if isinstance(units, str) else units},
    )


def use(key: str, units: int | str, *, customer: str = "acme") -> LedgerTransaction:
    """Rate one event; the ledger transaction that debited the wallet."""
    [outcome] = rating.ingest_events([event(key, units, customer=customer)])
    assert outcome.status == "accepted", outcome.error
    return LedgerTransaction.objects.get(pk=outcome.event["ledger_transaction_id"])


def wallet_debit(transaction: LedgerTransaction, customer: Customer) -> Decimal:
    entry = Entry.objects.get(transaction=transaction, account_id=wallet_of(customer).account_id)
    assert entry.amount > 0  # a debit of the credit-normal wallet
    return entry.amount


def split_in_metadata(transaction: LedgerTransaction) -> list[tuple[int, Decimal]]:
    return [(grant_id, D(amount)) for grant_id, amount in transaction.metadata.get("grants", [])]


def allocations_of(transaction: LedgerTransaction) -> list[tuple[int, Decimal, str]]:
    return list(
        CreditAllocation.objects.filter(ledger_transaction=transaction)
        .order_by("id")
        .values_list("grant_id", "amount", "kind")
    )


def fresh(grant_row: CreditGrant) -> CreditGrant:
    return CreditGrant.objects.get(pk=grant_row.pk)


def remaining(*grants: CreditGrant) -> list[Decimal]:
    return [fresh(g).remaining for g in grants]


def entries(transaction: LedgerTransaction) -> dict[str, Decimal]:
    return {
        e.account.code: e.amount
        for e in Entry.objects.filter(transaction=transaction).select_related("account")
    }


def counts() -> tuple[int, int, int]:
    return (
        CreditGrant.objects.count(),
        CreditAllocation.objects.count(),
        LedgerTransaction.objects.count(),
    )


# --- grant_credits --------------------------------------------------------------------------------


def test_a_promotional_grant_posts_promotions_to_the_wallet_and_holds_all_of_it(acme):
    expires_at = in_days(30)
    granted = grant(acme, "100", name="Welcome credits", expires_at=expires_at, reference="welcome")
    assert granted.replayed is False
    row = fresh(granted)
    assert (row.source, row.priority, row.currency, row.name) == (
        "promotional",
        10,
        "CREDITS",
        "Welcome credits",
    )
    assert (row.amount, row.remaining, row.used) == (D(100), D(100), D(0))
    assert (row.status, row.expires_at, row.ended_at) == ("active", expires_at, None)
    assert row.reference == f"credit-grant:{acme.pk}:welcome"
    assert row.wallet == wallet_of(acme)

    transaction = LedgerTransaction.objects.get(pk=row.ledger_transaction_id)
    assert transaction.reference == row.reference
    assert entries(transaction) == {
        "@Promotions": D(100),  # debited: the cost of the credits given away
        wallet_of(acme).account.code: D(-100),  # credited
    }
    assert transaction.metadata["kind"] == "credit_grant"
    assert transaction.metadata["priority"] == 10
    assert transaction.metadata["expires_at"] == expires_at.isoformat()
    assert row.metadata == {"funding_account_id": Account.objects.get(code="@Promotions").pk}
    assert balance(acme) == (D(100), D(0), D(100))
    assert system_posted("@Promotions") == D(100)


def test_an_adjustment_grant_defaults_to_priority_20_and_is_funded_by_adjustments(acme):
    row = fresh(grant(acme, "7.5", source=GrantSource.ADJUSTMENT))
    assert (row.source, row.priority, row.name, row.expires_at) == (
        "adjustment",
        20,
        "Credit adjustment",
        None,
    )
    assert entries(row.ledger_transaction) == {
        "@Adjustments": D("7.5"),
        wallet_of(acme).account.code: D("-7.5"),
    }
    assert posted(acme) == D("7.5")


@pytest.mark.parametrize("priority", [0, 1000])
def test_an_explicit_priority_at_either_bound_is_kept(acme, priority):
    assert fresh(grant(acme, "1", priority=priority)).priority == priority


def test_the_same_reference_with_the_same_terms_grants_once(acme):
    expires_at = in_days(10)
    first = grant(acme, "25", expires_at=expires_at, reference="promo-1")
    again = grant(acme, "25", expires_at=expires_at, reference="promo-1", name="another name")
    assert (first.replayed, again.replayed) == (False, True)
    assert again.pk == first.pk
    assert counts() == (1, 0, 1)
    assert posted(acme) == D(25)


def test_a_reference_is_per_customer(acme):
    globex = credits_customer("globex")
    one = grant(acme, "5", reference="promo-1")
    two = grant(globex, "5", reference="promo-1")
    assert one.pk != two.pk and not two.replayed
    assert (posted(acme), posted(globex)) == (D(5), D(5))


@pytest.mark.parametrize(
    "change",
    [
        {"amount": D(26)},
        {"priority": 11},
        {"expires_at": None},
        {"source": GrantSource.ADJUSTMENT},
    ],
)
def test_the_same_reference_with_other_terms_is_a_conflict(acme, change):
    expires_at = in_days(10)
    first = grant(acme, "25", expires_at=expires_at, reference="promo-1")
    terms = {"amount": D(25), "expires_at": expires_at, **change}
    with pytest.raises(credits.GrantConflict) as refused:
        credits.grant_credits(customer=acme, reference="promo-1", **terms)
    assert (refused.value.code, refused.value.http_status, refused.value.param) == (
        "reference_reused",
        409,
        "reference",
    )
    assert str(first.pk) in refused.value.message
    assert counts() == (1, 0, 1)
    assert posted(acme) == D(25)


@pytest.mark.parametrize(
    ("terms", "param"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": D("-5")}, "amount"),
        ({"amount": 1.5}, "amount"),  # a float cannot carry credits exactly
        ({"amount": "abc"}, "amount"),
        ({"amount": "0.0000000000001"}, "amount"),  # 13 decimal places
        ({"amount": "NaN"}, "amount"),
        ({"amount": 5, "priority": -1}, "priority"),
        ({"amount": 5, "priority": 1001}, "priority"),
        ({"amount": 5, "expires_at": timezone.now() - timedelta(seconds=1)}, "expires_at"),
        ({"amount": 5, "expires_at": datetime(2099, 1, 1)}, "expires_at"),  # naive
        ({"amount": 5, "source": GrantSource.PURCHASE}, "source"),
        ({"amount": 5, "source": "gift"}, "source"),
    ],
)
def test_invalid_grants_are_refused_and_change_nothing(acme, terms, param):
    before = counts()
    with pytest.raises(errors.ValidationFailed) as refused:
        credits.grant_credits(customer=acme, reference="r", **terms)
    assert (refused.value.code, refused.value.param) == ("invalid_parameter", param)
    assert counts() == before == (0, 0, 0)
    assert posted(acme) == D(0)


def test_an_expiry_at_the_very_moment_of_granting_is_refused(acme):
    now = timezone.now()
    with pytest.raises(errors.ValidationFailed) as refused:
        credits.grant_credits(customer=acme, amount=D(5), expires_at=now, now=now)
    assert refused.value.param == "expires_at"
    assert counts() == (0, 0, 0)


# --- purchases (top-ups of the CREDITS wallet) ----------------------------------------------------


def test_a_credits_top_up_is_a_purchase_grant_drawn_after_promotions(acme):
    posted_top_up = services.top_up(
        customer=acme, amount=D(40), currency="CREDITS", reference="pack-1"
    )
    row = CreditGrant.objects.get(ledger_transaction=posted_top_up)
    assert (row.source, row.priority, row.amount, row.remaining, row.expires_at) == (
        "purchase",
        50,
        D(40),
        D(40),
        None,
    )
    assert row.name == "Top-up of 40 CREDITS"
    assert row.reference == posted_top_up.reference == f"top-up:{acme.pk}:pack-1"
    # the same top-up again: one posting, one grant
    again = services.top_up(customer=acme, amount=D(40), currency="CREDITS", reference="pack-1")
    assert again.pk == posted_top_up.pk
    assert CreditGrant.objects.count() == 1
    assert posted(acme) == D(40)


def test_credits_bought_expire_after_the_configured_days(acme, settings):
    settings.CREDIT_PURCHASE_EXPIRY_DAYS = 365
    before = timezone.now()
    posted_top_up = services.top_up(customer=acme, amount=D(10), currency="CREDITS")
    after = timezone.now()
    row = CreditGrant.objects.get(ledger_transaction=posted_top_up)
    assert before + timedelta(days=365) <= row.expires_at <= after + timedelta(days=365)


def test_a_usd_top_up_is_no_grant(acme):
    services.top_up(customer=acme, amount=D(10))
    assert not CreditGrant.objects.exists()


# --- drain order ----------------------------------------------------------------------------------


def test_usage_draws_lowest_priority_then_soonest_expiry_then_oldest_then_ungranted(acme):
    fund_ungranted(acme, "5")  # older than every grant, and still drawn last
    late = grant(acme, "4", expires_at=in_days(30))  # priority 10
    services.top_up(customer=acme, amount=D(4), currency="CREDITS")  # purchase, priority 50
    purchase = CreditGrant.objects.get(source="purchase")
    soon = grant(acme, "4", expires_at=in_days(7))  # priority 10, expires first
    never = grant(acme, "4")  # priority 10, never expires: after those that do
    tie_expiry = in_days(10)
    older = grant(acme, "2", priority=30, expires_at=tie_expiry)
    newer = grant(acme, "2", priority=30, expires_at=tie_expiry)
    assert posted(acme) == D(25)

    # (units, the split expected: grant → credits; what is left comes from ungranted funds)
    expected = [
        (3, [(soon, 3)]),
        (3, [(soon, 1), (late, 2)]),
        (5, [(late, 2), (never, 3)]),
        (4, [(never, 1), (older, 2), (newer, 1)]),
        (4, [(newer, 1), (purchase, 3)]),
        (3, [(purchase, 1)]),  # and 2 from the ungranted funds
        (2, []),  # all from the ungranted funds
    ]
    for number, (units, split) in enumerate(expected):
        transaction = use(f"e{number}", units)
        want = [(g.pk, D(amount)) for g, amount in split]
        assert wallet_debit(transaction, acme) == D(units)
        assert split_in_metadata(transaction) == want, number
        assert allocations_of(transaction) == [(g, a, "usage") for g, a in want], number
        if not split:
            assert "grants" not in transaction.metadata

    assert remaining(soon, late, never, older, newer, purchase) == [D(0)] * 6
    assert posted(acme) == D(1)  # 25 − 24: what is left is ungranted
    total_allocated = CreditAllocation.objects.aggregate(total=Sum("amount"))["total"]
    assert total_allocated == D(20)  # all 20 in grants; 4 of the 5 ungranted, drawn after them


def test_a_grant_used_up_is_depleted_and_one_partly_used_stays_active(acme):
    first = grant(acme, "2")
    second = grant(acme, "5")
    use("a", 1)
    row = fresh(first)
    assert (row.status, row.remaining, row.ended_at) == ("active", D(1), None)
    before = timezone.now()
    use("b", 2)  # the last 1 of the first grant and 1 of the second
    row = fresh(first)
    assert (row.status, row.remaining, row.used) == ("depleted", D(0), D(2))
    assert row.ended_at is not None and row.ended_at >= before
    other = fresh(second)
    assert (other.status, other.remaining, other.ended_at) == ("active", D(4), None)
    # a depleted grant is drawn no more
    transaction = use("c", 1)
    assert split_in_metadata(transaction) == [(second.pk, D(1))]


def test_fractional_usage_splits_exactly(acme):
    first = grant(acme, "0.000000000003")
    second = grant(acme, "1")
    transaction = use("a", "0.000000000005")
    assert split_in_metadata(transaction) == [
        (first.pk, D("0.000000000003")),
        (second.pk, D("0.000000000002")),
    ]
    assert remaining(first, second) == [D(0), D("0.999999999998")]


def test_a_batch_splits_event_after_event_across_the_grants(acme):
    first = grant(acme, "3")
    second = grant(acme, "3", priority=11)
    fund_ungranted(acme, "10")
    outcomes = rating.ingest_events([event("a", 2), event("b", 2), event("c", 3), event("d", 1)])
    assert [o.status for o in outcomes] == ["accepted"] * 4
    # One transaction for the customer's batch (issue 14): its debit of 8 drawn in drain
    # order, as the events' debits one after the other were (2; 1 + 1; 2 and 1 ungranted; 1).
    [transaction_id] = {o.event["ledger_transaction_id"] for o in outcomes}
    transaction = LedgerTransaction.objects.get(pk=transaction_id)
    assert split_in_metadata(transaction) == [(first.pk, D(3)), (second.pk, D(3))]
    assert [(g, a) for g, a, _ in allocations_of(transaction)] == split_in_metadata(transaction)
    assert remaining(first, second) == [D(0), D(0)]
    assert posted(acme) == D(8)  # 16 − 8


def test_a_retried_event_draws_on_the_grants_once(acme):
    first = grant(acme, "10")
    use("a", 4)
    [again] = rating.ingest_events([event("a", 4)])
    assert again.status == "duplicate"
    assert remaining(first) == [D(6)]
    assert CreditAllocation.objects.count() == 1
    assert posted(acme) == D(6)


def test_usage_the_wallet_cannot_cover_is_refused_and_draws_nothing(acme):
    first = grant(acme, "2")
    [refused] = rating.ingest_events([event("a", 3)])
    assert (refused.status, refused.error.code) == ("rejected", "insufficient_credits")
    assert remaining(first) == [D(2)]
    assert not CreditAllocation.objects.exists()


def test_each_customer_draws_on_its_own_grants(acme):
    globex = credits_customer("globex")
    mine = grant(acme, "5")
    theirs = grant(globex, "5")
    outcomes = rating.ingest_events([event("a", 2), event("b", 3, customer="globex")])
    assert [o.status for o in outcomes] == ["accepted", "accepted"]
    assert remaining(mine, theirs) == [D(3), D(2)]


def test_customer_credits_lists_live_grants_in_drain_order_and_the_ungranted_rest(acme):
    fund_ungranted(acme, "3")
    later = grant(acme, "5", expires_at=in_days(20))
    sooner = grant(acme, "5", expires_at=in_days(2))
    services.top_up(customer=acme, amount=D(5), currency="CREDITS")
    purchase = CreditGrant.objects.get(source="purchase")
    use("a", 6)  # sooner 5, later 1
    [wallet] = customer_credits(acme)
    assert [g.pk for g in wallet["live"]] == [later.pk, purchase.pk]
    assert [g.pk for g in wallet["ended"]] == [sooner.pk]
    assert wallet["expiring"] == []
    assert (wallet["posted"], wallet["ungranted"]) == (D(12), D(3))  # 18 − 6; 12 − 4 − 5


# --- expiry ---------------------------------------------------------------------------------------


def test_a_grant_past_its_expiry_is_not_drawn_on_even_before_the_task_runs(acme):
    promo = grant(acme, "5", expires_at=in_days(1))
    services.top_up(customer=acme, amount=D(10), currency="CREDITS")
    purchase = CreditGrant.objects.get(source="purchase")
    CreditGrant.objects.filter(pk=promo.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    [wallet] = customer_credits(acme)
    assert [g.pk for g in wallet["expiring"]] == [promo.pk]  # waiting for the task
    transaction = use("a", 3)
    assert split_in_metadata(transaction) == [(purchase.pk, D(3))]
    # rating expired the promotion first, under the customer's lock, before spending
    assert remaining(promo, purchase) == [D(0), D(7)]
    assert fresh(promo).status == "expired"
    assert system_posted("@CreditsExpired") == D(5)
    [wallet] = customer_credits(acme)
    assert [g.pk for g in wallet["live"]] == [purchase.pk]
    assert wallet["expiring"] == []
    assert wallet["ungranted"] == D(0)  # 7 posted, all in the purchase


def test_expiry_posts_what_is_left_to_credits_expired_once(acme):
    expires_at = in_days(1)
    promo = grant(acme, "5", expires_at=expires_at)
    services.top_up(customer=acme, amount=D(10), currency="CREDITS")
    use("a", 2)  # from the promotion: 3 left
    assert posted(acme) == D(13)

    assert credits.expire_due_grants(now=expires_at - timedelta(seconds=1)) == 0
    assert fresh(promo).status == "active"

    now = expires_at + timedelta(seconds=1)
    before = counts()
    assert credits.expire_due_grants(now=now) == 1
    row = fresh(promo)
    assert (row.status, row.remaining, row.ended_at) == ("expired", D(0), now)
    assert posted(acme) == D(10)  # lowered by exactly the 3 left
    assert system_posted("@CreditsExpired") == D(3)
    [(grant_id, transaction_id, amount, kind)] = CreditAllocation.objects.filter(
        kind="expiry"
    ).values_list("grant_id", "ledger_transaction_id", "amount", "kind")
    assert (grant_id, amount, kind) == (promo.pk, D(3), "expiry")
    expiry = LedgerTransaction.objects.get(pk=transaction_id)
    assert entries(expiry) == {wallet_of(acme).account.code: D(3), "@CreditsExpired": D(-3)}
    assert split_in_metadata(expiry) == [(promo.pk, D(3))]
    assert expiry.effective_at == now
    assert counts() == (before[0], before[1] + 1, before[2] + 1)

    # again, and later still: nothing more
    assert credits.expire_due_grants(now=now) == 0
    assert credits.expire_due_grants(now=now + timedelta(days=3)) == 0
    assert credits.expire_grant(grant_id=promo.pk, now=now + timedelta(days=3)).status == "expired"
    assert counts() == (before[0], before[1] + 1, before[2] + 1)
    assert posted(acme) == D(10)
    assert system_posted("@CreditsExpired") == D(3)


def test_a_used_up_grant_has_nothing_to_expire(acme):
    expires_at = in_days(1)
    promo = grant(acme, "2", expires_at=expires_at)
    fund_ungranted(acme, "5")
    use("a", 2)
    before = counts()
    assert credits.expire_due_grants(now=expires_at + timedelta(seconds=1)) == 0
    assert fresh(promo).status == "depleted"
    assert counts() == before
    assert posted(acme) == D(5)


def test_the_beat_task_expires_the_grants_due(acme):
    promo = grant(acme, "4", expires_at=in_days(1))
    keep = grant(acme, "6", expires_at=in_days(1))
    CreditGrant.objects.filter(pk=promo.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert tasks.expire_credit_grants() == 1
    assert (fresh(promo).status, fresh(keep).status) == ("expired", "active")
    assert posted(acme) == D(6)
    assert tasks.expire_credit_grants() == 0


def test_held_credits_expire_only_after_the_hold_is_released(acme):
    expires_at = in_days(1)
    promo = grant(acme, "10", expires_at=expires_at)
    used = ledger.ensure_system_account(code=rating.CREDITS_USED, currency="CREDITS")
    hold = ledger.place_hold(
        reference=unique("hold"), account=wallet_of(acme).account, destination=used, amount=D(4)
    )
    assert balance(acme) == (D(10), D(4), D(6))

    first_run = expires_at + timedelta(seconds=1)
    assert credits.expire_due_grants(now=first_run) == 1
    row = fresh(promo)
    assert (row.status, row.remaining, row.ended_at) == ("active", D(4), None)
    assert balance(acme) == (D(4), D(4), D(0))  # only the 6 available expired
    assert system_posted("@CreditsExpired") == D(6)

    # while the hold is pending, a later run takes nothing
    before = counts()
    assert credits.expire_due_grants(now=first_run + timedelta(minutes=1)) == 1
    assert counts() == before
    assert fresh(promo).remaining == D(4)

    ledger.release_hold(hold_id=hold.pk)
    last_run = first_run + timedelta(minutes=2)
    assert credits.expire_due_grants(now=last_run) == 1
    row = fresh(promo)
    assert (row.status, row.remaining, row.ended_at) == ("expired", D(0), last_run)
    assert balance(acme) == (D(0), D(0), D(0))
    assert system_posted("@CreditsExpired") == D(10)
    assert sorted(
        CreditAllocation.objects.filter(grant=promo).values_list("amount", flat=True)
    ) == [D(4), D(6)]
    assert credits.expire_due_grants(now=last_run + timedelta(minutes=1)) == 0


def test_an_expired_grant_whose_hold_is_settled_by_usage_ends(acme):
    expires_at = in_days(1)
    promo = grant(acme, "10", expires_at=expires_at)
    used = ledger.ensure_system_account(code=rating.CREDITS_USED, currency="CREDITS")
    hold = ledger.place_hold(
        reference=unique("hold"), account=wallet_of(acme).account, destination=used, amount=D(4)
    )
    CreditGrant.objects.filter(pk=promo.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    credits.expire_due_grants()  # 6 expire, 4 stay held
    assert fresh(promo).remaining == D(4)
    # the hold is settled by the usage it reserved for: the 4 credits are spent
    [outcome] = rating.ingest_events([event("a", 4)], hold_id=hold.pk)
    assert outcome.status == "accepted"
    assert balance(acme) == (D(0), D(0), D(0))
    credits.expire_due_grants()
    row = fresh(promo)
    # the wallet is empty; the grant must not claim 4 credits and stay due forever
    assert row.status != GrantStatus.ACTIVE
    assert row.remaining == D(0)
    assert credits.expire_due_grants() == 0


def test_credits_of_an_expired_grant_cannot_be_spent_before_the_task_runs(acme):
    promo = grant(acme, "10", expires_at=in_days(1))
    CreditGrant.objects.filter(pk=promo.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    [outcome] = rating.ingest_events([event("a", 3)])
    credits.expire_due_grants()
    row = fresh(promo)
    # Either the usage is refused (the wallet's only credits have expired) and all 10 expire,
    # or it is allowed and the grant still ends: never an active grant past its expiry.
    assert row.status == GrantStatus.EXPIRED
    assert row.remaining == D(0)
    assert credits.expire_due_grants() == 0
    if outcome.status == "accepted":
        assert posted(acme) == D(0)
    else:
        assert outcome.error.code == "insufficient_credits"
        assert system_posted("@CreditsExpired") == D(10)


# --- void -----------------------------------------------------------------------------------------


def test_voiding_takes_what_is_left_back_to_promotions(acme):
    promo = grant(acme, "10")
    fund_ungranted(acme, "5")
    use("a", 3)
    now = timezone.now()
    voided = credits.void_grant(grant_id=promo.pk, staff_user_id=42, now=now)
    row = fresh(voided)
    assert (row.status, row.remaining, row.ended_at) == ("voided", D(0), now)
    assert row.metadata["voided_by"] == 42
    assert posted(acme) == D(5)  # 15 − 3 − 7: the ungranted credits stay
    assert system_posted("@Promotions") == D(3)  # 10 given, 7 taken back
    [(transaction_id, amount)] = CreditAllocation.objects.filter(kind="void").values_list(
        "ledger_transaction_id", "amount"
    )
    assert amount == D(7)
    void = LedgerTransaction.objects.get(pk=transaction_id)
    assert entries(void) == {wallet_of(acme).account.code: D(7), "@Promotions": D(-7)}
    # a voided grant is drawn on no more
    transaction = use("b", 1)
    assert "grants" not in transaction.metadata


def test_voiding_an_adjustment_takes_it_back_to_adjustments(acme):
    adjustment = grant(acme, "4", source=GrantSource.ADJUSTMENT)
    credits.void_grant(grant_id=adjustment.pk)
    assert fresh(adjustment).status == "voided"
    assert system_posted("@Adjustments") == D(0)
    assert posted(acme) == D(0)


def test_voiding_twice_is_refused_and_changes_nothing(acme):
    promo = grant(acme, "10")
    credits.void_grant(grant_id=promo.pk)
    before = counts()
    with pytest.raises(errors.ValidationFailed) as refused:
        credits.void_grant(grant_id=promo.pk)
    assert refused.value.param == "grant"
    assert counts() == before
    assert posted(acme) == D(0)


def test_voiding_a_used_up_or_unknown_grant_is_refused(acme):
    promo = grant(acme, "1")
    use("a", 1)
    with pytest.raises(errors.ValidationFailed):
        credits.void_grant(grant_id=promo.pk)
    with pytest.raises(errors.ValidationFailed) as refused:
        credits.void_grant(grant_id=promo.pk + 1000)
    assert refused.value.param == "grant"


def test_voiding_leaves_held_credits_until_the_hold_is_released(acme):
    promo = grant(acme, "10")
    used = ledger.ensure_system_account(code=rating.CREDITS_USED, currency="CREDITS")
    hold = ledger.place_hold(
        reference=unique("hold"), account=wallet_of(acme).account, destination=used, amount=D(3)
    )
    credits.void_grant(grant_id=promo.pk)
    row = fresh(promo)
    assert (row.status, row.remaining) == ("active", D(3))
    assert balance(acme) == (D(3), D(3), D(0))
    ledger.release_hold(hold_id=hold.pk)
    credits.void_grant(grant_id=promo.pk)
    row = fresh(promo)
    assert (row.status, row.remaining) == ("voided", D(0))
    assert posted(acme) == D(0)


# --- adjust_balance on the CREDITS wallet ---------------------------------------------------------


def test_a_positive_credits_adjustment_is_an_adjustment_grant(acme):
    transaction = services.adjust_balance(
        customer=acme,
        amount=D(8),
        reason="  goodwill ",
        staff_user_id=None,
        currency="CREDITS",
        reference="ticket-1",
    )
    row = CreditGrant.objects.get(ledger_transaction=transaction)
    assert (row.source, row.priority, row.name, row.amount, row.expires_at) == (
        "adjustment",
        20,
        "Adjustment: goodwill",
        D(8),
        None,
    )
    assert entries(transaction) == {
        "@Adjustments": D(8),
        wallet_of(acme).account.code: D(-8),
    }
    again = services.adjust_balance(
        customer=acme,
        amount=D(8),
        reason="goodwill",
        staff_user_id=None,
        currency="CREDITS",
        reference="ticket-1",
    )
    assert again.pk == transaction.pk
    assert counts() == (1, 0, 1)
    assert posted(acme) == D(8)


def test_a_negative_credits_adjustment_draws_the_grants_in_order(acme):
    purchase_tx = services.top_up(customer=acme, amount=D(10), currency="CREDITS")
    purchase = CreditGrant.objects.get(ledger_transaction=purchase_tx)
    promo = grant(acme, "3")
    adjustment = grant(acme, "2", source=GrantSource.ADJUSTMENT)
    fund_ungranted(acme, "1")
    transaction = services.adjust_balance(
        customer=acme,
        amount=D(-7),
        reason="duplicate pack",
        staff_user_id=None,
        currency="CREDITS",
        reference="ticket-2",
    )
    want = [(promo.pk, D(3)), (adjustment.pk, D(2)), (purchase.pk, D(2))]
    assert split_in_metadata(transaction) == want
    assert allocations_of(transaction) == [(g, a, "adjustment") for g, a in want]
    assert entries(transaction) == {
        wallet_of(acme).account.code: D(7),
        "@Adjustments": D(-7),
    }
    assert transaction.metadata["kind"] == "adjustment"
    assert remaining(promo, adjustment, purchase) == [D(0), D(0), D(8)]
    assert (fresh(promo).status, fresh(adjustment).status) == ("depleted", "depleted")
    assert posted(acme) == D(9)

    # the same adjustment again: posted once, drawn once
    again = services.adjust_balance(
        customer=acme,
        amount=D(-7),
        reason="duplicate pack",
        staff_user_id=None,
        currency="CREDITS",
        reference="ticket-2",
    )
    assert again.pk == transaction.pk
    assert remaining(purchase) == [D(8)]
    assert CreditAllocation.objects.count() == 3
    assert posted(acme) == D(9)


def test_a_negative_credits_adjustment_beyond_the_balance_changes_nothing(acme):
    promo = grant(acme, "3")
    before = counts()
    with pytest.raises(ledger_errors.InsufficientFunds):
        services.adjust_balance(
            customer=acme, amount=D(-5), reason="too much", staff_user_id=None, currency="CREDITS"
        )
    assert counts() == before
    assert remaining(promo) == [D(3)]
    assert posted(acme) == D(3)


def test_a_hold_settled_with_its_event_draws_on_the_grants(api, acme):
    promo = grant(acme, "3")
    services.top_up(customer=acme, amount=D(10), currency="CREDITS")
    purchase = CreditGrant.objects.get(source="purchase")
    placed = api.post("/api/v1/holds", {"customer": "acme", "amount": "6"})
    assert placed.status_code == 201, placed.json()
    assert placed.json()["currency"] == "CREDITS"
    settled = api.post(
        f"/api/v1/holds/{placed.json()['id']}/settle",
        {
            "event": {
                "idempotency_key": "run-1",
                "customer": "acme",
                "event_name": "api.call",
                "properties": {"units": 5},
            }
        },
    )
    assert settled.status_code == 200, settled.json()
    transaction = LedgerTransaction.objects.get(pk=settled.json()["ledger_transaction"])
    want = [(promo.pk, D(3)), (purchase.pk, D(2))]
    assert split_in_metadata(transaction) == want
    assert allocations_of(transaction) == [(g, a, "usage") for g, a in want]
    assert remaining(promo, purchase) == [D(0), D(8)]
    assert balance(acme) == (D(8), D(0), D(8))


def test_a_hold_settled_by_amount_draws_on_the_grants(api, acme):
    promo = grant(acme, "3")
    services.top_up(customer=acme, amount=D(10), currency="CREDITS")
    purchase = CreditGrant.objects.get(source="purchase")
    placed = api.post("/api/v1/holds", {"customer": "acme", "amount": "6"})
    assert placed.status_code == 201, placed.json()
    settled = api.post(f"/api/v1/holds/{placed.json()['id']}/settle", {"amount": "5"})
    assert settled.status_code == 200, settled.json()
    assert balance(acme) == (D(8), D(0), D(8))
    transaction = LedgerTransaction.objects.get(pk=settled.json()["ledger_transaction"])
    want = [(promo.pk, D(3)), (purchase.pk, D(2))]
    assert allocations_of(transaction) == [(g, a, "usage") for g, a in want]
    assert split_in_metadata(transaction) == want
    assert remaining(promo, purchase) == [D(0), D(8)]


# --- the API --------------------------------------------------------------------------------------

GRANTS = "/api/v1/customers/acme/credit-grants"


def test_post_a_grant_is_201_with_the_grant(api, acme):
    response = api.post(
        GRANTS,
        {
            "amount": "5000",
            "name": "Welcome credits",
            "expires_at": "2099-01-31T00:00:00Z",
            "reference": "welcome-acme",
        },
    )
    assert response.status_code == 201, response.json()
    row = CreditGrant.objects.get()
    body = response.json()
    assert body["created_at"].endswith("Z")
    del body["created_at"]
    assert body == {
        "id": row.pk,
        "customer": "acme",
        "name": "Welcome credits",
        "source": "promotional",
        "priority": 10,
        "currency": "CREDITS",
        "amount": "5000.000000000000",
        "remaining": "5000.000000000000",
        "used": "0.000000000000",
        "status": "active",
        "expires_at": "2099-01-31T00:00:00Z",
        "ended_at": None,
        "ledger_transaction": row.ledger_transaction_id,
    }
    assert row.reference == f"credit-grant:{acme.pk}:welcome-acme"
    assert posted(acme) == D(5000)


def test_post_an_adjustment_grant_with_a_priority(api, acme):
    response = api.post(GRANTS, {"amount": "2.5", "source": "adjustment", "priority": 0})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["source"], body["priority"], body["name"], body["expires_at"]) == (
        "adjustment",
        0,
        "Credit adjustment",
        None,
    )


def test_a_retry_with_the_same_idempotency_key_replays(api, acme):
    body = {"amount": "50", "name": "Promo"}
    first = api.post(GRANTS, body, HTTP_IDEMPOTENCY_KEY="k-1")
    second = api.post(GRANTS, body, HTTP_IDEMPOTENCY_KEY="k-1")
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert second.json() == first.json()
    assert counts() == (1, 0, 1)
    assert posted(acme) == D(50)


def test_a_retry_with_the_same_reference_answers_200_with_the_first_grant(api, acme):
    body = {"amount": "50", "reference": "promo-7"}
    first = api.post(GRANTS, body)
    second = api.post(GRANTS, body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json() == first.json()
    assert counts() == (1, 0, 1)
    conflict = api.post(GRANTS, {"amount": "51", "reference": "promo-7"})
    assert_error(conflict, 409, "reference_reused", param="reference")
    assert counts() == (1, 0, 1)
    assert posted(acme) == D(50)


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"amount": "abc"}, "invalid_parameter", "amount"),
        ({"amount": "0"}, "invalid_parameter", "amount"),
        ({"amount": "-3"}, "invalid_parameter", "amount"),
        ({}, "parameter_missing", "amount"),
        ({"amount": "5", "expires_at": "2001-01-01T00:00:00Z"}, "invalid_parameter", "expires_at"),
        ({"amount": "5", "expires_at": "soon"}, "invalid_parameter", "expires_at"),
        ({"amount": "5", "priority": 5000}, "invalid_parameter", "priority"),
        ({"amount": "5", "priority": -1}, "invalid_parameter", "priority"),
        ({"amount": "5", "source": "purchase"}, "invalid_parameter", "source"),
    ],
)
def test_invalid_grants_through_the_api_are_4xx_and_create_nothing(api, acme, body, code, param):
    response = api.post(GRANTS, body)
    assert 400 <= response.status_code < 500
    assert_error(response, 400, code, param=param)
    assert counts() == (0, 0, 0)


def test_a_grant_for_an_unknown_customer_is_404(api, db):
    response = api.post("/api/v1/customers/nobody/credit-grants", {"amount": "5"})
    assert_error(response, 404, "customer_not_found")
    assert counts() == (0, 0, 0)
    assert_error(api.get("/api/v1/customers/nobody/credit-grants"), 404, "customer_not_found")


def test_granting_needs_a_key_that_may_write(make_key, acme):
    reader = billing_fixtures.make_client(make_key(("read",))[1])
    response = reader.post(GRANTS, {"amount": "5"})
    assert response.status_code == 403
    assert counts() == (0, 0, 0)


def test_get_lists_the_customers_grants(api, acme):
    promo = grant(acme, "5", expires_at=in_days(3))
    services.top_up(customer=acme, amount=D(10), currency="CREDITS")
    purchase = CreditGrant.objects.get(source="purchase")
    grant(credits_customer("globex"), "7")  # another customer's
    use("a", 6)  # promo 5, purchase 1
    response = api.get(GRANTS)
    assert response.status_code == 200
    body = response.json()
    assert body["has_more"] is False
    listed = {g["id"]: g for g in body["data"]}
    assert set(listed) == {promo.pk, purchase.pk}
    assert (listed[promo.pk]["status"], listed[promo.pk]["remaining"]) == (
        "depleted",
        "0.000000000000",
    )
    assert listed[promo.pk]["ended_at"].endswith("Z")
    assert (listed[purchase.pk]["status"], listed[purchase.pk]["used"]) == (
        "active",
        "1.000000000000",
    )
    assert listed[purchase.pk]["source"] == "purchase"


def test_the_balance_lists_live_grants_and_the_credits_outside_any_grant(api, acme):
    fund_ungranted(acme, "2")
    expires_at = in_days(3)
    promo = grant(acme, "5", name="Spring promo", expires_at=expires_at)
    gone = grant(acme, "1", expires_at=in_days(1))
    CreditGrant.objects.filter(pk=gone.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    services.top_up(customer=acme, amount=D(10), currency="CREDITS")
    purchase = CreditGrant.objects.get(source="purchase")
    use("a", 6)  # promo 5, purchase 1
    body = api.get("/api/v1/customers/acme/balance").json()
    assert body["credits"] == [
        {
            "grant_id": purchase.pk,
            "name": "Top-up of 10 CREDITS",
            "source": "purchase",
            "priority": 50,
            "currency": "CREDITS",
            "granted": "10.000000000000",
            "remaining": "9.000000000000",
            "expires_at": None,
        },
        {
            "grant_id": None,
            "name": "Credits outside any grant",
            "source": None,
            "priority": None,
            "currency": "CREDITS",
            "granted": None,
            "remaining": "2.000000000000",
            "expires_at": None,
        },
    ]
    assert promo.pk not in {c["grant_id"] for c in body["credits"]}  # used up
    assert {b["currency"]: b["posted"] for b in body["balances"]}["CREDITS"] == (
        "11.000000000000"  # 18 − 6 − 1 expired (by rating, before it spent): 9 + 2 ungranted
    )
    assert fresh(gone).status == "expired"
    promo_body = api.get(GRANTS).json()["data"]
    assert iso(expires_at) in {g["expires_at"] for g in promo_body}


def test_the_balance_lists_a_live_grant_with_its_expiry(api, acme):
    expires_at = in_days(3).replace(microsecond=0)
    promo = grant(acme, "5", name="Spring promo", expires_at=expires_at)
    [listed] = api.get("/api/v1/customers/acme/balance").json()["credits"]
    assert listed == {
        "grant_id": promo.pk,
        "name": "Spring promo",
        "source": "promotional",
        "priority": 10,
        "currency": "CREDITS",
        "granted": "5.000000000000",
        "remaining": "5.000000000000",
        "expires_at": iso(expires_at),
    }


# --- concurrency ----------------------------------------------------------------------------------


def check_the_books(customer: Customer, *, ungranted_funds: Decimal) -> dict[str, Decimal]:
    """The invariants between the grants, their allocations and the ledger, worked out from
    the wallet's entries (``ungranted_funds``: credits put in outside any grant)."""
    wallet = wallet_of(customer)
    grants = list(CreditGrant.objects.filter(wallet=wallet))
    for g in grants:
        allocated = CreditAllocation.objects.filter(grant=g).aggregate(t=Sum("amount"))["t"]
        assert (allocated or D(0)) == g.amount - g.remaining, g
        assert D(0) <= g.remaining <= g.amount, g
        assert (g.status == "depleted") == (g.remaining == 0), g
    debits = Entry.objects.filter(account_id=wallet.account_id, amount__gt=0)
    debited = debits.aggregate(t=Sum("amount"))["t"] or D(0)
    allocated = CreditAllocation.objects.filter(grant__wallet=wallet).aggregate(t=Sum("amount"))[
        "t"
    ] or D(0)
    in_metadata = D(0)
    for transaction in LedgerTransaction.objects.filter(pk__in=debits.values("transaction_id")):
        split = split_in_metadata(transaction)
        assert [(g, a) for g, a, _ in allocations_of(transaction)] == split, transaction
        assert sum((a for _, a in split), D(0)) <= wallet_debit(transaction, customer)
        in_metadata += sum((a for _, a in split), D(0))
    assert allocated == in_metadata
    granted = sum((g.amount for g in grants), D(0))
    left_in_grants = sum((g.remaining for g in grants), D(0))
    from_ungranted = debited - allocated
    assert D(0) <= from_ungranted <= ungranted_funds
    view = ledger_selectors.get_balance(account=wallet.account)
    assert ledger_selectors.balance_from_entries(account=wallet.account) == view.posted
    assert view.posted == granted + ungranted_funds - debited
    assert view.posted == left_in_grants + (ungranted_funds - from_ungranted)
    [summary] = customer_credits(customer)
    assert summary["ungranted"] == ungranted_funds - from_ungranted
    return {"debited": debited, "allocated": allocated, "left_in_grants": left_in_grants}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_usage_rated_by_many_threads_draws_each_credit_of_the_grants_once():
    customer = credits_customer(unique("cus"))
    small = grant(customer, "3.5", expires_at=in_days(5))
    smaller = grant(customer, "2.25", priority=5)
    fund_ungranted(customer, "30")  # 35.75 in all, for 40 of usage: some is refused

    def cost(i: int, k: int) -> Decimal:
        return D("0.5") if (i + k) % 2 else D("0.75")

    def worker(i: int) -> list[tuple[Decimal, rating.Outcome]]:
        rated = []
        for n in range(3):  # one event, a batch of two, one event
            costs = [cost(i, k) for k in range(1 + n % 2)]
            batch = [
                event(f"t{i}-{n}-{k}", str(c), customer=customer.external_id)
                for k, c in enumerate(costs)
            ]
            rated += zip(costs, rating.ingest_events(batch), strict=True)
        return rated  # run_concurrently closes the thread's connections

    results = run_concurrently(worker, threads=16)
    assert [r for r in results if isinstance(r, BaseException)] == []
    rated = [pair for r in results for pair in r]
    assert len(rated) == 64  # 4 events a thread, half at 0.5 and half at 0.75: 40 credits
    assert sum((c for c, _ in rated), D(0)) == D(40)
    accepted = [c for c, o in rated if o.status == "accepted"]
    refused = [o for _, o in rated if o.status != "accepted"]
    assert {(o.status, o.error.code) for o in refused} == {("rejected", "insufficient_credits")}
    debited = sum(accepted, D(0))
    assert D("35") <= debited <= D("35.75")  # refused only when less than 0.75 was left

    books = check_the_books(customer, ungranted_funds=D(30))
    assert books["debited"] == debited
    assert books["allocated"] == D("5.75")  # both grants, to the last credit, once
    assert remaining(small, smaller) == [D(0), D(0)]
    assert posted(customer) == D("35.75") - debited >= 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_grants_adjustments_and_usage_at_once_keep_the_books_in_step():
    customer = credits_customer(unique("cus"))
    grant(customer, "2")
    grant(customer, "3", expires_at=in_days(2))
    fund_ungranted(customer, "10")

    def worker(i: int):
        if i % 4 == 0:
            return credits.grant_credits(customer=customer, amount=D(1), reference=f"g{i}")
        if i % 4 == 1:
            return services.adjust_balance(
                customer=customer,
                amount=D("-0.5"),
                reason="correction",
                staff_user_id=None,
                currency="CREDITS",
            )
        return rating.ingest_events(
            [event(f"u{i}-{k}", "0.75", customer=customer.external_id) for k in range(2)]
        )

    results = run_concurrently(worker, threads=16)
    assert [r for r in results if isinstance(r, BaseException)] == []
    outcomes = [o for r in results if isinstance(r, list) for o in r]
    assert [o.status for o in outcomes] == ["accepted"] * 16
    # 2 + 3 + 4 × 1 granted, 10 outside any grant; 4 × 0.5 adjusted away, 16 × 0.75 used
    assert CreditGrant.objects.filter(wallet=wallet_of(customer)).count() == 6
    books = check_the_books(customer, ungranted_funds=D(10))
    assert books["debited"] == D(14)
    assert books["allocated"] + books["left_in_grants"] == D(9)
    assert posted(customer) == D(19) - D(14)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_one_grant_requested_by_many_threads_at_once_is_granted_once():
    customer = credits_customer(unique("cus"))
    expires_at = in_days(9)

    def worker(i: int) -> CreditGrant:
        return credits.grant_credits(
            customer=customer, amount=D(12), expires_at=expires_at, reference="launch"
        )

    results = run_concurrently(worker, threads=12)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert len({r.pk for r in results}) == 1
    assert sorted(r.replayed for r in results) == [False] + [True] * 11
    assert CreditGrant.objects.filter(customer=customer).count() == 1
    assert posted(customer) == D(12)


def test_an_estimate_does_not_count_credits_of_an_expired_grant_the_task_has_not_taken(acme):
    promo = grant(acme, "5", expires_at=in_days(1))
    services.top_up(customer=acme, amount=D(2), currency="CREDITS")
    CreditGrant.objects.filter(pk=promo.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert posted(acme) == D(7)  # the 5 are still in the wallet: no task has run
    refused = rating.estimate(customer=acme, amount=D(3), currency="CREDITS")
    assert (refused.allowed, refused.reason, refused.available) == (
        False,
        "insufficient_credits",
        D(2),  # only the purchase is spendable
    )
    assert rating.estimate(customer=acme, amount=D(2), currency="CREDITS").allowed
    # and rating agrees: the 3 are refused, nothing is written but the expiry
    outcome = rating.ingest_events([event("x", 3)])[0]
    assert outcome.status == "rejected" and outcome.error.code == "insufficient_credits"


def test_a_hold_takes_expired_grants_out_before_it_reserves(api, acme):
    """The estimate does not count credits past their expiry, and placing the hold does not
    either: the grant is expired first, as rating does before it spends, so a hold racing
    another cannot reserve credits the beat task has not yet taken away."""
    promo = grant(acme, "5", expires_at=in_days(1))
    services.top_up(customer=acme, amount=D(2), currency="CREDITS")
    CreditGrant.objects.filter(pk=promo.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    placed = api.post("/api/v1/holds", {"customer": "acme", "amount": "2"})
    assert placed.status_code == 201, placed.json()
    row = fresh(promo)
    assert (row.status, row.remaining) == (GrantStatus.EXPIRED, D(0))
    assert system_posted("@CreditsExpired") == D(5)
    assert balance(acme) == (D(2), D(2), D(0))
    refused = api.post("/api/v1/holds", {"customer": "acme", "amount": "1"})
    assert refused.status_code == 402, refused.json()
    assert refused.json()["error"]["code"] == "insufficient_credits"


def test_expiry_gets_past_grants_that_cannot_end_because_their_credits_are_held(acme):
    """Acme's two due grants cannot end (every credit of the wallet is held) and stay
    active until the hold resolves; with a page of two, another customer's grant due after
    them still expires in the same run."""
    beta = credits_customer("beta")
    used = ledger.ensure_system_account(code=rating.CREDITS_USED, currency="CREDITS")
    first, second = grant(acme, "3", expires_at=in_days(1)), grant(acme, "3", expires_at=in_days(2))
    later = grant(beta, "5", expires_at=in_days(3))
    ledger.place_hold(
        reference=unique("hold"), account=wallet_of(acme).account, destination=used, amount=D(6)
    )
    past = timezone.now() - timedelta(minutes=1)
    for i, row in enumerate((first, second, later)):
        CreditGrant.objects.filter(pk=row.pk).update(expires_at=past + timedelta(seconds=i))
    assert credits.expire_due_grants(limit=2) == 3
    assert [fresh(row).status for row in (first, second)] == [GrantStatus.ACTIVE] * 2
    assert (fresh(later).status, fresh(later).remaining) == (GrantStatus.EXPIRED, D(0))
    assert posted(beta) == D(0)
    assert posted(acme) == D(6)
