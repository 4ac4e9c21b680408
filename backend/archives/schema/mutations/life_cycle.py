"""A meter's life-cycle mutations: install (安装), uninstall (拆回), mark faulty (故障),
repair (修复). Household meters are installed and taken back by assignMeter /
endMeterAssignment / replaceMeter; the rules are in backend.archives.service.life_cycle."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.schema.mutations.common import MANAGE, _run, _scope
from backend.archives.schema.mutations.meters import MeterPayload, _meter
from backend.clock import utcnow
from backend.graphql import scalars
from backend.graphql.relay import decode_id


def _code(meter: Any, id: strawberry.ID) -> str:
    return meter.code if meter is not None else str(id)


@strawberry.type
class LifeCycleMutations:
    @strawberry.mutation(permission_classes=MANAGE, description=(
        "安装: an in-stock monitoring point goes into service at a location (and in an area, default its own); "
        "alarms then evaluate it. A household meter is installed by assignMeter (METER_STATE_INVALID here)."))
    async def install_meter(
        self, info: Info, id: strawberry.ID, location: str, area_id: strawberry.ID | None = None,
        installed_at: datetime | None = None,
    ) -> MeterPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.install_meter(
                session, meter_id=decode_id(id, "Meter"), location=location,
                area_id=decode_id(area_id, "Area", field="areaId") if area_id is not None else None,
                installed_at=installed_at or utcnow(), changed_by=info.context.caller.name, scope_patterns=_scope(info),
                tz=scalars.display_zone,
            )

        return await _run(info, "installMeter", lambda m: f"安装水表 {_code(m, id)} 于 {location}", _meter, work)

    @strawberry.mutation(permission_classes=MANAGE, description=(
        "拆回: an installed meter goes back in stock. A household meter serving a household is taken back by "
        "endMeterAssignment or replaceMeter (METER_ALREADY_ASSIGNED here)."))
    async def uninstall_meter(self, info: Info, id: strawberry.ID, reason: str = "") -> MeterPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.uninstall_meter(session, meter_id=decode_id(id, "Meter"), reason=reason, at=utcnow(),
                                                 changed_by=info.context.caller.name, scope_patterns=_scope(info))

        return await _run(info, "uninstallMeter", lambda m: f"拆回水表 {_code(m, id)}", _meter, work)

    @strawberry.mutation(permission_classes=MANAGE, description=(
        "故障: mark an installed or in-stock meter faulty, with a reason; alarms stop evaluating it until repaired. "
        "A household meter keeps its assignment."))
    async def mark_meter_faulty(self, info: Info, id: strawberry.ID, reason: str) -> MeterPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.mark_meter_faulty(session, meter_id=decode_id(id, "Meter"), reason=reason, at=utcnow(),
                                                   changed_by=info.context.caller.name, scope_patterns=_scope(info))

        return await _run(info, "markMeterFaulty", lambda m: f"水表 {_code(m, id)} 标记故障: {reason[:100]}", _meter, work)

    @strawberry.mutation(permission_classes=MANAGE, description=(
        "修复: a faulty meter returns to its status before the fault: installed while it serves a household "
        "(or, for a monitoring point, was installed when it failed), else in stock."))
    async def repair_meter(self, info: Info, id: strawberry.ID, reason: str = "") -> MeterPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.repair_meter(session, meter_id=decode_id(id, "Meter"), reason=reason, at=utcnow(),
                                              changed_by=info.context.caller.name, scope_patterns=_scope(info))

        return await _run(info, "repairMeter", lambda m: f"修复水表 {_code(m, id)}", _meter, work)
