"""Query parameters and paths: every route of the API refuses a query parameter it does not
take (``unknown_parameter``) and one given twice (``invalid_parameter``), a path with a NUL
character is a JSON 404 (never a database error), and ``/api`` itself answers in the API's
error body like everything under ``/api/``.

The routes are read from the URL resolver (billing/api/urls.py), so a route added later is
covered without editing this file; a route whose path needs a value this file does not know
yet fails with a message saying which one to add to ``_path``.
"""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver
from drf_spectacular.generators import SchemaGenerator

from billing import alerts, projects, services, webhooks
from billing.api import query
from billing.api import urls as api_urls
from billing.models import Customer, OutboundEvent
from ledger.models import Transaction as LedgerTransaction
from tests.billing.conftest import ChargeSpec, assert_error, make_client
from tests.invoicing.conftest import close, plan, subscribe
from tests.invoicing.conftest import meter as invoicing_meter

pytestmark = pytest.mark.django_db

UNKNOWN = "unknown_param_x"
METHODS = ("get", "post", "patch", "put", "delete")
# Stripe's webhooks: the URL Stripe calls is the operator's to configure, and its body is
# Stripe's; neither is ours to refuse.
NOT_OURS = {"webhooks/stripe"}


def _routes(patterns=None, prefix: str = "") -> list[tuple[str, type]]:
    """(route, view class) of every route under /api/v1/."""
    found = []
    for pattern in api_urls.urlpatterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += _routes(pattern.url_patterns, route)
            continue
        assert isinstance(pattern, URLPattern)
        found.append((route, pattern.callback.view_class))
    return found


ROUTES = _routes()
GET_ROUTES = [route for route, view in ROUTES if hasattr(view, "get")]
VIEWS = dict(ROUTES)


def _declared(route: str) -> tuple[str, ...]:
    return tuple((getattr(VIEWS[route], "query_params", None) or {}).get("GET", ()))


# The query a route cannot answer without (a value from the ``objects`` fixture).
REQUIRED_QUERY = {
    "events": "customer={external_id}",
    "exports/<str:kind>": "from=2026-04-01&to=2026-05-01",
}


def _url(route: str, values: dict, extra: str = "") -> str:
    """The route's path with its required query, and ``extra`` parameters after them."""
    params = [p for p in (REQUIRED_QUERY.get(route, "").format(**values), extra) if p]
    return _path(route, values) + ("?" + "&".join(params) if params else "")


REPEATABLE = [route for route in GET_ROUTES if _declared(route)]


@pytest.fixture
def objects(api):
    """One of each object a GET route's path can name: a customer with funds, a live
    subscription and a closed (draft) invoice, a plan, a hold."""
    subscription = subscribe(plan(ChargeSpec(meter=invoicing_meter())), funds="100")
    invoice = close(subscription)
    customer = Customer.objects.get(pk=subscription.customer_id)
    hold = api.post("/api/v1/holds", {"customer": customer.external_id, "amount": "1"})
    assert hold.status_code == 201, hold.json()
    endpoint = webhooks.create_endpoint(url="https://hooks.example.com/query-params")
    delivery = webhooks.resend_event(
        event_id=OutboundEvent.objects.latest("pk").pk, endpoint_id=endpoint.pk
    )
    # a prepaid CREDITS wallet with an auto top-up (the USD wallet here is postpaid)
    services.set_auto_top_up(
        wallet=services.ensure_wallet(customer=customer, currency="CREDITS"),
        enabled=True,
        threshold=Decimal(1000),
        target=Decimal(5000),
        monthly_cap=Decimal(50),
    )
    return {
        "external_id": customer.external_id,
        "code": subscription.plan.code,
        "subscription_id": subscription.pk,
        "hold_id": hold.json()["id"],
        "invoice_id": invoice.pk,
        "endpoint_id": endpoint.pk,
        "delivery_id": delivery.pk,
        "alert_id": alerts.create_alert(
            kind="balance_below", scope="customer", customer=customer, threshold=Decimal(1)
        ).pk,
        "currency": "CREDITS",
        "kind": "invoices",
        "key": projects.create_project(customer=customer, key="query-team").key,
    }


