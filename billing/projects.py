"""Budgets inside a customer (``billing.models.projects``): projects created, changed and
archived; each project's spend this period against its limit; the budget checked for
``/authorize`` and holds, and ``budget.exceeded`` emitted once per period.

Rating keeps the spend (``metering.rating.budgets``: one read under the customer's rating
lock, the counter upserted with the events); this module is what the API, the portal, the
admin and holds use.

    create_project, update_project, get_project, list_projects
    budget_period(customer, at) → (start, end): the customer's billing period at ``at``
    project_budgets(customer, projects) → ProjectBudget each: spent, held, remaining
    check_budget(project, amount)  raises BudgetExceeded / ProjectArchived
    link_hold, hold_project, record_hold_spend: holds placed for a project
    note_budget_exceeded: the first refusal of a period recorded, budget.exceeded emitted
    note_hold_refused: the same for a hold refused for its budget

Lock order: a limit changed or a hold placed for a project takes the customer's usage lock
first (level 1, ``docs/architecture.md``), so the check and rating's see one order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from billing import errors, outbox
from billing.models import (
    ConsumptionModel,
    Customer,
    EventType,
    Project,
    ProjectHold,
    ProjectSpend,
    Subscription,
)
from billing.periods import add_months, period_of
from billing.services import lock_customer_usage

KEEP: Any = object()  # update_project: leave this field as it is
ZERO = Decimal(0)
CREDITS = "CREDITS"


# --- writes -----------------------------------------------------------------------------------


def create_project(
    *, customer: Customer, key: str, name: str = "", spend_limit: Decimal | None = None
) -> Project:
    """A new project of ``customer``; ``ProjectExists`` if the key is taken (the unique
    (customer, key) constraint decides, so two concurrent creations make one)."""
    _check_limit(spend_limit)
    try:
        with transaction.atomic():
            return Project.objects.create(
                customer=customer, key=key, name=name or key, spend_limit=spend_limit
            )
    except IntegrityError:
        if Project.objects.filter(customer=customer, key=key).exists():
            raise errors.ProjectExists(
                f"customer {customer.external_id} already has a project {key!r}", param="key"
            ) from None
        raise


@transaction.atomic
def update_project(
    *,
    project: Project,
    name: str = KEEP,
    spend_limit: Decimal | None = KEEP,
    archived: bool = KEEP,
) -> Project:
    """Change a project's name, limit or status. Under the customer's usage lock: rating
    checks the limit under it too. A new limit re-arms ``budget.exceeded`` for the current
    period (the next refusal emits it again)."""
    lock_customer_usage([project.customer_id])
    project = Project.objects.select_for_update().get(pk=project.pk)
    if name is not KEEP:
        project.name = name
    if spend_limit is not KEEP and spend_limit != project.spend_limit:
        _check_limit(spend_limit)
        project.spend_limit = spend_limit
        start, _ = budget_period(project.customer)
        ProjectSpend.objects.filter(project=project, period_start=start).update(exceeded_at=None)
    if archived is not KEEP:
        if archived and project.archived_at is None:
            project.archived_at = timezone.now()
        elif not archived:
            project.archived_at = None
    project.save()
    return project


def _check_limit(spend_limit: Decimal | None) -> None:
    if spend_limit is not None and spend_limit < 0:
        raise errors.ValidationFailed("spend_limit must not be negative", param="spend_limit")


# --- reads ------------------------------------------------------------------------------------


def get_project(*, customer: Customer, key: str, param: str | None = None) -> Project:
    project = Project.objects.filter(customer=customer, key=key).select_related("customer").first()
    if project is None:
        raise errors.ProjectNotFound(
            f"customer {customer.external_id} has no project {key!r} (create it first: "
            f"POST /customers/{customer.external_id}/projects)",
            param=param,
        )
    return project


def list_projects(*, customer: Customer, status: str | None = None) -> QuerySet[Project]:
    projects = Project.objects.filter(customer=customer).select_related("customer")
    if status == "active":
        projects = projects.filter(archived_at__isnull=True)
    elif status == "archived":
        projects = projects.filter(archived_at__isnull=False)
    return projects


def live_subscription(customer: Customer) -> Subscription | None:
    """The customer's subscription that is not canceled, as rating loads it
    (``metering.rating.read``): at most one (``billing_one_live_subscription``); ordered
    anyway (the newest) so the answer never depends on the database's row order."""
    return (
        Subscription.objects.filter(customer=customer)
        .exclude(status="canceled")
        .select_related("plan")
        .order_by("-started_at", "-pk")
        .first()
    )


