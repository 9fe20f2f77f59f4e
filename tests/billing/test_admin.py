"""The finance admin over the commercial core: every page renders, and every write goes
through billing.services (customers with their wallet, money through the ledger, plans as new
versions, API key secrets shown once)."""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils.html import strip_tags

from billing import services
from billing.admin.plans import charges_json
from billing.models import (
    APIKey,
    Customer,
    IdempotencyRecord,
    Meter,
    Plan,
    Subscription,
    SubscriptionStatus,
    Wallet,
)
from billing.services import ChargeSpec, PlanSpec, TierSpec
from ledger import selectors as ledger_selectors
from ledger.models import Account
from ledger.models import Transaction as LedgerTransaction
from tests.conftest import unique
from tests.factories import (
    APIKeyFactory,
    CustomerFactory,
    MeterFactory,
    PlanFactory,
    SubscriptionFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(django_user_model):
    # No password: force_login needs none, and hashing one costs a second per test.
    return django_user_model.objects.create_superuser("finance", "f@example.com", None)


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def catalog(db):
    """Two meters, a tiered plan, a subscribed customer with some history, an API key."""
    tokens = MeterFactory(
        code=unique("tokens"), name="Output tokens", property="usage.output_tokens", unit="tokens"
    )
    requests = MeterFactory(code=unique("requests"), aggregation="count")
    plan = PlanFactory(
        code=unique("pro"),
        name="Pro",
        description="For teams.\nBilled monthly.",
        base_fee="49.00",
        trial_days=0,
        charges=(
            ChargeSpec(
                meter=tokens.code,
                included_quantity=Decimal(1_000_000),
                unit_price=Decimal("0.000002"),
            ),
            ChargeSpec(
                meter=requests.code,
                price_model="graduated",
                tiers=(
                    TierSpec(up_to=Decimal(1000), unit_price=Decimal("0.01")),
                    TierSpec(up_to=None, unit_price=Decimal("0.005"), flat_fee=Decimal("2")),
                ),
            ),
        ),
    )
    customer = CustomerFactory(
        external_id=unique("acme"), email="billing@acme.test", tax_id="DE123", funds=100
    )
    subscription = SubscriptionFactory(customer=customer, plan=plan)
    key = APIKeyFactory(name="prod", scopes=["read", "write"])
    IdempotencyRecord.objects.create(
        api_key=key,
        key=unique("idem"),
        method="POST",
        path="/api/v1/customers",
        request_hash="0" * 64,
        status_code=201,
        response_body={"id": 1},
    )
    return {
        "plan": plan,
        "customer": customer,
        "subscription": subscription,
        "key": key,
        "meter": tokens,
    }


def available(customer: Customer, currency: str = "USD") -> Decimal:
    wallet = Wallet.objects.select_related("account").get(customer=customer, currency=currency)
    return ledger_selectors.get_balance(account=wallet.account).available


def message_texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def url(name: str, *args) -> str:
    return reverse(f"admin:{name}", args=args)


# --- every page renders --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, key",
    [
        (Customer, "customer"),
        (Plan, "plan"),
        (Subscription, "subscription"),
        (APIKey, "key"),
        (Meter, "meter"),
        (IdempotencyRecord, None),
    ],
)
def test_changelist_and_change_page_render(staff_client, catalog, model, key):
    opts = model._meta
    changelist = staff_client.get(url(f"{opts.app_label}_{opts.model_name}_changelist"))
    assert changelist.status_code == 200
    obj = catalog[key] if key else model.objects.get()
    assert str(obj).encode() in changelist.content or str(obj.pk).encode() in changelist.content
    page = staff_client.get(url(f"{opts.app_label}_{opts.model_name}_change", obj.pk))
    assert page.status_code == 200


def test_customer_pages_show_balances_plan_and_ledger_activity(staff_client, catalog):
    customer, plan = catalog["customer"], catalog["plan"]
    changelist = staff_client.get(url("billing_customer_changelist")).content.decode()
    assert "100.00 USD" in changelist
    assert f"{plan.code} v1 (active)" in changelist

    page = staff_client.get(url("billing_customer_change", customer.pk)).content.decode()
    assert "100.00" in page  # the wallet's posted and available balance
    top_up = LedgerTransaction.objects.get(reference__startswith=f"top-up:{customer.pk}:")
    assert url("ledger_transaction_change", top_up.pk) in page
    assert "+100.00 USD" in page
    assert url("billing_customer_top_up", customer.pk) in page


