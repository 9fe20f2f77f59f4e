"""Prepaid commitments: what a plan's ``commitment_amount`` puts on its invoices (reads).

A commitment is owed slice by slice of a period's billed span (``selectors._slices``: each
plan version's ``commitment_amount`` by its share of the period; nothing in a trial or after
the end), drawn down by the period's usage charges; usage beyond it is overage, what no
usage drew is breakage (``@CommitmentBreakage``). When it is invoiced is the plan's
``commitment_billing``:

in_arrears (the default)
    At the period's close, with its usage: one fee line per slice, then the draw-down (one
    negative line) — ``commitment_lines`` without a prepaid invoice.
in_advance (paid up front, as Orb's and Lago's prepaid commitments)
    When the period opens, an invoice of its own (``Invoice.kind`` commitment,
    ``advance_draft``): the slices as they stand then, held on ``@CommitmentPrepaid`` (a
    liability: not revenue until used or broken). At the close, the period's invoice
    (``commitment_lines`` with the ``Prepaid``) draws usage down against what is owed for the
    period, and releases the prepaid amount from ``@CommitmentPrepaid``: what is owed now
    differs from what was prepaid only when the period changed after it opened (a plan
    change, a cancellation), and that difference is one line of its own ("adjustment"), so
    the two invoices together come to exactly what in_arrears invoices at the close —
    nothing is billed twice. A commitment invoice voided before the close is as if there
    were none: the close invoices the commitment in arrears.

Computed from the period's counters at close, finalization and for the upcoming invoice
(never during rating): rating is unchanged, so no event can draw twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from billing.models import CommitmentBilling, ConsumptionModel, Subscription, SubscriptionPhase
from billing.periods import prorate_fee
from invoicing.models import Invoice, InvoiceKind, InvoiceStatus, LineKind
from invoicing.money import rounding_rule_for, to_minor_unit
from invoicing.selectors import (
    InvoiceDraft,
    LineDraft,
    _phases,
    _prorated_note,
    _slices,
    taxed_draft,
)
from metering.rating.base import ledger_round

ZERO = Decimal(0)

# Lines a prepaid commitment draws on: the period's usage charges (meter lines: usage by
# tier or as rated, a flat fee at zero usage, a prorated charge's adjustment, a charge's
# minimum shortfall). Not base fees, not the plan's own minimum (refused beside one).
DRAWN_KINDS = (LineKind.USAGE, LineKind.MINIMUM)


@dataclass(frozen=True)
class Prepaid:
    """A commitment invoiced in advance for a period (its invoice not void)."""

    invoice_id: int
    exact: Decimal  # what it holds on @CommitmentPrepaid (its lines' exact sum)
    presented: Decimal  # its lines as presented (before tax)
    display: str  # its number, or "draft"


@dataclass
class Commitment:
    fees: list[LineDraft]  # a fee line per slice; with a prepaid invoice, the adjustment
    draw: LineDraft | None  # the draw-down
    breakage: Decimal  # what no usage drew
    drawn: Decimal  # exact, 12 places
    drawable: list[tuple[LineDraft, Decimal]]  # each line drawn on, and what of it
    prepaid: Prepaid | None = None
    owed: Decimal = ZERO  # the period's commitment, exact
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def lines(self) -> list[LineDraft]:
        return [*self.fees, *([self.draw] if self.draw is not None else [])]

    @property
    def released(self) -> Decimal:
        """What the period's invoice releases from @CommitmentPrepaid (its
        ``commitment_deferred`` is minus this)."""
        return self.prepaid.exact if self.prepaid is not None else ZERO


def prepaid_for(subscription: Subscription, period_start: datetime) -> Prepaid | None:
    """The period's commitment invoiced in advance, if any (a void one is none)."""
    if subscription.pk is None:
        return None
    invoice = (
        Invoice.objects.filter(
            subscription_id=subscription.pk, period_start=period_start, kind=InvoiceKind.COMMITMENT
        )
        .exclude(status=InvoiceStatus.VOID)
        .first()
    )
    if invoice is None:
        return None
    return Prepaid(
        invoice_id=invoice.pk,
        exact=invoice.commitment_deferred,
        presented=invoice.subtotal,
        display=invoice.display_number or "draft",
    )


