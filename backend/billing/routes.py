"""Reading routes (抄表本): who reads which household meters, in which order, and how
complete a period's reading is.

- A route belongs to an area and holds household meters of that area's subtree, each
  meter on at most one route, in the order the reader walks them (``set_route_meters``
  replaces the whole list; refusals are typed and write nothing).
- A route has at most one reader (a staff user); ``my_reading_routes`` is the reader's
  sheet for a period: each meter with its household, its last reading, the range a
  reading today is expected in, and whether the period's reading is still missing.
- ``route_completion`` is the completion report (抄见率) per route and reader.

**Periods and the reading window.** A period is a month ``YYYY-MM`` in the utility's
zone; its end is the next month's first midnight. A route's reading window is the last
``window_days`` days of the period: ``(end − window_days days, end]``, a day being
``(00:00, 24:00]`` as everywhere. A meter is *read* in the period when it has an actual
or a manual reading in the window (an estimate is not a reading); otherwise it is
*missing*.

**Expected range.** From the meter's average daily use (``meter_usage_baselines``, m³ a
day, the multiplier applied, refreshed daily by the alarm evaluation) and the days since
its last reading: ``use = average × days / multiplier`` in register units, and a reading
now is expected within ``[last + 0.5 × use, last + 2 × use]``. No baseline (a new
meter) or no last reading gives no range. A range that passes the register's size
(rollover) is not wrapped: the reader then confirms the lower total as usual.

Scope: management takes the caller's ``scope_patterns`` (``areas.path LIKE ANY``; None is
unrestricted) inside the statements that find routes, areas and meters; a route or meter
outside them is NOT_FOUND. A reader's sheet shows only the meters inside the reader's
own scope, so assigning a route never widens what a reader sees.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.accounts import KEEP
from backend.billing.routes_models import DEFAULT_WINDOW_DAYS, ReadingRoute
from backend.billing.scope import area_path_in_scope, patterns_param
from backend.errors import DomainError, ErrorCode, NotFound
from backend.readings.partitions import DEFAULT_TIMEZONE, as_zone

MAX_ROUTE_METERS = 5000
EXPECTED_LOW = Decimal("0.5")
EXPECTED_HIGH = Decimal("2")
_PERIOD = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")


# --------------------------------------------------------------------------- errors


class MeterOnOtherRoute(DomainError):
    code = ErrorCode.ROUTE_METER_ON_OTHER_ROUTE

    def __init__(self, meter_code: str, route_code: str) -> None:
        super().__init__(f"表计 {meter_code} 已在抄表本 {route_code} 中", f"Meter {meter_code} is on route {route_code} already",
                         field="meterIds")


class MeterOutsideArea(DomainError):
    code = ErrorCode.ROUTE_METER_OUTSIDE_AREA

    def __init__(self, meter_code: str) -> None:
        super().__init__(f"表计 {meter_code} 不在抄表本的区域内", f"Meter {meter_code} is outside the route's area",
                         field="meterIds")


class MeterNotHousehold(DomainError):
    code = ErrorCode.ROUTE_METER_NOT_HOUSEHOLD

    def __init__(self, meter_code: str) -> None:
        super().__init__(f"表计 {meter_code} 不是户表", f"Meter {meter_code} is not a household meter", field="meterIds")


class MeterRepeated(DomainError):
    code = ErrorCode.ROUTE_METER_REPEATED
    message = "同一表计在列表中出现多次"
    message_en = "A meter appears more than once in the list"


class InvalidPeriod(DomainError):
    code = ErrorCode.INVALID_PERIOD
    message = "账期格式须为 YYYY-MM"
    message_en = "A period looks like YYYY-MM"


# --------------------------------------------------------------------------- periods


@dataclass(frozen=True, slots=True)
class Period:
    """A billing month: ``start`` its first day, ``end`` the next month's first day."""

    name: str
    start: date
    end: date

    def end_at(self, zone: tzinfo) -> datetime:
        return datetime(self.end.year, self.end.month, self.end.day, tzinfo=zone)


def parse_period(value: str, *, field_name: str = "period") -> Period:
    """``YYYY-MM`` as a :class:`Period`; INVALID_PERIOD otherwise."""
    match = _PERIOD.fullmatch(value.strip())
    if match is None:
        raise InvalidPeriod(field=field_name)
    year, month = int(match.group(1)), int(match.group(2))
    start = date(year, month, 1)
    end = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return Period(f"{year:04d}-{month:02d}", start, end)


