"""Closing and finalizing under real concurrency: threads with their own connections on
real PostgreSQL (``transaction=True``: no test transaction hides the locking), and a real
Celery worker process killed with SIGKILL in the middle of a period close."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal

import pytest
from django.db import connection, transaction

from billing import services as billing
from invoicing import services as invoicing
from invoicing.models import Invoice, InvoiceLine
from tests.invoicing.conftest import PERIOD_END, START, ChargeSpec, meter, plan, subscribe, use
from tests.test_celery import REPO, database_url_of_test_db
from tests.threads import run_concurrently

D = Decimal


@pytest.mark.django_db(transaction=True)
def test_sixteen_closers_of_one_period_make_one_invoice():
    subscription = subscribe(plan(base_fee="20"))
    results = run_concurrently(
        lambda i: invoicing.close_period(subscription_id=subscription.pk, as_of=PERIOD_END),
        threads=16,
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sum(1 for r in results if r is not None and r.created) == 1
    assert Invoice.objects.filter(subscription=subscription).count() == 1
    subscription.refresh_from_db()
    assert subscription.current_period_start == PERIOD_END  # rolled exactly once


@pytest.mark.django_db(transaction=True)
def test_concurrent_finalizations_number_without_gaps_or_double_posting():
    drafts = [
        invoicing.close_period(
            subscription_id=subscribe(plan(base_fee="5")).pk, as_of=PERIOD_END
        ).invoice
        for _ in range(8)
    ]
    # each draft finalized by two threads at once
    results = run_concurrently(
        lambda i: invoicing.finalize_invoice(invoice_id=drafts[i % 8].pk, now=PERIOD_END),
        threads=16,
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers == list(range(1, 9))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM ledger_transaction WHERE reference LIKE 'invoice:%%:finalize'"
        )
        assert cursor.fetchone()[0] == 8


@pytest.mark.django_db(transaction=True)
def test_usage_racing_the_finalization_is_either_invoiced_or_refused():
    code = meter(name="Calls")
    subscription = subscribe(plan(ChargeSpec(meter=code, unit_price=D("0.01"))))
    draft = invoicing.close_period(subscription_id=subscription.pk, as_of=PERIOD_END).invoice

    def work(i: int):
        if i == 0:
            return invoicing.finalize_invoice(invoice_id=draft.pk, now=PERIOD_END)
        return use(subscription, 100, at_time=START, now=PERIOD_END).status

    results = run_concurrently(work, threads=12)
    assert not [r for r in results if isinstance(r, BaseException)], results
    accepted = results[1:].count("accepted")
    invoice = Invoice.objects.get(pk=draft.pk)
    # every accepted late event is on the invoice; the rest were refused (period_closed)
    assert invoice.total == D(accepted)
    assert invoice.usage_charged == D(accepted)
    assert set(results[1:]) <= {"accepted", "rejected"}


@pytest.fixture
def killable_worker():
    """Start Celery worker processes on a queue of their own; ``start()`` returns one."""
    queue = f"close-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_test_db(),
        "DB_CONN_MAX_AGE": "0",
        # a short visibility timeout stands in for the hour production waits before Redis
        # hands an unacknowledged task to another worker
        "CELERY_VISIBILITY_TIMEOUT": "3",
    }
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "billing",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--queues",
                queue,
                "--loglevel",
                "WARNING",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=REPO,
            env=env,
            start_new_session=True,  # its own process group: SIGKILL reaches the pool child
        )
        started.append(process)
        return process

    start.queue = queue
    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _blocked_on_phases() -> bool:
    """Another connection waits for a lock on the subscription's phases: the close has
    written its invoice and lines and is rolling the subscription (a scheduled change)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # fresh inside a transaction too
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s",
            ["%billing_subscriptionphase%"],
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_in_the_middle_of_a_close_leaves_nothing_and_the_retry_closes_once(
    killable_worker,
):
    from billing import services as billing
    from billing.models import SubscriptionPhase
    from invoicing.tasks import close_subscription_period

    code = meter(name="Calls")
    basic = plan(ChargeSpec(meter=code, unit_price=D("0.5")), base_fee="10")
    subscription = subscribe(basic)
    billing.change_subscription(
        subscription_id=subscription.pk, plan=plan(base_fee="20"), at_period_end=True, now=START
    )
    use(subscription, 4)
    first = killable_worker()
    with transaction.atomic():
        # Hold the phases: the worker's close stops there, its invoice written, uncommitted.
        list(SubscriptionPhase.objects.select_for_update().filter(subscription=subscription))
        close_subscription_period.apply_async(
            (subscription.pk, PERIOD_END.isoformat()), queue=killable_worker.queue
        )
        _wait_for(_blocked_on_phases, 60, "the close to reach the roll")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=20)
    # The dead worker's transaction is rolled back: nothing half-made.
    _wait_for(lambda: not _blocked_on_phases(), 30, "the dead close to end")
    assert Invoice.objects.count() == 0 and InvoiceLine.objects.count() == 0
    subscription.refresh_from_db()
    assert subscription.current_period_start == START
    # A new worker is handed the unacknowledged task (late acknowledgement) and finishes.
    time.sleep(4)  # past the visibility timeout
    killable_worker()
    _wait_for(lambda: Invoice.objects.exists(), 120, "the redelivered close")
    time.sleep(1)
    invoice = Invoice.objects.get()
    assert invoice.total == D(12)  # 10 base fee + 4 × 0.5
    assert InvoiceLine.objects.count() == 2
    subscription.refresh_from_db()
    assert subscription.current_period_start == PERIOD_END
    assert subscription.plan.base_fee == D(20)  # the scheduled change took effect once


