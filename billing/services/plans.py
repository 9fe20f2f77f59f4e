"""Meters and plans: meters created (what they count never changes), plans validated and
published as immutable versions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, field
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction

from billing import errors, limits
from billing.meters import CATALOG_KINDS, LLM_FIELDS
from billing.models import (
    Aggregation,
    BillingTime,
    CommitmentBilling,
    ConsumptionModel,
    GrantCadence,
    GrantExpiry,
    Interval,
    Meter,
    Plan,
    PlanCharge,
    PlanCreditGrant,
    PriceModel,
    PriceTier,
    Rollover,
    RoundingRule,
)
from billing.periods import MONTHS_PER_INTERVAL
from billing.services.cadence import (
    validate_billing_cadence,
    validate_charge_cadences,
    validate_charges_cadence,
)
from billing.services.locks import PLAN_VERSION_LOCK

# What a meter may read under llm. (the normalised usage), and which of those the model
# catalog can price (billing.meters).
LLM_PATHS = LLM_FIELDS
CATALOG_METER_PROPERTIES = tuple(CATALOG_KINDS)


METER_FIELDS = ("event_name", "aggregation", "property", "filters", "group_by")


def _validate_meter(spec: dict[str, Any]) -> None:
    if spec.get("aggregation") not in Aggregation.values:
        raise errors.ValidationFailed(
            f"aggregation must be one of {', '.join(Aggregation.values)}", param="aggregation"
        )
    if spec["aggregation"] != Aggregation.COUNT and not spec.get("property"):
        raise errors.ValidationFailed(
            f"a {spec['aggregation']} meter needs the property it reads", param="property"
        )
    path = spec.get("property") or ""
    if path.startswith("llm.") and path[4:] not in LLM_PATHS:
        raise errors.ValidationFailed(
            f"{path} is not a normalised LLM usage field; one of "
            + ", ".join(f"llm.{name}" for name in LLM_PATHS),
            param="property",
        )
    if not isinstance(spec.get("filters", {}), dict):
        raise errors.ValidationFailed("filters must be an object", param="filters")
    if not isinstance(spec.get("group_by", []), list):
        raise errors.ValidationFailed("group_by must be a list", param="group_by")


@transaction.atomic
def create_meter(**spec: Any) -> Meter:
    _validate_meter(spec)
    try:
        with transaction.atomic():
            return Meter.objects.create(**spec)
    except IntegrityError:
        raise errors.MeterExists(f"meter {spec['code']!r} already exists", param="code") from None


def ensure_meter(**spec: Any) -> tuple[Meter, bool]:
    """Create the meter, or accept it unchanged. What a meter counts never changes once it
    exists (past usage would change meaning); its name and unit may."""
    existing = Meter.objects.filter(code=spec["code"]).first()
    if existing is None:
        return create_meter(**spec), True
    _validate_meter(spec)
    changed = [f for f in METER_FIELDS if f in spec and getattr(existing, f) != spec[f]]
    if changed:
        raise errors.MeterConflict(
            f"meter {existing.code!r} exists with a different {', '.join(changed)}; "
            "create a new meter instead",
            param="code",
        )
    updates = {
        k: spec[k] for k in ("name", "unit") if k in spec and getattr(existing, k) != spec[k]
    }
    if updates:
        Meter.objects.filter(pk=existing.pk).update(**updates)
    return existing, False


def rename_meter(*, meter: Meter, name: str, unit: str) -> Meter:
    """A meter's name and unit may change; what it counts may not."""
    Meter.objects.filter(pk=meter.pk).update(name=name, unit=unit)
    meter.name, meter.unit = name, unit
    return meter


# Fields added to a spec after plans were published with it: left out of the spec's hash
# while they keep their default, so that a plan not using them keeps the hash (and the
# version) it always had.
ADDED_LATER = {"hash": "omit_default"}


@dataclass(frozen=True)
class TierSpec:
    up_to: Decimal | None
    unit_price: Decimal = Decimal(0)
    flat_fee: Decimal = Decimal(0)
    # Units counted in blocks of this size in this tier, rounded up; unit_price is then per
    # block (None: per unit).
    package_size: Decimal | None = field(default=None, metadata=ADDED_LATER)


