"""Browsing readings: real-time data (实时数据), history (历史数据), monitoring points and
stations with their trends (数据监测), for the GraphQL screens and their Excel exports alike.

Every query applies the caller's :class:`Reach` inside the SQL that fetches the rows: a
staff member or API client sees meters whose area path matches their scope patterns, a
resident only the meters of their own households (for history: readings taken while the
meter served one of them). A page is one statement plus one count, whatever its size.

A row's household columns (name, account number, address) show only a household whose
own area lies in the caller's scope. A meter serves only households in its area's
subtree (backend.archives.service), so this masks nothing unless a row from before that
rule breaks it; then the reading stays visible and its household reads as none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import MeterKind, MeterStatus
from backend.archives.service import room_label_sql, unit_name_sql
from backend.auth.scope import Reach
from backend.errors import DomainError, ErrorCode, NotFound
from backend.readings.models import ReadingQuality
from backend.readings.screens import (
    AREA_NAME_COLUMN,
    FOUR_PLACES_FORMAT,
    HOLDER_COLUMNS,
    TIME_FORMAT,
    ExportRequest,
    Screen,
    ScreenColumn,
    ScreenKind,
    filter_choice,
    filter_choices,
    filter_datetime,
    filter_id,
    filter_ids,
    filter_text,
    local_time,
    register_screen,
)
from backend.readings.usage import interval_boundaries

ONLINE_WINDOW = timedelta(hours=24)
# Online means the meter itself reported lately: an estimate (or a reading someone typed
# in) says nothing about its link, so it keeps an otherwise quiet meter offline.
_ONLINE = "lr.read_at >= :online_since AND lr.quality = 'actual'"
MAX_HISTORY_DAYS = 366
# The meters a worklist is about by default: those in service. A meter in stock or retired
# reports nothing by design, so listing it (as offline) would only bury the real silences.
IN_SERVICE = (MeterStatus.installed, MeterStatus.faulty)
MAX_SEARCH_LENGTH = 100
MAX_DAILY_DAYS = 366
TEN_THOUSAND = Decimal(10000)
_FOUR_PLACES = Decimal("0.0001")


class OnlineStatus(StrEnum):
    """Whether a meter reported lately: within :data:`ONLINE_WINDOW`, before, or never."""

    online = "online"
    offline = "offline"
    never = "never"


@dataclass(frozen=True, slots=True)
class RealtimeFilter:
    area_id: int | None = None  # the area's whole subtree
    household_id: int | None = None
    meter_id: int | None = None
    concentrator_id: int | None = None
    meter_code: str | None = None  # prefix
    kind: MeterKind | None = None
    status: OnlineStatus | None = None
    # The meters' life-cycle statuses; empty: :data:`IN_SERVICE`.
    meter_statuses: tuple[MeterStatus, ...] = ()
    # Literal text, any case, within the household's name (户名), account number (户号),
    # address or unit name (单位名称, its room label included: 翠湖小区1-1-0101).
    search: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    start: datetime
    end: datetime
    meter_ids: tuple[int, ...] = ()
    area_id: int | None = None
    household_id: int | None = None
    concentrator_id: int | None = None
    qualities: tuple[ReadingQuality, ...] = ()
    kind: MeterKind | None = None
    meter_code: str | None = None  # one meter by its exact code (表计编码), instead of meter_ids


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Mapping[str, Any]]
    total: int | None  # None: not counted
    more: bool
    offset: int  # of the first row (a negative request offset resolved against the total)


@dataclass(frozen=True, slots=True)
class DailyVolume:
    day: date
    volume_m3: Decimal | None  # None: no reading that day


def ten_thousands(volume_m3: Decimal) -> Decimal:
    """A volume in 万m³, four places."""
    return (volume_m3 / TEN_THOUSAND).quantize(_FOUR_PLACES)


@dataclass(frozen=True, slots=True)
class MonitoringPoint:
    meter_id: int
    code: str
    name: str
    area_name: str
    year_volume_m3: Decimal
    flow_rate: Decimal | None
    pressure: Decimal | None
    read_at: datetime | None
    total_m3: Decimal | None
    meter_type: str = "flow_monitor"
    location: str | None = None
    station_id: int | None = None
    station_name: str | None = None
    daily: list[DailyVolume] = field(default_factory=list)

    @property
    def year_volume_10k_m3(self) -> Decimal:
        """This year's volume in 万m³, four places."""
        return ten_thousands(self.year_volume_m3)


@dataclass(frozen=True, slots=True)
class StationFigures:
    """数据监测 of one monitoring station: this year's volume of its flow instruments, the
    newest flow of a flow instrument and the newest pressure of a pressure gauge, each
    with its reading time, and every instrument as a :class:`MonitoringPoint`."""

    station_id: int
    code: str
    name: str
    kind: str
    area_name: str
    location: str | None
    instruments: list[MonitoringPoint]

    @property
    def flow_points(self) -> list[MonitoringPoint]:
        return [point for point in self.instruments if point.meter_type == "flow_monitor"]

    @property
    def year_volume_m3(self) -> Decimal:
        return sum((point.year_volume_m3 for point in self.flow_points), Decimal(0)).quantize(_FOUR_PLACES)

    @property
    def year_volume_10k_m3(self) -> Decimal:
        return ten_thousands(self.year_volume_m3)

    def _newest(self, meter_type: str, value: str) -> tuple[Decimal | None, datetime | None]:
        read = [(point.read_at, getattr(point, value)) for point in self.instruments
                if point.meter_type == meter_type and point.read_at is not None and getattr(point, value) is not None]
        if not read:
            return None, None
        read_at, figure = max(read, key=lambda pair: pair[0])
        return figure, read_at

    @property
    def flow(self) -> tuple[Decimal | None, datetime | None]:
        """瞬时流量 (m³/h) and its time: the newest reading of a flow instrument that carries one."""
        return self._newest("flow_monitor", "flow_rate")

    @property
    def pressure(self) -> tuple[Decimal | None, datetime | None]:
        """压力 (MPa) and its time: the newest reading of a pressure gauge that carries one."""
        return self._newest("pressure_monitor", "pressure")


