"""The audit trail in the admin: every tracked model's changes in one searchable list
(``billing.models.AuditEvent``: django-pghistory's events with the request's staff user,
page and reason), filtered by user, action, model, object and date. The "Audit trail" link
on a tracked object's page (a customer, a plan, …) opens this list for that object; the
events are read-only, as the tables themselves are append-only."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from pghistory.admin import EventsAdmin

from billing.admin.audit_page import AuditChangeList, AuditCountPaginator
from billing.admin.common import decimal_text, timestamp
from billing.models import AuditEvent


class StaffUserFilter(admin.SimpleListFilter):
    title = "staff user"
    parameter_name = "user"

    def lookups(self, request, model_admin):
        users = get_user_model().objects.filter(is_staff=True).order_by("username")
        return [(str(user.pk), user.get_username()) for user in users]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        # a hand-typed ``?user=abc`` (or a number no id can be) matches nothing, not a 500
        if not value.isdigit() or len(value) > 18:
            return queryset.none()
        return queryset.filter(user=int(value))


class RecentFilter(admin.SimpleListFilter):
    title = "date"
    parameter_name = "since"
    SPANS = {"1": "today", "7": "the last 7 days", "30": "the last 30 days"}

    def lookups(self, request, model_admin):
        return list(self.SPANS.items())

    def queryset(self, request, queryset):
        value = self.value()
        if value is None or value not in self.SPANS:
            return queryset
        since = timezone.now() - timedelta(days=int(value))
        if value == "1":
            since = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
        return queryset.filter(pgh_created_at__gte=since)


MAX_FIELDS_SHOWN = 8


class ExactJSONDecoder(json.JSONDecoder):
    """Numbers in the events' JSON (a snapshot's amounts) read as Decimal, never float."""

    def __init__(self, *args, **kwargs):
        kwargs["parse_float"] = Decimal
        super().__init__(*args, **kwargs)


def _short(value) -> str:
    if isinstance(value, Decimal):
        text = decimal_text(value) or ""
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(
            value, default=lambda v: decimal_text(v) if isinstance(v, Decimal) else str(v)
        )
    return text if len(text) <= 80 else text[:77] + "…"


class AuditTrailAdmin(EventsAdmin):
    """Registered by pghistory's admin app (``PGHISTORY_ADMIN_CLASS``) for
    ``PGHISTORY_ADMIN_MODEL``. Search: an object's id, a model, an action, a reason or a
    page."""

    list_display = ["when", "staff_user", "action", "tracked_object", "changes", "why"]
    # an event's own page: the same, read-only
    fields = ("when", "staff_user", "action", "tracked_object", "changes", "why")
    readonly_fields = fields
    search_fields = ["pgh_obj_id", "pgh_obj_model", "pgh_label", "reason", "url"]
    list_per_page = 50
    # the newest first; a page read from the event tables' pgh_created_at indexes and a
    # bounded count (billing.admin.audit_page), never the whole trail sorted and counted
    ordering = ("-pgh_created_at", "-pgh_id")
    paginator = AuditCountPaginator
    show_full_result_count = False

    def get_changelist(self, request, **kwargs):
        return AuditChangeList

    def get_list_display(self, request):
        return self.list_display

    def changelist_view(self, request, extra_context=None):
        # a wide table: the page's width goes to it, not to the navigation sidebar
        extra = {"is_nav_sidebar_enabled": False, **(extra_context or {})}
        return super().changelist_view(request, extra)

    def get_list_filter(self, request):
        return [StaffUserFilter, RecentFilter, *super().get_list_filter(request)]

    def get_search_results(self, request, queryset, search_term):
        if search_term.strip().isdigit():  # an object's id: that id exactly, any model
            return queryset.filter(pgh_obj_id=search_term.strip()), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="when", ordering="pgh_created_at")
    def when(self, event):
        return timestamp(event.pgh_created_at)

    @admin.display(description="staff user")
    def staff_user(self, event):
        user_id = (event.pgh_context or {}).get("user")
        if user_id is None:
            return "— (system, API or command)"
        if getattr(event, "staff_username", None):  # read once for the list's page
            return event.staff_username
        user = get_user_model().objects.filter(pk=user_id).first()
        return user.get_username() if user else f"user #{user_id}"

    @admin.display(description="action")
    def action(self, event):
        return event.pgh_label

    @admin.display(description="object")
    def tracked_object(self, event):
        return f"{event.pgh_obj_model.split('.')[-1]} #{event.pgh_obj_id}"

    @admin.display(description="what changed (before → after)")
    def changes(self, event):
        diff = event.pgh_diff
        if diff:
            rows = [
                (name, _short(before), _short(after))
                for name, (before, after) in sorted(diff.items())
            ]
            return format_html(
                "<ul class='audit-diff'>{}</ul>",
                format_html_join("", "<li><b>{}</b>: {} → {}</li>", rows),
            )
        data = event.pgh_data or {}
        shown = [
            (name, _short(value))
            for name, value in data.items()
            if not name.startswith("pgh_") and name != "id" and value not in (None, "", [], {})
        ]
        return format_html(
            "<ul class='audit-diff'>{}</ul>",
            format_html_join("", "<li><b>{}</b>: {}</li>", shown[:MAX_FIELDS_SHOWN]),
        )

    @admin.display(description="why")
    def why(self, event):
        context = event.pgh_context or {}
        return context.get("reason") or "—"


# The aggregate's JSON columns are read with Decimal numbers (the fields belong to
# pghistory's Events model, which AuditEvent proxies).
for _name in ("pgh_data", "pgh_diff", "pgh_context"):
    setattr(AuditEvent._meta.get_field(_name), "decoder", ExactJSONDecoder)  # noqa: B010
