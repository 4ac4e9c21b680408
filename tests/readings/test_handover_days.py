"""Household figures on a handover day clip at the handover instant, as ``usage_between``
does: on the day a meter changes hands (a move at 10:15, a replacement at 12:00) each
household's statistics, series and ledger count the meter only over its own part of the
day, so the two parts add up to the meter's day and a ledger row's 统计值 is its
止码 - 起码 (times the multiplier) — in day, month, year and hour figures alike.

The world is test_statistics' utility: the doubled meter (multiplier 2) reads at HH:30.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.service import assign_meter, end_assignment
from backend.readings import analytics
from backend.readings.analytics import Granularity, Scope, ScopeKind
from backend.readings.service import ReadingIn, ingest_readings
from backend.readings.usage import usage_between
from tests.factories import make_household
from tests.readings.test_statistics import (
    NOW,
    REPLACED_AT,
    TZ,
    ZONE,
    build_utility,
    day_start,
    doubled_total,
    statistics,
)

HANDED_OVER = datetime(2026, 10, 17, 10, 15, tzinfo=ZONE)  # between the 09:30 and 10:30 readings
THE_17TH = date(2026, 10, 17)
# An hourly row of a household (meters, covered meters, usage) and usage_between over its hour.
HourRow = tuple[int | None, int | None, Decimal | None, Decimal]


async def ledger(session: AsyncSession, scope: Scope, granularity: Granularity, start: date,
                 end: date) -> analytics.LedgerPage:
    return await analytics.usage_ledger(session, scope=scope, granularity=granularity, start_day=start, end_day=end,
                                        scope_patterns=None, tz=TZ, limit=None)


async def test_a_meter_handed_over_mid_day_splits_the_day_between_the_two_households(session: AsyncSession) -> None:
    utility = await build_utility(session)
    meter = utility.doubled.id
    leaving = await make_household(session, area=utility.tree.west_community, name="王芳")
    arriving = await make_household(session, area=utility.tree.west_community, name="李娜")
    # The register at the handover is the one read at 09:30: nothing flowed since.
    register = doubled_total(HANDED_OVER - timedelta(minutes=45))
    await assign_meter(session, meter_id=meter, household_id=leaving.id, valid_from=day_start(date(2026, 10, 15)),
                       start_reading=doubled_total(day_start(date(2026, 10, 15)) - timedelta(minutes=30)))
    await end_assignment(session, meter_id=meter, valid_to=HANDED_OVER, end_reading=register)
    await assign_meter(session, meter_id=meter, household_id=arriving.id, valid_from=HANDED_OVER,
                       start_reading=register)
    day_from, day_to = day_start(THE_17TH), day_start(THE_17TH + timedelta(days=1))

    meter_day = (await usage_between(session, meter_ids=[meter], start=day_from, end=day_to))[meter]
    expected = await usage_between(session, household_ids=[leaving.id, arriving.id], start=day_from, end=day_to)
    assert Decimal(0) < expected[leaving.id] < meter_day  # a real split, both sides used water
    assert expected[leaving.id] + expected[arriving.id] == meter_day

    for household in (leaving, arriving):
        scope = Scope(ScopeKind.household, household.id)
        daily = await statistics(session, scope, Granularity.day, THE_17TH, THE_17TH)
        hourly = await statistics(session, scope, Granularity.hour, THE_17TH, THE_17TH)
        series = await analytics.usage_series(session, scopes=[scope], granularity=Granularity.day,
                                              start_day=THE_17TH, end_day=THE_17TH, scope_patterns=None, tz=TZ)
        assert daily.summary.total == expected[household.id], household.name
        assert hourly.summary.total == expected[household.id], household.name
        assert series[0].points[0].value == expected[household.id], household.name
        (row,) = (await ledger(session, scope, Granularity.period, THE_17TH, THE_17TH)).rows
        assert row.usage_m3 == (row.end_reading - row.start_reading) * row.multiplier  # type: ignore[operator]
        assert row.usage_m3 == expected[household.id]

    # Longer periods carry the split: October, and the year, per household.
    for granularity, first, last in ((Granularity.month, date(2026, 10, 1), date(2026, 10, 31)),
                                     (Granularity.year, date(2026, 1, 1), date(2026, 12, 31))):
        whole = await usage_between(session, household_ids=[leaving.id, arriving.id], start=day_start(first),
                                    end=day_start(last + timedelta(days=1)))
        for household in (leaving, arriving):
            scope = Scope(ScopeKind.household, household.id)
            page = await statistics(session, scope, granularity, first, last)
            assert page.summary.total == whole[household.id], (granularity, household.name)
            rows = (await ledger(session, scope, granularity, first, last)).rows
            assert [row.usage_m3 for row in rows] == [whole[household.id]], (granularity, household.name)
            assert rows[0].usage_m3 == (rows[0].end_reading - rows[0].start_reading) * rows[0].multiplier  # type: ignore[operator]
    # The hour of the handover splits at 10:15 too.
    hour = datetime(2026, 10, 17, 10, tzinfo=ZONE)
    split = [
        {row.period_start: row.usage_m3 for row in
         (await statistics(session, Scope(ScopeKind.household, household.id), Granularity.hour, THE_17TH,
                           THE_17TH)).rows}[hour]
        for household in (leaving, arriving)
    ]
    whole_hour = (await usage_between(session, meter_ids=[meter], start=hour, end=hour + timedelta(hours=1)))[meter]
    assert split == [Decimal(0), whole_hour]  # nothing flowed 10:00-10:15: the 10:30 reading is the arrival's


async def test_a_meter_replaced_mid_day_counts_each_meter_only_on_its_side_of_the_replacement(
    session: AsyncSession,
) -> None:
    """The old meter, replaced at 12:00, is read twice more that afternoon on the bench:
    those readings are not the household's."""
    utility = await build_utility(session)
    final = (await analytics.usage_ledger(session, scope=Scope(ScopeKind.meter, utility.old.id),
                                          granularity=Granularity.period, start_day=REPLACED_AT.date(),
                                          end_day=REPLACED_AT.date(), scope_patterns=None, tz=TZ)).rows[0].end_reading
    assert final is not None
    result = await ingest_readings(session, readings=[
        ReadingIn(meter_id=utility.old.id, read_at=REPLACED_AT + timedelta(hours=2), total_m3=final + 3),
        ReadingIn(meter_id=utility.old.id, read_at=REPLACED_AT + timedelta(hours=3), total_m3=final + 5),
    ], source="bench", now=NOW, tz=TZ)
    assert not result.rejected
    household = Scope(ScopeKind.household, utility.household.id)
    day = REPLACED_AT.date()
    day_from, day_to = day_start(day), day_start(day + timedelta(days=1))

    daily = await statistics(session, household, Granularity.day, day, day)
    rows = {row.meter_id: row for row in (await ledger(session, household, Granularity.period, day, day)).rows}

    expected = await usage_between(session, household_ids=[utility.household.id], start=day_from, end=day_to)
    old_part = (await usage_between(session, meter_ids=[utility.old.id], start=day_from, end=REPLACED_AT))
    new_part = (await usage_between(session, meter_ids=[utility.new.id], start=REPLACED_AT, end=day_to))
    by_meter = {row.unit_id: row.usage_m3 for row in daily.rows}
    assert by_meter == {utility.old.id: old_part[utility.old.id], utility.new.id: new_part[utility.new.id]}
    assert daily.summary.total == expected[utility.household.id]
    old_whole_day = (await usage_between(session, meter_ids=[utility.old.id], start=day_from, end=day_to))
    assert old_whole_day[utility.old.id] == old_part[utility.old.id] + 5  # the bench's 5 m³ stay out
    for row in rows.values():
        assert row.usage_m3 == (row.end_reading - row.start_reading) * row.multiplier  # type: ignore[operator]
        assert row.usage_m3 == by_meter[row.meter_id]
    assert rows[utility.old.id].end_at == REPLACED_AT


