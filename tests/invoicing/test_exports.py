"""Exports for accounting (invoicing.exports, invoicing.finance_views): a small planted book
exported row by row, half-open periods, CSV escaping and formula cells, the journal rounded
and still balanced, and the API's errors in JSON.

The planted ledger (May 2026 is the period):
    T0  30 Apr 23:59:59.999999   Dr wallet 1.00        Cr @Revenue 1.00        (before May)
    T1   1 May 00:00             Dr wallet 10.005      Cr @Revenue 10.005
    T2  15 May 12:00             Dr wallet 0.015       Cr @Revenue 0.005, Cr @TaxPayable 0.01
    T3  15 May 13:00             Dr tokens 1500        Cr @TokensUsed 1500     (a ledger unit)
    T4   1 Jun 00:00             Dr wallet 2.00        Cr @Revenue 2.00        (after May)
T2 rounded half to even is 0.02 / 0.00 / 0.01, which adds up to 0.01: the largest remainder
takes the cent back from the wallet's line (it was rounded up most, first of the ties).
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from datetime import timezone as tz
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from invoicing import exports
from invoicing import services as invoicing
from invoicing.finance_views import csv_lines
from invoicing.models import CreditNote, Payment, PaymentProvider
from ledger import services as ledger
from tests.billing.conftest import assert_error, at, make_client, make_key
from tests.factories import unique
from tests.invoicing.conftest import (
    PERIOD_END,
    ChargeSpec,
    close,
    finalize,
    meter,
    plan,
    subscribe,
    use,
)

__all__ = ["make_key"]

D = Decimal
MAY, JUNE = at(2026, 5, 1), at(2026, 6, 1)
FORMULA = '=HYPERLINK("https://evil.example","click"), "quoted"\nsecond line'


@pytest.fixture
def journal(db):
    wallet = ledger.create_account(code="wallet:acme:USD", currency="USD", allow_negative=True)
    revenue = ledger.ensure_system_account(code="@Revenue", currency="USD")
    tax = ledger.ensure_system_account(code="@TaxPayable", currency="USD")
    tokens = ledger.create_account(code="tokens:acme", currency="TOKENS", allow_negative=True)
    used = ledger.ensure_system_account(code="@TokensUsed", currency="TOKENS")

    def post(ref, when, legs, description=""):
        return ledger.post_transaction(
            reference=unique(ref), legs=legs, effective_at=when, description=description
        )

    t0 = post(
        "t0", MAY - timedelta(microseconds=1), [ledger.debit(wallet, 1), ledger.credit(revenue, 1)]
    )
    t1 = post(
        "t1",
        MAY,
        [ledger.debit(wallet, D("10.005")), ledger.credit(revenue, D("10.005"))],
        description=FORMULA,
    )
    t2 = post(
        "t2",
        at(2026, 5, 15, 12),
        [
            ledger.debit(wallet, D("0.015")),
            ledger.credit(revenue, D("0.005")),
            ledger.credit(tax, D("0.01")),
        ],
    )
    t3 = post("t3", at(2026, 5, 15, 13), [ledger.debit(tokens, 1500), ledger.credit(used, 1500)])
    t4 = post("t4", JUNE, [ledger.debit(wallet, 2), ledger.credit(revenue, 2)])
    return t0, t1, t2, t3, t4


def rows_of(kind: str, start=MAY, end=JUNE) -> list[dict[str, str]]:
    """The export as a CSV file would be read back: written, then parsed."""
    export = exports.export(kind=kind, start=start, end=end)
    text = "".join(csv_lines(export.header, export.rows))
    return list(csv.DictReader(io.StringIO(text)))


def test_the_journal_has_every_entry_of_the_period_and_nothing_else(journal):
    _, t1, t2, t3, _ = journal
    rows = rows_of("journal")
    assert [(r["transaction_id"], r["account_code"]) for r in rows] == [
        (str(t1.pk), "wallet:acme:USD"),
        (str(t1.pk), "'@Revenue"),  # "@" starts a formula in a spreadsheet: defused
        (str(t2.pk), "wallet:acme:USD"),
        (str(t2.pk), "'@Revenue"),
        (str(t2.pk), "'@TaxPayable"),
        (str(t3.pk), "tokens:acme"),
        (str(t3.pk), "'@TokensUsed"),
    ]
    exact = [(r["debit"], r["credit"]) for r in rows]
    assert exact == [
        ("10.005000000000", ""),
        ("", "10.005000000000"),
        ("0.015000000000", ""),
        ("", "0.005000000000"),
        ("", "0.010000000000"),
        ("1500.000000000000", ""),
        ("", "1500.000000000000"),
    ]
    shown = [(r["debit_rounded"], r["credit_rounded"]) for r in rows]
    assert shown == [
        ("10.00", ""),
        ("", "10.00"),
        ("0.01", ""),  # 0.02 half to even, the cent given back: the transaction balances
        ("", ""),  # 0.005 → 0.00
        ("", "0.01"),
        ("", ""),  # TOKENS: no minor unit
        ("", ""),
    ]
    assert rows[0]["effective_at"] == "2026-05-01T00:00:00Z"
    assert rows[2]["currency"] == "USD" and rows[5]["currency"] == "TOKENS"


def test_the_formula_in_a_description_is_defused_and_the_csv_escaped(journal):
    rows = rows_of("journal")
    # the comma, the quotes and the line break survive the round trip; the formula does not run
    assert rows[0]["description"] == "'" + FORMULA
    assert rows[2]["description"] == ""
    export = exports.export(kind="journal", start=MAY, end=JUNE)
    raw = "".join(csv_lines(export.header, export.rows))
    assert '"\'=HYPERLINK(""https://evil.example"",""click""), ""quoted""\nsecond line"' in raw


def test_round_balanced_is_the_largest_remainder():
    assert exports.round_balanced([D("0.015"), D("-0.005"), D("-0.01")], "USD") == [
        D("0.01"),
        D("0.00"),
        D("-0.01"),
    ]
    parts = [D("0.333333"), D("0.333333"), D("0.333334"), D("-1")]
    assert exports.round_balanced(parts, "USD") == [D("0.33"), D("0.33"), D("0.34"), D("-1.00")]
    assert exports.round_balanced([D("0.5"), D("-0.5")], "JPY") == [D(0), D(0)]
    assert exports.round_balanced([D("1.0005"), D("-1.0005")], "KWD") == [D("1.000"), D("-1.000")]


def test_the_journal_import_is_a_balanced_daily_summary_of_money(journal):
    rows = rows_of("journal-import")
    assert [
        (
            r["JournalNo"],
            r["JournalDate"],
            r["Currency"],
            r["AccountName"],
            r["Debits"],
            r["Credits"],
        )
        for r in rows
    ] == [
        ("L20260501-USD", "2026-05-01", "USD", "Revenue", "", "10.00"),
        ("L20260501-USD", "2026-05-01", "USD", "wallet", "10.00", ""),
        # 15 May: 0.02 / 0.00 / 0.01 add up to 0.01; @Revenue and the wallet tie on the
        # remainder (both moved 0.005 the wrong way), the first line in account order takes
        # the cent. TOKENS never appear.
        ("L20260515-USD", "2026-05-15", "USD", "Revenue", "", "0.01"),
        ("L20260515-USD", "2026-05-15", "USD", "TaxPayable", "", "0.01"),
        ("L20260515-USD", "2026-05-15", "USD", "wallet", "0.02", ""),
    ]
    assert rows[1]["ExactAmount"] == "10.005000000000"
    assert rows[1]["Description"].startswith("Customer wallets")
    assert rows[0]["Memo"] == "Ledger summary 2026-05-01 USD (billing export)"
    for number in {r["JournalNo"] for r in rows}:
        lines = [r for r in rows if r["JournalNo"] == number]
        debits = sum(D(r["Debits"] or 0) for r in lines)
        assert debits == sum(D(r["Credits"] or 0) for r in lines)


def test_periods_are_half_open(journal):
    t0, t1, _, _, t4 = journal
    april = rows_of("journal", start=at(2026, 4, 1), end=MAY)
    assert {r["transaction_id"] for r in april} == {str(t0.pk)}
    june = rows_of("journal", start=JUNE, end=at(2026, 7, 1))
    assert {r["transaction_id"] for r in june} == {str(t4.pk)}
    first_moment = rows_of("journal", start=MAY, end=MAY + timedelta(microseconds=1))
    assert {r["transaction_id"] for r in first_moment} == {str(t1.pk)}


def test_the_journal_import_refuses_bounds_inside_a_day(journal, make_key):
    """Its JournalNo names a day and currency ("stable, so a re-import can be recognised"):
    two exports split at 12:30 on 15 May would both hold an L20260515-USD with different
    lines. Bounds inside a day are refused, in the service and the API."""
    split = at(2026, 5, 15, 12, 30)
    for start, end, param in ((MAY, split, "to"), (split, JUNE, "from")):
        with pytest.raises(exports.InvalidRange) as refused:
            exports.export(kind="journal-import", start=start, end=end)
        assert refused.value.param == param and "whole UTC days" in refused.value.message
    reader = make_client(make_key(("read",))[1])
    response = reader.get("/api/v1/exports/journal-import?from=2026-05-01&to=2026-05-15T12:30:00Z")
    assert_error(response, 400, "invalid_range", param="to")
    # whole days, given as dates or as midnight timestamps, are what it takes
    response = reader.get("/api/v1/exports/journal-import?from=2026-05-01T00:00:00Z&to=2026-05-16")
    assert response.status_code == 200
    numbers = {r["JournalNo"] for r in rows_of("journal-import", MAY, at(2026, 5, 16))}
    assert numbers == {"L20260501-USD", "L20260515-USD"}


def test_the_journal_pages_through_keyset_batches(journal, monkeypatch):
    """Three transactions a batch: the second page starts after the first's last key."""
    monkeypatch.setattr(exports, "BATCH", 1)
    assert len(rows_of("journal")) == 7


