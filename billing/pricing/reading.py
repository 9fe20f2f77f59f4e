"""Reading a pricing file's text exactly: YAML or JSON, numbers kept as written (``Number``,
never a float), duplicate keys refused, timestamps left as text, and the line of every
mapping, key and list kept for the error messages (``LinedMapping``, ``LinedSequence``).
``PricingFileInvalid`` is the error of every step, reading, parsing and loading."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from billing import errors


class PricingFileInvalid(errors.BillingError):
    """The file cannot be read or does not describe valid prices. ``message`` names the file,
    the line when known and the location (``plans[1].charges[0].tiers``)."""

    code = "invalid_pricing_file"

    def __init__(
        self, reason: str, *, source: str, location: str | None = None, line: int | None = None
    ):
        self.reason, self.source, self.location, self.line = reason, source, location, line
        super().__init__(
            located_message(reason, source=source, location=location, line=line), param=location
        )


def located_message(reason: str, *, source: str, location: str | None, line: int | None) -> str:
    """``reason`` prefixed with the file, its line when known, and the place in it."""
    where = f"{source}:{line}" if line else source
    return f"{where}: {location}: {reason}" if location else f"{where}: {reason}"


@dataclass(frozen=True, slots=True)
class Number:
    """A numeric scalar as written (``text``) and, for a whole number, its ``int`` value
    (``native``; None for any other number — no float is ever made). Amounts are built
    from ``text``; ``native`` serves where no amount is meant (trial days, metadata)."""

    text: str
    native: int | None


class LinedMapping(dict):
    """A mapping that remembers the line of each key (1-based), for error messages."""

    line: int | None = None
    key_lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.key_lines = {}


class LinedSequence(list):
    line: int | None = None


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps numbers as written, refuses duplicate keys, reads timestamps as
    plain strings and records line numbers."""


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> Number:
    return Number(node.value, yaml.SafeLoader.construct_yaml_int(loader, node))


def _construct_timestamp(loader: _Loader, node: yaml.ScalarNode) -> str:
    return loader.construct_yaml_str(node)  # a date stays the text written


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> Number:
    return Number(node.value, None)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Iterator[LinedMapping]:
    mapping = LinedMapping()
    mapping.line = node.start_mark.line + 1
    yield mapping
    # Keys written in this mapping must be unique; keys brought in by a merge (<<: *base)
    # are defaults that the written ones override.
    written = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Number):
            key = key.native if key.native is not None else key.text
        try:
            duplicate = id(key_node) in written and key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found an unhashable key",
                key_node.start_mark,
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        if id(key_node) in written:
            seen.add(key)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Iterator[LinedSequence]:
    sequence = LinedSequence()
    sequence.line = node.start_mark.line + 1
    yield sequence
    sequence.extend(loader.construct_sequence(node, deep=True))


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def _json_object(pairs: list[tuple[str, Any]]) -> LinedMapping:
    mapping = LinedMapping()
    for key, value in pairs:
        if key in mapping:
            raise ValueError(f"duplicate key {key!r}")
        mapping[key] = value
    return mapping


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _json_number(text: str) -> Number:
    return Number(text, int(text) if re.fullmatch(r"-?\d+", text) else None)


def load_document(text: str, *, source: str, format: str) -> Any:
    if format == "json":
        try:
            return json.loads(
                text,
                object_pairs_hook=_json_object,
                parse_float=_json_number,
                parse_int=_json_number,
                parse_constant=_refuse_constant,
            )
        except json.JSONDecodeError as exc:
            raise PricingFileInvalid(
                f"invalid JSON: {exc.msg} (column {exc.colno})", source=source, line=exc.lineno
            ) from None
        except ValueError as exc:
            raise PricingFileInvalid(f"invalid JSON: {exc}", source=source) from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        reason = f"invalid YAML: {context + ': ' if context else ''}{problem}"
        if mark is not None:
            reason += f" (column {mark.column + 1})"
        raise PricingFileInvalid(
            reason, source=source, line=mark.line + 1 if mark is not None else None
        ) from None


def detect_format(text: str, path: str | None) -> str:
    suffix = Path(path).suffix.lower() if path else ""
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    return "json" if text.lstrip().startswith(("{", "[")) else "yaml"
