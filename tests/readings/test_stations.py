"""数据监测 by station, at the service: what ingest stores for a station's flow meter and
pressure gauge, the station's figures from them, and its trend by the zone's hour and day
(min, mean, max, samples; a bucket without readings stays empty), within the range caps
and the caller's reach."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import service
from backend.archives.models import Area, Meter, MeterKind, MeterType, MonitoringStation, StationKind
from backend.auth.scope import Reach
from backend.errors import DomainError, ErrorCode, NotFound
from backend.readings import browse
from backend.readings.service import ReadingIn, ingest_readings
from tests.factories import make_area_tree, unique

SHANGHAI = ZoneInfo("Asia/Shanghai")
TZ = "Asia/Shanghai"
EVERYWHERE = Reach(scope_patterns=None)
_addresses = iter(range(30280000000000, 30289999999999))


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=SHANGHAI)


NOW = at(11, 12)


async def instrument(session: AsyncSession, area: Area, station: MonitoringStation, meter_type: MeterType) -> Meter:
    meter = await service.create_meter(session, fields=service.MeterChanges(
        name="仪表", code=unique("TS"), address=f"{next(_addresses):014d}", meter_type=meter_type, area_id=area.id,
        kind=MeterKind.monitoring))
    await service.attach_instrument(session, station_id=station.id, meter_id=meter.id)  # type: ignore[arg-type]
    return meter


async def trunk_main(session: AsyncSession) -> tuple[Area, MonitoringStation, Meter, Meter]:
    """A station in 城东 with a flow meter and a pressure gauge, read through ingest."""
    tree = await make_area_tree(session)
    station = await service.create_station(session, fields=service.StationChanges(
        code=unique("GG"), name="东干管网", kind=StationKind.trunk_main, area_id=tree.east.id))
    flow = await instrument(session, tree.east, station, MeterType.flow_monitor)
    gauge = await instrument(session, tree.east, station, MeterType.pressure_monitor)
    assert flow.id is not None and gauge.id is not None
    readings = [
        # The flow meter's register and m³/h; the last one of 10 March at 23:30 (15:30 UTC)
        # and one at 00:30 on 11 March (still 10 March in UTC).
        *(ReadingIn(flow.id, read_at, Decimal(total), flow_rate=Decimal(rate)) for read_at, total, rate in (
            (at(10, 8), "1000", "100"), (at(10, 8, 30), "1050", "150"), (at(10, 10), "1200", "120"),
            (at(10, 23, 30), "1300", "80"), (at(11, 0, 30), "1320", "60"))),
        # The gauge's pressure, its register 0.
        *(ReadingIn(gauge.id, read_at, Decimal(0), pressure=Decimal(mpa)) for read_at, mpa in (
            (at(10, 8), "0.35"), (at(10, 8, 30), "0.33"), (at(10, 10, 15), "0.31"))),
    ]
    result = await ingest_readings(session, readings=readings, source="test", now=NOW, tz=TZ)
    assert (result.inserted, result.rejected) == (len(readings), [])
    return tree.east, station, flow, gauge


async def test_ingest_keeps_the_gauges_register_at_zero_and_the_flow_meters_register(session: AsyncSession) -> None:
    _, _, flow, gauge = await trunk_main(session)

    stored = (await session.execute(text(
        "SELECT meter_id, count(*), min(total_m3), max(total_m3), count(flow_rate), count(pressure) FROM readings "
        "WHERE meter_id = ANY(:ids) GROUP BY 1"), {"ids": [flow.id, gauge.id]})).all()
    days = (await session.execute(text(
        "SELECT meter_id, day, usage_m3 FROM daily_usage WHERE meter_id = ANY(:ids) ORDER BY 1, 2"),
        {"ids": [flow.id, gauge.id]})).all()

    assert {row[0]: tuple(row[1:]) for row in stored} == {
        flow.id: (5, Decimal("1000.0000"), Decimal("1320.0000"), 5, 0),
        gauge.id: (3, Decimal(0), Decimal(0), 0, 3),
    }
    assert [(meter_id, day.day, usage) for meter_id, day, usage in days] == [
        (flow.id, 10, Decimal("300.0000")), (flow.id, 11, Decimal("20.0000")),
        (gauge.id, 10, Decimal("0.0000"))]


async def test_a_station_shows_its_flow_meters_volume_and_the_newest_flow_and_pressure(session: AsyncSession) -> None:
    east, station, flow, gauge = await trunk_main(session)
    empty = await service.create_station(session, fields=service.StationChanges(
        code=f"{station.code}Z", name="东干管网二期", kind=StationKind.trunk_main, area_id=east.id))

    found = await browse.monitoring_stations(session, reach=EVERYWHERE, area_id=east.id, now=NOW, tz=TZ)

    (figures, bare) = found
    assert (figures.station_id, bare.station_id) == (station.id, empty.id)
    assert figures.year_volume_m3 == Decimal("320.0000")  # the gauge adds nothing
    assert figures.year_volume_10k_m3 == Decimal("0.0320")
    assert figures.flow == (Decimal("60.0000"), at(11, 0, 30))
    assert figures.pressure == (Decimal("0.3100"), at(10, 10, 15))
    assert [(p.meter_id, p.meter_type, p.station_name) for p in figures.instruments] == [
        (flow.id, "flow_monitor", "东干管网"), (gauge.id, "pressure_monitor", "东干管网")]
    assert (bare.instruments, bare.year_volume_m3, bare.flow, bare.pressure) == ([], Decimal(0), (None, None), (None, None))
    # Last year's stations count this year's days only.
    next_year = await browse.monitoring_stations(session, reach=EVERYWHERE, area_id=east.id,
                                                 now=datetime(2027, 1, 2, tzinfo=SHANGHAI), tz=TZ)
    assert next_year[0].year_volume_m3 == Decimal(0)


async def test_hourly_trend_has_every_hour_of_the_range_and_leaves_empty_hours_empty(session: AsyncSession) -> None:
    _, station, _, _ = await trunk_main(session)
    assert station.id is not None

    pressure = await browse.station_trend(session, station_id=station.id, measure=browse.TrendMeasure.pressure,
                                          grain=browse.TrendGrain.hour, start=at(10, 8), end=at(10, 11), reach=EVERYWHERE,
                                          tz=TZ)
    # From inside the 08:00 hour: only its reading at 08:30 is in the range.
    partial = await browse.station_trend(session, station_id=station.id, measure=browse.TrendMeasure.pressure,
                                         grain=browse.TrendGrain.hour, start=at(10, 8, 15), end=at(10, 10, 15),
                                         reach=EVERYWHERE, tz=TZ)

    assert [(b.start, b.end, b.samples, b.minimum, b.mean, b.maximum) for b in pressure] == [
        (at(10, 8), at(10, 9), 2, Decimal("0.3300"), Decimal("0.3400"), Decimal("0.3500")),
        (at(10, 9), at(10, 10), 0, None, None, None),
        (at(10, 10), at(10, 11), 1, Decimal("0.3100"), Decimal("0.3100"), Decimal("0.3100")),
    ]
    # to is exclusive: the reading at 10:15 is left out, its hour stays as an empty bucket.
    assert [(b.start.hour, b.samples, b.mean) for b in partial] == [
        (8, 1, Decimal("0.3300")), (9, 0, None), (10, 0, None)]


async def test_daily_trend_follows_the_zones_days(session: AsyncSession) -> None:
    _, station, _, _ = await trunk_main(session)
    assert station.id is not None

    days = await browse.station_trend(session, station_id=station.id, measure=browse.TrendMeasure.flow,
                                      grain=browse.TrendGrain.day, start=at(10, 0), end=at(12, 0), reach=EVERYWHERE,
                                      tz=TZ)

    # 00:30 on 11 March is 10 March in UTC, and 11 March here.
    assert [(b.start, b.samples, b.minimum, b.mean, b.maximum) for b in days] == [
        (at(10, 0), 4, Decimal("80.0000"), Decimal("112.5000"), Decimal("150.0000")),
        (at(11, 0), 1, Decimal("60.0000"), Decimal("60.0000"), Decimal("60.0000")),
    ]


async def test_trend_ranges_are_capped_and_a_station_out_of_reach_is_not_found(session: AsyncSession) -> None:
    east, station, _, _ = await trunk_main(session)
    assert station.id is not None
    west_only = Reach(scope_patterns=[east.path.rsplit("/", 2)[0] + "/999999/%"])

    async def trend(grain: browse.TrendGrain, start: datetime, end: datetime, reach: Reach = EVERYWHERE) -> object:
        return await browse.station_trend(session, station_id=station.id, measure=browse.TrendMeasure.flow,  # type: ignore[arg-type]
                                          grain=grain, start=start, end=end, reach=reach, tz=TZ)

    a_month = await trend(browse.TrendGrain.hour, at(1, 0), at(1, 0) + timedelta(days=31))
    with pytest.raises(DomainError) as hours:
        await trend(browse.TrendGrain.hour, at(1, 0), at(1, 0) + timedelta(days=31, seconds=1))
    with pytest.raises(DomainError) as days:
        await trend(browse.TrendGrain.day, at(1, 0), at(1, 0) + timedelta(days=367))
    with pytest.raises(DomainError) as reversed_range:
        await trend(browse.TrendGrain.day, at(2, 0), at(1, 0))
    with pytest.raises(NotFound) as hidden:
        await trend(browse.TrendGrain.day, at(1, 0), at(2, 0), reach=west_only)

    assert len(a_month) == 31 * 24  # type: ignore[arg-type]
    assert (hours.value.code, hours.value.field) == (ErrorCode.RANGE_TOO_LONG, "to")
    assert days.value.code is ErrorCode.RANGE_TOO_LONG
    assert (reversed_range.value.code, reversed_range.value.field) == (ErrorCode.INVALID, "to")
    assert hidden.value.field == "stationId"