# --------------------------------------------------------------------------- routes


_LOCK_ROUTE = text("""
SELECT r.id, a.path FROM reading_routes r JOIN areas a ON a.id = r.area_id
WHERE r.id = :route_id AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
FOR UPDATE OF r
""")

_READER = text("SELECT id FROM staff_users WHERE id = :user_id AND is_active")


def _checked_name(value: str, *, field_name: str, limit: int) -> str:
    cleaned = value.strip()
    if not cleaned:
        raise DomainError("必填", "Required", field=field_name, code=ErrorCode.REQUIRED)
    if len(cleaned) > limit or "\x00" in cleaned:
        raise DomainError(f"不能超过 {limit} 个字符", f"At most {limit} characters", field=field_name,
                          code=ErrorCode.TOO_LONG)
    return cleaned


def _checked_window(window_days: int) -> int:
    if not 1 <= window_days <= 31:
        raise DomainError("抄表窗口须为 1 至 31 天", "The reading window is 1 to 31 days", field="windowDays",
                          code=ErrorCode.INVALID)
    return window_days


async def _checked_reader(session: AsyncSession, reader_user_id: int | None) -> int | None:
    if reader_user_id is not None and (await session.execute(_READER, {"user_id": reader_user_id})).scalar_one_or_none() is None:
        raise NotFound(field="readerId")
    return reader_user_id


async def _locked_route(session: AsyncSession, route_id: int, scope_patterns: Sequence[str] | None) -> Any:
    row = (await session.execute(_LOCK_ROUTE, {"route_id": route_id, "patterns": patterns_param(scope_patterns)})).one_or_none()
    if row is None:
        raise NotFound(field="routeId")
    return row


async def create_route(
    session: AsyncSession,
    *,
    code: str,
    name: str,
    area_id: int,
    window_days: int = DEFAULT_WINDOW_DAYS,
    reader_user_id: int | None = None,
    now: datetime,
    scope_patterns: Sequence[str] | None,
) -> ReadingRoute:
    """A new empty route of area ``area_id`` (in the scope, else NOT_FOUND); DUPLICATE
    for a code in use. The caller commits."""
    route = ReadingRoute(
        code=_checked_name(code, field_name="code", limit=32), name=_checked_name(name, field_name="name", limit=100),
        area_id=area_id, window_days=_checked_window(window_days), created_at=now, updated_at=now,
        reader_user_id=await _checked_reader(session, reader_user_id),
    )
    await area_path_in_scope(session, area_id, scope_patterns)
    try:
        async with session.begin_nested():
            session.add(route)
            await session.flush()
    except IntegrityError:
        raise DomainError("抄表本编号已存在", "The route code is in use", field="code", code=ErrorCode.DUPLICATE) from None
    return route


async def update_route(
    session: AsyncSession,
    *,
    route_id: int,
    name: str | None = None,
    window_days: int | None = None,
    reader_user_id: Any = KEEP,
    now: datetime,
    scope_patterns: Sequence[str] | None,
) -> ReadingRoute:
    """Change a route's name, window or reader (an int or None, which unassigns it;
    :data:`KEEP` keeps it); what is left out stays. The caller commits."""
    await _locked_route(session, route_id, scope_patterns)
    route = await session.get(ReadingRoute, route_id)
    assert route is not None  # locked above
    if name is not None:
        route.name = _checked_name(name, field_name="name", limit=100)
    if window_days is not None:
        route.window_days = _checked_window(window_days)
    if reader_user_id is not KEEP:
        route.reader_user_id = await _checked_reader(session, reader_user_id)
    route.updated_at = now
    await session.flush()
    return route


async def assign_reader(session: AsyncSession, *, route_id: int, reader_user_id: int | None, now: datetime,
                        scope_patterns: Sequence[str] | None) -> ReadingRoute:
    """Give a route to the staff user ``reader_user_id`` (an active one, else NOT_FOUND),
    or to nobody; the caller commits."""
    return await update_route(session, route_id=route_id, reader_user_id=reader_user_id, now=now,
                              scope_patterns=scope_patterns)


