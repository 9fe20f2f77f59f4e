"""A small local Stripe-compatible API server for tests (standard library only).

It speaks enough of the Stripe v1 API for the official ``stripe`` client to create customers,
charge cards through PaymentIntents, run Checkout Sessions and refund payments, and it keeps
Stripe Events that tests can sign and post to the app's webhook endpoint. Amounts are integers
in minor units, as in Stripe, and never pass through a float.

Pointing the official client at it (both work)::

    with StripeServer() as server:
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": server.url})
        customer = client.v1.customers.create({"email": "a@example.com"})

        stripe.api_base = server.url        # module-level API
        stripe.api_key = "sk_test_x"
        stripe.max_network_retries = 0      # optional: the server never needs a retry
        stripe.PaymentIntent.create(amount=1000, currency="usd", customer=customer.id,
                                    confirm=True, off_session=True)

Test helpers: ``attach_payment_method`` (makes a card the customer's default),
``set_card_behaviour`` (make a card start or stop declining), ``complete_checkout`` (what the
customer paying on the hosted page does; ``GET /pay/{id}`` shows a page with a Pay button that
does the same), ``webhook_request`` / ``deliver`` / ``sign_payload`` (signed webhook bodies).
``server.requests`` records every request and ``server.events`` every event.

A webhook through Django's test client::

    body, headers = server.webhook_request(event, "whsec_test")
    client.post("/webhooks/stripe/", body, content_type=headers["Content-Type"],
                headers={"Stripe-Signature": headers["Stripe-Signature"]})

Simplified on purpose: only card payments with automatic capture; test cards are known by id
(``pm_card_visa``, ``pm_card_chargeDeclined`` or any id given to the helpers) and keep their
id when attached; the customer's ``invoice_settings.default_payment_method`` is used when a
PaymentIntent is confirmed without ``payment_method``; no minimum charge amount; only
``mode=payment`` Checkout Sessions; 400 validation errors are not stored for idempotent replay
(402 card declines and successes are); requests are served one at a time under a lock, so two
concurrent requests with one Idempotency-Key replay instead of conflicting (409).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import html
import json
import re
import secrets
import string
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_VERSION = "2026-08-26.dahlia"
CARD_DECLINED = "Your card was declined."
_ID_ALPHABET = string.ascii_letters + string.digits
_RESOURCES = {
    "customers": "customer",
    "payment_intents": "payment_intent",
    "charges": "charge",
    "checkout/sessions": "checkout.session",
    "refunds": "refund",
    "events": "event",
}
_ROUTE = re.compile(rf"/v1/({'|'.join(_RESOURCES)})(?:/([^/]+))?")
_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")


class StripeAPIError(Exception):
    """An error answered in Stripe's shape: ``{"error": {"type": ..., "message": ...}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", **extra):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type, "message": message, **extra}}


def _missing(kind: str, object_id: str, param: str = "id") -> StripeAPIError:
    return StripeAPIError(
        404 if param == "id" else 400, f"No such {kind}: '{object_id}'",
        code="resource_missing", param=param,
    )


def parse_form(body: str) -> dict[str, Any]:
    """Decode Stripe's form encoding (``a[b][0][c]=1``, ``expand[]=x``) into dicts and lists.

    Hashes whose keys are all integers become lists (ordered by index), except ``metadata``.
    Values stay strings; endpoints coerce them with :func:`_int` and :func:`_bool`.
    """
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        match = _KEY.fullmatch(key)
        if not match:
            raise StripeAPIError(400, f"Invalid parameter name: {key}")
        parts = [match[1], *re.findall(r"\[([^\[\]]*)\]", match[2])]
        node = root
        for i, part in enumerate(parts):
            part = part or str(len(node))  # "[]" appends
            if i == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise StripeAPIError(400, f"Invalid hash: {key}", param=parts[0])
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise StripeAPIError(400, f"Invalid array or hash: {key}", param=parts[0])
    return _listify(root)


def _listify(value: Any, key: str = "") -> Any:
    if not isinstance(value, dict):
        return value
    if value and key != "metadata" and all(k.isdigit() for k in value):
        return [_listify(value[k]) for k in sorted(value, key=int)]
    return {k: _listify(v, k) for k, v in value.items()}


def _int(value: Any, param: str, minimum: int = 0) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise StripeAPIError(400, f"Invalid integer: {value}", param=param)
    if int(value) < minimum:
        raise StripeAPIError(400, f"{param} must be at least {minimum}", param=param)
    return int(value)


