"""Typed event payloads: one frozen dataclass per event kind, declared by the kind's owner.

The owner of a kind (DESIGN.md, "Events") declares its payload next to the code that
emits it, in its own package (``backend/readings/events.py``)::

    @event_payload("readings.ingested")
    @dataclass(frozen=True, slots=True)
    class ReadingsIngested:
        batch_id: str
        meter_ids: tuple[int, ...]
        ...

The kinds are the registered ones: a new domain adds its kinds in its own folder, never
in a shared list. A payload travels as JSON in ``domain_events.payload``: ids and fen as
ints, datetimes and dates as ISO 8601 strings, Decimals as strings (volumes keep their
places), StrEnums as their values, sequences as arrays. A field's type is checked when
the class is registered (an unsupported type fails at import, not at the first emit) and
its value when the payload is encoded.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, TypeVar

PayloadT = TypeVar("PayloadT")

# ``<owner>.<what happened>``; the column is varchar(64).
_KIND = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_KIND_MAX_LENGTH = 64


class UnknownEventKindError(ValueError):
    """A kind no owner has registered a payload for (a typo, or its owner is not imported)."""


class EventPayloadError(TypeError):
    """A payload that is not what its kind declares: another class, a bare dict, a field
    of the wrong type, or a stored document that does not decode."""


class _Codec:
    """How one field type travels as JSON."""

    description: str

    def encode(self, value: Any, where: str) -> Any:
        raise NotImplementedError

    def decode(self, value: Any, where: str) -> Any:
        raise NotImplementedError


def _refuse(where: str, expected: str, value: Any) -> EventPayloadError:
    return EventPayloadError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")


class _Exactly(_Codec):
    """A JSON scalar of exactly one Python type: bool is an int subclass, and True is
    never an id or an amount of fen."""

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.description = kind.__name__

    def encode(self, value: Any, where: str) -> Any:
        if type(value) is not self.kind:
            raise _refuse(where, self.kind.__name__, value)
        return value

    decode = encode


class _Str(_Codec):
    description = "string"

    def encode(self, value: Any, where: str) -> Any:
        if not isinstance(value, str) or isinstance(value, StrEnum):
            raise _refuse(where, "str", value)
        return value

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, str):
            raise _refuse(where, "str", value)
        return value


class _DateTime(_Codec):
    description = "datetime (ISO 8601, with offset)"

    def encode(self, value: Any, where: str) -> Any:
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise _refuse(where, "an aware datetime", value)
        return value.isoformat()

    def decode(self, value: Any, where: str) -> Any:
        try:
            decoded = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise _refuse(where, "an ISO 8601 datetime", value) from None
        if decoded.utcoffset() is None:
            raise _refuse(where, "an ISO 8601 datetime with an offset", value)
        return decoded


class _Date(_Codec):
    description = "date (ISO 8601)"

    def encode(self, value: Any, where: str) -> Any:
        if not isinstance(value, date) or isinstance(value, datetime):
            raise _refuse(where, "a date", value)
        return value.isoformat()

    def decode(self, value: Any, where: str) -> Any:
        try:
            return date.fromisoformat(value)
        except (TypeError, ValueError):
            raise _refuse(where, "an ISO 8601 date", value) from None


class _Decimal(_Codec):
    description = "decimal (string)"

    def encode(self, value: Any, where: str) -> Any:
        if not isinstance(value, Decimal) or not value.is_finite():
            raise _refuse(where, "a finite Decimal", value)
        return str(value)

    def decode(self, value: Any, where: str) -> Any:
        try:
            decoded = Decimal(value) if isinstance(value, str) else None
        except InvalidOperation:
            decoded = None
        if decoded is None or not decoded.is_finite():
            raise _refuse(where, "a decimal string", value)
        return decoded


class _Enum(_Codec):
    def __init__(self, enum: type[StrEnum]) -> None:
        self.enum = enum
        self.description = f"{enum.__name__}: " + " | ".join(member.value for member in enum)

    def encode(self, value: Any, where: str) -> Any:
        if not isinstance(value, self.enum):
            raise _refuse(where, self.enum.__name__, value)
        return value.value

    def decode(self, value: Any, where: str) -> Any:
        try:
            return self.enum(value)
        except ValueError:
            raise _refuse(where, self.enum.__name__, value) from None


class _Sequence(_Codec):
    """``tuple[X, ...]`` or ``list[X]``: a JSON array, decoded into the declared container."""

    def __init__(self, container: type, item: _Codec) -> None:
        self.container = container
        self.item = item
        self.description = f"list of {item.description}"

    def encode(self, value: Any, where: str) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _refuse(where, "a list or tuple", value)
        return [self.item.encode(element, f"{where}[{index}]") for index, element in enumerate(value)]

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, list):
            raise _refuse(where, "an array", value)
        return self.container(self.item.decode(element, f"{where}[{index}]") for index, element in enumerate(value))


class _Optional(_Codec):
    def __init__(self, inner: _Codec) -> None:
        self.inner = inner
        self.description = f"{inner.description}, or null"

    def encode(self, value: Any, where: str) -> Any:
        return None if value is None else self.inner.encode(value, where)

    def decode(self, value: Any, where: str) -> Any:
        return None if value is None else self.inner.decode(value, where)


_SCALARS: dict[Any, _Codec] = {
    int: _Exactly(int), str: _Str(), bool: _Exactly(bool), datetime: _DateTime(), date: _Date(), Decimal: _Decimal(),
}


def _codec(annotation: Any, where: str) -> _Codec:
    """The codec of a field's type; TypeError names a type a payload cannot carry."""
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return _Enum(annotation)
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis:
        return _Sequence(tuple, _codec(arguments[0], where))
    if origin is list and len(arguments) == 1:
        return _Sequence(list, _codec(arguments[0], where))
    if origin in (typing.Union, types.UnionType) and len(arguments) == 2 and type(None) in arguments:
        (inner,) = (argument for argument in arguments if argument is not type(None))
        return _Optional(_codec(inner, where))
    raise TypeError(
        f"{where}: an event payload field is int, str, bool, Decimal, datetime, date, a StrEnum, "
        f"tuple[X, ...], list[X] or X | None, not {annotation!r}"
    )