# Names other systems give a price's cadence, refused on a charge with the name it has here.
CHARGE_CADENCE_NAMES = (
    "a charge's own cadence is interval × interval_count (a whole multiple of the "
    "subscription's billing period; docs/pricing-file.md); charges_interval is the plan's"
)
CHARGE_FIELD_HINTS = dict.fromkeys(
    ("charges_interval", "charges_interval_count", "billing_interval", "cadence"),
    CHARGE_CADENCE_NAMES,
)


@dataclass(frozen=True)
class ChargeSpec:
    meter: str
    price_model: str = PriceModel.PER_UNIT
    included_quantity: Decimal = Decimal(0)
    unit_price: Decimal = Decimal(0)
    package_size: Decimal | None = None
    margin_percent: Decimal | None = None
    tiers: tuple[TierSpec, ...] = ()
    # The first tier's flat fee invoiced even for a period without billable usage.
    flat_fee_at_zero: bool = field(default=False, metadata=ADDED_LATER)
    # The least the charge is invoiced per period; the shortfall is its own line.
    minimum_amount: Decimal | None = field(default=None, metadata=ADDED_LATER)
    # A period billed in part: the amount prorated by the time billed (tier on the whole).
    prorated: bool = field(default=False, metadata=ADDED_LATER)
    # Its own cadence (Orb's per-price cadence), a multiple of the billing period; "": every
    # billing period (billing.services.cadence.validate_charge_cadences).
    interval: str = field(default="", metadata=ADDED_LATER)
    interval_count: int = field(default=1, metadata=ADDED_LATER)


# Plan grants are drawn after promotional (10) and adjustment (20) credits, before
# purchased ones (50): they expire sooner than what the customer paid for.
PLAN_GRANT_PRIORITY = 30
MAX_GRANT_PRIORITY = 1000
MAX_EXPIRY_DAYS = 3650
MAX_ROLLOVER_PERIODS = 120


@dataclass(frozen=True)
class CreditGrantSpec:
    """A plan's recurring grant (``billing.plan_credits``): ``amount`` each grant period
    (``cadence``), expiring by ``expiry``, what is left at the next grant rolling over by
    ``rollover`` for at most ``rollover_periods`` periods."""

    amount: Decimal
    cadence: str = GrantCadence.PERIOD
    expiry: str = GrantExpiry.PERIOD_END
    expiry_days: int | None = None
    rollover: str = Rollover.NONE
    rollover_cap: Decimal | None = None
    rollover_periods: int | None = None
    priority: int = PLAN_GRANT_PRIORITY
    name: str = ""