def budget_period(
    customer: Customer, *, at: datetime | None = None, subscription: Any = KEEP
) -> tuple[datetime, datetime]:
    """The period a budget counts in at ``at``: the customer's billing period as rating
    places an event of that moment (the trial, the current period, or the anchor's period);
    a calendar month (UTC) without a subscription."""
    at = at or timezone.now()
    if subscription is KEEP:
        subscription = live_subscription(customer)
    if subscription is not None and at >= subscription.started_at:
        if subscription.trial_ends_at is not None and at < subscription.trial_ends_at:
            return subscription.started_at, subscription.trial_ends_at
        if subscription.current_period_start <= at < subscription.current_period_end:
            return subscription.current_period_start, subscription.current_period_end
        return period_of(subscription, at)
    month = at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return month, add_months(month, 1)


def charge_currency(customer: Customer, subscription: Subscription | None) -> str:
    """What the customer's usage is charged in, so what its projects' limits are in."""
    if subscription is None:
        return customer.currency
    if subscription.plan.consumption_model == ConsumptionModel.CREDITS:
        return CREDITS
    return subscription.plan.currency


@dataclass(frozen=True)
class ProjectBudget:
    project: Project
    period_start: datetime
    period_end: datetime
    currency: str
    spent: Decimal  # charged to the project's usage this period (exact)
    held: Decimal  # what is left of its pending, unexpired holds
    event_count: int

    @property
    def remaining(self) -> Decimal | None:
        """What may still be spent this period; None without a limit (never below 0)."""
        if self.project.spend_limit is None:
            return None
        return max(self.project.spend_limit - self.spent - self.held, ZERO)


def project_budgets(
    *, customer: Customer, projects: list[Project], at: datetime | None = None
) -> list[ProjectBudget]:
    """Each project's spend and holds in the period of ``at`` (default now): two queries."""
    subscription = live_subscription(customer)
    start, end = budget_period(customer, at=at, subscription=subscription)
    currency = charge_currency(customer, subscription)
    ids = [p.pk for p in projects]
    spends = {
        row.project_id: row
        for row in ProjectSpend.objects.filter(project_id__in=ids, period_start=start)
    }
    held = _held(ids, exclude_hold=None)
    return [
        ProjectBudget(
            project=p,
            period_start=start,
            period_end=end,
            currency=spends[p.pk].currency
            if p.pk in spends and spends[p.pk].currency
            else currency,
            spent=spends[p.pk].amount if p.pk in spends else ZERO,
            held=held.get(p.pk, ZERO),
            event_count=spends[p.pk].event_count if p.pk in spends else 0,
        )
        for p in projects
    ]


HELD_SQL = """
SELECT ph.project_id, COALESCE(sum(h.amount - h.settled_amount), 0)
  FROM billing_projecthold ph JOIN ledger_hold h ON h.id = ph.hold_id
 WHERE ph.project_id = ANY(%s) AND h.status = 'pending'
   AND (h.expires_at IS NULL OR h.expires_at > now()) AND h.id IS DISTINCT FROM %s
 GROUP BY ph.project_id
"""


def _held(project_ids: list[int], *, exclude_hold: int | None) -> dict[int, Decimal]:
    if not project_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(HELD_SQL, [project_ids, exclude_hold])
        return dict(cursor.fetchall())


def check_budget(*, project: Project, amount: Decimal, at: datetime | None = None) -> None:
    """Refuse new usage of ``amount`` for ``project`` now: archived (``ProjectArchived``) or
    past its limit with its spend and holds this period (``BudgetExceeded``). The caller
    holds the customer's usage lock when the answer must stay true (placing a hold)."""
    if project.archived_at is not None:
        raise errors.ProjectArchived(f"project {project.key!r} is archived", param="project")
    if project.spend_limit is None or amount <= 0:
        return
    [budget] = project_budgets(customer=project.customer, projects=[project], at=at)
    if budget.spent + budget.held + amount > project.spend_limit:
        raise budget_exceeded(project, budget.spent + budget.held, amount, budget.currency)