class TrendMeasure(StrEnum):
    """What a station's trend follows: the flow rate (m³/h) its flow instruments report,
    or the pressure (MPa) its pressure gauges report."""

    flow = "flow"
    pressure = "pressure"


class TrendGrain(StrEnum):
    hour = "hour"
    day = "day"


# The longest range of each grain: a month of hours (744 points), a year of days.
MAX_TREND_DAYS = {TrendGrain.hour: 31, TrendGrain.day: MAX_HISTORY_DAYS}
_TREND_TYPE = {TrendMeasure.flow: "flow_monitor", TrendMeasure.pressure: "pressure_monitor"}
_TREND_COLUMN = {TrendMeasure.flow: "flow_rate", TrendMeasure.pressure: "pressure"}


@dataclass(frozen=True, slots=True)
class TrendBucket:
    """One hour or day of a trend, ``[start, end)``: how many readings carried the measure
    there and their least, mean (four places, half up) and greatest value; no reading,
    no figures (``samples`` 0, the others ``None``: a gap is never filled in)."""

    start: datetime
    end: datetime
    samples: int
    minimum: Decimal | None
    mean: Decimal | None
    maximum: Decimal | None


class RangeTooLong(DomainError):
    code = ErrorCode.RANGE_TOO_LONG
    message = f"查询时间范围不能超过 {MAX_HISTORY_DAYS} 天"
    message_en = f"The time range cannot exceed {MAX_HISTORY_DAYS} days"


class RangeInvalid(DomainError):
    code = ErrorCode.INVALID
    message = "结束时间须晚于开始时间"
    message_en = "The end must be after the start"


# --------------------------------------------------------------------------- SQL pieces

# The descriptive columns every row of these screens carries.
_DESCRIPTIVE = """
    m.id AS meter_id, m.code AS meter_code, m.name AS meter_name, m.address AS meter_address,
    m.kind AS meter_kind, a.name AS area_name, pa.name AS parent_area_name,
    h.id AS household_id, h.name AS household_name, h.account_no, h.address AS household_address"""
_AREAS = "JOIN areas a ON a.id = m.area_id LEFT JOIN areas pa ON pa.id = a.parent_id"


def _household_join(reach: Reach) -> str:
    """The household of assignment ``ma``, masked (a NULL row) when its own area lies
    outside the reach's scope (``:patterns``, bound by :func:`_reach_conditions`)."""
    if reach.area_patterns() is None:
        return "LEFT JOIN households h ON h.id = ma.household_id"
    return ("LEFT JOIN households h ON h.id = ma.household_id "
            "AND EXISTS (SELECT FROM areas ha WHERE ha.id = h.area_id AND ha.path LIKE ANY(:patterns))")


def _reach_conditions(reach: Reach, params: dict[str, Any], *, household: str) -> list[str]:
    conditions: list[str] = []
    if reach.household_ids is not None:
        params["reach_households"] = list(reach.household_ids)
        conditions.append(f"{household} = ANY(:reach_households)")
    if (patterns := reach.area_patterns()) is not None:
        params["patterns"] = patterns
        conditions.append("a.path LIKE ANY(:patterns)")
    return conditions


async def _check_visible(session: AsyncSession, reach: Reach, **ids: tuple[str, int | None]) -> None:
    """NOT_FOUND (on the filter's field) for a filtered object outside the caller's reach,
    so a foreign id never reads as an empty list. One statement for all of them."""
    checks: list[str] = []
    patterns = reach.area_patterns()
    params: dict[str, Any] = {"patterns": patterns or [], "households": list(reach.household_ids or [])}
    scope = "TRUE" if patterns is None else "a.path LIKE ANY(:patterns)"
    resident = reach.household_ids is not None
    for name, (_, pk) in ids.items():
        if pk is None:
            continue
        params[name] = pk
        if name == "meter_id":
            own = ("EXISTS (SELECT 1 FROM meter_assignments x WHERE x.meter_id = m.id "
                   "AND x.household_id = ANY(:households))") if resident else "TRUE"
            sql = f"EXISTS (SELECT 1 FROM meters m {_AREAS} WHERE m.id = :meter_id AND {scope} AND {own})"
        elif name == "household_id":
            own = "h.id = ANY(:households)" if resident else "TRUE"
            sql = f"EXISTS (SELECT 1 FROM households h JOIN areas a ON a.id = h.area_id WHERE h.id = :household_id AND {scope} AND {own})"
        elif name == "area_id":
            sql = "FALSE" if resident else f"EXISTS (SELECT 1 FROM areas a WHERE a.id = :area_id AND {scope})"
        else:
            sql = ("FALSE" if resident else
                   f"EXISTS (SELECT 1 FROM concentrators c JOIN areas a ON a.id = c.area_id WHERE c.id = :concentrator_id AND {scope})")
        checks.append(f"{sql} AS {name}")
    if not checks:
        return
    found = (await session.execute(text(f"SELECT {', '.join(checks)}"), params)).mappings().one()
    for name, (field_name, _) in ids.items():
        if name in found and not found[name]:
            raise NotFound(field=field_name)


