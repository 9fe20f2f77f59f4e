"""The local Stripe server, driven by the official ``stripe`` client (no database needed)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe

from tests.stripe_server import StripeServer, parse_form, sign_payload

KEY = "sk_test_local"
SECRET = "whsec_test_secret"


@pytest.fixture
def server():
    with StripeServer() as running:
        yield running


@pytest.fixture
def client(server):
    return stripe.StripeClient(KEY, base_addresses={"api": server.url}, max_network_retries=0)


@pytest.fixture
def customer(client, server):
    created = client.v1.customers.create({"name": "Ada", "email": "ada@example.com",
                                          "metadata": {"account_id": "7"}})
    server.attach_payment_method(created.id)
    return created


def _open(request: urllib.request.Request | str):
    """urllib without proxies or redirects: returns (status, headers, body)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_parse_form_builds_nested_dicts_and_lists():
    params = parse_form(
        "metadata[invoice_id]=7&metadata[0]=x&line_items[0][price_data][currency]=usd"
        "&line_items[0][quantity]=2&line_items[1][quantity]=1&expand[]=a&expand[]=b"
        "&expand2[0]=c&confirm=true"
    )
    assert params == {
        "metadata": {"invoice_id": "7", "0": "x"},
        "line_items": [{"price_data": {"currency": "usd"}, "quantity": "2"}, {"quantity": "1"}],
        "expand": ["a", "b"],
        "expand2": ["c"],
        "confirm": "true",
    }


def test_customer_create_retrieve_update(client, server):
    created = client.v1.customers.create({
        "name": "Ada", "email": "ada@example.com", "metadata": {"account_id": "7"},
        "invoice_settings": {"default_payment_method": "pm_card_visa"},
    })
    assert created.id.startswith("cus_") and created.object == "customer"
    assert created.livemode is False and isinstance(created.created, int)
    assert created.invoice_settings.default_payment_method == "pm_card_visa"

    client.v1.customers.update(created.id, {"name": "Ada L.", "metadata": {"plan": "pro"}})
    fetched = client.v1.customers.retrieve(created.id)
    assert (fetched.name, fetched.email) == ("Ada L.", "ada@example.com")
    assert fetched.metadata.to_dict() == {"account_id": "7", "plan": "pro"}

    server.attach_payment_method(created.id, "pm_card_chargeDeclined")
    fetched = client.v1.customers.retrieve(created.id)
    assert fetched.invoice_settings.default_payment_method == "pm_card_chargeDeclined"

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.customers.retrieve("cus_nope")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.customers.create({"nickname": "x"})  # type: ignore[typeddict-unknown-key]
    assert unknown.value.param == "nickname"


def test_confirmed_payment_intent_succeeds_with_the_default_card(client, server, customer):
    intent = client.v1.payment_intents.create({
        "amount": 1999, "currency": "usd", "customer": customer.id, "confirm": True,
        "off_session": True, "metadata": {"invoice_id": "7"}, "description": "Invoice 7",
    })
    assert intent.id.startswith("pi_") and intent.status == "succeeded"
    assert intent.amount == 1999 and intent.amount_received == 1999
    assert intent.payment_method == "pm_card_visa" and intent.latest_charge.startswith("ch_")
    assert intent.metadata.to_dict() == {"invoice_id": "7"}

    fetched = client.v1.payment_intents.retrieve(intent.id, {"expand": ["latest_charge"]})
    assert fetched.latest_charge.id == intent.latest_charge
    assert fetched.latest_charge.status == "succeeded"
    assert fetched.latest_charge.amount == 1999
    succeeded = server.events_of("payment_intent.succeeded")
    assert [e["data"]["object"]["id"] for e in succeeded] == [intent.id]
    assert client.v1.events.retrieve(succeeded[0]["id"]).type == "payment_intent.succeeded"


def test_declining_card_raises_card_error_carrying_the_intent(client, server, customer):
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create({
            "amount": 500, "currency": "usd", "customer": customer.id,
            "payment_method": "pm_card_chargeDeclined", "confirm": True, "off_session": True,
        })
    error = declined.value
    assert error.http_status == 402 and error.code == "card_declined"
    assert error.error.decline_code == "generic_decline"
    intent = error.error.payment_intent
    assert isinstance(intent, stripe.PaymentIntent)
    assert intent.status == "requires_payment_method"
    assert intent.last_payment_error.code == "card_declined"
    assert server.get(intent.id)["status"] == "requires_payment_method"
    failed = server.events_of("payment_intent.payment_failed")
    assert [e["data"]["object"]["id"] for e in failed] == [intent.id]