def _bool(value: Any, param: str) -> bool:
    if value not in ("true", "false"):
        raise StripeAPIError(400, f"Invalid boolean: {value}", param=param)
    return value == "true"


def _currency(value: Any, param: str = "currency") -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-zA-Z]{3}", value):
        raise StripeAPIError(400, f"Invalid currency: {value}", param=param)
    return value.lower()


def _check(params: dict, allowed: str, required: str = "") -> None:
    """Refuse unknown and missing parameters the way Stripe does."""
    for name in params:
        if name not in allowed.split() and name != "expand":
            raise StripeAPIError(400, f"Received unknown parameter: {name}",
                                 code="parameter_unknown", param=name)
    for name in required.split():
        if params.get(name) in (None, ""):
            raise StripeAPIError(400, f"Missing required param: {name}.",
                                 code="parameter_missing", param=name)


def _metadata(value: Any, current: dict | None = None) -> dict[str, str]:
    """Stripe's metadata update: keys merge, an empty value (or ``metadata=``) unsets."""
    if value in (None, ""):
        return {} if value == "" else dict(current or {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise StripeAPIError(400, "Invalid metadata: must be a hash of strings", param="metadata")
    merged = {**(current or {}), **value}
    return {k: v for k, v in merged.items() if v != ""}


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header value for ``payload``: ``t=<ts>,v1=<hex HMAC-SHA256>``."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


class _Handler(BaseHTTPRequestHandler):
    server_version = "StripeTestServer/1.0"

    def do_GET(self) -> None:
        self.server.stripe._handle(self)  # type: ignore[attr-defined]

    do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet; tests read ``StripeServer.requests`` instead."""


class StripeServer:
    """A Stripe API on ``127.0.0.1`` (a free port) served from a daemon thread."""

    def __init__(self, api_version: str = API_VERSION) -> None:
        self.api_version = api_version
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ctx: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        """Forget every object, event, request and idempotency key (the server keeps running)."""
        with self._lock:
            self.requests: list[dict[str, Any]] = []
            self.events: list[dict[str, Any]] = []
            self._objects: dict[str, dict[str, Any]] = {}
            self._idempotent: dict[tuple[str, str], tuple[str, int, bytes]] = {}
            self._cards = {
                "pm_card_visa": "succeed",
                "pm_card_chargeDeclined": "decline",
                # answered without an outcome: still processing, or asking for authentication
                "pm_card_processing": "processing",
                "pm_card_authenticationRequired": "requires_action",
            }
            self._checkout: dict[str, tuple[list[dict], dict]] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> StripeServer:
        """Bind a free port and serve in a daemon thread; returns ``self``."""
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.stripe = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True, name="stripe-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()  # type: ignore[union-attr]
            self._httpd = self._thread = None

    def __enter__(self) -> StripeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the client's ``api_base``."""
        if not self._httpd:
            raise RuntimeError("StripeServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- inspection and test helpers ------------------------------------------------------
    def get(self, object_id: str) -> dict[str, Any]:
        """A copy of any stored object (customer, payment intent, charge, event, ...) by id."""
        with self._lock:
            return copy.deepcopy(self._objects[object_id])

    def objects(self, object_type: str) -> list[dict[str, Any]]:
        """Copies of all objects of one type (``"payment_intent"``, ...), oldest first."""
        with self._lock:
            return [copy.deepcopy(o) for o in self._objects.values() if o["object"] == object_type]

    def events_of(self, event_type: str) -> list[dict[str, Any]]:
        """The events of one type (``"charge.refunded"``, ...), oldest first."""
        with self._lock:
            return [e for e in self.events if e["type"] == event_type]

    def attach_payment_method(self, customer_id: str, pm: str = "pm_card_visa") -> dict:
        """Attach card ``pm`` to the customer as its default; returns the customer."""
        with self._lock:
            customer = self._fetch("customer", customer_id)
            self._cards.setdefault(pm, "succeed")
            customer["invoice_settings"]["default_payment_method"] = pm
            self._emit("customer.updated", customer)
            return copy.deepcopy(customer)

    def set_card_behaviour(self, pm_id: str, behaviour: str) -> None:
        """Make card ``pm_id`` ``"succeed"`` or ``"decline"`` (card_declined) from now on."""
        if behaviour not in ("succeed", "decline"):
            raise ValueError(f"behaviour must be 'succeed' or 'decline', not {behaviour!r}")
        with self._lock:
            self._cards[pm_id] = behaviour

    def complete_checkout(self, session_id: str) -> dict[str, Any]:
        """Pay an open Checkout Session with ``pm_card_visa``; returns the
        ``checkout.session.completed`` event (``ValueError`` if the session is not open)."""
        with self._lock:
            session = self._fetch("checkout.session", session_id)
            if session["status"] != "open":
                raise ValueError(f"checkout session {session_id} is {session['status']}")
            pi_data = self._checkout[session_id][1]
            intent = self._new_intent(
                session["amount_total"], session["currency"], session["customer"],
                pi_data.get("description"), pi_data.get("metadata"),
            )
            self._confirm(intent, "pm_card_visa")
            session.update(status="complete", payment_status="paid", payment_intent=intent["id"])
            return copy.deepcopy(self._emit("checkout.session.completed", session))

    def webhook_request(self, event: dict | str, secret: str) -> tuple[bytes, dict[str, str]]:
        """The body and headers Stripe would POST for ``event`` (an event or its id)."""
        if isinstance(event, str):
            event = self.get(event)
        body = json.dumps(event, indent=2).encode()
        return body, {"Content-Type": "application/json; charset=utf-8",
                      "Stripe-Signature": sign_payload(body, secret)}

    def deliver(self, event: dict | str, url: str, secret: str) -> int:
        """POST the signed ``event`` to ``url`` (like Stripe does); returns the HTTP status."""
        body, headers = self.webhook_request(event, secret)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    # -- HTTP -----------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        """Read one request, answer it under the lock, write the response."""
        url = urlsplit(h.path)
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        key = h.headers.get("Idempotency-Key") if h.command == "POST" else None
        request_id = f"req_{self._token(14)}"
        with self._lock:
            record = {"method": h.command, "path": url.path, "params": {},
                      "idempotency_key": key, "status": None, "replayed": False}
            self.requests.append(record)
            headers = {"Request-Id": request_id, "Idempotency-Key": key or ""}
            ctype = "application/json"
            try:
                record["params"] = params = parse_form(
                    "&".join(filter(None, [url.query, raw.decode()])))
                if url.path.startswith("/pay/"):
                    status, body, ctype, headers = self._pay_page(
                        h.command, url.path.removeprefix("/pay/"))
                else:
                    self._ctx = {"id": request_id, "idempotency_key": key,
                                 "version": h.headers.get("Stripe-Version")}
                    status, body, replayed = self._api(h, url.path, params, key)
                    record["replayed"] = replayed
                    if replayed:
                        headers["Idempotent-Replayed"] = "true"
            except StripeAPIError as error:
                status, body = error.status, self._json(error.body)
            except Exception as error:  # a bug in this module: answer like Stripe's api_error
                status, body = 500, self._json(StripeAPIError(500, repr(error), "api_error").body)
            finally:
                self._ctx = {}
            record["status"] = status
        if status >= 400 and ctype == "application/json":
            headers["Stripe-Should-Retry"] = "false"
        h.send_response(status)
        for name, value in {"Content-Type": ctype, "Content-Length": str(len(body)),
                            **headers}.items():
            if value:
                h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)

    def _api(self, h: BaseHTTPRequestHandler, path: str, params: dict,
             key: str | None) -> tuple[int, bytes, bool]:
        """Authenticate, replay or run one API request: ``(status, body, replayed)``."""
        auth = h.headers.get("Authorization", "")
        api_key = auth.removeprefix("Bearer ").strip()
        if not auth.startswith("Bearer ") or not api_key.startswith(("sk_test_", "rk_test_")):
            message = "You did not provide an API key." if not api_key else \
                f"Invalid API Key provided: {api_key[:8]}****"
            raise StripeAPIError(401, message)
        fingerprint = json.dumps([h.command, path, params], sort_keys=True)
        stored = self._idempotent.get((api_key, key)) if key else None
        if stored and stored[0] != fingerprint:
            raise StripeAPIError(
                400, "Keys for idempotent requests can only be used with the same parameters "
                f"they were first used with. Try using a key other than '{key}' if you meant "
                "to execute a different request.", type="idempotency_error")
        if stored:
            return stored[1], stored[2], True
        try:
            status, body = 200, self._json(self._route(h.command, path, params))
        except StripeAPIError as error:
            status, body = error.status, self._json(error.body)
        if key and (status < 400 or status == 402):  # what ran is replayed, not bad input
            self._idempotent[(api_key, key)] = (fingerprint, status, body)
        return status, body, False

    @staticmethod
    def _json(data: Any) -> bytes:
        return json.dumps(data, indent=2).encode()

    @staticmethod
    def _token(n: int = 24) -> str:
        return "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))

    def _route(self, method: str, path: str, params: dict) -> dict[str, Any]:
        match = _ROUTE.fullmatch(path.rstrip("/"))
        resource, object_id = match.groups() if match else ("", None)
        creators = {"customers": self._save_customer, "payment_intents": self._create_intent,
                    "checkout/sessions": self._create_session, "refunds": self._create_refund}
        if match and method == "GET" and object_id:
            result = self._fetch(_RESOURCES[resource], object_id)
        elif method == "POST" and resource == "customers":
            result = self._save_customer(params, object_id)
        elif method == "POST" and resource in creators and not object_id:
            result = creators[resource](params)
        else:
            raise StripeAPIError(404, f"Unrecognized request URL ({method}: {path}).",
                                 code="resource_missing")
        return self._expand(result, params.get("expand") or [])

    def _expand(self, obj: Any, paths: list[str]) -> Any:
        """Replace ids named by ``expand[]`` paths (``latest_charge``, ``data.customer``)."""
        obj = copy.deepcopy(obj)
        for path in paths:
            self._expand_path(obj, path.split("."))
        return obj

    def _expand_path(self, obj: Any, parts: list[str]) -> None:
        for item in obj if isinstance(obj, list) else [obj]:
            if isinstance(item, dict) and parts[0] in item:
                value = item[parts[0]]
                if isinstance(value, str) and value in self._objects:
                    value = item[parts[0]] = copy.deepcopy(self._objects[value])
                if len(parts) > 1:
                    self._expand_path(value, parts[1:])

    # -- objects and events ---------------------------------------------------------------
    def _new(self, prefix: str, kind: str, **fields: Any) -> dict[str, Any]:
        obj = {"id": f"{prefix}_{self._token()}", "object": kind, "created": int(time.time()),
               "livemode": False, "metadata": {}, **fields}
        self._objects[obj["id"]] = obj
        return obj

    def _fetch(self, kind: str, object_id: str, param: str = "id") -> dict[str, Any]:
        obj = self._objects.get(object_id)
        if obj is None or obj["object"] != kind:
            raise _missing(kind.split(".")[-1], object_id, param)
        return obj

    def _emit(self, event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
        ctx = self._ctx
        event = {
            "id": f"evt_{self._token()}", "object": "event",
            "api_version": ctx.get("version") or self.api_version, "created": int(time.time()),
            "data": {"object": copy.deepcopy(obj)}, "livemode": False, "pending_webhooks": 0,
            "request": {"id": ctx.get("id"), "idempotency_key": ctx.get("idempotency_key")},
            "type": event_type,
        }
        self._objects[event["id"]] = event
        self.events.append(event)
        return event

    # -- customers ------------------------------------------------------------------------
    def _save_customer(self, params: dict, customer_id: str | None = None) -> dict[str, Any]:
        """Create a customer, or update one: name, email, metadata, default card, ..."""
        _check(params, "name email description phone metadata invoice_settings")
        settings = params.get("invoice_settings") or {}
        if not isinstance(settings, dict):
            raise StripeAPIError(400, "Invalid hash", param="invoice_settings")
        customer = self._fetch("customer", customer_id) if customer_id else None
        metadata = _metadata(params.get("metadata"), customer and customer["metadata"])
        customer = customer or self._new(
            "cus", "customer", name=None, email=None, description=None, phone=None,
            address=None, balance=0, currency=None, default_source=None, delinquent=False,
            invoice_settings={"custom_fields": None, "default_payment_method": None,
                              "footer": None, "rendering_options": None},
        )
        customer["metadata"] = metadata
        for field in ("name", "email", "description", "phone"):
            if field in params:
                customer[field] = params[field] or None
        if "default_payment_method" in settings:
            pm = customer["invoice_settings"]["default_payment_method"] = (
                settings["default_payment_method"] or None)
            if pm:
                self._cards.setdefault(pm, "succeed")
        self._emit("customer.updated" if customer_id else "customer.created", customer)
        return customer

    # -- payment intents and charges ------------------------------------------------------
    def _create_intent(self, params: dict) -> dict[str, Any]:
        """Create a PaymentIntent; with ``confirm=true`` charge it now (all checks come first)."""
        _check(params, "amount currency customer payment_method confirm off_session metadata "
                       "description receipt_email payment_method_types setup_future_usage "
                       "statement_descriptor automatic_payment_methods", "amount currency")
        amount, currency = _int(params["amount"], "amount", 1), _currency(params["currency"])
        metadata, confirm = _metadata(params.get("metadata")), _bool(
            params.get("confirm", "false"), "confirm")
        _bool(params.get("off_session", "false"), "off_session")
        customer, pm = params.get("customer"), params.get("payment_method")
        if customer and not pm:
            pm = self._fetch("customer", customer, "customer")["invoice_settings"][
                "default_payment_method"]
        elif customer:
            self._fetch("customer", customer, "customer")
        if confirm and not pm:
            raise StripeAPIError(
                400, "You cannot confirm this PaymentIntent because it's missing a payment "
                "method. Pass payment_method or give the customer a default payment method.",
                code="payment_intent_unexpected_state", param="payment_method")
        if pm and pm not in self._cards:
            raise _missing("PaymentMethod", pm, "payment_method")
        intent = self._new_intent(amount, currency, customer, params.get("description"), metadata)
        if params.get("payment_method"):
            intent.update(payment_method=pm, status="requires_confirmation")
        return self._confirm(intent, pm) if confirm else intent

    def _new_intent(self, amount: int, currency: str, customer: str | None,
                    description: str | None, metadata: dict | None) -> dict[str, Any]:
        intent = self._new(
            "pi", "payment_intent", amount=amount, amount_capturable=0, amount_received=0,
            capture_method="automatic", confirmation_method="automatic", currency=currency,
            customer=customer, description=description, last_payment_error=None,
            latest_charge=None, next_action=None, payment_method=None,
            payment_method_types=["card"], status="requires_payment_method",
            canceled_at=None, cancellation_reason=None, setup_future_usage=None,
        )
        intent["client_secret"] = f"{intent['id']}_secret_{self._token()}"
        intent["metadata"] = dict(metadata or {})
        self._emit("payment_intent.created", intent)
        return intent

    def _confirm(self, intent: dict, pm: str) -> dict[str, Any]:
        """Charge the (known) card ``pm`` at once: succeed, or record the decline and answer 402
        (or, for the cards so marked, answer the intent ``processing`` / ``requires_action``)."""
        if self._cards[pm] in ("processing", "requires_action"):
            intent.update(status=self._cards[pm], payment_method=pm)
            if self._cards[pm] == "requires_action":
                intent["next_action"] = {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
            return intent
        ok = self._cards[pm] == "succeed"
        charge = self._new(
            "ch", "charge", amount=intent["amount"], currency=intent["currency"],
            amount_captured=intent["amount"] if ok else 0, amount_refunded=0, captured=ok,
            customer=intent["customer"], description=intent["description"], paid=ok,
            metadata=dict(intent["metadata"]), payment_intent=intent["id"], payment_method=pm,
            refunded=False, status="succeeded" if ok else "failed",
            failure_code=None if ok else "card_declined",
            failure_message=None if ok else CARD_DECLINED,
            refunds={"object": "list", "data": [], "has_more": False, "total_count": 0,
                     "url": "/v1/refunds"},
        )
        intent["latest_charge"] = charge["id"]
        if ok:
            intent.update(status="succeeded", amount_received=intent["amount"],
                          payment_method=pm, last_payment_error=None)
            self._emit("charge.succeeded", charge)
            self._emit("payment_intent.succeeded", intent)
            return intent
        error = {"type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
                 "message": CARD_DECLINED, "charge": charge["id"],
                 "doc_url": "https://docs.stripe.com/error-codes/card-declined",
                 "payment_method": {"id": pm, "object": "payment_method", "type": "card"}}
        intent.update(status="requires_payment_method", payment_method=None,
                      last_payment_error=error)
        self._emit("charge.failed", charge)
        self._emit("payment_intent.payment_failed", intent)
        raise StripeAPIError(402, **error, payment_intent=copy.deepcopy(intent))

    # -- checkout -------------------------------------------------------------------------
    def _create_session(self, params: dict) -> dict[str, Any]:
        _check(params, "mode customer customer_email line_items success_url cancel_url "
                       "metadata client_reference_id payment_intent_data "
                       "payment_method_types locale", "mode line_items")
        if params["mode"] != "payment":
            raise StripeAPIError(400, "Only mode=payment is supported here.", param="mode")
        if params.get("customer"):
            self._fetch("customer", params["customer"], "customer")
        items, currencies = [], set()
        for i, item in enumerate(params["line_items"]):
            data = item.get("price_data") or {}
            name = (data.get("product_data") or {}).get("name")
            if not name:
                raise StripeAPIError(400, "Missing required param: product_data[name].",
                                     param=f"line_items[{i}][price_data][product_data][name]")
            currencies.add(_currency(data.get("currency"), f"line_items[{i}][currency]"))
            unit = _int(data.get("unit_amount"), f"line_items[{i}][unit_amount]")
            quantity = _int(item.get("quantity"), f"line_items[{i}][quantity]", 1)
            items.append({"description": name, "quantity": quantity, "unit_amount": unit,
                          "amount_total": unit * quantity})
        if len(currencies) != 1:
            raise StripeAPIError(400, "All line items must use one currency.",
                                 param="line_items")
        total = sum(item["amount_total"] for item in items)
        session = self._new(
            "cs_test", "checkout.session", mode="payment", status="open",
            payment_status="unpaid", amount_subtotal=total, amount_total=total,
            currency=currencies.pop(), customer=params.get("customer"),
            customer_email=params.get("customer_email"),
            client_reference_id=params.get("client_reference_id"),
            metadata=_metadata(params.get("metadata")), payment_intent=None,
            success_url=params.get("success_url"), cancel_url=params.get("cancel_url"),
        )
        session.update(url=f"{self.url}/pay/{session['id']}",
                       expires_at=session["created"] + 86400)
        pi_data = params.get("payment_intent_data") or {}
        self._checkout[session["id"]] = (items, pi_data)
        return session

    def _pay_page(self, method: str, session_id: str) -> tuple[int, bytes, str, dict]:
        """The hosted payment page: ``GET`` shows a Pay button, ``POST`` pays and redirects."""
        session = self._objects.get(session_id)
        if not session or session["object"] != "checkout.session":
            return 404, b"<h1>No such checkout session</h1>", "text/html", {}
        if method == "POST":
            if session["status"] == "open":
                self.complete_checkout(session_id)
            target = (session["success_url"] or "").replace("{CHECKOUT_SESSION_ID}", session_id)
            if target:
                return 303, b"", "text/html", {"Location": target}
            return 200, b"<h1>Payment complete</h1>", "text/html", {}
        esc = html.escape
        rows = "".join(f"<li>{esc(i['description'])} &times; {i['quantity']}</li>"
                       for i in self._checkout[session_id][0])
        cancel = session["cancel_url"]
        page = (f"<!doctype html><title>Pay</title><h1>Checkout</h1><ul>{rows}</ul>"
                f"<p>Total: {session['amount_total']} {esc(session['currency'].upper())} "
                f"(minor units) &middot; {esc(session['payment_status'])}</p>"
                f'<form method="post" action="/pay/{esc(session_id)}">'
                f'<button type="submit" id="pay">Pay</button></form>'
                + (f'<a href="{esc(cancel)}">Cancel</a>' if cancel else ""))
        return 200, page.encode(), "text/html; charset=utf-8", {}

    # -- refunds --------------------------------------------------------------------------
    def _create_refund(self, params: dict) -> dict[str, Any]:
        _check(params, "payment_intent charge amount reason metadata")
        if params.get("charge"):
            charge = self._fetch("charge", params["charge"], "charge")
        elif params.get("payment_intent"):
            intent = self._fetch("payment_intent", params["payment_intent"], "payment_intent")
            charge = self._objects.get(intent["latest_charge"] or "")
            if not charge or charge["status"] != "succeeded":
                raise StripeAPIError(400, f"PaymentIntent {intent['id']} has no successful "
                                     "charge to refund.", param="payment_intent")
        else:
            raise StripeAPIError(400, "One of charge or payment_intent is required.",
                                 code="parameter_missing", param="payment_intent")
        left = charge["amount"] - charge["amount_refunded"]
        amount = _int(params["amount"], "amount", 1) if "amount" in params else left
        if left == 0:
            raise StripeAPIError(400, f"Charge {charge['id']} has already been refunded.",
                                 code="charge_already_refunded")
        if amount > left:
            raise StripeAPIError(400, f"Refund amount ({amount}) is greater than unrefunded "
                                 f"amount on charge ({left}).", param="amount")
        refund = self._new(
            "re", "refund", amount=amount, charge=charge["id"], currency=charge["currency"],
            payment_intent=charge["payment_intent"], reason=params.get("reason"),
            status="succeeded", metadata=_metadata(params.get("metadata")),
        )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        refunds = charge["refunds"]
        refunds["data"].insert(0, copy.deepcopy(refund))
        refunds["total_count"] += 1
        self._emit("refund.created", refund)
        self._emit("charge.refunded", charge)
        return refund
