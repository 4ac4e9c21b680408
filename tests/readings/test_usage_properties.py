"""Properties of the money-critical usage core: the daily rollup (fast path and SQL
recompute), ``usage_between`` and ``usage_by_interval`` agree, across shuffled batches,
duplicates, estimates, corrections, rollovers, reverse flow, DST days and month
boundaries; and the edge cases a review found (each test failed before its fix)."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import raw_connection
from backend.readings.models import ReadingQuality
from backend.readings.rollup import recompute_days
from backend.readings.service import ReadingIn, ingest_readings, latest_readings
from backend.readings.usage import usage_between, usage_by_interval
from tests.readings.factories import make_meter

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=SHANGHAI)
actual, manual, estimated = ReadingQuality.actual, ReadingQuality.manual, ReadingQuality.estimated

_ROW = ("first_at, first_total, last_at, last_total, effective_total, opening_effective, usage_m3, reading_count,"
        " register_wraps, rollover, reverse_flow")


def at(day: int, hour: int = 0, month: int = 11, tz: ZoneInfo = SHANGHAI) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=tz)


def reading(meter_id: int, read_at: datetime, total: str | Decimal, quality: ReadingQuality = actual) -> ReadingIn:
    return ReadingIn(meter_id=meter_id, read_at=read_at, total_m3=Decimal(total), quality=quality)


async def ingest(session: AsyncSession, readings: list[ReadingIn], tz: ZoneInfo = SHANGHAI) -> None:
    result = await ingest_readings(session, readings=readings, source="review", now=NOW, tz=tz)
    assert result.rejected == []


async def rows_of(session: AsyncSession, meter_id: int) -> dict[date, tuple[Any, ...]]:
    found = await session.execute(text(f"SELECT day, {_ROW} FROM daily_usage WHERE meter_id = :m ORDER BY day"),
                                  {"m": meter_id})
    return {row[0]: tuple(row[1:]) for row in found.all()}


async def day_usage(session: AsyncSession, meter_id: int) -> dict[date, Decimal]:
    return {day: row[6] for day, row in (await rows_of(session, meter_id)).items()}


async def rolled_sum(session: AsyncSession, meter_id: int, first: date, following: date) -> Decimal:
    return (await session.execute(text(
        "SELECT coalesce(sum(usage_m3), 0) FROM daily_usage WHERE meter_id = :m AND day >= :a AND day < :b"
    ), {"m": meter_id, "a": first, "b": following})).scalar_one()


async def between(session: AsyncSession, meter_id: int, start: datetime, end: datetime) -> Decimal:
    return (await usage_between(session, meter_ids=[meter_id], start=start, end=end))[meter_id]


# --------------------------------------------------------------------------- bugs


async def test_consecutive_billing_windows_never_count_water_that_flowed_back_twice(session: AsyncSession) -> None:
    """The high-water mark is the meter's own, not the window's: 100 → 90 → 95 → 105 is
    5 m³ over the whole range, and (d1, d3] + (d3, d5] = 0 + 5, not 0 + 15 (the water that
    flowed back before the boundary is not billed again after it)."""
    meter = await make_meter(session)
    await ingest(session, [reading(meter.id, at(1, 10), "100"), reading(meter.id, at(2, 10), "90"),
                           reading(meter.id, at(3, 10), "95"), reading(meter.id, at(4, 10), "105")])

    whole = await between(session, meter.id, at(1), at(5))
    first, second = await between(session, meter.id, at(1), at(3)), await between(session, meter.id, at(3), at(5))
    days = await usage_by_interval(session, meter_ids=[meter.id], start=at(1), end=at(5), interval="day", tz=SHANGHAI)

    assert whole == Decimal("5.0000")
    assert await rolled_sum(session, meter.id, date(2026, 11, 3), date(2026, 11, 5)) == Decimal("5.0000")
    # usage_by_interval promises "the intervals add up to usage_between over the whole range".
    assert sum(usage for _, _, usage in days) == whole
    assert first + second == whole
    assert second == await rolled_sum(session, meter.id, date(2026, 11, 3), date(2026, 11, 5))


async def test_a_rollover_inside_a_busy_day_is_a_rollover_in_the_rollup_too(session: AsyncSession) -> None:
    """Plain forward flow on a 3-digit register (wraps at 1000 m³), 700 m³ used in one day
    (800 → 100 → 400): the rollup walks every reading, so it sees the wrap whether the
    readings come in one batch or one at a time, as usage_between does."""
    single, one_by_one = await make_meter(session, register_digits=3), await make_meter(session, register_digits=3)
    totals = [(at(1, 20), "700"), (at(2, 6), "800"), (at(2, 12), "100"), (at(2, 18), "400")]

    await ingest(session, [reading(single.id, instant, total) for instant, total in totals])
    for instant, total in totals:
        await ingest(session, [reading(one_by_one.id, instant, total)])

    raw = await between(session, single.id, at(2), at(3))
    assert raw == Decimal("700.0000")
    assert (await day_usage(session, one_by_one.id))[date(2026, 11, 2)] == raw  # fast path: 700, right
    assert (await day_usage(session, single.id))[date(2026, 11, 2)] == raw


async def test_a_day_with_reverse_flow_rolls_up_the_same_by_either_path(session: AsyncSession) -> None:
    """Same readings, same day (100, 120, 110, 115): in one batch or in two, the rollup
    walks every reading, so both give usage_between's 20 and flag the reverse flow."""
    one, two = await make_meter(session), await make_meter(session)
    day = [(at(1, 8), "100"), (at(1, 12), "120"), (at(1, 16), "110"), (at(1, 20), "115")]

    await ingest(session, [reading(one.id, instant, total) for instant, total in day])
    await ingest(session, [reading(two.id, instant, total) for instant, total in day[:2]])
    await ingest(session, [reading(two.id, instant, total) for instant, total in day[2:]])

    raw = await between(session, one.id, at(1), at(2))
    assert raw == Decimal("20.0000")
    by_one, by_two = await rows_of(session, one.id), await rows_of(session, two.id)
    assert by_two[date(2026, 11, 1)][6] == raw  # fast path, continued day: 20, reverse_flow True
    assert by_one[date(2026, 11, 1)][6:] == by_two[date(2026, 11, 1)][6:]
    assert by_one[date(2026, 11, 1)][6] == raw


