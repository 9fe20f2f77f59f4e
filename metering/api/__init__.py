"""Metering's API: usage events in and out, balance checks and holds before compute, the
usage report and the model prices. Built on the API's shared parts in ``billing.api``
(authentication, errors, idempotency, pagination, strict parsing)."""
