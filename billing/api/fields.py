"""The API's shared input rules and field types, used by every app's API: strict input
(``StrictSerializer``: an unknown field is refused, never ignored), exact money (``Money``,
``Price``), currencies, bounded dates, free-form metadata, and the schema of a paginated list
(``list_response``). Money is a decimal string with 12 places out, and a decimal string (or
an exact JSON number, parsed as Decimal) in."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn

from django.utils import timezone
from rest_framework import serializers

from billing import limits

# --- strict input ----------------------------------------------------------------------------


def _unknown_field(
    serializer: serializers.Serializer, data, path: str
) -> tuple[str, serializers.Serializer] | None:
    """The dotted path (``charges[0].unit_prise``) of the first key of ``data`` that
    ``serializer`` (or a serializer nested in it) does not take as input, and the serializer
    that does not take it; or None.

    Free-form fields (``metadata``, ``properties``, JSON fields) are not serializers and are
    not looked into."""
    if not isinstance(data, dict):
        return None  # the field's own validation says what is wrong with it
    fields = serializer.fields
    for key in data:
        field = fields.get(key)
        if field is None or field.read_only:
            return (f"{path}.{key}" if path else str(key)), serializer
    for key, value in data.items():
        field = fields[key]
        where = f"{path}.{key}" if path else key
        if isinstance(field, serializers.ListSerializer):
            if isinstance(value, list) and isinstance(field.child, serializers.Serializer):
                for i, item in enumerate(value):
                    found = _unknown_field(field.child, item, f"{where}[{i}]")
                    if found:
                        return found
        elif isinstance(field, serializers.Serializer):
            found = _unknown_field(field, value, where)
            if found:
                return found
    return None


if TYPE_CHECKING:  # what the mixin is mixed into
    _Serializer = serializers.Serializer[Any]
else:
    _Serializer = object


class StrictInputMixin(_Serializer):
    """Every input serializer: a field the serializer does not take is refused
    (``unknown_parameter``, ``param`` its dotted path), before any other validation, so a
    typo such as ``unit_prise`` never passes as "not given". Nested serializers (a plan's
    charges and tiers, a customer's address) are looked into from the outermost one. A
    serializer's ``unknown_field_hints`` (key → sentence) says, for keys other systems take
    and this one does not, what to write instead."""

    unknown_field_hints: dict[str, str] = {}

    def to_internal_value(self, data):
        outermost = self.parent is None or (
            isinstance(self.parent, serializers.ListSerializer) and self.parent.parent is None
        )
        if outermost:
            found = _unknown_field(self, data, "")
            if found is not None:
                unknown, owner = found
                key = unknown.rpartition(".")[2]
                hint = getattr(owner, "unknown_field_hints", {}).get(key)
                raise serializers.ValidationError(
                    {
                        unknown: serializers.ErrorDetail(
                            hint
                            or f"{key!r} is not a parameter of this request (check its spelling)",
                            code="unknown_parameter",
                        )
                    }
                )
        return super().to_internal_value(data)


class StrictSerializer(StrictInputMixin, serializers.Serializer):
    """The base of every input serializer (see ``StrictInputMixin``)."""


class NoBody(StrictSerializer):
    """A POST that takes no parameters: an empty body or ``{}``; any field is unknown."""


class StrictBoolean(serializers.BooleanField):
    """JSON ``true`` or ``false`` only, as the pricing file reads an option: DRF's
    BooleanField also takes "yes", "on", "true", 1 — a plan the API would accept and the
    file refuse (issue 18: the three ways express a plan identically)."""

    default_error_messages = {"invalid": "expected true or false"}

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        self.fail("invalid")


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer (not a string, a fraction or a boolean)."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError("must be a JSON integer", code="invalid")
        return super().to_internal_value(data)


class StrictDecimal(serializers.DecimalField):
    """DRF's DecimalField, except that a blank string is not read as null: only an explicit
    null is null (where allowed), and "" is not a number (400 invalid_parameter)."""

    def validate_empty_values(self, data):
        if isinstance(data, str) and not data.strip():
            self.fail("invalid")
        return super().validate_empty_values(data)


class Money(StrictDecimal):
    """An exact amount with up to 12 decimal places. As input, at most ``limit`` in absolute
    value (``billing.limits.MAX_AMOUNT`` unless told): above it ``amount_too_large``, before
    any column could overflow."""

    def __init__(
        self,
        *,
        limit: Decimal | None = limits.MAX_AMOUNT,
        **kwargs,
    ):
        kwargs.setdefault("max_digits", 38)
        kwargs.setdefault("decimal_places", 12)
        kwargs.setdefault("coerce_to_string", True)
        self.limit = limit
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as error:
            # More whole digits than the field has: too large, whatever the digit count.
            codes = error.get_codes()
            if (
                self.limit is not None
                and isinstance(codes, list)
                and set(codes) & {"max_digits", "max_whole_digits"}
            ):
                self._too_large(self.limit)
            raise
        if self.limit is not None and limits.amount_problem(value, limit=self.limit):
            self._too_large(self.limit)
        return value

    def _too_large(self, limit: Decimal) -> NoReturn:
        raise serializers.ValidationError(
            limits.amount_problem(limit + 1, limit=limit), code="amount_too_large"
        )


class Price(Money):
    """A plan's price or quantity, as its column keeps it (numeric(30, 12)): below 10^18;
    prices say so with ``amount_too_large`` (``limit=limits.MAX_PRICE``)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_digits", 30)
        kwargs.setdefault("limit", None)
        super().__init__(**kwargs)


class CurrencyField(serializers.CharField):
    """An ISO 4217 code, or one of ``units`` (ledger units such as CREDITS) where given."""

    def __init__(self, *, units: frozenset[str] = frozenset(), **kwargs):
        self.units = frozenset(units)
        kwargs.setdefault("max_length", 16)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        problem = limits.currency_problem(value, units=self.units)
        if problem:
            raise serializers.ValidationError(problem, code="invalid")
        return value


class BoundedDateTime(serializers.DateTimeField):
    """A timestamp not before ``billing.limits.EARLIEST_DATE`` (year 2000), and at most
    ``max_years_ahead`` years ahead when given."""

    def __init__(self, *, max_years_ahead: int | None = None, **kwargs):
        self.max_years_ahead = max_years_ahead
        super().__init__(**kwargs)

    def to_internal_value(self, value):
        moment = super().to_internal_value(value)
        if moment < limits.EARLIEST_DATE:
            raise serializers.ValidationError(
                f"must not be before {limits.EARLIEST_DATE:%Y-%m-%d}", code="invalid"
            )
        if self.max_years_ahead is not None:
            latest = timezone.now() + timedelta(days=366 * self.max_years_ahead)
            if moment > latest:
                raise serializers.ValidationError(
                    f"must be at most {self.max_years_ahead} years ahead", code="invalid"
                )
        return moment


def decimals_to_strings(value):
    """JSON numbers with a fraction arrive as Decimal (never float); free-form JSON such as
    metadata keeps them as decimal strings, exactly as sent."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return {k: decimals_to_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decimals_to_strings(v) for v in value]
    return value


class ExactJSONValue(serializers.JSONField):
    def to_internal_value(self, data):
        return super().to_internal_value(decimals_to_strings(data))


class MetadataField(serializers.DictField):
    """Free-form key → JSON value; numbers with a fraction are stored as decimal strings."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("default", dict)
        super().__init__(child=ExactJSONValue(), **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if len(value) > 50:
            raise serializers.ValidationError("at most 50 metadata keys")
        return value


def list_response(item_serializer) -> type[serializers.Serializer]:
    """The schema of a cursor-paginated list of ``item_serializer``."""
    name = item_serializer.__name__.replace("Serializer", "") + "List"
    return type(
        name,
        (serializers.Serializer,),
        {
            "data": item_serializer(many=True),
            "has_more": serializers.BooleanField(),
            "__module__": __name__,
        },
    )