def test_a_card_can_start_and_stop_declining(client, server, customer):
    params = {"amount": 700, "currency": "usd", "customer": customer.id, "confirm": True}
    server.set_card_behaviour("pm_card_visa", "decline")
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.create(params)
    server.set_card_behaviour("pm_card_visa", "succeed")
    assert client.v1.payment_intents.create(params).status == "succeeded"
    with pytest.raises(ValueError):
        server.set_card_behaviour("pm_card_visa", "maybe")


def test_confirming_without_any_payment_method_is_refused(client, server):
    bare = client.v1.customers.create({"email": "nocard@example.com"})
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.create(
            {"amount": 100, "currency": "usd", "customer": bare.id, "confirm": True})
    assert refused.value.http_status == 400 and refused.value.param == "payment_method"
    assert server.objects("payment_intent") == []  # refused before anything was created


def test_same_idempotency_key_creates_one_intent(client, server, customer):
    params = {"amount": 1200, "currency": "usd", "customer": customer.id, "confirm": True}
    first = client.v1.payment_intents.create(params, {"idempotency_key": "invoice-7-attempt-1"})
    again = client.v1.payment_intents.create(params, {"idempotency_key": "invoice-7-attempt-1"})
    assert again.id == first.id
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert again.last_response.data == first.last_response.data
    assert len(server.objects("payment_intent")) == 1
    assert len(server.events_of("payment_intent.succeeded")) == 1
    posts = [r for r in server.requests if r["path"] == "/v1/payment_intents"]
    assert [(r["idempotency_key"], r["replayed"]) for r in posts] == [
        ("invoice-7-attempt-1", False), ("invoice-7-attempt-1", True)]
    assert posts[0]["params"]["amount"] == "1200"

    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create({**params, "amount": 1300},
                                         {"idempotency_key": "invoice-7-attempt-1"})
    assert len(server.objects("payment_intent")) == 1


def test_concurrent_retries_with_one_key_create_one_intent(client, server, customer):
    params = {"amount": 800, "currency": "usd", "customer": customer.id, "confirm": True}
    ids = []

    def pay():
        ids.append(client.v1.payment_intents.create(params, {"idempotency_key": "k-race"}).id)

    threads = [threading.Thread(target=pay) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert len(server.objects("payment_intent")) == 1


def test_a_replayed_decline_is_the_same_decline(client, server, customer):
    server.set_card_behaviour("pm_card_visa", "decline")
    params = {"amount": 900, "currency": "usd", "customer": customer.id, "confirm": True}
    errors = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as declined:
            client.v1.payment_intents.create(params, {"idempotency_key": "k-decline"})
        errors.append(declined.value)
    assert errors[0].http_body == errors[1].http_body
    assert len(server.objects("payment_intent")) == 1


def _session(client, customer, **extra):
    return client.v1.checkout.sessions.create({
        "mode": "payment", "customer": customer.id,
        "line_items": [
            {"price_data": {"currency": "usd", "unit_amount": 1500,
                            "product_data": {"name": "Credits"}}, "quantity": 2},
            {"price_data": {"currency": "usd", "unit_amount": 250,
                            "product_data": {"name": "Fee"}}, "quantity": 1},
        ],
        "success_url": "https://app.test/paid?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "https://app.test/cancelled", "client_reference_id": "topup-9",
        "metadata": {"topup_id": "9"}, "payment_intent_data": {"metadata": {"topup_id": "9"}},
        **extra,
    })


def test_checkout_session_completed_via_helper(client, server, customer):
    session = _session(client, customer)
    assert session.id.startswith("cs_") and session.object == "checkout.session"
    assert session.url == f"{server.url}/pay/{session.id}"
    assert (session.status, session.payment_status) == ("open", "unpaid")
    assert (session.amount_total, session.currency) == (3250, "usd")

    event = server.complete_checkout(session.id)
    assert event["type"] == "checkout.session.completed" and event["object"] == "event"
    assert event["id"].startswith("evt_") and event["livemode"] is False
    completed = event["data"]["object"]
    assert (completed["status"], completed["payment_status"]) == ("complete", "paid")
    assert completed["client_reference_id"] == "topup-9"
    intent = client.v1.payment_intents.retrieve(completed["payment_intent"])
    assert intent.status == "succeeded" and intent.amount == 3250
    assert intent.metadata.to_dict() == {"topup_id": "9"}

    fetched = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["payment_intent"]})
    assert fetched.payment_status == "paid" and fetched.payment_intent.id == intent.id
    with pytest.raises(ValueError):
        server.complete_checkout(session.id)


def test_hosted_pay_page_completes_the_session(client, server, customer):
    session = _session(client, customer)
    status, _, page = _open(session.url)
    assert status == 200 and b'<form method="post"' in page and b"Pay</button>" in page
    status, headers, _ = _open(urllib.request.Request(session.url, data=b"", method="POST"))
    assert status == 303
    assert headers["Location"] == f"https://app.test/paid?session={session.id}"
    assert client.v1.checkout.sessions.retrieve(session.id).status == "complete"
    assert len(server.events_of("checkout.session.completed")) == 1


