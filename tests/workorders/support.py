"""A small world for work-order tests: two communities, a household in each, a resident
of the first, a handler and a supervisor of the east, and one of the west."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Area, Household
from backend.auth import service as auth
from backend.auth.models import PrincipalKind, RoleKind, StaffUser, StaffUserRole
from backend.auth.principal import Principal
from backend.workorders import service
from backend.workorders.models import WorkOrder, WorkOrderCategory, WorkOrderTransition
from tests.factories import ROOT, AreaTree, Staff, make_area_tree, make_household, unique

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
TZ = ZoneInfo("Asia/Shanghai")
HANDLE = {"workorders:read", "workorders:handle"}


@dataclass
class World:
    tree: AreaTree
    home: Household
    elsewhere: Household
    resident: Principal
    stranger: Principal
    handler: Staff
    other_handler: Staff
    supervisor: Staff
    west_handler: Staff


def resident(resident_id: int, *households: Household) -> Principal:
    return Principal(kind=PrincipalKind.resident, id=resident_id, name="住户",
                     permissions=frozenset({"resident:self"}), household_ids=tuple(h.id or 0 for h in households))


async def make_world(session: AsyncSession) -> World:
    tree = await make_area_tree(session)
    home = await make_household(session, area=tree.east_community, name="王芳", phone="13800001111")
    elsewhere = await make_household(session, area=tree.west_community, name="李强", phone="13700002222")
    return World(
        tree, home, elsewhere, resident(900001, home), resident(900002, elsewhere),
        await staff_member(session, permissions=HANDLE, area=tree.east),
        await staff_member(session, permissions=HANDLE, area=tree.east),
        await staff_member(session, permissions={*HANDLE, "workorders:dispatch"}, area=tree.east),
        await staff_member(session, permissions=HANDLE, area=tree.west),
    )


async def staff_member(session: AsyncSession, *, permissions: set[str], area: Area) -> Staff:
    """A staff user with a role holding ``permissions`` over ``area``, and the principal a
    login would give them (dispatch reads an assignee's grants from their roles). (No
    password: make_staff's argon2 hashing costs ~0.5 s a user, and these users never log in.)"""
    role = await auth.create_role(session, actor=ROOT, name=unique("角色"), kind=RoleKind.operator,
                                  permissions=permissions, area_ids=[area.id or 0], unit_id=area.id)
    user = StaffUser(username=unique("wo"), full_name=unique("维修员"), password_hash="!", area_id=area.id)
    session.add(user)
    await session.flush()
    assert user.id is not None and role.id is not None
    session.add(StaffUserRole(user_id=user.id, role_id=role.id))
    await session.flush()
    principal = await auth.load_principal(session, kind=PrincipalKind.staff, principal_id=user.id)
    assert principal is not None
    return Staff(user, principal, user.username, "")


async def report(session: AsyncSession, world: World, *, category: WorkOrderCategory = WorkOrderCategory.leak,
                 now: datetime = NOW, **values: Any) -> WorkOrder:
    return await service.create_work_order(
        session, principal=world.resident, household_id=world.home.id or 0, category=category,
        description=values.pop("description", "卫生间水管漏水"), contact_name=values.pop("contact_name", None),
        contact_phone=values.pop("contact_phone", None), appointment_at=values.pop("appointment_at", None), now=now,
        tz=TZ, **values)


async def footprint(session: AsyncSession, order_id: int) -> tuple[Any, ...]:
    """Everything a transition writes: the row, its transitions and events."""
    order = (await session.execute(text("SELECT state, assignee_id, rating, result, updated_at FROM work_orders "
                                        "WHERE id = :id"), {"id": order_id})).one()
    transitions = (await session.execute(select(func.count()).select_from(WorkOrderTransition)
                                         .where(WorkOrderTransition.work_order_id == order_id))).scalar_one()  # type: ignore[arg-type]
    events = (await session.execute(text("SELECT count(*) FROM domain_events WHERE kind = 'workorder.changed' "
                                         "AND (payload->>'workorder_id')::bigint = :id"), {"id": order_id})).scalar_one()
    return tuple(order), transitions, events


async def listed(session: AsyncSession, principal: Principal, where: service.WorkOrderFilter = service.WorkOrderFilter(),
                 now: datetime = NOW) -> list[Any]:
    query = service.work_order_page_query(principal=principal, where=where, now=now)
    return list((await session.execute(query.rows, {**query.params, "_offset": 0, "_limit": 100})).all())


LATER = timedelta(minutes=10)
