"""The ledger in the admin: read-only, no delete. Writes go through ledger.services.

Amounts in the lists are rounded to the currency's minor unit with the exact figure on
hover (``billing.web.money.money_cell``); a transaction's page lists its entries
exactly."""

from decimal import Decimal

from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import JSONField, OuterRef, QuerySet, Subquery, Sum
from django.db.models.expressions import RawSQL
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _

from billing.web.money import money_cell
from ledger.models import Account, Balance, Entry, Hold, Transaction


def system_currencies() -> list[str]:
    """The currencies the ledger has system accounts in (@World, @Revenue … exist in every
    currency anything was posted in): a few rows, where the distinct currencies of every
    entry, event or wallet would be a scan of millions."""
    return list(Account.objects.filter(is_hot=True).values_list("currency", flat=True))


def owner_types() -> list[str]:
    """The distinct owner types of the accounts ("" for the system's), by a skip scan of
    the (owner_type, owner_id) index: one probe per type, not a read of every account."""
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH RECURSIVE t(v) AS (SELECT min(owner_type) FROM ledger_account UNION ALL"
            " SELECT (SELECT min(owner_type) FROM ledger_account WHERE owner_type > t.v)"
            " FROM t WHERE t.v IS NOT NULL) SELECT v FROM t WHERE v IS NOT NULL"
        )
        return [row[0] for row in cursor.fetchall()]


def values_filter(field: str, title: str, values) -> type[admin.SimpleListFilter]:
    """A list filter on ``field`` whose choices come from ``values()`` (a small table: the
    meters, the catalog, the accounts), not from the distinct values of every row of the
    list's own table, which the stock filter on a field reads on every page (10 million
    events: seconds)."""

    def lookups(self, request, model_admin):
        return [(v, v or "(none)") for v in sorted(set(values()))]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset if value is None else queryset.filter(**{field: value})

    return type(
        f"{field.title()}Filter",
        (admin.SimpleListFilter,),
        {"title": title, "parameter_name": field, "lookups": lookups, "queryset": queryset},
    )


EntryCurrencyFilter = values_filter("currency", "currency", system_currencies)


class EstimatedCountPaginator(Paginator):
    """A paginator for tables of millions of rows: it counts at most ``EXACT_UP_TO`` rows
    (a COUNT over a LIMIT: its cost is bounded, whatever the table's size); past that, an
    unfiltered list takes PostgreSQL's estimate of the table's rows (pg_class.reltuples,
    kept by ANALYZE and autovacuum), and a filtered or searched one says ``EXACT_UP_TO``:
    its pages past that many rows are reached by narrowing the filter. Use it with
    ``show_full_result_count = False`` (no second, full count) and no ``date_hierarchy``
    (which reads the distinct dates of every row)."""

    EXACT_UP_TO = 10_000
    # What the page says of its count (templates/admin/pagination.html, search_form.html):
    # "about N (estimated)" for the table's estimate, "more than N" for a capped count.
    count_is_estimate = False
    count_is_lower_bound = False

    @property
    def count(self) -> int:
        if not hasattr(self, "_bounded_count"):
            queryset: QuerySet = self.object_list  # type: ignore[assignment]  # the admin's
            rows = queryset.order_by().values("pk")[: self.EXACT_UP_TO + 1].count()
            if rows > self.EXACT_UP_TO:
                rows = self.EXACT_UP_TO
                self.count_is_lower_bound = True
                if self._unfiltered(queryset):
                    estimate = self._estimate()
                    if estimate > rows:
                        rows, self.count_is_estimate = estimate, True
                        self.count_is_lower_bound = False
            self._bounded_count = rows
        return self._bounded_count

    def _unfiltered(self, queryset: QuerySet) -> bool:
        return not queryset.query.where

    def _estimate(self) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                [self.object_list.model._meta.db_table],  # type: ignore[attr-defined]
            )
            row = cursor.fetchone()
        return int(row[0]) if row and row[0] and row[0] > 0 else 0


class PrefetchedRelationsChangeList(ChangeList):
    """A list whose rows' related objects (``list_select_related``) are read by primary key,
    a query per relation (``prefetch_related``), never joined into the page's statement. A
    join lets the planner choose a hash or merge join over a scan of the whole table, then
    sort it for the page (with nested loops disabled, the entries list read all 70,000
    entries for a page of 100). The page alone has one plan worth having, its ordering's
    index read for ``LIMIT`` rows; its relations are read ``WHERE id IN (the page's keys)``.
    A list of ``ReadOnlyAdmin`` names its relations in ``list_select_related``, a tuple."""

    def apply_select_related(self, qs):
        if isinstance(self.list_select_related, list | tuple) and self.list_select_related:
            return qs.prefetch_related(*self.list_select_related)
        return super().apply_select_related(qs)


class ReadOnlyAdmin(admin.ModelAdmin):
    def get_changelist(self, request, **kwargs):
        return PrefetchedRelationsChangeList

    def action_checkbox(self, obj):
        """The stock column's checkbox, written directly: the stock one renders a form
        widget's template per row (a tenth of a 100-row list's time), for the same HTML."""
        label = format_html(_("Select this object for an action - {}"), str(obj))
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            str(obj.pk),
            label,
        )

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# A transaction's size: the sum of its debit legs per currency, as text (never a float),
# read for the rows of the page only.
_TRANSACTION_AMOUNTS = f"""
SELECT jsonb_object_agg(d.currency, d.total::text ORDER BY d.currency)
  FROM (SELECT e.currency, SUM(e.amount) AS total FROM {Entry._meta.db_table} e
         WHERE e.transaction_id = {Transaction._meta.db_table}.id AND e.amount > 0
         GROUP BY e.currency) d
"""


