"""Presenting amounts: the one place invoices round.

Amounts are exact everywhere until an invoice presents them. ``to_minor_unit`` rounds an
exact amount to the currency's minor unit (ISO 4217: cents for USD and EUR, none for JPY,
thousandths for KWD) by the invoice's rule (``rounding_rule_for``: the plan's explicit
``Plan.rounding``, else the currency's ``CurrencySetting``, else half to even):
**half to even** by default (banker's rounding: 0.125 → 0.12, 0.135 → 0.14), so that
rounding many lines has no upward drift, or **half up** (0.125 → 0.13) where a contract
migrated from another system says so. Each invoice line is rounded once; totals add the
rounded lines; tax is the rounded rate × the rounded subtotal, by the same rule. What this
rounding moves is posted to the ledger's ``@Rounding`` account (see ``invoicing.models``).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal

from billing.models import CurrencySetting, RoundingRule

ROUNDING = ROUND_HALF_EVEN
# Plan.rounding → the decimal module's mode.
RULES: dict[str, str] = {
    RoundingRule.HALF_EVEN.value: ROUND_HALF_EVEN,
    RoundingRule.HALF_UP.value: ROUND_HALF_UP,
}
_CONTEXT = Context(prec=80)

# ISO 4217 currencies whose minor unit is not the hundredth.
ZERO_DECIMAL = frozenset(
    "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split()
)
THREE_DECIMAL = frozenset("BHD IQD JOD KWD LYD OMR TND".split())


def minor_unit_exponent(currency: str) -> int:
    """How many decimal places the currency's minor unit has."""
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def _quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_unit_exponent(currency))


def to_minor_unit(amount: Decimal, currency: str, rule: str = RoundingRule.HALF_EVEN) -> Decimal:
    """``amount`` rounded to the currency's minor unit by ``rule`` (a ``RoundingRule``:
    half to even unless told)."""
    return amount.quantize(_quantum(currency), rounding=RULES[rule], context=_CONTEXT)


def rounding_rule_for(*, plan_rounding: str, currency: str) -> str:
    """The rule an invoice of a plan in ``currency`` rounds by, decided here only: the plan's
    explicit rule (``Plan.rounding`` not empty), else the currency's (``CurrencySetting``,
    edited in the admin), else half to even."""
    if plan_rounding:
        return plan_rounding
    found = (
        CurrencySetting.objects.filter(currency=currency).values_list("rounding", flat=True).first()
    )
    return found or RoundingRule.HALF_EVEN


def floor_to_minor_unit(amount: Decimal, currency: str) -> Decimal:
    """The whole minor units in ``amount`` (towards zero): what a balance can pay."""
    return amount.quantize(_quantum(currency), rounding=ROUND_DOWN, context=_CONTEXT)


def ceil_to_minor_unit(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded up to the currency's minor unit: what a charge must ask for so
    that at least ``amount`` is received (an auto top-up's refill)."""
    return amount.quantize(_quantum(currency), rounding=ROUND_CEILING, context=_CONTEXT)


def to_minor_units_int(amount: Decimal, currency: str) -> int:
    """An amount already in minor units as the integer Stripe takes (12.34 USD → 1234)."""
    scaled = amount.scaleb(minor_unit_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency} is not a whole number of minor units")
    return int(scaled)


def from_minor_units_int(value: int, currency: str) -> Decimal:
    return Decimal(value).scaleb(-minor_unit_exponent(currency))


# --- display: the one formatting of amounts for people (admin, portal, PDFs, e-mails) ---------

# Units of the ledger that are not ISO 4217 currencies, and the places shown for them.
UNIT_PLACES = {"CREDITS": 2, "TOKENS": 0}


def display_places(currency: str) -> int:
    """Decimal places an amount of ``currency`` is shown with: its minor unit (credits to
    the hundredth, tokens whole)."""
    return UNIT_PLACES.get(currency, minor_unit_exponent(currency))


def format_amount(amount: Decimal, currency: str = "", *, signed: bool = False) -> str:
    """``amount`` as finance reads it: rounded half to even to the currency's minor unit,
    thousands separated, the code after it ("1,234.57 USD", "1,235 JPY"); never "-0.00".
    ``signed`` puts "+" before a positive amount. The exact figure is ``exact_amount``."""
    places = display_places(currency) if currency else 2
    rounded = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUNDING, context=_CONTEXT)
    if rounded == 0:
        rounded = abs(rounded)
    text = f"{rounded:,f}"
    if signed and rounded > 0:
        text = "+" + text
    return f"{text} {currency}".strip()


def exact_amount(amount: Decimal, currency: str = "") -> str:
    """``amount`` exactly, without trailing zeros and never in exponent form
    ("0.000002 USD", "0 USD" for 0E-12, "1,000 USD" for 1E+3)."""
    exact = amount.normalize(_CONTEXT)
    if exact == 0:
        exact = Decimal(0)
    return f"{exact:,f} {currency}".strip()
