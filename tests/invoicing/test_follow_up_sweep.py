"""A finalization whose follow-up task cannot be queued (the broker is down when it commits)
is kept, never turned into an error, and the beat sweep queues the follow-up (payment, PDF,
e-mail) once the broker is back: a finalized invoice never silently misses its PDF and
e-mail. The broker outage is real: Celery is pointed at a closed port."""

from __future__ import annotations

import contextlib
import socket
from datetime import timedelta

import pytest

from billing.project.celery import app
from invoicing import services as invoicing
from invoicing import tasks
from invoicing.models import Invoice, InvoiceStatus
from tests.invoicing.conftest import PERIOD_END, close, plan, subscribe
from tests.invoicing.test_pdf import _media_mail_and_catalog  # noqa: F401 - autouse fixture

pytestmark = pytest.mark.django_db


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def _fresh_connections() -> None:
    """Celery keeps a connection pool and a producer pool (kombu's, shared per broker URL,
    so they are left open): forget both, so that the next message is sent over a connection
    to the broker URL configured now."""
    app._pool = None
    app.amqp._producer_pool = None


@contextlib.contextmanager
def broker_down():
    """Celery's broker at a port where nothing listens, for real; restored after."""
    url, retry = app.conf.broker_url, app.conf.task_publish_retry
    _fresh_connections()
    app.conf.broker_url = f"redis://127.0.0.1:{closed_port()}/0"
    app.conf.task_publish_retry = False
    try:
        yield
    finally:
        _fresh_connections()
        app.conf.broker_url, app.conf.task_publish_retry = url, retry


def test_a_finalization_with_the_broker_down_is_kept_and_swept_later(
    django_capture_on_commit_callbacks, caplog
):
    draft = close(subscribe(plan(base_fee="20")))
    with broker_down():
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            invoice = invoicing.finalize_invoice(invoice_id=draft.pk, now=PERIOD_END)
    # the follow-up and the webhooks' fan-out of invoice.finalized were attempted, and
    # failed without raising
    assert len(callbacks) == 2
    assert "on_commit" in caplog.text
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN and invoice.number is not None
    assert invoice.pdf.name == ""

    finalized = invoice.finalized_at
    assert invoicing.invoices_without_follow_up(now=finalized + timedelta(minutes=9)) == []
    later = finalized + invoicing.FOLLOW_UP_GRACE
    assert invoicing.invoices_without_follow_up(now=later) == [invoice.pk]

    # The broker is back: the beat task queues the follow-up; the follow-up runs.
    assert invoice.pk in invoicing.invoices_without_follow_up()
    assert tasks.follow_up_finalized_invoices() >= 1
    invoicing.after_finalization(invoice_id=invoice.pk)
    assert Invoice.objects.get(pk=invoice.pk).pdf.name != ""
    assert invoice.pk not in invoicing.invoices_without_follow_up()


def test_drafts_void_invoices_and_followed_up_ones_are_not_swept():
    draft = close(subscribe(plan(base_fee="20")))
    far = PERIOD_END + timedelta(days=30)
    assert draft.pk not in invoicing.invoices_without_follow_up(now=far)
    invoice = invoicing.finalize_invoice(invoice_id=draft.pk, now=PERIOD_END)
    assert invoicing.invoices_without_follow_up(now=far) == [invoice.pk]
    invoicing.void_invoice(invoice_id=invoice.pk, reason="test", now=PERIOD_END)
    assert invoicing.invoices_without_follow_up(now=far) == []