def _committed_lines(
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    currency: str,
    phases: list[SubscriptionPhase],
) -> list[LineDraft]:
    """One fee line per slice of the billed span under a version with a commitment."""
    lines = []
    for part in _slices(subscription, period_start, period_end, phases):
        commitment = part.plan.commitment_amount
        if commitment is None or part.plan.consumption_model != ConsumptionModel.METERED:
            continue
        amount = prorate_fee(
            subscription,
            commitment,
            used_from=part.starts_at,
            used_until=part.ends_at,
            period_start=period_start,
            period_end=period_end,
        )
        description = (
            f"{part.plan.name} — prepaid commitment, {commitment.normalize():,f} {currency} "
            "per period"
        )
        description += _prorated_note(
            subscription, part.starts_at, part.ends_at, period_start, period_end
        )
        lines.append(
            LineDraft(
                kind=LineKind.COMMITMENT,
                description=description,
                starts_at=part.starts_at,
                ends_at=part.ends_at,
                quantity=Decimal(1),
                unit_price=amount,
                amount_precise=amount,
                plan_id=part.plan.pk,
                fee=True,
                metadata={"commitment": str(amount)},
            )
        )
    return lines


def commitment_lines(
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    currency: str,
    phases: list[SubscriptionPhase],
    lines: list[LineDraft],
    prepaid: Prepaid | None = None,
) -> Commitment:
    """A commitment's lines on the period's invoice, its breakage and what it drew (exact,
    12 places). Without ``prepaid``: the commitment's fee lines (``_committed_lines``), then
    the draw-down. With it (invoiced in advance): no fee line, but one adjustment line when
    what the period owes now differs from what was prepaid (owed − prepaid, either sign),
    then the draw-down. The period's usage charges draw the commitment down — one negative
    line — up to what is owed (``_drawable``: the whole period's usage lines — usage is not
    split by plan version, docs/pricing-file.md — and the share of a charge minimum's
    shortfall owed by versions with a commitment), at the ledger's 12 places. Usage beyond
    it stays on the invoice as overage; what no usage drew is breakage
    (``Invoice.commitment_breakage``, recognised on ``@CommitmentBreakage`` at
    finalization). ``round_commitment`` sets the presented figures."""
    committed_lines = _committed_lines(subscription, period_start, period_end, currency, phases)
    if not committed_lines and prepaid is None:
        return Commitment([], None, ZERO, ZERO, [])
    owed = sum((ln.amount_precise for ln in committed_lines), ZERO)
    starts = committed_lines[0].starts_at if committed_lines else period_start
    ends = committed_lines[-1].ends_at if committed_lines else period_end
    last_plan = committed_lines[-1].plan_id if committed_lines else subscription.plan_id
    fees = committed_lines
    if prepaid is not None:
        fees = []
        if owed != prepaid.exact:
            fees.append(
                LineDraft(
                    kind=LineKind.COMMITMENT,
                    # presented by round_commitment
                    description=_adjustment_description(prepaid, owed, currency),
                    starts_at=starts,
                    ends_at=ends,
                    quantity=Decimal(1),
                    unit_price=owed - prepaid.exact,
                    amount_precise=owed - prepaid.exact,
                    plan_id=last_plan,
                    fee=True,
                    metadata={
                        "commitment": str(owed),
                        "prepaid": str(prepaid.exact),
                        "prepaid_invoice": prepaid.invoice_id,
                    },
                )
            )
    drawable = [(ln, _drawable(ln)) for ln in lines if ln.meter_id is not None]
    usage = ledger_round(sum((amount for _, amount in drawable), ZERO))  # the ledger's places
    drawn = min(owed, max(usage, ZERO))
    left = owed - drawn
    metadata = {
        "committed": str(owed),
        "usage": str(usage),
        "drawn": str(drawn),
        "left": str(left),
        "overage": str(max(usage - owed, ZERO)),
    }
    if prepaid is not None:
        metadata["prepaid"] = str(prepaid.exact)
        metadata["prepaid_invoice"] = prepaid.invoice_id  # type: ignore[assignment]
    draw = LineDraft(
        kind=LineKind.COMMITMENT,
        description=_draw_description(prepaid, left, currency),  # presented: round_commitment
        starts_at=starts,
        ends_at=ends,
        quantity=Decimal(1),
        unit_price=-drawn,
        amount_precise=-drawn,
        plan_id=last_plan,
        fee=True,
        metadata=metadata,
    )
    return Commitment(fees, draw, left, drawn, drawable, prepaid=prepaid, owed=owed)


def _draw_description(prepaid: Prepaid | None, left: Decimal, currency: str) -> str:
    """``left``: presented (whole minor units), once ``round_commitment`` has run."""
    source = "the commitment" if prepaid is None else f"the prepaid commitment ({prepaid.display})"
    return f"Usage drawn from {source} ({_shown(left, currency)} {currency} not drawn)"