def _contains(search: str) -> str:
    """A LIKE pattern matching ``search`` literally anywhere (``%``, ``_`` and ``\\`` escaped)."""
    return "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _subtree(params: dict[str, Any], area_id: int) -> str:
    params["area_id"] = area_id
    return "starts_with(a.path, (SELECT s.path FROM areas s WHERE s.id = :area_id))"


def _meter_conditions(
    params: dict[str, Any], *, area_id: int | None, household_id: int | None, concentrator_id: int | None,
    kind: MeterKind | None,
) -> list[str]:
    """The filters the real-time and history screens share: the area's subtree, the
    household (``h``), the concentrator and the kind of the meter (``m``)."""
    where: list[str] = []
    if area_id is not None:
        where.append(_subtree(params, area_id))
    if household_id is not None:
        params["household_id"] = household_id
        where.append("h.id = :household_id")
    if concentrator_id is not None:
        params["concentrator_id"] = concentrator_id
        where.append("m.concentrator_id = :concentrator_id")
    if kind is not None:
        params["kind"] = kind.value
        where.append("m.kind = :kind")
    return where


async def _page(session: AsyncSession, sql: str, count_sql: str, params: dict[str, Any], *, offset: int, limit: int,
                count: bool) -> Page:
    total: int | None = None
    if count or offset < 0:
        total = int((await session.execute(text(count_sql), params)).scalar_one())
        if offset < 0:
            offset = max(0, total + offset)
    if limit <= 0:
        return Page([], total, total is not None and offset < total, offset)
    rows = (await session.execute(text(f"{sql} OFFSET :_offset LIMIT :_limit"),
                                  {**params, "_offset": offset, "_limit": limit + 1})).mappings().all()
    return Page([dict(row) for row in rows[:limit]], total, len(rows) > limit, offset)


async def _stream(session: AsyncSession, sql: str, params: dict[str, Any]) -> AsyncIterator[Mapping[str, Any]]:
    result = await session.stream(text(sql).execution_options(yield_per=1000), params)
    async for row in result.mappings():
        yield dict(row)


# --------------------------------------------------------------------------- real-time

# The served household's room label (1-1-0101) and unit name (翠湖小区1-1-0101), by the
# archives' one rule (backend.archives.service.rooms); null without a room.
_ROOM_LABEL = room_label_sql("room_area", "h.room")
_UNIT_NAME = unit_name_sql("room_area", "h.room")


def _realtime_sql(flt: RealtimeFilter, reach: Reach, now: datetime) -> tuple[str, str, dict[str, Any]]:
    params: dict[str, Any] = {"online_since": now - ONLINE_WINDOW}
    where = _reach_conditions(reach, params, household="h.id")
    where += _meter_conditions(params, area_id=flt.area_id, household_id=flt.household_id,
                               concentrator_id=flt.concentrator_id, kind=flt.kind)
    if flt.meter_id is not None:
        params["meter_id"] = flt.meter_id
        where.append("m.id = :meter_id")
    if flt.meter_code:
        params["code_prefix"] = flt.meter_code
        where.append("starts_with(m.code, :code_prefix)")
    params["meter_statuses"] = [status.value for status in flt.meter_statuses or IN_SERVICE]
    where.append("m.status = ANY(:meter_statuses)")
    if flt.search:
        params["search"] = _contains(flt.search)
        where.append("(" + " OR ".join(f"{column} ILIKE :search ESCAPE '\\'"
                                       for column in ("h.name", "h.account_no", "h.address", _UNIT_NAME)) + ")")
    if flt.status is OnlineStatus.never:
        where.append("lr.meter_id IS NULL")
    elif flt.status is OnlineStatus.online:
        where.append(f"({_ONLINE})")
    elif flt.status is OnlineStatus.offline:
        where.append(f"lr.meter_id IS NOT NULL AND NOT ({_ONLINE})")
    joins = f"""
        FROM meters m {_AREAS}
        LEFT JOIN meter_assignments ma ON ma.meter_id = m.id AND ma.valid_to IS NULL
        {_household_join(reach)}
        LEFT JOIN areas room_area ON room_area.id = h.area_id
        LEFT JOIN latest_readings lr ON lr.meter_id = m.id
        WHERE {" AND ".join(where) or "TRUE"}"""
    sql = f"""SELECT {_DESCRIPTIVE},
        {_ROOM_LABEL} AS room_label, COALESCE({_UNIT_NAME}, a.name) AS unit_name,
        lr.read_at, lr.total_m3, lr.flow_rate, lr.pressure, lr.valve_state, lr.battery, lr.status_bits, lr.quality,
        CASE WHEN lr.meter_id IS NULL THEN 'never' WHEN {_ONLINE} THEN 'online' ELSE 'offline' END
            AS online_status
        {joins}
        ORDER BY a.path, m.code, m.id"""
    return sql, f"SELECT count(*) {joins}", params