def _path(route: str, values: dict) -> str:
    def fill(match: re.Match) -> str:
        name = match.group(2)
        assert name in values, f"add a value for <{name}> (route {route}) to this test"
        return str(values[name])

    return "/api/v1/" + re.sub(r"<(?:(\w+):)?(\w+)>", fill, route)


def test_the_resolver_lists_the_get_routes():
    """The enumeration itself works (it would pass vacuously on an empty list)."""
    for route in (
        "invoices",
        "invoices/<int:invoice_id>/pdf",
        "customers/<str:external_id>/transactions",
        "customers/<str:external_id>/upcoming-invoice",
        "holds/<int:hold_id>",
        "models",
        "plans/<slug:code>",
    ):
        assert route in GET_ROUTES
    assert "customers/<str:external_id>/top-ups" not in GET_ROUTES
    assert {"customers/<str:external_id>/credit-grants", "meters", "plans"} <= set(REPEATABLE)


def test_every_api_view_checks_its_query_parameters():
    """A view that does not derive from the checking base would skip the check."""
    for route, view in ROUTES:
        assert issubclass(view, query.APIView), f"{route}: derive {view} from query.APIView"
        if route not in NOT_OURS:
            assert view.query_params is not None, route


@pytest.mark.parametrize("route", GET_ROUTES)
def test_every_get_route_answers_without_parameters(api, objects, route):
    """The paths are real: the refusals below are not a 404 in disguise."""
    response = api.get(_url(route, objects))
    assert response.status_code == 200, (route, response.content[:300])


@pytest.mark.parametrize("route", GET_ROUTES)
def test_every_get_route_refuses_an_unknown_parameter(api, objects, route):
    response = api.get(_url(route, objects, f"{UNKNOWN}=1"))
    assert_error(response, 400, "unknown_parameter", param=UNKNOWN)
    assert UNKNOWN in response.json()["error"]["message"]


@pytest.mark.parametrize("route", REPEATABLE)
def test_every_get_route_refuses_a_repeated_parameter(api, objects, route):
    name = "limit" if "limit" in _declared(route) else _declared(route)[0]
    response = api.get(_url(route, objects, f"{name}=1&{name}=2"))
    assert_error(response, 400, "invalid_parameter", param=name)


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/invoices?foo=bar",
        "/api/v1/customers/{external_id}/transactions?currency=usd",
        "/api/v1/customers/{external_id}?expand=wallets",
        "/api/v1/customers/{external_id}/balance?currency=USD",
        "/api/v1/customers/{external_id}/usage?from=2026-04-01&form=2026-04-02",
        "/api/v1/plans?status=published",
    ],
)
def test_the_reported_typos_are_refused(api, objects, url):
    response = api.get(url.format(**objects))
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["code"] == "unknown_parameter"


@pytest.mark.parametrize(
    "route",
    [
        "customers/<str:external_id>/transactions",
        "customers/<str:external_id>/credit-grants",
        "models",
        "meters",
        "plans",
        "invoices",
    ],
)
def test_a_repeated_limit_is_refused(api, objects, route):
    response = api.get(_url(route, objects, "limit=1&limit=2"))
    assert_error(response, 400, "invalid_parameter", param="limit")


def test_a_head_request_is_checked_like_its_get(api, objects):
    assert api.head("/api/v1/meters?limit=1").status_code == 200
    assert api.head(f"/api/v1/meters?{UNKNOWN}=1").status_code == 400


def test_a_post_refuses_query_parameters_and_changes_nothing(api, objects):
    before = LedgerTransaction.objects.count()
    response = api.post(
        f"/api/v1/customers/{objects['external_id']}/top-ups?currency=EUR",
        {"amount": "5.00", "reference": "q-1"},
        format="json",
    )
    error = assert_error(response, 400, "unknown_parameter", param="currency")["error"]
    assert error["message"].endswith("this route takes no query parameters")
    assert LedgerTransaction.objects.count() == before


def test_the_key_is_checked_before_the_parameters(make_key):
    assert_error(make_client().get(f"/api/v1/meters?{UNKNOWN}=1"), 401, "authentication_required")


