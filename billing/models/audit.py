"""The audit trail of the staff-facing models: django-pghistory triggers.

Each tracked model gets an event model (``<Model>Event``: a snapshot of the row, its label
``insert``/``update``/``delete``, the time, and the request context — staff user, URL and
the reason typed, from ``billing.web.staff.AdminAuditContextMiddleware``). The triggers run
in PostgreSQL, so a change is recorded whichever path made it: the admin, the API, a
command, a shell. Event tables are append-only (``PGHISTORY_APPEND_ONLY``).

What must not change: no trigger on the hot ingest tables (usage events, the inbox,
counters, ledger transactions, entries, balances, holds, alert states) — the ledger is
immutable already and rating must stay a few statements. Columns that rating, delivery or
authentication write on their own (a grant's ``remaining``, an API key's ``last_used_at``,
an endpoint's failure counters, an auto top-up's attempt bookkeeping, ``updated_at``) are
left out of the snapshots, and so an UPDATE that changes only them records nothing (the
trigger's WHEN clause compares tracked columns only)."""

from __future__ import annotations

import pghistory
import pghistory.models
from django.conf import settings
from django.db import models

from billing.models.alerts import Alert
from billing.models.api_keys import APIKey
from billing.models.approvals import AdjustmentRequest
from billing.models.auto_top_up import AutoTopUp
from billing.models.credits import CreditGrant
from billing.models.currencies import CurrencySetting
from billing.models.customers import Customer, PortalMember, Wallet
from billing.models.plan_credits import PlanCreditGrant
from billing.models.plans import Meter, Plan, PlanCharge, PriceTier
from billing.models.projects import Project
from billing.models.subscriptions import MarginOverride, Subscription
from billing.models.webhooks import WebhookEndpoint


def row_events() -> tuple[pghistory.RowEvent, ...]:
    return (pghistory.InsertEvent(), pghistory.UpdateEvent(), pghistory.DeleteEvent())


# model → the columns not recorded (written by machinery, or secret)
TRACKED: list[tuple[type, list[str]]] = [
    (Customer, ["updated_at"]),
    (Wallet, []),
    (PortalMember, []),
    (Plan, []),
    (PlanCharge, []),
    (PriceTier, []),
    (PlanCreditGrant, []),
    (Meter, []),
    (Subscription, ["invoiced_through", "current_period_start", "current_period_end"]),
    (MarginOverride, []),
    (CreditGrant, ["remaining"]),
    (APIKey, ["last_used_at", "secret_hash"]),
    (Alert, ["updated_at"]),
    (WebhookEndpoint, ["secret", "consecutive_failures", "failing_since", "updated_at"]),
    (AutoTopUp, ["consecutive_failures", "last_attempt_at", "skipped_reason", "updated_at"]),
    (AdjustmentRequest, []),
    (Project, ["updated_at"]),  # a budget's limit is a setting finance changes
    (CurrencySetting, ["updated_at"]),  # how a currency's invoices round
]


def _created_at_index(model: type) -> models.Index:
    """The audit list reads each event table newest first (billing.admin.audit_page): a
    page of the trail is a page of each table's index, not a sort of every event."""
    name = f"audit_{model.__name__.lower()}_at"[:30]
    return models.Index(fields=["pgh_created_at", "pgh_id"], name=name)


def previous_version_index(name: str) -> models.Index:
    """An event's previous version (pghistory's snapshot diff, read for the page's rows) is
    ``WHERE pgh_obj_id = … AND pgh_id < … ORDER BY pgh_id DESC LIMIT 1``: with this index
    that is one index entry whatever the statistics say. Without it the planner chose
    between the object's index and a sort, or a backward walk of the primary key filtering
    every other object's events — the walk when the column statistics were missing or it
    avoided a sort: 20,000 rows per event, a million for a page of the trail."""
    return models.Index(fields=["pgh_obj", "pgh_id"], name=f"audit_{name}_prev"[:30])


for _model, _excluded in TRACKED:
    pghistory.track(
        *row_events(),
        exclude=_excluded,
        model_name=f"{_model.__name__}Event",
        meta={
            "indexes": [
                _created_at_index(_model),
                previous_version_index(_model.__name__.lower()),
            ]
        },
    )(_model)


class AuditEvent(pghistory.models.Events):
    """Every tracked model's events in one list (the admin's audit trail): pghistory's
    aggregate of the event tables, with what the admin request recorded in its context."""

    user = pghistory.ProxyField(
        "pgh_context__user",
        models.ForeignKey(
            settings.AUTH_USER_MODEL,
            on_delete=models.DO_NOTHING,
            null=True,
            help_text="The staff user whose request made the change.",
        ),
    )
    url = pghistory.ProxyField(
        "pgh_context__url", models.TextField(null=True, help_text="The page that made it.")
    )
    reason = pghistory.ProxyField(
        "pgh_context__reason",
        models.TextField(null=True, help_text="The reason typed on the form, if it had one."),
    )

    class Meta:
        proxy = True
        app_label = "billing"
        verbose_name = "audit event"
        verbose_name_plural = "audit trail"

    def __str__(self) -> str:
        return f"{self.pgh_label} of {self.pgh_obj_model} #{self.pgh_obj_id}"