async def realtime_page(
    session: AsyncSession, *, flt: RealtimeFilter, reach: Reach, now: datetime, offset: int, limit: int,
    count: bool = True,
) -> Page:
    """One page of meters with their latest reading (实时数据), by area path and meter code:
    only meters whose status is among ``flt.meter_statuses`` (by default installed or
    faulty, :data:`IN_SERVICE`), so stock and retired meters neither show nor count as
    offline unless asked for. ``flt.search`` matches the served household's name, account
    number, address or unit name literally, in any case. Rows carry the household's
    ``room_label`` (1-1-0101) and the ``unit_name`` the screen shows as 单位名称 (the
    community and the room label; the meter's area name when no room is known). A filter
    naming a meter, household, area or concentrator outside the reach is NOT_FOUND."""
    await _check_visible(session, reach, meter_id=("meterId", flt.meter_id), household_id=("householdId", flt.household_id),
                         area_id=("areaId", flt.area_id), concentrator_id=("concentratorId", flt.concentrator_id))
    sql, count_sql, params = _realtime_sql(flt, reach, now)
    return await _page(session, sql, count_sql, params, offset=offset, limit=limit, count=count)


async def realtime_rows(session: AsyncSession, *, flt: RealtimeFilter, reach: Reach, now: datetime) -> AsyncIterator[Mapping[str, Any]]:
    """Every row :func:`realtime_page` would page through, streamed (for exports)."""
    await _check_visible(session, reach, meter_id=("meterId", flt.meter_id), household_id=("householdId", flt.household_id),
                         area_id=("areaId", flt.area_id), concentrator_id=("concentratorId", flt.concentrator_id))
    sql, _, params = _realtime_sql(flt, reach, now)
    async for row in _stream(session, sql, params):
        yield row


# --------------------------------------------------------------------------- history


def check_range(start: datetime, end: datetime, *, max_days: int = MAX_HISTORY_DAYS) -> None:
    """Refuse an empty or reversed range and one longer than ``max_days``."""
    if start.tzinfo is None or end.tzinfo is None:
        raise DomainError("时间须带时区", "Times must carry a time zone", field="from", code=ErrorCode.INVALID)
    if end <= start:
        raise RangeInvalid(field="to")
    if end - start > timedelta(days=max_days):
        raise RangeTooLong(field="to")


def _history_sql(flt: HistoryFilter, reach: Reach) -> tuple[str, str, dict[str, Any]]:
    # The read_at bounds sit in the WHERE on the partitioned table itself: partitions
    # outside the range are pruned (at plan time, or at executor start for generic plans).
    params: dict[str, Any] = {"start": flt.start, "end": flt.end}
    where = ["r.read_at >= :start", "r.read_at < :end"]
    where += _reach_conditions(reach, params, household="h.id")
    if flt.meter_ids:
        params["meter_ids"] = list(flt.meter_ids)
        where.append("r.meter_id = ANY(:meter_ids)")
    where += _meter_conditions(params, area_id=flt.area_id, household_id=flt.household_id,
                               concentrator_id=flt.concentrator_id, kind=flt.kind)
    if flt.qualities:
        params["qualities"] = [quality.value for quality in flt.qualities]
        where.append("r.quality = ANY(:qualities)")
    # The household is the one the meter served when it was read. A reading at the
    # instant an assignment ends (the old meter's final reading at a replacement) is that
    # household's, unless the meter went straight on to serve another one from then.
    joins = f"""
        FROM readings r
        JOIN meters m ON m.id = r.meter_id {_AREAS}
        LEFT JOIN meter_assignments ma ON ma.meter_id = r.meter_id AND ma.valid_from <= r.read_at
            AND (ma.valid_to IS NULL OR r.read_at < ma.valid_to
                 OR (r.read_at = ma.valid_to AND NOT EXISTS (
                     SELECT FROM meter_assignments nx WHERE nx.meter_id = ma.meter_id AND nx.valid_from = ma.valid_to)))
        {_household_join(reach)}
        WHERE {" AND ".join(where)}"""
    sql = f"""SELECT {_DESCRIPTIVE},
        r.read_at, r.total_m3, r.flow_rate, r.pressure, r.valve_state, r.battery, r.status_bits, r.quality, r.source,
        r.received_at
        {joins}
        ORDER BY r.read_at DESC, m.code, r.meter_id"""
    return sql, f"SELECT count(*) {joins}", params


async def _checked_history(session: AsyncSession, flt: HistoryFilter, reach: Reach) -> HistoryFilter:
    """``flt`` checked against the range limits and the reach, its meter code (if any)
    resolved to the meter's id: a code outside the reach is NOT_FOUND like a foreign id."""
    check_range(flt.start, flt.end)
    if len(flt.meter_ids) > 1000:
        raise DomainError("一次最多查询 1000 块表", "At most 1000 meters at once", field="meterIds", code=ErrorCode.INVALID)
    if flt.meter_ids and flt.meter_code is not None:
        raise DomainError("表计 id 与表计编码只能填写一个", "Give meter ids or a meter code, not both",
                          field="meterCode", code=ErrorCode.BAD_USER_INPUT)
    await _check_visible(session, reach, household_id=("householdId", flt.household_id),
                         area_id=("areaId", flt.area_id), concentrator_id=("concentratorId", flt.concentrator_id))
    if flt.meter_code is not None:
        found = await _visible_meters(session, (), reach, code=flt.meter_code)
        if not found:
            raise NotFound(field="meterCode")
        return replace(flt, meter_ids=tuple(found), meter_code=None)
    if flt.meter_ids:
        visible = await _visible_meters(session, flt.meter_ids, reach)
        if set(flt.meter_ids) - visible:
            raise NotFound(field="meterIds")
    return flt


