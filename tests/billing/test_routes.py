"""Reading routes (抄表本): an ordered route, refusals that write nothing (a meter on two
routes, a meter outside the area), the reader's sheet (last reading, expected range,
missing flag, only the reader's routes), a field reading synced twice stored once (and a
conflicting reuse of its key refused), dial photos, and 抄见率 on a hand-made period."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from backend.archives.models import Household, Meter
from backend.archives.service import assign_meter
from backend.billing import routes
from backend.db import session_factory
from backend.errors import DomainError, ErrorCode, NotFound
from backend.files.service import FileStore
from backend.files.storage import LocalStorage
from backend.graphql.relay import encode_id
from backend.readings import entry
from tests.billing.factories import SHANGHAI, at, ingest
from tests.factories import AreaTree, Staff, make_area_tree, make_household, make_staff
from tests.graphql.client import api_settings, graphql_client
from tests.readings.factories import make_meter

# The period under test and "now" (the 30th, inside October's 5-day window (26th, 1 Nov]).
PERIOD = "2026-10"
NOW = at(2026, 10, 30, 12)


@dataclass
class World:
    tree: AreaTree
    reader: Staff
    other_reader: Staff
    meters: list[Meter]  # east community, each serving a household
    households: list[Household]
    west_meter: Meter


async def _world(session: AsyncSession) -> World:
    tree = await make_area_tree(session)
    reader = await make_staff(session, permissions={"readings:write", "readings:read"}, areas=[tree.east])
    other_reader = await make_staff(session, permissions={"readings:write"}, areas=[tree.east])
    meters, households = [], []
    for name in ("王芳", "李娜", "赵六"):
        household = await make_household(session, area=tree.east_community, name=name)
        meter = await make_meter(session, area_id=tree.east_community.id, install_date=None)
        assert household.id is not None and meter.id is not None
        await assign_meter(session, meter_id=meter.id, household_id=household.id, valid_from=at(2026, 1, 1),
                           start_reading=Decimal(0))
        meters.append(meter)
        households.append(household)
    west_meter = await make_meter(session, area_id=tree.west_community.id, install_date=None)
    return World(tree, reader, other_reader, meters, households, west_meter)


@contextmanager
def counted(session: AsyncSession) -> Iterator[list[str]]:
    """The statements ``session`` sends meanwhile."""
    statements: list[str] = []
    engine = session.get_bind()

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def ids(rows: Sequence[Any]) -> list[int]:
    found = [row.id for row in rows]
    assert all(value is not None for value in found)
    return found


async def _route(session: AsyncSession, world: World, code: str, meters: Sequence[Meter],
                 reader: Staff | None = None) -> int:
    assert world.tree.east_community.id is not None
    route = await routes.create_route(
        session, code=code, name=f"翠湖 {code}", area_id=world.tree.east_community.id, now=NOW, scope_patterns=None,
        reader_user_id=reader.user.id if reader is not None else None)
    assert route.id is not None
    await routes.set_route_meters(session, route_id=route.id, meter_ids=ids(meters), now=NOW, scope_patterns=None)
    return route.id


async def _route_rows(session: AsyncSession, route_id: int) -> list[tuple[int, int]]:
    return [(row.meter_id, row.position) for row in (await session.execute(text(
        "SELECT meter_id, position FROM reading_route_meters WHERE route_id = :r ORDER BY position"), {"r": route_id}))]


async def test_a_route_keeps_its_meters_in_the_order_given(session: AsyncSession) -> None:
    world = await _world(session)
    walk = [world.meters[2], world.meters[0], world.meters[1]]
    route_id = await _route(session, world, "R1", walk)

    assert await _route_rows(session, route_id) == [(m.id, i) for i, m in enumerate(walk, start=1)]
    listed = await routes.reading_routes(session, scope_patterns=None, route_id=route_id)
    assert listed[0].meter_ids == ids(walk)

    # A new order replaces the old one whole.
    await routes.set_route_meters(session, route_id=route_id, meter_ids=ids(world.meters[:2]), now=NOW, scope_patterns=None)
    assert await _route_rows(session, route_id) == [(world.meters[0].id, 1), (world.meters[1].id, 2)]


async def test_a_meter_on_another_route_or_outside_the_area_is_refused_and_nothing_is_written(
    session: AsyncSession,
) -> None:
    world = await _world(session)
    first = await _route(session, world, "R1", world.meters[:1])
    second = await _route(session, world, "R2", world.meters[1:2])

    with pytest.raises(DomainError) as on_other:
        await routes.set_route_meters(session, route_id=second, meter_ids=ids([world.meters[1], world.meters[0]]),
                                      now=NOW, scope_patterns=None)
    assert on_other.value.code is ErrorCode.ROUTE_METER_ON_OTHER_ROUTE
    with pytest.raises(DomainError) as outside:
        await routes.set_route_meters(session, route_id=second, meter_ids=ids([world.meters[2], world.west_meter]),
                                      now=NOW, scope_patterns=None)
    assert outside.value.code is ErrorCode.ROUTE_METER_OUTSIDE_AREA
    with pytest.raises(DomainError) as repeated:
        await routes.set_route_meters(session, route_id=second, meter_ids=ids([world.meters[2], world.meters[2]]),
                                      now=NOW, scope_patterns=None)
    assert repeated.value.code is ErrorCode.ROUTE_METER_REPEATED

    assert await _route_rows(session, first) == [(world.meters[0].id, 1)]
    assert await _route_rows(session, second) == [(world.meters[1].id, 1)]


async def test_a_monitoring_point_and_a_route_outside_the_scope_are_refused(session: AsyncSession) -> None:
    world = await _world(session)
    route_id = await _route(session, world, "R1", [])
    await session.execute(text("UPDATE meters SET kind = 'monitoring' WHERE id = :id"), {"id": world.meters[0].id})

    with pytest.raises(DomainError) as monitoring:
        await routes.set_route_meters(session, route_id=route_id, meter_ids=ids(world.meters[:1]), now=NOW,
                                      scope_patterns=None)
    assert monitoring.value.code is ErrorCode.ROUTE_METER_NOT_HOUSEHOLD
    with pytest.raises(NotFound):
        await routes.set_route_meters(session, route_id=route_id, meter_ids=[], now=NOW,
                                      scope_patterns=[world.tree.west.path + "%"])
    assert await _route_rows(session, route_id) == []


async def test_the_readers_sheet_shows_last_reading_expected_range_and_missing_only_for_their_routes(
    session: AsyncSession,
) -> None:
    world = await _world(session)
    read, unread, elsewhere = world.meters
    await _route(session, world, "R1", [unread, read], reader=world.reader)
    await _route(session, world, "R2", [elsewhere], reader=world.other_reader)
    # `read` was read in the window (on the 28th); `unread` last on the 20th, before it.
    await ingest(session, read.id or 0, [(at(2026, 10, 20), "100"), (at(2026, 10, 28, 12), "108")], now=NOW)
    await ingest(session, unread.id or 0, [(at(2026, 10, 20, 12), "50")], now=NOW)
    # A baseline of 0.8 m³ a day for `unread` (10 days since its last reading → 8 m³
    # expected), none for `read` (set here over what the ingest's alarm evaluation made).
    for meter, average in ((unread, Decimal("0.8")), (read, None)):
        await session.execute(text(
            "INSERT INTO meter_usage_baselines (meter_id, day, average_m3) VALUES (:m, :d, :a) "
            "ON CONFLICT (meter_id) DO UPDATE SET day = EXCLUDED.day, average_m3 = EXCLUDED.average_m3"
        ), {"m": meter.id, "d": NOW.date(), "a": average})

    with counted(session) as statements:
        sheets = await routes.my_reading_routes(session, reader_user_id=world.reader.user.id or 0, period=PERIOD, now=NOW,
                                                tz=SHANGHAI, scope_patterns=world.reader.principal.scope_patterns())
    assert len(statements) == 1

    assert [sheet.code for sheet in sheets] == ["R1"]
    sheet = sheets[0]
    assert (sheet.window_start, sheet.window_end) == (at(2026, 10, 27), at(2026, 11, 1))
    first, second = sheet.stops
    assert (first.meter_id, first.position, second.meter_id, second.position) == (unread.id, 1, read.id, 2)
    assert (first.household_name, first.account_no) == ("李娜", world.households[1].account_no)
    assert (first.last_read_at, first.last_total_m3, first.last_quality) == (at(2026, 10, 20, 12), Decimal("50"), "actual")
    assert (first.expected_low_m3, first.expected_high_m3) == (Decimal("54.0000"), Decimal("66.0000"))
    assert first.missing and not second.missing
    assert (second.expected_low_m3, second.expected_high_m3) == (None, None)  # no baseline yet

    # Another period's window (September's) holds no reading of either.
    september = await routes.my_reading_routes(session, reader_user_id=world.reader.user.id or 0, period="2026-09",
                                               now=NOW, tz=SHANGHAI, scope_patterns=None)
    assert all(stop.missing for stop in september[0].stops)
    with pytest.raises(DomainError) as bad:
        await routes.my_reading_routes(session, reader_user_id=world.reader.user.id or 0, period="2026-13", now=NOW,
                                       scope_patterns=None)
    assert bad.value.code is ErrorCode.INVALID_PERIOD


async def test_the_report_gives_each_routes_completion_rate_for_the_period(session: AsyncSession) -> None:
    world = await _world(session)
    extra = await make_meter(session, area_id=world.tree.east_community.id, install_date=None)
    await _route(session, world, "R1", [*world.meters, extra], reader=world.reader)
    await _route(session, world, "R2", [], reader=world.other_reader)
    a, b, c = world.meters
    # In October's window (27 Oct, 1 Nov]: a (actual) and b (manual at the window's end) are read;
    # c only before the window; `extra` only an estimate inside it.
    await ingest(session, a.id or 0, [(at(2026, 10, 27, 8), "10")], now=NOW)
    await entry.enter_reading(session, meter_id=b.id or 0, read_at=at(2026, 11, 1), total_m3=Decimal(5), by="抄表员",
                              now=at(2026, 11, 1, 9), tz=SHANGHAI, scope_patterns=None)
    await ingest(session, c.id or 0, [(at(2026, 10, 27), "7")], now=NOW)
    await session.execute(text(
        "INSERT INTO readings (meter_id, read_at, total_m3, quality, source, received_at) "
        "VALUES (:m, :t, 1, 'estimated', 'estimate', :t)"), {"m": extra.id, "t": at(2026, 10, 29)})

    with counted(session) as statements:
        report = await routes.route_completion(session, period=PERIOD, tz=SHANGHAI, scope_patterns=None)
    assert len(statements) == 1
    report = await routes.route_completion(session, period=PERIOD, area_id=world.tree.east.id, tz=SHANGHAI,
                                           scope_patterns=None)

    by_code = {row.code: row for row in report}
    assert (by_code["R1"].meters, by_code["R1"].read, by_code["R1"].missing, by_code["R1"].rate) == (4, 2, 2, Decimal("50.00"))
    assert by_code["R1"].reader_name == world.reader.user.full_name
    assert (by_code["R2"].meters, by_code["R2"].rate) == (0, None)
    assert await routes.route_completion(session, period=PERIOD, area_id=world.tree.west.id, tz=SHANGHAI,
                                         scope_patterns=None) == []


# --------------------------------------------------------------------------- enterReading: key and photo


async def _entry_count(session: AsyncSession, meter_id: int) -> tuple[int, int]:
    row = (await session.execute(text(
        "SELECT (SELECT count(*) FROM readings WHERE meter_id = :m), (SELECT count(*) FROM reading_entries WHERE meter_id = :m)"
    ), {"m": meter_id})).one()
    return int(row[0]), int(row[1])


async def _enter(session: AsyncSession, meter_id: int, total: str, *, key: str | None = None,
                 read_at: datetime = at(2026, 10, 29, 10), **extra: Any) -> Any:
    return await entry.enter_reading(session, meter_id=meter_id, read_at=read_at, total_m3=Decimal(total), by="抄表员",
                                     now=NOW, tz=SHANGHAI, scope_patterns=None, idempotency_key=key, **extra)


async def test_a_reading_synced_twice_with_its_key_is_stored_once_and_a_conflicting_reuse_is_refused(
    session: AsyncSession,
) -> None:
    meter = await make_meter(session, install_date=None)
    assert meter.id is not None

    first = await _enter(session, meter.id, "12.5", key="c0ffee-1")
    replay = await _enter(session, meter.id, "12.5", key="c0ffee-1")

    assert (first.inserted, replay.inserted, replay.duplicates) == (1, 0, 1)
    assert await _entry_count(session, meter.id) == (1, 1)
    for total, read_at in (("13", at(2026, 10, 29, 10)), ("12.5", at(2026, 10, 29, 11))):
        with pytest.raises(DomainError) as conflict:
            await _enter(session, meter.id, total, key="c0ffee-1", read_at=read_at)
        assert (conflict.value.code, conflict.value.field) == (ErrorCode.IDEMPOTENCY_CONFLICT, "idempotencyKey")
    assert await _entry_count(session, meter.id) == (1, 1)


async def _stored_photo(session: AsyncSession, key: str, *, owner_id: int, content_type: str = "image/jpeg") -> None:
    # The row a finished put leaves, written here (the put commits on its own sessions).
    await session.execute(text(
        "INSERT INTO stored_files (key, purpose, filename, content_type, size_bytes, owner_kind, owner_id, created_at, "
        "expires_at) VALUES (:k, 'photos', 'dial.jpg', :ct, 10, 'staff', :o, :now, :exp)"
    ), {"k": key, "ct": content_type, "o": owner_id, "now": NOW, "exp": NOW + timedelta(hours=1)})


async def test_a_dial_photo_must_exist_and_be_the_callers_image_and_is_then_kept(session: AsyncSession,
                                                                                 tmp_path: Path) -> None:
    meter = await make_meter(session, install_date=None)
    assert meter.id is not None
    files = FileStore(LocalStorage(tmp_path / "files"), api_settings(data_dir=tmp_path))
    mine, theirs, pdf = (f"photos/2026/10/29/{name}.jpg" for name in ("a1b2", "c3d4", "e5f6"))
    await _stored_photo(session, mine, owner_id=7)
    await _stored_photo(session, theirs, owner_id=8)
    await _stored_photo(session, pdf, owner_id=7, content_type="application/pdf")

    def photo(key: str) -> entry.Photo:
        return entry.Photo(key=key, owner_kind="staff", owner_id=7)

    for key, code in (("photos/2026/10/29/nothing.jpg", ErrorCode.FILE_NOT_FOUND), (theirs, ErrorCode.PHOTO_INVALID),
                      (pdf, ErrorCode.PHOTO_INVALID)):
        with pytest.raises(DomainError) as refused:
            await _enter(session, meter.id, "3", photo=photo(key), files=files)
        assert (refused.value.code, refused.value.field) == (code, "photoId")
    assert await _entry_count(session, meter.id) == (0, 0)

    await _enter(session, meter.id, "3", photo=photo(mine), files=files)

    kept = (await session.execute(text("SELECT expires_at FROM stored_files WHERE key = :k"), {"k": mine})).scalar_one()
    linked = (await session.execute(text("SELECT photo_key FROM reading_entries WHERE meter_id = :m"),
                                    {"m": meter.id})).scalar_one()
    assert (kept, linked) == (None, mine)


# --------------------------------------------------------------------------- over GraphQL

MY_ROUTE = """
query($period: String!) {
  myReadingRoute(period: $period) { code meters missing
    stops { position meterCode accountNo householdName lastTotalM3 expectedLowM3 expectedHighM3 missing } }
}"""
ENTER = """
mutation($input: EnterReadingInput!) {
  enterReading(input: $input) { reading { totalM3 quality } inserted duplicates errors { field code } }
}"""


async def test_a_reader_walks_their_route_and_syncs_an_offline_reading_twice_over_graphql(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            world = await _world(session)
            walked = await _route(session, world, "G1", world.meters[:2], reader=world.reader)
            await _route(session, world, "G2", world.meters[2:], reader=world.other_reader)
            # The whole month is the window, so a reading made now counts whatever today is.
            await routes.update_route(session, route_id=walked, window_days=31, now=NOW, scope_patterns=None)
    finally:
        await engine.dispose()
    period = datetime.now(SHANGHAI).strftime("%Y-%m")
    meter_id = encode_id("Meter", world.meters[0].id or 0)
    read_at = (datetime.now(SHANGHAI) - timedelta(minutes=1)).isoformat()

    async with graphql_client(database_url) as client:
        token = await client.login(world.reader.username, world.reader.password)
        sheet = (await client.execute(MY_ROUTE, {"period": period}, token=token))["data"]["myReadingRoute"]
        assert [(s["code"], s["meters"], s["missing"]) for s in sheet] == [("G1", 2, 2)]
        assert [stop["meterCode"] for stop in sheet[0]["stops"]] == [m.code for m in world.meters[:2]]

        entered = {"meterId": meter_id, "readAt": read_at, "totalM3": "21.5", "idempotencyKey": "offline-7f3a"}
        first = (await client.execute(ENTER, {"input": entered}, token=token))["data"]["enterReading"]
        again = (await client.execute(ENTER, {"input": entered}, token=token))["data"]["enterReading"]
        conflict = (await client.execute(ENTER, {"input": {**entered, "totalM3": "22"}}, token=token))["data"]["enterReading"]
        no_photo = (await client.execute(ENTER, {"input": {**entered, "idempotencyKey": None,
                                                           "photoId": "photos/2026/01/01/none.jpg"}},
                                         token=token))["data"]["enterReading"]

        assert (first["inserted"], first["errors"]) == (1, [])
        assert (again["inserted"], again["duplicates"], again["reading"]["totalM3"], again["errors"]) == (0, 1, "21.5000", [])
        assert conflict["errors"] == [{"field": "idempotencyKey", "code": "IDEMPOTENCY_CONFLICT"}]
        assert no_photo["errors"] == [{"field": "photoId", "code": "FILE_NOT_FOUND"}]
        after = (await client.execute(MY_ROUTE, {"period": period}, token=token))["data"]["myReadingRoute"]
        assert [stop["missing"] for stop in after[0]["stops"]] == [False, True]