def _adjustment_description(prepaid: Prepaid, owed: Decimal, currency: str) -> str:
    """``owed``: presented (whole minor units), once ``round_commitment`` has run."""
    return (
        f"Prepaid commitment adjusted: {_shown(owed, currency)} {currency} owed for the "
        f"period, {_shown(prepaid.presented, currency)} invoiced in advance ({prepaid.display})"
    )


def _shown(amount: Decimal, currency: str) -> str:
    """An amount in a description, to the minor unit (the presented figures are already
    whole minor units: nothing is rounded here once round_commitment has run)."""
    return f"{to_minor_unit(amount, currency):,f}"


def _drawable(line: LineDraft) -> Decimal:
    """What of a meter line a commitment draws: a usage charge's line whole; a charge
    minimum's shortfall by the share of it owed by plan versions with a commitment (a
    minimum of a version without one is not paid from a later version's commitment)."""
    if line.kind not in DRAWN_KINDS:
        return ZERO
    if line.kind == LineKind.USAGE:
        return line.amount_precise
    owed = Decimal(line.metadata.get("minimum", "0"))
    ours = Decimal(line.metadata.get("minimum_committed", "0"))
    if ours == owed:
        return line.amount_precise
    if not ours:
        return ZERO
    return ledger_round(line.amount_precise * ours / owed)


def round_commitment(commitment: Commitment, currency: str, rule: str) -> None:
    """The commitment's presented figures, after its lines were rounded: its fee lines add
    up to the whole commitment rounded (each is the rounded running total less the one
    before it: 33.33, 33.34, 33.33 for three thirds of 100.00 — and an adjustment after a
    prepaid invoice is what is owed rounded less what that invoice presented), and the
    draw-down is what the lines it draws were presented at, up to the commitment presented
    — usage within the commitment comes to the commitment exactly. What that moves from the
    exact figures is the invoice's rounding (``@Rounding``), as any line's rounding is. The
    descriptions say the presented figures (what is left: the commitment presented less the
    draw presented), never an exact figure rounded by another rule."""
    prepaid = commitment.prepaid
    running = prepaid.exact if prepaid is not None else ZERO
    presented = prepaid.presented if prepaid is not None else ZERO
    for line in commitment.fees:
        running += line.amount_precise
        line.amount = to_minor_unit(running, currency, rule) - presented
        presented += line.amount
        if prepaid is not None:  # the adjustment: what is owed as presented, less the prepaid
            line.description = _adjustment_description(prepaid, presented, currency)
    if commitment.draw is None:
        return
    shown = ZERO
    for line, amount in commitment.drawable:
        shown += (
            line.amount if amount == line.amount_precise else to_minor_unit(amount, currency, rule)
        )
    commitment.draw.amount = -min(presented, max(shown, ZERO))
    # what is left as the invoice presents it: the commitment presented less the draw
    # presented (the exact breakage, on @CommitmentBreakage, may differ by the rounding)
    commitment.draw.description = _draw_description(
        prepaid, presented + commitment.draw.amount, currency
    )


def opens_in_advance(
    subscription: Subscription, period_start: datetime, period_end: datetime
) -> list[SubscriptionPhase] | None:
    """The phases of a period that opens with its commitment invoiced in advance (the plan
    in force where its billed span starts bills it in_advance); None when it does not."""
    phases = _phases(subscription, period_end)
    slices = _slices(subscription, period_start, period_end, phases)
    if not slices:
        return None
    plan = slices[0].plan
    if (
        plan.commitment_amount is None
        or plan.commitment_billing != CommitmentBilling.IN_ADVANCE
        or plan.consumption_model != ConsumptionModel.METERED
    ):
        return None
    return phases


def advance_draft(
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    phases: list[SubscriptionPhase],
) -> InvoiceDraft:
    """The invoice of a commitment billed in advance, as the period opens: its fee lines
    (rounded as running totals), tax on them, all of it held on @CommitmentPrepaid
    (``commitment_deferred``) until the period's invoice releases it."""
    currency = subscription.plan.currency
    rule = rounding_rule_for(plan_rounding=phases[-1].plan.rounding, currency=currency)
    lines = _committed_lines(subscription, period_start, period_end, currency, phases)
    commitment = Commitment(lines, None, ZERO, ZERO, [])
    round_commitment(commitment, currency, rule)
    exact = sum((line.amount_precise for line in lines), ZERO)
    return taxed_draft(
        subscription.customer,
        currency,
        lines,
        rule,
        usage_charged=ZERO,
        fees_precise=exact,
        commitment_deferred=exact,
    )