def test_customer_filters_and_search(staff_client, catalog):
    customer = catalog["customer"]
    other = services.create_customer(external_id=unique("solo"), name="Solo Dev")
    changelist = url("billing_customer_changelist")
    active = staff_client.get(changelist, {"subscription": "active"}).content.decode()
    assert customer.external_id in active and other.external_id not in active
    none = staff_client.get(changelist, {"subscription": "none"}).content.decode()
    assert other.external_id in none and customer.external_id not in none
    by_tax_id = staff_client.get(changelist, {"q": "DE123"}).content.decode()
    assert customer.external_id in by_tax_id and other.external_id not in by_tax_id


@pytest.mark.parametrize(
    "name",
    ["billing_customer_add", "billing_plan_add", "billing_apikey_add", "billing_meter_add"],
)
def test_add_pages_render(staff_client, catalog, name):
    assert staff_client.get(url(name)).status_code == 200


def test_service_form_pages_render(staff_client, catalog):
    customer, plan = catalog["customer"], catalog["plan"]
    for page in (
        url("billing_customer_top_up", customer.pk),
        url("billing_customer_adjust", customer.pk),
        url("billing_plan_publish", plan.pk),
    ):
        assert staff_client.get(page).status_code == 200


# --- customers -----------------------------------------------------------------------------------


def test_adding_a_customer_creates_its_wallet(staff_client, staff):
    external_id = unique("new")
    response = staff_client.post(
        url("billing_customer_add"),
        {
            "external_id": external_id,
            "name": "Initech",
            "email": "ap@initech.test",
            "currency": "EUR",
            "billing_mode": "postpaid",
            "credit_limit": "250.5",
            "metadata": '{"segment": "smb"}',
            "country": "DE",
        },
    )
    customer = Customer.objects.get(external_id=external_id)
    assert response.status_code == 302
    assert response.url == url("billing_customer_change", customer.pk)
    wallet = customer.wallets.get()
    assert (wallet.currency, wallet.billing_mode) == ("EUR", "postpaid")
    assert wallet.credit_limit == Decimal("250.5")
    assert wallet.account.owner_type == "billing.customer"
    assert wallet.account.owner_id == str(customer.pk)
    assert wallet.account.floor == Decimal("-250.5")
    assert customer.metadata == {"segment": "smb"}
    assert customer.country == "DE"


def test_adding_a_customer_twice_is_refused_on_the_form(staff_client, catalog):
    existing = catalog["customer"]
    response = staff_client.post(
        url("billing_customer_add"),
        {
            "external_id": existing.external_id,
            "name": "Again",
            "currency": "USD",
            "billing_mode": "prepaid",
            "metadata": "{}",
        },
    )
    assert response.status_code == 200
    assert "external_id" in response.context["form"].errors
    assert Customer.objects.filter(external_id=existing.external_id).count() == 1


def test_credit_limit_is_for_postpaid_customers_only(staff_client):
    external_id = unique("pre")
    response = staff_client.post(
        url("billing_customer_add"),
        {
            "external_id": external_id,
            "name": "Prepaid",
            "currency": "USD",
            "billing_mode": "prepaid",
            "credit_limit": "10",
            "metadata": "{}",
        },
    )
    assert response.status_code == 200
    assert "credit_limit" in response.context["form"].errors
    assert not Customer.objects.filter(external_id=external_id).exists()


