"""Fields one domain adds to another domain's GraphQL type (docs/domains.md, "Fields
across domains").

A later domain must not be imported by an earlier one, yet its data belongs on the
earlier one's types (billing's ``Household.account``, remote's ``Meter.link``). The later
domain's schema module lists, in ``EXTENSIONS``::

    @strawberry.type
    class HouseholdAccountFields:
        @strawberry.field(permission_classes=[Requires("accounts:read")])
        async def account(self, info: Info) -> AccountType | None:   # self is the HouseholdType
            ...

    EXTENSIONS = (TypeExtension("Household", HouseholdAccountFields),)

and the root schema adds those fields to the type named ``Household`` while it builds:
the field resolves with the household as ``self``, like one declared on the type. The
target is named by its GraphQL name, so the later domain imports nothing of the earlier
one's schema; the earlier domain's code never changes, and a schema built without the
later domain has no such field (tests install a domain for a while and the real schema
stays as it was).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from strawberry.types.base import StrawberryObjectDefinition, get_object_definition


@dataclass(frozen=True, slots=True)
class TypeExtension:
    """Add the fields of the strawberry type ``fields`` to the type ``target`` (its GraphQL
    name, or the class): at the end, or right after the target's field ``after`` or
    before its field ``before`` (Python names), which keeps a field's place in
    schema.graphql when it moves from the target's domain to another."""

    target: type | str
    fields: type
    after: str | None = None
    before: str | None = None

    def resolved(self, types_by_name: Callable[[str], type]) -> TypeExtension:
        """This extension with its target as a class (looked up by name when it is one)."""
        if isinstance(self.target, str):
            return dataclasses.replace(self, target=types_by_name(self.target))
        return self


@contextmanager
def extended_types(extensions: Sequence[TypeExtension]) -> Iterator[None]:
    """While the block runs, each target's definition carries its extensions' fields.

    Strawberry reads a type's fields from its definition when a schema is built; the
    built schema keeps what it read. So the root schema is built inside this block and
    the classes are left as they were, for the next schema (with other domains) to build.
    A name clash (two domains adding ``account``) is refused.
    """
    originals: dict[type, StrawberryObjectDefinition] = {}
    try:
        for extension in extensions:
            assert isinstance(extension.target, type), "resolve targets named by string first (TypeExtension.resolved)"
            target = get_object_definition(extension.target, strict=True)
            added = get_object_definition(extension.fields, strict=True)
            taken = {field.python_name for field in target.fields}
            clashing = sorted(taken & {field.python_name for field in added.fields})
            if clashing:
                raise ValueError(f"{extension.fields.__name__} adds fields {target.name} already has: {', '.join(clashing)}")
            originals.setdefault(extension.target, target)
            fields = list(target.fields)
            position = len(fields)
            names = [field.python_name for field in fields]
            for anchor, offset in ((extension.after, 1), (extension.before, 0)):
                if anchor is not None:
                    if anchor not in names:
                        raise ValueError(f"{target.name} has no field {anchor!r} to place fields by")
                    position = names.index(anchor) + offset
            fields[position:position] = [copy.copy(field) for field in added.fields]
            extension.target.__strawberry_definition__ = dataclasses.replace(target, fields=fields)  # type: ignore[attr-defined]
        yield
    finally:
        for cls, definition in originals.items():
            cls.__strawberry_definition__ = definition  # type: ignore[attr-defined]