async def test_a_meter_model_multiplier_must_be_a_whole_number(session: AsyncSession) -> None:
    """A multiplier of 2.5 with 0.0001 m³ a day would need rounding (0.00025 a day), and
    the daily rollup (rounded per day) would drift from usage_between (rounded once):
    multipliers are whole numbers (1, 10, 100 …), so the product of a 4-place register
    difference needs no rounding. Nothing is written."""
    from backend.archives.models import MeterModel
    from backend.archives.service import MeterModelFields, save_meter_model
    from backend.errors import DomainError, ErrorCode
    from tests.factories import unique

    vendor = unique("厂家")
    for multiplier in (Decimal("2.5"), Decimal("0.0001"), Decimal("10.0001")):
        with pytest.raises(DomainError) as refused:
            await save_meter_model(session, fields=MeterModelFields(vendor=vendor, name=unique("型号"), caliber=20,
                                                                    multiplier=multiplier))
        assert (refused.value.code, refused.value.field) == (ErrorCode.INVALID, "multiplier")
    stored = (await session.execute(text("SELECT count(*) FROM meter_models WHERE vendor = :v"), {"v": vendor})).scalar_one()
    assert stored == 0

    model = await save_meter_model(session, fields=MeterModelFields(vendor=vendor, name=unique("型号"), caliber=20,
                                                                    multiplier=Decimal("10.0000")))
    assert isinstance(model, MeterModel) and model.multiplier == Decimal(10)


# --------------------------------------------------------------------------- properties


