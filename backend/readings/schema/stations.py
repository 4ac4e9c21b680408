"""GraphQL of 数据监测 by station: ``monitoringStations`` (each station, 东/南/西/北干管网
side by side, with its year volume, instantaneous flow and pressure) and ``stationTrend``
(flow or pressure by hour or day with least, mean and greatest value). The stations and
their instruments are archives (backend.archives.service.stations); the figures are
read here by :mod:`backend.readings.browse`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated

import strawberry
from strawberry.types import Info

from backend.auth.scope import reach_of
from backend.clock import utcnow
from backend.graphql.limits import Expensive
from backend.graphql.periods import FROM_INSTANT, TO_INSTANT
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id, encode_id
from backend.readings import browse
from backend.readings.schema import costs
from backend.readings.schema.browse import MonitoringPoint

StationKindRef = Annotated["StationKindEnum", strawberry.lazy("backend.archives.schema.types")]  # type: ignore[name-defined]  # noqa: F821


@strawberry.enum(name="StationMeasure", description="FLOW: 瞬时流量 of the flow meters (m³/h); PRESSURE: 压力 of the "
                 "pressure gauges (MPa)")
class StationMeasureEnum(Enum):
    FLOW = "flow"
    PRESSURE = "pressure"


@strawberry.enum(name="TrendGrain", description="小时 / 日 of the utility's time zone")
class TrendGrainEnum(Enum):
    HOUR = "hour"
    DAY = "day"


_UNITS = {browse.TrendMeasure.flow: "m³/h", browse.TrendMeasure.pressure: "MPa"}


@strawberry.type(description="数据监测: a monitoring station (a trunk main, a pump station …) with its figures. The "
                             "station's archive record is node(id:) (MonitoringStation).")
class MonitoringStationFigures:
    id: strawberry.ID = strawberry.field(description="The station's global id (MonitoringStation).")
    code: str = strawberry.field(description="监测站编码")
    name: str = strawberry.field(description="监测站名称")
    kind: StationKindRef  # type: ignore[valid-type]
    area_name: str = strawberry.field(description="单位名称: the station's area")
    location: str | None
    year_volume_m3: Decimal = strawberry.field(
        description="本年累计: m³ through its flow instruments since 1 January (utility's zone), each counted as "
        "MonitoringPoint.yearVolumeM3.")
    year_volume_10k_m3: Decimal = strawberry.field(description="本年累计 in 万m³ (÷10000), four places.")
    flow_rate: Decimal | None = strawberry.field(
        description="瞬时流量, m³/h: the newest reading of a flow instrument that carries one; null without.")
    flow_read_at: datetime | None = strawberry.field(description="When that flow was read.")
    pressure: Decimal | None = strawberry.field(
        description="压力, MPa: the newest reading of a pressure gauge that carries one; null without.")
    pressure_read_at: datetime | None = strawberry.field(description="When that pressure was read.")
    instruments: list[MonitoringPoint] = strawberry.field(
        description="Its instruments (retired ones included), flow meters first, then by code.")

    @classmethod
    def from_figures(cls, station: browse.StationFigures) -> MonitoringStationFigures:
        (flow, flow_at), (pressure, pressure_at) = station.flow, station.pressure
        return cls(
            id=encode_id("MonitoringStation", station.station_id), code=station.code, name=station.name,
            kind=station.kind, area_name=station.area_name, location=station.location,
            year_volume_m3=station.year_volume_m3, year_volume_10k_m3=station.year_volume_10k_m3, flow_rate=flow,
            flow_read_at=flow_at, pressure=pressure, pressure_read_at=pressure_at,
            instruments=[MonitoringPoint.from_point(point) for point in station.instruments],
        )


@strawberry.type(description="One hour or day of a trend, [start, end): the readings that carried the measure there. "
                             "No reading: samples 0 and null figures (gaps are never filled in).")
class TrendBucket:
    start: datetime
    end: datetime
    samples: int = strawberry.field(description="How many readings carried the measure.")
    min: Decimal | None
    mean: Decimal | None = strawberry.field(description="Arithmetic mean of the readings, four places (half up).")
    max: Decimal | None


@strawberry.type(description="A station's flow or pressure by hour or day.")
class StationTrend:
    station_id: strawberry.ID
    measure: StationMeasureEnum
    grain: TrendGrainEnum
    unit: str = strawberry.field(description="m³/h for flow, MPa for pressure.")
    buckets: list[TrendBucket] = strawberry.field(description="Every hour or day the range touches, oldest first.")


@strawberry.type
class Query:
    @strawberry.field(
        permission_classes=[Requires("monitoring:read")],
        description="数据监测 by station: the monitoring stations in your scope (optionally one area's subtree), by "
        "area and code, each with this year's volume, its newest flow and pressure and its instruments. One "
        "statement for the whole list.",
        extensions=[Expensive(weight=costs.MONITORING_POINTS)],
    )
    async def monitoring_stations(self, info: Info, area_id: strawberry.ID | None = None) -> list[MonitoringStationFigures]:
        async with info.context.read() as session:
            stations = await browse.monitoring_stations(
                session, reach=reach_of(info.context.caller),
                area_id=decode_id(area_id, "Area", field="areaId") if area_id else None,
                now=utcnow(), tz=str(info.context.settings.tz),
            )
        return [MonitoringStationFigures.from_figures(station) for station in stations]

    @strawberry.field(
        permission_classes=[Requires("monitoring:read")],
        description="A station's flow (its flow meters) or pressure (its pressure gauges) by hour or day of the "
        "utility's zone over [from, to): at most 31 days by hour, 366 by day (RANGE_TOO_LONG). Each hour or day "
        "the range touches is a bucket (the first and last cover only their part inside the range); raw readings "
        "are monitoringHistory.",
        extensions=[Expensive(weight=costs.station_trend)],
    )
    async def station_trend(
        self, info: Info, station_id: strawberry.ID, measure: StationMeasureEnum, grain: TrendGrainEnum,
        start: Annotated[datetime, strawberry.argument(name="from", description=f"Readings {FROM_INSTANT}.")],
        end: Annotated[datetime, strawberry.argument(name="to", description=f"Readings {TO_INSTANT}.")],
    ) -> StationTrend:
        async with info.context.read() as session:
            buckets = await browse.station_trend(
                session, station_id=decode_id(station_id, "MonitoringStation", field="stationId"),
                measure=browse.TrendMeasure(measure.value), grain=browse.TrendGrain(grain.value), start=start, end=end,
                reach=reach_of(info.context.caller), tz=str(info.context.settings.tz),
            )
        return StationTrend(
            station_id=station_id, measure=measure, grain=grain, unit=_UNITS[browse.TrendMeasure(measure.value)],
            buckets=[TrendBucket(start=b.start, end=b.end, samples=b.samples, min=b.minimum, mean=b.mean, max=b.maximum)
                     for b in buckets],
        )
