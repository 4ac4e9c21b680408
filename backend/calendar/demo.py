"""The calendar's demo step: the package's holidays, as ``shuiwu holidays seed`` loads them."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from backend.calendar.service import seed_from_package
from backend.domain import DemoPlan


async def demo_step(session: AsyncSession, plan: DemoPlan) -> None:
    plan.progress("节假日")
    await seed_from_package(session)