def test_editing_a_customer_changes_only_its_details(staff_client, catalog):
    customer = catalog["customer"]
    page = staff_client.get(url("billing_customer_change", customer.pk))
    assert 'name="external_id"' not in page.content.decode()
    assert 'name="billing_mode"' not in page.content.decode()
    form = {
        "name": "Acme Robotics GmbH",
        "email": "ap@acme.test",
        "tax_id": "DE999",
        "metadata": "{}",
        "external_id": "hijacked",
        "currency": "EUR",
        "billing_mode": "postpaid",
        "stripe_customer_id": "cus_fake",
        "address_line1": "",
        "address_line2": "",
        "city": "Berlin",
        "state": "",
        "postal_code": "",
        "country": "DE",
    }
    # The inlines' management forms (wallets, subscriptions and portal users are read-only).
    for prefix in ("wallets", "subscriptions", "margins", "members"):
        form.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    response = staff_client.post(url("billing_customer_change", customer.pk), form)
    assert response.status_code == 302, response.context and response.context["errors"]
    customer.refresh_from_db()
    assert (customer.name, customer.email, customer.tax_id, customer.city) == (
        "Acme Robotics GmbH",
        "ap@acme.test",
        "DE999",
        "Berlin",
    )
    assert customer.external_id.startswith("acme-")
    assert (customer.currency, customer.billing_mode, customer.stripe_customer_id) == (
        "USD",
        "prepaid",
        "",
    )


def test_customers_cannot_be_deleted(staff_client, catalog):
    customer = catalog["customer"]
    response = staff_client.post(url("billing_customer_delete", customer.pk), {"post": "yes"})
    assert response.status_code == 403
    assert Customer.objects.filter(pk=customer.pk).exists()


# --- money: top-ups and adjustments ------------------------------------------------------------


def test_top_up_action_posts_a_ledger_transaction(staff_client, catalog, staff):
    customer = catalog["customer"]
    chosen = staff_client.post(
        url("billing_customer_changelist"),
        {
            "action": "top_up_action",
            "_selected_action": [customer.pk],
        },
    )
    assert chosen.status_code == 302
    assert chosen.url == url("billing_customer_top_up", customer.pk)
    form = staff_client.get(chosen.url)
    token = form.context["form"]["token"].value()

    response = staff_client.post(
        chosen.url,
        {
            "amount": "12.345678901234",
            "currency": "USD",
            "description": "Wire 4711",
            "token": token,
        },
    )
    assert response.status_code == 302
    assert available(customer) == Decimal("112.345678901234")
    txn = LedgerTransaction.objects.get(reference=f"top-up:{customer.pk}:admin:{token}")
    assert txn.metadata["staff_user_id"] == staff.pk
    assert txn.description == "Wire 4711"
    assert any(txn.reference in m for m in message_texts(response))

    # The same page submitted again posts nothing more.
    again = staff_client.post(
        chosen.url,
        {
            "amount": "12.345678901234",
            "currency": "USD",
            "description": "Wire 4711",
            "token": token,
        },
    )
    assert again.status_code == 302
    assert available(customer) == Decimal("112.345678901234")


def test_top_up_action_needs_exactly_one_customer(staff_client, catalog):
    other = services.create_customer(external_id=unique("two"), name="Two")
    response = staff_client.post(
        url("billing_customer_changelist"),
        {
            "action": "top_up_action",
            "_selected_action": [catalog["customer"].pk, other.pk],
        },
        follow=True,
    )
    assert "Select exactly one customer" in response.content.decode()


@pytest.mark.parametrize("amount", ["-5", "0", "1.0000000000001", "abc"])
def test_top_up_refuses_bad_amounts(staff_client, catalog, amount):
    customer = catalog["customer"]
    response = staff_client.post(
        url("billing_customer_top_up", customer.pk),
        {
            "amount": amount,
            "currency": "USD",
            "token": uuid.uuid4().hex,
        },
    )
    assert response.status_code == 200
    assert "amount" in response.context["form"].errors
    assert available(customer) == Decimal(100)


def test_adjustment_without_a_reason_is_refused(staff_client, catalog):
    customer = catalog["customer"]
    before = LedgerTransaction.objects.count()
    for reason in ("", "   "):
        response = staff_client.post(
            url("billing_customer_adjust", customer.pk),
            {
                "amount": "-10",
                "currency": "USD",
                "reason": reason,
                "token": uuid.uuid4().hex,
            },
        )
        assert response.status_code == 200
        assert "reason" in response.context["form"].errors
    assert LedgerTransaction.objects.count() == before
    assert available(customer) == Decimal(100)


