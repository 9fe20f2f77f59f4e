"""How the audit trail's list reads a page without reading the whole trail (issue 17 item
8, *Reads at scale*).

django-pghistory's ``Events`` query is a UNION ALL over every event table, each branch
computing, for every row, the row's JSON, its previous version (a subquery) and the diff
between them, sorted by ``pgh_id``: the list's ``ORDER BY pgh_created_at DESC LIMIT 50``
and its ``COUNT(*)`` sorted and diffed every history row of every tracked model (300,000
rows at 10,000 customers: seconds). Here a page is read in two steps:

1. **the page's keys** from a lean union (``PageKeysQuery``): the same columns, filters and
   search, but no JSON, no previous version, no diff and no inner sort, so PostgreSQL
   pushes the filters into each branch and merges the branches' newest rows from their
   ``pgh_created_at`` indexes (billing 0035): a page reads about a page of rows per table;
2. **the page's rows** in full (snapshot and diff) by primary key, one query per event
   table on the page.

The count is bounded (``AuditCountPaginator``: exact up to 10,000 events, past that the
event tables' row estimate, which the page says is an estimate).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from pghistory.admin.core import EventsChangeList
from pghistory.models import EventsQuery, EventsQueryCompiler

from billing.models import AuditEvent
from ledger.admin import EstimatedCountPaginator


class PageKeysCompiler(EventsQueryCompiler):
    """pghistory's aggregate, each branch reduced to the columns a filter, a search or the
    order reads (the snapshot and the diff are NULL)."""

    def _get_select(self, event_model):
        context = self._get_context_clauses(event_model)
        _final, context_column, context_id_column, context_join, proxy_columns = context
        if context_join:
            # The context as a scalar subquery by its primary key, not a join: a branch
            # with a join is not merged into the union's append, and only an append's
            # branches are read newest first from their indexes and merged.
            row = (
                "(SELECT _pgh_context.metadata FROM pghistory_context _pgh_context"
                " WHERE _pgh_context.id = _event.pgh_context_id)"
            )
            context_column = context_column.replace("_pgh_context.metadata", row)
            proxy_columns = proxy_columns.replace("_pgh_context.metadata", row)
            context_join = ""
        label = event_model._meta.label
        tracked = event_model.pgh_tracked_model._meta.label
        obj_id = (
            "_event.pgh_obj_id::TEXT AS pgh_obj_id"
            if hasattr(event_model, "pgh_obj_id")
            else "NULL::TEXT AS pgh_obj_id"
        )
        # the columns in the order of pghistory's own select (a UNION pairs them by place)
        return f"""
            SELECT
              CONCAT('{label}', ':', _event.pgh_id) AS pgh_slug,
              _event.pgh_id,
              _event.pgh_created_at,
              _event.pgh_label,
              {proxy_columns}
              {obj_id},
              '{label}' AS pgh_model,
              '{tracked}' AS pgh_obj_model,
              NULL::JSONB AS pgh_data,
              NULL::JSONB AS pgh_diff,
              {context_id_column},
              {context_column}
            FROM "{event_model._meta.db_table}" _event
            {context_join}
            {self._get_where_clause(event_model)}
        """


class PageKeysQuery(EventsQuery):
    def get_compiler(self, *args, **kwargs):
        compiler = super().get_compiler(*args, **kwargs)
        compiler.__class__ = PageKeysCompiler
        return compiler


def page_keys(queryset):
    """The audit queryset (filtered, searched, ordered) read through the lean union."""
    if not isinstance(queryset.query, EventsQuery):  # pghistory's "no events" queryset
        return queryset
    queryset = queryset._chain()
    queryset.query.__class__ = PageKeysQuery  # a clone keeps its class (and tracks, across)
    return queryset


def full_rows(keys: list[AuditEvent]) -> list[AuditEvent]:
    """The events of ``keys`` (read through ``page_keys``) with their snapshots and diffs,
    in the same order: one query per event table on the page, by primary key. Each row's
    staff user's name is read once for the page (``staff_username``)."""
    ids_by_model: dict[str, list[int]] = defaultdict(list)
    for key in keys:
        ids_by_model[key.pgh_model].append(key.pgh_id)
    rows: dict[str, AuditEvent] = {}
    for model, ids in ids_by_model.items():
        for row in AuditEvent.objects.across(model).filter(pgh_id__in=ids):
            rows[row.pk] = row
    page = [rows[key.pk] for key in keys if key.pk in rows]
    user_ids = {(row.pgh_context or {}).get("user") for row in page} - {None}
    names = dict(
        get_user_model()
        .objects.filter(pk__in=[u for u in user_ids if isinstance(u, int)])
        .values_list("pk", "username")
    )
    for row in page:
        user_id = (row.pgh_context or {}).get("user")
        name = names.get(user_id) if isinstance(user_id, int) else None
        setattr(row, "staff_username", name)  # noqa: B010  (not a field: the page's read)
    return page


class AuditCountPaginator(EstimatedCountPaginator):
    """Exact up to ``EXACT_UP_TO`` events; past that, unfiltered, the sum of the event
    tables' row estimates (there is no one table to ask). A list narrowed to some tables
    (a model, an object's history) is filtered too, though its ``WHERE`` is empty."""

    def _unfiltered(self, queryset) -> bool:
        query = queryset.query
        return super()._unfiltered(queryset) and not (
            getattr(query, "across", None)
            or getattr(query, "tracks", None)
            or getattr(query, "references", None)
        )

    def _estimate(self) -> int:
        from pghistory import core

        tables = [m._meta.db_table for m in core.event_models()]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COALESCE(SUM(GREATEST(reltuples, 0)), 0)::bigint FROM pg_class"
                " WHERE oid = ANY(%s::regclass[])",
                [tables],
            )
            row = cursor.fetchone()
        return int(row[0]) if row else 0


class AuditChangeList(EventsChangeList):
    """The audit list: keys of the page from the lean union, then the page in full."""

    def get_queryset(self, request, *args: Any, **kwargs: Any):
        return page_keys(super().get_queryset(request, *args, **kwargs))

    def _get_deterministic_ordering(self, ordering):
        """(time, id, event table) orders events totally, and is what each table's
        (pgh_created_at, pgh_id) index gives (pgh_model is one value per table), so the
        tables' pages merge; Django's own tiebreak, the text ``pgh_slug``, is neither."""
        keys = [o for o in ordering if str(o).lstrip("-") not in ("pk", "pgh_slug")]
        names = [str(o).lstrip("-") for o in keys]
        descending = not keys or str(keys[0]).startswith("-")
        for name in ("pgh_id", "pgh_model"):
            if name not in names:
                keys.append(f"-{name}" if descending else name)
        return keys

    def get_results(self, request):
        super().get_results(request)
        self.result_list = full_rows(list(self.result_list))
