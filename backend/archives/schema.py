"""GraphQL for the Foundation's part of the archives: the area tree and households as
residents and scoped staff see them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.models import Area, AreaKind, Household
from backend.auth.principal import Principal
from backend.errors import NotFound
from backend.graphql.fastpath import NOT_PREFETCHED
from backend.graphql.loaders import SessionLoader
from backend.graphql.pagination import Connection, PageRequest, paginate_query, selects
from backend.graphql.permissions import Requires, RequiresAny
from backend.graphql.relay import Node, decode_id, encode_id, register_node

AreaKindEnum = strawberry.enum(AreaKind, name="AreaKind", description="公司 / 片区 / 小区 / 楼 / 单元")


class AreaByIdLoader(SessionLoader[int, Area | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Area]:
        return await service.areas_by_ids(session, keys)


@strawberry.type(name="Area", description="A node of the area tree (区域).")
class AreaType(Node):
    name: str
    kind: AreaKindEnum  # type: ignore[valid-type]
    created_at: datetime
    pk: strawberry.Private[int]
    parent_pk: strawberry.Private[int | None]
    path: strawberry.Private[str]
    # The parent as the list query fetched it (None: root or outside the scope).
    parent_prefetched: strawberry.Private[Any] = NOT_PREFETCHED

    @classmethod
    def from_row(cls, area: Area) -> AreaType:
        assert area.id is not None and area.created_at is not None
        return cls(
            id=encode_id("Area", area.id), name=area.name, kind=area.kind, created_at=area.created_at,
            pk=area.id, parent_pk=area.parent_id, path=area.path,
        )

    @classmethod
    def from_page_row(cls, row: Any, principal: Principal) -> AreaType:
        """A row of :func:`service.area_page_statement`, parent included when visible."""
        pk, name, kind, created_at, parent_pk, path, p_pk, p_name, p_kind, p_created_at, p_parent_pk, p_path = row
        parent = None
        if p_pk is not None and principal.in_scope(p_path):
            parent = cls(
                id=encode_id("Area", p_pk), name=p_name, kind=p_kind, created_at=p_created_at,
                pk=p_pk, parent_pk=p_parent_pk, path=p_path,
            )
        return cls(
            id=encode_id("Area", pk), name=name, kind=kind, created_at=created_at,
            pk=pk, parent_pk=parent_pk, path=path, parent_prefetched=parent,
        )

    @strawberry.field(description="Depth in the tree: 1 for the company.")
    def level(self) -> int:
        return self.path.count("/") - 1

    @strawberry.field(
        description="The area above; null for the company or outside your scope.",
        metadata={"prefetched": "parent_prefetched"},
    )
    async def parent(self, info: Info) -> AreaType | None:
        if self.parent_prefetched is not NOT_PREFETCHED:
            return self.parent_prefetched  # type: ignore[no-any-return]
        if self.parent_pk is None:
            return None
        parent = await info.context.loader(AreaByIdLoader).load(self.parent_pk)
        if parent is None or not _visible(info.context.principal, parent.path):
            return None
        return AreaType.from_row(parent)


def _visible(principal: Principal | None, path: str) -> bool:
    return principal is not None and principal.in_scope(path)


@strawberry.type(name="Household", description="A billed customer at one address (住户).")
class HouseholdType(Node):
    account_no: str = strawberry.field(description="缴费号 / 户号")
    name: str = strawberry.field(description="Registered name (户主姓名).")
    pk: strawberry.Private[int]
    area_pk: strawberry.Private[int]

    @classmethod
    def from_row(cls, household: Household) -> HouseholdType:
        assert household.id is not None
        return cls(
            id=encode_id("Household", household.id), account_no=household.account_no, name=household.name,
            pk=household.id, area_pk=household.area_id,
        )

    @strawberry.field
    async def area(self, info: Info) -> AreaType | None:
        area = await info.context.loader(AreaByIdLoader).load(self.area_pk)
        return AreaType.from_row(area) if area is not None else None


async def fetch_area(context: Any, pk: int) -> AreaType | None:
    principal = context.principal
    if principal is None or not principal.has("areas:read"):
        return None
    area = await context.loader(AreaByIdLoader).load(pk)
    return AreaType.from_row(area) if area is not None and _visible(principal, area.path) else None


async def fetch_household(context: Any, pk: int) -> HouseholdType | None:
    """A household the caller may see: a resident's own, or one in a staff member's scope."""
    principal: Principal | None = context.principal
    if principal is None:
        return None
    async with context.read() as session:
        found = (await service.households_by_ids(session, [pk])).get(pk)
        if found is None:
            return None
        if principal.is_resident:
            return HouseholdType.from_row(found) if pk in principal.household_ids else None
        if not principal.has("archives:read"):
            return None
        area = (await service.areas_by_ids(session, [found.area_id]))[found.area_id]
    return HouseholdType.from_row(found) if principal.in_scope(area.path) else None


register_node("Area", fetch_area)
register_node("Household", fetch_household)


@strawberry.type
class Query:
    @strawberry.field(permission_classes=[Requires("areas:read")], description="Areas within your data scope, in tree order.")
    async def areas(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        parent_id: strawberry.ID | None = None,
        kind: AreaKindEnum | None = None,  # type: ignore[valid-type]
        search: str | None = None,
    ) -> Connection[AreaType]:
        page = PageRequest.from_args(first, after, last, before)
        principal = info.context.caller
        query = service.area_page_query(
            scope_patterns=principal.scope_patterns(),
            parent_id=decode_id(parent_id, "Area", field="parentId") if parent_id else None,
            kind=kind,
            search=search,
        )
        return await paginate_query(info.context, query, page, lambda row: AreaType.from_page_row(row, principal),
                                    count=selects(info, "totalCount"))

    @strawberry.field(
        permission_classes=[RequiresAny("archives:read", "resident:self")],
        description="One household: a resident's own, or one in your data scope. Others are NOT_FOUND.",
    )
    async def household(self, info: Info, id: strawberry.ID) -> HouseholdType:
        found = await fetch_household(info.context, decode_id(id, "Household"))
        if found is None:
            raise NotFound(field="id")
        return found

    @strawberry.field(permission_classes=[Requires("resident:self")], description="The households you have bound.")
    async def my_households(self, info: Info) -> list[HouseholdType]:
        principal = info.context.caller
        async with info.context.read() as session:
            found = await service.households_by_ids(session, principal.household_ids)
        return [HouseholdType.from_row(found[pk]) for pk in principal.household_ids if pk in found]


AreaRef = Annotated["AreaType", strawberry.lazy("backend.archives.schema")]
HouseholdRef = Annotated["HouseholdType", strawberry.lazy("backend.archives.schema")]