@pytest.mark.parametrize("amount, expected", [("-10.5", "89.5"), ("7.25", "107.25")])
def test_adjustment_with_a_reason_posts_and_records_the_staff_user(
    staff_client, catalog, staff, amount, expected
):
    customer = catalog["customer"]
    token = uuid.uuid4().hex
    response = staff_client.post(
        url("billing_customer_adjust", customer.pk),
        {
            "amount": amount,
            "currency": "USD",
            "reason": "Goodwill for outage #12",
            "token": token,
        },
    )
    assert response.status_code == 302
    assert available(customer) == Decimal(expected)
    txn = LedgerTransaction.objects.get(reference=f"adjustment:{customer.pk}:admin:{token}")
    assert txn.metadata["staff_user_id"] == staff.pk
    assert txn.metadata["reason"] == "Goodwill for outage #12"
    assert staff.logentry_set.filter(object_id=str(customer.pk)).exists()


def test_adjustment_below_a_prepaid_floor_shows_the_ledger_error(staff_client, catalog):
    customer = catalog["customer"]
    before = LedgerTransaction.objects.count()
    response = staff_client.post(
        url("billing_customer_adjust", customer.pk),
        {
            "amount": "-100.01",
            "currency": "USD",
            "reason": "Chargeback",
            "token": uuid.uuid4().hex,
        },
    )
    assert response.status_code == 200
    assert any("insufficient_funds" in m for m in message_texts(response))
    assert "insufficient_funds" in response.content.decode()
    assert LedgerTransaction.objects.count() == before
    assert available(customer) == Decimal(100)


# --- plans ---------------------------------------------------------------------------------------


def publish_form(plan: Plan, **changes) -> dict[str, str]:
    """The publish form as the page fills it in, with ``changes``; CRLF as browsers send."""
    spec = services.plan_spec_of(plan)
    form = {
        "name": spec.name,
        "description": spec.description.replace("\n", "\r\n"),
        "base_fee": str(spec.base_fee),
        "trial_days": str(spec.trial_days),
        "charges": charges_json(spec.charges),
    }
    form.update(changes)
    return form


def test_publish_form_is_prefilled_from_the_plan(staff_client, catalog):
    plan = catalog["plan"]
    form = staff_client.get(url("billing_plan_publish", plan.pk)).context["form"]
    assert form["name"].value() == "Pro"
    assert form["base_fee"].value() == "49"
    charges = json.loads(form["charges"].value())
    assert charges[0]["unit_price"] == "0.000002"
    assert charges[1]["tiers"][1] == {"up_to": None, "unit_price": "0.005", "flat_fee": "2"}


def test_publish_new_version_then_unchanged(staff_client, catalog, staff):
    plan = catalog["plan"]
    charges = json.loads(charges_json(services.plan_spec_of(plan).charges))
    charges[0]["unit_price"] = "0.0000025"
    response = staff_client.post(
        url("billing_plan_publish", plan.pk),
        publish_form(plan, base_fee="59.00", charges=json.dumps(charges)),
    )
    v2 = Plan.objects.get(code=plan.code, version=2)
    assert response.status_code == 302
    assert response.url == url("billing_plan_change", v2.pk)
    assert v2.base_fee == Decimal("59")
    assert v2.published_by == staff
    assert v2.charges.order_by("id").first().unit_price == Decimal("0.0000025")
    assert v2.description == "For teams.\nBilled monthly."
    plan.refresh_from_db()
    assert plan.base_fee == Decimal("49")  # version 1 stays as it was

    unchanged = staff_client.post(url("billing_plan_publish", v2.pk), publish_form(v2))
    assert unchanged.status_code == 302
    assert f"Plan {plan.code} unchanged, still version 2." in message_texts(unchanged)
    assert Plan.objects.filter(code=plan.code).count() == 2


def test_publish_a_credits_plan(staff_client, catalog):
    plan, _ = services.publish_plan(
        spec=PlanSpec(
            code=unique("credits"),
            name="Credits",
            consumption_model="credits",
            units_per_credit=Decimal("1000"),
        )
    )
    page = url("billing_plan_publish", plan.pk)
    unchanged = staff_client.post(page, publish_form(plan, units_per_credit="1000"))
    assert f"Plan {plan.code} unchanged, still version 1." in message_texts(unchanged)
    staff_client.post(page, publish_form(plan, units_per_credit="1250.5"))
    v2 = Plan.objects.get(code=plan.code, version=2)
    assert v2.units_per_credit == Decimal("1250.5")
    refused = staff_client.post(page, publish_form(plan, units_per_credit=""))
    assert refused.context["form"].errors["units_per_credit"] == [
        "a credits plan needs units_per_credit > 0"
    ]