async def delete_route(session: AsyncSession, *, route_id: int, scope_patterns: Sequence[str] | None) -> None:
    """Delete a route and its meter list (the meters are free for other routes)."""
    await _locked_route(session, route_id, scope_patterns)
    await session.execute(text("DELETE FROM reading_routes WHERE id = :id"), {"id": route_id})


# Each wanted meter (in the caller's scope) with what refuses it: its code, whether it
# lies in the route's subtree, whether it is a household meter, and the other route it is on.
_CANDIDATES = text("""
SELECT m.id, m.code, a.path LIKE CAST(:route_path AS text) || '%' AS inside, m.kind = 'household' AS household,
       other.code AS other_route
FROM meters m
JOIN areas a ON a.id = m.area_id
LEFT JOIN reading_route_meters rm ON rm.meter_id = m.id AND rm.route_id <> :route_id
LEFT JOIN reading_routes other ON other.id = rm.route_id
WHERE m.id = ANY(CAST(:meter_ids AS bigint[]))
  AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
""")

_DELETE_LIST = text("DELETE FROM reading_route_meters WHERE route_id = :route_id")
_INSERT_LIST = text("""
INSERT INTO reading_route_meters (meter_id, route_id, position)
SELECT w.meter_id, :route_id, w.position
FROM unnest(CAST(:meter_ids AS bigint[])) WITH ORDINALITY AS w(meter_id, position)
""")


async def set_route_meters(
    session: AsyncSession, *, route_id: int, meter_ids: Sequence[int], now: datetime,
    scope_patterns: Sequence[str] | None,
) -> list[int]:
    """Make ``meter_ids`` the route's meters, in that order (positions 1…n); returns them.

    Refused before anything is written: a meter twice in the list (ROUTE_METER_REPEATED),
    unknown or outside the scope (NOT_FOUND), outside the route's area subtree
    (ROUTE_METER_OUTSIDE_AREA), not a household meter (ROUTE_METER_NOT_HOUSEHOLD) or on
    another route (ROUTE_METER_ON_OTHER_ROUTE). Two lists racing for one meter: the
    loser's insert hits the meter's key and is refused the same way (its transaction
    must then be rolled back, as the caller does with any refusal).
    """
    wanted = list(meter_ids)
    if len(set(wanted)) != len(wanted):
        raise MeterRepeated(field="meterIds")
    if len(wanted) > MAX_ROUTE_METERS:
        raise DomainError(f"一个抄表本最多 {MAX_ROUTE_METERS} 块表", f"A route holds at most {MAX_ROUTE_METERS} meters",
                          field="meterIds", code=ErrorCode.INVALID)
    route = await _locked_route(session, route_id, scope_patterns)
    rows = {row.id: row for row in (await session.execute(_CANDIDATES, {
        "route_path": route.path, "route_id": route_id, "meter_ids": wanted, "patterns": patterns_param(scope_patterns),
    })).all()}
    for meter_id in wanted:
        row = rows.get(meter_id)
        if row is None:
            raise NotFound(field="meterIds")
        if not row.inside:
            raise MeterOutsideArea(row.code)
        if not row.household:
            raise MeterNotHousehold(row.code)
        if row.other_route is not None:
            raise MeterOnOtherRoute(row.code, row.other_route)
    await session.execute(_DELETE_LIST, {"route_id": route_id})
    if wanted:
        try:
            async with session.begin_nested():
                await session.execute(_INSERT_LIST, {"route_id": route_id, "meter_ids": wanted})
        except IntegrityError:
            raise DomainError("表计已被另一抄表本同时占用, 请重试", "A meter was just put on another route; try again",
                              field="meterIds", code=ErrorCode.ROUTE_METER_ON_OTHER_ROUTE) from None
    await session.execute(text("UPDATE reading_routes SET updated_at = :now WHERE id = :id"), {"now": now, "id": route_id})
    return wanted


@dataclass(frozen=True, slots=True)
class RouteSummary:
    """A route as its management list shows it, with its meters in order."""

    id: int
    code: str
    name: str
    area_id: int
    reader_user_id: int | None
    reader_name: str | None
    window_days: int
    meter_ids: list[int]