async def _visible_meters(session: AsyncSession, meter_ids: Sequence[int], reach: Reach, *,
                          code: str | None = None) -> set[int]:
    """Those of ``meter_ids`` (or the meter coded ``code``) the reach may see."""
    params: dict[str, Any] = {"ids": list(meter_ids)} if code is None else {"code": code}
    where = ["m.id = ANY(:ids)" if code is None else "m.code = :code"]
    if (patterns := reach.area_patterns()) is not None:
        params["patterns"] = patterns
        where.append("a.path LIKE ANY(:patterns)")
    if reach.household_ids is not None:
        params["households"] = list(reach.household_ids)
        where.append("EXISTS (SELECT 1 FROM meter_assignments x WHERE x.meter_id = m.id AND x.household_id = ANY(:households))")
    sql = f"SELECT m.id FROM meters m {_AREAS} WHERE {' AND '.join(where)}"
    return set((await session.execute(text(sql), params)).scalars())


async def history_page(
    session: AsyncSession, *, flt: HistoryFilter, reach: Reach, offset: int, limit: int, count: bool = True,
) -> Page:
    """One page of readings in ``[start, end)``, newest first (历史数据). A range over
    :data:`MAX_HISTORY_DAYS` days is refused (RANGE_TOO_LONG); foreign meters, by id or by
    code, are NOT_FOUND; meter ids and a meter code together are BAD_USER_INPUT."""
    flt = await _checked_history(session, flt, reach)
    sql, count_sql, params = _history_sql(flt, reach)
    return await _page(session, sql, count_sql, params, offset=offset, limit=limit, count=count)


async def history_rows(session: AsyncSession, *, flt: HistoryFilter, reach: Reach) -> AsyncIterator[Mapping[str, Any]]:
    flt = await _checked_history(session, flt, reach)
    sql, _, params = _history_sql(flt, reach)
    async for row in _stream(session, sql, params):
        yield row


# --------------------------------------------------------------------------- monitoring


def local_today(now: datetime, tz: str) -> date:
    return now.astimezone(ZoneInfo(tz)).date()


async def monitoring_points(
    session: AsyncSession, *, reach: Reach, area_id: int | None, now: datetime, tz: str,
) -> list[MonitoringPoint]:
    """The monitoring points (kind ``monitoring``: trunk mains' flow meters and pressure
    gauges) in reach, with this year's volume (daily usage since 1 January in the
    utility's zone), their latest flow, pressure and reading time, their type, location
    and station. One statement."""
    if reach.household_ids is not None:
        return []  # residents have no monitoring points
    await _check_visible(session, reach, area_id=("areaId", area_id))
    today = local_today(now, tz)
    params: dict[str, Any] = {"year_start": date(today.year, 1, 1), "today": today}
    where = ["m.kind = 'monitoring'"]
    where += _reach_conditions(reach, params, household="NULL")
    if area_id is not None:
        where.append(_subtree(params, area_id))
    sql = f"""
        SELECT m.id AS meter_id, m.code, m.name, a.name AS area_name,
               COALESCE(y.volume, 0) AS year_volume_m3,
               lr.flow_rate, lr.pressure, lr.read_at, lr.total_m3,
               m.meter_type, m.location, m.station_id, st.name AS station_name
        FROM meters m {_AREAS}
        LEFT JOIN monitoring_stations st ON st.id = m.station_id
        LEFT JOIN latest_readings lr ON lr.meter_id = m.id
        LEFT JOIN LATERAL (
            SELECT sum(d.usage_m3) AS volume FROM daily_usage d
            WHERE d.meter_id = m.id AND d.day >= :year_start AND d.day <= :today
        ) y ON TRUE
        WHERE {" AND ".join(where)}
        ORDER BY a.path, m.code, m.id"""
    rows = (await session.execute(text(sql), params)).mappings().all()
    return [MonitoringPoint(**row) for row in rows]


# This year's volume of a meter: its daily usage since 1 January (:year_start) up to today.
_YEAR_VOLUME = """
    LEFT JOIN LATERAL (
        SELECT sum(d.usage_m3) AS volume FROM daily_usage d
        WHERE d.meter_id = m.id AND d.day >= :year_start AND d.day <= :today
    ) y ON TRUE"""