def test_publish_shows_charge_errors_on_the_form(staff_client, catalog):
    plan = catalog["plan"]
    for charges, expected in [
        ("[{", "Not valid JSON"),
        ('{"meter": "x"}', "must be a JSON list"),
        ('[{"meter": "no-such-meter"}]', "charges[0].meter"),
        (
            json.dumps([{"meter": catalog["meter"].code, "price_model": "graduated"}]),
            "charges[0].tiers: a graduated charge needs tiers",
        ),
    ]:
        response = staff_client.post(
            url("billing_plan_publish", plan.pk), publish_form(plan, charges=charges)
        )
        assert response.status_code == 200
        errors = " ".join(response.context["form"].errors["charges"])
        assert expected in errors, errors
    assert Plan.objects.filter(code=plan.code).count() == 1


def test_adding_a_plan_publishes_version_one(staff_client, catalog, staff):
    code = unique("starter")
    meter = catalog["meter"]
    response = staff_client.post(
        url("billing_plan_add"),
        {
            "code": code,
            "name": "Starter",
            "description": "",
            "currency": "USD",
            "interval": "month",
            "consumption_model": "metered",
            "base_fee": "0",
            "trial_days": "14",
            "units_per_credit": "",
            "charges": json.dumps([{"meter": meter.code, "unit_price": "0.000003"}]),
        },
    )
    assert response.status_code == 302
    plan = Plan.objects.get(code=code)
    assert (plan.version, plan.trial_days, plan.published_by) == (1, 14, staff)
    assert plan.charges.get().unit_price == Decimal("0.000003")
    assert plan.spec_hash == services.plan_spec_of(plan).canonical_hash()

    again = staff_client.post(
        url("billing_plan_add"),
        {
            "code": code,
            "name": "Starter",
            "currency": "USD",
            "interval": "month",
            "consumption_model": "metered",
            "base_fee": "0",
            "trial_days": "0",
            "charges": "[]",
        },
    )
    assert again.status_code == 200
    assert "code" in again.context["form"].errors
    assert Plan.objects.filter(code=code).count() == 1


def test_plans_cannot_be_edited_or_deleted(staff_client, catalog):
    plan = catalog["plan"]
    page = staff_client.get(url("billing_plan_change", plan.pk)).content.decode()
    assert 'name="_save"' not in page
    assert 'name="base_fee"' not in page
    assert url("billing_plan_publish", plan.pk) in page
    edit = staff_client.post(
        url("billing_plan_change", plan.pk), {"name": "Hacked", "base_fee": "0"}
    )
    assert edit.status_code == 403
    delete = staff_client.post(url("billing_plan_delete", plan.pk), {"post": "yes"})
    assert delete.status_code == 403
    plan.refresh_from_db()
    assert (plan.name, plan.base_fee) == ("Pro", Decimal("49"))