# --- invoices, credit notes, payments, usage -------------------------------------------------


@pytest.fixture
def billed(db):
    """An April invoice: 20.00 + 1,000 units × 0.01 = 30.00 (no tax), finalized on 1 May,
    paid 30.00 and credited 5.00."""
    units = meter()
    pro = plan(
        ChargeSpec(meter=units, included_quantity=D(100), unit_price=D("0.01")), base_fee="20"
    )
    subscription = subscribe(pro, external_id="=cmd|calc")  # a hostile external id
    use(subscription, D("1100"))
    invoice = finalize(close(subscription))
    payment = invoicing.record_payment(
        invoice_id=invoice.pk,
        amount=D(30),
        provider=PaymentProvider.OFFLINE,
        provider_payment_id="bank-1",
        now=PERIOD_END,
    )
    note = invoicing.create_credit_note(
        invoice_id=invoice.pk, amount=D(5), reason="goodwill", reference=unique("cn")
    )
    return subscription, units, invoice, payment, note


def test_invoices_export(billed):
    subscription, _, invoice, _, _ = billed
    [row] = rows_of("invoices")
    assert row["invoice_id"] == str(invoice.pk)
    assert row["number"] == invoice.display_number and row["number"]
    assert row["customer"] == "'=cmd|calc"
    assert (row["currency"], row["status"]) == ("USD", "paid")
    assert (row["subtotal"], row["tax"], row["total"]) == (
        "30.000000000000",
        "0.000000000000",
        "30.000000000000",
    )
    assert row["usage_charged"] == "10.000000000000" and row["usage_charged_rounded"] == "10.00"
    assert row["finalized_at"] == "2026-05-01T00:00:00Z"
    assert row["period_start"] == "2026-04-01T00:00:00Z"
    assert rows_of("invoices", start=at(2026, 4, 1), end=MAY) == []


