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

    EXTENSIONS = (TypeExtension(HouseholdType, HouseholdAccountFields),)

and the root schema adds those fields to ``HouseholdType`` while it builds: the field
resolves with the household as ``self``, like one declared on the type. The earlier
domain's code never changes, and a schema built without the later domain has no such
field (tests install a domain for a while and the real schema stays as it was).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from strawberry.types.base import StrawberryObjectDefinition, get_object_definition


@dataclass(frozen=True, slots=True)
class TypeExtension:
    """Add the fields of the strawberry type ``fields`` to the strawberry type ``target``:
    at the end, or right after the target's field ``after`` (its Python name), which keeps
    a field's place in schema.graphql when it moves from the target's domain to another."""

    target: type
    fields: type
    after: str | None = None


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
            target = get_object_definition(extension.target, strict=True)
            added = get_object_definition(extension.fields, strict=True)
            taken = {field.python_name for field in target.fields}
            clashing = sorted(taken & {field.python_name for field in added.fields})
            if clashing:
                raise ValueError(f"{extension.fields.__name__} adds fields {target.name} already has: {', '.join(clashing)}")
            originals.setdefault(extension.target, target)
            fields = list(target.fields)
            position = len(fields)
            if extension.after is not None:
                names = [field.python_name for field in fields]
                if extension.after not in names:
                    raise ValueError(f"{target.name} has no field {extension.after!r} to add fields after")
                position = names.index(extension.after) + 1
            fields[position:position] = [copy.copy(field) for field in added.fields]
            extension.target.__strawberry_definition__ = dataclasses.replace(target, fields=fields)  # type: ignore[attr-defined]
        yield
    finally:
        for cls, definition in originals.items():
            cls.__strawberry_definition__ = definition  # type: ignore[attr-defined]
