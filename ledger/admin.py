"""The ledger in the admin: read-only, no delete. Writes go through ledger.services."""

from django.contrib import admin
from django.db.models import Sum
from django.utils.html import format_html

from ledger.models import Account, Balance, Entry, Hold, Transaction


class ReadOnlyAdmin(admin.ModelAdmin):
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


def _amount(value):
    return "" if value is None else format_html("<code>{}</code>", f"{value:,.12f}")


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
        "currency",
        "normal_balance",
        "kind",
        "posted",
        "held",
        "available",
        "floor_display",
    )
    list_filter = ("currency", "is_hot", "normal_balance", "allow_negative", "owner_type")
    search_fields = ("code", "name", "owner_id")
    readonly_fields = [f.name for f in Account._meta.fields]
    inlines = [BalanceInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(_posted=Sum("balance_rows__posted"), _held=Sum("balance_rows__held"))
        )

    @admin.display(description="kind")
    def kind(self, obj):
        if obj.is_hot:
            return "system (hot)"
        return "system" if obj.is_system else f"owned by {obj.owner_type} {obj.owner_id}"

    @admin.display(description="posted", ordering="_posted")
    def posted(self, obj):
        return _amount(obj._posted)

    @admin.display(description="held", ordering="_held")
    def held(self, obj):
        return _amount(obj._held)

    @admin.display(description="available")
    def available(self, obj):
        if obj._posted is None:
            return ""
        return _amount(obj._posted - obj._held)

    @admin.display(description="floor")
    def floor_display(self, obj):
        floor = obj.floor
        return "none" if floor is None else _amount(floor)


class EntryInline(ReadOnlyInline):
    model = Entry
    fields = ("account", "currency", "debit", "credit")
    readonly_fields = fields
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("account")


@admin.register(Transaction)
class TransactionAdmin(ReadOnlyAdmin):
    list_display = ("reference", "description", "effective_at", "recorded_at", "reverses")
    list_filter = ("effective_at",)
    date_hierarchy = "effective_at"
    search_fields = ("reference", "description", "entries__account__code")
    readonly_fields = [f.name for f in Transaction._meta.fields]
    inlines = [EntryInline]
    list_select_related = ("reverses",)
    show_full_result_count = False

    def get_search_results(self, request, queryset, search_term):
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        return queryset.distinct() if may_have_duplicates else queryset, False


@admin.register(Entry)
class EntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "transaction", "account", "currency", "debit", "credit")
    list_filter = ("currency",)
    search_fields = ("transaction__reference", "account__code")
    list_select_related = ("transaction", "account")
    readonly_fields = [f.name for f in Entry._meta.fields]
    show_full_result_count = False


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = (
        "reference",
        "account",
        "amount",
        "settled_amount",
        "currency",
        "status",
        "expires_at",
        "created_at",
        "resolved_at",
    )
    list_filter = ("status", "currency")
    search_fields = ("reference", "account__code")
    list_select_related = ("account",)
    readonly_fields = [f.name for f in Hold._meta.fields]
