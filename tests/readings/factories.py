"""Meters for readings tests, built through the archives service."""

from __future__ import annotations

import itertools
import random
from datetime import date
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import AreaKind, Meter, MeterStatus, MeterType
from backend.archives.service import MeterChanges, create_area, create_meter
from tests.factories import unique

_addresses = itertools.count(random.randrange(10**12))


async def make_meter(session: AsyncSession, *, install_date: date | None = date(2025, 1, 1)) -> Meter:
    area = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    code = unique("R")
    return await create_meter(session, fields=MeterChanges(
        name=f"表{code}", code=code, address=f"{next(_addresses):014d}", meter_type=MeterType.cold_water,
        area_id=area.id, install_date=install_date, initial_reading=Decimal(0), status=MeterStatus.installed,
    ))
