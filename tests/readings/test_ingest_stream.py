"""The append path of ingest (a text COPY streamed while each reading is validated and
rolled up) and where it hands over to the general path; the open day on latest_readings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import migrate, to_libpq_url, with_database
from backend.readings.models import ReadingQuality
from backend.readings.partitions import ensure_partitions
from backend.readings.service import ReadingIn, ingest_readings
from backend.readings.usage import usage_between
from tests.conftest import RUN_ID, _admin
from tests.readings.factories import make_meter

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=SHANGHAI)
actual, estimated = ReadingQuality.actual, ReadingQuality.estimated


def at(month: int, day: int, hour: int = 0) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=SHANGHAI)


def hourly(meter_id: int, start: datetime, hours: int, total: Decimal, step: str = "0.5",
           quality: ReadingQuality = actual) -> list[ReadingIn]:
    return [ReadingIn(meter_id, start + timedelta(hours=k), total + Decimal(step) * k, quality) for k in range(hours)]


async def ingest(session: AsyncSession, readings: list[ReadingIn], source: str = "test"):  # type: ignore[no-untyped-def]
    return await ingest_readings(session, readings=readings, source=source, now=NOW)


async def rollup(session: AsyncSession, meter_id: int) -> dict[date, Decimal]:
    rows = await session.execute(text("SELECT day, usage_m3 FROM daily_usage WHERE meter_id = :m ORDER BY day"),
                                 {"m": meter_id})
    return {row.day: row.usage_m3 for row in rows}


async def test_the_open_day_is_on_latest_readings_and_earlier_days_are_closed(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, hourly(meter.id, at(11, 1, 1), 60, Decimal(100)))  # 1 Nov 01:00 .. 3 Nov 12:00

    closed = (await session.execute(text("SELECT day FROM daily_usage_closed WHERE meter_id = :m ORDER BY day"),
                                    {"m": meter.id})).scalars().all()
    latest = (await session.execute(text("SELECT * FROM latest_readings WHERE meter_id = :m"), {"m": meter.id})).one()

    assert closed == [date(2026, 11, 1), date(2026, 11, 2)]
    assert (latest.day, latest.read_at, latest.reading_count) == (date(2026, 11, 3), at(11, 3, 12), 12)
    # Day 1: 01:00 .. 24:00 is 24 readings, 23 steps of 0.5; day 2 and day 3 start from the
    # close of the day before.
    assert await rollup(session, meter.id) == {date(2026, 11, 1): Decimal("11.5000"),
                                               date(2026, 11, 2): Decimal("12.0000"),
                                               date(2026, 11, 3): Decimal("6.0000")}


async def test_a_batch_across_a_month_end_lands_in_both_months(session: AsyncSession) -> None:
    meter = await make_meter(session)
    # Both months exist: the COPY into October's partition is refused for November's rows
    # and the batch goes through the parent.
    await ensure_partitions(session, start=at(10, 1), end=at(11, 30), tz=SHANGHAI)
    result = await ingest(session, hourly(meter.id, at(10, 31, 20), 8, Decimal(5)))  # 31 Oct 20:00 .. 1 Nov 03:00

    partitions = (await session.execute(text(
        "SELECT tableoid::regclass::text AS part, count(*) AS n FROM readings WHERE meter_id = :m GROUP BY 1 ORDER BY 1"
    ), {"m": meter.id})).all()

    assert result.inserted == 8
    # Partitions split at midnight; a day is (00:00, 24:00], so 1 Nov 00:00 closes 31 Oct.
    assert [(row.part, row.n) for row in partitions] == [("readings_p202610", 4), ("readings_p202611", 4)]
    assert await rollup(session, meter.id) == {date(2026, 10, 31): Decimal("2.0000"),
                                               date(2026, 11, 1): Decimal("1.5000")}


async def test_a_late_reading_in_a_new_batch_hands_the_batch_to_the_general_path(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, hourly(meter.id, at(11, 2, 1), 24, Decimal(10)))
    # New readings of the 3rd, and one of the 1st that arrived late, then a re-sent one.
    late = [ReadingIn(meter.id, at(11, 1, 12), Decimal("9"))]
    again = [ReadingIn(meter.id, at(11, 2, 5), Decimal("12"))]
    result = await ingest(session, hourly(meter.id, at(11, 3, 1), 3, Decimal("21.5")) + late + again)

    assert (result.inserted, result.duplicates) == (4, 1)
    count = await session.scalar(text("SELECT count(*) FROM readings WHERE meter_id = :m"), {"m": meter.id})
    assert count == 28
    days = await rollup(session, meter.id)
    windows = await usage_between(session, meter_ids=[meter.id], start=at(11, 1), end=at(11, 4))
    assert sum(days.values()) == windows[meter.id]


async def test_re_ingesting_a_batch_writes_nothing(session: AsyncSession) -> None:
    meter = await make_meter(session)
    batch = hourly(meter.id, at(11, 5, 1), 30, Decimal(40))
    await ingest(session, batch)
    before = (await session.execute(text("SELECT * FROM latest_readings WHERE meter_id = :m"), {"m": meter.id})).one()

    result = await ingest(session, batch)

    after = (await session.execute(text("SELECT * FROM latest_readings WHERE meter_id = :m"), {"m": meter.id})).one()
    assert (result.inserted, result.replaced, result.duplicates) == (0, 0, 30)
    assert after == before


@pytest.mark.parametrize("source", ["tab\there", "line\nbreak", "back\\slash\\N", "回车\r和\\t"])
async def test_a_source_is_stored_exactly_as_given(session: AsyncSession, source: str) -> None:
    meter = await make_meter(session)
    await ingest(session, hourly(meter.id, at(11, 6, 1), 2, Decimal(1)), source=source)

    stored = (await session.execute(text("SELECT DISTINCT source FROM readings WHERE meter_id = :m"),
                                    {"m": meter.id})).scalars().all()
    assert stored == [source]


async def test_every_value_round_trips_through_the_text_copy(session: AsyncSession) -> None:
    meter = await make_meter(session)
    odd = ReadingIn(meter.id, at(11, 7, 1), Decimal("1E+2"), actual, flow_rate=Decimal("-0"),
                    pressure=Decimal("0.12345"), battery=Decimal("3.6"), status_bits=0)
    plain = ReadingIn(meter.id, at(11, 7, 2), Decimal("100.00005"))
    await ingest(session, [odd, plain])

    rows = (await session.execute(text(
        "SELECT total_m3, flow_rate, pressure, valve_state, battery, status_bits FROM readings WHERE meter_id = :m "
        "ORDER BY read_at"), {"m": meter.id})).all()
    assert [tuple(row) for row in rows] == [
        (Decimal("100.0000"), Decimal("0.0000"), Decimal("0.1235"), None, Decimal("3.60"), 0),
        (Decimal("100.0001"), None, None, None, None, None),
    ]


async def test_an_actual_reading_clears_the_estimated_flag_with_the_estimates(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, hourly(meter.id, at(11, 8, 1), 2, Decimal(5)))
    await ingest(session, hourly(meter.id, at(11, 9, 1), 2, Decimal(6), quality=estimated))
    flag = text("SELECT estimated FROM latest_readings WHERE meter_id = :m")
    assert await session.scalar(flag, {"m": meter.id}) is True

    await ingest(session, [ReadingIn(meter.id, at(11, 10, 1), Decimal(8))])

    left = await session.scalar(text("SELECT count(*) FROM readings WHERE meter_id = :m AND quality = 'estimated'"),
                                {"m": meter.id})
    assert (left, await session.scalar(flag, {"m": meter.id})) == (0, False)
    days = await rollup(session, meter.id)
    assert date(2026, 11, 9) not in days


async def test_two_batches_in_one_transaction_both_roll_up(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, hourly(meter.id, at(11, 11, 1), 3, Decimal(1)))
    await ingest(session, hourly(meter.id, at(11, 11, 4), 3, Decimal("2.5")))

    assert await rollup(session, meter.id) == {date(2026, 11, 11): Decimal("2.5000")}


# --------------------------------------------------------------------------- migration 0009


@pytest.fixture
def database_at_0008(server_url: str) -> Iterator[str]:
    name = f"shuiwu_m0008_{RUN_ID}"
    _admin(server_url, f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    migrate(url, "0008")
    yield url
    _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migration_0009_moves_each_meters_newest_day_onto_its_latest_reading(database_at_0008: str) -> None:
    connection = await asyncpg.connect(to_libpq_url(database_at_0008))
    try:
        await connection.execute("""
            INSERT INTO areas (id, name, kind, path) VALUES (1, 'a', 'company', '/1/');
            INSERT INTO meters (id, name, code, address, meter_type, kind, area_id, install_date, status)
            VALUES (1, 'm', 'M1', '00000000000001', 'cold_water', 'household', 1, '2025-01-01', 'installed');
            INSERT INTO latest_readings (meter_id, read_at, total_m3, quality, source, received_at)
            VALUES (1, '2026-11-02 10:00+08', 12, 'actual', 'x', now());
            INSERT INTO daily_usage (meter_id, day, first_at, first_total, last_at, last_total, effective_total,
                                     opening_effective, usage_m3, reading_count)
            VALUES (1, '2026-11-01', '2026-11-01 10:00+08', 10, '2026-11-01 20:00+08', 11, 11, 10, 1, 2),
                   (1, '2026-11-02', '2026-11-02 01:00+08', 11.5, '2026-11-02 10:00+08', 12, 12, 11, 1, 2);
        """)
        await asyncio.to_thread(migrate, database_at_0008)

        closed = await connection.fetch("SELECT day FROM daily_usage_closed ORDER BY day")
        latest = await connection.fetchrow("SELECT day, effective_total, usage_m3, estimated FROM latest_readings")
        view = await connection.fetch("SELECT day, last_total, usage_m3 FROM daily_usage ORDER BY day")
    finally:
        await connection.close()

    assert [row["day"] for row in closed] == [date(2026, 11, 1)]
    assert tuple(latest) == (date(2026, 11, 2), Decimal("12.0000"), Decimal("1.0000"), False)
    assert [tuple(row) for row in view] == [(date(2026, 11, 1), Decimal("11.0000"), Decimal("1.0000")),
                                            (date(2026, 11, 2), Decimal("12.0000"), Decimal("1.0000"))]


# --------------------------------------------------------------------------- found in review


async def test_a_session_datestyle_does_not_move_the_first_reading_of_a_closed_day(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await session.execute(text("SET LOCAL TimeZone = 'Asia/Shanghai'"))
    await ingest(session, hourly(meter.id, at(11, 12, 8), 2, Decimal(1)))
    # With DateStyle SQL, timestamptz text is '12/11/2026 08:00:00 CST', and COPY reads CST
    # as US Central time.
    await session.execute(text("SET LOCAL DateStyle = 'SQL, DMY'"))
    await ingest(session, [ReadingIn(meter.id, at(11, 13, 8), Decimal(3))])

    first_at = await session.scalar(text("SELECT first_at FROM daily_usage_closed WHERE meter_id = :m"),
                                    {"m": meter.id})
    assert first_at == at(11, 12, 8)


BERLIN = ZoneInfo("Europe/Berlin")


async def test_a_reading_in_the_repeated_hour_of_a_dst_night_is_rolled_up_on_the_general_path(
    session: AsyncSession,
) -> None:
    meter = await make_meter(session)
    noon_24, noon_25 = datetime(2026, 10, 24, 12, tzinfo=BERLIN), datetime(2026, 10, 25, 12, tzinfo=BERLIN)
    await ingest_readings(session, readings=[ReadingIn(meter.id, noon_24, Decimal(10)),
                                             ReadingIn(meter.id, noon_25, Decimal(14))],
                          source="test", now=NOW, tz=BERLIN)
    first_0230 = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN)  # fold 0: the first of two 02:30s
    result = await ingest_readings(session, readings=[ReadingIn(meter.id, first_0230, Decimal(12)),
                                                      ReadingIn(meter.id, noon_25, Decimal(14))],
                                   source="test", now=NOW, tz=BERLIN)

    assert (result.inserted, result.duplicates) == (1, 1)
    count = await session.scalar(text(
        "SELECT reading_count FROM daily_usage WHERE meter_id = :m AND day = '2026-10-25'"), {"m": meter.id})
    assert count == 2


async def test_one_instant_given_in_two_zones_is_one_reading(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, [ReadingIn(meter.id, at(11, 14, 1), Decimal(1))])
    instant = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN)
    late = [ReadingIn(meter.id, instant, Decimal("0.5")), ReadingIn(meter.id, instant.astimezone(UTC), Decimal("0.5"))]

    result = await ingest(session, late)

    assert (result.inserted, result.duplicates) == (1, 1)


class Total(Decimal):
    pass


@pytest.mark.parametrize(("total", "stored"), [(Total("7.5"), Decimal("7.5000")), (Decimal("1E+12"), None),
                                              (Decimal("999999999999.99999"), None)])
async def test_totals_beyond_the_register_column_are_invalid_and_a_decimal_subclass_is_a_decimal(
    session: AsyncSession, total: Decimal, stored: Decimal | None,
) -> None:
    meter = await make_meter(session)
    result = await ingest(session, [ReadingIn(meter.id, at(11, 15, 1), total)])

    value = await session.scalar(text("SELECT total_m3 FROM readings WHERE meter_id = :m"), {"m": meter.id})
    assert value == stored
    assert [rejection.code for rejection in result.rejected] == ([] if stored else ["INVALID_TOTAL"])


async def test_status_bits_given_as_a_bool_are_stored_as_a_number(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, [ReadingIn(meter.id, at(11, 16, 1), Decimal(1), status_bits=True)])

    assert await session.scalar(text("SELECT status_bits FROM readings WHERE meter_id = :m"), {"m": meter.id}) == 1


async def test_a_quality_outside_the_enum_is_refused_by_its_check_not_by_the_copy_line(session: AsyncSession) -> None:
    meter = await make_meter(session)
    bogus = ReadingIn(meter.id, at(11, 17, 1), Decimal(1), quality="good\tenough")  # type: ignore[arg-type]

    with pytest.raises(asyncpg.CheckViolationError):
        await ingest(session, [bogus])


async def test_ingest_needs_an_aware_now(session: AsyncSession) -> None:
    with pytest.raises(ValueError, match="aware"):
        await ingest_readings(session, readings=[], source="test", now=datetime(2026, 11, 25, 12))


@pytest.mark.parametrize("rollup_kept", [True, False], ids=["closed days kept", "no rollup at all"])
async def test_a_latest_reading_without_its_open_day_makes_ingest_rebuild_the_meters_days(
    session: AsyncSession, rollup_kept: bool,
) -> None:
    meter = await make_meter(session)
    await ingest(session, hourly(meter.id, at(11, 18, 1), 30, Decimal(100)))  # to 19 Nov 06:00
    # Written around ingest (by hand, or by a test): the open day is gone.
    await session.execute(text("UPDATE latest_readings SET day = NULL WHERE meter_id = :m"), {"m": meter.id})
    if not rollup_kept:
        await session.execute(text("DELETE FROM daily_usage_closed WHERE meter_id = :m"), {"m": meter.id})

    await ingest(session, hourly(meter.id, at(11, 19, 7), 3, Decimal("114.5")))

    days = await rollup(session, meter.id)
    window = await usage_between(session, meter_ids=[meter.id], start=at(11, 18), end=at(11, 20))
    assert list(days) == [date(2026, 11, 18), date(2026, 11, 19)]
    assert sum(days.values()) == window[meter.id] == Decimal("15.5000")  # 100 at 18 Nov 01:00 -> 115.5


@pytest.mark.parametrize("field", ["flow_rate", "pressure", "battery"])
async def test_a_measurement_that_is_no_number_is_refused_by_its_column_and_nothing_is_written(
    session: AsyncSession, field: str,
) -> None:
    meter = await make_meter(session)
    bad = ReadingIn(meter.id, at(11, 21, 1), Decimal(1), **{field: "1\t2"})  # type: ignore[arg-type]

    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await ingest(session, [ReadingIn(meter.id, at(11, 21, 0), Decimal(1)), bad])
