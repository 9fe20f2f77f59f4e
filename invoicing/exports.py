"""Exports for accounting: the ledger journal, invoices, credit notes, payments and usage
of a period, as rows for a CSV file (docs/exports.md describes every column).

Each export is a header and a generator of rows over a half-open range [start, end) of its
date column; rows are read in keyset batches (``WHERE key > last ORDER BY key LIMIT n``),
so an export of any size holds one batch in memory and never an OFFSET scan. The CSV
writing (and the formula-injection guard) is the interfaces' (``invoicing.finance_views``).

Money columns are exact decimal strings as the ledger and the counters keep them; where a
figure is not already in the currency's minor unit a ``…_rounded`` column beside it holds it
rounded by the invoices' one function (``invoicing.money.to_minor_unit``): an invoice's by
the rule it was rounded by (``Invoice.rounding_rule``), the rest half to even. In the
journal the rounded debits and credits of each transaction are balanced by the largest
remainder, so every rounded transaction still adds up to zero. Ledger units (``TOKENS``,
``CREDITS``) have no minor unit: their rounded columns are empty, and the accounting import
leaves them out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Case, CharField, Count, F, Q, Sum, Value, When
from django.db.models.functions import Left, StrIndex, TruncDate

from billing.limits import LEDGER_UNITS
from billing.models import RoundingRule
from invoicing import errors
from invoicing.models import CreditNote, Invoice, InvoiceStatus, Payment
from invoicing.money import minor_unit_exponent, to_minor_unit
from ledger.models import Entry, Transaction
from metering.models import DailyUsage

ZERO = Decimal(0)
BATCH = 1000


class ExportNotFound(errors.InvoicingError):
    code = "export_not_found"
    http_status = 404
    error_type = "not_found_error"


class InvalidRange(errors.InvoicingValidation):
    code = "invalid_range"


KINDS = ("journal", "journal-import", "invoices", "credit-notes", "payments", "usage")
MAX_RANGE_DAYS = 3660


@dataclass
class Export:
    kind: str
    start: datetime
    end: datetime
    header: Sequence[str]
    rows: Iterator[list[Any]]

    @property
    def filename(self) -> str:
        return f"{self.kind}_{self.start:%Y-%m-%d}_{self.end:%Y-%m-%d}.csv"


def export(*, kind: str, start: datetime, end: datetime) -> Export:
    """The export ``kind`` of [start, end). Nothing is read until its rows are iterated."""
    if kind not in KINDS:
        raise ExportNotFound(f"no export {kind[:50]!r}; one of {', '.join(KINDS)}", param="kind")
    # Everything that can refuse the range is checked here, before a row is read: once a
    # response streams, its status and headers are gone and an error can only cut it short.
    for name, moment in (("from", start), ("to", end)):
        try:
            moment.astimezone(UTC)
        except (OverflowError, ValueError):
            raise InvalidRange(f"{name} is outside the years 1–9999 in UTC", param=name) from None
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        raise errors.InvoicingValidation("to must be after from", param="to")
    if end - start > timedelta(days=MAX_RANGE_DAYS):
        raise errors.InvoicingValidation(
            f"a range covers at most {MAX_RANGE_DAYS} days", param="to"
        )
    if kind == "journal-import":
        # A JournalNo names a UTC day and currency: a bound inside a day would give the same
        # number to two different summaries of that day (in two consecutive exports).
        for name, moment in (("from", start), ("to", end)):
            if moment.astimezone(UTC).time() != time(0):
                raise InvalidRange(
                    "journal-import covers whole UTC days: from and to must be midnight UTC "
                    "(a date)",
                    param=name,
                )
    header, rows = _KINDS[kind]
    return Export(kind, start, end, header, snapshot(rows(start, end)))


def snapshot(rows: Iterator[list[Any]]) -> Iterator[list[Any]]:
    """``rows`` read in one REPEATABLE READ READ ONLY transaction: every batch sees the
    database as the first one did, so a posting made while the file streams is in no batch
    and never half in it. Inside a transaction already (a caller's ``atomic``, a test) the
    level can no longer be set: the batches read in that one. The transaction opens when
    the first row is asked for, and ends when the last is read or the stream is closed (a
    client that went away): nothing was written, it only ends a read."""
    if connection.in_atomic_block:
        yield from rows
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield from rows


def text(value: Any) -> str:
    """A cell's text: decimals exact and never in exponent form, times in RFC 3339 UTC."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def is_money(currency: str) -> bool:
    return currency not in LEDGER_UNITS


def rounded(
    amount: Decimal | None, currency: str, rule: str = RoundingRule.HALF_EVEN
) -> Decimal | None:
    if amount is None or not is_money(currency):
        return None
    return to_minor_unit(amount, currency, rule)


def round_balanced(amounts: Sequence[Decimal], currency: str) -> list[Decimal]:
    """Each amount rounded to the minor unit so that the rounded amounts add up to the
    rounded sum (zero for a balanced transaction): half to even first, then the difference
    moved one minor unit at a time onto the amounts the rounding moved most the other way
    (the largest remainder). Ties go to the earlier amount."""
    quantum = Decimal(1).scaleb(-minor_unit_exponent(currency))
    result = [to_minor_unit(a, currency) for a in amounts]
    target = to_minor_unit(sum(amounts, ZERO), currency)
    steps = int((target - sum(result, ZERO)) / quantum)
    if steps:
        sign = 1 if steps > 0 else -1
        # remainder: how far rounding moved each amount against the needed direction
        order = sorted(range(len(amounts)), key=lambda i: (-(amounts[i] - result[i]) * sign, i))
        for i in order[: abs(steps)]:
            result[i] += sign * quantum
    return result


def _day_range(start: datetime, end: datetime) -> tuple[date, date] | None:
    """The UTC days whose start lies in [start, end), as [first, last] (both included: the
    day after 9999-12-31 does not exist), or None when there is none."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if start.time() == time(0):
        first = start.date()
    elif start.date() == date.max:
        return None  # no day starts after a moment inside the last one
    else:
        first = start.date() + timedelta(days=1)
    last = end.date() - timedelta(days=1) if end.time() == time(0) else end.date()
    return (first, last) if first <= last else None


# --- the ledger journal: one row per entry --------------------------------------------------

JOURNAL_HEADER = (
    "transaction_id",
    "reference",
    "effective_at",
    "recorded_at",
    "description",
    "entry_id",
    "account_code",
    "account_name",
    "currency",
    "debit",
    "credit",
    "debit_rounded",
    "credit_rounded",
)


def _journal(start: datetime, end: datetime) -> Iterator[list[Any]]:
    transactions = Transaction.objects.filter(effective_at__gte=start, effective_at__lt=end)
    after: tuple[datetime, int] | None = None
    while True:  # keyset by (effective_at, id): the effective_at index, no OFFSET
        page = transactions
        if after is not None:
            page = page.filter(
                Q(effective_at__gt=after[0]) | Q(effective_at=after[0], pk__gt=after[1])
            )
        batch = list(
            page.order_by("effective_at", "pk").values(
                "pk", "reference", "effective_at", "recorded_at", "description"
            )[:BATCH]
        )
        if not batch:
            return
        after = (batch[-1]["effective_at"], batch[-1]["pk"])
        entries: dict[int, list[Any]] = {}
        for entry in (
            Entry.objects.filter(transaction_id__in=[t["pk"] for t in batch])
            .order_by("transaction_id", "pk")
            .values("pk", "transaction_id", "currency", "amount", "account__code", "account__name")
        ):
            entries.setdefault(entry["transaction_id"], []).append(entry)
        for tx in batch:
            legs = entries.get(tx["pk"], [])
            shown: dict[int, Decimal] = {}
            for currency in {leg["currency"] for leg in legs}:
                if not is_money(currency):
                    continue
                same = [leg for leg in legs if leg["currency"] == currency]
                for leg, value in zip(
                    same, round_balanced([leg["amount"] for leg in same], currency), strict=True
                ):
                    shown[leg["pk"]] = value
            for leg in legs:
                amount = leg["amount"]
                rounded_amount = shown.get(leg["pk"])
                yield [
                    tx["pk"],
                    tx["reference"],
                    tx["effective_at"],
                    tx["recorded_at"],
                    tx["description"],
                    leg["pk"],
                    leg["account__code"],
                    leg["account__name"],
                    leg["currency"],
                    amount if amount > 0 else None,
                    -amount if amount < 0 else None,
                    rounded_amount if rounded_amount is not None and rounded_amount > 0 else None,
                    -rounded_amount if rounded_amount is not None and rounded_amount < 0 else None,
                ]


# --- the journal for an accounting system: a daily summary journal entry per currency -------

# QuickBooks Online's journal-entry import names; Xero's manual journal takes the same
# content (Narration = Memo, AccountCode = AccountName, Amount = Debits − Credits).
JOURNAL_IMPORT_HEADER = (
    "JournalNo",
    "JournalDate",
    "Currency",
    "Memo",
    "AccountName",
    "Debits",
    "Credits",
    "Description",
    "ExactAmount",
)


def account_group():
    """The account an accounting system books to: a system account's own code
    (``@Revenue``), else the kind before the first colon (``wallet``, ``receivable`` …): per
    customer accounts become one control account."""
    code = F("account__code")
    return Case(
        When(account__code__startswith="@", then=code),
        When(account__code__contains=":", then=Left(code, StrIndex(code, Value(":")) - 1)),
        default=code,
        output_field=CharField(),
    )


GROUP_DESCRIPTIONS = {
    "wallet": "Customer wallets (prepaid balances and overdrafts), all customers",
    "receivable": "Accounts receivable, all customers",
    "tokens": "Token units (not money)",
}


def _journal_import(start: datetime, end: datetime) -> Iterator[list[Any]]:
    sums = (
        Entry.objects.filter(
            transaction__effective_at__gte=start, transaction__effective_at__lt=end
        )
        .exclude(currency__in=LEDGER_UNITS)
        .annotate(day=TruncDate("transaction__effective_at", tzinfo=UTC), group=account_group())
        .values("day", "currency", "group")
        .annotate(amount=Sum("amount"), transactions=Count("transaction_id", distinct=True))
        .order_by("day", "currency", "group")
    )
    journal: list[dict[str, Any]] = []

    def flush() -> Iterator[list[Any]]:
        if not journal:
            return
        day, currency = journal[0]["day"], journal[0]["currency"]
        values = round_balanced([line["amount"] for line in journal], currency)
        number = f"L{day:%Y%m%d}-{currency}"
        memo = f"Ledger summary {day:%Y-%m-%d} {currency} (billing export)"
        for line, value in zip(journal, values, strict=True):
            if not value:
                continue  # accounting systems refuse zero lines; the exact figure is below
            group = line["group"]
            yield [
                number,
                day,
                currency,
                memo,
                # "@" would start a formula in a spreadsheet: the name is the code without it
                group.removeprefix("@"),
                value if value > 0 else None,
                -value if value < 0 else None,
                GROUP_DESCRIPTIONS.get(group, group),
                line["amount"],
            ]

    for row in sums.iterator(chunk_size=BATCH):
        if journal and (row["day"], row["currency"]) != (journal[0]["day"], journal[0]["currency"]):
            yield from flush()
            journal = []
        journal.append(row)
    yield from flush()


# --- invoices, credit notes, payments, usage -------------------------------------------------


def _by_id(queryset, fields: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The rows of ``queryset`` in id order, a keyset batch at a time."""
    last = 0
    while True:
        batch = list(queryset.filter(pk__gt=last).order_by("pk").values("pk", *fields)[:BATCH])
        if not batch:
            return
        last = batch[-1]["pk"]
        yield from batch


INVOICES_HEADER = (
    "invoice_id",
    "number",
    "customer",
    "customer_name",
    "status",
    "currency",
    "period_start",
    "period_end",
    "finalized_at",
    "due_at",
    "paid_at",
    "voided_at",
    "subtotal",
    "tax_name",
    "tax_percentage",
    "tax",
    "total",
    "balance_applied",
    "amount_due",
    "amount_paid",
    "amount_credited",
    "usage_charged",
    "usage_charged_rounded",
    "fees_precise",
    "rounding",
    "ledger_transaction_id",
)


def _invoices(start: datetime, end: datetime) -> Iterator[list[Any]]:
    """Finalized invoices (numbered), by the time they were finalized; drafts are not
    documents yet. A voided invoice is listed with its status and void time."""
    fields = INVOICES_HEADER[1:]
    rename = {"number": "display_number", "customer": "customer__external_id"}
    rename["customer_name"] = "customer__name"
    rename["ledger_transaction_id"] = "ledger_transaction_id"
    columns = [rename.get(name, name) for name in fields if name != "usage_charged_rounded"]
    columns.append("rounding_rule")  # what usage_charged_rounded rounds by: the invoice's
    queryset = Invoice.objects.filter(finalized_at__gte=start, finalized_at__lt=end).exclude(
        status=InvoiceStatus.DRAFT
    )
    for row in _by_id(queryset, columns):
        out = [row["pk"]]
        for name in fields:
            if name == "usage_charged_rounded":
                out.append(rounded(row["usage_charged"], row["currency"], row["rounding_rule"]))
            else:
                out.append(row[rename.get(name, name)])
        yield out


CREDIT_NOTES_HEADER = (
    "credit_note_id",
    "number",
    "invoice_id",
    "invoice_number",
    "customer",
    "currency",
    "created_at",
    "reason",
    "amount",
    "tax",
    "total",
    "against_receivable",
    "to_balance",
    "ledger_transaction_id",
)


def _credit_notes(start: datetime, end: datetime) -> Iterator[list[Any]]:
    columns = (
        "display_number",
        "invoice_id",
        "invoice__display_number",
        "invoice__customer__external_id",
        "invoice__currency",
        "created_at",
        "reason",
        "amount",
        "tax",
        "total",
        "against_receivable",
        "to_balance",
        "ledger_transaction_id",
    )
    queryset = CreditNote.objects.filter(created_at__gte=start, created_at__lt=end)
    for row in _by_id(queryset, columns):
        yield [row["pk"], *(row[c] for c in columns)]


PAYMENTS_HEADER = (
    "payment_id",
    "invoice_id",
    "invoice_number",
    "customer",
    "provider",
    "provider_payment_id",
    "currency",
    "created_at",
    "amount",
    "amount_refunded",
    "to_balance",
    "ledger_transaction_id",
)


def _payments(start: datetime, end: datetime) -> Iterator[list[Any]]:
    columns = (
        "invoice_id",
        "invoice__display_number",
        "invoice__customer__external_id",
        "provider",
        "provider_payment_id",
        "currency",
        "created_at",
        "amount",
        "amount_refunded",
        "to_balance",
        "ledger_transaction_id",
    )
    queryset = Payment.objects.filter(created_at__gte=start, created_at__lt=end)
    for row in _by_id(queryset, columns):
        yield [row["pk"], *(row[c] for c in columns)]


USAGE_HEADER = (
    "day",
    "customer",
    "subscription_id",
    "meter",
    "dimensions",
    "quantity",
    "included_quantity",
    "currency",
    "amount",
    "amount_rounded",
    "event_count",
    "period_start",
)


def _usage(start: datetime, end: datetime) -> Iterator[list[Any]]:
    """The daily usage counters (per subscription, meter, UTC day and dimension) of the days
    whose start lies in [start, end)."""
    days = _day_range(start, end)
    if days is None:
        return
    queryset = DailyUsage.objects.filter(day__gte=days[0], day__lte=days[1])
    columns = (
        "day",
        "customer__external_id",
        "subscription_id",
        "meter__code",
        "dimensions",
        "quantity",
        "included_quantity",
        "currency",
        "amount",
        "event_count",
        "period_start",
    )
    for row in _by_id(queryset, columns):
        amount = row["amount"]
        yield [
            row["day"],
            row["customer__external_id"],
            row["subscription_id"],
            row["meter__code"],
            row["dimensions"],
            row["quantity"],
            row["included_quantity"],
            row["currency"],
            amount,
            rounded(amount, row["currency"]) if row["currency"] else None,
            row["event_count"],
            row["period_start"],
        ]


_KINDS = {
    "journal": (JOURNAL_HEADER, _journal),
    "journal-import": (JOURNAL_IMPORT_HEADER, _journal_import),
    "invoices": (INVOICES_HEADER, _invoices),
    "credit-notes": (CREDIT_NOTES_HEADER, _credit_notes),
    "payments": (PAYMENTS_HEADER, _payments),
    "usage": (USAGE_HEADER, _usage),
}