@pytest.mark.django_db(transaction=True)
def test_the_last_dunning_failure_and_a_finalizer_take_their_locks_in_one_order(settings):
    """The lock order (docs/architecture.md): the customer's usage lock, then the invoice's
    row. Finalizing keeps it; the last failed payment attempt took the invoice's row and
    then, canceling the subscription (DUNNING_FINAL_ACTION), the usage lock: with a
    finalization of the same invoice between the two (a redelivered finalize task, the
    admin's action), PostgreSQL found a deadlock and aborted one of them."""
    settings.DUNNING_RETRY_DAYS = []  # the first failure is the last
    settings.DUNNING_FINAL_ACTION = "cancel"
    subscription = subscribe(plan(base_fee="5"))
    invoice = invoicing.finalize_invoice(
        invoice_id=invoicing.close_period(
            subscription_id=subscription.pk, as_of=PERIOD_END
        ).invoice.pk,
        now=PERIOD_END,
    )
    assert invoice.status == "open"
    usage_locked, failure_pid = threading.Event(), []

    def waits_on_a_lock(pid: int) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
            row = cursor.fetchone()
        return row is not None and row[0] == "Lock"

    def finalizer() -> Invoice:
        with transaction.atomic():
            billing.lock_customer_usage([subscription.customer_id])
            usage_locked.set()
            deadline = time.monotonic() + 20
            while not (failure_pid and waits_on_a_lock(failure_pid[0])):
                assert time.monotonic() < deadline, "the payment failure never waited"
                time.sleep(0.02)
            return invoicing.finalize_invoice(invoice_id=invoice.pk, now=PERIOD_END)

    def payment_failure() -> Invoice:
        connection.ensure_connection()
        failure_pid.append(connection.connection.info.backend_pid)
        assert usage_locked.wait(20)
        return invoicing.record_payment_failure(
            invoice_id=invoice.pk, attempt=1, message="card declined"
        )

    results = run_concurrently(lambda i: (finalizer, payment_failure)[i](), threads=2)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert Invoice.objects.get(pk=invoice.pk).status == "past_due"
    subscription.refresh_from_db()
    assert subscription.status == "canceled"
