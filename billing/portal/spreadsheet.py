"""CSV files a person opens in a spreadsheet: no cell may be read as a formula.

A text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is run
as a formula by Excel, LibreOffice and Google Sheets (``=HYPERLINK(…)`` sends the reader's
data away). Such cells are prefixed with a single quote, as OWASP's "CSV injection" advice
says; the quote shows, the formula does not run. Spreadsheets also skip leading spaces and
line breaks before a formula (`` =1+1``, ``\n=1+1``), so what counts is the first character
after any leading whitespace. Numbers we format ourselves are not text cells and are
written as they are.
"""

from __future__ import annotations

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """``value`` as a CSV cell that no spreadsheet runs as a formula."""
    if isinstance(value, str) and (
        value.startswith(FORMULA_PREFIXES) or value.lstrip().startswith(FORMULA_PREFIXES)
    ):
        return "'" + value
    return value
