"""Notifications test helpers: households with bound residents and their app devices,
written straight to the tables (the binding rules are auth's, tested there)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import AreaKind
from backend.archives.service import create_area, create_household
from tests.factories import unique


@dataclass(frozen=True)
class Home:
    household_id: int
    account_no: str
    phone: str
    resident_ids: tuple[int, ...]


def phone_number() -> str:
    return "139" + unique("")[-8:].rjust(8, "0")


async def make_home(session: AsyncSession, *, residents: int = 1, phone: str | None = None) -> Home:
    """A household (registered ``phone``) with ``residents`` residents bound to it, none with the app."""
    area = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    assert area.id is not None
    phone = phone or phone_number()
    household = await create_household(session, account_no=unique("66"), name="李娜", area_id=area.id, phone=phone)
    assert household.id is not None
    ids = []
    for index in range(residents):
        resident_id = (await session.execute(text("INSERT INTO residents (phone) VALUES (:p) RETURNING id"),
                                             {"p": phone if index == 0 else phone_number()})).scalar_one()
        await session.execute(text(
            "INSERT INTO resident_households (resident_id, household_id, is_owner) VALUES (:r, :h, :o)"),
            {"r": resident_id, "h": household.id, "o": index == 0})
        ids.append(resident_id)
    return Home(household.id, household.account_no, phone, tuple(ids))


async def add_devices(session: AsyncSession, *, user_kind: str, user_ids: list[int], per_user: int = 1,
                      prefix: str | None = None) -> list[str]:
    """``per_user`` active devices for each user, set-based; their registration ids."""
    prefix = prefix or unique("rid")
    rows = await session.execute(text(
        """
        INSERT INTO push_devices (registration_id, platform, user_kind, user_id, active, registered_at)
        SELECT :prefix || '-' || u || '-' || n, CASE WHEN n % 2 = 0 THEN 'ios' ELSE 'android' END, :kind, u, true, now()
        FROM unnest(CAST(:ids AS bigint[])) AS u, generate_series(1, :per) AS n
        RETURNING registration_id
        """), {"prefix": prefix, "kind": user_kind, "ids": user_ids, "per": per_user})
    return [row[0] for row in rows]


async def make_residents(session: AsyncSession, count: int) -> list[int]:
    """``count`` residents bound to nothing, set-based."""
    start = unique("")
    rows = await session.execute(text(
        "INSERT INTO residents (phone) SELECT '17' || lpad((:start * 100000 + n)::text, 9, '0') "
        "FROM generate_series(1, :count) AS n RETURNING id"), {"start": int(start) % 10000, "count": count})
    return [row[0] for row in rows]
