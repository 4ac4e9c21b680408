"""estimate_readings / estimateReadings: silent days filled from the meter's average."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.archives.models import AreaKind, MeterStatus, MeterType
from backend.archives.service import MeterChanges, MeterModelFields, create_area, create_meter, save_meter_model
from backend.db import session_factory
from backend.errors import DomainError, ErrorCode, NotFound
from backend.graphql.relay import encode_id
from backend.readings import entry
from backend.readings.entry import estimate_readings
from backend.readings.models import ReadingQuality
from backend.readings.service import ReadingIn, ingest_readings
from tests.factories import unique
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World
from tests.readings.factories import make_meter

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 15, 12, 0, tzinfo=SHANGHAI)


def at(day: int, hour: int = 8) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=SHANGHAI)


async def ingest(session: AsyncSession, readings: list[tuple[int, datetime, str]], *, now: datetime = NOW) -> None:
    await ingest_readings(session, readings=[ReadingIn(m, t, Decimal(v)) for m, t, v in readings], source="test",
                          now=now, tz=SHANGHAI)


async def two_a_day_for_ten_days(session: AsyncSession, meter_id: int, *, start: int = 0) -> None:
    """Days 1–10 of November, 2 m³ a day (the first day from its 01:00 reading; a midnight
    reading would close October 31st)."""
    await ingest(session, [(meter_id, at(1, 1), str(start))] + [(meter_id, at(d), str(start + 2 * d)) for d in range(1, 11)])


async def estimate(session: AsyncSession, first: int, last: int, **scope: Any):  # type: ignore[no-untyped-def]
    scope.setdefault("scope_patterns", None)
    return await estimate_readings(session, start=date(2026, 11, first), end=date(2026, 11, last), now=scope.pop("now", NOW),
                                   tz=SHANGHAI, **scope)


async def stored(session: AsyncSession, meter_id: int, quality: str | None = None) -> list[tuple[datetime, Decimal, str]]:
    rows = await session.execute(text(
        "SELECT read_at, total_m3, source FROM readings WHERE meter_id = :m"
        " AND (CAST(:q AS text) IS NULL OR quality = CAST(:q AS text)) ORDER BY read_at"
    ), {"m": meter_id, "q": quality})
    return [(row.read_at, row.total_m3, row.source) for row in rows]


def end_of(day: int) -> datetime:
    return datetime(2026, 11, day, 23, 59, 59, tzinfo=SHANGHAI)


async def test_silent_days_are_filled_with_the_average_daily_use_as_estimated_readings(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await two_a_day_for_ten_days(session, meter.id)

    result = await estimate(session, 11, 14, meter_ids=[meter.id])

    assert (result.estimated, result.skipped) == (4, 0)
    assert await stored(session, meter.id, "estimated") == [
        (end_of(11), Decimal("22.0000"), "estimate"), (end_of(12), Decimal("24.0000"), "estimate"),
        (end_of(13), Decimal("26.0000"), "estimate"), (end_of(14), Decimal("28.0000"), "estimate"),
    ]
    usage = await session.execute(text("SELECT usage_m3 FROM daily_usage WHERE meter_id = :m AND day = '2026-11-12'"),
                                  {"m": meter.id})
    assert usage.scalar_one() == Decimal(2)


async def test_re_running_over_the_same_days_writes_nothing_new(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await two_a_day_for_ten_days(session, meter.id)
    await estimate(session, 11, 14, meter_ids=[meter.id])
    before = await stored(session, meter.id)

    again = await estimate(session, 11, 14, meter_ids=[meter.id])

    assert (again.estimated, again.skipped) == (0, 0)
    assert await stored(session, meter.id) == before


async def test_a_later_actual_reading_supersedes_the_estimates_and_bounds_the_gap(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await two_a_day_for_ten_days(session, meter.id)
    await estimate(session, 11, 14, meter_ids=[meter.id])

    await ingest(session, [(meter.id, at(15, 10), "29")])

    assert await stored(session, meter.id, "estimated") == []
    days = await session.execute(text("SELECT day FROM daily_usage WHERE meter_id = :m AND day > '2026-11-10'"),
                                 {"m": meter.id})
    assert [row.day for row in days] == [date(2026, 11, 15)]
    # The gap now ends at a real reading: no estimate could fit it, so none is made.
    again = await estimate(session, 11, 14, meter_ids=[meter.id], now=datetime(2026, 11, 16, 12, tzinfo=SHANGHAI))
    assert (again.estimated, again.skipped) == (0, 4)


async def test_a_meter_read_every_few_days_is_estimated_at_its_use_per_day(session: AsyncSession) -> None:
    meter = await make_meter(session)
    # Read by hand every ten days at 1 m³ a day: each daily_usage row holds ten days of use.
    await ingest(session, [(meter.id, datetime(2026, 10, day, 8, tzinfo=SHANGHAI), str(day - 1)) for day in (1, 11, 21, 31)]
                 + [(meter.id, at(10), "40")])

    result = await estimate(session, 11, 12, meter_ids=[meter.id])

    assert result.estimated == 2
    assert [total for _, total, _ in await stored(session, meter.id, "estimated")] == [Decimal("41.0000"),
                                                                                       Decimal("42.0000")]


async def test_the_first_day_of_a_new_meter_does_not_drag_its_estimates_down(session: AsyncSession) -> None:
    meter = await make_meter(session)
    # Fitted late on the 5th (one reading that day), then 2 m³ a day, read at 23:00.
    await ingest(session, [(meter.id, at(d, 23), str(2 * (d - 5))) for d in range(5, 11)])

    await estimate(session, 11, 11, meter_ids=[meter.id])

    assert [total for _, total, _ in await stored(session, meter.id, "estimated")] == [Decimal("12.0000")]


async def test_too_many_meter_days_at_once_are_refused(session: AsyncSession, monkeypatch: pytest.MonkeyPatch) -> None:
    meters = [await make_meter(session) for _ in range(3)]
    monkeypatch.setattr(entry, "MAX_ESTIMATION_METER_DAYS", 5)

    with pytest.raises(DomainError) as too_many:
        await estimate(session, 11, 12, meter_ids=[m.id for m in meters])

    assert (too_many.value.code, too_many.value.field) == (ErrorCode.RANGE_TOO_LONG, "to")


async def test_estimates_are_in_register_units_and_wrap_past_the_register(session: AsyncSession) -> None:
    area = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    model = await save_meter_model(session, fields=MeterModelFields(
        vendor=unique("厂家"), name=unique("型号"), caliber=50, register_digits=4, multiplier=Decimal(10)))
    code = unique("W")
    meter = await create_meter(session, fields=MeterChanges(
        name=code, code=code, address=f"{abs(hash(code)) % 10**14:014d}", meter_type=MeterType.cold_water,
        area_id=area.id, model_id=model.id, install_date=date(2025, 1, 1), initial_reading=Decimal(0),
        status=MeterStatus.installed,
    ))
    # One register unit a day (10 m³ of usage with the multiplier), ending at 9999.
    await ingest(session, [(meter.id, at(1, 1), "9994")] + [(meter.id, at(d), str(9994 + d)) for d in range(1, 6)])

    result = await estimate(session, 6, 7, meter_ids=[meter.id])

    assert result.estimated == 2
    assert [total for _, total, _ in await stored(session, meter.id, "estimated")] == [Decimal("0.0000"),
                                                                                       Decimal("1.0000")]


async def test_meters_without_earlier_data_are_skipped_and_today_is_not_estimated(session: AsyncSession) -> None:
    silent = await make_meter(session)
    meter = await make_meter(session)
    await two_a_day_for_ten_days(session, meter.id)

    result = await estimate(session, 11, 30, meter_ids=[silent.id, meter.id])

    # 11–14 for the meter with data (the 15th is today); the silent meter has no base.
    assert (result.estimated, result.skipped) == (4, 4)
    assert await stored(session, silent.id) == []


async def test_an_area_estimates_its_installed_meters_only(session: AsyncSession) -> None:
    area = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    codes = [unique("A"), unique("A")]
    installed, in_stock = [await create_meter(session, fields=MeterChanges(
        name=code, code=code, address=f"{abs(hash(code)) % 10**14:014d}", meter_type=MeterType.cold_water,
        area_id=area.id, install_date=date(2025, 1, 1), initial_reading=Decimal(0), status=status,
    )) for code, status in zip(codes, (MeterStatus.installed, MeterStatus.in_stock), strict=True)]
    for meter in (installed, in_stock):
        await two_a_day_for_ten_days(session, meter.id)

    result = await estimate(session, 11, 11, area_id=area.id)

    assert result.estimated == 1
    assert len(await stored(session, installed.id, "estimated")) == 1
    assert await stored(session, in_stock.id, "estimated") == []


async def test_out_of_scope_meters_and_long_ranges_are_refused(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await two_a_day_for_ten_days(session, meter.id)

    with pytest.raises(NotFound) as hidden:
        await estimate(session, 11, 12, meter_ids=[meter.id], scope_patterns=["/999999999/%"])
    with pytest.raises(DomainError) as too_long:
        await estimate_readings(session, meter_ids=[meter.id], start=date(2026, 1, 1), end=date(2026, 11, 1), now=NOW,
                                tz=SHANGHAI, scope_patterns=None)
    with pytest.raises(DomainError) as nothing_chosen:
        await estimate(session, 11, 12)

    assert hidden.value.field == "meterIds"
    assert (too_long.value.code, too_long.value.field) == (ErrorCode.RANGE_TOO_LONG, "to")
    assert nothing_chosen.value.code == ErrorCode.REQUIRED
    assert await stored(session, meter.id, ReadingQuality.estimated) == []


ESTIMATE = """
mutation Estimate($input: EstimateReadingsInput!) {
  estimateReadings(input: $input) { estimated skipped errors { field code message } }
}
"""


async def test_estimate_readings_over_graphql_is_audited(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine,
) -> None:
    code = unique("E")
    async with session_factory(committed_engine)() as session, session.begin():
        meter = await create_meter(session, fields=MeterChanges(
            name=code, code=code, address=f"{abs(hash(code)) % 10**14:014d}", meter_type=MeterType.cold_water,
            area_id=world.tree.east_community.id, install_date=date(2025, 1, 1), initial_reading=Decimal(0),
            status=MeterStatus.installed,
        ))
        assert meter.id is not None
        readings = [(meter.id, datetime(2026, 1, 1, 1, tzinfo=SHANGHAI), "0")]
        readings += [(meter.id, datetime(2026, 1, d, 8, tzinfo=SHANGHAI), str(d)) for d in range(1, 6)]
        await ingest(session, readings)
    token = await client.login(world.admin.username, world.admin.password)

    result = await client.execute(ESTIMATE, {"input": {"meterIds": [encode_id("Meter", meter.id)], "from": "2026-01-06",
                                                       "to": "2026-01-07"}}, token=token)
    hidden = await client.execute(ESTIMATE, {"input": {"areaId": encode_id("Area", world.tree.west.id),
                                                       "from": "2026-01-06", "to": "2026-01-07"}},
                                  token=await client.login(world.east_operator.username, world.east_operator.password))

    assert result["data"]["estimateReadings"] == {"estimated": 2, "skipped": 0, "errors": []}
    assert hidden["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    async with session_factory(committed_engine)() as session:
        audit = (await session.execute(text(
            "SELECT summary, success FROM audit_log WHERE action = 'estimateReadings' AND success ORDER BY id DESC LIMIT 1"
        ))).one()
    assert audit.success is True and "估算 2 条" in audit.summary