@pytest.mark.parametrize(("rule", "shown"), [("half_even", "0.12"), ("half_up", "0.13")])
def test_invoices_export_rounds_usage_by_the_invoices_rule(db, rule, shown):
    """usage_charged_rounded is the invoice's usage rounded by the rule the invoice was
    rounded by (issue 18: one rule per invoice), not half even whatever the plan says:
    50 units at 0.0025 = 0.125 → 0.12 half even, 0.13 half up (the invoice's usage line)."""
    subscription = subscribe(plan(ChargeSpec(meter=meter(), unit_price=D("0.0025")), rounding=rule))
    use(subscription, 50)
    invoice = finalize(close(subscription))
    [row] = rows_of("invoices")
    assert row["usage_charged"] == "0.125000000000"
    assert row["usage_charged_rounded"] == shown == f"{invoice.subtotal:f}"


def test_payments_and_credit_notes_export(billed):
    _, _, invoice, payment, note = billed
    now = timezone.now()
    window = dict(start=now - timedelta(days=1), end=now + timedelta(days=1))
    [p] = rows_of("payments", **window)
    assert (p["payment_id"], p["invoice_number"], p["provider"], p["provider_payment_id"]) == (
        str(payment.pk),
        invoice.display_number,
        "offline",
        "bank-1",
    )
    assert (p["amount"], p["currency"], p["ledger_transaction_id"]) == (
        "30.000000000000",
        "USD",
        str(payment.ledger_transaction_id),
    )
    [c] = rows_of("credit-notes", **window)
    assert (c["number"], c["invoice_number"], c["reason"], c["total"]) == (
        note.display_number,
        invoice.display_number,
        "goodwill",
        "5.000000000000",
    )
    # half-open on their own timestamps
    Payment.objects.filter(pk=payment.pk).update(created_at=JUNE)
    CreditNote.objects.filter(pk=note.pk).update(created_at=JUNE)
    assert rows_of("payments") == [] and rows_of("credit-notes") == []
    assert len(rows_of("payments", start=JUNE, end=JUNE + timedelta(microseconds=1))) == 1


