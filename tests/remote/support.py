"""A small world for remote-control tests: two communities (east, west), a concentrator
in each, valve and plain meters on them, an NB-IoT meter, a meter on no link, and staff
of the east with remote permissions (no password hashing unless a test asks: argon2
costs ~0.15 s a hash)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import (
    Concentrator,
    ConnectionKind,
    Meter,
    MeterAssignment,
    MeterModel,
    MeterStatus,
    MeterType,
)
from backend.auth.principal import Principal
from backend.remote.models import RemoteCommand
from tests.factories import AreaTree, Staff, make_area_tree, make_household, unique
from tests.workorders.support import staff_member

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=5)
REMOTE = {"remote:read", "remote:control", "remote:params"}


@dataclass
class World:
    tree: AreaTree
    valve_model: MeterModel
    plain_model: MeterModel
    east_concentrator: Concentrator
    west_concentrator: Concentrator
    east_valve_meters: list[Meter]
    east_plain_meter: Meter
    west_valve_meter: Meter
    nb_iot_meter: Meter
    unlinked_meter: Meter
    operator: Staff
    west_operator: Staff

    @property
    def east_link(self) -> str:
        return f"concentrator:{self.east_concentrator.id}"

    @property
    def west_link(self) -> str:
        return f"concentrator:{self.west_concentrator.id}"


async def _model(session: AsyncSession, *, has_valve: bool) -> MeterModel:
    model = MeterModel(vendor=unique("厂家"), name=unique("型号"), caliber=20, has_valve=has_valve)
    session.add(model)
    await session.flush()
    return model


async def _concentrator(session: AsyncSession, area_id: int) -> Concentrator:
    concentrator = Concentrator(name=unique("集中器"), region_code="3301", terminal_address=int(unique("")) + 40000,
                                connection=ConnectionKind.serial, serial_url="/dev/ttyUSB0", area_id=area_id)
    session.add(concentrator)
    await session.flush()
    return concentrator


async def make_meter(session: AsyncSession, *, area_id: int, model: MeterModel, concentrator: Concentrator | None,
                     mqtt_topic: str | None = None, status: MeterStatus = MeterStatus.installed) -> Meter:
    number = unique("")
    meter = Meter(name=f"水表{number}", code=f"RM{number}", address=number.zfill(14), meter_type=MeterType.cold_water,
                  model_id=model.id, area_id=area_id, status=status,
                  concentrator_id=concentrator.id if concentrator else None, mqtt_topic=mqtt_topic)
    session.add(meter)
    await session.flush()
    return meter


async def make_world(session: AsyncSession) -> World:
    tree = await make_area_tree(session)
    east, west = tree.east_community.id or 0, tree.west_community.id or 0
    valve, plain = await _model(session, has_valve=True), await _model(session, has_valve=False)
    east_c, west_c = await _concentrator(session, east), await _concentrator(session, west)
    east_valves = [await make_meter(session, area_id=east, model=valve, concentrator=east_c) for _ in range(3)]
    return World(
        tree, valve, plain, east_c, west_c, east_valves,
        await make_meter(session, area_id=east, model=plain, concentrator=east_c),
        await make_meter(session, area_id=west, model=valve, concentrator=west_c),
        await make_meter(session, area_id=east, model=valve, concentrator=None, mqtt_topic="nb/meter/1"),
        await make_meter(session, area_id=east, model=valve, concentrator=None),
        await staff_member(session, permissions=REMOTE, area=tree.east),
        await staff_member(session, permissions=REMOTE, area=tree.west),
    )


async def assign(session: AsyncSession, meter: Meter, household_id: int) -> None:
    session.add(MeterAssignment(meter_id=meter.id or 0, household_id=household_id, valid_from=NOW - timedelta(days=30),
                                start_reading=Decimal(0)))
    await session.flush()


async def household_with(session: AsyncSession, world: World, *meters: Meter) -> int:
    household = await make_household(session, area=world.tree.east_community)
    for meter in meters:
        await assign(session, meter, household.id or 0)
    return household.id or 0


async def states(session: AsyncSession, ids: list[int]) -> list[str]:
    rows = await session.execute(select(RemoteCommand.state).where(RemoteCommand.id.in_(ids))  # type: ignore[union-attr,call-overload]
                                 .order_by(RemoteCommand.id))
    return [str(state.value) for state in rows.scalars()]


async def events(session: AsyncSession, kind: str) -> list[dict[str, Any]]:
    rows = await session.execute(text("SELECT payload FROM domain_events WHERE kind = :kind ORDER BY id"), {"kind": kind})
    return [row[0] for row in rows]


async def command_count(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(RemoteCommand))).scalar_one())


def principal_of(staff: Staff) -> Principal:
    return staff.principal
