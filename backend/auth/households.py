"""What auth reads of the archives' households: the facts a resident's binding checks.

Auth comes before archives (DESIGN.md, "Domain order") and imports none of it; binding a
household needs only its identity (account number, registered name and phones, area),
read here through a table clause of its own, as ``backend.auth.scope`` reads the area
tree. Archives owns the table and every other column; the GraphQL ``household`` fields
of auth's types are added by archives (``backend.archives.schema.auth_fields``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, Text, column, select, table
from sqlalchemy.ext.asyncio import AsyncSession

HOUSEHOLDS = table(
    "households", column("id", BigInteger), column("area_id", BigInteger), column("account_no", Text),
    column("name", Text), column("phone", Text), column("phone2", Text),
)


@dataclass(frozen=True, slots=True)
class HouseholdIdentity:
    """A household as a binding sees it."""

    id: int
    area_id: int
    account_no: str
    name: str
    phone: str | None
    phone2: str | None


async def household_by_account_no(session: AsyncSession, account_no: str) -> HouseholdIdentity | None:
    row = (await session.execute(select(HOUSEHOLDS).where(HOUSEHOLDS.c.account_no == account_no))).first()
    return HouseholdIdentity(**row._mapping) if row is not None else None


async def household_by_id(session: AsyncSession, household_id: int) -> HouseholdIdentity | None:
    row = (await session.execute(select(HOUSEHOLDS).where(HOUSEHOLDS.c.id == household_id))).first()
    return HouseholdIdentity(**row._mapping) if row is not None else None