@dataclass(frozen=True, slots=True)
class PayloadField:
    name: str
    codec: _Codec
    required: bool  # no default: a stored document must carry it

    @property
    def description(self) -> str:
        return self.codec.description


@dataclass(frozen=True, slots=True)
class PayloadType:
    """A kind and the dataclass its owner declared for it."""

    kind: str
    cls: type
    fields: tuple[PayloadField, ...]

    @property
    def owner(self) -> str:
        """The declaring package below ``backend`` (``readings.alarms`` for
        ``backend/readings/alarms/events.py``)."""
        module = self.cls.__module__.removeprefix("backend.")
        return module.rsplit(".", 1)[0] if "." in module else module

    @property
    def doc(self) -> str:
        return " ".join((self.cls.__doc__ or "").split())

    def encode(self, payload: object) -> dict[str, Any]:
        """The JSON document of ``payload``; EventPayloadError unless it is an instance of
        this kind's class with every field of its declared type."""
        if not isinstance(payload, self.cls):
            raise EventPayloadError(
                f"a {self.kind} event carries a {self.cls.__name__}, not a {type(payload).__name__}"
            )
        return {
            field.name: field.codec.encode(getattr(payload, field.name), f"{self.cls.__name__}.{field.name}")
            for field in self.fields
        }

    def decode(self, document: Mapping[str, Any]) -> Any:
        """The payload stored as ``document``; a missing field without a default, or a
        value that does not decode, raises EventPayloadError."""
        if not isinstance(document, Mapping):
            raise EventPayloadError(f"a {self.kind} payload is a JSON object, not {document!r}")
        values = {}
        for field in self.fields:
            if field.name in document:
                values[field.name] = field.codec.decode(document[field.name], f"{self.cls.__name__}.{field.name}")
            elif field.required:
                raise EventPayloadError(f"a stored {self.kind} event lacks {field.name!r}")
        return self.cls(**values)


_PAYLOAD_TYPES: dict[str, PayloadType] = {}


def event_payload(kind: str) -> Callable[[type[PayloadT]], type[PayloadT]]:
    """Class decorator: ``cls`` (a frozen dataclass) is the payload of events of ``kind``.

    One class per kind and one kind per class; the kind is ``<owner>.<what happened>``.
    """
    if not _KIND.match(kind) or len(kind) > _KIND_MAX_LENGTH:
        raise ValueError(f"an event kind is '<owner>.<what_happened>' in lower case, at most 64 characters: {kind!r}")

    def register(cls: type[PayloadT]) -> type[PayloadT]:
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"the payload of {kind} must be a frozen dataclass: {cls.__qualname__}")
        hints = typing.get_type_hints(cls)
        fields = tuple(
            PayloadField(
                name=field.name,
                codec=_codec(hints[field.name], f"{cls.__qualname__}.{field.name}"),
                required=field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING,
            )
            for field in dataclasses.fields(cls)
        )
        existing = _PAYLOAD_TYPES.get(kind)
        if existing is not None and _name(existing.cls) != _name(cls):
            raise ValueError(f"{kind} already has its payload, {_name(existing.cls)}")
        for other in _PAYLOAD_TYPES.values():
            if other.kind != kind and _name(other.cls) == _name(cls):
                raise ValueError(f"{_name(cls)} is already the payload of {other.kind}")
        _PAYLOAD_TYPES[kind] = PayloadType(kind, cls, fields)
        return cls

    return register


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def payload_type(kind: str) -> PayloadType:
    """The registered payload of ``kind``; UnknownEventKindError when none is."""
    try:
        return _PAYLOAD_TYPES[kind]
    except KeyError:
        raise UnknownEventKindError(f"unknown event kind {kind!r} (no payload registered for it)") from None


def payload_types() -> list[PayloadType]:
    """Every registered payload (of the modules imported so far), by kind."""
    return sorted(_PAYLOAD_TYPES.values(), key=lambda registered: registered.kind)