def _plain_series(rng: random.Random, start: datetime, end: datetime, zone: ZoneInfo,
                  first_total: Decimal, register_range: Decimal | None) -> list[tuple[datetime, Decimal]]:
    """Forward-only readings (some exactly at local midnight), wrapped at the register range."""
    series: list[tuple[datetime, Decimal]] = []
    instant, total = start, first_total
    while instant < end:
        total += Decimal(rng.randint(0, 900)) / 1000
        series.append((instant.astimezone(zone) if rng.random() < 0.5 else instant,
                       total % register_range if register_range else total))
        step = timedelta(minutes=rng.choice([30, 60, 60, 120, 240, 600, 1500]))
        following = instant + step
        local = following.astimezone(zone)
        if rng.random() < 0.15:  # snap to the local midnight that closes the day
            following = datetime(local.year, local.month, local.day, tzinfo=zone)
            if following <= instant:
                following = instant + step
        instant = following
    return series


async def _full_recompute_rows(session: AsyncSession, meter_id: int, zone: ZoneInfo) -> dict[date, tuple[Any, ...]]:
    """The SQL path from scratch: drop the meter's rollup and recompute every day."""
    driver = await raw_connection(session)
    days = list(await rows_of(session, meter_id))
    await session.execute(text("DELETE FROM daily_usage_closed WHERE meter_id = :m"), {"m": meter_id})
    await session.execute(text("UPDATE latest_readings SET day = NULL WHERE meter_id = :m"), {"m": meter_id})
    await recompute_days(driver, [(meter_id, day) for day in days], zone.key)
    return await rows_of(session, meter_id)


async def _check_meter(session: AsyncSession, meter_id: int, zone: ZoneInfo, first: date, last: date) -> None:
    rolled = await day_usage(session, meter_id)
    day = first
    windows: list[tuple[date, datetime, datetime]] = []
    while day <= last:
        following = day + timedelta(days=1)
        windows.append((day, datetime(day.year, day.month, day.day, tzinfo=zone),
                        datetime(following.year, following.month, following.day, tzinfo=zone)))
        day = following
    for day, start, end in windows:
        assert rolled.get(day, Decimal("0.0000")) == await between(session, meter_id, start, end), (meter_id, day)
    # Whole months (the partition boundary) and the whole range.
    for a, b in ((first, date(2026, 11, 1)), (date(2026, 11, 1), last + timedelta(days=1)),
                 (first, last + timedelta(days=1))):
        start = datetime(a.year, a.month, a.day, tzinfo=zone)
        end = datetime(b.year, b.month, b.day, tzinfo=zone)
        assert await rolled_sum(session, meter_id, a, b) == await between(session, meter_id, start, end), (a, b)


@pytest.mark.parametrize("seed", [20261025, 1, 2, 3])
async def test_property_shuffled_batches_with_duplicates_and_estimates_match_usage_between_and_a_recompute(
    session: AsyncSession, seed: int,
) -> None:
    """Berlin (DST ends 2026-10-25) across the October/November month (and partition)
    boundary: random forward readings, one plain meter and one 3-digit register with
    wraps, sent in shuffled overlapping batches with re-sent duplicates and estimates
    later replaced by actual reads. Every day of the rollup equals usage_between over
    that day, months add up, the fast path equals a full SQL recompute, the result equals
    in-order ingest, and latest_readings is the newest stored reading."""
    rng = random.Random(seed)
    start, end = datetime(2026, 10, 22, 21, tzinfo=BERLIN), datetime(2026, 11, 4, 3, tzinfo=BERLIN)
    pairs = []
    for digits in (None, 3):
        shuffled = await make_meter(session, register_digits=digits)
        ordered = await make_meter(session, register_digits=digits)
        series = _plain_series(rng, start, end, BERLIN, Decimal("940"), Decimal(1000) if digits else None)
        pairs.append((shuffled, ordered, series))

    incoming: list[ReadingIn] = []
    for shuffled, ordered, series in pairs:
        for instant, total in series:
            quality = estimated if rng.random() < 0.1 else actual
            incoming.append(reading(shuffled.id, instant, total, quality))
            if quality is estimated:  # the actual read of the same instant comes later
                incoming.append(reading(shuffled.id, instant, total, actual))
            if rng.random() < 0.1:
                incoming.append(reading(shuffled.id, instant, total))  # re-sent
        await ingest(session, [reading(ordered.id, instant, total) for instant, total in series], tz=BERLIN)
    rng.shuffle(incoming)
    position = 0
    while position < len(incoming):
        size = rng.randint(1, 60)
        await ingest(session, incoming[position:position + size], tz=BERLIN)
        position += size

    for shuffled, ordered, series in pairs:
        assert shuffled.id is not None and ordered.id is not None
        fast = await rows_of(session, shuffled.id)
        in_order = await rows_of(session, ordered.id)
        assert fast == in_order, shuffled.id
        await _check_meter(session, shuffled.id, BERLIN, date(2026, 10, 22), date(2026, 11, 3))
        latest = (await latest_readings(session, meter_ids=[shuffled.id]))[shuffled.id]
        assert (latest.read_at, latest.total_m3) == max(series)
        assert await _full_recompute_rows(session, shuffled.id, BERLIN) == fast