_ROUTES = text("""
SELECT r.id, r.code, r.name, r.area_id, r.reader_user_id, u.full_name AS reader_name, r.window_days,
       coalesce((SELECT array_agg(rm.meter_id ORDER BY rm.position) FROM reading_route_meters rm WHERE rm.route_id = r.id),
                '{}') AS meter_ids
FROM reading_routes r
JOIN areas a ON a.id = r.area_id
LEFT JOIN staff_users u ON u.id = r.reader_user_id
WHERE (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
  AND (CAST(:route_id AS bigint) IS NULL OR r.id = CAST(:route_id AS bigint))
ORDER BY r.code, r.id
""")


async def reading_routes(session: AsyncSession, *, scope_patterns: Sequence[str] | None,
                         route_id: int | None = None) -> list[RouteSummary]:
    """The routes of the scope (or just ``route_id``), each with its meters in order; one statement."""
    rows = (await session.execute(_ROUTES, {"patterns": patterns_param(scope_patterns), "route_id": route_id})).all()
    return [RouteSummary(row.id, row.code, row.name, row.area_id, row.reader_user_id, row.reader_name, row.window_days,
                         list(row.meter_ids)) for row in rows]


# --------------------------------------------------------------------------- the reader's sheet


@dataclass(frozen=True, slots=True)
class RouteStop:
    """One meter of a reader's sheet, in walking order."""

    position: int
    meter_id: int
    meter_code: str
    meter_address: str
    location: str | None
    household_id: int | None
    account_no: str | None
    household_name: str | None
    household_address: str | None
    room: str | None
    last_read_at: datetime | None
    last_total_m3: Decimal | None
    last_quality: str | None
    average_daily_m3: Decimal | None
    expected_low_m3: Decimal | None
    expected_high_m3: Decimal | None
    read_in_window: bool

    @property
    def missing(self) -> bool:
        return not self.read_in_window


@dataclass(frozen=True, slots=True)
class RouteSheet:
    route_id: int
    code: str
    name: str
    area_id: int
    window_days: int
    window_start: datetime
    window_end: datetime
    stops: list[RouteStop] = field(default_factory=list)


# One statement for every route of the reader: the routes, their meters in order (only
# those in the reader's scope), each meter's current household, its latest reading,
# its baseline and whether it has a real reading in the route's window. The expected
# range follows the module's rule, in register units (baseline / multiplier).
_SHEET = text("""
SELECT r.id AS route_id, r.code AS route_code, r.name AS route_name, r.area_id, r.window_days,
       rm.position, m.id AS meter_id, m.code AS meter_code, m.address AS meter_address, m.location,
       h.id AS household_id, h.account_no, h.name AS household_name, h.address AS household_address, h.room,
       lr.read_at AS last_read_at, lr.total_m3 AS last_total_m3, lr.quality AS last_quality,
       b.average_m3,
       round(lr.total_m3 + :low * use.m3, 4) AS expected_low,
       round(lr.total_m3 + :high * use.m3, 4) AS expected_high,
       EXISTS (SELECT FROM readings x
               WHERE x.meter_id = m.id AND x.quality <> 'estimated'
                 AND x.read_at > CAST(:window_end AS timestamptz) - make_interval(days => r.window_days)
                 AND x.read_at <= CAST(:window_end AS timestamptz)) AS read_in_window
FROM reading_routes r
LEFT JOIN reading_route_meters rm ON rm.route_id = r.id
LEFT JOIN meters m ON m.id = rm.meter_id
LEFT JOIN areas a ON a.id = m.area_id
LEFT JOIN meter_models mm ON mm.id = m.model_id
LEFT JOIN meter_assignments ma ON ma.meter_id = m.id AND ma.valid_to IS NULL
LEFT JOIN households h ON h.id = ma.household_id
LEFT JOIN latest_readings lr ON lr.meter_id = m.id
LEFT JOIN meter_usage_baselines b ON b.meter_id = m.id
LEFT JOIN LATERAL (
    SELECT b.average_m3 / coalesce(nullif(mm.multiplier, 0), 1)
           * greatest(CAST(extract(epoch FROM CAST(:now AS timestamptz) - lr.read_at) AS numeric), 0) / 86400 AS m3
) use ON true
WHERE r.reader_user_id = :reader_id
  AND (m.id IS NULL OR CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
ORDER BY r.code, r.id, rm.position
""")


