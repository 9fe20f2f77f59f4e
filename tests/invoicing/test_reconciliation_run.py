"""The reconciliation (invoicing.reconciliation): clean books pass every check (and each check
compared something), a difference planted in each place is found with its cause, a re-run
of a period is the same row and alerts once, and the daily task runs through Celery."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from billing.api.webhook_schema import DATA
from billing.models import EventType, OutboundEvent
from invoicing import reconciliation
from invoicing.models import ReconciliationRun
from invoicing.tasks import reconcile_yesterday
from ledger import services as ledger
from ledger.models import Account, NormalBalance
from metering.models import Event
from tests.invoicing.conftest import START, at
from tests.invoicing.recon_books import make_books, triggers_off

pytestmark = pytest.mark.django_db

D = Decimal
END = at(2026, 5, 2)  # [Apr 1, May 2): April's usage, the invoice finalized on May 1


@pytest.fixture
def books():
    return make_books()


def run(**kw) -> ReconciliationRun:
    return reconciliation.run_reconciliation(start=START, end=END, **kw)


def check(result: ReconciliationRun, name: str) -> dict:
    return next(c for c in result.checks if c["name"] == name)


def test_clean_books_pass_every_check_and_each_compared_something(books):
    result = run()
    assert result.status == "passed", result.checks
    assert result.difference_count == 0
    for name in ("balances", "usage_ledger", "invoice_usage", "invoice_ledger", "stripe_clearing"):
        totals = check(result, name)["totals"]
        assert sum(t["compared"] for t in totals.values()) > 0, name
    assert check(result, "usage_ledger")["totals"]["USD"]["expected"] == "10"
    assert check(result, "stripe_clearing")["totals"]["USD"]["actual"] == "15"
    # per invoice several figures are compared; the totals show its total and its usage
    assert check(result, "invoice_ledger")["totals"]["USD"] == {
        "expected": "15",
        "actual": "15",
        "compared": 1,
        "differences": 0,
    }
    assert check(result, "invoice_usage")["totals"]["USD"]["expected"] == "10"
    assert not OutboundEvent.objects.filter(type=EventType.RECONCILIATION_FAILED).exists()


def test_an_event_with_a_wrong_amount_is_found_in_its_transaction_and_invoice(books):
    event = Event.objects.filter(amount__gt=0).order_by("id").first()
    with triggers_off() as cursor:
        cursor.execute("UPDATE metering_event SET amount = amount + 1 WHERE id = %s", [event.pk])
    result = run()
    assert result.status == "failed"
    usage = check(result, "usage_ledger")
    assert not usage["passed"]
    [difference] = usage["differences"]
    assert f"transaction {event.ledger_transaction_id} " in difference["item"]
    assert (difference["expected"], difference["actual"]) == ("7", "6")
    assert difference["cause"] == "Σ events ≠ the transaction's leg"
    invoice_usage = check(result, "invoice_usage")
    assert {d["cause"] for d in invoice_usage["differences"]} == {
        "usage_charged ≠ Σ the period's rated events",
        "Σ usage lines ≠ Σ the period's rated events",
    }
    assert all(books.display_number in d["item"] for d in invoice_usage["differences"])
    assert check(result, "balances")["passed"]  # the ledger itself is untouched


def test_an_invoice_line_edited_behind_the_services_back_is_found(books):
    with triggers_off() as cursor:
        cursor.execute(
            "UPDATE invoicing_invoiceline SET amount_precise = amount_precise + 0.01, "
            "amount = amount + 0.01 WHERE invoice_id = %s AND kind = 'usage'",
            [books.pk],
        )
    result = run()
    [difference] = check(result, "invoice_usage")["differences"]
    assert difference["cause"] == "Σ usage lines ≠ Σ the period's rated events"
    assert (difference["expected"], difference["actual"]) == ("10", "10.01")
    assert check(result, "usage_ledger")["passed"]


def test_a_balance_row_that_is_not_its_entries_is_found(books):
    revenue = Account.objects.get(code="@Revenue", currency="USD")
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE ledger_balance SET posted = posted + 3 WHERE id = "
            "(SELECT min(id) FROM ledger_balance WHERE account_id = %s)",
            [revenue.pk],
        )
    [difference] = check(run(), "balances")["differences"]
    assert difference["item"] == f"account {revenue.pk} @Revenue"
    assert (difference["expected"], difference["actual"]) == ("15", "18")


def test_invoice_figures_that_are_not_its_posting_are_found(books):
    with triggers_off() as cursor:
        cursor.execute("UPDATE invoicing_invoice SET total = total + 2 WHERE id = %s", [books.pk])
    causes = {d["cause"] for d in check(run(), "invoice_ledger")["differences"]}
    assert causes == {"receivable leg ≠ total"}


def test_a_clearing_movement_with_no_payment_is_found(books):
    clearing = Account.objects.get(code="@StripeClearing", currency="USD")
    unapplied = ledger.ensure_system_account(
        code="@Suspense", currency="USD", normal_balance=NormalBalance.CREDIT
    )
    ledger.post_transactions(
        transactions=[
            ledger.TransactionSpec(
                reference="mystery:1",
                legs=[ledger.debit(clearing, "7"), ledger.credit(unapplied, "7")],
                effective_at=at(2026, 4, 30),
            )
        ]
    )
    [difference] = check(run(), "stripe_clearing")["differences"]
    assert difference["cause"] == "clearing movement with no recorded payment"
    assert "mystery:1" in difference["item"]
    assert (difference["expected"], difference["actual"]) == ("0", "7")


def test_card_top_ups_and_credit_sales_explain_their_clearing_movements(books):
    """A top-up by card (billing's top_up from @StripeClearing, its reference wrapped as
    ``top-up:<customer>:stripe-checkout:…``) and a credit sale are their own records."""
    from billing import services as billing_services

    billing_services.top_up(
        customer=books.customer,
        amount=D("20"),
        currency="USD",
        reference="stripe-checkout:cs_test_1",
        source_code="@StripeClearing",
    )
    result = reconciliation.run_reconciliation(
        start=START, end=reconciliation.day_bounds(timezone.now().date())[1]
    )
    clearing = check(result, "stripe_clearing")
    assert clearing["passed"], clearing
    assert clearing["totals"]["USD"]["actual"] == "35"  # 15 paid + 20 topped up


def test_scope_one_currency_leaves_the_others_out(books):
    result = run(currency="EUR")
    assert result.status == "passed"
    assert all(not c["totals"] for c in result.checks)
    assert ReconciliationRun.objects.count() == 1


def test_a_rerun_is_the_same_row_and_alerts_once(
    books, mailoutbox, django_capture_on_commit_callbacks, settings
):
    settings.RECONCILIATION_ALERT_EMAILS = ["finance@example.com"]
    event = Event.objects.filter(amount__gt=0).first()
    with triggers_off() as cursor:
        cursor.execute("UPDATE metering_event SET amount = amount + 1 WHERE id = %s", [event.pk])
    with django_capture_on_commit_callbacks(execute=True):
        first = run(triggered_by="test")
    with django_capture_on_commit_callbacks(execute=True):
        second = run(triggered_by="test")
    assert first.pk == second.pk
    assert ReconciliationRun.objects.count() == 1
    assert ReconciliationRun.objects.get().runs == 2
    [alert] = OutboundEvent.objects.filter(type=EventType.RECONCILIATION_FAILED)
    assert alert.data["failed_checks"] == ["usage_ledger", "invoice_usage"]
    payload = DATA[EventType.RECONCILIATION_FAILED.value](data=alert.data)
    assert payload.is_valid(), payload.errors  # the schema's webhooks section says so
    assert set(alert.data) == set(payload.fields)
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["finance@example.com"]
    assert "Reconciliation failed" in mailoutbox[0].subject
    assert f"transaction {event.ledger_transaction_id}" in mailoutbox[0].body
    # Fixed again: the same row passes.
    with triggers_off() as cursor:
        cursor.execute("UPDATE metering_event SET amount = amount - 1 WHERE id = %s", [event.pk])
    assert run().status == "passed"
    assert ReconciliationRun.objects.get().runs == 3


def test_the_daily_task_reconciles_a_day_through_celery(books):
    assert settings.CELERY_BEAT_SCHEDULE["invoicing-reconcile-yesterday"]["task"] == (
        reconcile_yesterday.name
    )
    result = reconcile_yesterday.apply(args=["2026-04-10"])  # eager, in this process
    assert result.get() == "passed: 0 difference(s)"
    run_of_day = ReconciliationRun.objects.get()
    assert (run_of_day.period_start, run_of_day.period_end) == reconciliation.day_bounds(
        date(2026, 4, 10)
    )
    assert run_of_day.triggered_by == "beat"
    assert check(run_of_day, "usage_ledger")["totals"]["USD"]["expected"] == "6"


def test_the_task_without_a_day_reconciles_yesterday():
    reconcile_yesterday.apply().get()
    yesterday = timezone.now().date() - timedelta(days=1)
    assert ReconciliationRun.objects.get().period_start == reconciliation.day_bounds(yesterday)[0]


def test_the_command_prints_the_differences_and_exits_1(books, capsys):
    with triggers_off() as cursor:
        cursor.execute("UPDATE invoicing_invoice SET total = total + 2 WHERE id = %s", [books.pk])
    with pytest.raises(SystemExit) as exit_:
        call_command("reconcile", "--start", "2026-04-01", "--end", "2026-05-01")
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert "Finalized invoices = their ledger postings: FAILED: 1" in out
    assert f"USD invoice {books.pk} {books.display_number}: receivable leg ≠ total" in out
    assert ReconciliationRun.objects.get().triggered_by == "manage.py reconcile"
    call_command("reconcile", "--day", "2026-04-10", "--currency", "usd")  # clean: no exit
    assert ReconciliationRun.objects.filter(scope="USD").exists()