@dataclass(frozen=True)
class PlanSpec:
    code: str
    name: str
    currency: str = "USD"
    interval: str = Interval.MONTH
    base_fee: Decimal = Decimal(0)
    trial_days: int = 0
    consumption_model: str = ConsumptionModel.METERED
    units_per_credit: Decimal | None = None
    description: str = ""
    metadata: dict[str, Any] | None = None
    charges: tuple[ChargeSpec, ...] = ()
    credit_grant: CreditGrantSpec | None = None
    # How its invoices round to the minor unit (invoicing.money.to_minor_unit); "": the
    # currency's rule, else half to even (invoicing.money.rounding_rule_for).
    rounding: str = field(default="", metadata=ADDED_LATER)
    # The least a subscription is invoiced per period before tax; the shortfall is a line.
    minimum_amount: Decimal | None = field(default=None, metadata=ADDED_LATER)
    # Prepaid commitment per period, drawn down by usage charges (invoicing.commitments).
    commitment_amount: Decimal | None = field(default=None, metadata=ADDED_LATER)
    # When it is invoiced: at the close (in_arrears) or when the period opens (in_advance).
    commitment_billing: str = field(
        default=CommitmentBilling.IN_ARREARS.value, metadata=ADDED_LATER
    )
    # A period lasts interval_count intervals (billing.periods).
    interval_count: int = field(default=1, metadata=ADDED_LATER)
    # What new subscriptions count periods from: their start, or the calendar (an anchor day).
    billing_time: str = field(default=BillingTime.ANNIVERSARY.value, metadata=ADDED_LATER)
    billing_anchor_day: int | None = field(default=None, metadata=ADDED_LATER)
    # Metered plans: the usage charges billed every charges_interval_count charges_interval
    # (a yearly plan's usage monthly); "": the plan's own interval (validate_charges_cadence).
    charges_interval: str = field(default="", metadata=ADDED_LATER)
    charges_interval_count: int = field(default=1, metadata=ADDED_LATER)

    def canonical_hash(self, *, legacy_rounding: bool = False) -> str:
        """``legacy_rounding``: the hash as published before "not said" ("") could be told
        from half_even, when half_even was the default and left out of the hash."""

        def plain(value: Any) -> Any:
            if isinstance(value, Decimal):
                return format(value.normalize(), "f")
            if isinstance(value, tuple | list):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in sorted(value.items())}
            if hasattr(value, "__dataclass_fields__"):
                return {
                    name: plain(getattr(value, name))
                    for name, spec_field in value.__dataclass_fields__.items()
                    if not _omitted(spec_field, getattr(value, name))
                }
            return value

        body = plain(self)
        body["metadata"] = body["metadata"] or {}  # None and {} publish the same plan
        if legacy_rounding and body.get("rounding") == RoundingRule.HALF_EVEN:
            del body["rounding"]
        if body["credit_grant"] is None:  # plans without one keep the hash they always had
            del body["credit_grant"]
        encoded = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()


def _omitted(spec_field: Any, value: Any) -> bool:
    """A field added later, at its default: left out of the hash."""
    return (
        spec_field.metadata.get("hash") == "omit_default"
        and spec_field.default is not MISSING
        and value == spec_field.default
    )


def _validate_commitment(spec: PlanSpec, fail: Any, money: Any) -> None:
    """A prepaid commitment: money, > 0, on a metered plan, and not beside a plan minimum
    (both say "at least this per period"; docs/pricing-file.md, Prepaid commitments)."""
    value, param = spec.commitment_amount, "commitment_amount"
    if spec.commitment_billing not in CommitmentBilling.values:
        fail(
            f"commitment_billing must be one of {', '.join(CommitmentBilling.values)}",
            "commitment_billing",
        )
    if value is None:
        if spec.commitment_billing != CommitmentBilling.IN_ARREARS:
            fail(
                "commitment_billing applies to a plan with a commitment_amount",
                "commitment_billing",
            )
        return
    if value <= 0:
        fail("commitment_amount must be greater than 0 (leave it out for none)", param)
    money(value, param)
    if spec.consumption_model != ConsumptionModel.METERED:
        fail(
            "a commitment is drawn down by invoiced usage: commitment_amount applies to "
            "metered plans (a balance plan's usage is paid from its prepaid balance as it is "
            "rated, a credits plan's in credits)",
            param,
        )
    if spec.minimum_amount is not None:
        fail(
            "a plan has a commitment_amount or a minimum_amount, not both: the commitment "
            "is already the least a period is invoiced for usage (charge minimums may stay)",
            param,
        )


