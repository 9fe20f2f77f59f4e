"""Idempotency-Key on every POST (API.md): a retry with the same key and body replays the
first response with ``Idempotent-Replayed: true``; another body with the key is refused;
failed requests replay their failure; concurrent retries run the work once."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from billing import services
from billing.models import APIKey, Customer, IdempotencyRecord, Meter, Plan, Subscription
from ledger import selectors as ledger_selectors
from ledger.models import Entry
from ledger.models import Transaction as LedgerTransaction
from tests.billing.conftest import assert_error, make_client, post_raw
from tests.factories import SubscriptionFactory
from tests.threads import run_concurrently as run_all_concurrently

REPLAYED = "Idempotent-Replayed"


def post(client, path: str, body: dict, key: str | None = None):
    extra = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(path, body, **extra)


def wallet_posted(external_id: str) -> Decimal:
    wallet = services.wallet_for(customer=Customer.objects.get(external_id=external_id))
    return ledger_selectors.get_balance(account=wallet.account).posted


# --- replays on every route ----------------------------------------------------------------------


def _customers(make_customer, make_plan, make_meter):
    return "/api/v1/customers", {"external_id": "acme", "name": "Acme"}, 201


def _top_up(make_customer, make_plan, make_meter):
    make_customer("acme")
    return "/api/v1/customers/acme/top-ups", {"amount": "5"}, 201


def _meter(make_customer, make_plan, make_meter):
    body = {"code": "requests", "event_name": "api.request", "aggregation": "count"}
    return "/api/v1/meters", body, 201


def _plan(make_customer, make_plan, make_meter):
    make_meter("tokens")
    return (
        "/api/v1/plans",
        {
            "code": "pro",
            "name": "Pro",
            "base_fee": "49",
            "charges": [{"meter": "tokens", "unit_price": "0.000002"}],
        },
        201,
    )


def _subscription(make_customer, make_plan, make_meter):
    make_customer("acme")
    make_plan("basic", base_fee="30")
    return "/api/v1/subscriptions", {"customer": "acme", "plan": "basic"}, 201


def _live_subscription(make_customer, make_plan):
    customer = make_customer("acme")
    plan = make_plan("basic", base_fee="30")
    return SubscriptionFactory(customer=customer, plan=plan)


def _change(make_customer, make_plan, make_meter):
    subscription = _live_subscription(make_customer, make_plan)
    make_plan("pro", base_fee="90")
    return f"/api/v1/subscriptions/{subscription.pk}/change", {"plan": "pro"}, 200


def _cancel(make_customer, make_plan, make_meter):
    subscription = _live_subscription(make_customer, make_plan)
    return f"/api/v1/subscriptions/{subscription.pk}/cancel", {"at": "now"}, 200


def _state() -> tuple:
    return (
        Customer.objects.count(),
        LedgerTransaction.objects.count(),
        Meter.objects.count(),
        Plan.objects.count(),
        Subscription.objects.count(),
        list(Subscription.objects.values_list("plan_id", "status")),
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "route",
    [_customers, _top_up, _meter, _plan, _subscription, _change, _cancel],
    ids=["customers", "top-ups", "meters", "plans", "subscriptions", "change", "cancel"],
)
def test_a_retry_replays_the_first_response(api, make_customer, make_plan, make_meter, route):
    path, body, status = route(make_customer, make_plan, make_meter)
    first = post(api, path, body, key="retry-1")
    assert first.status_code == status, first.json()
    assert REPLAYED not in first.headers
    state = _state()
    retry = post(api, path, body, key="retry-1")
    assert retry.status_code == status
    assert retry.headers[REPLAYED] == "true"
    assert retry.json() == first.json()
    assert _state() == state  # the work ran once
    record = IdempotencyRecord.objects.get(key="retry-1")
    assert (record.method, record.path, record.status_code) == ("POST", path, status)
    assert record.response_body == first.json()


@pytest.mark.django_db
def test_without_a_key_a_retry_runs_again(api, make_customer):
    make_customer("acme")
    first = post(api, "/api/v1/customers/acme/top-ups", {"amount": "5"})
    second = post(api, "/api/v1/customers/acme/top-ups", {"amount": "5"})
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert wallet_posted("acme") == Decimal("10")
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.django_db
def test_a_replayed_cancel_does_not_hit_the_already_canceled_error(api, make_customer, make_plan):
    path, body, _ = _cancel(make_customer, make_plan, None)
    assert post(api, path, body, key="c1").status_code == 200
    assert post(api, path, body, key="c1").status_code == 200  # replay
    assert_error(post(api, path, body, key="c2"), 409, "subscription_canceled")  # new key: runs


# --- the same key for another request ------------------------------------------------------------


@pytest.mark.django_db
def test_the_same_key_with_another_body_is_refused(api, make_customer):
    make_customer("acme")
    assert post(api, "/api/v1/customers/acme/top-ups", {"amount": "5"}, key="k").status_code == 201
    response = post(api, "/api/v1/customers/acme/top-ups", {"amount": "6"}, key="k")
    assert_error(
        response,
        409,
        "idempotency_key_reused",
        param="Idempotency-Key",
        type="idempotency_error",
        message="this Idempotency-Key was used with a different request; "
        "use a new key for a new request",
    )
    assert REPLAYED not in response.headers
    assert wallet_posted("acme") == Decimal("5")


@pytest.mark.django_db
def test_the_same_key_on_another_route_is_refused(api, make_customer):
    make_customer("acme")
    make_customer("globex")
    post(api, "/api/v1/customers/acme/top-ups", {"amount": "5"}, key="k")
    response = post(api, "/api/v1/customers/globex/top-ups", {"amount": "5"}, key="k")
    assert_error(
        response, 409, "idempotency_key_reused", type="idempotency_error", param="Idempotency-Key"
    )
    assert wallet_posted("globex") == Decimal("0")


@pytest.mark.django_db
def test_key_order_in_the_body_does_not_matter(api, make_customer):
    make_customer("acme")
    first = post_raw(
        api,
        "/api/v1/customers/acme/top-ups",
        '{"amount": "5", "reference": "r1"}',
        HTTP_IDEMPOTENCY_KEY="k",
    )
    retry = post_raw(
        api,
        "/api/v1/customers/acme/top-ups",
        '{"reference": "r1",  "amount": "5"}',
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert retry.status_code == first.status_code == 201
    assert retry.headers[REPLAYED] == "true"


@pytest.mark.django_db
def test_keys_belong_to_one_api_key(api, make_key, make_customer):
    make_customer("acme")
    other = make_client(make_key()[1])
    assert post(api, "/api/v1/customers/acme/top-ups", {"amount": "5"}, key="k").status_code == 201
    response = post(other, "/api/v1/customers/acme/top-ups", {"amount": "7"}, key="k")
    assert response.status_code == 201 and REPLAYED not in response.headers
    assert wallet_posted("acme") == Decimal("12")
    assert IdempotencyRecord.objects.filter(key="k").count() == 2


# --- the key itself ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["k" * 256, " ", "   "])
def test_an_invalid_key_is_refused_and_nothing_runs(api, key):
    response = post(api, "/api/v1/customers", {"external_id": "acme", "name": "Acme"}, key=key)
    assert_error(
        response,
        400,
        "invalid_idempotency_key",
        param="Idempotency-Key",
        message="Idempotency-Key must be 1 to 255 characters",
    )
    assert not Customer.objects.exists()
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.django_db
def test_a_key_of_255_characters_is_accepted(api):
    key = "k" * 255
    first = post(api, "/api/v1/customers", {"external_id": "acme", "name": "Acme"}, key=key)
    assert first.status_code == 201
    retry = post(api, "/api/v1/customers", {"external_id": "acme", "name": "Acme"}, key=key)
    assert retry.status_code == 201 and retry.headers[REPLAYED] == "true"


# --- failures ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_failed_request_replays_its_failure(api, make_customer):
    first = post(api, "/api/v1/customers/acme/top-ups", {"amount": "5"}, key="k")
    assert_error(first, 404, "customer_not_found")
    make_customer("acme")  # the customer exists now, but the key's answer stays
    retry = post(api, "/api/v1/customers/acme/top-ups", {"amount": "5"}, key="k")
    assert retry.status_code == 404 and retry.headers[REPLAYED] == "true"
    assert retry.json() == first.json()
    assert wallet_posted("acme") == Decimal("0")
    assert post(api, "/api/v1/customers/acme/top-ups", {"amount": "5"}, key="k2").status_code == 201


@pytest.mark.django_db
def test_a_validation_failure_replays_and_a_fixed_body_needs_a_new_key(api):
    bad = {"external_id": "acme", "name": "Acme", "currency": "usd"}
    first = post(api, "/api/v1/customers", bad, key="k")
    assert_error(first, 400, "invalid_parameter", param="currency")
    retry = post(api, "/api/v1/customers", bad, key="k")
    assert retry.status_code == 400 and retry.headers[REPLAYED] == "true"
    assert retry.json() == first.json()
    fixed = {**bad, "currency": "USD"}
    assert_error(
        post(api, "/api/v1/customers", fixed, key="k"),
        409,
        "idempotency_key_reused",
        type="idempotency_error",
        param="Idempotency-Key",
    )
    assert post(api, "/api/v1/customers", fixed, key="k2").status_code == 201


@pytest.mark.django_db
def test_a_conflict_replays_and_leaves_the_first_customer(api, make_customer):
    make_customer("acme", name="Acme")
    body = {"external_id": "acme", "name": "Other"}
    first = post(api, "/api/v1/customers", body, key="k")
    assert_error(first, 409, "customer_exists", param="external_id")
    retry = post(api, "/api/v1/customers", body, key="k")
    assert (retry.status_code, retry.headers[REPLAYED], retry.json()) == (409, "true", first.json())
    assert Customer.objects.get().name == "Acme"


@pytest.mark.django_db
def test_a_body_that_is_not_json_is_not_remembered(api):
    broken = post_raw(api, "/api/v1/customers", '{"external_id": "acme",', HTTP_IDEMPOTENCY_KEY="k")
    assert_error(broken, 400, "invalid_json")
    assert not IdempotencyRecord.objects.exists()
    fixed = post_raw(
        api,
        "/api/v1/customers",
        '{"external_id": "acme", "name": "Acme"}',
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert fixed.status_code == 201 and REPLAYED not in fixed.headers


@pytest.mark.django_db
def test_a_rate_limited_request_is_not_remembered(make_key, make_customer):
    key, secret = make_key(rate_limit_per_minute=0)
    make_customer("acme")
    client = make_client(secret)
    limited = post(client, "/api/v1/customers/acme/top-ups", {"amount": "5"}, key="k")
    assert_error(limited, 429, "rate_limited")
    APIKey.objects.filter(pk=key.pk).update(rate_limit_per_minute=100)
    response = post(client, "/api/v1/customers/acme/top-ups", {"amount": "5"}, key="k")
    assert response.status_code == 201 and REPLAYED not in response.headers
    assert wallet_posted("acme") == Decimal("5")


@pytest.mark.django_db
def test_a_revoked_key_cannot_replay(make_key, make_customer):
    key, secret = make_key()
    make_customer("acme")
    client = make_client(secret)
    assert (
        post(client, "/api/v1/customers/acme/top-ups", {"amount": "5"}, key="k").status_code == 201
    )
    services.revoke_api_key(api_key=key)
    assert_error(
        post(client, "/api/v1/customers/acme/top-ups", {"amount": "5"}, key="k"),
        401,
        "api_key_revoked",
    )


# --- concurrency ---------------------------------------------------------------------------------

THREADS = 10


def run_concurrently(worker: Callable[[int], object], threads: int = THREADS) -> list[object]:
    results = run_all_concurrently(worker, threads)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_with_one_key_post_once(make_key, make_customer):
    _, secret = make_key()
    customer = make_customer("acme")

    def retry(i: int):
        client = make_client(secret)
        response = post(
            client, "/api/v1/customers/acme/top-ups", {"amount": "25.50"}, key="concurrent-1"
        )
        return response.status_code, response.json(), response.headers.get(REPLAYED)

    results = run_concurrently(retry)
    statuses = {status for status, _, _ in results}
    bodies = [body for _, body, _ in results]
    assert statuses == {201}, results
    assert all(body == bodies[0] for body in bodies)
    assert sorted(str(header) for _, _, header in results) == ["None"] + ["true"] * (THREADS - 1)
    wallet = services.wallet_for(customer=customer)
    assert LedgerTransaction.objects.count() == 1
    assert Entry.objects.filter(account=wallet.account).count() == 1
    assert ledger_selectors.get_balance(account=wallet.account).posted == Decimal("25.5")
    assert IdempotencyRecord.objects.get().status_code == 201


@pytest.mark.django_db(transaction=True)
def test_concurrent_top_ups_with_one_reference_post_once(make_key, make_customer):
    _, secret = make_key()
    make_customer("acme")

    def top_up(i: int):
        response = post(
            make_client(secret),
            "/api/v1/customers/acme/top-ups",
            {"amount": "7", "reference": "pi_1"},
        )
        return response.status_code, response.json()

    results = run_concurrently(top_up)
    assert sorted(status for status, _ in results) == [200] * (THREADS - 1) + [201]
    assert all(body == results[0][1] for _, body in results)
    assert LedgerTransaction.objects.count() == 1
    assert wallet_posted("acme") == Decimal("7")


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_of_one_customer_and_subscription_conflict_cleanly(make_key, make_plan):
    _, secret = make_key()
    make_plan("basic", base_fee="30")

    def create(i: int):
        client = make_client(secret)
        customer = post(client, "/api/v1/customers", {"external_id": "acme", "name": f"A{i}"})
        return customer.status_code, customer.json()

    results = run_concurrently(create)
    assert sorted(status for status, _ in results) == [201] + [409] * (THREADS - 1)
    assert {body["error"]["code"] for status, body in results if status == 409} == {
        "customer_exists"
    }
    assert Customer.objects.count() == 1

    def subscribe(i: int):
        client = make_client(secret)
        response = post(client, "/api/v1/subscriptions", {"customer": "acme", "plan": "basic"})
        return response.status_code, response.json()

    results = run_concurrently(subscribe)
    assert sorted(status for status, _ in results) == [201] + [409] * (THREADS - 1)
    assert {body["error"]["code"] for status, body in results if status == 409} == {
        "subscription_exists"
    }
    assert Subscription.objects.count() == 1
