"""ingest_readings: validation, idempotency, quality precedence, partitions, latest readings."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.events.service import load_event, payload_of
from backend.readings.errors import RejectionCode
from backend.readings.events import ReadingsIngested
from backend.readings.models import ReadingQuality
from backend.readings.partitions import ensure_partitions
from backend.readings.service import ReadingIn, ingest_readings, latest_readings
from tests.readings.factories import make_meter

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=SHANGHAI)
actual, manual, estimated = ReadingQuality.actual, ReadingQuality.manual, ReadingQuality.estimated


def at(day: int, hour: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=SHANGHAI)


def reading(meter_id: int, read_at: datetime, total: str, quality: ReadingQuality = actual) -> ReadingIn:
    return ReadingIn(meter_id=meter_id, read_at=read_at, total_m3=Decimal(total), quality=quality)


async def ingest(session: AsyncSession, readings: list[ReadingIn]):  # type: ignore[no-untyped-def]
    return await ingest_readings(session, readings=readings, source="test", now=NOW)


async def stored(session: AsyncSession, meter_id: int) -> list[tuple[datetime, Decimal, str]]:
    rows = await session.execute(
        text("SELECT read_at, total_m3, quality FROM readings WHERE meter_id = :m ORDER BY read_at"), {"m": meter_id}
    )
    return [(row.read_at, row.total_m3, row.quality) for row in rows]


async def events(session: AsyncSession) -> list[ReadingsIngested]:
    ids = (await session.execute(text("SELECT id FROM domain_events WHERE kind = 'readings.ingested' ORDER BY id")))
    loaded = [await load_event(session, event_id) for event_id in ids.scalars().all()]
    return [payload_of(event, ReadingsIngested) for event in loaded if event is not None]


async def test_new_readings_are_inserted_and_one_event_names_the_meters(session: AsyncSession) -> None:
    one, two = await make_meter(session), await make_meter(session)
    before = len(await events(session))

    result = await ingest(session, [reading(one.id, at(1), "1.5"), reading(two.id, at(1), "7"),
                                    reading(one.id, at(2), "2.25")])

    assert (result.inserted, result.replaced, result.duplicates, result.rejected) == (3, 0, 0, [])
    assert [(r[1], r[2]) for r in await stored(session, one.id)] == [(Decimal("1.5000"), "actual"),
                                                                      (Decimal("2.2500"), "actual")]
    emitted = (await events(session))[before:]
    assert emitted == [ReadingsIngested(result.batch_id, tuple(sorted([one.id, two.id])), at(1), at(2))]


async def test_the_event_spans_the_earliest_and_latest_reading_the_batch_wrote_not_those_it_skipped(
    session: AsyncSession,
) -> None:
    one, two = await make_meter(session), await make_meter(session)
    await ingest(session, [reading(one.id, at(10), "10")])
    before = len(await events(session))

    # Appended, out of order across meters: the earliest is two's, the latest one's.
    appended = await ingest(session, [reading(one.id, at(12, 6), "12"), reading(two.id, at(11, 3), "1"),
                                      reading(one.id, at(14), "14"), reading(two.id, at(12), "2")])
    # A late batch (general path): day 10 is a duplicate and day 30 is in the future
    # (rejected), so neither bounds what was written.
    late = await ingest(session, [reading(one.id, at(10), "10"), reading(one.id, at(11), "11"),
                                  reading(one.id, at(13), "13"), reading(one.id, at(30), "30")])

    assert (appended.inserted, late.inserted, late.duplicates, len(late.rejected)) == (4, 2, 1, 1)
    assert (await events(session))[before:] == [
        ReadingsIngested(appended.batch_id, tuple(sorted([one.id, two.id])), at(11, 3), at(14)),
        ReadingsIngested(late.batch_id, (one.id,), at(11), at(13)),
    ]


async def test_the_event_of_a_batch_in_another_time_zone_carries_the_same_instants(session: AsyncSession) -> None:
    meter = await make_meter(session)
    before = len(await events(session))
    utc = ZoneInfo("UTC")

    await ingest(session, [reading(meter.id, at(5).astimezone(utc), "5"), reading(meter.id, at(6).astimezone(utc), "6")])

    (emitted,) = (await events(session))[before:]
    assert (emitted.first_read_at, emitted.last_read_at) == (at(5), at(6))


async def test_duplicates_in_a_batch_keep_the_best_quality(session: AsyncSession) -> None:
    meter = await make_meter(session)

    result = await ingest(session, [reading(meter.id, at(1), "1", estimated), reading(meter.id, at(1), "2", actual),
                                    reading(meter.id, at(1), "3", manual), reading(meter.id, at(1), "4", actual)])

    assert (result.inserted, result.replaced, result.duplicates) == (1, 0, 3)
    assert await stored(session, meter.id) == [(at(1), Decimal("2.0000"), "actual")]


async def test_reingesting_the_same_readings_writes_nothing_and_emits_nothing(session: AsyncSession) -> None:
    meter = await make_meter(session)
    batch = [reading(meter.id, at(day), str(day)) for day in range(1, 6)]
    await ingest(session, batch)
    before = len(await events(session))

    again = await ingest(session, batch)

    assert (again.inserted, again.replaced, again.duplicates, again.rejected) == (0, 0, 5, [])
    assert len(await stored(session, meter.id)) == 5
    assert len(await events(session)) == before


async def test_quality_precedence_against_stored_readings(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, [reading(meter.id, at(1), "1", manual), reading(meter.id, at(2), "2", actual),
                           reading(meter.id, at(3), "3", manual), reading(meter.id, at(4), "4", estimated)])

    result = await ingest(session, [
        reading(meter.id, at(1), "1.1", estimated),   # worse never replaces
        reading(meter.id, at(2), "2.1", actual),      # equal is a duplicate
        reading(meter.id, at(3), "3.1", actual),      # actual replaces manual
        reading(meter.id, at(4), "4.1", manual),      # manual replaces estimated
    ])

    assert (result.inserted, result.replaced, result.duplicates) == (0, 2, 2)
    assert await stored(session, meter.id) == [
        (at(1), Decimal("1.0000"), "manual"), (at(2), Decimal("2.0000"), "actual"),
        (at(3), Decimal("3.1000"), "actual"), (at(4), Decimal("4.1000"), "manual"),
    ]


async def test_an_actual_reading_supersedes_the_estimates_before_it(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, [reading(meter.id, at(1), "1", actual), reading(meter.id, at(2), "2", estimated),
                           reading(meter.id, at(3), "3", estimated)])

    await ingest(session, [reading(meter.id, at(4), "3.5", actual)])

    assert await stored(session, meter.id) == [
        (at(1), Decimal("1.0000"), "actual"), (at(4), Decimal("3.5000"), "actual"),
    ]


async def test_actual_replaces_estimated(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, [reading(meter.id, at(1), "1", estimated)])

    result = await ingest(session, [reading(meter.id, at(1), "1.2", actual)])

    assert (result.inserted, result.replaced, result.duplicates) == (0, 1, 0)
    assert await stored(session, meter.id) == [(at(1), Decimal("1.2000"), "actual")]


async def test_a_conflicting_row_makes_the_fallback_count_exactly(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, [reading(meter.id, at(3), "3")])
    before = len(await events(session))

    # The fast-path COPY fails on day 3; the merge inserts the rest and counts day 3 once.
    result = await ingest(session, [reading(meter.id, at(day), str(day)) for day in range(1, 6)])

    assert (result.inserted, result.replaced, result.duplicates) == (4, 0, 1)
    assert [r[0] for r in await stored(session, meter.id)] == [at(day) for day in range(1, 6)]
    # The event spans what was written: day 3 was there already, but it lies inside.
    assert (await events(session))[before:] == [ReadingsIngested(result.batch_id, (meter.id,), at(1), at(5))]


async def test_rejections_carry_reasons_and_store_nothing(session: AsyncSession) -> None:
    meter = await make_meter(session, install_date=date(2026, 11, 10))
    batch = [
        reading(meter.id, NOW + timedelta(minutes=10), "1"),              # future beyond skew
        reading(meter.id, at(9, 23), "1"),                                # before the install day
        reading(meter.id + 10_000_000, at(12), "1"),                      # unknown meter
        reading(meter.id, at(12), "-1"),                                  # negative total
        reading(meter.id, at(12, 1), "NaN"),                              # not finite
        ReadingIn(meter_id=meter.id, read_at=datetime(2026, 11, 12), total_m3=Decimal(1)),  # naive
        reading(meter.id, NOW + timedelta(minutes=4), "5"),               # inside the skew: fine
        reading(meter.id, at(10), "2"),                                   # the install day itself: fine
    ]

    result = await ingest(session, batch)

    assert [(r.index, r.code) for r in result.rejected] == [
        (0, RejectionCode.READ_AT_IN_FUTURE), (1, RejectionCode.READ_BEFORE_INSTALL),
        (2, RejectionCode.UNKNOWN_METER), (3, RejectionCode.INVALID_TOTAL), (4, RejectionCode.INVALID_TOTAL),
        (5, RejectionCode.NAIVE_DATETIME),
    ]
    assert all(r.message and r.message_en for r in result.rejected)
    assert result.inserted == 2
    assert [r[1] for r in await stored(session, meter.id)] == [Decimal("2.0000"), Decimal("5.0000")]


async def test_a_batch_for_a_new_month_creates_and_attaches_its_partition(session: AsyncSession) -> None:
    meter = await make_meter(session, install_date=date(2020, 1, 1))
    # 2022-03-01 00:30 in Shanghai is still February in UTC: the utility's month decides.
    read_at = datetime(2022, 3, 1, 0, 30, tzinfo=SHANGHAI)

    result = await ingest(session, [reading(meter.id, read_at, "1")])

    assert result.inserted == 1
    found = await session.execute(text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'readings'::regclass AND c.relname = 'readings_p202203'"
    ))
    row = found.one()
    assert "2022-02-28 16:00:00+00" in row.bound and "2022-03-31 16:00:00+00" in row.bound
    located = await session.execute(text("SELECT tableoid::regclass::text FROM readings WHERE meter_id = :m"), {"m": meter.id})
    assert located.scalar_one() == "readings_p202203"
    assert await ensure_partitions(session, start=read_at, end=read_at, tz="Asia/Shanghai") == []


async def test_latest_readings_follow_read_at_across_out_of_order_batches(session: AsyncSession) -> None:
    one, two = await make_meter(session), await make_meter(session)

    await ingest(session, [reading(one.id, at(5), "5"), reading(one.id, at(3), "3"), reading(two.id, at(2), "2")])
    await ingest(session, [reading(one.id, at(4), "4"), reading(two.id, at(6), "6"), reading(one.id, at(1), "1")])

    latest = await latest_readings(session, meter_ids=[one.id, two.id])
    assert (latest[one.id].read_at, latest[one.id].total_m3) == (at(5), Decimal("5.0000"))
    assert (latest[two.id].read_at, latest[two.id].total_m3) == (at(6), Decimal("6.0000"))
    assert sorted(r[0] for r in await stored(session, one.id)) == [at(1), at(3), at(4), at(5)]


async def test_a_better_reading_at_the_latest_instant_updates_latest(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, [reading(meter.id, at(5), "5", estimated)])

    await ingest(session, [reading(meter.id, at(5), "5.5", actual), reading(meter.id, at(4), "4", actual)])

    latest = (await latest_readings(session, meter_ids=[meter.id]))[meter.id]
    assert (latest.read_at, latest.total_m3, latest.quality) == (at(5), Decimal("5.5000"), "actual")


async def test_a_meter_that_sent_a_reading_cannot_be_deleted(session: AsyncSession) -> None:
    from backend.archives.service import delete_meter
    from backend.errors import DomainError

    meter = await make_meter(session)
    assert meter.id is not None
    await ingest_readings(session, readings=[ReadingIn(meter_id=meter.id, read_at=NOW - timedelta(hours=1), total_m3=Decimal("1.5"))],
                          source="test", now=NOW)

    with pytest.raises(DomainError) as refused:
        await delete_meter(session, meter_id=meter.id)

    assert refused.value.code.value == "HAS_HISTORY"