def validate_plan_spec(spec: PlanSpec) -> None:
    """The one set of rules a plan obeys, whoever publishes it (the API, the pricing file,
    the admin): publish_plan runs it, the pricing file runs it early to name the line."""

    def fail(message: str, param: str) -> None:
        raise errors.ValidationFailed(message, param=param)

    def money(value: Decimal, param: str) -> None:
        if value < 0:
            fail("prices cannot be negative", param)
        problem = limits.amount_problem(value, limit=limits.MAX_PRICE)
        if problem:
            fail(problem, param)

    problem = limits.currency_problem(spec.currency)
    if problem:
        fail(problem, "currency")
    validate_billing_cadence(
        interval=spec.interval,
        interval_count=spec.interval_count,
        billing_time=spec.billing_time,
        billing_anchor_day=spec.billing_anchor_day,
    )
    if spec.consumption_model not in ConsumptionModel.values:
        fail(
            f"consumption_model must be one of {', '.join(ConsumptionModel.values)}",
            "consumption_model",
        )
    validate_charges_cadence(spec)
    validate_charge_cadences(spec)
    money(spec.base_fee, "base_fee")
    if spec.rounding and spec.rounding not in RoundingRule.values:
        fail(f"rounding must be one of {', '.join(RoundingRule.values)}", "rounding")

    def minimum(value: Decimal | None, param: str) -> None:
        if value is None:
            return
        if value <= 0:
            fail("minimum_amount must be greater than 0 (leave it out for none)", param)
        money(value, param)
        if spec.consumption_model == ConsumptionModel.CREDITS:
            fail(
                "a minimum is money, and a credits plan's usage is drawn in credits; "
                "minimum_amount applies to metered and balance plans",
                param,
            )

    minimum(spec.minimum_amount, "minimum_amount")
    _validate_commitment(spec, fail, money)
    if spec.consumption_model == ConsumptionModel.CREDITS and not (
        spec.units_per_credit and spec.units_per_credit > 0
    ):
        fail("a credits plan needs units_per_credit > 0", "units_per_credit")
    if spec.consumption_model != ConsumptionModel.CREDITS and spec.units_per_credit is not None:
        fail("units_per_credit applies to credits plans only", "units_per_credit")
    if spec.credit_grant is not None:
        _validate_credit_grant(spec, spec.credit_grant, fail, money)
    meters = [c.meter for c in spec.charges]
    if len(set(meters)) != len(meters):
        fail("a plan has at most one charge per meter", "charges")
    for i, charge in enumerate(spec.charges):
        param = f"charges[{i}]"
        if charge.price_model not in PriceModel.values:
            fail(
                f"price_model must be one of {', '.join(PriceModel.values)}", f"{param}.price_model"
            )
        if charge.included_quantity < 0:
            fail("quantities cannot be negative", f"{param}.included_quantity")
        money(charge.unit_price, f"{param}.unit_price")
        tiered = charge.price_model in (PriceModel.GRADUATED, PriceModel.VOLUME)
        if tiered and charge.unit_price:
            fail(
                f"a {charge.price_model} charge is priced by its tiers; move the price into "
                "its tiers",
                f"{param}.unit_price",
            )
        if tiered and not charge.tiers:
            fail(f"a {charge.price_model} charge needs tiers", f"{param}.tiers")
        if not tiered and charge.tiers:
            fail(f"a {charge.price_model} charge has no tiers", f"{param}.tiers")
        if charge.price_model == PriceModel.PACKAGE and not (
            charge.package_size and charge.package_size > 0
        ):
            fail("a package charge needs package_size > 0", f"{param}.package_size")
        if charge.price_model != PriceModel.PACKAGE and charge.package_size is not None:
            fail("package_size applies to package charges only", f"{param}.package_size")
        if charge.margin_percent is not None:
            if charge.price_model != PriceModel.PER_UNIT or charge.unit_price or charge.tiers:
                fail(
                    "margin_percent prices a charge from the model catalog (provider cost × "
                    "(1 + margin)); it cannot also have a unit_price, tiers or packages",
                    f"{param}.margin_percent",
                )
            if charge.margin_percent <= -100:
                fail("margin_percent must be above -100", f"{param}.margin_percent")
        minimum(charge.minimum_amount, f"{param}.minimum_amount")
        if charge.prorated and spec.consumption_model == ConsumptionModel.CREDITS:
            fail(
                "prorated applies to metered and balance plans (a credits plan draws credits "
                "by the unit)",
                f"{param}.prorated",
            )
        if charge.flat_fee_at_zero:
            if not tiered:
                fail(
                    "flat_fee_at_zero applies to graduated and volume charges only (the first "
                    "tier's flat fee)",
                    f"{param}.flat_fee_at_zero",
                )
            elif not charge.tiers[0].flat_fee:
                fail(
                    "flat_fee_at_zero charges the first tier's flat fee, and the first tier "
                    "has none",
                    f"{param}.flat_fee_at_zero",
                )
            if spec.consumption_model == ConsumptionModel.CREDITS:
                fail(
                    "flat_fee_at_zero applies to metered and balance plans (a credits plan "
                    "draws credits by the unit, without fees)",
                    f"{param}.flat_fee_at_zero",
                )
        previous = Decimal(0)
        for j, tier in enumerate(charge.tiers):
            last = j == len(charge.tiers) - 1
            money(tier.unit_price, f"{param}.tiers[{j}].unit_price")
            money(tier.flat_fee, f"{param}.tiers[{j}].flat_fee")
            if tier.up_to is None and not last:
                fail("only the last tier may be open-ended", f"{param}.tiers[{j}].up_to")
            if last and tier.up_to is not None:
                fail("the last tier must be open-ended (up_to null)", f"{param}.tiers[{j}].up_to")
            if tier.package_size is not None and tier.package_size <= 0:
                fail(
                    "a tier's package_size must be greater than 0 (leave it out to price per unit)",
                    f"{param}.tiers[{j}].package_size",
                )
            if tier.up_to is not None:
                if tier.up_to <= previous:
                    fail("tier bounds must increase", f"{param}.tiers[{j}].up_to")
                previous = tier.up_to