async def monitoring_stations(
    session: AsyncSession, *, reach: Reach, area_id: int | None, now: datetime, tz: str,
) -> list[StationFigures]:
    """The monitoring stations in reach (optionally in one area's subtree), by area path
    and code, each with its instruments (flow first, then by code) and their figures as
    :func:`monitoring_points` computes them. One statement, however many stations (plus
    the visibility check of ``area_id``). An instrument lies in its station's area
    (backend.archives.service.stations), so the station's scope is its instruments'."""
    if reach.household_ids is not None:
        return []  # residents have no monitoring stations
    await _check_visible(session, reach, area_id=("areaId", area_id))
    today = local_today(now, tz)
    params: dict[str, Any] = {"year_start": date(today.year, 1, 1), "today": today}
    where = _reach_conditions(reach, params, household="NULL")
    if area_id is not None:
        where.append(_subtree(params, area_id))
    sql = f"""
        SELECT s.id AS station_id, s.code AS station_code, s.name AS station_name, s.kind AS station_kind,
               s.location AS station_location, a.name AS area_name,
               m.id AS meter_id, m.code, m.name, m.meter_type, m.location,
               COALESCE(y.volume, 0) AS year_volume_m3, lr.flow_rate, lr.pressure, lr.read_at, lr.total_m3
        FROM monitoring_stations s JOIN areas a ON a.id = s.area_id
        LEFT JOIN meters m ON m.station_id = s.id
        LEFT JOIN latest_readings lr ON lr.meter_id = m.id
        {_YEAR_VOLUME}
        WHERE {" AND ".join(where) or "TRUE"}
        ORDER BY a.path, s.code, s.id, m.meter_type, m.code, m.id"""
    stations: dict[int, StationFigures] = {}
    for row in (await session.execute(text(sql), params)).mappings():
        station = stations.get(row["station_id"])
        if station is None:
            station = stations[row["station_id"]] = StationFigures(
                row["station_id"], row["station_code"], row["station_name"], row["station_kind"], row["area_name"],
                row["station_location"], [])
        if row["meter_id"] is not None:
            station.instruments.append(MonitoringPoint(
                meter_id=row["meter_id"], code=row["code"], name=row["name"], area_name=row["area_name"],
                year_volume_m3=row["year_volume_m3"], flow_rate=row["flow_rate"], pressure=row["pressure"],
                read_at=row["read_at"], total_m3=row["total_m3"], meter_type=row["meter_type"],
                location=row["location"], station_id=row["station_id"], station_name=row["station_name"]))
    return list(stations.values())


def _check_trend_range(start: datetime, end: datetime, grain: TrendGrain) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise DomainError("时间须带时区", "Times must carry a time zone", field="from", code=ErrorCode.INVALID)
    if end <= start:
        raise RangeInvalid(field="to")
    days = MAX_TREND_DAYS[grain]
    if end - start > timedelta(days=days):
        raise RangeTooLong(f"按{'小时' if grain is TrendGrain.hour else '日'}查询的时间范围不能超过 {days} 天",
                           f"A range by {grain.value} cannot exceed {days} days", field="to")


async def station_trend(
    session: AsyncSession, *, station_id: int, measure: TrendMeasure, grain: TrendGrain, start: datetime,
    end: datetime, reach: Reach, tz: str,
) -> list[TrendBucket]:
    """The station's flow or pressure by hour or by day of the utility's zone ``tz`` over
    ``[start, end)``: every hour or day the range touches, oldest first, with the
    figures of the readings taken in both the bucket and the range (so the first and
    last bucket cover only their part inside the range when ``start`` / ``end`` fall
    inside them). Readings of all the station's instruments of the measure (flow
    meters for flow, pressure gauges for pressure) are pooled. Hours are steps of real
    time (a DST autumn day has 25); days are calendar days.

    At most 31 days by hour and 366 by day (RANGE_TOO_LONG), ``end`` after ``start``
    (INVALID); a station outside the reach is NOT_FOUND (``stationId``). Two statements."""
    _check_trend_range(start, end, grain)
    params: dict[str, Any] = {"station": station_id, "meter_type": _TREND_TYPE[measure]}
    where = ["s.id = :station", *_reach_conditions(reach, params, household="NULL")]
    found = (await session.execute(text(
        "SELECT s.id, array_remove(array_agg(m.id ORDER BY m.id), NULL) AS meter_ids "
        "FROM monitoring_stations s JOIN areas a ON a.id = s.area_id "
        "LEFT JOIN meters m ON m.station_id = s.id AND m.meter_type = :meter_type "
        f"WHERE {' AND '.join(where)} GROUP BY s.id"), params)).first()
    if found is None or reach.household_ids is not None:
        raise NotFound(field="stationId")
    boundaries = interval_boundaries(start=start, end=end, interval=grain.value, tz=tz)
    zone = ZoneInfo(tz)
    figures: dict[Any, Any] = {}
    if found.meter_ids:
        column = _TREND_COLUMN[measure]
        # Hours are real-time steps from the first one (a zone may be off the hour from
        # UTC); days are the zone's calendar days.
        bucket = ("date_bin(CAST('1 hour' AS interval), r.read_at, CAST(:origin AS timestamptz))"
                  if grain is TrendGrain.hour else "CAST(r.read_at AT TIME ZONE :tz AS date)")
        rows = await session.execute(text(
            f"SELECT {bucket} AS bucket, count(*) AS samples, min(r.{column}) AS minimum, "
            f"round(avg(r.{column}), 4) AS mean, max(r.{column}) AS maximum "
            "FROM readings r WHERE r.meter_id = ANY(:ids) AND r.read_at >= :start AND r.read_at < :end "
            f"AND r.{column} IS NOT NULL GROUP BY 1"),
            {"ids": list(found.meter_ids), "start": start, "end": end, "origin": boundaries[0], "tz": tz})
        figures = {row.bucket: row for row in rows}
    buckets: list[TrendBucket] = []
    for first, after in pairwise(boundaries):
        key = first if grain is TrendGrain.hour else first.astimezone(zone).date()
        row = figures.get(key)
        buckets.append(TrendBucket(first.astimezone(zone), after.astimezone(zone), row.samples if row else 0,
                                   row.minimum if row else None, row.mean if row else None,
                                   row.maximum if row else None))
    return buckets


