"""Outbound webhooks: the events of the outbox (``billing.outbox``) delivered to the
seller's endpoints, signed the Standard Webhooks way, retried with backoff for about three
days, each attempt logged with its response (docs/webhooks.md).

The rest of the project uses the names below, never the modules."""

from billing.webhooks.delivery import (
    SweepResult,
    body_of,
    fan_out,
    payload_of,
    queue_fan_out,
    resend_delivery,
    resend_event,
    retry_delay,
    send_delivery,
    send_due,
    signed_headers,
    sweep,
)
from billing.webhooks.endpoints import (
    WebhookDeliveryNotFound,
    WebhookEndpointNotFound,
    WebhookEventNotFound,
    WebhookURLRefused,
    check_event_types,
    check_url,
    create_endpoint,
    delete_endpoint,
    disable_endpoint,
    enable_endpoint,
    get_endpoint,
    new_secret,
    rotate_secret,
    update_endpoint,
)
from billing.webhooks.payloads import credit_grant_data, moment, money, subscription_data

__all__ = [
    "SweepResult",
    "body_of",
    "fan_out",
    "payload_of",
    "queue_fan_out",
    "resend_delivery",
    "resend_event",
    "retry_delay",
    "send_delivery",
    "send_due",
    "signed_headers",
    "sweep",
    "WebhookDeliveryNotFound",
    "WebhookEndpointNotFound",
    "WebhookEventNotFound",
    "WebhookURLRefused",
    "check_event_types",
    "check_url",
    "create_endpoint",
    "delete_endpoint",
    "disable_endpoint",
    "enable_endpoint",
    "get_endpoint",
    "new_secret",
    "rotate_secret",
    "update_endpoint",
    "credit_grant_data",
    "money",
    "moment",
    "subscription_data",
]