def test_usage_export_is_the_daily_counters_of_whole_days(billed):
    subscription, units, _, _, _ = billed
    [row] = rows_of("usage", start=at(2026, 4, 10), end=at(2026, 4, 11))
    assert (row["day"], row["meter"], row["quantity"], row["event_count"]) == (
        "2026-04-10",
        units,
        "1100.000000000000",
        "1",
    )
    assert row["customer"] == "'=cmd|calc"
    assert row["amount_rounded"] == "10.00" and D(row["amount"]) == D(10)
    assert rows_of("usage", start=at(2026, 4, 11), end=MAY) == []
    # a range starting inside a day leaves that day out: its start is before the range
    assert rows_of("usage", start=at(2026, 4, 10, 1), end=at(2026, 4, 12)) == []


def test_usage_ranges_at_the_end_of_the_calendar_are_answered_before_streaming(db, make_key):
    """A "to" inside 9999-12-31: the day after it does not exist; the export still answers
    (the last day included), and a bound that leaves the years 1–9999 in UTC is a JSON 400
    before any CSV is sent, never a 200 cut short."""
    reader = make_client(make_key(("read",))[1])
    response = reader.get("/api/v1/exports/usage?from=9999-12-30&to=9999-12-31T12:00:00Z")
    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()
    assert body.splitlines() == [",".join(exports.USAGE_HEADER)]
    response = reader.get("/api/v1/exports/usage?from=9999-12-31T06:00:00Z&to=9999-12-31T12:00:00Z")
    assert response.status_code == 200 and b"".join(response.streaming_content)
    response = reader.get("/api/v1/exports/usage?from=9999-12-30&to=9999-12-31T23:00:00-05:00")
    assert_error(response, 400, "invalid_parameter", param="to")  # the API's parsing
    beyond = datetime(9999, 12, 31, 23, tzinfo=tz(timedelta(hours=-5)))
    with pytest.raises(exports.InvalidRange) as refused:
        exports.export(kind="usage", start=at(9999, 12, 30), end=beyond)
    assert refused.value.param == "to"
    assert exports._day_range(at(9999, 12, 30), at(9999, 12, 31, 12)) == (
        date(9999, 12, 30),
        date(9999, 12, 31),
    )
    assert exports._day_range(at(9999, 12, 31, 6), at(9999, 12, 31, 12)) is None


# --- the API and the admin ---------------------------------------------------------------------


def test_the_api_streams_the_csv_with_a_read_key(journal, make_key):
    client = make_client(make_key(("read",))[1])
    response = client.get("/api/v1/exports/journal?from=2026-05-01&to=2026-06-01")
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert 'filename="journal_2026-05-01_2026-06-01.csv"' in response["Content-Disposition"]
    body = b"".join(response.streaming_content).decode()
    assert body.splitlines()[0] == ",".join(exports.JOURNAL_HEADER)
    assert len(list(csv.DictReader(io.StringIO(body)))) == 7


def test_the_api_errors_are_json(journal, make_key):
    reader = make_client(make_key(("read",))[1])
    response = reader.get("/api/v1/exports/journal?from=2026-05-01", HTTP_ACCEPT="text/csv")
    assert_error(response, 400, "invalid_parameter", param="to")
    response = reader.get("/api/v1/exports/ledger?from=2026-05-01&to=2026-06-01")
    assert_error(response, 404, "export_not_found", param="kind")
    response = reader.get("/api/v1/exports/journal?from=2026-06-01&to=2026-05-01")
    assert_error(response, 400, "invalid_parameter", param="to")
    response = reader.get("/api/v1/exports/journal?from=2026-05-01&to=2026-06-01&format=x")
    assert_error(response, 400, "unknown_parameter", param="format")
    ingest_only = make_client(make_key(("ingest",))[1])
    response = ingest_only.get("/api/v1/exports/journal?from=2026-05-01&to=2026-06-01")
    assert_error(response, 403, "insufficient_scope")
    response = make_client().get("/api/v1/exports/journal?from=2026-05-01&to=2026-06-01")
    assert response.status_code == 401 and "error" in response.json()


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("fin", "f@x.test", None))
    return client