async def served_hours(session: AsyncSession, household_id: int, day: date) -> dict[datetime, HourRow]:
    """Per hour of ``day``, the household's hourly row (meters, covered meters, usage) and
    ``usage_between`` of the household over the hour (its meters clipped to their
    assignments: the served part of the hour)."""
    rows = (await statistics(session, Scope(ScopeKind.household, household_id), Granularity.hour, day, day)).rows
    result: dict[datetime, HourRow] = {}
    for row in rows:
        start = row.period_start
        served = await usage_between(session, household_ids=[household_id], start=start, end=start + timedelta(hours=1))
        result[start] = (row.meters, row.covered_meters, row.usage_m3, served[household_id])
    return result


async def test_the_hour_of_a_handover_splits_on_the_effective_register_across_a_reverse_flow_and_a_rollover(
    session: AsyncSession,
) -> None:
    """The rolling meter (4 digits) reads 9,999.9 at 03:30 on 21 Oct and rolls over to 0.4
    at 04:30. Water flows back 1 m³ by 04:05 and the meter changes hands at 04:15 with
    the register at 9,998.9: the leaving household used nothing after 03:30 (the
    register stays under its high-water mark), the arriving one 0.5 m³ up to 04:30 (the
    rollover counted, from the high-water mark, not from the register it was handed
    over at)."""
    utility = await build_utility(session)
    meter = utility.rolling.id
    day = date(2026, 10, 21)
    handed_over, dropped = datetime(2026, 10, 21, 4, 15, tzinfo=ZONE), Decimal("9998.9")
    result = await ingest_readings(session, readings=[
        ReadingIn(meter_id=meter, read_at=handed_over - timedelta(minutes=10), total_m3=dropped)],
        source="test", now=NOW, tz=TZ)
    assert not result.rejected
    leaving = await make_household(session, area=utility.tree.east_community, name="王芳")
    arriving = await make_household(session, area=utility.tree.east_community, name="李娜")
    await assign_meter(session, meter_id=meter, household_id=leaving.id, valid_from=day_start(day - timedelta(days=1)))
    await end_assignment(session, meter_id=meter, valid_to=handed_over, end_reading=dropped)
    await assign_meter(session, meter_id=meter, household_id=arriving.id, valid_from=handed_over, start_reading=dropped)

    hour = datetime(2026, 10, 21, 4, tzinfo=ZONE)
    for household, before, after, figure in ((leaving, 1, 0, Decimal(0)), (arriving, 0, 1, Decimal("0.5"))):
        hours = await served_hours(session, household.id, day)
        assert hours[hour] == (1, 1, figure, figure), household.name
        for at, (meters, covered, usage, served) in hours.items():
            expected = (before, before, served if before else None, served) if at < hour else (
                (after, after, served if after else None, served) if at > hour else hours[hour])
            assert (meters, covered, usage, served) == expected, (household.name, at)
    whole_day = await usage_between(session, meter_ids=[meter], start=day_start(day),
                                    end=day_start(day + timedelta(days=1)))
    totals = [(await statistics(session, Scope(ScopeKind.household, household.id), Granularity.hour, day, day))
              .summary.total for household in (leaving, arriving)]
    assert sum(totals) == whole_day[meter]


