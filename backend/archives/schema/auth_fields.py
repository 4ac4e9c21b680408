"""Fields archives adds to auth's types (docs/domains.md, "Fields across domains").

Auth comes before archives and knows areas and households only by id; the API shows
them as archives' ``Area`` and ``Household``. Each field keeps the place it has always
had in schema.graphql (``after`` / ``before``), and resolves with auth's object as
``self`` (its private ``unit_pk``, ``pk``, ``household_pk``, ``principal``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.schema.types import AreaByIdLoader, AreaType, HouseholdByIdLoader, HouseholdType
from backend.auth.principal import Principal
from backend.auth.service import role_area_ids
from backend.graphql.extend import TypeExtension
from backend.graphql.loaders import SessionLoader


class AreaIdsByRoleIdLoader(SessionLoader[int, list[int]]):
    missing: list[int] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[int]]:
        return await role_area_ids(session, keys)


async def _unit(info: Info, area_pk: int | None) -> AreaType | None:
    """A user's or role's unit, when the caller's scope covers it."""
    if area_pk is None:
        return None
    area = await info.context.loader(AreaByIdLoader).load(area_pk)
    principal: Principal | None = info.context.principal
    return AreaType.from_row(area) if area is not None and principal is not None and principal.in_scope(area.path) else None


async def _household(info: Info, household_pk: int | None) -> HouseholdType | None:
    if household_pk is None:
        return None
    household = await info.context.loader(HouseholdByIdLoader).load(household_pk)
    return HouseholdType.from_row(household) if household is not None else None


@strawberry.type
class RoleUnitField:
    @strawberry.field(description="所属单位: who may see and edit the role; null for the whole company or outside your scope.")
    async def unit(self, info: Info) -> AreaType | None:
        role: Any = self
        return await _unit(info, role.unit_pk)


@strawberry.type
class RoleAreasField:
    @strawberry.field(description="行政权限: the areas whose subtrees the role may see.")
    async def areas(self, info: Info) -> list[AreaType]:
        role: Any = self
        ids = await info.context.loader(AreaIdsByRoleIdLoader).load(role.pk)
        areas = await info.context.loader(AreaByIdLoader).load_many(ids)
        return [AreaType.from_row(area) for area in areas if area is not None]


@strawberry.type
class StaffUserUnitField:
    @strawberry.field(description="所属单位: who may see and edit the user; null for the whole company or outside your scope.")
    async def unit(self, info: Info) -> AreaType | None:
        user: Any = self
        return await _unit(info, user.unit_pk)


@strawberry.type
class BindingHouseholdField:
    @strawberry.field(description="The household, once the binding is active.")
    async def household(self, info: Info) -> HouseholdType | None:
        binding: Any = self
        return await _household(info, binding.household_pk)


@strawberry.type
class ViewerHouseholdsField:
    @strawberry.field(description="A resident's bound households.")
    async def households(self, info: Info) -> list[HouseholdType]:
        principal: Principal = getattr(self, "principal")  # noqa: B009 (auth's Viewer, seen as self)
        if not principal.is_resident:
            return []
        async with info.context.read() as session:
            found = await service.households_by_ids(session, principal.household_ids)
        return [HouseholdType.from_row(found[pk]) for pk in principal.household_ids if pk in found]


@strawberry.type
class PayloadHouseholdField:
    @strawberry.field(description="Set once the household is bound (active).")
    async def household(self, info: Info) -> HouseholdType | None:
        payload: Any = self
        return await _household(info, payload.household_pk)


EXTENSIONS = (
    TypeExtension("Role", RoleUnitField, after="created_at"),
    TypeExtension("Role", RoleAreasField, after="permissions"),
    TypeExtension("StaffUser", StaffUserUnitField, after="last_login_at"),
    TypeExtension("HouseholdBinding", BindingHouseholdField),
    TypeExtension("Viewer", ViewerHouseholdsField),
    TypeExtension("HouseholdPayload", PayloadHouseholdField, before="binding"),
)
