"""Each value of a pricing file checked where it stands: ``ValueReader`` reads strings,
choices, exact decimals, whole numbers and free-form JSON out of the loaded document, and
every refusal names the place (``plans[1].charges[0].unit_price``) and its line."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from billing.models import PRICE_DIGITS, PRICE_PLACES
from billing.pricing.reading import LinedMapping, Number, PricingFileInvalid

# A field the document leaves out (None is a value: JSON's null).
MISSING = object()


def nearest_line(lines: dict[str, int], location: str | None) -> int | None:
    """The line of ``location``, or of the nearest enclosing element that has one."""
    location = location or ""
    while True:
        if location in lines:
            return lines[location]
        parent = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", location)
        if parent == location:
            return None
        location = parent


class ValueReader:
    """Reads values out of the loaded document of ``source``; every read names its location
    for the error message, and ``lines`` keeps the line of each location seen."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[str, int] = {}

    # errors and locations

    def fail(self, location: str | None, reason: str) -> NoReturn:
        raise PricingFileInvalid(
            reason, source=self.source, location=location, line=nearest_line(self.lines, location)
        )

    def note(self, location: str, container: Any, key: Any = None) -> None:
        line = None
        if key is not None and isinstance(container, LinedMapping):
            line = container.key_lines.get(key)
        elif key is None:
            line = getattr(container, "line", None)
        if line is not None:
            self.lines.setdefault(location, line)

    @staticmethod
    def describe(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, Number):
            return f"the number {value.text}"
        if isinstance(value, str):
            return f"the string {value!r}"
        if isinstance(value, dict):
            return "a mapping"
        if isinstance(value, list):
            return "a list"
        return type(value).__name__

    # structure

    def mapping(
        self,
        value: Any,
        where: str,
        *,
        allowed: tuple[str, ...],
        required: tuple[str, ...] = (),
        hints: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """``value`` as a mapping of ``allowed`` keys; a key that is not allowed is refused
        as unknown, or with its ``hints`` sentence (what the format says instead)."""
        if not isinstance(value, dict):
            self.fail(where or None, f"expected a mapping, got {self.describe(value)}")
        self.note(where, value)
        for key in value:
            location = f"{where}.{key}" if where else str(key)
            self.note(location, value, key)
            if key not in allowed:
                if hints and key in hints:
                    self.fail(location, hints[key])
                self.fail(location, f"unknown field {key!r}; expected one of {', '.join(allowed)}")
        for key in required:
            if key not in value:
                self.fail(where or None, f"missing required field {key!r}")
        return value

    def sequence(self, value: Any, where: str, *, allow_missing: bool = True) -> list[Any]:
        if value is MISSING and allow_missing:
            return []
        if not isinstance(value, list):
            self.fail(where, f"expected a list, got {self.describe(value)}")
        for i, item in enumerate(value):
            self.note(f"{where}[{i}]", item)
        return value

    # scalars

    def string(
        self,
        data: dict,
        key: str,
        where: str,
        *,
        default: Any = MISSING,
        max_length: int = 200,
        pattern: re.Pattern | None = None,
        hint: str = "",
        blank: bool = True,
    ) -> str:
        value = data.get(key, MISSING)
        location = f"{where}.{key}"
        if value is MISSING:
            if default is MISSING:
                self.fail(where, f"missing required field {key!r}")
            return default
        if not isinstance(value, str):
            quote = " (quote it)" if isinstance(value, Number | bool) else ""
            self.fail(location, f"expected a string, got {self.describe(value)}{quote}")
        if not blank and not value.strip():
            self.fail(location, "cannot be blank")
        if len(value) > max_length:
            self.fail(location, f"at most {max_length} characters")
        if pattern is not None and not pattern.match(value):
            self.fail(location, hint or f"must match {pattern.pattern}")
        return value

    def choice(self, data: dict, key: str, where: str, *, choices: list[str], default: str) -> str:
        value = self.string(data, key, where, default=default)
        if value not in choices:
            self.fail(f"{where}.{key}", f"{value!r} is not one of {', '.join(choices)}")
        return value

    def decimal(
        self,
        data: dict,
        key: str,
        where: str,
        *,
        default: Any = MISSING,
        nullable: bool = False,
        digits: int = PRICE_DIGITS,
        places: int = PRICE_PLACES,
        positive: bool = False,
    ) -> Any:
        value = data.get(key, MISSING)
        location = f"{where}.{key}"
        if value is MISSING:
            if default is MISSING:
                self.fail(where, f"missing required field {key!r}")
            return default
        if value is None:
            if nullable:
                return None
            self.fail(location, "cannot be null")
        if isinstance(value, Number):
            text = value.text.replace("_", "")
        elif isinstance(value, str):
            text = value.strip()
        else:
            self.fail(location, f"expected a decimal number, got {self.describe(value)}")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            amount = None
        if amount is None or not amount.is_finite():
            self.fail(location, f"{text!r} is not a finite decimal number")
        if amount < 0:
            self.fail(location, "cannot be negative")
        if positive and amount == 0:
            self.fail(location, "must be greater than 0")
        _, figures, exponent = amount.as_tuple()
        assert isinstance(exponent, int), "a finite number's (checked above)"
        significant = list(figures)
        while exponent < 0 and len(significant) > 1 and significant[-1] == 0:
            significant.pop()
            exponent += 1
        if exponent < -places:
            self.fail(
                location,
                f"{text} has more than {places} decimal places "
                "(it would be rounded; amounts are kept exactly)",
            )
        if amount >= Decimal(10) ** (digits - places):
            self.fail(
                location,
                f"{text} is too large (at most {digits - places} digits before the decimal point)",
            )
        return amount

    def boolean(self, data: dict, key: str, where: str, *, default: bool) -> bool:
        value = data.get(key, MISSING)
        if value is MISSING:
            return default
        if not isinstance(value, bool):
            self.fail(f"{where}.{key}", f"expected true or false, got {self.describe(value)}")
        return value

    def integer(
        self, data: dict, key: str, where: str, *, default: int, maximum: int, minimum: int = 0
    ) -> int:
        """A whole number from ``minimum`` to ``maximum``. A field whose range is a validator's
        (``validate_billing_cadence``) reads any sign here (``minimum`` below zero), so the
        file's message for an out-of-range value is the API's and the admin's."""
        value = data.get(key, MISSING)
        location = f"{where}.{key}"
        if value is MISSING:
            return default
        if isinstance(value, Number) and isinstance(value.native, int):
            number = value.native
        elif isinstance(value, str) and re.fullmatch(
            r"\s*-?\d+\s*" if minimum < 0 else r"\s*\d+\s*", value
        ):
            number = int(value)
        else:
            self.fail(location, f"expected a whole number, got {self.describe(value)}")
        if not minimum <= number <= maximum:
            self.fail(location, f"must be between {minimum} and {maximum}")
        return number

    def plain(self, value: Any, location: str) -> Any:
        """Free-form JSON (metadata, filter values). Whole numbers stay numbers; numbers with
        a fraction become decimal strings, exactly as written — as the API stores them."""
        if isinstance(value, Number):
            if isinstance(value.native, int):
                return value.native
            try:
                exact = Decimal(value.text.replace("_", ""))
            except InvalidOperation:
                exact = None
            if exact is None or not exact.is_finite():
                self.fail(location, f"{value.text!r} is not a finite number")
            return format(exact, "f")
        if value is None or isinstance(value, str | bool):
            return value
        if isinstance(value, list):
            return [self.plain(v, f"{location}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            result = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    self.fail(location, f"keys must be strings, got {self.describe(k)}")
                result[k] = self.plain(v, f"{location}.{k}")
            return result
        self.fail(location, f"{type(value).__name__} is not a JSON value")
