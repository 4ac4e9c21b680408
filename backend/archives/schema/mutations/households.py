"""Household mutations: create, update, status, ownership transfer, delete."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.models import CustomerType, HouseholdStatus
from backend.archives.schema.mutations.common import MANAGE, _keep, _opt_id, _run, _scope
from backend.archives.schema.types import (
    CustomerTypeEnum,
    HouseholdStatusEnum,
    HouseholdType,
)
from backend.clock import utcnow
from backend.graphql import scalars
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.relay import decode_id


@strawberry.type
class HouseholdMutationPayload:
    household: HouseholdType | None
    errors: list[UserError]

def _household(h: Any, errors: list[UserError]) -> HouseholdMutationPayload:
    return HouseholdMutationPayload(household=HouseholdType.from_row(h) if h else None, errors=errors)


@strawberry.input
class HouseholdInput:
    account_no: str
    name: str
    area_id: strawberry.ID
    phone: str | None = None
    phone2: str | None = None
    id_number: str | None = None
    address: str = ""
    room: str | None = strawberry.field(default=None, description="房间号 (0101): 1-16 letters, digits or -.")
    customer_type: CustomerTypeEnum = CustomerType.residential  # type: ignore[valid-type]
    sub_type: str | None = None
    population: int = 3
    owner_since: date | None = None


@strawberry.input
class UpdateHouseholdInput:
    account_no: str | None = strawberry.UNSET
    name: str | None = strawberry.UNSET
    area_id: strawberry.ID | None = strawberry.UNSET
    phone: str | None = strawberry.UNSET
    phone2: str | None = strawberry.UNSET
    id_number: str | None = strawberry.UNSET
    address: str | None = strawberry.UNSET
    room: str | None = strawberry.field(default=strawberry.UNSET, description="房间号 (0101); null or blank clears it.")
    customer_type: CustomerTypeEnum | None = strawberry.UNSET  # type: ignore[valid-type]
    sub_type: str | None = strawberry.UNSET
    population: int | None = strawberry.UNSET


@strawberry.type
class HouseholdMutations:
    @strawberry.mutation(permission_classes=MANAGE, description="Register a household (住户).")
    async def create_household(self, info: Info, input: HouseholdInput) -> HouseholdMutationPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.create_household(
                session, account_no=input.account_no, name=input.name, area_id=decode_id(input.area_id, "Area", field="areaId"),
                phone=input.phone, phone2=input.phone2, id_number=input.id_number, address=input.address, room=input.room,
                customer_type=CustomerType(input.customer_type), sub_type=input.sub_type, population=input.population,
                owner_since=input.owner_since, scope_patterns=_scope(info),
            )

        return await _run(info, "createHousehold", lambda _: f"新增住户 {input.account_no[:32]}", _household, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Correct a household's record.")
    async def update_household(self, info: Info, id: strawberry.ID, input: UpdateHouseholdInput) -> HouseholdMutationPayload:
        async def work(session: AsyncSession) -> Any:
            changes = service.HouseholdChanges(
                account_no=_keep(input.account_no), name=_keep(input.name), area_id=_opt_id(input.area_id, "Area", "areaId"),
                phone=_keep(input.phone), phone2=_keep(input.phone2), id_number=_keep(input.id_number),
                address=_keep(input.address), room=_keep(input.room),
                customer_type=_keep(input.customer_type), sub_type=_keep(input.sub_type),
                population=_keep(input.population),
            )
            return await service.update_household(session, household_id=decode_id(id, "Household"), changes=changes,
                                                   scope_patterns=_scope(info))

        return await _run(info, "updateHousehold", lambda h: f"修改住户 {h.account_no if h else id}", _household, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Suspend, close (销户) or reactivate a household.")
    async def set_household_status(
        self, info: Info, id: strawberry.ID, status: HouseholdStatusEnum, reason: str = ""  # type: ignore[valid-type]
    ) -> HouseholdMutationPayload:
        context: Context = info.context
        hooks = context.services.get("household_hooks", service.NO_HOOKS)

        async def work(session: AsyncSession) -> Any:
            return await service.set_household_status(
                session, household_id=decode_id(id, "Household"), status=status, reason=reason,
                changed_by=context.caller.name, now=utcnow(), scope_patterns=_scope(info), hooks=hooks,
            )

        def describe(h: Any) -> str:
            return f"住户 {h.account_no if h else id} 状态改为 {HouseholdStatus(status).value}"

        return await _run(info, "setHouseholdStatus", describe, _household, work)

    @strawberry.mutation(permission_classes=MANAGE, description="过户: a new owner from a date; the old one stays in history.")
    async def transfer_ownership(
        self, info: Info, id: strawberry.ID, name: str, phone: str | None = None, id_number: str | None = None,
        valid_from: datetime | None = None,
    ) -> HouseholdMutationPayload:
        context: Context = info.context
        hooks = context.services.get("household_hooks", service.NO_HOOKS)

        async def work(session: AsyncSession) -> Any:
            now = utcnow()
            return await service.transfer_ownership(
                session, household_id=decode_id(id, "Household"), name=name, phone=phone, id_number=id_number,
                valid_from=(valid_from or now).astimezone(scalars.display_zone).date(), scope_patterns=_scope(info),
                hooks=hooks, now=now, by=context.caller.name, tz=scalars.display_zone,
            )

        return await _run(info, "transferOwnership", lambda h: f"住户 {h.account_no if h else id} 过户给 {name[:64]}",
                          _household, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete a household without history (otherwise close it).")
    async def delete_household(self, info: Info, id: strawberry.ID) -> HouseholdMutationPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_household(session, household_id=decode_id(id, "Household"), scope_patterns=_scope(info))

        return await _run(info, "deleteHousehold", lambda h: f"删除住户 {h.account_no if h else id}", _household, work)
