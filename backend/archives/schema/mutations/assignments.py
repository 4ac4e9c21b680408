"""Assignment mutations: assign a meter (配表), end an assignment, replace a meter (换表)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service
from backend.archives.schema.mutations.common import MANAGE, _reading, _run, _scope
from backend.archives.schema.types import (
    MeterAssignmentType,
    MeterReplacementType,
)
from backend.clock import utcnow
from backend.graphql import scalars
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.relay import decode_id


@strawberry.type
class MeterAssignmentPayload:
    assignment: MeterAssignmentType | None
    errors: list[UserError]


@strawberry.type
class MeterReplacementPayload:
    replacement: MeterReplacementType | None
    errors: list[UserError]


@strawberry.type
class AssignmentMutations:
    @strawberry.mutation(permission_classes=MANAGE, description="配表: a meter starts serving a household.")
    async def assign_meter(
        self, info: Info, meter_id: strawberry.ID, household_id: strawberry.ID, valid_from: datetime | None = None,
        start_reading: str | None = None,
    ) -> MeterAssignmentPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.assign_meter(
                session, meter_id=decode_id(meter_id, "Meter", field="meterId"),
                household_id=decode_id(household_id, "Household", field="householdId"),
                valid_from=valid_from or utcnow(), start_reading=_reading(start_reading, 'startReading'), scope_patterns=_scope(info),
                now=utcnow(), tz=scalars.display_zone,
            )

        return await _run(info, "assignMeter", lambda _: "水表分配给住户",
                          lambda a, e: MeterAssignmentPayload(assignment=MeterAssignmentType.from_row(a) if a else None, errors=e),
                          work)

    @strawberry.mutation(permission_classes=MANAGE, description="拆表: a meter stops serving its household.")
    async def end_meter_assignment(
        self, info: Info, meter_id: strawberry.ID, end_reading: str | None = None, valid_to: datetime | None = None,
    ) -> MeterAssignmentPayload:
        async def work(session: AsyncSession) -> Any:
            return await service.end_assignment(session, meter_id=decode_id(meter_id, "Meter", field="meterId"),
                                                valid_to=valid_to or utcnow(), end_reading=_reading(end_reading, 'endReading'),
                                                scope_patterns=_scope(info), now=utcnow(), tz=scalars.display_zone)

        return await _run(info, "endMeterAssignment", lambda _: "水表拆表",
                          lambda a, e: MeterAssignmentPayload(assignment=MeterAssignmentType.from_row(a) if a else None, errors=e),
                          work)

    @strawberry.mutation(permission_classes=MANAGE, description="换表: close the old meter with its final reading and open the new one.")
    async def replace_meter(
        self, info: Info, old_meter_id: strawberry.ID, new_meter_id: strawberry.ID,
        old_final_reading: str | None = None, new_initial_reading: str | None = None,
        replaced_at: datetime | None = None, reason: str = "",
    ) -> MeterReplacementPayload:
        context: Context = info.context

        async def work(session: AsyncSession) -> Any:
            return await service.replace_meter(
                session, old_meter_id=decode_id(old_meter_id, "Meter", field="oldMeterId"),
                new_meter_id=decode_id(new_meter_id, "Meter", field="newMeterId"), replaced_at=replaced_at or utcnow(),
                old_final_reading=_reading(old_final_reading, 'oldFinalReading'),
                new_initial_reading=_reading(new_initial_reading, 'newInitialReading'), reason=reason,
                replaced_by=context.caller.name, scope_patterns=_scope(info), now=utcnow(), tz=scalars.display_zone,
            )

        return await _run(info, "replaceMeter", lambda _: "住户换表",
                          lambda r, e: MeterReplacementPayload(replacement=MeterReplacementType.from_row(r) if r else None, errors=e),
                          work)