async def daily_volumes(
    session: AsyncSession, *, meter_ids: Sequence[int], days: int, now: datetime, tz: str,
) -> dict[int, list[DailyVolume]]:
    """The last ``days`` local days (today included) of each meter's daily usage, oldest
    first, one entry per day (``None`` where the meter sent nothing). One statement."""
    if not 1 <= days <= MAX_DAILY_DAYS:
        raise DomainError(f"天数须在 1 到 {MAX_DAILY_DAYS} 之间", f"Days must be between 1 and {MAX_DAILY_DAYS}",
                          field="days", code=ErrorCode.INVALID)
    today = local_today(now, tz)
    first = today - timedelta(days=days - 1)
    found: dict[int, dict[date, Decimal]] = {pk: {} for pk in meter_ids}
    if meter_ids:
        rows = await session.execute(text(
            "SELECT meter_id, day, usage_m3 FROM daily_usage "
            "WHERE meter_id = ANY(:ids) AND day >= :first AND day <= :today"
        ), {"ids": list(meter_ids), "first": first, "today": today})
        for meter_id, day, usage in rows:
            found[meter_id][day] = usage
    span = [first + timedelta(days=offset) for offset in range(days)]
    return {pk: [DailyVolume(day, volumes.get(day)) for day in span] for pk, volumes in found.items()}


async def monitoring_history(
    session: AsyncSession, *, meter_id: int | None = None, meter_code: str | None = None, start: datetime,
    end: datetime, reach: Reach, offset: int, limit: int, count: bool = True,
) -> Page:
    """Readings of one monitoring point, named by exactly one of its id and its code
    (BAD_USER_INPUT otherwise), in ``[start, end)``, newest first. A point outside the
    reach is NOT_FOUND on the argument given."""
    if (meter_id is None) == (meter_code is None):
        raise DomainError("请填写表计 id 或表计编码之一", "Give exactly one of meterId and meterCode",
                          field="meterId", code=ErrorCode.BAD_USER_INPUT)
    await _checked_history(session, HistoryFilter(start=start, end=end), reach)
    given = "meterId" if meter_id is not None else "meterCode"
    visible = await _visible_meters(session, [meter_id] if meter_id is not None else [], reach, code=meter_code)
    if reach.household_ids is not None or not visible:
        raise NotFound(field=given)
    flt = HistoryFilter(start=start, end=end, meter_ids=tuple(visible), kind=MeterKind.monitoring)
    sql, count_sql, params = _history_sql(flt, reach)
    return await _page(session, sql, count_sql, params, offset=offset, limit=limit, count=count)


# --------------------------------------------------------------------------- screens


def realtime_filter_from(filters: Mapping[str, Any]) -> RealtimeFilter:
    """A :class:`RealtimeFilter` from the screen's JSON filters (GraphQL names, global ids)."""
    kind = filter_choice(filters, "kind", [k.value for k in MeterKind])
    status = filter_choice(filters, "status", [s.value for s in OnlineStatus])
    meter_statuses = filter_choices(filters, "meterStatuses", [s.value for s in MeterStatus])
    return RealtimeFilter(
        area_id=filter_id(filters, "areaId", "Area"),
        household_id=filter_id(filters, "householdId", "Household"),
        meter_id=filter_id(filters, "meterId", "Meter"),
        concentrator_id=filter_id(filters, "concentratorId", "Concentrator"),
        meter_code=filter_text(filters, "meterCode"),
        kind=MeterKind(kind) if kind else None,
        status=OnlineStatus(status) if status else None,
        meter_statuses=tuple(MeterStatus(s) for s in meter_statuses),
        search=filter_text(filters, "search", max_length=MAX_SEARCH_LENGTH),
    )


def history_filter_from(filters: Mapping[str, Any]) -> HistoryFilter:
    start, end = filter_datetime(filters, "from"), filter_datetime(filters, "to")
    if start is None:
        raise DomainError("请填写开始时间", "The start is required", field="from", code=ErrorCode.REQUIRED)
    if end is None:
        raise DomainError("请填写结束时间", "The end is required", field="to", code=ErrorCode.REQUIRED)
    return HistoryFilter(
        start=start, end=end,
        meter_ids=tuple(filter_ids(filters, "meterIds", "Meter")),
        area_id=filter_id(filters, "areaId", "Area"),
        household_id=filter_id(filters, "householdId", "Household"),
        concentrator_id=filter_id(filters, "concentratorId", "Concentrator"),
        qualities=tuple(ReadingQuality(q) for q in filter_choices(filters, "qualities", [q.value for q in ReadingQuality])),
        meter_code=filter_text(filters, "meterCode", max_length=32),
    )


_KIND_LABELS = {"household": "户表", "monitoring": "监测点"}
_STATUS_LABELS = {"online": "在线", "offline": "离线", "never": "从未上报"}
_VALVE_LABELS = {"open": "开", "closed": "关", "unknown": "未知"}
_QUALITY_LABELS = {"actual": "实抄", "manual": "手工", "estimated": "估算"}


