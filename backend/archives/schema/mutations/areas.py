"""Area mutations: create, update, rename, move, delete."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.models import AreaKind
from backend.archives.schema.mutations.common import MANAGE, _keep, _run, _scope
from backend.archives.schema.types import (
    AreaKindEnum,
    AreaType,
)
from backend.graphql.errors import UserError
from backend.graphql.relay import decode_id


@strawberry.type
class AreaPayload:
    area: AreaType | None
    errors: list[UserError]

def _area(a: Any, errors: list[UserError]) -> AreaPayload:
    return AreaPayload(area=AreaType.from_row(a) if a else None, errors=errors)


@strawberry.input
class AreaInput:
    name: str
    kind: AreaKindEnum  # type: ignore[valid-type]
    parent_id: strawberry.ID | None = None
    code: str | None = None
    address: str | None = None
    latitude: Decimal | None = None
    longitude: Decimal | None = None


@strawberry.input
class UpdateAreaInput:
    name: str | None = strawberry.UNSET
    code: str | None = strawberry.UNSET
    address: str | None = strawberry.UNSET
    latitude: Decimal | None = strawberry.UNSET
    longitude: Decimal | None = strawberry.UNSET


@strawberry.type
class AreaMutations:
    @strawberry.mutation(permission_classes=MANAGE, description="Add an area (区域).")
    async def create_area(self, info: Info, input: AreaInput) -> AreaPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.create_area(
                session, name=input.name, kind=AreaKind(input.kind),
                parent_id=decode_id(input.parent_id, "Area", field="parentId") if input.parent_id else None,
                code=input.code, address=input.address, latitude=input.latitude, longitude=input.longitude,
                scope_patterns=_scope(info),
            )

        return await _run(info, "createArea", lambda _: f"新增区域 {input.name[:64]}", _area, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Change an area's name, code, address or coordinates.")
    async def update_area(self, info: Info, id: strawberry.ID, input: UpdateAreaInput) -> AreaPayload:
        async def work(session: AsyncSession) -> Any:
            changes = service.AreaChanges(name=_keep(input.name), code=_keep(input.code), address=_keep(input.address),
                                          latitude=_keep(input.latitude), longitude=_keep(input.longitude))
            return await service.update_area(session, area_id=decode_id(id, "Area"), changes=changes, scope_patterns=_scope(info))

        return await _run(info, "updateArea", lambda a: f"修改区域 {a.name if a else id}", _area, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Rename an area.")
    async def rename_area(self, info: Info, id: strawberry.ID, name: str) -> AreaPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.rename_area(session, area_id=decode_id(id, "Area"), name=name, scope_patterns=_scope(info))

        return await _run(info, "renameArea", lambda _: f"区域改名为 {name[:64]}", _area, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Move an area and its subtree under another parent.")
    async def move_area(self, info: Info, id: strawberry.ID, parent_id: strawberry.ID) -> AreaPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.move_area(session, area_id=decode_id(id, "Area"),
                                           new_parent_id=decode_id(parent_id, "Area", field="parentId"), scope_patterns=_scope(info))

        return await _run(info, "moveArea", lambda a: f"移动区域 {a.name if a else id}", _area, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete an empty area.")
    async def delete_area(self, info: Info, id: strawberry.ID) -> AreaPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_area(session, area_id=decode_id(id, "Area"), scope_patterns=_scope(info))

        return await _run(info, "deleteArea", lambda a: f"删除区域 {a.name if a else id}", _area, work)
