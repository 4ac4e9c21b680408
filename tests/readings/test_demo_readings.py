"""The demo's readings: realistic, idempotent, and the alarm rules fire on exactly the
planted anomalies (backend.readings.demo)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.demo import load_demo
from backend.readings.demo import HOURLY_MINIMUM, DemoReadings, load_demo_readings

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 20, 10, 30, tzinfo=SHANGHAI)
HOUSEHOLDS, SEED = 300, 11
# Kinds a normal meter must never raise (rollover is informational, communication
# failures come from the field, not from readings).
ABNORMAL_KINDS = ("silent", "reverse_flow", "zero_use", "high_use", "battery_low", "valve_abnormal")


@pytest.fixture(scope="module")
async def demo(committed_sessions: async_sessionmaker[AsyncSession]) -> DemoReadings:
    async with committed_sessions() as session, session.begin():
        await load_demo(session, households=HOUSEHOLDS, seed=SEED)
    async with committed_sessions() as session, session.begin():
        return await load_demo_readings(session, seed=SEED, now=NOW)


async def _rows(sessions: async_sessionmaker[AsyncSession], statement: str, **params: object) -> list[tuple[object, ...]]:
    async with sessions() as session:
        return [tuple(row) for row in await session.execute(text(statement), params)]


async def test_every_installed_meter_has_readings_and_hourly_meters_report_every_hour(
    demo: DemoReadings, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    unread = await _rows(committed_sessions,
                         "SELECT m.code FROM meters m WHERE m.status = 'installed' "
                         "AND NOT EXISTS (SELECT FROM latest_readings l WHERE l.meter_id = m.id)")
    assert demo.rejected == 0 and demo.inserted > 0
    assert unread == []
    assert len(demo.hourly_meter_ids) >= HOURLY_MINIMUM
    per_day = await _rows(committed_sessions,
                          "SELECT meter_id, min(reading_count), max(reading_count) FROM daily_usage "
                          "WHERE meter_id = ANY(:ids) AND day > CAST(:start AS date) AND day < CAST(:today AS date) "
                          "GROUP BY meter_id", ids=list(demo.hourly_meter_ids), start=demo.start.date(), today=NOW.date())
    assert len(per_day) == len(demo.hourly_meter_ids)
    assert all(low == high == 24 for _, low, high in per_day), per_day
    # The others once a day (twice on a replacement day: the opening or closing reading).
    daily = await _rows(committed_sessions,
                        "SELECT reading_count, count(*) FROM daily_usage d JOIN meters m ON m.id = d.meter_id "
                        "WHERE m.kind = 'household' AND NOT d.meter_id = ANY(:ids) GROUP BY 1 ORDER BY 1",
                        ids=list(demo.hourly_meter_ids))
    assert daily[0][0] == 1 and daily[-1][0] <= 2 and daily[0][1] > 100 * daily[-1][1]  # type: ignore[operator]
    monitoring = await _rows(committed_sessions,
                             "SELECT m.meter_type, min(r.flow_rate), max(r.flow_rate), min(r.pressure), max(r.pressure) "
                             "FROM readings r JOIN meters m ON m.id = r.meter_id WHERE m.kind = 'monitoring' "
                             "AND r.read_at > :since GROUP BY m.meter_type ORDER BY 1", since=NOW.replace(day=1))
    (_, low_flow, high_flow, _, _), (_, _, _, low_mpa, high_mpa) = monitoring
    assert Decimal(30) < low_flow < high_flow < Decimal(600)  # type: ignore[operator]
    assert Decimal("0.25") <= low_mpa < high_mpa <= Decimal("0.40")  # type: ignore[operator]



async def test_pressure_gauges_store_a_zero_register_and_flow_meters_their_register(
    demo: DemoReadings, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    # Per type of monitoring point: readings, registers that are not 0, registers that
    # step back, readings without the type's figure, readings with the other type's.
    shapes = await _rows(committed_sessions, """
        SELECT m.meter_type, count(*), count(*) FILTER (WHERE r.total_m3 <> 0),
               count(*) FILTER (WHERE r.total_m3 < r.previous),
               count(*) FILTER (WHERE CASE m.meter_type WHEN 'flow_monitor' THEN r.flow_rate ELSE r.pressure END IS NULL),
               count(*) FILTER (WHERE CASE m.meter_type WHEN 'flow_monitor' THEN r.pressure ELSE r.flow_rate END IS NOT NULL)
        FROM meters m JOIN LATERAL (
            SELECT total_m3, flow_rate, pressure, lag(total_m3) OVER (ORDER BY read_at) AS previous
            FROM readings WHERE meter_id = m.id) r ON TRUE
        WHERE m.kind = 'monitoring' GROUP BY 1 ORDER BY 1""")
    stations = await _rows(committed_sessions, """
        SELECT s.code, sum(d.usage_m3) FILTER (WHERE m.meter_type = 'pressure_monitor'),
               sum(d.usage_m3) FILTER (WHERE m.meter_type = 'flow_monitor')
        FROM monitoring_stations s JOIN meters m ON m.station_id = s.id JOIN daily_usage d ON d.meter_id = m.id
        GROUP BY 1 ORDER BY 1""")

    (flow_type, flow_count, flow_registers, steps_back, no_flow, flow_pressure), pressure_row = shapes
    assert (flow_type, flow_registers, steps_back, no_flow, flow_pressure) == ("flow_monitor", flow_count, 0, 0, 0)
    assert pressure_row[0] == "pressure_monitor" and pressure_row[1] > 0  # type: ignore[operator]
    assert pressure_row[2:] == (0, 0, 0, 0)  # every register 0, every reading with its pressure and no flow
    # So a station's volume is its flow meter's: the gauge's days all use nothing.
    assert [code for code, _, _ in stations] == ["GG-EAST", "GG-NORTH", "GG-SOUTH", "GG-WEST"]
    assert all(gauge == 0 and flowed > 0 for _, gauge, flowed in stations), stations  # type: ignore[operator]


async def test_household_usage_is_plausible(demo: DemoReadings, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    # Cold water of residential households over the last full month (October 2026).
    months = await _rows(committed_sessions,
                         "SELECT sum(d.usage_m3) FROM daily_usage d JOIN meter_assignments s ON s.meter_id = d.meter_id "
                         "JOIN households h ON h.id = s.household_id JOIN meters m ON m.id = d.meter_id "
                         "WHERE h.customer_type = 'residential' AND m.meter_type = 'cold_water' "
                         "AND d.day BETWEEN DATE '2026-10-01' AND DATE '2026-10-31' "
                         "AND NOT d.meter_id = ANY(:planted) GROUP BY h.id ORDER BY 1",
                         planted=list(demo.anomalies.meter_ids()))
    usage = sorted(float(row[0]) for row in months)  # type: ignore[arg-type]
    median = usage[len(usage) // 2]
    assert len(usage) > HOUSEHOLDS * 0.8
    assert 7 <= median <= 15
    assert usage[0] >= 2 and usage[-1] <= 30
    # Summer uses more than winter.
    seasons = await _rows(committed_sessions,
                          "SELECT sum(usage_m3) FILTER (WHERE day BETWEEN DATE '2026-07-01' AND DATE '2026-07-31'), "
                          "sum(usage_m3) FILTER (WHERE day BETWEEN DATE '2026-01-01' AND DATE '2026-01-31') FROM daily_usage")
    july, january = seasons[0]
    assert july > january * Decimal("1.2")  # type: ignore[operator]


async def test_loading_again_with_the_same_seed_and_now_writes_nothing(
    demo: DemoReadings, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    before = await _rows(committed_sessions, "SELECT count(*), sum(total_m3) FROM readings")
    async with committed_sessions() as session, session.begin():
        again = await load_demo_readings(session, seed=SEED, now=NOW, evaluate=False)
    assert again.inserted == 0 and again.rejected == 0
    assert again.anomalies == demo.anomalies and again.hourly_meter_ids == demo.hourly_meter_ids
    assert await _rows(committed_sessions, "SELECT count(*), sum(total_m3) FROM readings") == before


async def test_the_replacement_has_readings_on_both_sides(
    demo: DemoReadings, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    assert demo.anomalies.replacement is not None
    old, new = demo.anomalies.replacement
    sides = await _rows(committed_sessions,
                        "SELECT (SELECT max(read_at) FROM readings WHERE meter_id = :old), "
                        "(SELECT total_m3 FROM readings WHERE meter_id = :old ORDER BY read_at DESC LIMIT 1), "
                        "(SELECT min(read_at) FROM readings WHERE meter_id = :new), "
                        "(SELECT total_m3 FROM readings WHERE meter_id = :new ORDER BY read_at LIMIT 1), "
                        "r.replaced_at, r.old_final_reading, r.new_initial_reading, "
                        "(SELECT count(*) FROM readings WHERE meter_id = :old) "
                        "FROM meter_replacements r WHERE r.old_meter_id = :old AND r.new_meter_id = :new", old=old, new=new)
    old_last, old_total, new_first, new_total, replaced_at, old_final, new_initial, old_count = sides[0]
    assert old_last == replaced_at == new_first and old_total == old_final and new_total == new_initial
    assert old_count > 7  # type: ignore[operator]
    backwards = await _rows(committed_sessions,
                            "SELECT count(*) FROM (SELECT total_m3 < lag(total_m3) OVER (PARTITION BY meter_id ORDER BY read_at) AS back "
                            "FROM readings WHERE meter_id = ANY(:ids)) r WHERE back", ids=[old, new])
    assert backwards == [(0,)]


async def test_alarms_fire_on_the_planted_anomalies_and_on_no_normal_meter(
    demo: DemoReadings, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    assert demo.alarms is not None, "backend.readings.alarms.service is missing"
    live = await _rows(committed_sessions, "SELECT meter_id, kind FROM meter_alarms WHERE status <> 'closed'")
    raised: dict[str, set[int]] = {}
    for meter_id, kind in live:
        raised.setdefault(str(kind), set()).add(int(meter_id))  # type: ignore[call-overload]
    planted = demo.anomalies.by_kind()
    assert all(planted[kind] for kind in planted), planted
    for kind, meters in planted.items():
        assert set(meters) <= raised.get(kind, set()), (kind, meters, raised.get(kind))
    normal_alarms = {(kind, meter_id) for kind in ABNORMAL_KINDS for meter_id in raised.get(kind, set())
                     if meter_id not in demo.anomalies.meter_ids()}
    assert normal_alarms == set()
    assert raised.get("rollover", set()) == set(demo.anomalies.rollover)


async def test_loading_days_later_tops_up_without_a_register_stepping_back(
    demo: DemoReadings, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    # ``make demo`` loads every time it starts: a later load continues every register.
    later = NOW + timedelta(days=3)
    async with committed_sessions() as session, session.begin():
        topped = await load_demo_readings(session, seed=SEED, now=later)
    assert topped.inserted > 0 and topped.rejected == 0 and topped.anomalies == demo.anomalies
    expected = set(demo.anomalies.reverse_flow) | set(demo.anomalies.rollover)
    backwards = await _rows(committed_sessions,
                            "SELECT DISTINCT meter_id FROM (SELECT meter_id, total_m3 < lag(total_m3) OVER "
                            "(PARTITION BY meter_id ORDER BY read_at) AS back FROM readings) r WHERE back")
    assert {row[0] for row in backwards} == expected
    newest = await _rows(committed_sessions,
                         "SELECT count(*) FROM latest_readings l JOIN meters m ON m.id = l.meter_id "
                         "WHERE m.status = 'installed' AND l.read_at < :since AND NOT l.meter_id = ANY(:silent)",
                         since=later - timedelta(days=1), silent=list(demo.anomalies.silent))
    assert newest == [(0,)]
    live = await _rows(committed_sessions, "SELECT meter_id, kind FROM meter_alarms WHERE status <> 'closed' "
                                           "AND kind = ANY(:kinds) AND NOT meter_id = ANY(:planted)",
                       kinds=list(ABNORMAL_KINDS), planted=list(demo.anomalies.meter_ids()))
    assert live == []
