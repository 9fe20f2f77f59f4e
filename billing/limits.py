"""What the product accepts as a currency, an amount and a date: one place, read by the API,
the pricing file and the admin (docs/api.md lists the same limits for users).

Amounts
    ``MAX_AMOUNT`` (10^15 of a unit, with up to 12 decimal places) is the most one request
    may move or allow: a top-up, a credit grant, a hold, an amount to authorize or settle, a
    credit limit. The narrowest money column (``billing.models.price_field``: numeric(30,
    12), below 10^18) holds it with a thousand times to spare; ledger balances (numeric(38,
    12), below 10^26) hold 10^11 of them. A plan's prices (base fee, unit prices, flat fees)
    and quantities are bounded by their column: at most ``MAX_PRICE`` (just under 10^18).

Currencies
    An active ISO 4217 code (``ISO_4217``; the test and "no currency" codes XTS and XXX
    are left out), or, where a wallet in a ledger unit is meant, one of ``LEDGER_UNITS``.

Dates
    A subscription's ``start`` lies on or after ``EARLIEST_DATE`` (2000-01-01 UTC) and not
    in the future; a credit grant's ``expires_at`` in the future, at most
    ``MAX_EXPIRY_YEARS`` ahead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

MAX_AMOUNT = Decimal(10) ** 15
# A plan's prices and quantities: what their column (price_field: numeric(30, 12)) holds.
MAX_PRICE = Decimal(10) ** 18 - Decimal("1e-12")
EARLIEST_DATE = datetime(2000, 1, 1, tzinfo=UTC)
MAX_EXPIRY_YEARS = 100

# Ledger units a wallet may hold besides money (billing.services.TOKENS, rating.CREDITS).
LEDGER_UNITS = frozenset({"CREDITS", "TOKENS"})

# ISO 4217 active codes (list one, 2025), funds and precious metals included; XTS (testing)
# and XXX (no currency) left out.
ISO_4217 = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD
    BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP
    DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR
    IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD
    MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB
    PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD
    SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS
    VED VES VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XUA YER
    ZAR ZMW ZWG ZWL
    """.split()
)


def currency_problem(code: object, *, units: frozenset[str] = frozenset()) -> str | None:
    """Why ``code`` is not a currency here (None: it is). ``units``: the ledger units this
    field also takes (e.g. ``{"CREDITS"}`` for a top-up)."""
    if not isinstance(code, str) or not (code in ISO_4217 or code in units):
        allowed = "an ISO 4217 currency code (e.g. USD, EUR)"
        if units:
            allowed += " or " + " / ".join(sorted(units))
        return f"{code!r} is not {allowed}"
    return None


def amount_problem(value: Decimal, *, limit: Decimal = MAX_AMOUNT) -> str | None:
    """Why ``value`` is out of range (None: it is not)."""
    if abs(value) > limit:
        return f"at most {limit:,f} per request (the documented maximum amount)"
    return None
