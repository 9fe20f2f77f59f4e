"""The test data of the suite and of the benchmarks (bench/): factory_boy factories that
create every object through the product's services, never by a raw save that would skip an
invariant (a customer without its wallet, a plan version without its lock and spec hash, an
API key whose secret is not hashed, a grant without its ledger transaction). Each factory's
``_create`` calls the service; ``build()`` is refused, as there is no unsaved form of these.

    customer = CustomerFactory(funds=10)                      # prepaid, USD wallet topped up
    MeterFactory(code="units", api_call=True)                 # sums api.call's "units"
    plan = PlanFactory(charges=[ChargeSpec(meter="units", unit_price=D("0.01"))])
    subscription = SubscriptionFactory(customer=customer, plan=plan, start=START)
    key = APIKeyFactory(scopes=["ingest"]); key.secret        # the secret, shown once

Imported by tests after pytest-django has set Django up, and by the benchmarks inside their
seeding functions (after ``setup_django``): so nothing here runs a query at import.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import factory
from factory.django import DjangoModelFactory

from billing import credits
from billing import services as billing
from billing.services import PlanSpec
from ledger import services as ledger
from ledger.models import NormalBalance
from metering import catalog

ALL_SCOPES = ("read", "write", "ingest")
WORLD = "@World"  # where test money comes from (billing.services.WORLD for top-ups)


def unique(prefix: str = "t") -> str:
    """A code no other test (or concurrent test run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _decimal(value: Decimal | str | int | None) -> Decimal | None:
    return None if value is None else Decimal(value)


class _ServiceFactory(DjangoModelFactory):
    """Creates through a service (each subclass's ``_create``); never saves an instance."""

    class Meta:
        abstract = True
        skip_postgeneration_save = True

    @classmethod
    def _build(cls, model_class, *args, **kwargs):
        raise TypeError(f"{cls.__name__} creates through the services: call it, not .build()")


# --- the ledger ---------------------------------------------------------------------------------


class LedgerAccountFactory(_ServiceFactory):
    """A ledger account and its balance row (ledger.services.create_account), owned by a
    customer of no app; ``funds``: posted to it from the hot ``@World`` of its currency."""

    class Meta:
        model = "ledger.Account"

    code = factory.LazyFunction(lambda: unique("wallet"))
    currency = "USD"
    allow_negative = False
    negative_limit = None
    owner_type = "tests.customer"
    owner_id = factory.LazyFunction(lambda: unique("cus"))
    funds = 0

    @classmethod
    def _create(cls, model_class, *args, funds: Decimal | str | int = 0, **kwargs: Any):
        kwargs["negative_limit"] = _decimal(kwargs.get("negative_limit"))
        account = ledger.create_account(**kwargs)
        if Decimal(funds):
            world = ledger.ensure_system_account(
                code=WORLD, currency=account.currency, normal_balance=NormalBalance.DEBIT
            )
            ledger.post_transaction(
                reference=unique("fund"),
                legs=[ledger.debit(world, funds), ledger.credit(account, funds)],
            )
        return account


# --- the commercial core ------------------------------------------------------------------------


class CustomerFactory(_ServiceFactory):
    """A customer and its wallet in its currency (billing.services.create_customer; prepaid
    unless ``billing_mode`` says otherwise). ``funds``: a top-up of that wallet
    (services.top_up, with ``funds_reference`` as its reference when given)."""

    class Meta:
        model = "billing.Customer"

    external_id = factory.LazyFunction(lambda: unique("cus"))
    name = "Acme Robotics"
    funds = 0
    funds_reference = None

    @classmethod
    def _create(
        cls,
        model_class,
        *args,
        funds: Decimal | str | int = 0,
        funds_reference: str | None = None,
        **kwargs: Any,
    ):
        if kwargs.get("credit_limit") is not None:
            kwargs["credit_limit"] = Decimal(kwargs["credit_limit"])
        customer = billing.create_customer(**kwargs)
        if Decimal(funds):
            billing.top_up(customer=customer, amount=Decimal(funds), reference=funds_reference)
        return customer


class MeterFactory(_ServiceFactory):
    """A meter (billing.services.create_meter): by default the sum of an LLM call's output
    tokens; a count reads no property. Trait ``api_call``: the sum of ``api.call``'s
    ``units``, the plain meter of the invoicing and rating tests."""

    class Meta:
        model = "billing.Meter"

    class Params:
        is_count = factory.LazyAttribute(lambda meter: meter.aggregation == "count")
        api_call = factory.Trait(event_name="api.call", property="units")

    code = factory.LazyFunction(lambda: unique("meter"))
    event_name = "llm.completion"
    aggregation = "sum"
    property = factory.Maybe("is_count", yes_declaration="", no_declaration="llm.output_tokens")

    @classmethod
    def _create(cls, model_class, *args, **kwargs: Any):
        return billing.create_meter(**kwargs)


class PlanFactory(_ServiceFactory):
    """A plan version published from a PlanSpec (billing.services.publish_plan, as the
    pricing file, the API and the admin publish): every PlanSpec field may be given, money as
    str or Decimal, ``charges`` as ChargeSpecs on meters that exist. Publishing the same
    spec again returns the current version, as the service does."""

    class Meta:
        model = "billing.Plan"

    code = factory.LazyFunction(lambda: unique("plan"))
    name = "Plan"
    charges = ()

    @classmethod
    def _create(cls, model_class, *args, published_by_id: int | None = None, **kwargs: Any):
        kwargs["charges"] = tuple(kwargs.get("charges", ()))
        for money in ("base_fee", "units_per_credit"):
            if kwargs.get(money) is not None:
                kwargs[money] = Decimal(kwargs[money])
        plan, _ = billing.publish_plan(spec=PlanSpec(**kwargs), published_by_id=published_by_id)
        return plan


class SubscriptionFactory(_ServiceFactory):
    """A subscription (billing.services.create_subscription) of a new customer to a new plan
    unless given; ``start``, ``trial_days`` and ``now`` as the service takes them."""

    class Meta:
        model = "billing.Subscription"

    customer = factory.SubFactory(CustomerFactory)
    plan = factory.SubFactory(PlanFactory)

    @classmethod
    def _create(cls, model_class, *args, **kwargs: Any):
        return billing.create_subscription(**kwargs)


class APIKeyFactory(_ServiceFactory):
    """An API key (billing.services.create_api_key) with every scope unless given; its secret,
    returned once by the service, is kept on the instance as ``.secret``.

    ``rate_limit_per_minute``: no service sets a key's limit (only the admin's form edits
    it), so a given limit is written by an UPDATE of that one column after the service."""

    class Meta:
        model = "billing.APIKey"

    name = factory.LazyFunction(lambda: unique("key"))
    scopes = ALL_SCOPES
    rate_limit_per_minute = None

    @classmethod
    def _create(cls, model_class, *args, rate_limit_per_minute: int | None = None, **kwargs: Any):
        kwargs["scopes"] = list(kwargs["scopes"])
        key, secret = billing.create_api_key(**kwargs)
        if rate_limit_per_minute is not None:
            model_class.objects.filter(pk=key.pk).update(
                rate_limit_per_minute=rate_limit_per_minute
            )
            key.refresh_from_db()
        key.secret = secret
        return key


class CreditGrantFactory(_ServiceFactory):
    """Credits given to a customer (billing.credits.grant_credits: the ledger transaction
    from @Promotions or @Adjustments to its CREDITS wallet, and the grant); promotional
    unless ``source`` says otherwise. A reference already used replays the first grant."""

    class Meta:
        model = "billing.CreditGrant"

    customer = factory.SubFactory(CustomerFactory)
    amount = Decimal(10)

    @classmethod
    def _create(cls, model_class, *args, **kwargs: Any):
        return credits.grant_credits(**kwargs)


# --- the model price catalog --------------------------------------------------------------------

CATALOG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class ModelPriceFactory(DjangoModelFactory):
    """One version of a model's prices (USD per million tokens). No service creates a single
    catalog row (catalog.import_genai_prices loads the whole genai-prices catalog; the admin
    saves rows as they are), so the row is saved as the admin saves it. Like a row the admin
    adds in another process, it reaches this process's catalog cache when the cache next
    checks the table; call ``catalog.invalidate()`` to have it at once."""

    class Meta:
        model = "metering.ModelPrice"

    provider = "openai"
    model = factory.Sequence(lambda n: f"model-{n}")
    effective_from = CATALOG_EPOCH
    input_mtok = Decimal(1)
    output_mtok = Decimal(2)


# A few real catalog rows (USD per million tokens, as genai-prices 0.2.3 has them).
MODEL_PRICES = [
    # provider, model, match, input, output, cache read, cache write, tiers
    (
        "openai",
        "gpt-4o",
        {"or": [{"equals": "gpt-4o"}, {"starts_with": "gpt-4o-2024"}]},
        "2.5",
        "10",
        "1.25",
        None,
        [],
    ),
    ("openai", "gpt-4o-mini", {"starts_with": "gpt-4o-mini"}, "0.15", "0.6", "0.075", None, []),
    (
        "anthropic",
        "claude-sonnet-4-5",
        {"starts_with": "claude-sonnet-4-5"},
        "3",
        "15",
        "0.3",
        "3.75",
        [],
    ),
    (
        "google",
        "gemini-2.5-pro",
        {"starts_with": "gemini-2.5-pro"},
        "1.25",
        "10",
        "0.125",
        None,
        [
            {
                "above_input_tokens": 200000,
                "input_mtok": "2.5",
                "output_mtok": "15",
                "cache_read_mtok": "0.25",
            }
        ],
    ),
]


def create_model_prices() -> dict[str, Any]:
    """The MODEL_PRICES rows (gpt-4o, gpt-4o-mini, claude-sonnet-4-5, gemini-2.5-pro), in
    effect since 2000, and this process's catalog cache invalidated; model id → row."""
    rows = [
        ModelPriceFactory(
            provider=provider,
            model=model,
            match=match,
            position=position,
            input_mtok=Decimal(inp),
            output_mtok=Decimal(out),
            cache_read_mtok=Decimal(read),
            cache_write_mtok=Decimal(write) if write else None,
            tiers=tiers,
        )
        for position, (provider, model, match, inp, out, read, write, tiers) in enumerate(
            MODEL_PRICES
        )
    ]
    catalog.invalidate()
    return {row.model: row for row in rows}


# --- staff users in the roles (billing migration 0019_staff_roles) ------------------------------


def staff_user(username: str, role: str, *, password: str | None = None):
    """A staff user in the group ``role`` ("Finance viewer", "Finance operator",
    "Administrator"). The groups come from a data migration, which a transactional test's
    flush empties: they are made again here when missing."""
    import importlib

    from django.apps import apps
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    roles = importlib.import_module("billing.migrations.0019_staff_roles")
    if Group.objects.filter(name__in=roles.ROLES).count() != len(roles.ROLES):
        roles.assign_roles(apps)
    user = get_user_model().objects.create_user(
        username, f"{username}@example.com", password, is_staff=True
    )
    user.groups.add(Group.objects.get(name=role))
    return user
