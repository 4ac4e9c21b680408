"""The same-subtree rule for meter assignments (a meter serves only households in its
area or below it) holds under concurrency: a household or meter moving while a meter is
assigned, and the area tree reshaping meanwhile (backend/archives/service.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.archives import errors, service
from backend.archives.models import Area, Household, Meter, MeterType
from backend.archives.service import areas as service_areas
from tests.factories import AreaTree, make_area_tree, make_household, unique

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_addresses = iter(range(2 * 10**12, 3 * 10**12))


async def make_meter(session: AsyncSession, area: Area) -> Meter:
    assert area.id is not None
    fields = service.MeterChanges(name="水表", code=unique("R"), address=f"{next(_addresses):014d}",
                                  meter_type=MeterType.cold_water, area_id=area.id)
    return await service.create_meter(session, fields=fields)


async def blocked_on_a_lock(sessions: async_sessionmaker[AsyncSession], task: asyncio.Task[object]) -> bool:
    """Whether ``task`` is waiting for a lock (True) rather than finished (False)."""
    for _ in range(500):
        if task.done():
            return False
        async with sessions() as observer:
            waiting = (await observer.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))).scalar_one()
        if waiting:
            return True
        await asyncio.sleep(0.01)
    raise AssertionError("neither finished nor blocked")


async def assign(sessions: async_sessionmaker[AsyncSession], meter: Meter, household: Household) -> object:
    async with sessions() as session, session.begin():
        return await service.assign_meter(session, meter_id=meter.id or 0, household_id=household.id or 0, valid_from=T0)


async def open_assignments(sessions: async_sessionmaker[AsyncSession], household: Household) -> int:
    async with sessions() as session:
        return int((await session.execute(text(
            "SELECT count(*) FROM meter_assignments WHERE household_id = :id AND valid_to IS NULL"), {"id": household.id},
        )).scalar_one())


async def committed_tree(sessions: async_sessionmaker[AsyncSession]) -> tuple[AreaTree, Meter, Household]:
    async with sessions() as session, session.begin():
        tree = await make_area_tree(session)
        meter = await make_meter(session, tree.east)
        household = await make_household(session, area=tree.east_community)
    return tree, meter, household


async def test_an_assignment_waits_for_a_household_moving_out_of_the_meters_area_and_is_then_refused(
    committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tree, meter, household = await committed_tree(committed_sessions)

    async with committed_sessions() as mover, mover.begin():
        await service.update_household(mover, household_id=household.id or 0,
                                       changes=service.HouseholdChanges(area_id=tree.west_community.id))
        assigning = asyncio.create_task(assign(committed_sessions, meter, household))
        blocked = await blocked_on_a_lock(committed_sessions, assigning)

    with pytest.raises(errors.CrossAreaAssignment):
        await assigning
    assert blocked
    assert await open_assignments(committed_sessions, household) == 0


async def test_an_assignment_waits_for_the_area_tree_reshaping_under_it_and_is_then_refused(
    committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    tree, meter, household = await committed_tree(committed_sessions)

    async with committed_sessions() as reshaper, reshaper.begin():
        # The household's community now hangs under the west district: outside the meter's.
        await service.move_area(reshaper, area_id=tree.east_community.id or 0, new_parent_id=tree.west.id or 0)
        assigning = asyncio.create_task(assign(committed_sessions, meter, household))
        blocked = await blocked_on_a_lock(committed_sessions, assigning)

    with pytest.raises(errors.CrossAreaAssignment):
        await assigning
    assert blocked
    assert await open_assignments(committed_sessions, household) == 0


async def shares_the_area_tree_lock(session: AsyncSession) -> bool:
    """Whether this transaction holds the area tree's advisory lock in shared mode."""
    key = service_areas._AREA_TREE_LOCK
    modes = (await session.execute(text(
        "SELECT mode FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
        "AND classid = :high AND objid = :low AND objsubid = 1"
    ), {"high": key >> 32, "low": key & 0xFFFFFFFF})).scalars().all()
    return "ShareLock" in modes


def _assign(session: AsyncSession, tree: AreaTree, meter: Meter, spare: Meter, household: Household) -> Awaitable[object]:
    return service.assign_meter(session, meter_id=spare.id or 0, household_id=household.id or 0, valid_from=T0)


def _replace(session: AsyncSession, tree: AreaTree, meter: Meter, spare: Meter, household: Household) -> Awaitable[object]:
    return service.replace_meter(
        session, old_meter_id=meter.id or 0, new_meter_id=spare.id or 0, replaced_at=datetime(2026, 2, 1, tzinfo=UTC),
        old_final_reading=Decimal("1"), new_initial_reading=Decimal("0"), replaced_by="test")


def _move_meter(session: AsyncSession, tree: AreaTree, meter: Meter, spare: Meter, household: Household) -> Awaitable[object]:
    return service.update_meter(session, meter_id=meter.id or 0, changes=service.MeterChanges(area_id=tree.company.id))


def _move_household(session: AsyncSession, tree: AreaTree, meter: Meter, spare: Meter, household: Household) -> Awaitable[object]:
    return service.update_household(session, household_id=household.id or 0, changes=service.HouseholdChanges(area_id=tree.east.id))


@pytest.mark.parametrize("path", [_assign, _replace, _move_meter, _move_household])
async def test_every_path_that_assigns_or_moves_a_meter_or_household_shares_the_area_tree_lock(
    committed_sessions: async_sessionmaker[AsyncSession], path: Callable[..., Awaitable[object]],
) -> None:
    tree, meter, household = await committed_tree(committed_sessions)
    async with committed_sessions() as session, session.begin():
        spare = await make_meter(session, tree.east)
    await assign(committed_sessions, meter, household)

    async with committed_sessions() as session:
        await path(session, tree, meter, spare, household)
        shared = await shares_the_area_tree_lock(session)
        await session.rollback()

    assert shared
