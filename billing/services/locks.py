"""The customer usage lock and the plan version lock: PostgreSQL advisory locks held until the
transaction ends. Rating takes a customer's usage lock before anything else (metering.rating);
so does every write that changes what its usage is rated against."""

from __future__ import annotations

from django.db import connection

# pg_advisory_xact_lock(customer id): held by whatever rates a customer's usage
# (metering.rating) or changes what it is rated against (a plan change, a cancellation), so
# that rating never prices an event against a subscription that is changing under it.
# The key is the customer's bigint id itself, in PostgreSQL's single-bigint key space (which
# never overlaps the two-int space): every other advisory lock of the project uses the
# two-int form (namespace, key), so nothing else can take a usage lock by accident. Never
# cast the id to int: customer ids are bigints and pass 2^31.
PLAN_VERSION_LOCK = 4243  # (namespace, hashtext(plan code)): publish_plan


def lock_customer_usage(
    customer_ids: list[int],
    *,
    wait_for_flush: bool = True,
    settings: tuple[tuple[str, str], ...] = (),
) -> None:
    """Take the usage locks of these customers, in id order, until the transaction ends.

    With ``wait_for_flush=False`` the transaction also commits without waiting for its WAL
    to reach the disk (``synchronous_commit`` off for it alone, set in the same statement):
    for a batch's parts before its last, whose synchronous commit flushes them all.
    ``settings``: other (name, value) settings for the rest of the transaction alone, set
    in the same statement (rating's planner costs: metering.rating.sql)."""
    pairs = settings if wait_for_flush else (("synchronous_commit", "off"), *settings)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT "
            + "set_config(%s, %s, true), " * len(pairs)
            + "pg_advisory_xact_lock(s.id) FROM "
            "(SELECT unnest(%s::bigint[]) AS id ORDER BY 1) AS s",
            [*(value for pair in pairs for value in pair), sorted(set(customer_ids))],
        )


def lock_subscription_customer(subscription_id: int) -> int | None:
    """Take the usage lock of the subscription's customer (as ``lock_customer_usage``) and
    return the customer's id; None if there is no such subscription."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT s.customer_id, pg_advisory_xact_lock(s.customer_id) "
            "FROM billing_subscription s WHERE s.id = %s",
            [subscription_id],
        )
        row = cursor.fetchone()
    return row[0] if row else None
