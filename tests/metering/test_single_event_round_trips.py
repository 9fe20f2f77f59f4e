"""A single POST /events is rating's batch of one (issue 14): the same code, and a bounded
number of statements sent to PostgreSQL, counted here at the driver (every psycopg
``execute`` and ``copy``: Django's queries, the ledger posting's prepared statement, the
events' COPY, the counters' statement) so that a new query on the hot path is seen.

Before issue 14: 20 (the posting's SAVEPOINT and RELEASE, wallets and margins apart, the
three counters apart); then 15; then 7 (meters cached, the customer found and locked in
one statement, what rating needs read in one under the lock, the events written with the
counters); now 6 (the ledger's posting embedded in the statement that writes the events).
A balance plan's money wallet may hold grants (billing.plan_credits): it took 10 without
any (its due grants looked for, its balance read again, its grants loaded) and 12 with
one; now the read under the lock says whether the wallet has live and due grants, so 6
without and 8 with a live grant (its grants loaded, the allocations written)."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from billing import credits
from billing.models import CreditAllocation, CreditGrant
from ledger.models import Account
from metering.models import Event, PeriodDistinctValue, PeriodUsage
from metering.rating import accounts
from tests.billing.conftest import ChargeSpec, iso
from tests.metering import test_api_usage as usage_tests
from tests.metering.test_api_usage import CHAT, DAY1, llm_body

# the fixtures of the API's usage tests (an authenticated client, acme on a catalog plan)
api, api_key, make_key = usage_tests.api, usage_tests.api_key, usage_tests.make_key
make_customer, make_meter, make_plan = (
    usage_tests.make_customer,
    usage_tests.make_meter,
    usage_tests.make_plan,
)
acme, ai_plan, ai = usage_tests.acme, usage_tests.ai_plan, usage_tests.ai

pytestmark = pytest.mark.django_db

# auth, then in the part's transaction (a savepoint of the test's): SAVEPOINT, customer +
# rating lock + meters' stamp, under the lock one read (subscription, stored twins, wallets
# with their balance rows locked, margins, counters, event ids), the posting with the events
# and counters written, RELEASE
MAX_STATEMENTS = 6


@pytest.fixture
def sent(monkeypatch) -> list[str]:
    """What the driver is asked to send, in order."""
    statements: list[str] = []
    for name in ("execute", "copy"):
        original = getattr(psycopg.Cursor, name)

        def counted(self, query, *args, _original=original, **kwargs):
            statements.append(str(query))
            return _original(self, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, name, counted)
    return statements


def test_one_event_is_rated_in_a_bounded_number_of_statements(
    api, ai, sent, django_capture_on_commit_callbacks
):
    # the warm-up's commit hooks run, as in production: the system accounts' ids are cached
    with django_capture_on_commit_callbacks(execute=True):
        warm_up = api.post("/api/v1/events", llm_body("warm-up", CHAT, when=DAY1))
    assert warm_up.status_code == 201
    sent.clear()
    response = api.post("/api/v1/events", llm_body("req-2", CHAT, when=DAY1))
    assert response.status_code == 201, response.json()
    assert len(sent) <= MAX_STATEMENTS, "\n".join(q[:120] for q in sent)
    # the rating part's transaction (a savepoint inside the test's), none for the posting
    assert sum(q.startswith("SAVEPOINT") for q in sent) == 1
    row = Event.objects.get(idempotency_key="req-2")
    assert row.amount == Decimal("0.005664")
    assert row.ledger_transaction.reference == f"usage:{ai.pk}:req-2"


def test_a_unique_count_event_takes_no_more_statements(
    api, acme, make_meter, make_plan, sent, django_capture_on_commit_callbacks
):
    """The values already counted are looked up by the read under the lock, the new one
    inserted by the statement that writes the events and counters: no round trip more."""
    make_meter("users", event_name="user.active", property="user", aggregation="unique_count")
    plan = make_plan("seats", charges=[ChargeSpec(meter="users", unit_price=Decimal(1))])
    usage_tests.subscribe(acme, plan)

    def body(key: str, user: str) -> dict:
        return {
            "idempotency_key": key,
            "customer": "acme",
            "event_name": "user.active",
            "properties": {"user": user},
            "timestamp": iso(DAY1),
        }

    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/events", body("warm-up", "ann")).status_code == 201
    for key, user, amount in (("new", "bob", Decimal(1)), ("seen", "ann", Decimal(0))):
        sent.clear()
        response = api.post("/api/v1/events", body(key, user))
        assert response.status_code == 201, response.json()
        assert len(sent) <= MAX_STATEMENTS, "\n".join(q[:120] for q in sent)
        assert Event.objects.get(idempotency_key=key).amount == amount
    assert PeriodUsage.objects.get().quantity == 2
    assert sorted(PeriodDistinctValue.objects.values_list("value", flat=True)) == [
        "s:ann",
        "s:bob",
    ]


def test_a_worker_that_has_not_cached_the_usage_account_takes_no_more_statements(
    api, ai, sent, django_capture_on_commit_callbacks
):
    """A worker process caches a customer's usage (TOKENS) account id once it has seen it;
    a new worker (or one that has not rated this customer yet) finds the account in the
    read under the lock, not with a query of its own (and a set_config) before the
    posting."""
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/events", llm_body("warm-up", CHAT, when=DAY1)).status_code == 201
    account = Account.objects.get(code=f"tokens:{ai.pk}", currency="TOKENS")
    del accounts._account_ids[(account.code, account.currency)]  # as in another process
    for key in ("cold", "warm"):
        sent.clear()
        with django_capture_on_commit_callbacks(execute=True):  # cached once committed
            response = api.post("/api/v1/events", llm_body(key, CHAT, when=DAY1))
        assert response.status_code == 201, response.json()
        assert len(sent) <= MAX_STATEMENTS, "\n".join(q[:120] for q in sent)
        # neither the account's query nor the set_config that caching a created one takes
        assert not [q for q in sent if q.startswith('SELECT "ledger_account"')]
        assert not [q for q in sent if "synchronous_commit" in q]
        transaction = Event.objects.get(idempotency_key=key).ledger_transaction
        assert transaction.entries.get(currency="TOKENS", amount__gt=0).account_id == account.pk
    # cached now: the read asks for no account
    assert accounts._account_ids[(account.code, account.currency)] == account.pk


def test_an_account_the_read_found_is_cached_only_once_its_transaction_commits(
    api, ai, django_capture_on_commit_callbacks
):
    """The read's snapshot holds rows its own transaction created and has not committed
    (a caller's atomic block around several ratings): cached at once, another thread
    would be handed an account it cannot see, and a rollback would leave an id that never
    existed. The part posts with what its read found; the cache waits for the commit."""
    with django_capture_on_commit_callbacks(execute=False):  # never committed
        assert api.post("/api/v1/events", llm_body("first", CHAT, when=DAY1)).status_code == 201
    account = Account.objects.get(code=f"tokens:{ai.pk}", currency="TOKENS")
    key = (account.code, account.currency)
    assert key not in accounts._account_ids
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post("/api/v1/events", llm_body("second", CHAT, when=DAY1))
    assert response.status_code == 201, response.json()
    transaction = Event.objects.get(idempotency_key="second").ledger_transaction
    assert transaction.entries.get(currency="TOKENS", amount__gt=0).account_id == account.pk
    assert key not in accounts._account_ids  # found by the read, still uncommitted
    for callback in callbacks:
        callback()  # the commit
    assert accounts._account_ids[key] == account.pk


def test_a_meters_first_usage_in_the_period_takes_no_more_statements(
    api, acme, make_meter, make_plan, sent, django_capture_on_commit_callbacks
):
    """The read under the lock looks up every meter's counter of the subscription's current
    period: one it did not find does not exist yet, and is not looked up again."""
    make_meter("calls", event_name="api.call", property="units")
    make_meter("users", event_name="user.active", property="user", aggregation="unique_count")
    plan = make_plan(
        "both",
        charges=[
            ChargeSpec(meter="calls", unit_price=Decimal("0.01")),
            ChargeSpec(meter="users", unit_price=Decimal(1)),
        ],
    )
    usage_tests.subscribe(acme, plan)

    def body(key: str, name: str, properties: dict) -> dict:
        return {
            "idempotency_key": key,
            "customer": "acme",
            "event_name": name,
            "properties": properties,
            "timestamp": iso(DAY1),
        }

    with django_capture_on_commit_callbacks(execute=True):
        warm_up = api.post("/api/v1/events", body("warm-up", "api.call", {"units": 10}))
        assert warm_up.status_code == 201
    sent.clear()
    response = api.post("/api/v1/events", body("first", "user.active", {"user": "ann"}))
    assert response.status_code == 201, response.json()
    assert len(sent) <= MAX_STATEMENTS, "\n".join(q[:120] for q in sent)
    # the counters of other periods are loaded by _load_counters' statement: not sent
    assert not [q for q in sent if q.startswith("SELECT ARRAY(SELECT ROW(")]
    assert Event.objects.get(idempotency_key="first").amount == Decimal(1)
    assert sorted(PeriodUsage.objects.values_list("quantity", flat=True)) == [1, 10]


# a balance plan's event drawing on a live money grant: as MAX_STATEMENTS, with the
# wallet's grants loaded (locked) and the allocations written (one statement)
MAX_STATEMENTS_DRAWING_ON_A_GRANT = MAX_STATEMENTS + 2


@pytest.mark.parametrize("granted", [False, True], ids=["no-grant", "live-money-grant"])
def test_a_balance_plan_event_loads_grants_only_when_its_wallet_has_live_ones(
    api, acme, make_meter, make_plan, sent, django_capture_on_commit_callbacks, granted
):
    """A prepaid customer on a balance plan (money debited, drawn on the wallet's money
    grants first): without a live grant nothing about grants is sent; with one, its grants
    are loaded and the debit drawn on it, and no more."""
    make_meter("calls", event_name="api.call", property="units")
    plan = make_plan(
        "payg",
        consumption_model="balance",
        charges=[ChargeSpec(meter="calls", unit_price=Decimal("0.01"))],
    )
    usage_tests.subscribe(acme, plan)  # acme: 10 USD of its own, prepaid
    if granted:
        grant = credits.grant_credits(
            customer=acme, amount=Decimal(1), currency="USD", source="plan"
        )

    def body(key: str) -> dict:
        return {
            "idempotency_key": key,
            "customer": "acme",
            "event_name": "api.call",
            "properties": {"units": 10},
            "timestamp": iso(DAY1),
        }

    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/events", body("warm-up")).status_code == 201
    sent.clear()
    response = api.post("/api/v1/events", body("req-2"))
    assert response.status_code == 201, response.json()
    # beside the read under the lock, which asks whether the wallet has live or due grants
    grant_statements = [q for q in sent if "billing_creditgrant" in q and "WITH subs" not in q]
    if granted:
        assert len(sent) <= MAX_STATEMENTS_DRAWING_ON_A_GRANT, "\n".join(q[:120] for q in sent)
        assert len(grant_statements) == 2, grant_statements  # loaded; drawn on
        # both events drawn on the grant: 1 - 2 × 0.10
        assert CreditGrant.objects.get(pk=grant.pk).remaining == Decimal("0.8")
        assert CreditAllocation.objects.filter(grant=grant).count() == 2
    else:
        assert len(sent) <= MAX_STATEMENTS, "\n".join(q[:120] for q in sent)
        assert grant_statements == []
    assert Event.objects.get(idempotency_key="req-2").amount == Decimal("0.1")
    assert usage_tests.balance(acme)[0] == Decimal(10) + (1 if granted else 0) - Decimal("0.2")
