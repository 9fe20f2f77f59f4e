"""The demo's webhook receiver (development only): ``POST /dev/webhook-receiver/`` checks the
Standard Webhooks signature against the secret of the endpoints that point at it, logs what
it got and answers 200 with a short JSON summary — which the delivery log keeps as the
response — or 400 when no endpoint's secret verifies the request.

``make run``'s demo data (``seed_demo``) makes an endpoint subscribed to every event that
points here, so the admin's webhook deliveries show real, successful deliveries. With
``DEBUG`` off (production) the route answers 404 and verifies nothing."""

from __future__ import annotations

import json
import logging
import os

from django.conf import settings
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from standardwebhooks import Webhook, WebhookVerificationError

from billing.models import WebhookEndpoint

log = logging.getLogger(__name__)

PATH = "dev/webhook-receiver/"


def receiver_url() -> str:
    """The receiver's URL on the web server ``make run`` starts (its ``HOST`` and ``PORT``)."""
    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "8000")
    return f"http://{host}:{port}/{PATH}"


@csrf_exempt
@require_POST
def receive(request: HttpRequest) -> JsonResponse:
    if not settings.DEBUG:
        raise Http404
    body = request.body
    headers = {name.lower(): value for name, value in request.headers.items()}
    endpoints = WebhookEndpoint.objects.filter(url__endswith="/" + PATH).order_by("pk")
    for endpoint in endpoints:
        try:
            payload = Webhook(endpoint.secret).verify(body, headers)
        except WebhookVerificationError:
            continue
        summary = {
            "received": payload.get("type"),
            "webhook_id": headers.get("webhook-id"),
            "signature": "valid",
            "endpoint": endpoint.pk,
        }
        log.info("demo webhook receiver: %s", json.dumps(summary))
        return JsonResponse(summary)
    log.warning("demo webhook receiver: a request no endpoint's secret verifies")
    return JsonResponse({"error": "invalid signature"}, status=400)