def _validate_credit_grant(spec: PlanSpec, grant: CreditGrantSpec, fail, money) -> None:
    """The rules of a recurring grant, beside the plan's (its shape is read by
    ``billing.pricing.grants``, the same reader for the file, the API and the admin)."""
    where = "credit_grant"
    if spec.consumption_model not in (ConsumptionModel.CREDITS, ConsumptionModel.BALANCE):
        fail(
            "a recurring credit grant needs a credits plan (credits) or a balance plan "
            "(money); a metered plan invoices its usage and has no balance to grant into",
            where,
        )
    if grant.amount <= 0:
        fail("must be greater than 0", f"{where}.amount")
    money(grant.amount, f"{where}.amount")
    if grant.cadence not in GrantCadence.values:
        fail(f"cadence must be one of {', '.join(GrantCadence.values)}", f"{where}.cadence")
    if grant.cadence == GrantCadence.MONTH and spec.interval not in MONTHS_PER_INTERVAL:
        fail(
            f"a monthly grant needs periods of a month or longer (the plan bills by the "
            f"{spec.interval}); use cadence: period",
            f"{where}.cadence",
        )
    if grant.expiry not in GrantExpiry.values:
        fail(f"expiry must be one of {', '.join(GrantExpiry.values)}", f"{where}.expiry")
    if grant.expiry == GrantExpiry.DAYS:
        if grant.expiry_days is None or not 1 <= grant.expiry_days <= MAX_EXPIRY_DAYS:
            fail(
                f"an expiry in days needs expiry_days between 1 and {MAX_EXPIRY_DAYS}",
                f"{where}.expiry_days",
            )
    elif grant.expiry_days is not None:
        fail("expiry_days applies to expiry: days only", f"{where}.expiry_days")
    if grant.rollover not in Rollover.values:
        fail(f"rollover must be one of {', '.join(Rollover.values)}", f"{where}.rollover")
    if grant.cadence == GrantCadence.ONCE and grant.rollover != Rollover.NONE:
        fail(
            "a grant made once has no next grant to roll over into; leave rollover out "
            "(what is left lasts until its expiry)",
            f"{where}.rollover",
        )
    if grant.rollover == Rollover.CAPPED:
        if grant.rollover_cap is None or grant.rollover_cap <= 0:
            fail("a capped rollover needs rollover_cap > 0", f"{where}.rollover_cap")
        else:
            money(grant.rollover_cap, f"{where}.rollover_cap")
    elif grant.rollover_cap is not None:
        fail("rollover_cap applies to rollover: capped only", f"{where}.rollover_cap")
    if grant.rollover_periods is not None:
        if grant.rollover == Rollover.NONE:
            fail("rollover_periods applies to rollover: all or capped", f"{where}.rollover_periods")
        if not 1 <= grant.rollover_periods <= MAX_ROLLOVER_PERIODS:
            fail(
                f"rollover_periods must be between 1 and {MAX_ROLLOVER_PERIODS} "
                "(leave it out for no limit)",
                f"{where}.rollover_periods",
            )
    if not 0 <= grant.priority <= MAX_GRANT_PRIORITY:
        fail(f"priority must be between 0 and {MAX_GRANT_PRIORITY}", f"{where}.priority")
    if len(grant.name) > 200:
        fail("at most 200 characters", f"{where}.name")