def _export_row(row: Mapping[str, Any], tz: str) -> dict[str, Any]:
    out = dict(row)
    for name in ("read_at", "received_at"):
        if name in out:
            out[name] = local_time(out[name], tz)
    out["meter_kind"] = _KIND_LABELS.get(str(out.get("meter_kind")), out.get("meter_kind"))
    if "online_status" in out:
        out["online_status"] = _STATUS_LABELS.get(str(out["online_status"]), out["online_status"])
    out["valve_state"] = _VALVE_LABELS.get(str(out.get("valve_state")), out.get("valve_state"))
    out["quality"] = _QUALITY_LABELS.get(str(out.get("quality")), out.get("quality"))
    return out


_DESCRIPTIVE_COLUMNS = (
    AREA_NAME_COLUMN,
    ScreenColumn("parent_area_name", "上级单位", "Parent area", 18),
    *HOLDER_COLUMNS,
    ScreenColumn("meter_address", "通讯地址", "Meter address", 16),
    ScreenColumn("meter_kind", "表计类别", "Meter kind", 10),
)
_READING_COLUMNS = (
    ScreenColumn("total_m3", "累积流量(t)", "Total (t)", 14, FOUR_PLACES_FORMAT),
    ScreenColumn("read_at", "抄表时间", "Read at", 20, TIME_FORMAT),
    ScreenColumn("flow_rate", "瞬时流量(m³/h)", "Flow rate (m³/h)", 14, FOUR_PLACES_FORMAT),
    ScreenColumn("pressure", "压力(MPa)", "Pressure (MPa)", 12, FOUR_PLACES_FORMAT),
    ScreenColumn("valve_state", "阀门状态", "Valve", 10),
    ScreenColumn("battery", "电池电压(V)", "Battery (V)", 12, "0.00"),
    ScreenColumn("status_bits", "状态字", "Status bits", 10),
    # The reading's quality (实抄 / 手工 / 估算), not where it came from (that is 采集来源).
    ScreenColumn("quality", "数据质量", "Quality", 10),
)

# On 实时数据, 单位名称 is the room (翠湖小区1-1-0101, as the brochure's screen shows it),
# so the meter's area is 所属区域 there.
REALTIME_COLUMNS = (
    ScreenColumn("unit_name", "单位名称", "Room", 20), ScreenColumn("area_name", "所属区域", "Area", 18),
    *_DESCRIPTIVE_COLUMNS[1:], *_READING_COLUMNS, ScreenColumn("online_status", "在线状态", "Online", 10),
)
HISTORY_COLUMNS = (
    *_DESCRIPTIVE_COLUMNS, *_READING_COLUMNS,
    ScreenColumn("source", "采集来源", "Source", 14), ScreenColumn("received_at", "接收时间", "Received at", 20, TIME_FORMAT),
)
_READING = {column.key: column for column in _READING_COLUMNS}
MONITORING_COLUMNS = (
    AREA_NAME_COLUMN,
    ScreenColumn("meter_name", "监测点名称", "Point", 16),
    ScreenColumn("meter_code", "表计编码", "Meter code", 16),
    *(_READING[key] for key in ("read_at", "total_m3", "flow_rate", "pressure", "quality")),
)
_DEFAULT = ("area_name", "parent_area_name", "household_name", "meter_name", "meter_code", "total_m3", "read_at")


async def _realtime_screen_rows(session: AsyncSession, request: ExportRequest) -> AsyncIterator[Mapping[str, Any]]:
    flt = realtime_filter_from(request.filters)
    async for row in realtime_rows(session, flt=flt, reach=request.reach, now=request.now):
        yield _export_row(row, request.tz)


async def _history_screen_rows(session: AsyncSession, request: ExportRequest) -> AsyncIterator[Mapping[str, Any]]:
    flt = history_filter_from(request.filters)
    async for row in history_rows(session, flt=flt, reach=request.reach):
        yield _export_row(row, request.tz)


async def _monitoring_screen_rows(session: AsyncSession, request: ExportRequest) -> AsyncIterator[Mapping[str, Any]]:
    """A monitoring point's readings (``meterId``, ``from``, ``to``)."""
    flt = history_filter_from(request.filters)
    meter_id = filter_id(request.filters, "meterId", "Meter")
    if meter_id is None:
        raise DomainError("请选择监测点", "Choose a monitoring point", field="meterId", code=ErrorCode.REQUIRED)
    reach = request.reach
    if reach.household_ids is not None or not await _visible_meters(session, [meter_id], reach):
        raise NotFound(field="meterId")
    flt = HistoryFilter(start=flt.start, end=flt.end, meter_ids=(meter_id,), kind=MeterKind.monitoring)
    async for row in history_rows(session, flt=flt, reach=reach):
        yield _export_row(row, request.tz)


register_screen(Screen(ScreenKind.realtime, "实时数据", REALTIME_COLUMNS,
                       ("unit_name", "meter_name", "total_m3", "meter_code", "household_name", "read_at", "online_status"),
                       _realtime_screen_rows, "readings:read"))
register_screen(Screen(ScreenKind.history, "历史数据", HISTORY_COLUMNS, (*_DEFAULT, "quality"),
                       _history_screen_rows, "readings:read"))
register_screen(Screen(ScreenKind.monitoring, "数据监测", MONITORING_COLUMNS,
                       ("meter_name", "meter_code", "read_at", "total_m3", "flow_rate", "pressure"),
                       _monitoring_screen_rows, "monitoring:read"))
