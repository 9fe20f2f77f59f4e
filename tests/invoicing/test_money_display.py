"""Amounts as people read them (invoicing.money.format_amount / exact_amount): the
currency's minor unit, half to even, separators, never an exponent, never "-0.00"; and
the admin's cell with the exact figure on hover."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.admin.common import unit_price_cell
from billing.web.money import money_cell
from invoicing.money import exact_amount, format_amount
from invoicing.pdf import format_money

D = Decimal


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        ("495.96068208145", "USD", "495.96 USD"),
        ("0E-12", "USD", "0.00 USD"),
        ("-0.001", "USD", "0.00 USD"),  # never "-0.00"
        ("1234567.125", "USD", "1,234,567.12 USD"),  # half to even
        ("1234567.135", "USD", "1,234,567.14 USD"),
        ("1234.5", "JPY", "1,234 JPY"),  # no minor unit; half to even
        ("1.2345", "KWD", "1.234 KWD"),
        ("-12.5", "EUR", "-12.50 EUR"),
        ("1000.000000000001", "CREDITS", "1,000.00 CREDITS"),
        ("1500000", "TOKENS", "1,500,000 TOKENS"),
    ],
)
def test_format_amount(amount, currency, shown):
    assert format_amount(D(amount), currency) == shown
    assert format_money(D(amount), currency) == shown  # the PDF's and e-mail's, the same


def test_signed_and_exact():
    assert format_amount(D("3.5"), "USD", signed=True) == "+3.50 USD"
    assert format_amount(D("-3.5"), "USD", signed=True) == "-3.50 USD"
    assert exact_amount(D("0E-12"), "USD") == "0 USD"
    assert exact_amount(D("1E+3"), "USD") == "1,000 USD"
    assert exact_amount(D("495.960682081450"), "USD") == "495.96068208145 USD"


def test_money_cell_rounds_and_keeps_the_exact_figure_on_hover():
    assert money_cell(D("495.960682081450"), "USD") == (
        '<span class="money" title="495.96068208145 USD (exact)">495.96 USD</span>'
    )
    assert money_cell(None, "USD") == "—"


def test_a_per_token_price_reads_per_million_tokens():
    cell = unit_price_cell(D("0.000003"), "USD", "tokens")
    assert ">3.00 USD / M tokens<" in cell and 'title="0.000003 USD per token (exact)"' in cell
    # finer than cents per million: shown exactly, never rounded away
    assert ">0.0375 USD / M tokens<" in unit_price_cell(D("0.0000000375"), "USD", "tokens")
    assert ">0.25 USD<" in unit_price_cell(D("0.25"), "USD", "requests")