async def test_property_a_dst_day_in_berlin_has_25_hours_of_usage(session: AsyncSession) -> None:
    """Hourly readings through the autumn DST change: the rollup's Oct 25 equals
    usage_between over the local day (25 hours), and the day series adds up."""
    meter = await make_meter(session)
    utc = ZoneInfo("UTC")
    instant, total, readings = datetime(2026, 10, 24, 0, tzinfo=BERLIN).astimezone(utc), Decimal(0), []
    while instant <= datetime(2026, 10, 27, 0, tzinfo=BERLIN):  # real hours (arithmetic in UTC)
        total += 1
        readings.append(reading(meter.id, instant.astimezone(BERLIN), total))
        instant += timedelta(hours=1)
    await ingest(session, readings, tz=BERLIN)

    rolled = await day_usage(session, meter.id)
    assert rolled[date(2026, 10, 25)] == Decimal("25.0000")
    assert rolled[date(2026, 10, 25)] == await between(session, meter.id, datetime(2026, 10, 25, tzinfo=BERLIN),
                                                       datetime(2026, 10, 26, tzinfo=BERLIN))
    days = await usage_by_interval(session, meter_ids=[meter.id], start=datetime(2026, 10, 24, tzinfo=BERLIN),
                                   end=datetime(2026, 10, 27, tzinfo=BERLIN), interval="day", tz=BERLIN)
    assert [usage for _, _, usage in days] == [rolled[date(2026, 10, d)] for d in (24, 25, 26)]


async def test_property_superseded_estimates_and_a_late_actual_leave_rollup_and_latest_right(session: AsyncSession) -> None:
    meter, reference = await make_meter(session), await make_meter(session)
    await ingest(session, [reading(meter.id, at(1, 10), "1"), reading(meter.id, at(2, 10), "5", estimated),
                           reading(meter.id, at(3, 10), "9", estimated), reading(meter.id, at(5, 10), "9.5", estimated)])
    # A late actual for day 3 (20:00): the estimates before it go, the one after stays.
    await ingest(session, [reading(meter.id, at(3, 20), "3")])
    await ingest(session, [reading(reference.id, at(1, 10), "1"), reading(reference.id, at(3, 20), "3"),
                           reading(reference.id, at(5, 10), "9.5", estimated)])

    mine, theirs = await rows_of(session, meter.id), await rows_of(session, reference.id)
    assert [row[6:] for row in mine.values()] == [row[6:] for row in theirs.values()]
    assert list(mine) == list(theirs)
    latest = (await latest_readings(session, meter_ids=[meter.id]))[meter.id]
    assert (latest.read_at, latest.total_m3) == (at(5, 10), Decimal("9.5000"))


