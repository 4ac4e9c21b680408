"""GraphQL for reading routes (抄表本, ``backend.billing.routes``): the management list and
mutations (routes:manage / routes:read), the reader's sheet ``myReadingRoute`` (what a
field reader with readings:write walks) and the completion report (抄见率)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth.models import PrincipalKind
from backend.billing import routes
from backend.billing.routes_models import DEFAULT_WINDOW_DAYS
from backend.clock import utcnow
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id, encode_id

MANAGE = [Requires("routes:manage")]
READ = [Requires("routes:read")]
# A field reader's own sheet needs nothing beyond manual reading entry.
ENTER = [Requires("readings:write")]
PayloadT = TypeVar("PayloadT")


@strawberry.type(name="ReadingRoute", description="抄表本: an ordered list of household meters and its reader.")
class ReadingRouteType:
    id: strawberry.ID
    code: str
    name: str
    area_id: strawberry.ID
    reader_id: strawberry.ID | None
    reader_name: str | None
    window_days: int = strawberry.field(description="The reading window: the last this many days of each period.")
    meter_ids: list[strawberry.ID] = strawberry.field(description="The route's meters in walking order.")

    @classmethod
    def of(cls, route: routes.RouteSummary) -> ReadingRouteType:
        return cls(id=encode_id("ReadingRoute", route.id), code=route.code, name=route.name,
                   area_id=encode_id("Area", route.area_id),
                   reader_id=encode_id("StaffUser", route.reader_user_id) if route.reader_user_id is not None else None,
                   reader_name=route.reader_name, window_days=route.window_days,
                   meter_ids=[encode_id("Meter", meter_id) for meter_id in route.meter_ids])


@strawberry.type(name="ReadingRouteStop", description="One meter of a reader's sheet, in walking order.")
class ReadingRouteStopType:
    position: int
    meter_id: strawberry.ID
    meter_code: str
    meter_address: str = strawberry.field(description="The meter's protocol address.")
    location: str | None = strawberry.field(description="Where the meter is fitted.")
    household_id: strawberry.ID | None
    account_no: str | None = strawberry.field(description="The household's 缴费号.")
    household_name: str | None
    household_address: str | None
    room: str | None = strawberry.field(description="The household's room label.")
    last_read_at: datetime | None
    last_total_m3: Decimal | None = strawberry.field(description="The latest reading's register total, m³.")
    last_quality: str | None = strawberry.field(description="actual / manual / estimated.")
    average_daily_m3: Decimal | None = strawberry.field(description="The meter's average daily use (30 days), m³.")
    expected_low_m3: Decimal | None = strawberry.field(
        description="A reading now is expected between expectedLowM3 and expectedHighM3: the last total plus 0.5× "
                    "and 2× the average daily use times the days since it. Null without a baseline or last reading.")
    expected_high_m3: Decimal | None
    missing: bool = strawberry.field(description="No actual or manual reading in the period's reading window yet.")

    @classmethod
    def of(cls, stop: routes.RouteStop) -> ReadingRouteStopType:
        return cls(
            position=stop.position, meter_id=encode_id("Meter", stop.meter_id), meter_code=stop.meter_code,
            meter_address=stop.meter_address, location=stop.location,
            household_id=encode_id("Household", stop.household_id) if stop.household_id is not None else None,
            account_no=stop.account_no, household_name=stop.household_name, household_address=stop.household_address,
            room=stop.room, last_read_at=stop.last_read_at, last_total_m3=stop.last_total_m3,
            last_quality=stop.last_quality, average_daily_m3=stop.average_daily_m3,
            expected_low_m3=stop.expected_low_m3, expected_high_m3=stop.expected_high_m3, missing=stop.missing,
        )


@strawberry.type(name="ReadingRouteSheet", description="A reader's route for one period.")
class ReadingRouteSheetType:
    id: strawberry.ID
    code: str
    name: str
    window_start: datetime = strawberry.field(description="The reading window, (windowStart, windowEnd].")
    window_end: datetime
    meters: int
    missing: int
    stops: list[ReadingRouteStopType]

    @classmethod
    def of(cls, sheet: routes.RouteSheet) -> ReadingRouteSheetType:
        stops = [ReadingRouteStopType.of(stop) for stop in sheet.stops]
        return cls(id=encode_id("ReadingRoute", sheet.route_id), code=sheet.code, name=sheet.name,
                   window_start=sheet.window_start, window_end=sheet.window_end, meters=len(stops),
                   missing=sum(stop.missing for stop in stops), stops=stops)


@strawberry.type(name="ReadingRouteCompletion", description="抄见率 of a route and its reader for a period.")
class ReadingRouteCompletionType:
    route_id: strawberry.ID
    code: str
    name: str
    reader_id: strawberry.ID | None
    reader_name: str | None
    meters: int
    read: int = strawberry.field(description="Meters with an actual or manual reading in the window.")
    missing: int
    rate: Decimal | None = strawberry.field(description="抄见率, percent with two places; null for an empty route.")

    @classmethod
    def of(cls, row: routes.RouteCompletion) -> ReadingRouteCompletionType:
        return cls(route_id=encode_id("ReadingRoute", row.route_id), code=row.code, name=row.name,
                   reader_id=encode_id("StaffUser", row.reader_user_id) if row.reader_user_id is not None else None,
                   reader_name=row.reader_name, meters=row.meters, read=row.read, missing=row.missing, rate=row.rate)


@strawberry.type
class ReadingRoutePayload:
    route: ReadingRouteType | None
    errors: list[UserError]


@strawberry.type
class DeleteReadingRoutePayload:
    deleted: bool
    errors: list[UserError]


@strawberry.input
class CreateReadingRouteInput:
    code: str
    name: str
    area_id: strawberry.ID
    window_days: int = DEFAULT_WINDOW_DAYS
    reader_id: strawberry.ID | None = None


@strawberry.input(description="A field left out keeps its value.")
class UpdateReadingRouteInput:
    name: str | None = strawberry.UNSET
    window_days: int | None = strawberry.UNSET


def _scope(info: Info) -> list[str]:
    return info.context.caller.scope_patterns()  # type: ignore[no-any-return]


def _route_id(value: strawberry.ID) -> int:
    return decode_id(value, "ReadingRoute", field="routeId")


def _reader_id(value: strawberry.ID | None) -> int | None:
    return decode_id(value, "StaffUser", field="readerId") if value is not None else None


async def _summary(session: AsyncSession, route_id: int) -> routes.RouteSummary:
    found = await routes.reading_routes(session, scope_patterns=None, route_id=route_id)
    return found[0]


def _route_payload(route: routes.RouteSummary | None, errors: list[UserError]) -> ReadingRoutePayload:
    return ReadingRoutePayload(route=ReadingRouteType.of(route) if route is not None else None, errors=errors)


async def _run(info: Info, action: str, describe: Callable[[Any], str],
               payload: Callable[[Any, list[UserError]], PayloadT],
               work: Callable[[AsyncSession], Awaitable[Any]]) -> PayloadT:
    return await run_mutation(info, action=action, describe=describe, payload=payload, work=work)


def _named(route: routes.RouteSummary | None, verb: str) -> str:
    return f"{verb} {route.code} {route.name}" if route is not None else verb


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ, description="抄表本 of your scope, each with its meters in order.")
    async def reading_routes(self, info: Info) -> list[ReadingRouteType]:
        async with info.context.read() as session:
            found = await routes.reading_routes(session, scope_patterns=_scope(info))
        return [ReadingRouteType.of(route) for route in found]

    @strawberry.field(permission_classes=ENTER,
                      description="The routes assigned to you for `period` (YYYY-MM): each meter in walking order with "
                      "its household, last reading, expected range and whether the period's reading is missing.")
    async def my_reading_route(self, info: Info, period: str) -> list[ReadingRouteSheetType]:
        context = info.context
        if context.caller.kind is not PrincipalKind.staff:
            return []  # routes go to staff users; another principal's id names nobody's route
        async with context.read() as session:
            sheets = await routes.my_reading_routes(session, reader_user_id=context.caller.id, period=period,
                                                    now=utcnow(), tz=context.settings.tz, scope_patterns=_scope(info))
        return [ReadingRouteSheetType.of(sheet) for sheet in sheets]

    @strawberry.field(permission_classes=READ,
                      description="抄见率 per route and reader for `period` (YYYY-MM), optionally under an area.")
    async def reading_route_report(self, info: Info, period: str,
                                   area_id: strawberry.ID | None = None) -> list[ReadingRouteCompletionType]:
        context = info.context
        area = decode_id(area_id, "Area", field="areaId") if area_id is not None else None
        async with context.read() as session:
            rows = await routes.route_completion(session, period=period, area_id=area, tz=context.settings.tz,
                                                 scope_patterns=_scope(info))
        return [ReadingRouteCompletionType.of(row) for row in rows]


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=MANAGE, description="New 抄表本 of an area (empty; setReadingRouteMeters fills it).")
    async def create_reading_route(self, info: Info, input: CreateReadingRouteInput) -> ReadingRoutePayload:
        async def work(session: AsyncSession) -> routes.RouteSummary:
            route = await routes.create_route(
                session, code=input.code, name=input.name, area_id=decode_id(input.area_id, "Area", field="areaId"),
                window_days=input.window_days, reader_user_id=_reader_id(input.reader_id), now=utcnow(),
                scope_patterns=_scope(info))
            assert route.id is not None
            return await _summary(session, route.id)

        return await _run(info, "createReadingRoute", lambda route: _named(route, "新建抄表本"), _route_payload, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Rename a route or change its reading window.")
    async def update_reading_route(self, info: Info, id: strawberry.ID,
                                   input: UpdateReadingRouteInput) -> ReadingRoutePayload:
        async def work(session: AsyncSession) -> routes.RouteSummary:
            route_id = _route_id(id)
            await routes.update_route(
                session, route_id=route_id, name=input.name or None,
                window_days=input.window_days if isinstance(input.window_days, int) else None, now=utcnow(),
                scope_patterns=_scope(info))
            return await _summary(session, route_id)

        return await _run(info, "updateReadingRoute", lambda route: _named(route, "修改抄表本"), _route_payload, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Delete a route; its meters are free for other routes.")
    async def delete_reading_route(self, info: Info, id: strawberry.ID) -> DeleteReadingRoutePayload:
        async def work(session: AsyncSession) -> bool:
            await routes.delete_route(session, route_id=_route_id(id), scope_patterns=_scope(info))
            return True

        return await _run(info, "deleteReadingRoute", lambda _: "删除抄表本",
                          lambda done, errors: DeleteReadingRoutePayload(deleted=bool(done), errors=errors), work)

    @strawberry.mutation(permission_classes=MANAGE,
                         description="Make `meterIds` the route's meters in this order: household meters of the route's "
                         "area subtree, each on no other route; a refusal changes nothing.")
    async def set_reading_route_meters(self, info: Info, id: strawberry.ID,
                                       meter_ids: list[strawberry.ID]) -> ReadingRoutePayload:
        async def work(session: AsyncSession) -> routes.RouteSummary:
            route_id = _route_id(id)
            await routes.set_route_meters(
                session, route_id=route_id, meter_ids=[decode_id(value, "Meter", field="meterIds") for value in meter_ids],
                now=utcnow(), scope_patterns=_scope(info))
            return await _summary(session, route_id)

        return await _run(info, "setReadingRouteMeters",
                          lambda route: f"{_named(route, '设置抄表本表计')} ({len(meter_ids)} 块)", _route_payload, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Give the route to a reader (a staff user), or to nobody.")
    async def assign_reading_route_reader(self, info: Info, id: strawberry.ID,
                                          reader_id: strawberry.ID | None) -> ReadingRoutePayload:
        async def work(session: AsyncSession) -> routes.RouteSummary:
            route_id = _route_id(id)
            await routes.assign_reader(session, route_id=route_id, reader_user_id=_reader_id(reader_id), now=utcnow(),
                                       scope_patterns=_scope(info))
            return await _summary(session, route_id)

        def describe(route: routes.RouteSummary | None) -> str:
            reader = f" → {route.reader_name}" if route is not None and route.reader_name else ""
            return f"{_named(route, '分配抄表员')}{reader}"

        return await _run(info, "assignReadingRouteReader", describe, _route_payload, work)