async def test_the_part_of_an_hour_after_a_handover_without_a_reading_in_it_is_not_covered(
    session: AsyncSession,
) -> None:
    """Handed over at 10:45 between the doubled meter's 10:30 and 11:30 readings: the
    leaving household's 10:00 hour is bracketed (09:30, and the handover reading), the
    arriving one's part (10:45, 11:00] has no reading after the handover in it, so that
    hour is not available for it (the meter counted, not covered); its 11:00 hour counts
    from the handover reading, so its hours still add up to its day."""
    utility = await build_utility(session)
    meter = utility.doubled.id
    handed_over = datetime(2026, 10, 17, 10, 45, tzinfo=ZONE)
    register = doubled_total(handed_over - timedelta(minutes=15))
    leaving = await make_household(session, area=utility.tree.west_community, name="王芳")
    arriving = await make_household(session, area=utility.tree.west_community, name="李娜")
    await assign_meter(session, meter_id=meter, household_id=leaving.id, valid_from=day_start(THE_17TH))
    await end_assignment(session, meter_id=meter, valid_to=handed_over, end_reading=register)
    await assign_meter(session, meter_id=meter, household_id=arriving.id, valid_from=handed_over, start_reading=register)

    hour = datetime(2026, 10, 17, 10, tzinfo=ZONE)
    left, came = await served_hours(session, leaving.id, THE_17TH), await served_hours(session, arriving.id, THE_17TH)
    flowed = (register - doubled_total(hour - timedelta(minutes=30))) * 2  # 09:30 to 10:30 (x2), none since
    assert left[hour] == (1, 1, flowed, flowed)
    assert came[hour] == (1, 0, None, Decimal(0))
    next_hour = hour + timedelta(hours=1)
    assert came[next_hour][:3] == (1, 1, doubled_total(next_hour + timedelta(minutes=30)) * 2 - register * 2)
    for hours in (left, came):
        assert all(usage == served for _, covered, usage, served in hours.values() if covered)
    day = await usage_between(session, household_ids=[leaving.id, arriving.id], start=day_start(THE_17TH),
                              end=day_start(THE_17TH + timedelta(days=1)))
    for household, hours in ((leaving, left), (arriving, came)):
        assert sum(usage for _, _, usage, _ in hours.values() if usage is not None) == day[household.id]
        # The household's hourly chart says the same (one meter: its points are its rows).
        (series,) = await analytics.usage_series(session, scopes=[Scope(ScopeKind.household, household.id)],
                                                 granularity=Granularity.hour, start_day=THE_17TH, end_day=THE_17TH,
                                                 scope_patterns=None, tz=TZ)
        assert {point.at: (point.meters, point.covered_meters, point.value) for point in series.points} == {
            at: row[:3] for at, row in hours.items()}