@pytest.mark.parametrize(("replaced_at", "code"), [
    (at(3, 12), "READ_BEFORE_INSTALL"),  # back-dated before the new meter's install day
    (NOW + timedelta(minutes=10), "READ_AT_IN_FUTURE"),
])
async def test_a_replacement_whose_readings_ingest_rejects_is_refused_and_writes_nothing(
    session: AsyncSession, replaced_at: datetime, code: str,
) -> None:
    """The register readings at the swap are what usage spans the two meters with: when
    ingest rejects one, the replacement is refused with ingest's code on replacedAt, and
    no part of it (assignments, statuses, replacement record, readings) is written."""
    from backend.archives.models import AreaKind, MeterStatus
    from backend.archives.service import assign_meter, assignments_by_household_ids, create_area, create_household, replace_meter
    from backend.errors import DomainError, ErrorCode
    from tests.factories import unique

    area = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    household = await create_household(session, account_no=unique("H"), name="王芳", area_id=area.id)
    old = await make_meter(session, area_id=area.id)
    new = await make_meter(session, area_id=area.id, install_date=date(2026, 11, 4))
    await assign_meter(session, meter_id=old.id, household_id=household.id, valid_from=at(1), start_reading=Decimal(0))
    await ingest(session, [reading(old.id, at(1, 10), "100"), reading(old.id, at(3, 10), "104")])
    old_id, new_id, household_id = old.id, new.id, household.id  # the refusal expires the rows it touched

    with pytest.raises(DomainError) as refused:
        await replace_meter(session, old_meter_id=old_id, new_meter_id=new_id, replaced_at=replaced_at,
                            old_final_reading=Decimal("105"), new_initial_reading=Decimal("0.5"), replaced_by="test", now=NOW)

    assert (refused.value.code, refused.value.field) == (ErrorCode(code), "replacedAt")
    history = (await assignments_by_household_ids(session, [household_id]))[household_id]
    assert [(a.meter_id, a.valid_to, a.end_reading) for a in history] == [(old_id, None, None)]
    statuses = await session.execute(text("SELECT status FROM meters WHERE id IN (:old, :new)"), {"old": old_id, "new": new_id})
    assert [row.status for row in statuses] == [MeterStatus.installed.value] * 2
    written = await session.execute(text(
        "SELECT (SELECT count(*) FROM meter_replacements WHERE old_meter_id = :old),"
        " (SELECT count(*) FROM readings WHERE meter_id IN (:old, :new))"), {"old": old_id, "new": new_id})
    assert tuple(written.one()) == (0, 3)  # the move-in reading at day 1 and the two reads


async def test_a_move_out_and_move_in_split_usage_at_the_handover_reading(session: AsyncSession) -> None:
    """拆表/配表 store the register at the handover (``end_reading`` / ``start_reading``)
    as a reading, as a replacement does, so the water used between the meter's last
    automatic read (08:00, 50) and the handover (12:00, 52) is billed to the household
    that used it, not to the next one."""
    from backend.archives.models import AreaKind
    from backend.archives.service import assign_meter, create_area, create_household, end_assignment
    from tests.factories import unique

    area = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    leaving = await create_household(session, account_no=unique("H"), name="张伟", area_id=area.id)
    arriving = await create_household(session, account_no=unique("H"), name="刘洋", area_id=area.id)
    meter = await make_meter(session, area_id=area.id)
    await assign_meter(session, meter_id=meter.id, household_id=leaving.id, valid_from=at(1), start_reading=Decimal(10))
    await ingest(session, [reading(meter.id, at(1, 10), "10"), reading(meter.id, at(2, 8), "50"),
                           reading(meter.id, at(3, 10), "60")])
    await end_assignment(session, meter_id=meter.id, valid_to=at(2, 12), end_reading=Decimal(52), now=NOW)
    await assign_meter(session, meter_id=meter.id, household_id=arriving.id, valid_from=at(2, 12),
                       start_reading=Decimal(52), now=NOW)

    found = await usage_between(session, household_ids=[leaving.id, arriving.id], start=at(1), end=at(4))
    assert found == {leaving.id: Decimal("42.0000"), arriving.id: Decimal("8.0000")}
    stored = await session.execute(text("SELECT read_at, total_m3, quality FROM readings WHERE meter_id = :m"
                                        " AND source LIKE 'assignment:%' ORDER BY read_at"), {"m": meter.id})
    assert [tuple(row) for row in stored] == [(at(1), Decimal("10.0000"), "manual"), (at(2, 12), Decimal("52.0000"), "manual")]