def budget_exceeded(
    project: Project, used: Decimal, amount: Decimal, currency: str
) -> errors.BudgetExceeded:
    assert project.spend_limit is not None, "only a limit is exceeded"
    return errors.BudgetExceeded(
        f"project {project.key!r} has spent or holds {used.normalize():f} {currency} of its "
        f"{project.spend_limit.normalize():f} limit this period; this needs "
        f"{amount.normalize():f}",
        param="project",
    )


# --- holds placed for a project -----------------------------------------------------------------


def link_hold(*, project: Project, hold_id: int) -> None:
    """The hold counts against the project's budget while it is pending (idempotent)."""
    ProjectHold.objects.get_or_create(hold_id=hold_id, defaults={"project": project})


def hold_project(*, hold_id: int) -> Project | None:
    link = ProjectHold.objects.filter(hold_id=hold_id).select_related("project").first()
    return None if link is None else link.project


def record_hold_spend(*, hold_id: int, amount: Decimal, currency: str) -> None:
    """A hold settled by amount: what was settled is the project's spend of the period now
    (rating counts an event's; settling by amount does not pass through rating)."""
    project = hold_project(hold_id=hold_id)
    if project is None or not amount:
        return
    start, _ = budget_period(project.customer)
    add_spend(project_id=project.pk, period_start=start, currency=currency, amount=amount)


def add_spend(
    *, project_id: int, period_start: datetime, currency: str, amount: Decimal, events: int = 0
) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_projectspend (project_id, period_start, currency, amount, "
            "event_count, updated_at) VALUES (%s, %s, %s, %s, %s, now()) "
            "ON CONFLICT (project_id, period_start) DO UPDATE SET "
            "amount = billing_projectspend.amount + EXCLUDED.amount, "
            "event_count = billing_projectspend.event_count + EXCLUDED.event_count, "
            "currency = EXCLUDED.currency, updated_at = now()",
            [project_id, period_start, currency, amount, events],
        )


def _money(value: Decimal | None) -> str | None:
    """As the API renders money: a decimal string with the ledger's 12 places."""
    return None if value is None else format(value.quantize(Decimal("1e-12")), "f")


# --- budget.exceeded ----------------------------------------------------------------------------


def note_budget_exceeded(
    *, project_id: int, period_start: datetime, currency: str, amount: Decimal
) -> bool:
    """The project's usage was refused for its budget: the first refusal of the period
    (since the limit last changed) is recorded on its spend row and emits
    ``budget.exceeded``, once; True when this one did."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_projectspend AS s (project_id, period_start, currency, amount, "
            "event_count, exceeded_at, updated_at) "
            "VALUES (%s, %s, %s, 0, 0, clock_timestamp(), now()) "
            "ON CONFLICT (project_id, period_start) DO UPDATE SET exceeded_at = clock_timestamp() "
            "WHERE s.exceeded_at IS NULL RETURNING s.amount, s.exceeded_at",
            [project_id, period_start, currency],
        )
        row = cursor.fetchone()
    if row is None:  # already noted this period
        return False
    project = Project.objects.select_related("customer").get(pk=project_id)
    outbox.emit(
        EventType.BUDGET_EXCEEDED,
        customer=project.customer,
        data={
            "object": "project",
            "customer": project.customer.external_id,
            "project": project.key,
            "name": project.name,
            "spend_limit": _money(project.spend_limit),
            "currency": currency,
            "spent": _money(row[0]),
            "refused_amount": _money(amount),
            "period_start": period_start.isoformat(),
        },
        dedupe_key=f"budget.exceeded:{project_id}:{period_start.isoformat()}:{row[1].isoformat()}",
    )
    return True


def note_hold_refused(*, project: Project, amount: Decimal, currency: str) -> bool:
    """A hold for ``project`` refused for its budget: noted like an event's refusal, in the
    current period (``note_budget_exceeded``: ``budget.exceeded`` once per crossing)."""
    start, _ = budget_period(project.customer)
    return note_budget_exceeded(
        project_id=project.pk, period_start=start, currency=currency, amount=amount
    )
