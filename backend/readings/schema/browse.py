"""GraphQL of 实时数据 (``realtimeReadings``), 历史数据 (``readingHistory``) and 数据监测
(``monitoringPoints``, ``monitoringHistory``). Rows are read within the caller's reach
(area scope, or a resident's own households) by :mod:`backend.readings.browse`.

``ValveState`` and ``MeterOnlineStatus`` are declared here once for the whole schema (other
readings modules import them from here); ``ReadingQuality`` comes from ``schema.entry``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives.models import MeterKind, MeterStatus, MeterType
from backend.auth.scope import reach_of
from backend.clock import utcnow
from backend.errors import BadUserInput
from backend.graphql.limits import Cost, Expensive
from backend.graphql.loaders import SessionLoader
from backend.graphql.pagination import Connection, PageRequest, selects
from backend.graphql.periods import FROM_INSTANT, TO_INSTANT
from backend.graphql.permissions import Requires, RequiresAny
from backend.graphql.relay import decode_id, encode_id
from backend.readings import browse
from backend.readings.models import ReadingQuality, ValveState
from backend.readings.schema import costs
from backend.readings.schema.entry import ReadingQualityEnum

ValveStateEnum = strawberry.enum(ValveState, name="ValveState", description="开 / 关 / 未知")
OnlineStatusEnum = strawberry.enum(
    browse.OnlineStatus, name="MeterOnlineStatus",
    description="online: a reading within the last 24 hours; offline: older; never: no reading at all.",
)

_READ = RequiresAny("readings:read", "resident:self")

# Archives' MeterKind enum, named by module path: a schema imports no other domain's schema.
MeterKindRef = Annotated["MeterKindEnum", strawberry.lazy("backend.archives.schema.types")]  # type: ignore[name-defined]  # noqa: F821
MeterStatusRef = Annotated["MeterStatusEnum", strawberry.lazy("backend.archives.schema.types")]  # type: ignore[name-defined]  # noqa: F821
MeterTypeRef = Annotated["MeterTypeEnum", strawberry.lazy("backend.archives.schema.types")]  # type: ignore[name-defined]  # noqa: F821


def _tz(info: Info) -> str:
    return str(info.context.settings.tz)


def _optional_id(value: strawberry.ID | None, type_name: str, field: str) -> int | None:
    return decode_id(value, type_name, field=field) if value else None


def _meter_code(value: str | None) -> str | None:
    """An exact meter code argument, trimmed; one no meter could have is BAD_USER_INPUT."""
    if value is None:
        return None
    if "\x00" in value or not value.strip() or len(value) > 32:
        raise BadUserInput("表计编码无效", "Invalid meter code", field="meterCode")
    return value.strip()


def _kind(value: Any) -> MeterKind:
    return MeterKind(value)


@strawberry.type(description="One meter's descriptive columns, shared by the readings screens.")
class MeterColumns:
    meter_id: strawberry.ID = strawberry.field(description="The meter's global id.")
    meter_code: str = strawberry.field(description="表计编码")
    meter_name: str = strawberry.field(description="表计名称")
    meter_address: str = strawberry.field(description="通讯地址 (the M-Bus/CJ/T 188 address)")
    meter_kind: MeterKindRef  # type: ignore[valid-type]
    area_name: str = strawberry.field(description="The meter's area (所属区域; 单位名称 of the history and statistics "
                                      "screens).")
    parent_area_name: str | None = strawberry.field(description="上级单位: the area's parent")
    household_id: strawberry.ID | None = strawberry.field(description="The household served (at read time, for history).")
    household_name: str | None = strawberry.field(description="户名")
    account_no: str | None = strawberry.field(description="户号")
    household_address: str | None = strawberry.field(description="住址")


def _descriptive(row: Mapping[str, Any]) -> dict[str, Any]:
    household_id = row["household_id"]
    return {
        "meter_id": encode_id("Meter", row["meter_id"]), "meter_code": row["meter_code"], "meter_name": row["meter_name"],
        "meter_address": row["meter_address"], "meter_kind": _kind(row["meter_kind"]), "area_name": row["area_name"],
        "parent_area_name": row["parent_area_name"],
        "household_id": encode_id("Household", household_id) if household_id is not None else None,
        "household_name": row["household_name"], "account_no": row["account_no"],
        "household_address": row["household_address"],
    }


def _reading(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "read_at": row["read_at"], "total_m3": row["total_m3"], "flow_rate": row["flow_rate"], "pressure": row["pressure"],
        "valve_state": ValveState(row["valve_state"]) if row["valve_state"] else None,
        "battery": row["battery"], "status_bits": row["status_bits"],
        "quality": ReadingQuality(row["quality"]) if row["quality"] else None,
    }


@strawberry.type(description="实时数据: a meter and its latest reading (none yet: reading fields are null).")
class RealtimeReading(MeterColumns):
    room_label: str | None = strawberry.field(description="The household's 楼-单元-房间 (1-1-0101), null without a room "
                                              "(Household.roomLabel).")
    unit_name: str = strawberry.field(description="单位名称 as 实时数据 shows it: the household's community and room label "
                                      "(翠湖小区1-1-0101); the meter's area name when no room is known.")
    read_at: datetime | None = strawberry.field(description="抄表时间")
    total_m3: Decimal | None = strawberry.field(description="累积流量 (t = m³)")
    flow_rate: Decimal | None = strawberry.field(description="瞬时流量, m³/h")
    pressure: Decimal | None = strawberry.field(description="压力, MPa")
    valve_state: ValveStateEnum | None  # type: ignore[valid-type]
    battery: Decimal | None = strawberry.field(description="电池电压, V")
    status_bits: int | None = strawberry.field(description="状态字 (ST) as the meter sent it")
    quality: ReadingQualityEnum | None = strawberry.field(  # type: ignore[valid-type]
        description="数据质量 of the latest reading (the export's column of that title)")
    online_status: OnlineStatusEnum  # type: ignore[valid-type]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RealtimeReading:
        return cls(**_descriptive(row), **_reading(row), online_status=browse.OnlineStatus(row["online_status"]),
                   room_label=row["room_label"], unit_name=row["unit_name"])


@strawberry.type(description="历史数据: one stored reading of a meter.")
class HistoryReading(MeterColumns):
    read_at: datetime = strawberry.field(description="抄表时间")
    total_m3: Decimal = strawberry.field(description="累积流量 (t = m³)")
    flow_rate: Decimal | None = strawberry.field(description="瞬时流量, m³/h")
    pressure: Decimal | None = strawberry.field(description="压力, MPa")
    valve_state: ValveStateEnum | None  # type: ignore[valid-type]
    battery: Decimal | None = strawberry.field(description="电池电压, V")
    status_bits: int | None = strawberry.field(description="状态字 (ST) as the meter sent it")
    quality: ReadingQualityEnum = strawberry.field(  # type: ignore[valid-type]
        description="数据质量 (the export's column of that title)")
    source: str = strawberry.field(description="Where the reading came from (patrol, manual, upload…)")
    received_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> HistoryReading:
        return cls(**_descriptive(row), **_reading(row), source=row["source"], received_at=row["received_at"])


@strawberry.input(description="Filters of 实时数据; all optional and combined with AND.")
class RealtimeFilter:
    area_id: strawberry.ID | None = strawberry.field(default=None, description="The area and its whole subtree.")
    household_id: strawberry.ID | None = None
    meter_id: strawberry.ID | None = None
    concentrator_id: strawberry.ID | None = None
    meter_code: str | None = strawberry.field(default=None, description="Meter codes starting with this.")
    kind: MeterKindRef | None = None  # type: ignore[valid-type]
    status: OnlineStatusEnum | None = None  # type: ignore[valid-type]
    meter_statuses: list[MeterStatusRef] | None = strawberry.field(  # type: ignore[valid-type]
        default=None, description="The meters' statuses; null or empty: installed and faulty only, so meters in "
        "stock or retired are neither listed nor counted unless asked for.")
    search: str | None = strawberry.field(
        default=None, description=f"户名 / 户号 / 地址 / 单位名称 (unitName, e.g. 1-1-0101) of the household served "
        f"containing this text, literally "
        f"(no wildcards), in any case; at most {browse.MAX_SEARCH_LENGTH} characters.")

    def to_service(self) -> browse.RealtimeFilter:
        if self.meter_code is not None and ("\x00" in self.meter_code or len(self.meter_code) > 32):
            raise BadUserInput("表计编码无效", "Invalid meter code", field="meterCode")
        if self.search is not None and ("\x00" in self.search or len(self.search) > browse.MAX_SEARCH_LENGTH):
            raise BadUserInput(f"搜索内容不能超过 {browse.MAX_SEARCH_LENGTH} 个字符",
                               f"The search text cannot exceed {browse.MAX_SEARCH_LENGTH} characters", field="search")
        return browse.RealtimeFilter(
            area_id=_optional_id(self.area_id, "Area", "areaId"),
            household_id=_optional_id(self.household_id, "Household", "householdId"),
            meter_id=_optional_id(self.meter_id, "Meter", "meterId"),
            concentrator_id=_optional_id(self.concentrator_id, "Concentrator", "concentratorId"),
            meter_code=(self.meter_code or "").strip() or None,
            kind=MeterKind(self.kind) if self.kind is not None else None,
            status=browse.OnlineStatus(self.status) if self.status is not None else None,
            meter_statuses=tuple(MeterStatus(status) for status in self.meter_statuses or ()),
            search=(self.search or "").strip() or None,
        )


@strawberry.input(description="Filters of 历史数据: a time range of at most 366 days plus meters or a place.")
class HistoryFilter:
    start: datetime = strawberry.field(name="from", description=f"Readings {FROM_INSTANT}.")
    end: datetime = strawberry.field(name="to", description=f"Readings {TO_INSTANT}.")
    meter_ids: list[strawberry.ID] | None = strawberry.field(default=None, description="At most 1000 meters.")
    area_id: strawberry.ID | None = None
    household_id: strawberry.ID | None = strawberry.field(
        default=None, description="Readings taken while a meter served this household.")
    concentrator_id: strawberry.ID | None = None
    qualities: list[ReadingQualityEnum] | None = None  # type: ignore[valid-type]
    meter_code: str | None = strawberry.field(
        default=None, description="One meter by its exact code (表计编码), instead of meterIds (not both: "
        "BAD_USER_INPUT); a code outside your reach is NOT_FOUND like an id.")

    def to_service(self) -> browse.HistoryFilter:
        return browse.HistoryFilter(
            start=self.start, end=self.end,
            meter_ids=tuple(decode_id(pk, "Meter", field="meterIds") for pk in self.meter_ids or ()),
            area_id=_optional_id(self.area_id, "Area", "areaId"),
            household_id=_optional_id(self.household_id, "Household", "householdId"),
            concentrator_id=_optional_id(self.concentrator_id, "Concentrator", "concentratorId"),
            qualities=tuple(ReadingQuality(q) for q in self.qualities or ()),
            meter_code=_meter_code(self.meter_code),
        )


@strawberry.type(description="One local day's volume of a meter.")
class DailyVolume:
    day: date
    volume_m3: Decimal | None = strawberry.field(description="m³ used that day; null when the meter sent nothing.")


class DailyVolumesLoader(SessionLoader[tuple[int, int], list[browse.DailyVolume]]):
    """``(meter_id, days)`` -> the series; one query per distinct ``days`` in the request."""

    missing: Any = []

    async def fetch(self, session: AsyncSession, keys: Sequence[tuple[int, int]]) -> Mapping[tuple[int, int], list[browse.DailyVolume]]:
        now, tz = utcnow(), str(self.context.settings.tz)
        found: dict[tuple[int, int], list[browse.DailyVolume]] = {}
        for days in sorted({days for _, days in keys}):
            meter_ids = sorted({pk for pk, d in keys if d == days})
            series = await browse.daily_volumes(session, meter_ids=meter_ids, days=days, now=now, tz=tz)
            found.update({(pk, days): values for pk, values in series.items()})
        return found


@strawberry.type(description="数据监测: a monitoring point (a trunk main's flow meter or pressure gauge) and its figures.")
class MonitoringPoint:
    id: strawberry.ID = strawberry.field(description="The meter's global id.")
    code: str
    name: str
    area_name: str
    meter_type: MeterTypeRef = strawberry.field(  # type: ignore[valid-type]
        description="What it measures: flow_monitor flow (its register and m³/h), pressure_monitor pressure (MPa; its "
        "totalM3 is 0).")
    location: str | None = strawberry.field(description="Where it is installed (安装位置).")
    station_id: strawberry.ID | None = strawberry.field(description="The monitoring station it belongs to; null for none.")
    station_name: str | None = strawberry.field(description="监测站名称")
    year_volume_m3: Decimal = strawberry.field(description="本年累计: m³ since 1 January (utility's zone).")
    year_volume_10k_m3: Decimal = strawberry.field(description="本年累计 in 万m³ (÷10000), four places.")
    flow_rate: Decimal | None = strawberry.field(description="瞬时流量, m³/h (latest reading)")
    pressure: Decimal | None = strawberry.field(description="压力, MPa (latest reading)")
    read_at: datetime | None = strawberry.field(description="Time of the latest reading")
    total_m3: Decimal | None = strawberry.field(description="累积流量 of the latest reading")
    pk: strawberry.Private[int]

    @strawberry.field(description="Daily volumes of the last `days` local days (today included), oldest first.",
                      extensions=[Cost(items=costs.daily_flow_items)])
    async def daily_flow(self, info: Info, days: int = 30) -> list[DailyVolume]:
        if not 1 <= days <= browse.MAX_DAILY_DAYS:
            raise BadUserInput(f"天数须在 1 到 {browse.MAX_DAILY_DAYS} 之间",
                               f"days must be between 1 and {browse.MAX_DAILY_DAYS}", field="days")
        series = await info.context.loader(DailyVolumesLoader).load((self.pk, days))
        return [DailyVolume(day=item.day, volume_m3=item.volume_m3) for item in series]

    @classmethod
    def from_point(cls, point: browse.MonitoringPoint) -> MonitoringPoint:
        return cls(id=encode_id("Meter", point.meter_id), code=point.code, name=point.name, area_name=point.area_name,
                   meter_type=MeterType(point.meter_type), location=point.location,
                   station_id=encode_id("MonitoringStation", point.station_id) if point.station_id is not None else None,
                   station_name=point.station_name, year_volume_m3=point.year_volume_m3, year_volume_10k_m3=point.year_volume_10k_m3,
                   flow_rate=point.flow_rate, pressure=point.pressure, read_at=point.read_at, total_m3=point.total_m3,
                   pk=point.meter_id)


def _connection(page: browse.Page, to_node: Any) -> Connection[Any]:
    nodes = [to_node(row) for row in page.rows]
    total = page.total if page.total is not None else page.offset + len(nodes) + int(page.more)
    connection = Connection.from_page(nodes, total=total, offset=page.offset)
    connection.page_info.has_next_page = page.more
    return connection


@strawberry.type
class Query:
    @strawberry.field(
        permission_classes=[_READ],
        description="实时数据: meters in your reach with their latest reading, by area and meter code. "
        "A resident sees their own households' meters. A filter id outside your reach is NOT_FOUND.",
    )
    async def realtime_readings(
        self, info: Info, filter: RealtimeFilter | None = None, first: int | None = None, after: str | None = None,
        last: int | None = None, before: str | None = None,
    ) -> Connection[RealtimeReading]:
        page = PageRequest.from_args(first, after, last, before)
        flt = filter.to_service() if filter is not None else browse.RealtimeFilter()
        async with info.context.read() as session:
            found = await browse.realtime_page(
                session, flt=flt, reach=reach_of(info.context.caller), now=utcnow(), offset=page.offset,
                limit=page.limit, count=selects(info, "totalCount"),
            )
        return _connection(found, RealtimeReading.from_row)

    @strawberry.field(
        permission_classes=[_READ],
        description="历史数据: readings in [from, to) (at most 366 days, else RANGE_TOO_LONG), newest first.",
        extensions=[Expensive(weight=costs.history)],
    )
    async def reading_history(
        self, info: Info, filter: HistoryFilter, first: int | None = None, after: str | None = None,
        last: int | None = None, before: str | None = None,
    ) -> Connection[HistoryReading]:
        page = PageRequest.from_args(first, after, last, before)
        async with info.context.read() as session:
            found = await browse.history_page(
                session, flt=filter.to_service(), reach=reach_of(info.context.caller), offset=page.offset,
                limit=page.limit, count=selects(info, "totalCount"),
            )
        return _connection(found, HistoryReading.from_row)

    @strawberry.field(
        permission_classes=[Requires("monitoring:read")],
        description="数据监测: monitoring points in your scope (optionally one area's subtree) with this year's "
        "volume, latest flow and pressure; `dailyFlow` for all points is one query.",
        extensions=[Expensive(weight=costs.MONITORING_POINTS)],
    )
    async def monitoring_points(self, info: Info, area_id: strawberry.ID | None = None) -> list[MonitoringPoint]:
        async with info.context.read() as session:
            points = await browse.monitoring_points(
                session, reach=reach_of(info.context.caller), area_id=_optional_id(area_id, "Area", "areaId"),
                now=utcnow(), tz=_tz(info),
            )
        return [MonitoringPoint.from_point(point) for point in points]

    @strawberry.field(
        permission_classes=[Requires("monitoring:read")],
        description="Readings of one monitoring point in [from, to) (at most 366 days), newest first. The point is "
        "named by exactly one of meterId and meterCode (表计编码), else BAD_USER_INPUT.",
        extensions=[Expensive(weight=costs.monitoring_history)],
    )
    async def monitoring_history(
        self, info: Info, start: Annotated[datetime, strawberry.argument(name="from", description=f"Readings {FROM_INSTANT}.")],
        end: Annotated[datetime, strawberry.argument(name="to", description=f"Readings {TO_INSTANT}.")],
        meter_id: strawberry.ID | None = None,
        meter_code: str | None = None, first: int | None = None, after: str | None = None,
        last: int | None = None, before: str | None = None,
    ) -> Connection[HistoryReading]:
        page = PageRequest.from_args(first, after, last, before)
        async with info.context.read() as session:
            found = await browse.monitoring_history(
                session, meter_id=_optional_id(meter_id, "Meter", "meterId"), meter_code=_meter_code(meter_code),
                start=start, end=end,
                reach=reach_of(info.context.caller), offset=page.offset, limit=page.limit,
                count=selects(info, "totalCount"),
            )
        return _connection(found, HistoryReading.from_row)
