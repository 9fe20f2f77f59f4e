"""The usage counters' tables and the ledger's balance rows are updated in place several
times per event (no indexed column changes): their pages are filled half full so that an
update finds room for the row's new version on its own page (a HOT update, which writes
no index entry). Metering migration 0017 and ledger 0010."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

UPDATED_IN_PLACE = (
    "metering_periodusage",
    "metering_dailyusage",
    "metering_modelusage",
    "metering_marginusage",
    "ledger_balance",
)


@pytest.mark.parametrize("table", UPDATED_IN_PLACE)
def test_counter_pages_keep_room_for_hot_updates(table):
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", [table])
        (options,) = cursor.fetchone()
    assert "fillfactor=50" in (options or [])
