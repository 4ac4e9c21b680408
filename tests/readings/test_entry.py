"""Manual entry (enterReading) and corrections (correctReading): service and GraphQL."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.archives.models import AreaKind, MeterStatus, MeterType
from backend.archives.service import MeterChanges, MeterModelFields, create_area, create_meter, save_meter_model
from backend.db import session_factory
from backend.errors import DomainError, ErrorCode, NotFound
from backend.events.service import load_event, payload_of
from backend.graphql.relay import encode_id
from backend.readings.entry import correct_reading, enter_reading, stored_reading
from backend.readings.events import ReadingsIngested
from backend.readings.models import ReadingQuality
from backend.readings.service import ReadingIn, ingest_readings
from tests.factories import make_staff, unique
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World
from tests.readings.factories import make_meter

# The GraphQL tests' committed world (admin, east operator, nobody) and client.
world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=SHANGHAI)
actual, manual = ReadingQuality.actual, ReadingQuality.manual


def at(day: int, hour: int = 8) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=SHANGHAI)


async def enter(session: AsyncSession, meter_id: int, read_at: datetime, total: str, **extra: Any):  # type: ignore[no-untyped-def]
    return await enter_reading(session, meter_id=meter_id, read_at=read_at, total_m3=Decimal(total), by="wang",
                               now=NOW, tz=SHANGHAI, scope_patterns=extra.pop("scope_patterns", None), **extra)


async def ingest(session: AsyncSession, meter_id: int, read_at: datetime, total: str,
                 quality: ReadingQuality = actual):  # type: ignore[no-untyped-def]
    return await ingest_readings(session, readings=[ReadingIn(meter_id, read_at, Decimal(total), quality)],
                                 source="test", now=NOW, tz=SHANGHAI)


async def count_readings(session: AsyncSession, meter_id: int) -> int:
    return int((await session.execute(text("SELECT count(*) FROM readings WHERE meter_id = :m"), {"m": meter_id})).scalar_one())


async def event_count(session: AsyncSession) -> int:
    return int((await session.execute(text("SELECT count(*) FROM domain_events WHERE kind = 'readings.ingested'"))).scalar_one())


async def daily(session: AsyncSession, meter_id: int, day: date) -> Decimal:
    row = await session.execute(text("SELECT usage_m3 FROM daily_usage WHERE meter_id = :m AND day = :d"),
                                {"m": meter_id, "d": day})
    return Decimal(row.scalar_one())


# --------------------------------------------------------------------------- enter_reading


async def test_manual_entry_is_stored_as_manual_with_the_entering_user_as_source(session: AsyncSession) -> None:
    meter = await make_meter(session)

    result = await enter(session, meter.id, at(20), "12.5")

    assert (result.inserted, result.replaced, result.duplicates) == (1, 0, 0)
    stored = await stored_reading(session, meter_id=meter.id, read_at=at(20))
    assert stored is not None
    assert (stored.total_m3, stored.quality, stored.source) == (Decimal("12.5000"), manual, "manual:wang")


async def test_re_entering_the_same_reading_is_a_duplicate(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await enter(session, meter.id, at(20), "12.5")

    again = await enter(session, meter.id, at(20), "12.5")

    assert (again.inserted, again.replaced, again.duplicates) == (0, 0, 1)
    assert await count_readings(session, meter.id) == 1


async def test_an_actual_reading_at_the_same_instant_replaces_a_manual_one(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await enter(session, meter.id, at(20), "12.5")

    result = await ingest(session, meter.id, at(20), "12.75")

    assert result.replaced == 1
    stored = await stored_reading(session, meter_id=meter.id, read_at=at(20))
    assert stored is not None and (stored.total_m3, stored.quality) == (Decimal("12.7500"), actual)


async def test_a_manual_entry_does_not_replace_an_actual_reading(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, meter.id, at(20), "12.75")

    result = await enter(session, meter.id, at(20), "99")

    assert (result.inserted, result.replaced, result.duplicates) == (0, 0, 1)
    stored = await stored_reading(session, meter_id=meter.id, read_at=at(20))
    assert stored is not None and (stored.total_m3, stored.quality) == (Decimal("12.7500"), actual)


async def test_a_meter_outside_the_scope_is_not_found_and_nothing_is_written(session: AsyncSession) -> None:
    meter = await make_meter(session)
    events = await event_count(session)

    with pytest.raises(NotFound) as refused:
        await enter(session, meter.id, at(20), "12.5", scope_patterns=["/999999999/%"])

    assert refused.value.field == "meterId"
    assert await count_readings(session, meter.id) == 0
    assert await event_count(session) == events


async def test_a_total_lower_than_the_previous_reading_is_refused_until_confirmed(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, meter.id, at(19), "50")

    with pytest.raises(DomainError) as refused:
        await enter(session, meter.id, at(20), "40")
    assert (refused.value.code, refused.value.field) == (ErrorCode.READING_LOWER_THAN_PREVIOUS, "totalM3")
    assert await count_readings(session, meter.id) == 1

    confirmed = await enter(session, meter.id, at(20), "40", confirm_lower=True)
    assert confirmed.inserted == 1


async def test_a_total_lower_than_an_estimate_needs_no_confirmation(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, meter.id, at(18), "45")
    await ingest(session, meter.id, at(19), "50", ReadingQuality.estimated)

    result = await enter(session, meter.id, at(20), "47")

    assert result.inserted == 1


async def test_a_lower_total_past_a_register_rollover_needs_no_confirmation(session: AsyncSession) -> None:
    area = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    model = await save_meter_model(session, fields=MeterModelFields(
        vendor=unique("厂家"), name=unique("型号"), caliber=20, register_digits=4))
    code = unique("R")
    meter = await create_meter(session, fields=MeterChanges(
        name=code, code=code, address=f"{abs(hash(code)) % 10**14:014d}", meter_type=MeterType.cold_water,
        area_id=area.id, model_id=model.id, install_date=date(2025, 1, 1), initial_reading=Decimal(0),
        status=MeterStatus.installed,
    ))
    await ingest(session, meter.id, at(19), "9990")

    result = await enter(session, meter.id, at(20), "5")

    assert result.inserted == 1


async def test_ingest_rejections_become_field_errors(session: AsyncSession) -> None:
    meter = await make_meter(session, install_date=date(2026, 11, 1))

    with pytest.raises(DomainError) as future:
        await enter(session, meter.id, at(26, 8), "1")
    with pytest.raises(DomainError) as early:
        await enter(session, meter.id, datetime(2026, 10, 30, tzinfo=SHANGHAI), "1")
    with pytest.raises(DomainError) as negative:
        await enter(session, meter.id, at(20), "-1")

    assert (future.value.code, future.value.field) == (ErrorCode.READ_AT_IN_FUTURE, "readAt")
    assert (early.value.code, early.value.field) == (ErrorCode.READ_BEFORE_INSTALL, "readAt")
    assert (negative.value.code, negative.value.field) == (ErrorCode.INVALID_TOTAL, "totalM3")
    assert await count_readings(session, meter.id) == 0


# --------------------------------------------------------------------------- correct_reading


async def test_a_correction_changes_the_total_and_source_keeps_the_quality_and_refreshes_the_rollup(
    session: AsyncSession,
) -> None:
    meter = await make_meter(session)
    await ingest(session, meter.id, at(19), "10")
    await ingest(session, meter.id, at(20), "15")
    await ingest(session, meter.id, at(21), "17")
    assert await daily(session, meter.id, date(2026, 11, 20)) == Decimal(5)
    events = await event_count(session)

    correction = await correct_reading(session, meter_id=meter.id, read_at=at(20), total_m3=Decimal("12"),
                                       reason="抄表员看错", by="wang", now=NOW, tz=SHANGHAI, scope_patterns=None)

    assert correction.previous_total == Decimal("15.0000")
    assert (correction.reading.total_m3, correction.reading.quality) == (Decimal("12.0000"), actual)
    assert correction.reading.source == "correction:wang"
    assert await daily(session, meter.id, date(2026, 11, 20)) == Decimal(2)
    assert await daily(session, meter.id, date(2026, 11, 21)) == Decimal(5)
    assert await event_count(session) == events + 1


async def test_a_corrections_event_spans_the_corrected_reading(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, meter.id, at(19), "10")
    await ingest(session, meter.id, at(20), "15")

    await correct_reading(session, meter_id=meter.id, read_at=at(19), total_m3=Decimal("9"),
                          reason="抄表员看错", by="wang", now=NOW, tz=SHANGHAI, scope_patterns=None)

    newest = (await session.execute(text("SELECT max(id) FROM domain_events WHERE kind = 'readings.ingested'"))).scalar_one()
    event = await load_event(session, newest)
    assert event is not None
    payload = payload_of(event, ReadingsIngested)
    assert (payload.meter_ids, payload.first_read_at, payload.last_read_at) == ((meter.id,), at(19), at(19))


async def test_correcting_a_missing_reading_or_without_a_reason_is_refused(session: AsyncSession) -> None:
    meter = await make_meter(session)
    await ingest(session, meter.id, at(20), "15")

    with pytest.raises(DomainError) as missing:
        await correct_reading(session, meter_id=meter.id, read_at=at(21), total_m3=Decimal(1), reason="x", by="wang",
                              now=NOW, tz=SHANGHAI, scope_patterns=None)
    with pytest.raises(DomainError) as no_reason:
        await correct_reading(session, meter_id=meter.id, read_at=at(20), total_m3=Decimal(1), reason="  ", by="wang",
                              now=NOW, tz=SHANGHAI, scope_patterns=None)
    with pytest.raises(DomainError) as long_reason:
        await correct_reading(session, meter_id=meter.id, read_at=at(20), total_m3=Decimal(1), reason="长" * 501,
                              by="wang", now=NOW, tz=SHANGHAI, scope_patterns=None)
    with pytest.raises(DomainError) as out_of_scope:
        await correct_reading(session, meter_id=meter.id, read_at=at(20), total_m3=Decimal(1), reason="x", by="wang",
                              now=NOW, tz=SHANGHAI, scope_patterns=["/999999999/%"])

    assert missing.value.code == ErrorCode.NOT_FOUND
    assert (no_reason.value.code, no_reason.value.field) == (ErrorCode.REQUIRED, "reason")
    assert (long_reason.value.code, long_reason.value.field) == (ErrorCode.TOO_LONG, "reason")
    assert out_of_scope.value.code == ErrorCode.NOT_FOUND
    stored = await stored_reading(session, meter_id=meter.id, read_at=at(20))
    assert stored is not None and stored.total_m3 == Decimal("15.0000")


# --------------------------------------------------------------------------- GraphQL

ENTER = """
mutation Enter($input: EnterReadingInput!) {
  enterReading(input: $input) {
    reading { meterId readAt totalM3 quality source }
    inserted replaced duplicates
    errors { field code message messageEn }
  }
}
"""

CORRECT = """
mutation Correct($input: CorrectReadingInput!) {
  correctReading(input: $input) {
    reading { meterId totalM3 quality source }
    previousTotalM3
    errors { field code message }
  }
}
"""


async def _world_meter(engine: AsyncEngine, world: World, *, east: bool) -> int:
    area = world.tree.east_community if east else world.tree.west_community
    code = unique("G")
    async with session_factory(engine)() as session, session.begin():
        meter = await create_meter(session, fields=MeterChanges(
            name=code, code=code, address=f"{abs(hash(code)) % 10**14:014d}", meter_type=MeterType.cold_water,
            area_id=area.id, install_date=date(2025, 1, 1), initial_reading=Decimal(0), status=MeterStatus.installed,
        ))
    assert meter.id is not None
    return meter.id


async def _audit(engine: AsyncEngine, action: str) -> list[Any]:
    async with session_factory(engine)() as session:
        rows = await session.execute(
            text("SELECT summary, payload, success FROM audit_log WHERE action = :a ORDER BY id"), {"a": action}
        )
        return list(rows.all())


async def test_enter_reading_over_graphql_stores_a_manual_reading_and_audits_it(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine,
) -> None:
    meter_id = await _world_meter(committed_engine, world, east=True)
    token = await client.login(world.admin.username, world.admin.password)
    read_at = "2026-01-05T09:30:00+08:00"

    result = await client.execute(ENTER, {"input": {"meterId": encode_id("Meter", meter_id), "readAt": read_at,
                                                    "totalM3": "321.5"}}, token=token)

    payload = result["data"]["enterReading"]
    assert payload["errors"] == []
    assert (payload["inserted"], payload["replaced"], payload["duplicates"]) == (1, 0, 0)
    assert payload["reading"]["totalM3"] == "321.5000"
    assert payload["reading"]["quality"] == "manual"
    assert payload["reading"]["source"] == f"manual:{world.admin.user.full_name}"
    audits = await _audit(committed_engine, "enterReading")
    assert audits[-1].success is True


async def test_enter_reading_refusals_come_back_as_payload_errors(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine,
) -> None:
    east = await _world_meter(committed_engine, world, east=True)
    west = await _world_meter(committed_engine, world, east=False)
    async with session_factory(committed_engine)() as session, session.begin():
        await ingest_readings(session, readings=[ReadingIn(east, datetime(2026, 1, 4, tzinfo=SHANGHAI), Decimal(500))],
                              source="test", now=NOW, tz=SHANGHAI)
    async with session_factory(committed_engine)() as session, session.begin():
        operator = await make_staff(session, permissions={"readings:write"}, areas=[world.tree.east])
    token = await client.login(operator.username, operator.password)
    read_at = "2026-01-05T09:30:00+08:00"

    lower = await client.execute(ENTER, {"input": {"meterId": encode_id("Meter", east), "readAt": read_at,
                                                   "totalM3": "400"}}, token=token)
    hidden = await client.execute(ENTER, {"input": {"meterId": encode_id("Meter", west), "readAt": read_at,
                                                    "totalM3": "400"}}, token=token)
    confirmed = await client.execute(ENTER, {"input": {"meterId": encode_id("Meter", east), "readAt": read_at,
                                                       "totalM3": "400", "confirmLower": True}}, token=token)

    assert [(e["code"], e["field"]) for e in lower["data"]["enterReading"]["errors"]] == [
        ("READING_LOWER_THAN_PREVIOUS", "totalM3")]
    assert [(e["code"], e["field"]) for e in hidden["data"]["enterReading"]["errors"]] == [("NOT_FOUND", "meterId")]
    assert confirmed["data"]["enterReading"]["errors"] == []
    assert confirmed["data"]["enterReading"]["inserted"] == 1


async def test_enter_and_correct_reading_require_readings_write(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.nobody.username, world.nobody.password)
    meter = encode_id("Meter", 1)

    entered = await client.execute(ENTER, {"input": {"meterId": meter, "readAt": "2026-01-05T09:30:00+08:00",
                                                     "totalM3": "1"}}, token=token)
    corrected = await client.execute(CORRECT, {"input": {"meterId": meter, "readAt": "2026-01-05T09:30:00+08:00",
                                                         "totalM3": "1", "reason": "x"}}, token=token)

    assert entered["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert corrected["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_correct_reading_over_graphql_audits_old_and_new_totals_with_the_reason(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine,
) -> None:
    meter_id = await _world_meter(committed_engine, world, east=True)
    read_at = datetime(2026, 1, 6, 8, tzinfo=SHANGHAI)
    async with session_factory(committed_engine)() as session, session.begin():
        await ingest_readings(session, readings=[ReadingIn(meter_id, read_at, Decimal("88.5"))], source="test",
                              now=NOW, tz=SHANGHAI)
    token = await client.login(world.admin.username, world.admin.password)

    result = await client.execute(CORRECT, {"input": {"meterId": encode_id("Meter", meter_id),
                                                      "readAt": read_at.isoformat(), "totalM3": "85.5",
                                                      "reason": "集中器误码"}}, token=token)

    payload = result["data"]["correctReading"]
    assert payload["errors"] == []
    assert (payload["reading"]["totalM3"], payload["previousTotalM3"]) == ("85.5000", "88.5000")
    assert payload["reading"]["quality"] == "actual"
    audit = (await _audit(committed_engine, "correctReading"))[-1]
    assert audit.success is True
    assert "88.5000 → 85.5000" in audit.summary and "集中器误码" in audit.summary
    assert audit.payload["input"]["reason"] == "集中器误码"
    assert audit.payload["input"]["totalM3"] == "85.5"
