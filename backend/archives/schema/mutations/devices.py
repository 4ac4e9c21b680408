"""Concentrator and collector mutations."""

from __future__ import annotations

from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.schema.mutations.common import MANAGE, _keep, _opt_id, _run, _scope
from backend.archives.schema.types import (
    CollectorType,
    ConcentratorType,
    ConnectionKindEnum,
    DeviceStatusEnum,
)
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.relay import decode_id


@strawberry.type
class ConcentratorPayload:
    concentrator: ConcentratorType | None
    errors: list[UserError]


@strawberry.type
class CollectorPayload:
    collector: CollectorType | None
    errors: list[UserError]


def _concentrator(c: Any, errors: list[UserError]) -> ConcentratorPayload:
    return ConcentratorPayload(concentrator=ConcentratorType.from_row(c) if c else None, errors=errors)


def _collector(c: Any, errors: list[UserError]) -> CollectorPayload:
    return CollectorPayload(collector=CollectorType.from_row(c) if c else None, errors=errors)


def _cipher(info: Info) -> service.TerminalPasswordCipher:
    return service.TerminalPasswordCipher(info.context.settings.secret())


@strawberry.input
class ConcentratorInput:
    """A concentrator's fields: required ones on create; on update only those given change
    (null clears an optional one). ``terminalPassword`` is write-only: stored encrypted,
    never returned (``hasTerminalPassword`` tells whether one is set); empty clears it."""

    name: str | None = strawberry.UNSET
    region_code: str | None = strawberry.UNSET
    terminal_address: int | None = strawberry.UNSET
    area_id: strawberry.ID | None = strawberry.UNSET
    connection: ConnectionKindEnum | None = strawberry.UNSET  # type: ignore[valid-type]
    model: str | None = strawberry.UNSET
    protocol: str | None = strawberry.UNSET
    serial_url: str | None = strawberry.UNSET
    baudrate: int | None = strawberry.UNSET
    parity: str | None = strawberry.UNSET
    bytesize: int | None = strawberry.UNSET
    stopbits: str | None = strawberry.UNSET
    host: str | None = strawberry.UNSET
    port: int | None = strawberry.UNSET
    status: DeviceStatusEnum | None = strawberry.UNSET  # type: ignore[valid-type]
    terminal_password: str | None = strawberry.UNSET

    def changes(self) -> service.ConcentratorChanges:
        return service.ConcentratorChanges(
            name=_keep(self.name), region_code=_keep(self.region_code), terminal_address=_keep(self.terminal_address),
            area_id=_opt_id(self.area_id, "Area", "areaId"), connection=_keep(self.connection), model=_keep(self.model),
            protocol=_keep(self.protocol), serial_url=_keep(self.serial_url), baudrate=_keep(self.baudrate),
            parity=_keep(self.parity), bytesize=_keep(self.bytesize), stopbits=_keep(self.stopbits), host=_keep(self.host),
            port=_keep(self.port), status=_keep(self.status), terminal_password=_keep(self.terminal_password),
        )


@strawberry.type
class DeviceMutations:
    @strawberry.mutation(permission_classes=MANAGE, description="Register a concentrator (集中器).")
    async def create_concentrator(self, info: Info, input: ConcentratorInput) -> ConcentratorPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.create_concentrator(session, fields=input.changes(), cipher=_cipher(info),
                                                     scope_patterns=_scope(info))

        return await run_mutation(info, module="archives", action="createConcentrator",
                                  describe=lambda c: f"新增集中器 {c.name if c else ''}".strip(), payload=_concentrator,
                                  work=work)

    @strawberry.mutation(permission_classes=MANAGE,
                         description="Change a concentrator: connection, serial settings, status or terminal password.")
    async def update_concentrator(self, info: Info, id: strawberry.ID, input: ConcentratorInput) -> ConcentratorPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.update_concentrator(session, concentrator_id=decode_id(id, "Concentrator"),
                                                     changes=input.changes(), cipher=_cipher(info), scope_patterns=_scope(info))

        return await run_mutation(info, module="archives", action="updateConcentrator",
                                  describe=lambda c: f"修改集中器 {c.name if c else id}", payload=_concentrator,
                                  work=work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete a concentrator with no collector or meter under it.")
    async def delete_concentrator(self, info: Info, id: strawberry.ID) -> ConcentratorPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_concentrator(session, concentrator_id=decode_id(id, "Concentrator"),
                                                     scope_patterns=_scope(info))

        return await _run(info, "deleteConcentrator", lambda c: f"删除集中器 {c.name if c else id}", _concentrator, work)

    @strawberry.mutation(permission_classes=MANAGE,
                         description="Add a collector (采集器) under a concentrator, or change collector `id`.")
    async def save_collector(
        self, info: Info, concentrator_id: strawberry.ID, address: str, name: str, id: strawberry.ID | None = None,
    ) -> CollectorPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.save_collector(
                session, concentrator_id=decode_id(concentrator_id, "Concentrator", field="concentratorId"),
                address=address, name=name, collector_id=decode_id(id, "Collector") if id else None,
                scope_patterns=_scope(info),
            )

        verb = "修改" if id else "新增"
        return await _run(info, "saveCollector", lambda c: f"{verb}采集器 {(c.address if c else address)[:32]}", _collector, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete a collector with no meter under it.")
    async def delete_collector(self, info: Info, id: strawberry.ID) -> CollectorPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.delete_collector(session, collector_id=decode_id(id, "Collector"), scope_patterns=_scope(info))

        return await _run(info, "deleteCollector", lambda c: f"删除采集器 {c.address if c else id}", _collector, work)
