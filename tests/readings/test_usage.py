"""Usage: the daily rollup maintained by ingest, and ``usage_between`` on raw readings.

The rule both follow: register growth × multiplier, a drop of more than half the
register's range is a rollover, any other drop is reverse flow (no usage, no negative),
a replacement is two meters' readings at the swap, and a reading at midnight closes the
day before.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import AreaKind, MeterStatus, MeterType
from backend.archives.service import MeterChanges, assign_meter, create_area, create_household, create_meter, replace_meter
from backend.readings.models import ReadingQuality
from backend.readings.service import ReadingIn, after_readings_changed, ingest_readings
from backend.readings.usage import usage_between, usage_by_interval
from tests.factories import unique
from tests.readings.factories import make_meter

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=SHANGHAI)


def at(day: int, hour: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=SHANGHAI)


def reading(meter_id: int, read_at: datetime, total: str | Decimal,
            quality: ReadingQuality = ReadingQuality.actual) -> ReadingIn:
    return ReadingIn(meter_id=meter_id, read_at=read_at, total_m3=Decimal(total), quality=quality)


async def ingest(session: AsyncSession, readings: list[ReadingIn]) -> None:
    result = await ingest_readings(session, readings=readings, source="test", now=NOW)
    assert result.rejected == []


async def daily(session: AsyncSession, meter_id: int) -> dict[date, tuple[Decimal, int, bool, bool]]:
    rows = await session.execute(text(
        "SELECT day, usage_m3, reading_count, rollover, reverse_flow FROM daily_usage WHERE meter_id = :m ORDER BY day"
    ), {"m": meter_id})
    return {row.day: (row.usage_m3, row.reading_count, row.rollover, row.reverse_flow) for row in rows}


def usages(rollup: dict[date, tuple[Decimal, int, bool, bool]]) -> dict[date, Decimal]:
    return {day: values[0] for day, values in rollup.items()}


async def test_each_day_holds_the_register_growth_since_the_day_before(session: AsyncSession) -> None:
    meter = await make_meter(session)

    await ingest(session, [reading(meter.id, at(1, 8), "10"), reading(meter.id, at(1, 20), "10.5"),
                           reading(meter.id, at(2, 9), "11.25"), reading(meter.id, at(3, 9), "11.25")])

    assert await daily(session, meter.id) == {
        date(2026, 11, 1): (Decimal("0.5000"), 2, False, False),
        date(2026, 11, 2): (Decimal("0.7500"), 1, False, False),
        date(2026, 11, 3): (Decimal("0.0000"), 1, False, False),
    }


async def test_a_reading_at_midnight_closes_the_day_before(session: AsyncSession) -> None:
    meter = await make_meter(session)

    await ingest(session, [reading(meter.id, at(1, 12), "1"), reading(meter.id, at(2, 0), "3"),
                           reading(meter.id, at(2, 12), "4")])

    assert usages(await daily(session, meter.id)) == {date(2026, 11, 1): Decimal("2.0000"),
                                                      date(2026, 11, 2): Decimal("1.0000")}
    month = await usage_between(session, meter_ids=[meter.id], start=at(1), end=at(2))
    assert month == {meter.id: Decimal("2.0000")}


async def test_out_of_order_batches_give_the_same_rollup_as_in_order(session: AsyncSession) -> None:
    in_order, shuffled = await make_meter(session), await make_meter(session)
    totals = [("1", 1), ("2.5", 2), ("2.5", 3), ("7", 4), ("9", 5)]

    await ingest(session, [reading(in_order.id, at(day, 10), total) for total, day in totals])
    for total, day in (totals[3], totals[0], totals[4], totals[2], totals[1]):
        await ingest(session, [reading(shuffled.id, at(day, 10), total)])

    assert usages(await daily(session, shuffled.id)) == usages(await daily(session, in_order.id))
    assert usages(await daily(session, in_order.id))[date(2026, 11, 4)] == Decimal("4.5000")


async def test_a_register_rollover_counts_the_wrap_not_a_negative(session: AsyncSession) -> None:
    meter = await make_meter(session, register_digits=4)  # wraps at 10 000 m³

    await ingest(session, [reading(meter.id, at(1, 10), "9990"), reading(meter.id, at(1, 22), "9995"),
                           reading(meter.id, at(2, 10), "5"), reading(meter.id, at(3, 10), "12")])

    rollup = await daily(session, meter.id)
    assert usages(rollup) == {date(2026, 11, 1): Decimal("5.0000"), date(2026, 11, 2): Decimal("10.0000"),
                              date(2026, 11, 3): Decimal("7.0000")}
    assert rollup[date(2026, 11, 2)][2] is True  # the rollover flag
    assert await usage_between(session, meter_ids=[meter.id], start=at(1), end=at(4)) == {meter.id: Decimal("22.0000")}


async def test_reverse_flow_is_flagged_and_never_negative(session: AsyncSession) -> None:
    meter = await make_meter(session)

    await ingest(session, [reading(meter.id, at(1, 10), "100"), reading(meter.id, at(2, 10), "99"),
                           reading(meter.id, at(3, 10), "101")])

    rollup = await daily(session, meter.id)
    assert usages(rollup) == {date(2026, 11, 1): Decimal("0.0000"), date(2026, 11, 2): Decimal("0.0000"),
                              date(2026, 11, 3): Decimal("1.0000")}
    assert rollup[date(2026, 11, 2)][3] is True  # the reverse-flow flag
    assert await usage_between(session, meter_ids=[meter.id], start=at(1), end=at(4)) == {meter.id: Decimal("1.0000")}


async def test_the_multiplier_scales_usage(session: AsyncSession) -> None:
    meter = await make_meter(session, multiplier=Decimal(10))

    await ingest(session, [reading(meter.id, at(1, 10), "1.5"), reading(meter.id, at(2, 10), "2")])

    assert usages(await daily(session, meter.id))[date(2026, 11, 2)] == Decimal("5.0000")
    assert await usage_between(session, meter_ids=[meter.id], start=at(1), end=at(3)) == {meter.id: Decimal("5.0000")}


async def test_the_start_reading_is_the_last_before_the_window_else_the_first_inside(session: AsyncSession) -> None:
    before, inside = await make_meter(session), await make_meter(session)
    await ingest(session, [reading(before.id, at(1, 10), "1"), reading(before.id, at(3, 10), "4"),
                           reading(inside.id, at(2, 10), "2"), reading(inside.id, at(3, 10), "4")])

    found = await usage_between(session, meter_ids=[before.id, inside.id], start=at(2), end=at(4))

    # before: 1 → 4 (its start reading precedes the window); inside: 2 → 4.
    assert found == {before.id: Decimal("3.0000"), inside.id: Decimal("2.0000")}


async def test_a_correction_re_chains_the_days_after_it(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, [reading(meter.id, at(day, 10), str(day)) for day in (1, 2, 3, 4)])

    await session.execute(text("UPDATE readings SET total_m3 = 2.5 WHERE meter_id = :m AND read_at = :t"),
                          {"m": meter.id, "t": at(2, 10)})
    await after_readings_changed(session, changes=[(meter.id, at(2, 10))], now=NOW)

    assert usages(await daily(session, meter.id)) == {
        date(2026, 11, 1): Decimal("0.0000"), date(2026, 11, 2): Decimal("1.5000"),
        date(2026, 11, 3): Decimal("0.5000"), date(2026, 11, 4): Decimal("1.0000"),
    }
    latest = await session.execute(text("SELECT total_m3 FROM latest_readings WHERE meter_id = :m"), {"m": meter.id})
    assert latest.scalar_one() == Decimal("4.0000")


async def test_a_household_s_usage_spans_a_meter_replacement(session: AsyncSession) -> None:
    area = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    household = await create_household(session, account_no=unique("H"), name="李娜", area_id=area.id)
    old, new = await make_meter(session, area_id=area.id), await make_meter(session, area_id=area.id)
    await assign_meter(session, meter_id=old.id, household_id=household.id, valid_from=at(1), start_reading=Decimal(100))
    await ingest(session, [reading(old.id, at(1, 10), "100"), reading(old.id, at(3, 10), "104")])

    await replace_meter(session, old_meter_id=old.id, new_meter_id=new.id, replaced_at=at(3, 12),
                        old_final_reading=Decimal("105"), new_initial_reading=Decimal("0.5"), replaced_by="test")
    await ingest(session, [reading(new.id, at(4, 10), "2.5")])

    found = await usage_between(session, household_ids=[household.id], start=at(1), end=at(5))
    assert found == {household.id: Decimal("7.0000")}  # 100 → 105 on the old meter, 0.5 → 2.5 on the new
    rolled = sum(usages(await daily(session, old.id)).values()) + sum(usages(await daily(session, new.id)).values())
    assert rolled == Decimal("7.0000")


async def test_hourly_usage_adds_up_to_the_day(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, [reading(meter.id, at(1, hour), str(hour * Decimal("0.1"))) for hour in range(24)])

    hours = await usage_by_interval(session, meter_ids=[meter.id], start=at(1), end=at(2), interval="hour",
                                    tz=SHANGHAI)

    assert len(hours) == 24
    assert hours[5] == (at(1, 5), meter.id, Decimal("0.1000"))
    assert sum(usage for _, _, usage in hours) == Decimal("2.3000")


async def test_monthly_sums_of_the_rollup_equal_usage_between_on_raw_readings(session: AsyncSession) -> None:
    """Random hourly-ish readings over two months, in shuffled batches, with a rollover."""
    rng = random.Random(7)
    plain, small = await make_meter(session), await make_meter(session, register_digits=3)
    readings: list[ReadingIn] = []
    for meter, total in ((plain, Decimal("500")), (small, Decimal("960"))):
        instant = datetime(2026, 9, 30, 20, tzinfo=SHANGHAI)
        while instant < datetime(2026, 11, 20, tzinfo=SHANGHAI):
            total += Decimal(rng.randint(0, 400)) / 1000
            register = total % 1000 if meter is small else total
            readings.append(reading(meter.id, instant, register))
            instant += timedelta(minutes=rng.choice([30, 60, 60, 120, 180, 600]))
    rng.shuffle(readings)
    for start in range(0, len(readings), 300):
        await ingest(session, readings[start:start + 300])

    for first, following in ((date(2026, 10, 1), date(2026, 11, 1)), (date(2026, 11, 1), date(2026, 11, 20))):
        start = datetime(first.year, first.month, first.day, tzinfo=SHANGHAI)
        end = datetime(following.year, following.month, following.day, tzinfo=SHANGHAI)
        raw = await usage_between(session, meter_ids=[plain.id, small.id], start=start, end=end)
        for meter in (plain, small):
            rolled = (await session.execute(text(
                "SELECT coalesce(sum(usage_m3), 0) FROM daily_usage WHERE meter_id = :m AND day >= :a AND day < :b"
            ), {"m": meter.id, "a": first, "b": following})).scalar_one()
            assert rolled == raw[meter.id], (meter.id, first)
            assert raw[meter.id] > 0


async def test_a_meter_installed_mid_window_counts_from_its_first_reading(session: AsyncSession) -> None:
    area = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    code = unique("R")
    meter = await create_meter(session, fields=MeterChanges(
        name=f"表{code}", code=code, address=str(random.randrange(10**13, 10**14)), meter_type=MeterType.cold_water,
        area_id=area.id, install_date=date(2026, 11, 2), initial_reading=Decimal(3), status=MeterStatus.installed,
    ))
    await ingest(session, [reading(meter.id, at(2, 10), "3"), reading(meter.id, at(3, 10), "4.5")])

    assert await usage_between(session, meter_ids=[meter.id], start=at(1), end=at(4)) == {meter.id: Decimal("1.5000")}
