"""Meters for readings tests, built through the archives service."""

from __future__ import annotations

import itertools
import random
from datetime import date
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import AreaKind, Meter, MeterStatus, MeterType
from backend.archives.service import MeterChanges, MeterModelFields, create_area, create_meter, save_meter_model
from tests.factories import unique

_addresses = itertools.count(random.randrange(10**12))


async def make_meter(
    session: AsyncSession,
    *,
    install_date: date | None = date(2025, 1, 1),
    register_digits: int | None = None,
    multiplier: Decimal | None = None,
    area_id: int | None = None,
) -> Meter:
    """A meter installed in an area of its own (or ``area_id``); with a register size or
    multiplier, of a meter model of its own that has them."""
    if area_id is None:
        area_id = (await create_area(session, name=unique("公司"), kind=AreaKind.company)).id
    model_id = None
    if register_digits is not None or multiplier is not None:
        model = await save_meter_model(session, fields=MeterModelFields(
            vendor=unique("厂家"), name=unique("型号"), caliber=20, register_digits=register_digits or 5,
            multiplier=multiplier or Decimal(1),
        ))
        model_id = model.id
    code = unique("R")
    return await create_meter(session, fields=MeterChanges(
        name=f"表{code}", code=code, address=f"{next(_addresses):014d}", meter_type=MeterType.cold_water,
        area_id=area_id, model_id=model_id, install_date=install_date, initial_reading=Decimal(0), status=MeterStatus.installed,
    ))
