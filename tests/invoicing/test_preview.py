"""Usage previews (invoicing.preview): a past period priced again under a draft plan version
or a changed model price, figures worked by hand, and nothing written.

The plan: 20.00 USD a month, 100 units included, then 0.01 USD a unit; 10 % tax everywhere.
April: customer A used 1,100 units, B 50.
    A: 20.00 + 1,000 × 0.01 = 30.00, tax 3.00 → 33.00
    B: 20.00 + nothing       = 20.00, tax 2.00 → 22.00
The draft: 15.00 a month, 100 included, then 0.008 a unit.
    A: 15.00 + 1,000 × 0.008 = 23.00, tax 2.30 → 25.30   (−7.70)
    B: 15.00                 = 15.00, tax 1.50 → 16.50   (−5.50)
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext

from billing import services
from billing.models import Plan
from invoicing import preview
from invoicing.finance_views import PlanPreviewSerializer, draft_spec
from invoicing.models import Invoice, InvoiceLine, TaxRate
from ledger.models import Balance, Entry, Transaction
from metering import rating
from metering.models import DailyUsage, Event, ModelUsage, PeriodUsage
from tests.billing.conftest import api, api_key, assert_error, at, make_client, make_key
from tests.factories import CustomerFactory, MeterFactory, PlanFactory, SubscriptionFactory, unique
from tests.invoicing.conftest import (
    START,
    ChargeSpec,
    close,
    finalize,
    meter,
    plan,
    subscribe,
    use,
)

__all__ = ["api", "api_key", "make_key"]  # fixtures used here

D = Decimal


@pytest.fixture
def book(db):
    TaxRate.objects.create(name="VAT", percentage=D(10))
    units = meter()
    pro = plan(
        ChargeSpec(meter=units, included_quantity=D(100), unit_price=D("0.01")),
        base_fee="20",
        code=unique("pro"),
    )
    a = subscribe(pro, external_id=unique("a"))
    b = subscribe(pro, external_id=unique("b"))
    use(a, 1100)
    use(b, 50)
    close(a)
    close(b)
    return pro, units, a, b


def cheaper(pro: Plan, units: str) -> services.PlanSpec:
    return replace(
        services.plan_spec_of(pro),
        base_fee=D(15),
        charges=(ChargeSpec(meter=units, included_quantity=D(100), unit_price=D("0.008")),),
    )


def state() -> tuple:
    """Everything a preview could have touched."""
    return (
        Transaction.objects.count(),
        Entry.objects.count(),
        sorted(Balance.objects.values_list("id", "posted", "held", "version")),
        Event.objects.count(),
        sorted(PeriodUsage.objects.values_list("id", "quantity", "amount", "charged")),
        DailyUsage.objects.count(),
        ModelUsage.objects.count(),
        Plan.objects.count(),
        sorted(Invoice.objects.values_list("id", "total", "status")),
        InvoiceLine.objects.count(),
    )


def test_a_cheaper_draft_shows_each_customers_saving(book):
    pro, units, a, b = book
    before = state()
    with CaptureQueriesContext(connection) as queries:
        result = preview.preview_plan_version(spec=cheaper(pro, units))
    assert state() == before
    writes = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
    ]
    assert writes == []
    assert not result.skipped and not result.truncated
    rows = {r.customer: r for r in result.rows}
    ra, rb = rows[a.customer.external_id], rows[b.customer.external_id]
    assert (ra.old_total, ra.new_total, ra.delta) == (D("33.00"), D("25.30"), D("-7.70"))
    assert (rb.old_total, rb.new_total, rb.delta) == (D("22.00"), D("16.50"), D("-5.50"))
    assert (ra.period_start, ra.period_end) == (START, at(2026, 5, 1))
    [m] = ra.meters
    assert (m.meter, m.quantity, m.old_amount, m.new_amount) == (units, 1100, 10, 8)
    assert m.delta == D(-2)
    [total] = result.totals
    assert (total.currency, total.customers) == ("USD", 2)
    assert (total.old, total.new, total.delta) == (D("55.00"), D("41.80"), D("-13.20"))
    # the old figures are the invoices the close made
    assert Invoice.objects.get(subscription=a).total == ra.old_total


def test_a_finalized_invoices_old_figures_are_as_issued_after_a_tax_change(book):
    """A's April invoice was finalized at 10 % (33.00); the rate is 20 % since. The old total
    is the invoice the customer got, and the draft is taxed at the same 10 %: 25.30."""
    pro, units, a, _ = book
    invoice = finalize(Invoice.objects.get(subscription=a))
    assert (invoice.subtotal, invoice.tax, invoice.total) == (D(30), D(3), D(33))
    TaxRate.objects.update(active=False)
    TaxRate.objects.create(name="VAT", percentage=D(20))
    [row] = preview.preview_plan_version(spec=cheaper(pro, units), customer=a.customer).rows
    assert (row.old_subtotal, row.old_total) == (D(30), D(33))
    assert (row.new_subtotal, row.new_total, row.delta) == (D(23), D("25.30"), D("-7.70"))
    assert not row.approximate


def test_an_unchanged_draft_changes_nothing_and_one_customer_can_be_previewed(book):
    pro, _, a, _ = book
    result = preview.preview_plan_version(spec=services.plan_spec_of(pro), customer=a.customer)
    [row] = result.rows
    assert row.customer == a.customer.external_id
    assert row.delta == 0 and row.new_total == D("33.00")


def test_a_dearer_tier_draft(book):
    """A graduated draft: 100 included, the next 500 at 0.01, then 0.02 → A pays
    15 + 5.00 + 500 × 0.02 = 30.00 net, 3.00 tax: 33.00 — unchanged in total, but per line."""
    pro, units, a, _ = book
    spec = replace(
        services.plan_spec_of(pro),
        base_fee=D(15),
        charges=(
            ChargeSpec(
                meter=units,
                included_quantity=D(100),
                price_model="graduated",
                tiers=(
                    services.TierSpec(up_to=D(500), unit_price=D("0.01")),
                    services.TierSpec(up_to=None, unit_price=D("0.02")),
                ),
            ),
        ),
    )
    row = next(
        r
        for r in preview.preview_plan_version(spec=spec).rows
        if r.customer == a.customer.external_id
    )
    assert (row.new_subtotal, row.new_total, row.delta) == (D("30.00"), D("33.00"), D(0))
    assert row.meters[0].new_amount == D(15)


def test_subscriptions_of_other_plans_and_without_an_invoice_are_left_out(book):
    pro, units, _, _ = book
    other = subscribe(plan(ChargeSpec(meter=units), code=unique("other")))
    close(other)
    fresh = subscribe(pro, external_id=unique("fresh"))
    result = preview.preview_plan_version(spec=cheaper(pro, units))
    shown = {r.customer for r in result.rows}
    assert other.customer.external_id not in shown
    assert dict(result.skipped) == {fresh.customer.external_id: "no invoiced period yet"}


def test_a_period_rated_under_two_versions_is_marked(book):
    """C used 1,100 units on 10 April on version 1, moved to version 2 (0.02 a unit) on the
    15th and used 100 more on the 20th: rated 10.00 + 2.00 = 12.00, where version 2's prices
    on the whole 1,200 make 22.00. The draft (version 2's prices) prices all of it at 22.00,
    and says so."""
    pro, units, _, _ = book
    c = subscribe(pro, external_id=unique("c"))
    use(c, 1100)
    v2 = PlanFactory(
        code=pro.code,
        name=pro.name,
        base_fee="20",
        charges=(ChargeSpec(meter=units, included_quantity=D(100), unit_price=D("0.02")),),
    )
    services.change_subscription(subscription_id=c.pk, plan=v2, now=at(2026, 4, 15))
    use(c, 100, at_time=at(2026, 4, 20))
    close(c)
    [row] = preview.preview_plan_version(spec=services.plan_spec_of(v2), customer=c.customer).rows
    [m] = row.meters
    assert (m.old_amount, m.new_amount) == (D(12), D(22))
    assert "plan change" in m.note and row.approximate


@pytest.mark.django_db
def test_the_preview_transaction_refuses_writes():
    """The guarantee behind "writes nothing": PostgreSQL itself refuses a write inside."""
    with pytest.raises(DatabaseError, match="read-only transaction"):
        with preview.read_only():
            with connection.cursor() as cursor:
                cursor.execute("CREATE TEMPORARY TABLE preview_probe (id int)")


@pytest.mark.parametrize(
    "top_level",
    [
        pytest.param(False, marks=pytest.mark.django_db),
        pytest.param(True, marks=pytest.mark.django_db(transaction=True)),
    ],
)
def test_after_a_preview_the_connection_writes_again(top_level):
    """Read only ends with the preview: as a transaction of its own, or as a savepoint."""
    assert connection.in_atomic_block is not top_level
    with preview.read_only():
        pass
    with transaction.atomic():
        TaxRate.objects.create(name="after", percentage=D(1))  # would fail if still read only
    assert TaxRate.objects.filter(name="after").exists()


def test_a_draft_with_an_unknown_meter_is_refused(book):
    pro, _, _, _ = book
    spec = replace(services.plan_spec_of(pro), charges=(ChargeSpec(meter="nope"),))
    with pytest.raises(Exception) as raised:
        preview.preview_plan_version(spec=spec)
    assert getattr(raised.value, "param", None) == "charges[0].meter"


# --- catalog-priced charges and model price changes -----------------------------------------


def llm_call(customer, tokens_in: int, tokens_out: int = 0, model: str = "gpt-4o"):
    [outcome] = rating.ingest_events(
        [
            rating.EventIn(
                unique("k"),
                customer.external_id,
                "llm.completion",
                at(2026, 4, 10, 9),
                {
                    "model": model,
                    "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out},
                },
            )
        ],
        now=at(2026, 4, 10, 9),
    )
    assert outcome.status == "accepted", outcome
    return outcome


@pytest.fixture
def llm_book(model_prices):
    """gpt-4o at 2.5 USD per million input tokens. "payg" prices input tokens from the
    catalog + 20 %; "flat" at 0.000001 USD a token, whatever the catalog says.
    acme: 1,000,000 input tokens on payg → cost 2.50, charged 3.00.
    bolt: 2,000,000 input tokens on flat → cost 5.00, charged 2.00."""
    tokens = MeterFactory(code=unique("in"), property="llm.input_tokens")
    payg = PlanFactory(
        code=unique("payg"), charges=(ChargeSpec(meter=tokens.code, margin_percent=D(20)),)
    )
    flat = PlanFactory(
        code=unique("flat"), charges=(ChargeSpec(meter=tokens.code, unit_price=D("0.000001")),)
    )
    acme = CustomerFactory(external_id=unique("acme"), funds=100)
    bolt = CustomerFactory(external_id=unique("bolt"), funds=100)
    acme_sub = SubscriptionFactory(customer=acme, plan=payg, start=START, now=START)
    bolt_sub = SubscriptionFactory(customer=bolt, plan=flat, start=START, now=START)
    llm_call(acme, 1_000_000)
    llm_call(bolt, 2_000_000)
    return tokens, payg, acme, bolt, acme_sub, bolt_sub


def test_a_lower_margin_draft_reprices_catalog_usage(llm_book):
    """payg at 10 % instead of 20 %: 2.50 × 1.10 = 2.75 instead of 3.00."""
    tokens, payg, acme, _, acme_sub, _ = llm_book
    close(acme_sub)
    spec = replace(
        services.plan_spec_of(payg),
        charges=(ChargeSpec(meter=tokens.code, margin_percent=D(10)),),
    )
    [row] = preview.preview_plan_version(spec=spec).rows
    assert row.customer == acme.external_id
    assert (row.old_total, row.new_total, row.delta) == (D("3.00"), D("2.75"), D("-0.25"))
    [m] = row.meters
    assert (m.old_amount, m.new_amount, m.note) == (D(3), D("2.75"), "")


def test_a_model_price_cut_lowers_cost_everywhere_and_price_where_catalog_priced(
    llm_book, model_prices
):
    """gpt-4o input at 2.00 instead of 2.50: acme's cost 2.50 → 2.00, price 3.00 → 2.40;
    bolt's cost 5.00 → 4.00, its price (per unit) unchanged."""
    _, _, acme, bolt, _, _ = llm_book
    before = state()
    result = preview.preview_model_price(
        price=model_prices["gpt-4o"],
        prices={"input_mtok": D(2)},
        start=at(2026, 4, 1),
        end=at(2026, 5, 1),
    )
    assert state() == before
    rows = {r.customer: r for r in result.rows}
    ra, rb = rows[acme.external_id], rows[bolt.external_id]
    assert (ra.old_cost, ra.new_cost) == (D("2.5"), D("2.0"))
    assert (ra.old_amount, ra.new_amount, ra.delta) == (D(3), D("2.4"), D("-0.6"))
    assert (rb.old_cost, rb.new_cost) == (D(5), D(4))
    assert (rb.old_amount, rb.new_amount, rb.delta) == (D(2), D(2), D(0))
    assert not ra.approximate and not rb.approximate
    assert result.cost_delta == D("-1.5")


def test_a_model_price_preview_range_is_half_open(llm_book, model_prices):
    """The calls were on 10 April: [11 April, …) and [… , 10 April) leave them out."""
    gpt = model_prices["gpt-4o"]
    for start, end in ((at(2026, 4, 11), at(2026, 5, 1)), (at(2026, 4, 1), at(2026, 4, 10))):
        result = preview.preview_model_price(
            price=gpt, prices={"input_mtok": D(2)}, start=start, end=end
        )
        assert result.rows == []
    result = preview.preview_model_price(
        price=gpt, prices={"input_mtok": D(2)}, start=at(2026, 4, 10), end=at(2026, 4, 11)
    )
    assert len(result.rows) == 2


def test_a_model_price_preview_prices_each_day_with_the_plan_then_in_force(llm_book, model_prices):
    """acme was on payg (catalog + 20 %) in April; on 1 May it moves to a per-unit version of
    payg. April previewed at 2.00/M input is still 3.00 → 2.40: the April tokens were priced
    by April's plan, not by the one the customer is on now."""
    tokens, payg, acme, _, acme_sub, _ = llm_book
    per_unit = PlanFactory(
        code=payg.code, charges=(ChargeSpec(meter=tokens.code, unit_price=D("0.000001")),)
    )
    services.change_subscription(subscription_id=acme_sub.pk, plan=per_unit, now=at(2026, 5, 1))
    result = preview.preview_model_price(
        price=model_prices["gpt-4o"],
        prices={"input_mtok": D(2)},
        start=at(2026, 4, 1),
        end=at(2026, 5, 1),
    )
    [row] = [r for r in result.rows if r.customer == acme.external_id]
    assert (row.old_amount, row.new_amount) == (D(3), D("2.4"))
    assert not row.approximate


def test_a_plan_change_inside_a_day_marks_that_days_row_approximate(llm_book, model_prices):
    """The change at noon on 10 April, the day of the call: the day's counter row was priced
    by two versions (the counters do not say which tokens each): marked approximate."""
    tokens, payg, acme, _, acme_sub, _ = llm_book
    per_unit = PlanFactory(
        code=payg.code, charges=(ChargeSpec(meter=tokens.code, unit_price=D("0.000001")),)
    )
    services.change_subscription(
        subscription_id=acme_sub.pk, plan=per_unit, now=at(2026, 4, 10, 12)
    )
    result = preview.preview_model_price(
        price=model_prices["gpt-4o"],
        prices={"input_mtok": D(2)},
        start=at(2026, 4, 1),
        end=at(2026, 5, 1),
    )
    [row] = [r for r in result.rows if r.customer == acme.external_id]
    assert row.approximate and "inside a day (2026-04-10)" in row.note


def test_tiered_model_prices_are_refused(model_prices):
    with pytest.raises(preview.PreviewUnsupported):
        preview.preview_model_price(
            price=model_prices["gemini-2.5-pro"], prices={"input_mtok": D(1)}
        )


# --- the API route ---------------------------------------------------------------------------


def test_the_api_previews_with_a_read_key_and_writes_nothing(book, make_key):
    pro, units, a, _ = book
    client = make_client(make_key(("read",))[1])
    before = state()
    response = client.post(
        f"/api/v1/plans/{pro.code}/preview",
        {
            "base_fee": "15",
            "charges": [{"meter": units, "included_quantity": "100", "unit_price": "0.008"}],
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert state() == before
    body = response.json()
    assert body["totals"] == [
        {
            "currency": "USD",
            "customers": 2,
            "old": "55.000000000000",
            "new": "41.800000000000",
            "delta": "-13.200000000000",
        }
    ]
    row = next(r for r in body["data"] if r["customer"] == a.customer.external_id)
    assert (row["old_total"], row["new_total"], row["delta"]) == (
        "33.000000000000",
        "25.300000000000",
        "-7.700000000000",
    )


def test_a_draft_keeps_the_terms_it_does_not_change(db):
    """The API's and the admin's draft changes the name, fee and charges; the rounding, the
    plan's minimum and the cadence stay the current version's (not the defaults)."""
    units = meter()
    current = plan(
        ChargeSpec(meter=units, unit_price=D("0.01")),
        base_fee="20",
        rounding="half_up",
        minimum_amount=D(100),
        interval="week",
        interval_count=2,
        billing_time="calendar",
        billing_anchor_day=1,
    )
    body = PlanPreviewSerializer(
        data={"base_fee": "15", "charges": [{"meter": units, "unit_price": "0.008"}]}
    )
    assert body.is_valid(), body.errors
    spec = draft_spec(current, dict(body.validated_data))
    assert (spec.base_fee, spec.charges[0].unit_price) == (D(15), D("0.008"))
    assert (spec.rounding, spec.minimum_amount) == ("half_up", D(100))
    assert (spec.interval, spec.interval_count, spec.billing_time, spec.billing_anchor_day) == (
        "week",
        2,
        "calendar",
        1,
    )
    assert replace(spec, base_fee=D(20), charges=()) == replace(
        services.plan_spec_of(current), charges=()
    )


def test_the_api_preview_errors_are_json(book, make_key):
    pro, units, _, _ = book
    ingest_only = make_client(make_key(("ingest",))[1])
    response = ingest_only.post(f"/api/v1/plans/{pro.code}/preview", {"charges": []}, format="json")
    assert_error(response, 403, "insufficient_scope")
    reader = make_client(make_key(("read",))[1])
    response = reader.post("/api/v1/plans/no-such-plan/preview", {"charges": []}, format="json")
    assert response.status_code == 404 and response.json()["error"]["param"] == "code"
    response = reader.post(
        f"/api/v1/plans/{pro.code}/preview", {"charges": [], "bas_fee": "1"}, format="json"
    )
    assert_error(response, 400, "unknown_parameter", param="bas_fee")


# --- the admin pages -------------------------------------------------------------------------


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("fin", "f@x.test", None))
    return client


def test_the_price_change_page_previews_and_saves_nothing(staff, llm_book, model_prices):
    from django.urls import reverse

    _, _, acme, _, _, _ = llm_book
    gpt = model_prices["gpt-4o"]
    url = reverse("finance-price-preview", args=[gpt.pk])
    assert staff.get(url).status_code == 200
    before = (state(), list(type(gpt).objects.values_list("id", "input_mtok")))
    page = staff.post(
        url,
        {
            "input_mtok": "2",
            "output_mtok": "10",
            "cache_read_mtok": "1.25",
            "start": "2026-04-01",
            "end": "2026-05-01",
        },
    )
    assert page.status_code == 200
    text = page.content.decode()
    assert acme.external_id in text and "-0.60" in text  # 3.00 → 2.40
    assert (state(), list(type(gpt).objects.values_list("id", "input_mtok"))) == before


def test_the_plan_preview_page_refuses_a_bad_draft(staff, book):
    from django.urls import reverse

    pro, _, _, _ = book
    page = staff.post(
        reverse("finance-plan-preview", args=[pro.pk]),
        {"name": "Pro", "base_fee": "15", "trial_days": "0", "charges": '[{"meter": "nope"}]'},
    )
    assert page.status_code == 200
    assert "does not exist" in page.content.decode()


def test_the_plan_preview_page_shows_quantities_without_cents(staff, book):
    """A meter's quantity is a count of units, grouped without cents ("1,100", not
    "1,100.00" as money); its amounts stay exact."""
    import json

    from django.urls import reverse

    pro, units, a, _ = book
    charges = json.dumps([{"meter": units, "included_quantity": "100", "unit_price": "0.008"}])
    page = staff.post(
        reverse("finance-plan-preview", args=[pro.pk]),
        {"name": "Pro", "base_fee": "15", "trial_days": "0", "charges": charges},
    ).content.decode()
    rows = page[page.index('id="preview-rows"') :]
    assert '<td class="num">1,100</td>' in rows and '<td class="num">50</td>' in rows
    assert "1,100.00" not in rows


def test_the_preview_pages_need_customer_and_invoice_view_permissions(
    client, django_user_model, book, llm_book, model_prices
):
    """Both previews list customers with their invoice totals or charges: a plan (or catalog)
    viewer without the customers' and invoices' view permissions gets 403."""
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    pro, _, a, _ = book
    _, _, acme, _, _, _ = llm_book
    user = django_user_model.objects.create_user("clerk", "c@x.test", "pw", is_staff=True)
    client.force_login(user)

    def grant(*perms):
        for perm in perms:
            app, codename = perm.split(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app, codename=codename)
            )
        user.__dict__.pop("_perm_cache", None)

    plan_url = reverse("finance-plan-preview", args=[pro.pk])
    plan_draft = {"name": "Pro", "base_fee": "15", "trial_days": "0", "charges": "[]"}
    price_url = reverse("finance-price-preview", args=[model_prices["gpt-4o"].pk])
    price_draft = {"input_mtok": "2", "start": "2026-04-01", "end": "2026-05-01"}
    grant("billing.view_plan", "metering.view_modelprice", "metering.view_modelusage")
    assert client.post(plan_url, plan_draft).status_code == 403
    assert client.post(price_url, price_draft).status_code == 403
    grant("billing.view_customer", "invoicing.view_invoice")
    page = client.post(plan_url, plan_draft)
    assert page.status_code == 200 and a.customer.external_id in page.content.decode()
    page = client.post(price_url, price_draft)
    assert page.status_code == 200 and acme.external_id in page.content.decode()