def test_refunds_emit_charge_refunded_and_over_refunds_are_refused(client, server, customer):
    intent = client.v1.payment_intents.create(
        {"amount": 1000, "currency": "usd", "customer": customer.id, "confirm": True})
    refund = client.v1.refunds.create({"payment_intent": intent.id, "amount": 300})
    assert refund.id.startswith("re_") and refund.status == "succeeded"
    assert (refund.amount, refund.payment_intent) == (300, intent.id)
    assert client.v1.refunds.retrieve(refund.id).charge == intent.latest_charge

    charge = server.events_of("charge.refunded")[-1]["data"]["object"]
    assert charge["object"] == "charge" and charge["payment_intent"] == intent.id
    assert (charge["amount"], charge["amount_refunded"], charge["refunded"]) == (1000, 300, False)
    assert [r["id"] for r in charge["refunds"]["data"]] == [refund.id]

    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create({"payment_intent": intent.id, "amount": 701})
    assert too_much.value.http_status == 400 and too_much.value.param == "amount"

    rest = client.v1.refunds.create({"payment_intent": intent.id})  # the whole remainder
    assert rest.amount == 700
    charge = server.events_of("charge.refunded")[-1]["data"]["object"]
    assert (charge["amount_refunded"], charge["refunded"]) == (1000, True)
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.refunds.create({"payment_intent": intent.id, "amount": 1})
    assert again.value.code == "charge_already_refunded"


def test_webhook_request_is_what_construct_event_accepts(client, server, customer):
    event = server.complete_checkout(_session(client, customer).id)
    body, headers = server.webhook_request(event, SECRET)
    assert headers["Content-Type"].startswith("application/json")
    parsed = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SECRET)
    assert parsed.id == event["id"] and parsed.type == "checkout.session.completed"
    assert parsed.data.object.payment_status == "paid"

    tampered = body.replace(b'"paid"', b'"unpaid"')
    assert tampered != body
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, headers["Stripe-Signature"], SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_wrong")


def test_sign_payload_matches_the_client_scheme():
    payload = b'{"id": "evt_1"}'
    expected = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), SECRET, timestamp=1_700_000_000)
    assert sign_payload(payload, SECRET, 1_700_000_000) == expected
    with pytest.raises(stripe.SignatureVerificationError):  # too old for the default tolerance
        stripe.Webhook.construct_event(payload, expected, SECRET)


def test_deliver_posts_the_signed_event(client, server, customer):
    intent = client.v1.payment_intents.create(
        {"amount": 400, "currency": "usd", "customer": customer.id, "confirm": True})
    event = server.events_of("payment_intent.succeeded")[-1]
    received = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(stripe.Webhook.construct_event(
                body, self.headers["Stripe-Signature"], SECRET))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    app = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{app.server_address[1]}/webhooks/stripe"
        assert server.deliver(event, url, SECRET) == 204
    finally:
        app.shutdown()
        app.server_close()
    assert received[0].data.object.id == intent.id


def test_authentication_and_unknown_routes(client, server):
    bad = stripe.StripeClient("sk_live_nope", base_addresses={"api": server.url},
                              max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.customers.create({"email": "x@example.com"})
    status, _, body = _open(f"{server.url}/v1/customers")
    assert status == 401 and json.loads(body)["error"]["type"] == "invalid_request_error"

    request = urllib.request.Request(f"{server.url}/v1/nothing_here",
                                     headers={"Authorization": f"Bearer {KEY}"})
    status, _, body = _open(request)
    error = json.loads(body)["error"]
    assert status == 404 and (error["type"], error["code"]) == (
        "invalid_request_error", "resource_missing")
    assert server.objects("customer") == []


def test_module_level_configuration(server, monkeypatch):
    monkeypatch.setattr(stripe, "api_base", server.url)
    monkeypatch.setattr(stripe, "api_key", KEY)
    monkeypatch.setattr(stripe, "max_network_retries", 0)
    customer = stripe.Customer.create(email="module@example.com")
    server.attach_payment_method(customer.id)
    intent = stripe.PaymentIntent.create(amount=250, currency="eur", customer=customer.id,
                                         confirm=True, off_session=True)
    assert intent.status == "succeeded" and intent.currency == "eur"
    assert stripe.PaymentIntent.retrieve(intent.id).latest_charge == intent.latest_charge
    with pytest.raises(stripe.CardError) as declined:
        stripe.PaymentIntent.create(amount=250, currency="eur", customer=customer.id,
                                    payment_method="pm_card_chargeDeclined", confirm=True)
    assert declined.value.error.payment_intent.status == "requires_payment_method"
