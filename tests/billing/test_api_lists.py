"""GET /customers, GET /subscriptions and PATCH /customers/{id}: cursor pagination across
pages (rows inserted between requests included), every filter, unknown and invalid query
parameters, scopes, a page's query count, each field of the update, and a credit limit
change seen in the ledger wallet's floor and enforced by the next postpaid charge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing import services
from billing.models import Customer, SubscriptionStatus, Wallet
from ledger.models import Balance
from tests.billing.conftest import ChargeSpec, assert_error, make_client
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

D = Decimal


def ids(response) -> list[int]:
    assert response.status_code == 200, response.json()
    return [row["id"] for row in response.json()["data"]]


def walk(client, path: str, *, limit: int, between=None) -> list[int]:
    """Every page of a list, following starting_after; ``between(page)`` runs after each."""
    seen, after, page = [], None, 0
    while True:
        params = {"limit": limit} | ({"starting_after": after} if after else {})
        response = client.get(path, params)
        assert response.status_code == 200, response.json()
        body = response.json()
        assert set(body) == {"data", "has_more"}
        seen += [row["id"] for row in body["data"]]
        page += 1
        if between is not None:
            between(page)
        if not body["has_more"]:
            return seen
        after = body["data"][-1]["id"]


# --- GET /customers ------------------------------------------------------------------------


def test_customers_are_listed_newest_first_with_the_detail_payload(api, make_customer):
    prepaid = make_customer("acme", email="a@acme.test")
    postpaid = make_customer("beta", billing_mode="postpaid", credit_limit=D("50"))
    services.top_up(customer=prepaid, amount=D("12.5"))
    response = api.get("/api/v1/customers")
    assert ids(response) == [postpaid.pk, prepaid.pk]
    assert response.json()["has_more"] is False
    for row in response.json()["data"]:
        detail = api.get(f"/api/v1/customers/{row['external_id']}").json()
        assert row == detail
    acme = response.json()["data"][1]
    assert acme["wallets"][0]["balance"]["posted"] == "12.500000000000"


def test_a_customers_live_subscription_is_in_the_list(api, make_customer, make_plan):
    acme = make_customer("acme")
    sub = services.create_subscription(customer=acme, plan=make_plan("basic"))
    row = api.get("/api/v1/customers").json()["data"][0]
    assert row["subscription"]["id"] == sub.pk
    assert row == api.get("/api/v1/customers/acme").json()


def test_a_page_of_customers_costs_the_same_queries_whatever_its_size(
    api, make_customer, make_plan
):
    plan = make_plan("basic")

    def count(limit: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = api.get("/api/v1/customers", {"limit": limit})
        assert len(response.json()["data"]) == limit
        return len(queries)

    for _ in range(12):
        customer = make_customer(billing_mode="postpaid")
        services.ensure_wallet(customer=customer, currency="CREDITS")
        services.create_subscription(customer=customer, plan=plan)
    count(1)  # the key's first use writes its last_used_at
    assert count(2) == count(12) <= 8


def test_customers_paginate_without_duplicates_or_gaps(api, make_customer):
    existing = [make_customer().pk for _ in range(7)]

    def insert(page: int) -> None:
        make_customer()  # newer than every page already read: shows on none of them

    seen = walk(api, "/api/v1/customers", limit=3, between=insert)
    assert seen == sorted(existing, reverse=True)


def test_customers_by_email_ignoring_case(api, make_customer):
    acme = make_customer("acme", email="Billing@Acme.test")
    make_customer("beta", email="billing@beta.test")
    make_customer("gamma")
    assert ids(api.get("/api/v1/customers", {"email": "billing@acme.TEST"})) == [acme.pk]
    assert ids(api.get("/api/v1/customers", {"email": "billing@acme"})) == []


def test_customers_by_billing_mode(api, make_customer):
    prepaid = make_customer()
    postpaid = make_customer(billing_mode="postpaid")
    assert ids(api.get("/api/v1/customers", {"billing_mode": "postpaid"})) == [postpaid.pk]
    assert ids(api.get("/api/v1/customers", {"billing_mode": "prepaid"})) == [prepaid.pk]


def test_customers_by_creation_time_from_inclusive_to_exclusive(api, make_customer):
    made = {}
    for day in (1, 2, 3):
        customer = make_customer()
        Customer.objects.filter(pk=customer.pk).update(
            created_at=datetime(2026, 3, day, 12, tzinfo=UTC)
        )
        made[day] = customer.pk
    get = lambda **params: ids(api.get("/api/v1/customers", params))  # noqa: E731
    assert get(created_from="2026-03-02T12:00:00Z") == [made[3], made[2]]
    assert get(created_to="2026-03-02T12:00:00Z") == [made[1]]
    assert get(created_from="2026-03-02", created_to="2026-03-03") == [made[2]]
    # an offset, and its "+" sent unencoded (a space once decoded)
    assert get(created_from="2026-03-02T14:00:00+02:00") == [made[3], made[2]]
    assert ids(api.get("/api/v1/customers?created_from=2026-03-02T14:00:00+02:00")) == [
        made[3],
        made[2],
    ]


@pytest.mark.parametrize(
    "params, code, param",
    [
        ({"emial": "a@b.test"}, "unknown_parameter", "emial"),
        ({"customer": "acme"}, "unknown_parameter", "customer"),
        ({"billing_mode": "free"}, "invalid_parameter", "billing_mode"),
        ({"created_from": "yesterday"}, "invalid_parameter", "created_from"),
        ({"created_from": "2026-02-30"}, "invalid_parameter", "created_from"),
        ({"created_to": "2026-03-01T10:00:00"}, "invalid_parameter", "created_to"),
        (
            {"created_from": "2026-03-02", "created_to": "2026-03-01"},
            "invalid_parameter",
            "created_to",
        ),
        ({"email": "a\x00b"}, "invalid_parameter", "email"),
        ({"email": "x" * 255}, "invalid_parameter", "email"),
        ({"email": ""}, "invalid_parameter", "email"),
        ({"limit": "0"}, "invalid_parameter", "limit"),
        ({"limit": "101"}, "invalid_parameter", "limit"),
        ({"limit": "ten"}, "invalid_parameter", "limit"),
        ({"starting_after": "-1"}, "invalid_parameter", "starting_after"),
    ],
)
def test_bad_customer_list_parameters(api, make_customer, params, code, param):
    make_customer()
    assert_error(api.get("/api/v1/customers", params), 400, code, param=param)


def test_a_parameter_given_twice_is_refused(api):
    response = api.get("/api/v1/customers?billing_mode=prepaid&billing_mode=postpaid")
    assert_error(response, 400, "invalid_parameter", param="billing_mode")


def test_listing_customers_needs_the_read_scope(make_key, make_customer):
    make_customer()
    write_only = make_client(make_key(("write", "ingest"))[1])
    assert_error(write_only.get("/api/v1/customers"), 403, "insufficient_scope")
    read_only = make_client(make_key(("read",))[1])
    assert len(ids(read_only.get("/api/v1/customers"))) == 1
    assert_error(make_client().get("/api/v1/customers"), 401, "authentication_required")


def test_posting_a_customer_still_works_on_the_list_route(api):
    response = api.post("/api/v1/customers", {"external_id": "acme", "name": "Acme"})
    assert response.status_code == 201, response.json()


# --- GET /subscriptions --------------------------------------------------------------------


@pytest.fixture
def subscriptions(make_customer, make_plan):
    plan = make_plan("basic")
    acme, beta = make_customer("acme"), make_customer("beta")
    first = SubscriptionFactory(customer=acme, plan=plan)
    services.cancel_subscription(subscription_id=first.pk, at_period_end=False)
    second = SubscriptionFactory(customer=acme, plan=plan)
    third = SubscriptionFactory(customer=beta, plan=plan)
    return first.pk, second.pk, third.pk


def test_subscriptions_are_listed_newest_first_with_the_detail_payload(api, subscriptions):
    response = api.get("/api/v1/subscriptions")
    assert ids(response) == sorted(subscriptions, reverse=True)
    for row in response.json()["data"]:
        assert row == api.get(f"/api/v1/subscriptions/{row['id']}").json()


def test_subscriptions_by_customer_and_status(api, subscriptions):
    first, second, third = subscriptions
    assert ids(api.get("/api/v1/subscriptions", {"customer": "acme"})) == [second, first]
    assert ids(api.get("/api/v1/subscriptions", {"customer": "beta"})) == [third]
    assert ids(api.get("/api/v1/subscriptions", {"status": "canceled"})) == [first]
    assert ids(api.get("/api/v1/subscriptions", {"customer": "acme", "status": "active"})) == [
        second
    ]
    assert ids(api.get("/api/v1/subscriptions", {"status": "past_due"})) == []
    assert set(SubscriptionStatus.values) == {"trialing", "active", "past_due", "canceled"}


def test_subscriptions_paginate_without_duplicates_or_gaps(api, make_customer, make_plan):
    plan = make_plan("basic")
    existing = [
        services.create_subscription(customer=make_customer(), plan=plan).pk for _ in range(5)
    ]

    def insert(page: int) -> None:
        services.create_subscription(customer=make_customer(), plan=plan)

    assert walk(api, "/api/v1/subscriptions", limit=2, between=insert) == sorted(
        existing, reverse=True
    )


@pytest.mark.parametrize(
    "params, status, code, param",
    [
        ({"customer": "nobody"}, 404, "customer_not_found", "customer"),
        ({"status": "cancelled"}, 400, "invalid_parameter", "status"),
        ({"plan": "basic"}, 400, "unknown_parameter", "plan"),
        ({"customer": "a\x00"}, 400, "invalid_parameter", "customer"),
        ({"limit": "1000"}, 400, "invalid_parameter", "limit"),
    ],
)
def test_bad_subscription_list_parameters(api, subscriptions, params, status, code, param):
    assert_error(api.get("/api/v1/subscriptions", params), status, code, param=param)


def test_listing_subscriptions_needs_the_read_scope(make_key, subscriptions):
    assert_error(
        make_client(make_key(("ingest",))[1]).get("/api/v1/subscriptions"),
        403,
        "insufficient_scope",
    )
    assert len(ids(make_client(make_key(("read",))[1]).get("/api/v1/subscriptions"))) == 3


# --- PATCH /customers/{external_id} -------------------------------------------------------


def patch(client, external_id: str, body):
    return client.patch(f"/api/v1/customers/{external_id}", body, format="json")


@pytest.fixture
def acme(make_customer):
    return make_customer(
        "acme",
        name="Acme",
        email="old@acme.test",
        address_line1="1 Main St",
        city="Paris",
        country="FR",
        tax_id="FR123",
        metadata={"tier": "gold"},
    )


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"name": "Acme Robotics"}, {"name": "Acme Robotics"}),
        ({"email": "new@acme.test"}, {"email": "new@acme.test"}),
        ({"email": ""}, {"email": ""}),
        ({"tax_id": "FR999"}, {"tax_id": "FR999"}),
        ({"metadata": {"seats": 3}}, {"metadata": {"seats": 3}}),
        (
            {"address": {"city": "Lyon", "postal_code": "69001"}},
            {"address_line1": "1 Main St", "city": "Lyon", "postal_code": "69001"},
        ),
        ({"address": {"line2": "Floor 2"}}, {"address_line2": "Floor 2", "city": "Paris"}),
    ],
)
def test_patch_changes_only_the_fields_sent(api, acme, body, expected):
    before = {f: getattr(acme, f) for f in services.CUSTOMER_EDITABLE}
    response = patch(api, "acme", body)
    assert response.status_code == 200, response.json()
    acme.refresh_from_db()
    after = {f: getattr(acme, f) for f in services.CUSTOMER_EDITABLE}
    assert after == before | expected
    assert response.json() == api.get("/api/v1/customers/acme").json()


def test_patch_twice_is_idempotent_and_writes_nothing_the_second_time(api, acme):
    body = {"name": "Acme Robotics", "address": {"city": "Lyon"}}
    first = patch(api, "acme", body)
    assert first.status_code == 200, first.json()
    written_at = Customer.objects.get(pk=acme.pk).updated_at
    second = patch(api, "acme", body)
    assert second.status_code == 200
    assert second.json() == first.json()
    assert Customer.objects.get(pk=acme.pk).updated_at == written_at
    assert patch(api, "acme", {}).json() == first.json()


@pytest.mark.parametrize(
    "body, code, param",
    [
        ({"nmae": "Acme"}, "unknown_parameter", "nmae"),
        ({"name": "Acme 2", "billing_mode": "postpaid"}, "unknown_parameter", "billing_mode"),
        ({"currency": "EUR"}, "unknown_parameter", "currency"),
        ({"external_id": "acme-2"}, "unknown_parameter", "external_id"),
        ({"address": {"town": "Lyon"}}, "unknown_parameter", "address.town"),
        ({"name": ""}, "invalid_parameter", "name"),
        ({"name": None}, "parameter_missing", "name"),
        ({"email": "not-an-email"}, "invalid_parameter", "email"),
        ({"address": {"country": "France"}}, "invalid_parameter", "address.country"),
        ({"metadata": [1]}, "invalid_parameter", "metadata"),
        ({"credit_limit": "100"}, "invalid_parameter", "credit_limit"),  # acme is prepaid
    ],
)
def test_a_bad_patch_is_refused_and_changes_nothing(api, acme, body, code, param):
    before = Customer.objects.filter(pk=acme.pk).values().get()
    assert_error(patch(api, "acme", body), 400, code, param=param)
    assert Customer.objects.filter(pk=acme.pk).values().get() == before


def test_a_patch_body_must_be_an_object(api, acme):
    assert_error(patch(api, "acme", ["name"]), 400, "invalid_parameter")


def test_patching_an_unknown_customer_is_not_found(api):
    assert_error(patch(api, "nobody", {"name": "X"}), 404, "customer_not_found")


def test_patch_needs_the_write_scope(make_key, acme):
    for scopes in (("read",), ("read", "ingest")):
        client = make_client(make_key(scopes)[1])
        assert_error(patch(client, "acme", {"name": "X"}), 403, "insufficient_scope")
    assert Customer.objects.get(pk=acme.pk).name == "Acme"
    writer = make_client(make_key(("write",))[1])
    assert patch(writer, "acme", {"name": "X"}).status_code == 200


# --- PATCH credit_limit: the ledger wallet's floor, enforced by rating ----------------------


def wallet_state(customer: Customer) -> tuple:
    wallet = Wallet.objects.select_related("account").get(
        customer=customer, currency=customer.currency
    )
    floor = Balance.objects.get(account=wallet.account).floor
    return wallet.credit_limit, wallet.account.negative_limit, floor


@pytest.fixture
def postpaid(make_customer, make_meter, make_plan):
    """A postpaid customer with a 5.00 credit limit, on a plan charging 4.00 a call."""
    customer = make_customer("acme", billing_mode="postpaid", credit_limit=D("5"))
    make_meter("calls", event_name="api.call", aggregation="count", property="")
    plan = make_plan("calls", charges=[ChargeSpec(meter="calls", unit_price=D("4"))])
    SubscriptionFactory(customer=customer, plan=plan, start=timezone.now() - timedelta(hours=1))
    return customer


def call(api, key: str):
    return api.post(
        "/api/v1/events", {"idempotency_key": key, "customer": "acme", "event_name": "api.call"}
    )


def test_a_credit_limit_change_moves_the_ledger_floor_and_is_enforced(api, postpaid):
    assert call(api, "c1").status_code == 201  # -4.00
    assert_error(call(api, "c2"), 402, "credit_limit_exceeded", param="customer")  # -8 < -5

    response = patch(api, "acme", {"credit_limit": "10.00"})
    assert response.status_code == 200, response.json()
    assert response.json()["wallets"][0]["credit_limit"] == "10.000000000000"
    assert wallet_state(postpaid) == (D(10), D(10), D(-10))
    assert call(api, "c2").status_code == 201  # -8.00 within -10
    assert_error(call(api, "c3"), 402, "credit_limit_exceeded", param="customer")  # -12

    # lowering the limit under what is already owed is refused, and changes nothing
    response = patch(api, "acme", {"name": "Acme 2", "credit_limit": "7.99"})
    assert_error(response, 409, "credit_limit_below_balance", param="credit_limit")
    assert wallet_state(postpaid) == (D(10), D(10), D(-10))
    assert Customer.objects.get(pk=postpaid.pk).name == "Acme Robotics"

    assert patch(api, "acme", {"credit_limit": "8"}).status_code == 200
    assert wallet_state(postpaid) == (D(8), D(8), D(-8))
    assert_error(call(api, "c3"), 402, "credit_limit_exceeded", param="customer")


def test_a_null_credit_limit_removes_the_limit(api, postpaid):
    response = patch(api, "acme", {"credit_limit": None})
    assert response.status_code == 200, response.json()
    assert response.json()["wallets"][0]["credit_limit"] is None
    assert wallet_state(postpaid) == (None, None, None)
    for n in range(5):
        assert call(api, f"c{n}").status_code == 201  # -20.00, no limit
    assert patch(api, "acme", {"credit_limit": "20"}).status_code == 200
    assert wallet_state(postpaid) == (D(20), D(20), D(-20))


def test_the_same_credit_limit_again_writes_nothing(api, postpaid):
    balance = Balance.objects.get(account__wallet__customer=postpaid)
    assert patch(api, "acme", {"credit_limit": "5.000"}).status_code == 200
    assert Balance.objects.get(pk=balance.pk).version == balance.version


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("-1", "invalid_parameter"),
        ("abc", "invalid_parameter"),
        ("0.0000000000001", "invalid_parameter"),
        ("1000000000000001", "amount_too_large"),  # above the API's maximum amount, 10^15
        ("1000000000000000000", "amount_too_large"),
    ],
)
def test_an_invalid_credit_limit_is_refused(api, postpaid, value, code):
    assert_error(patch(api, "acme", {"credit_limit": value}), 400, code, param="credit_limit")
    assert wallet_state(postpaid) == (D(5), D(5), D(-5))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_credit_limit_changes_racing_postpaid_charges_stay_in_step(
    make_customer, make_meter, make_plan
):
    """6 threads charge 1.00 a call while 2 move the limit between 5 and 40 (and rename
    the customer): no deadlock, no error but the expected refusals, and at the end the
    wallet's limit, the account's limit and the balance floor agree."""
    from billing import errors as billing_errors
    from metering import rating
    from tests.threads import run_concurrently

    customer = make_customer(billing_mode="postpaid", credit_limit=D("40"))
    make_meter("calls", event_name="api.call", aggregation="count", property="")
    plan = make_plan(charges=[ChargeSpec(meter="calls", unit_price=D("1"))])
    services.create_subscription(
        customer=customer, plan=plan, start=timezone.now() - timedelta(hours=1)
    )
    refusals: list[str] = []

    def work(i: int):
        if i < 2:
            for n in range(15):
                limit = D(5 + (n * 7 + i * 11) % 36)
                try:
                    services.edit_customer(
                        customer=customer, name=f"Acme {i}-{n}", credit_limit=limit
                    )
                except billing_errors.CreditLimitBelowBalance:
                    refusals.append("below")
            return None
        accepted = 0
        for n in range(8):
            event = rating.EventIn(
                f"t{i}-{n}", customer.external_id, "api.call", timezone.now(), {}
            )
            outcome = rating.ingest_events([event])[0]
            if outcome.status == "accepted":
                accepted += 1
            else:
                assert outcome.error.code == "credit_limit_exceeded", outcome.error
        return accepted

    results = run_concurrently(work, 8)
    assert not [r for r in results if isinstance(r, BaseException)], results
    limit, account_limit, floor = wallet_state(customer)
    assert limit == account_limit == -floor
    posted = Balance.objects.get(account__wallet__customer=customer).posted
    assert posted == -sum(results[2:])
    assert posted >= -D(40)