def test_the_admin_exports_page(journal, staff):
    page = staff.get(reverse("finance-exports"))
    assert page.status_code == 200
    assert b"journal-import" in page.content
    response = staff.get(
        reverse("finance-exports"), {"kind": "journal", "start": "2026-05-01", "end": "2026-06-01"}
    )
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    body = b"".join(response.streaming_content).decode()
    assert len(list(csv.DictReader(io.StringIO(body)))) == 7
    refused = staff.get(
        reverse("finance-exports"), {"kind": "journal", "start": "2026-06-01", "end": "2026-05-01"}
    )
    assert refused.status_code == 200 and b"To must be after From" in refused.content


def test_the_admin_exports_page_needs_staff(client, journal):
    response = client.get(reverse("finance-exports"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def clerk(client, django_user_model, *perms: str):
    """A staff user with only ``perms`` ("app.codename"), logged in."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(unique("clerk"), "c@x.test", "pw", is_staff=True)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app, codename=codename)
        )
    client.force_login(user)
    return client


MAY_RANGE = {"start": "2026-05-01", "end": "2026-06-01"}


def test_each_export_needs_the_view_permissions_of_what_it_holds(
    client, django_user_model, journal
):
    """An invoice viewer gets invoices, not the ledger journal (every wallet's entries) nor the
    payments; the journal needs the ledger's view permissions."""
    c = clerk(client, django_user_model, "invoicing.view_invoice")
    page = c.get(reverse("finance-exports"))
    assert page.status_code == 200
    assert b"<code>invoices</code>" in page.content and b"<code>journal</code>" not in page.content
    for kind in ("journal", "journal-import", "payments", "credit-notes", "usage"):
        assert c.get(reverse("finance-exports"), {"kind": kind, **MAY_RANGE}).status_code == 403
    assert c.get(reverse("finance-exports"), {"kind": "invoices", **MAY_RANGE}).status_code == 200
    c.logout()
    c = clerk(client, django_user_model, "ledger.view_transaction", "ledger.view_entry")
    response = c.get(reverse("finance-exports"), {"kind": "journal", **MAY_RANGE})
    assert response.status_code == 200
    assert (
        len(list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))) == 7
    )


def test_staff_without_any_export_permission_are_refused(client, django_user_model, journal):
    c = clerk(client, django_user_model)
    assert c.get(reverse("finance-exports")).status_code == 403
    assert c.get(reverse("finance-exports"), {"kind": "journal", **MAY_RANGE}).status_code == 403


def test_an_export_streams_from_one_read_only_snapshot(transactional_db, journal, monkeypatch):
    """A batch at a time (here one transaction a batch), all in one REPEATABLE READ READ ONLY
    transaction: a posting committed by another connection while the file streams is in no
    batch; the next export has it."""
    import threading

    from django.db import connection
    from django.db import connections as all_connections

    from ledger.models import Account

    monkeypatch.setattr(exports, "BATCH", 1)
    late = unique("late")

    def post_late():
        try:
            wallet = Account.objects.get(code="wallet:acme:USD")
            revenue = Account.objects.get(code="@Revenue", currency="USD")
            ledger.post_transaction(
                reference=late,
                effective_at=at(2026, 5, 20),
                legs=[ledger.debit(wallet, D(7)), ledger.credit(revenue, D(7))],
            )
        finally:
            all_connections.close_all()

    export = exports.export(kind="journal", start=MAY, end=JUNE)
    first = next(export.rows)
    with connection.cursor() as cursor:
        cursor.execute("SHOW transaction_isolation")
        assert cursor.fetchone()[0] == "repeatable read"
        cursor.execute("SHOW transaction_read_only")
        assert cursor.fetchone()[0] == "on"
    writer = threading.Thread(target=post_late)
    writer.start()
    writer.join()
    streamed = [first, *export.rows]
    assert len(streamed) == 7 and late not in {row[1] for row in streamed}
    assert not connection.in_atomic_block  # the snapshot ended with the stream
    assert late in {row["reference"] for row in rows_of("journal")}