@transaction.atomic
def plan_version_of(spec: PlanSpec, *, version: int) -> Plan:
    """The plan version ``spec`` publishes as, not saved: every term of the spec, in one
    list — ``publish_plan`` saves it, the usage preview prices a draft with it, so a term
    added to the spec is published and previewed alike."""
    return Plan(
        code=spec.code,
        version=version,
        name=spec.name,
        description=spec.description,
        currency=spec.currency,
        interval=spec.interval,
        interval_count=spec.interval_count,
        billing_time=spec.billing_time,
        billing_anchor_day=spec.billing_anchor_day,
        charges_interval=spec.charges_interval,
        charges_interval_count=spec.charges_interval_count,
        base_fee=spec.base_fee,
        trial_days=spec.trial_days,
        consumption_model=spec.consumption_model,
        units_per_credit=spec.units_per_credit,
        metadata=spec.metadata or {},
        rounding=spec.rounding,
        minimum_amount=spec.minimum_amount,
        commitment_amount=spec.commitment_amount,
        commitment_billing=spec.commitment_billing,
    )


def publish_plan(*, spec: PlanSpec, published_by_id: int | None = None) -> tuple[Plan, bool]:
    """Publish ``spec`` as the next version of plan ``spec.code``; an unchanged spec returns
    the current version (``created`` False). The pricing file, the API and the admin all
    come through here."""
    validate_plan_spec(spec)
    meters = {m.code: m for m in Meter.objects.filter(code__in=[c.meter for c in spec.charges])}
    for i, charge in enumerate(spec.charges):
        if charge.meter not in meters:
            raise errors.MeterNotFound(
                f"meter {charge.meter!r} does not exist", param=f"charges[{i}].meter"
            )
        meter = meters[charge.meter]
        if charge.margin_percent is not None and (
            meter.property not in CATALOG_METER_PROPERTIES or meter.aggregation != Aggregation.SUM
        ):
            raise errors.ValidationFailed(
                f"meter {meter.code} does not sum LLM tokens (its property would be one of "
                f"{', '.join(CATALOG_METER_PROPERTIES)}), so the model catalog cannot price it; "
                "give it a unit_price instead of a margin",
                param=f"charges[{i}].margin_percent",
            )
    # Versions of one plan are allocated one at a time (the unique index backs this up).
    # The two-int key space (namespace, key): the single bigint space is the usage locks'.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [PLAN_VERSION_LOCK, spec.code]
        )
    current = Plan.objects.filter(code=spec.code).order_by("-version").first()
    spec_hash = spec.canonical_hash()
    if current is not None and current.spec_hash == spec_hash:
        return current, False
    if (
        current is not None
        and spec.rounding == current.rounding == RoundingRule.HALF_EVEN
        and current.spec_hash == spec.canonical_hash(legacy_rounding=True)
    ):
        # A version published before rounding "" existed (half_even then the default, left
        # out of its hash), re-applied from a file that says half_even: unchanged.
        return current, False
    plan = plan_version_of(spec, version=(current.version + 1) if current else 1)
    plan.self_serve = current.self_serve if current is not None else False
    plan.spec_hash = spec_hash
    plan.published_by_id = published_by_id
    plan.save(force_insert=True)
    if spec.credit_grant is not None:
        grant = spec.credit_grant
        PlanCreditGrant.objects.create(
            plan=plan,
            name=grant.name,
            amount=grant.amount,
            cadence=grant.cadence,
            expiry=grant.expiry,
            expiry_days=grant.expiry_days,
            rollover=grant.rollover,
            rollover_cap=grant.rollover_cap,
            rollover_periods=grant.rollover_periods,
            priority=grant.priority,
        )
    for charge_spec in spec.charges:
        plan_charge = PlanCharge.objects.create(
            plan=plan,
            meter=meters[charge_spec.meter],
            included_quantity=charge_spec.included_quantity,
            price_model=charge_spec.price_model,
            unit_price=charge_spec.unit_price,
            package_size=charge_spec.package_size,
            margin_percent=charge_spec.margin_percent,
            flat_fee_at_zero=charge_spec.flat_fee_at_zero,
            minimum_amount=charge_spec.minimum_amount,
            prorated=charge_spec.prorated,
            interval=charge_spec.interval,
            interval_count=charge_spec.interval_count,
        )
        PriceTier.objects.bulk_create(
            PriceTier(
                charge=plan_charge,
                position=n,
                up_to=t.up_to,
                unit_price=t.unit_price,
                flat_fee=t.flat_fee,
                package_size=t.package_size,
            )
            for n, t in enumerate(charge_spec.tiers)
        )
    return plan, True