@pytest.mark.parametrize("seed", [329, 4, 5])
async def test_property_spring_dst_with_estimates_manual_reads_and_corrections(session: AsyncSession, seed: int) -> None:
    """Berlin around the spring DST change (2026-03-29, a 23-hour day) and the March/April
    boundary: standalone estimates (some superseded by later actual reads, some arriving
    after them), manual reads of the same value, then corrections through
    after_readings_changed; rollup = usage_between per day and month = full recompute,
    and latest_readings is the newest stored reading."""
    from backend.readings.service import after_readings_changed

    rng = random.Random(seed)
    start, end = datetime(2026, 3, 26, 22, tzinfo=BERLIN), datetime(2026, 4, 3, 5, tzinfo=BERLIN)
    for digits in (None, 3):
        meter = await make_meter(session, register_digits=digits)
        assert meter.id is not None
        series = _plain_series(rng, start, end, BERLIN, Decimal("930"), Decimal(1000) if digits else None)
        incoming = []
        for instant, total in series:
            quality = rng.choice([actual, actual, actual, manual, estimated])
            incoming.append(reading(meter.id, instant, total, quality))
            if rng.random() < 0.15:
                incoming.append(reading(meter.id, instant, total, rng.choice([actual, manual, estimated])))
        rng.shuffle(incoming)
        position = 0
        while position < len(incoming):
            size = rng.randint(1, 40)
            await ingest(session, incoming[position:position + size], tz=BERLIN)
            position += size
        # Corrections: a reading moved to the midpoint of its neighbours (still forward).
        stored = (await session.execute(text(
            "SELECT read_at, total_m3 FROM readings WHERE meter_id = :m ORDER BY read_at"), {"m": meter.id})).all()
        assert len(stored) > 15
        changes = []
        for index in rng.sample(range(1, len(stored) - 1), 5):
            low, high = stored[index - 1].total_m3, stored[index + 1].total_m3
            if low <= high:
                await session.execute(text("UPDATE readings SET total_m3 = :t WHERE meter_id = :m AND read_at = :a"),
                                      {"t": ((low + high) / 2).quantize(Decimal("0.0001")), "m": meter.id,
                                       "a": stored[index].read_at})
                changes.append((meter.id, stored[index].read_at))
        await after_readings_changed(session, changes=changes, now=NOW, tz=BERLIN)

        await _check_meter_months(session, meter.id, BERLIN, date(2026, 3, 26), date(2026, 4, 2))
        newest = (await session.execute(text(
            "SELECT read_at, total_m3 FROM readings WHERE meter_id = :m ORDER BY read_at DESC LIMIT 1"),
            {"m": meter.id})).one()
        latest = (await latest_readings(session, meter_ids=[meter.id]))[meter.id]
        assert (latest.read_at, latest.total_m3) == (newest.read_at, newest.total_m3)
        rows = await rows_of(session, meter.id)
        assert await _full_recompute_rows(session, meter.id, BERLIN) == rows


async def _check_meter_months(session: AsyncSession, meter_id: int, zone: ZoneInfo, first: date, last: date) -> None:
    rolled = await day_usage(session, meter_id)
    day = first
    while day <= last:
        following = day + timedelta(days=1)
        start = datetime(day.year, day.month, day.day, tzinfo=zone)
        end = datetime(following.year, following.month, following.day, tzinfo=zone)
        assert rolled.get(day, Decimal("0.0000")) == await between(session, meter_id, start, end), (meter_id, day)
        day = following
    for a, b in ((first, date(2026, 4, 1)), (date(2026, 4, 1), last + timedelta(days=1))):
        start = datetime(a.year, a.month, a.day, tzinfo=zone)
        end = datetime(b.year, b.month, b.day, tzinfo=zone)
        assert await rolled_sum(session, meter_id, a, b) == await between(session, meter_id, start, end), (a, b)


async def test_hourly_usage_on_the_autumn_dst_day_has_25_hours(session: AsyncSession) -> None:
    """usage_by_interval('hour') steps in real hours, labelled locally: Berlin's
    2026-10-25 has 25 of them, 1 m³ each for a meter using 1 m³ an hour."""
    meter = await make_meter(session)
    utc = ZoneInfo("UTC")
    instant, total, readings = datetime(2026, 10, 25, 0, tzinfo=BERLIN).astimezone(utc), Decimal(0), []
    while instant <= datetime(2026, 10, 26, 0, tzinfo=BERLIN):
        total += 1
        readings.append(reading(meter.id, instant.astimezone(BERLIN), total))
        instant += timedelta(hours=1)
    await ingest(session, readings, tz=BERLIN)

    hours = await usage_by_interval(session, meter_ids=[meter.id], start=datetime(2026, 10, 25, tzinfo=BERLIN),
                                    end=datetime(2026, 10, 26, tzinfo=BERLIN), interval="hour", tz=BERLIN)

    assert sum(usage for _, _, usage in hours) == Decimal("25.0000")
    assert [usage for _, _, usage in hours] == [Decimal("1.0000")] * 25