def test_a_plans_charges_read_per_million_tokens_in_a_table_that_fits(staff_client):
    """A tier's price per token reads per million tokens as the flat price does (it read
    "0.0000003 per unit"); a tiered charge has no unit price of its own ("—", not "0.00
    USD / M tokens"); quantities read without cents; the optional terms share one column
    (ten columns ran the table 100 px off a 1280 px screen)."""
    tokens = MeterFactory(code=unique("in"), property="usage.input_tokens", unit="tokens")
    blocks = MeterFactory(code=unique("img"), aggregation="count", unit="images")
    plan = PlanFactory(
        code=unique("tiered"),
        charges=(
            ChargeSpec(
                meter=tokens.code,
                price_model="graduated",
                included_quantity=Decimal(10_000_000),
                tiers=(
                    TierSpec(up_to=Decimal(100_000_000), unit_price=Decimal("0.0000003")),
                    TierSpec(up_to=None, unit_price=Decimal("0.00000025")),
                ),
                minimum_amount=Decimal(5),
                prorated=True,
            ),
            ChargeSpec(
                meter=blocks.code,
                price_model="package",
                unit_price=Decimal("0.5"),
                package_size=Decimal(100),
            ),
        ),
    )
    page = staff_client.get(url("billing_plan_change", plan.pk)).content.decode()
    table = page[page.index('id="charges-group"') :]
    table = table[: table.index("</table>")]
    columns = re.findall(r'<th class="column-(\w+)', table)
    assert len(columns) <= 6, columns
    tokens_row, blocks_row = (
        " ".join(strip_tags(row.replace("<br>", " ")).split())
        for row in table.split('<tr class="form-row')[1:]
    )
    assert (
        "10,000,000 tokens — up to 100,000,000 tokens: 0.30 USD / M tokens"
        " above 100,000,000 tokens: 0.25 USD / M tokens minimum 5.00 USD prorated"
    ) in tokens_row
    assert 'title="0.0000003 USD per token (exact)"' in table  # the exact price on hover
    assert "0 images 0.50 USD per 100 images — —" in blocks_row


# --- subscriptions -------------------------------------------------------------------------------


def test_cancel_at_period_end_asks_then_cancels(staff_client, catalog):
    subscription = catalog["subscription"]
    action = {"action": "cancel_at_period_end_action", "_selected_action": [subscription.pk]}
    changelist = url("billing_subscription_changelist")
    confirm = staff_client.post(changelist, action)
    assert confirm.status_code == 200
    assert "Yes, cancel at period end" in confirm.content.decode()
    subscription.refresh_from_db()
    assert not subscription.cancel_at_period_end

    done = staff_client.post(changelist, {**action, "post": "yes"})
    assert done.status_code == 302
    subscription.refresh_from_db()
    assert subscription.cancel_at_period_end
    assert subscription.status == SubscriptionStatus.ACTIVE


def test_cancel_now_ends_the_subscription(staff_client, catalog):
    subscription = catalog["subscription"]
    response = staff_client.post(
        url("billing_subscription_changelist"),
        {
            "action": "cancel_now_action",
            "_selected_action": [subscription.pk],
            "post": "yes",
        },
    )
    assert response.status_code == 302
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED
    assert subscription.ended_at is not None
    assert subscription.phases.get().ends_at == subscription.ended_at

    twice = staff_client.post(
        url("billing_subscription_changelist"),
        {
            "action": "cancel_now_action",
            "_selected_action": [subscription.pk],
            "post": "yes",
        },
    )
    assert any("subscription_canceled" in m for m in message_texts(twice))


def test_subscriptions_cannot_be_edited_only_created_through_the_service(staff_client, catalog):
    subscription = catalog["subscription"]
    page = staff_client.get(url("billing_subscription_change", subscription.pk)).content.decode()
    assert 'name="_save"' not in page
    assert staff_client.get(url("billing_subscription_add")).status_code == 200


# --- API keys ------------------------------------------------------------------------------------


def test_creating_an_api_key_shows_the_secret_once_and_stores_its_hash(staff_client, staff):
    response = staff_client.post(
        url("billing_apikey_add"),
        {
            "name": "prod-api",
            "scopes": ["read", "ingest"],
        },
    )
    key = APIKey.objects.get(name="prod-api")
    assert response.status_code == 302
    assert response.url == url("billing_apikey_change", key.pk)

    shown = staff_client.get(response.url).content.decode()
    secrets = re.findall(r"sk_[A-Za-z0-9_\-]{20,}", shown)
    assert len(secrets) == 1
    secret = secrets[0]
    assert key.secret_hash == services.hash_secret(secret)
    assert secret.startswith(key.prefix)
    assert key.scopes == ["ingest", "read"]
    assert key.created_by == staff
    stored = [str(getattr(key, f.attname)) for f in APIKey._meta.fields]
    assert not any(secret in value for value in stored)

    assert secret not in staff_client.get(response.url).content.decode()
    assert secret not in staff_client.get(url("billing_apikey_changelist")).content.decode()


