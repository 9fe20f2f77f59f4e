"""Budgets inside a customer, as rating keeps them (``billing.models.projects``): an event
naming a ``project`` is charged to it, and refused when the project's spend this period
would pass its limit.

    load(wanted, hold_id)   → Budgets, or None when no event names a project (no statement)
    Budgets.charge(...)     → (the project's id, None), or (None, the error refusing the
                              event: project_not_found, project_archived, budget_exceeded)
    upsert_spend(accepted)  → the counters' statement, sent with the events' write
    Budgets.note_refusals() → ``budget.exceeded`` for the first refusal of a period

Called from two places: ``rate._rate`` (load, charge each event after its wallet check,
note the refusals) and ``write._write`` (the upsert, and each event row's ``project_id``).

Costs: nothing for a part without a project; one statement (``load``, under the customers'
rating locks) for a part with one — the counter goes out with the events and counters in
``write._write``'s one round trip. The rating lock serialises every event of a customer, so
the spend read here is the spend when the event is written: two events cannot both fit in
what is left of a limit (tests/metering/test_budgets_concurrency.py proves it with
threads). Holds placed for a project count against it while pending and unexpired, except
the hold being settled by this event (what is left of it is released by the settlement).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing import errors as billing_errors
from billing import projects
from metering.rating.base import ZERO
from metering.rating.sql import Statement, _rows, execute_bound

_LOAD = """
SELECT w.c, w.k, w.ps, p.id, p.spend_limit, p.archived_at IS NOT NULL,
       COALESCE(s.amount, 0), s.exceeded_at IS NOT NULL,
       (SELECT COALESCE(sum(h.amount - h.settled_amount), 0)
          FROM billing_projecthold ph JOIN ledger_hold h ON h.id = ph.hold_id
         WHERE ph.project_id = p.id AND h.status = 'pending'
           AND (h.expires_at IS NULL OR h.expires_at > now())
           AND h.id IS DISTINCT FROM %s::bigint)
  FROM {source}
  LEFT JOIN billing_project p ON p.customer_id = w.c AND p.key = w.k
  LEFT JOIN billing_projectspend s ON s.project_id = p.id AND s.period_start = w.ps
"""


@dataclass
class ProjectState:
    project_id: int
    limit: Decimal | None
    archived: bool
    spent: Decimal  # this period, as read, plus what this part accepted so far
    held: Decimal
    noted: bool  # budget.exceeded already emitted this period


@dataclass
class Budgets:
    # (customer id, key, period start) → its state; None: no such project
    states: dict[tuple[int, str, datetime], ProjectState | None]
    refused: list[tuple[ProjectState, datetime, str, Decimal]] = field(default_factory=list)

    def charge(
        self, customer_id: int, key: str, period_start: datetime, money: Decimal, currency: str
    ) -> tuple[int | None, billing_errors.BillingError | None]:
        """(the project's id, None) when the event fits and is counted; (None, the error)
        when it is refused."""
        state = self.states.get((customer_id, key, period_start))
        if state is None:
            return None, billing_errors.ProjectNotFound(
                f"this customer has no project {key!r} (projects are created first: POST "
                "/customers/{external_id}/projects)",
                param="project",
            )
        if state.archived:
            return None, billing_errors.ProjectArchived(
                f"project {key!r} is archived", param="project"
            )
        if state.limit is not None and money > 0:
            used = state.spent + state.held
            if used + money > state.limit:
                self.refused.append((state, period_start, currency, money))
                return None, billing_errors.BudgetExceeded(
                    f"project {key!r} has spent or holds {used.normalize():f} {currency} of "
                    f"its {state.limit.normalize():f} limit this period; this event costs "
                    f"{money.normalize():f}",
                    param="project",
                )
        state.spent += money
        return state.project_id, None

    def note_refusals(self) -> None:
        """The first refusal of a period per project emits ``budget.exceeded``
        (``billing.projects.note_budget_exceeded``; a statement or two, on refusal only)."""
        for state, period_start, currency, money in self.refused:
            if not state.noted:
                state.noted = True
                projects.note_budget_exceeded(
                    project_id=state.project_id,
                    period_start=period_start,
                    currency=currency,
                    amount=money,
                )


def load(wanted: set[tuple[int, str, datetime]], hold_id: int | None) -> Budgets | None:
    """The projects ``wanted`` names (customer id, key, period start) with their spend in
    those periods and their pending holds: one statement, or none without a project."""
    if not wanted:
        return None
    source, params = _rows("w", "c bigint, k text, ps timestamptz", sorted(wanted))
    states: dict[tuple[int, str, datetime], ProjectState | None] = {}
    for c, k, ps, pid, limit, archived, spent, noted, held in execute_bound(
        _LOAD.format(source=source), [hold_id, *params]
    ):
        states[(c, k, ps)] = (
            None
            if pid is None
            else ProjectState(pid, limit, archived, Decimal(spent), Decimal(held), noted)
        )
    return Budgets(states)


def upsert_spend(accepted: list[Any]) -> Statement | None:
    """The accepted events' spend added to their projects' period counters (set-based,
    additive: the rating lock orders the writers; the unique (project, period) row is
    created by the first)."""
    totals: dict[tuple[int, datetime], list[Any]] = {}
    for a in accepted:
        if a.project_id is None:
            continue
        entry = totals.setdefault((a.project_id, a.period_start), [ZERO, 0, a.currency])
        entry[0] += a.money
        entry[1] += 1
        entry[2] = a.currency
    if not totals:
        return None
    source, params = _rows(
        "b",
        "p bigint, ps timestamptz, a numeric, n bigint, cur text",
        [(pid, ps, amount, n, cur) for (pid, ps), (amount, n, cur) in totals.items()],
    )
    return (
        "INSERT INTO billing_projectspend (project_id, period_start, currency, amount, "
        f"event_count, updated_at) SELECT p, ps, cur, a, n, now() FROM {source} "
        "ON CONFLICT (project_id, period_start) DO UPDATE SET "
        "amount = billing_projectspend.amount + EXCLUDED.amount, "
        "event_count = billing_projectspend.event_count + EXCLUDED.event_count, "
        "currency = EXCLUDED.currency, updated_at = now()",
        params,
    )