async def test_a_model_s_multiplier_and_register_and_a_meter_s_model_are_fixed_once_it_has_readings(
    session: AsyncSession,
) -> None:
    """usage_between applies the model's multiplier and register size when it is asked,
    the daily rollup when the readings came in: changing them under stored readings would
    make statistics (rollup) and billing (usage_between) disagree. So a model used by a
    meter with readings keeps its multiplier and register digits (MODEL_IN_USE), and a
    meter with readings keeps them too (METER_HAS_READINGS); everything else may change,
    and a model whose meters have no readings may change freely."""
    from backend.archives.service import MeterChanges, MeterModelFields, save_meter_model, update_meter
    from backend.errors import DomainError, ErrorCode
    from tests.factories import unique

    meter, unread = await make_meter(session, multiplier=Decimal(1)), await make_meter(session, multiplier=Decimal(1))
    await ingest(session, [reading(meter.id, at(1, 10), "1"), reading(meter.id, at(2, 10), "3")])
    assert meter.model_id is not None and unread.model_id is not None
    vendor, name = unique("厂家"), unique("型号")
    for changed, field in (({"multiplier": Decimal(10)}, "multiplier"), ({"register_digits": 6}, "registerDigits")):
        with pytest.raises(DomainError) as refused:
            await save_meter_model(session, model_id=meter.model_id, fields=MeterModelFields(
                vendor=vendor, name=name, caliber=20, **{"register_digits": 5, **changed}))
        assert (refused.value.code, refused.value.field) == (ErrorCode.MODEL_IN_USE, field)
    renamed = await save_meter_model(session, model_id=meter.model_id, fields=MeterModelFields(
        vendor=vendor, name=name, caliber=25, register_digits=5))
    assert (renamed.name, renamed.caliber, renamed.multiplier) == (name, 25, Decimal(1))
    tenfold = await save_meter_model(session, model_id=unread.model_id, fields=MeterModelFields(
        vendor=unique("厂家"), name=unique("型号"), caliber=20, register_digits=5, multiplier=Decimal(10)))

    with pytest.raises(DomainError) as refused:
        await update_meter(session, meter_id=meter.id, changes=MeterChanges(model_id=tenfold.id))
    assert (refused.value.code, refused.value.field) == (ErrorCode.METER_HAS_READINGS, "modelId")
    with pytest.raises(DomainError) as refused:
        await update_meter(session, meter_id=meter.id, changes=MeterChanges(model_id=None))  # 5 digits -> no register
    assert refused.value.code is ErrorCode.METER_HAS_READINGS
    await update_meter(session, meter_id=unread.id, changes=MeterChanges(model_id=meter.model_id))  # no readings: free

    raw = await between(session, meter.id, at(1), at(3))
    assert raw == Decimal("2.0000")
    assert await rolled_sum(session, meter.id, date(2026, 11, 1), date(2026, 11, 3)) == raw


async def test_totals_with_more_than_4_places_roll_up_as_stored(session: AsyncSession) -> None:
    """Ingest rounds totals to the column's 4 places before the rollup walks them, so the
    fast path books what is stored (0.0001 for 1.00004 → 1.00008), as a recompute does."""
    meter = await make_meter(session)
    await ingest(session, [reading(meter.id, at(1, 10), "1.00004"), reading(meter.id, at(2, 10), "1.00008")])

    raw = await between(session, meter.id, at(2), at(3))
    assert raw == Decimal("0.0001")
    fast = await rows_of(session, meter.id)
    assert await _full_recompute_rows(session, meter.id, SHANGHAI) == fast
    assert fast[date(2026, 11, 2)][6] == raw