def test_an_api_key_needs_a_scope(staff_client):
    response = staff_client.post(url("billing_apikey_add"), {"name": "no-scopes"})
    assert response.status_code == 200
    assert "scopes" in response.context["form"].errors
    assert not APIKey.objects.filter(name="no-scopes").exists()


def test_revoke_action_sets_revoked_at(staff_client, catalog):
    key = catalog["key"]
    response = staff_client.post(
        url("billing_apikey_changelist"),
        {
            "action": "revoke_action",
            "_selected_action": [key.pk],
        },
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert not key.is_active


def test_api_keys_cannot_be_edited(staff_client, catalog):
    key = catalog["key"]
    page = staff_client.get(url("billing_apikey_change", key.pk)).content.decode()
    assert 'name="_save"' not in page
    assert key.secret_hash not in page
    response = staff_client.post(
        url("billing_apikey_change", key.pk), {"name": "x", "secret_hash": "0" * 64}
    )
    assert response.status_code == 403


# --- meters --------------------------------------------------------------------------------------


def test_adding_a_meter_goes_through_the_service(staff_client):
    code = unique("images")
    response = staff_client.post(
        url("billing_meter_add"),
        {
            "code": code,
            "name": "Images",
            "event_name": "image.generated",
            "aggregation": "count",
            "property": "",
            "filters": '{"size": ["1024"]}',
            "group_by": '["model"]',
            "unit": "images",
        },
    )
    assert response.status_code == 302
    meter = Meter.objects.get(code=code)
    assert (meter.aggregation, meter.filters, meter.group_by) == (
        "count",
        {"size": ["1024"]},
        ["model"],
    )

    # A sum meter needs the property it reads: the service refuses, the form shows it.
    refused = staff_client.post(
        url("billing_meter_add"),
        {
            "code": unique("bad"),
            "event_name": "x",
            "aggregation": "sum",
            "property": "",
            "filters": "{}",
            "group_by": "[]",
        },
    )
    assert refused.status_code == 200
    assert refused.context["form"].errors["property"] == ["a sum meter needs the property it reads"]


def test_a_meter_can_be_renamed_but_not_redefined(staff_client, catalog):
    meter = catalog["meter"]
    response = staff_client.post(
        url("billing_meter_change", meter.pk),
        {
            "name": "Completion tokens",
            "unit": "tok",
            "event_name": "other.event",
            "aggregation": "count",
            "property": "",
        },
    )
    assert response.status_code == 302
    meter.refresh_from_db()
    assert (meter.name, meter.unit) == ("Completion tokens", "tok")
    assert (meter.event_name, meter.aggregation, meter.property) == (
        "llm.completion",
        "sum",
        "usage.output_tokens",
    )


def test_old_meter_links_arrive_at_the_meters_new_home(staff_client, catalog):
    """Meters moved from metering to the commercial core (billing 0007); a finance user's
    bookmark of the old admin address still opens the meter."""
    meter = catalog["meter"]
    old = staff_client.get(f"/admin/metering/meter/{meter.pk}/change/?_changelist_filters=x")
    assert old.status_code == 302
    assert old["Location"] == f"{url('billing_meter_change', meter.pk)}?_changelist_filters=x"
    assert staff_client.get(old["Location"]).status_code == 200


def test_wallet_accounts_are_linked_from_the_customer(staff_client, catalog):
    customer = catalog["customer"]
    account = Account.objects.get(owner_type="billing.customer", owner_id=str(customer.pk))
    page = staff_client.get(url("billing_customer_change", customer.pk)).content.decode()
    assert url("ledger_account_change", account.pk) in page


def test_subscribe_a_customer_in_the_admin(staff_client, catalog):
    customer = services.create_customer(external_id="sub-admin", name="Sub Admin")
    plan = services.latest_plan(code=Plan.objects.order_by("code").first().code)
    url = reverse("admin:billing_subscription_add")
    assert staff_client.get(url).status_code == 200
    response = staff_client.post(url, {"customer": customer.pk, "plan": plan.pk})
    assert response.status_code == 302
    subscription = customer.subscriptions.get()
    assert subscription.plan == plan
    # A second live subscription is refused on the form, and nothing changes.
    again = staff_client.post(url, {"customer": customer.pk, "plan": plan.pk})
    assert again.status_code == 200
    assert b"subscription_exists" in again.content or b"already has a live" in again.content
    assert customer.subscriptions.count() == 1


# --- credit grants ------------------------------------------------------------------------


def test_grant_credits_page_grants_once_and_the_grant_pages_show_its_allocations(
    staff_client, catalog, staff
):
    from billing import credits
    from billing.models import CreditGrant

    customer = catalog["customer"]
    chosen = staff_client.post(
        url("billing_customer_changelist"),
        {"action": "grant_action", "_selected_action": [customer.pk]},
    )
    assert chosen.url == url("billing_customer_grant", customer.pk)
    token = staff_client.get(chosen.url).context["form"]["token"].value()
    form = {
        "amount": "250",
        "name": "Launch week",
        "source": "promotional",
        "priority": "",
        "expires_at": "2099-01-31 00:00",
        "token": token,
    }
    response = staff_client.post(chosen.url, form)
    assert response.status_code == 302, response.context and response.context["form"].errors
    assert staff_client.post(chosen.url, form).status_code == 302  # submitted twice: once
    grant = CreditGrant.objects.get(customer=customer)
    assert (grant.amount, grant.remaining, grant.priority, grant.created_by_id) == (
        Decimal(250),
        Decimal(250),
        10,
        staff.pk,
    )
    assert grant.expires_at.year == 2099
    wallet = Wallet.objects.get(customer=customer, currency="CREDITS")
    assert ledger_selectors.get_balance(account=wallet.account).posted == Decimal(250)

    services.adjust_balance(
        customer=customer,
        amount=Decimal(-40),
        reason="used",
        staff_user_id=staff.pk,
        currency="CREDITS",
    )
    page = staff_client.get(url("billing_creditgrant_change", grant.pk)).content.decode()
    assert "Launch week" in page and "210" in page and "Adjustment" in page
    customer_page = staff_client.get(url("billing_customer_change", customer.pk))
    assert "Launch week" in customer_page.content.decode()
    listing = staff_client.get(url("billing_creditgrant_changelist") + "?live=yes")
    assert "Launch week" in listing.content.decode()

    # Void: a confirmation page asks why, and nothing moves without a reason.
    action = {"action": "void_action", "_selected_action": [grant.pk]}
    asked = staff_client.post(url("billing_creditgrant_changelist"), action)
    assert asked.status_code == 200 and 'name="reason"' in asked.content.decode()
    refused = staff_client.post(
        url("billing_creditgrant_changelist"), {**action, "post": "yes", "reason": " "}
    )
    assert refused.status_code == 200 and refused.context["form"].errors["reason"]
    grant.refresh_from_db()
    assert grant.status == "active"
    # Given a reason, what is left goes back to @Promotions, once, the reason kept.
    staff_client.post(
        url("billing_creditgrant_changelist"),
        {**action, "post": "yes", "reason": "Promotion withdrawn (ticket 88)"},
    )
    grant.refresh_from_db()
    assert (grant.status, grant.remaining) == ("voided", Decimal(0))
    assert grant.metadata["void_reason"] == "Promotion withdrawn (ticket 88)"
    void = grant.allocations.get(kind="void").ledger_transaction
    assert void.metadata["reason"] == "Promotion withdrawn (ticket 88)"
    assert ledger_selectors.get_balance(account=wallet.account).posted == Decimal(0)
    assert credits.GrantBook.load([wallet.account_id]).take(wallet.account_id, Decimal(1)) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("amount", "-5"), ("amount", "abc"), ("expires_at", "2001-01-01 00:00"), ("priority", "5000")],
)
def test_grant_credits_page_refuses_bad_input_and_changes_nothing(
    staff_client, catalog, field, value
):
    from billing.models import CreditGrant

    customer = catalog["customer"]
    page = url("billing_customer_grant", customer.pk)
    token = staff_client.get(page).context["form"]["token"].value()
    form = {"amount": "5", "name": "", "source": "promotional", "priority": "", "token": token}
    form[field] = value
    response = staff_client.post(page, form)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not CreditGrant.objects.exists()
    assert not LedgerTransaction.objects.filter(reference__startswith="credit-grant:").exists()
