"""Applying a parsed pricing file in one transaction: every meter ensured, every plan
published (version 1, its next version when it differs from the latest, or left alone),
and what happened to each reported (``PricingSummary``); any failure leaves the database as
it was."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from django.db import transaction

from billing import errors, services
from billing.models import Meter
from billing.pricing.parse import PricingFile, parse_pricing
from billing.pricing.reading import located_message


class Outcome(StrEnum):
    """What loading did to one meter or plan."""

    CREATED = "created"
    UNCHANGED = "unchanged"
    UPDATED = "updated"  # a meter's name or unit
    NEW_VERSION = "new_version"


@dataclass(frozen=True)
class MeterResult:
    code: str
    outcome: Outcome
    updated_fields: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.outcome == Outcome.UPDATED:
            return f"meter {self.code}: updated {', '.join(self.updated_fields)}"
        return f"meter {self.code}: {self.outcome}"


@dataclass(frozen=True)
class PlanResult:
    code: str
    version: int
    outcome: Outcome

    def describe(self) -> str:
        if self.outcome == Outcome.NEW_VERSION:
            return f"plan {self.code}: new version {self.version}"
        return f"plan {self.code}: {self.outcome} (version {self.version})"


@dataclass(frozen=True)
class PricingSummary:
    source: str
    meters: tuple[MeterResult, ...]
    plans: tuple[PlanResult, ...]
    dry_run: bool = False

    @property
    def results(self) -> tuple[MeterResult | PlanResult, ...]:
        return (*self.meters, *self.plans)

    @property
    def changed(self) -> bool:
        return any(r.outcome != Outcome.UNCHANGED for r in self.results)

    def lines(self) -> list[str]:
        return [r.describe() for r in self.results]


def _relocated(
    exc: errors.BillingError, pricing: PricingFile, location: str
) -> errors.BillingError:
    """The same error class (so callers can still catch ``MeterConflict``), its message
    prefixed with the file and the place in it, which it carries as ``PricingFileInvalid``
    does (``source``, ``location``, ``line``: attributes no other BillingError declares)."""
    line = pricing.line_of(location)
    located: Any = type(exc)(
        located_message(exc.message, source=pricing.source, location=location, line=line),
        param=location,
    )
    located.source, located.location, located.line = pricing.source, location, line
    return located


@transaction.atomic
def apply_pricing(
    *, pricing: PricingFile, published_by_id: int | None = None, dry_run: bool = False
) -> PricingSummary:
    """Ensure the meters and publish the plans of a parsed file, all or nothing."""
    meter_results: list[MeterResult] = []
    plan_results: list[PlanResult] = []
    for i, meter in enumerate(pricing.meters):
        kwargs = meter.as_kwargs()
        before = Meter.objects.filter(code=meter.code).values("name", "unit").first()
        try:
            _, created = services.ensure_meter(**kwargs)
        except errors.BillingError as exc:
            raise _relocated(exc, pricing, f"meters[{i}]") from exc
        if created:
            meter_results.append(MeterResult(meter.code, Outcome.CREATED))
            continue
        updated = tuple(
            f
            for f in ("name", "unit")
            if f in kwargs and before is not None and before.get(f) != kwargs[f]
        )
        meter_results.append(
            MeterResult(meter.code, Outcome.UPDATED if updated else Outcome.UNCHANGED, updated)
        )
    for i, spec in enumerate(pricing.plans):
        try:
            plan, created = services.publish_plan(spec=spec, published_by_id=published_by_id)
        except errors.BillingError as exc:
            where = f"plans[{i}].{exc.param}" if exc.param else f"plans[{i}]"
            raise _relocated(exc, pricing, where) from exc
        if not created:
            outcome = Outcome.UNCHANGED
        else:
            outcome = Outcome.CREATED if plan.version == 1 else Outcome.NEW_VERSION
        plan_results.append(PlanResult(spec.code, plan.version, outcome))
    if dry_run:
        transaction.set_rollback(True)
    return PricingSummary(pricing.source, tuple(meter_results), tuple(plan_results), dry_run)


def load_pricing(
    *,
    path: str | Path | None = None,
    text: str | None = None,
    source: str | None = None,
    format: str | None = None,
    published_by_id: int | None = None,
    dry_run: bool = False,
) -> PricingSummary:
    """Parse a pricing file and apply it in one transaction: meters first (created, or
    accepted unchanged — what a meter counts never changes, ``MeterConflict``), then each
    plan (published as version 1, as its next version when it differs from the latest, or
    left alone). ``dry_run`` reports what would change and rolls everything back."""
    pricing = parse_pricing(path=path, text=text, source=source, format=format)
    return apply_pricing(pricing=pricing, published_by_id=published_by_id, dry_run=dry_run)