class BalanceInline(ReadOnlyInline):
    model = Balance
    fields = ("bucket", "posted", "held", "floor", "version", "updated_at")
    readonly_fields = fields
    show_change_link = False


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = (
        "code",
        "name",
        "kind",
        "posted",
        "available",
        "floor_display",
    )
    # An account a wallet: the filters' choices from the system accounts and the owner
    # index (not a DISTINCT over every account), a bounded count, and each row's balance a
    # subquery of the page's rows (a join grouped over every account was counted and
    # scanned on every page: 80,000 rows read at 10,000 customers).
    # The currency is in each amount's cell, the normal balance on the account's page (and a
    # filter), what is held the difference of posted and available (each bucket's on the
    # account's page): with those columns the list was 961 px wide (952 with the demo's
    # system accounts) in the 900 px a 1280 px screen leaves beside the sidebar.
    list_filter = (
        values_filter("currency", "currency", system_currencies),
        "is_hot",
        "normal_balance",
        "allow_negative",
        values_filter("owner_type", "owner type", owner_types),
    )
    search_fields = ("code", "name", "owner_id")
    readonly_fields = [f.name for f in Account._meta.fields]
    inlines = [BalanceInline]
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    def get_queryset(self, request):
        def summed(field: str) -> Subquery:
            return Subquery(
                Balance.objects.filter(account=OuterRef("pk"))
                .order_by()
                .values("account")
                .annotate(total=Sum(field))
                .values("total")
            )

        return (
            super().get_queryset(request).annotate(_posted=summed("posted"), _held=summed("held"))
        )

    @admin.display(description="kind")
    def kind(self, obj):
        if obj.is_hot:
            return "system (hot)"
        # the owner's model without its app: "customer 8" (the owner type "billing.customer")
        owner = obj.owner_type.rpartition(".")[2]
        return "system" if obj.is_system else f"{owner} {obj.owner_id}"

    @admin.display(description="posted", ordering="_posted")
    def posted(self, obj):
        return "" if obj._posted is None else money_cell(obj._posted, obj.currency)

    @admin.display(description="held", ordering="_held")
    def held(self, obj):
        return "" if obj._held is None else money_cell(obj._held, obj.currency)

    @admin.display(description="available")
    def available(self, obj):
        if obj._posted is None:
            return ""
        return money_cell(obj._posted - obj._held, obj.currency)

    @admin.display(description="floor")
    def floor_display(self, obj):
        floor = obj.floor
        return "none" if floor is None else money_cell(floor, obj.currency)


class EntryInline(ReadOnlyInline):
    model = Entry
    fields = ("account", "currency", "debit", "credit")
    readonly_fields = fields
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("account")


@admin.register(Transaction)
class TransactionAdmin(ReadOnlyAdmin):
    list_display = ("reference", "description", "amount", "effective_at", "reverses")
    # No date_hierarchy: its links are the distinct dates of every transaction (a DISTINCT
    # over the whole ledger on every page); the date filter's ranges cost nothing.
    list_filter = ("effective_at",)
    paginator = EstimatedCountPaginator
    search_fields = ("reference", "description", "entries__account__code")
    readonly_fields = [f.name for f in Transaction._meta.fields]
    inlines = [EntryInline]
    list_select_related = ("reverses",)
    show_full_result_count = False

    def get_search_results(self, request, queryset, search_term):
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        return queryset.distinct() if may_have_duplicates else queryset, False

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(_amounts=RawSQL(_TRANSACTION_AMOUNTS, (), output_field=JSONField()))
        )

    @admin.display(description="amount (debits)")
    def amount(self, obj):
        amounts = getattr(obj, "_amounts", None) or {}
        if not amounts:
            return "—"
        return format_html_join(
            ", ",
            "{}",
            ((money_cell(Decimal(total), currency),) for currency, total in amounts.items()),
        )


@admin.register(Entry)
class EntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "transaction", "account", "debit_display", "credit_display")
    list_filter = (EntryCurrencyFilter,)
    search_fields = ("transaction__reference", "account__code")
    list_select_related = ("transaction", "account")  # read by key: PrefetchedRelationsChangeList
    readonly_fields = [f.name for f in Entry._meta.fields]
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    @admin.display(description="debit")
    def debit_display(self, obj):
        return "" if obj.debit is None else money_cell(obj.debit, obj.currency)

    @admin.display(description="credit")
    def credit_display(self, obj):
        return "" if obj.credit is None else money_cell(obj.credit, obj.currency)


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = (
        "reference",
        "account",
        "amount_display",
        "settled_display",
        "status",
        "expires_at",
        "created_at",
        "resolved_at",
    )
    list_filter = ("status", "currency")
    search_fields = ("reference", "account__code")
    list_select_related = ("account",)
    readonly_fields = [f.name for f in Hold._meta.fields]

    @admin.display(description="amount", ordering="amount")
    def amount_display(self, obj):
        return money_cell(obj.amount, obj.currency)

    @admin.display(description="settled", ordering="settled_amount")
    def settled_display(self, obj):
        return money_cell(obj.settled_amount, obj.currency)