def credit_grant_spec_of(plan: Plan | PlanCreditGrant) -> CreditGrantSpec | None:
    """The recurring grant a plan version was published with (None: it has none)."""
    if isinstance(plan, PlanCreditGrant):
        grant: PlanCreditGrant | None = plan
    else:
        grant = PlanCreditGrant.objects.filter(plan=plan).first()
    if grant is None:
        return None
    return CreditGrantSpec(
        amount=grant.amount,
        cadence=grant.cadence,
        expiry=grant.expiry,
        expiry_days=grant.expiry_days,
        rollover=grant.rollover,
        rollover_cap=grant.rollover_cap,
        rollover_periods=grant.rollover_periods,
        priority=grant.priority,
        name=grant.name,
    )


def plan_spec_of(plan: Plan) -> PlanSpec:
    """The spec a plan version was published from (for "publish new version" edits)."""
    return PlanSpec(
        credit_grant=credit_grant_spec_of(plan),
        code=plan.code,
        name=plan.name,
        currency=plan.currency,
        interval=plan.interval,
        interval_count=plan.interval_count,
        billing_time=plan.billing_time,
        billing_anchor_day=plan.billing_anchor_day,
        charges_interval=plan.charges_interval,
        charges_interval_count=plan.charges_interval_count,
        base_fee=plan.base_fee,
        trial_days=plan.trial_days,
        consumption_model=plan.consumption_model,
        units_per_credit=plan.units_per_credit,
        description=plan.description,
        metadata=plan.metadata or None,
        rounding=plan.rounding,
        minimum_amount=plan.minimum_amount,
        commitment_amount=plan.commitment_amount,
        commitment_billing=plan.commitment_billing,
        charges=tuple(
            ChargeSpec(
                meter=c.meter.code,
                price_model=c.price_model,
                included_quantity=c.included_quantity,
                unit_price=c.unit_price,
                package_size=c.package_size,
                margin_percent=c.margin_percent,
                flat_fee_at_zero=c.flat_fee_at_zero,
                minimum_amount=c.minimum_amount,
                prorated=c.prorated,
                interval=c.interval,
                interval_count=c.interval_count,
                tiers=tuple(
                    TierSpec(
                        up_to=t.up_to,
                        unit_price=t.unit_price,
                        flat_fee=t.flat_fee,
                        package_size=t.package_size,
                    )
                    for t in c.tiers.all()
                ),
            )
            for c in plan.charges.select_related("meter").prefetch_related("tiers").order_by("id")
        ),
    )


def set_plan_self_serve(*, code: str, self_serve: bool) -> int:
    """Offer plan ``code`` in the customer portal (or stop): every version of it, so the
    flag is the plan's, not a version's (``publish_plan`` carries it to the next version).
    Setting it again changes nothing. Returns the number of versions changed."""
    if not Plan.objects.filter(code=code).exists():
        raise errors.PlanNotFound(f"plan {code!r} does not exist", param="plan")
    return (
        Plan.objects.filter(code=code).exclude(self_serve=self_serve).update(self_serve=self_serve)
    )


def latest_plan(*, code: str) -> Plan:
    plan = Plan.objects.filter(code=code).order_by("-version").first()
    if plan is None:
        raise errors.PlanNotFound(f"plan {code!r} does not exist", param="plan")
    return plan
