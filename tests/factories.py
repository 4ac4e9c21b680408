"""Factories: build rows through the services, the way the product does."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Area, AreaKind, Household
from backend.archives.service import create_area, create_household
from backend.auth import service as auth
from backend.auth.catalog import all_permissions
from backend.auth.models import PrincipalKind, RoleKind, StaffUser
from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.settings import Settings

_counter = itertools.count(1)
PASSWORD = "Passw0rd!x"

# Creates roles on behalf of the tests: holds everything everywhere.
ROOT = Principal(kind=PrincipalKind.staff, id=0, name="root", permissions=all_permissions(), scope_paths=("/",))


def unique(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"


@dataclass
class AreaTree:
    company: Area
    east: Area
    west: Area
    east_community: Area
    west_community: Area


async def make_area_tree(session: AsyncSession) -> AreaTree:
    company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    east = await create_area(session, name="城东片区", kind=AreaKind.district, parent_id=company.id)
    west = await create_area(session, name="城西片区", kind=AreaKind.district, parent_id=company.id)
    east_community = await create_area(session, name="翠湖小区", kind=AreaKind.community, parent_id=east.id)
    west_community = await create_area(session, name="西山名苑", kind=AreaKind.community, parent_id=west.id)
    return AreaTree(company, east, west, east_community, west_community)


@dataclass
class Staff:
    user: StaffUser
    principal: Principal
    username: str
    password: str


async def make_staff(
    session: AsyncSession,
    *,
    permissions: Iterable[str] | None = None,
    areas: Iterable[Area] = (),
    kind: RoleKind = RoleKind.operator,
) -> Staff:
    """A staff user with one role holding ``permissions`` over ``areas``; the user and
    the role belong to the first of ``areas`` (none: the company as a whole)."""
    areas = list(areas)
    unit_id = areas[0].id if areas else None
    role = await auth.create_role(
        session, actor=ROOT, name=unique("角色"), kind=kind,
        permissions=all_permissions() if permissions is None else permissions,
        area_ids=[a.id for a in areas if a.id is not None], unit_id=unit_id,
    )
    username = unique("user")
    assert role.id is not None
    user = await auth.create_staff_user(
        session, actor=ROOT, username=username, full_name=unique("员工"), password=PASSWORD, role_ids=[role.id], now=utcnow(),
        unit_id=unit_id,
    )
    assert user.id is not None
    principal = await auth.load_principal(session, kind=PrincipalKind.staff, principal_id=user.id)
    assert principal is not None
    return Staff(user, principal, username, PASSWORD)


async def insert_legacy_assignment(
    session: AsyncSession, *, meter_id: int, household_id: int, valid_from: datetime, start_reading: Decimal = Decimal(0)
) -> None:
    """An open assignment written straight to the table, as a row from before the rule that
    a meter serves only households in its area's subtree (the service refuses new ones
    across areas): screens must still not reveal its household outside the reader's scope."""
    await session.execute(text(
        "INSERT INTO meter_assignments (meter_id, household_id, valid_from, start_reading) "
        "VALUES (:meter_id, :household_id, :valid_from, :start_reading)"
    ), {"meter_id": meter_id, "household_id": household_id, "valid_from": valid_from, "start_reading": start_reading})
    await session.execute(text("UPDATE meters SET status = 'installed' WHERE id = :id"), {"id": meter_id})


async def make_household(session: AsyncSession, *, area: Area, name: str = "张伟", phone: str | None = None) -> Household:
    assert area.id is not None
    return await create_household(session, account_no=unique("88"), name=name, area_id=area.id, phone=phone)


class _NoSms:
    async def send_login_code(self, phone: str, code: str) -> None:
        raise AssertionError("no SMS expected")

    async def send_binding_code(self, phone: str, code: str, account_no: str) -> None:
        raise AssertionError("no SMS expected")


def auth_policy(secret: str, **settings: Any) -> auth.AuthPolicy:
    """The policy a deployment with these settings (and the defaults of the rest) runs."""
    return auth.AuthPolicy.from_settings(Settings(secret_key=secret, **settings))


async def bind_at_counter(session: AsyncSession, *, resident: Principal, household: Household) -> None:
    """Bind a resident to a household the way the product does: the resident asks, and
    unless their phone is the registered one (bound at once) the counter approves."""
    policy = auth_policy("factories-secret-of-at-least-32-characters")
    pending = await auth.bind_household(session, resident=resident, account_no=household.account_no, name=household.name,
                                        now=utcnow(), policy=policy)
    await auth.send_binding_code(pending, sender=_NoSms())
    assert pending.binding.id is not None
    if pending.household is not None:
        return
    await auth.decide_household_binding(session, actor=ROOT, binding_id=pending.binding.id, approve=True, now=utcnow())