def test_the_declared_parameters_are_the_schema_s(objects):
    """What a route takes is what the OpenAPI schema says it takes, name for name."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    for route in GET_ROUTES:
        path = "/api/v1/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        operation = schema["paths"][path]["get"]
        in_schema = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        assert in_schema == set(_declared(route)), route
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/api/v1/"):
                assert "400" in operation["responses"], (method, path)


# --- paths -----------------------------------------------------------------------------------


def _nul_path(route: str) -> str:
    """The route with a NUL in each of its text parameters (numbers cannot hold one)."""
    return "/api/v1/" + re.sub(
        r"<(?:(\w+):)?(\w+)>",
        lambda m: "a%00b" if m.group(1) in (None, "str", "path") else "1",
        route,
    )


NUL_ROUTES = [
    (route, method)
    for route, view in ROUTES
    for method in METHODS
    if "<str:" in route and hasattr(view, method)
]


def test_there_are_routes_with_text_parameters():
    assert ("customers/<str:external_id>", "get") in NUL_ROUTES
    assert ("customers/<str:external_id>/upcoming-invoice", "get") in NUL_ROUTES
    assert ("customers/<str:external_id>/top-ups", "post") in NUL_ROUTES


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize(("route", "method"), NUL_ROUTES)
def test_a_nul_in_a_path_is_not_found(api, settings, debug, route, method):
    settings.DEBUG = debug
    api.raise_request_exception = False
    before = LedgerTransaction.objects.count()
    response = getattr(api, method)(_nul_path(route), {}, format="json")
    assert response["Content-Type"].startswith("application/json"), response.content[:300]
    assert_error(response, 404, "not_found")
    assert LedgerTransaction.objects.count() == before


@pytest.mark.parametrize("debug", [False, True])
def test_a_nul_in_any_api_path_is_not_found(settings, debug):
    settings.DEBUG = debug
    client = Client(raise_request_exception=False)
    for path in ("/api/v1/no%00such", "/api/v1/plans/a%00b", "/api/%00", "/api/schema/%00"):
        assert_error(client.get(path), 404, "not_found")


@pytest.mark.parametrize("debug", [False, True])
def test_a_nul_outside_the_api_is_an_html_404(settings, debug):
    settings.DEBUG = debug
    for path in ("/portal/a%00b", "/admin/billing/customer/a%00b/change/", "/api%00"):
        response = Client(raise_request_exception=False).get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert not response["Content-Type"].startswith("application/json")


def test_a_nul_in_a_query_value_is_refused(api, objects):
    response = api.get("/api/v1/invoices?customer=a%00b")
    assert_error(response, 400, "invalid_parameter", param="customer")


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", ["/api", "/api/", "/api/v1", "/api/v1/", "/api/v2/customers"])
def test_the_api_root_and_everything_under_it_answer_json(settings, debug, path):
    settings.DEBUG = debug
    response = Client().get(path)
    assert response["Content-Type"].startswith("application/json"), response.content[:300]
    error = assert_error(response, 404, "not_found")["error"]
    assert "URLconf" not in error["message"]


@pytest.mark.parametrize("debug", [False, True])
def test_a_path_that_only_starts_with_api_is_not_the_api(settings, debug):
    settings.DEBUG = debug
    response = Client().get("/apiary")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_the_usage_route_keeps_its_empty_range_default(api, objects):
    """``from=`` and ``to=`` empty are the default range (not unknown, not refused)."""
    usage = f"/api/v1/customers/{objects['external_id']}/usage"
    response = api.get(usage + "?from=&to=")
    assert response.status_code == 200, response.json()
    assert response.json()["from"] == api.get(usage).json()["from"]


def test_a_known_parameter_still_works(api, objects):
    assert api.get("/api/v1/invoices?limit=1").json()["data"][0]["id"] == objects["invoice_id"]
    assert api.get(f"/api/v1/plans/{objects['code']}?version=1").status_code == 200
    response = api.get(f"/api/v1/customers/{objects['external_id']}/usage?group_by=model")
    assert response.status_code == 200, response.json()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/invoices/abc",
        "/api/v1/invoices/99999999999999999999999",
        "/api/v1/invoices/99999999999999999999999/pdf",
        "/api/v1/holds/99999999999999999999999",
        "/api/v1/subscriptions/99999999999999999999999",
        "/api/v1/plans/" + "x" * 5000,
        "/api/v1/customers/" + "x" * 5000,
    ],
)
def test_odd_path_parameters_are_not_found(api, path):
    api.raise_request_exception = False
    response = api.get(path)
    assert response.status_code == 404, response.content[:300]
    assert response.json()["error"]["type"] == "not_found_error"
