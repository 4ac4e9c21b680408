"""Fields one domain adds to another's type (backend.graphql.extend)."""

from __future__ import annotations

import pytest
import strawberry

from backend.graphql.extend import TypeExtension, extended_types


@strawberry.type
class Meter:
    code: str
    caliber: int


@strawberry.type
class Query:
    @strawberry.field
    def meter(self) -> Meter:
        return Meter(code="W1", caliber=15)


@strawberry.type
class MeterLinkFields:
    @strawberry.field
    def link(self) -> str:
        meter: Meter = self  # type: ignore[assignment]
        return f"link of {meter.code}"


def _fields_of_meter(schema: strawberry.Schema) -> list[str]:
    meter = schema.get_type_by_name("Meter")
    assert meter is not None
    return [field.name for field in meter.fields]  # type: ignore[union-attr]


def test_an_added_field_resolves_with_the_target_object_as_self() -> None:
    with extended_types([TypeExtension(Meter, MeterLinkFields)]):
        schema = strawberry.Schema(query=Query)

    result = schema.execute_sync("{ meter { code link } }")

    assert result.errors is None
    assert result.data == {"meter": {"code": "W1", "link": "link of W1"}}
    assert _fields_of_meter(schema) == ["code", "caliber", "link"]


def test_after_places_the_field_and_the_class_is_left_as_it_was() -> None:
    with extended_types([TypeExtension(Meter, MeterLinkFields, after="code")]):
        placed = strawberry.Schema(query=Query)
    plain = strawberry.Schema(query=Query)

    assert _fields_of_meter(placed) == ["code", "link", "caliber"]
    assert _fields_of_meter(plain) == ["code", "caliber"]


def test_a_field_the_target_has_is_refused() -> None:
    @strawberry.type
    class Clash:
        code: str

    with pytest.raises(ValueError, match="already has: code"), extended_types([TypeExtension(Meter, Clash)]):
        pass
    assert _fields_of_meter(strawberry.Schema(query=Query)) == ["code", "caliber"]


def test_a_clash_after_an_applied_extension_leaves_every_class_as_it_was() -> None:
    @strawberry.type
    class Clash:
        caliber: int

    with pytest.raises(ValueError, match="already has: caliber"), extended_types(
        [TypeExtension(Meter, MeterLinkFields), TypeExtension(Meter, Clash)]
    ):
        pass

    assert _fields_of_meter(strawberry.Schema(query=Query)) == ["code", "caliber"]
