"""Billing test helpers: a household with a meter and an account on a tariff of the
test's own, readings in one call, and the ledger's sums."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Area, AreaKind, Household, Meter
from backend.archives.service import assign_meter, create_area, create_household
from backend.billing import service as tariffs
from backend.billing.accounts import AccountTerms, open_account
from backend.billing.models import Account, BillingMode
from backend.readings.service import ReadingIn, ingest_readings
from tests.factories import unique
from tests.readings.factories import make_meter

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=SHANGHAI)


def tariff(*, cycle: str = "month", limits: list[Any] | None = None, prices: list[str] | None = None,
           valid_from: date = date(2024, 1, 1), code: str | None = None, **extra: Any) -> dict[str, Any]:
    """A one-component residential tariff of its own code (tests write what they pin down)."""
    return {"code": code or unique("T")[:40], "name": "测试水价", "customer_type": "residential",
            "valid_from": valid_from, "cycle": cycle, "tier_limits": limits or [],
            "components": [{"code": "water", "name": "自来水费", "prices": prices or ["3.4567"]}], **extra}


@dataclass
class Served:
    household: Household
    meter: Meter
    account: Account

    @property
    def account_id(self) -> int:
        assert self.account.id is not None
        return self.account.id


async def served_household(session: AsyncSession, *, raw_tariff: dict[str, Any], opened_at: datetime,
                           mode: BillingMode = BillingMode.prepaid_station, start_reading: str = "0",
                           terms: AccountTerms | None = None, area: Area | None = None) -> Served:
    """A household served by one meter from ``opened_at``, with an account on ``raw_tariff``
    (saved here unless a version of its code exists) opened at ``opened_at``; in ``area``
    (default: a company of its own)."""
    await tariffs.save_tariff(session, raw=raw_tariff)
    area = area or await create_area(session, name=unique("公司"), kind=AreaKind.company)
    assert area.id is not None
    household = await create_household(session, account_no=unique("H"), name="王芳", area_id=area.id)
    meter = await make_meter(session, area_id=area.id, install_date=None)
    assert household.id is not None and meter.id is not None
    await assign_meter(session, meter_id=meter.id, household_id=household.id, valid_from=opened_at,
                       start_reading=Decimal(start_reading))
    account = await open_account(session, household_id=household.id, mode=mode,
                                 terms=terms or AccountTerms(tariff_code=raw_tariff["code"]), now=opened_at, by="测试")
    return Served(household, meter, account)


async def ingest(session: AsyncSession, meter_id: int, readings: list[tuple[datetime, str | Decimal]],
                 now: datetime) -> Any:
    result = await ingest_readings(session, readings=[
        ReadingIn(meter_id=meter_id, read_at=read_at, total_m3=Decimal(total)) for read_at, total in readings
    ], source="test", now=now)
    assert result.rejected == []
    return result


async def ledger_sum(session: AsyncSession, account_id: int) -> int:
    return int((await session.execute(text("SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries "
                                           "WHERE account_id = :a"), {"a": account_id})).scalar_one())


async def balance(session: AsyncSession, account_id: int) -> int:
    return int((await session.execute(text("SELECT balance_fen FROM accounts WHERE id = :a"),
                                      {"a": account_id})).scalar_one())


async def entries(session: AsyncSession, account_id: int) -> list[Any]:
    return list((await session.execute(text(
        "SELECT kind, amount_fen, balance_after_fen, ref, cycle_start, volume_m3 FROM ledger_entries "
        "WHERE account_id = :a ORDER BY id"), {"a": account_id})).all())