async def my_reading_routes(
    session: AsyncSession,
    *,
    reader_user_id: int,
    period: str,
    now: datetime,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
    scope_patterns: Sequence[str] | None,
) -> list[RouteSheet]:
    """The routes assigned to ``reader_user_id`` with their meters in order, for
    ``period`` (``YYYY-MM``): see the module for the window, the missing flag and the
    expected range. One statement."""
    zone = as_zone(tz)
    parsed = parse_period(period)
    window_end = parsed.end_at(zone)
    rows = (await session.execute(_SHEET, {
        "reader_id": reader_user_id, "window_end": window_end, "now": now, "low": EXPECTED_LOW, "high": EXPECTED_HIGH,
        "patterns": patterns_param(scope_patterns),
    })).all()
    sheets: dict[int, RouteSheet] = {}
    for row in rows:
        sheet = sheets.get(row.route_id)
        if sheet is None:
            sheet = sheets[row.route_id] = RouteSheet(
                row.route_id, row.route_code, row.route_name, row.area_id, row.window_days,
                window_end - timedelta(days=row.window_days), window_end,
            )
        if row.meter_id is None:
            continue
        has_range = row.average_m3 is not None and row.last_total_m3 is not None
        sheet.stops.append(RouteStop(
            position=row.position, meter_id=row.meter_id, meter_code=row.meter_code, meter_address=row.meter_address,
            location=row.location, household_id=row.household_id, account_no=row.account_no,
            household_name=row.household_name, household_address=row.household_address, room=row.room,
            last_read_at=row.last_read_at, last_total_m3=row.last_total_m3,
            last_quality=str(row.last_quality) if row.last_quality is not None else None,
            average_daily_m3=row.average_m3,
            expected_low_m3=row.expected_low if has_range else None,
            expected_high_m3=row.expected_high if has_range else None,
            read_in_window=bool(row.read_in_window),
        ))
    return list(sheets.values())


# --------------------------------------------------------------------------- completion report


@dataclass(frozen=True, slots=True)
class RouteCompletion:
    """A route's 抄见率 for a period: ``read`` of ``meters`` have a real reading in the
    window; ``rate`` is their share in percent (two places; None for an empty route)."""

    route_id: int
    code: str
    name: str
    area_id: int
    reader_user_id: int | None
    reader_name: str | None
    meters: int
    read: int

    @property
    def missing(self) -> int:
        return self.meters - self.read

    @property
    def rate(self) -> Decimal | None:
        if not self.meters:
            return None
        return (Decimal(100) * self.read / self.meters).quantize(Decimal("0.01"))


# One statement: the routes in the scope (under ``area_path`` when given), each with its
# meter count and how many of them have an actual or manual reading in its window.
_COMPLETION = text("""
SELECT r.id, r.code, r.name, r.area_id, r.reader_user_id, u.full_name AS reader_name,
       count(rm.meter_id) AS meters,
       count(rm.meter_id) FILTER (WHERE EXISTS (
           SELECT FROM readings x
           WHERE x.meter_id = rm.meter_id AND x.quality <> 'estimated'
             AND x.read_at > CAST(:window_end AS timestamptz) - make_interval(days => r.window_days)
             AND x.read_at <= CAST(:window_end AS timestamptz))) AS read
FROM reading_routes r
JOIN areas a ON a.id = r.area_id
LEFT JOIN staff_users u ON u.id = r.reader_user_id
LEFT JOIN reading_route_meters rm ON rm.route_id = r.id
WHERE (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
  AND (CAST(:area_id AS bigint) IS NULL
       OR a.path LIKE (SELECT path FROM areas WHERE id = CAST(:area_id AS bigint)) || '%')
GROUP BY r.id, u.full_name
ORDER BY r.code, r.id
""")


async def route_completion(
    session: AsyncSession,
    *,
    period: str,
    area_id: int | None = None,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
    scope_patterns: Sequence[str] | None,
) -> list[RouteCompletion]:
    """抄见率 per route (and its reader) for ``period``, for the routes of the scope under
    ``area_id``'s subtree (NOT_FOUND for an area outside the scope). One statement."""
    parsed = parse_period(period)
    patterns = patterns_param(scope_patterns)
    if area_id is not None:
        await area_path_in_scope(session, area_id, scope_patterns)
    rows = (await session.execute(_COMPLETION, {
        "window_end": parsed.end_at(as_zone(tz)), "patterns": patterns, "area_id": area_id,
    })).all()
    return [RouteCompletion(row.id, row.code, row.name, row.area_id, row.reader_user_id, row.reader_name, row.meters, row.read)
            for row in rows]
