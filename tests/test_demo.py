"""``shuiwu demo load``: deterministic, idempotent, and shaped like a real utility."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from backend import demo
from backend.archives.service import room_labels_by_household_ids
from backend.cli import app as cli_app
from backend.demo import load_demo


async def _snapshot(session: AsyncSession) -> tuple[int, int, int, list[tuple[object, ...]]]:
    households = (await session.execute(text("SELECT count(*) FROM households WHERE account_no LIKE '01%'"))).scalar_one()
    areas = (await session.execute(text("SELECT count(*) FROM areas"))).scalar_one()
    owners = (await session.execute(text(
        "SELECT count(*) FROM households h WHERE NOT EXISTS "
        "(SELECT 1 FROM household_owners o WHERE o.household_id = h.id AND o.valid_to IS NULL)"
    ))).scalar_one()
    sample = [tuple(row) for row in await session.execute(text(
        "SELECT h.account_no, h.name, h.phone, h.address, h.customer_type, a.kind FROM households h "
        "JOIN areas a ON a.id = h.area_id WHERE account_no IN ('0100000001', '0100000500', '0100003000') ORDER BY 1"
    ))]
    return households, areas, owners, sample


async def _devices(session: AsyncSession) -> dict[str, object]:
    async def one(statement: str) -> object:
        return (await session.execute(text(statement))).scalar_one()

    return {
        "models": await one("SELECT count(*) FROM meter_models"),
        "swapped_models": await one("SELECT count(*) FROM meter_models WHERE di_byte_order = '1F90'"),
        "vendors": await one("SELECT count(DISTINCT vendor) FROM meter_models"),
        "meters": await one("SELECT count(*) FROM meters"),
        "household_meters": await one("SELECT count(*) FROM meters WHERE code LIKE 'W%'"),
        "concentrators": await one("SELECT count(*) FROM concentrators"),
        "connections": await one("SELECT string_agg(DISTINCT connection, ',' ORDER BY connection) FROM concentrators"),
        "smallest": await one("SELECT min(n) FROM (SELECT count(*) AS n FROM meters WHERE concentrator_id IS NOT NULL "
                              "GROUP BY concentrator_id) c"),
        "largest": await one("SELECT max(n) FROM (SELECT count(*) AS n FROM meters WHERE concentrator_id IS NOT NULL "
                             "GROUP BY concentrator_id) c"),
        "monitoring": await one("SELECT count(*) FROM meters WHERE kind = 'monitoring'"),
        "monitoring_points": await one("SELECT count(DISTINCT location) FROM meters WHERE kind = 'monitoring'"),
        "stations": await one("SELECT string_agg(s.code || ':' || s.name || ':' || m.meter_type, ',' ORDER BY s.code, m.code) "
                              "FROM monitoring_stations s JOIN meters m ON m.station_id = s.id "
                              "WHERE m.area_id = s.area_id AND m.status = 'installed'"),
        "monitoring_assigned": await one("SELECT count(*) FROM meter_assignments s JOIN meters m ON m.id = s.meter_id "
                                         "WHERE m.kind = 'monitoring'"),
        "assignments": await one("SELECT count(*) FROM meter_assignments"),
        "open": await one("SELECT count(*) FROM meter_assignments WHERE valid_to IS NULL"),
        "unserved": await one("SELECT count(*) FROM households h WHERE account_no LIKE '01%' AND NOT EXISTS "
                              "(SELECT 1 FROM meter_assignments s WHERE s.household_id = h.id AND s.valid_to IS NULL)"),
        "from_opening": await one("SELECT count(*) FROM households h JOIN meter_assignments s ON s.household_id = h.id "
                                  "WHERE h.account_no LIKE '01%' AND s.valid_from = h.created_at"),
        "replacements": await one("SELECT count(*) FROM meter_replacements"),
        "replacement_chain": await one(
            "SELECT count(*) FROM meter_replacements r JOIN meter_assignments o ON o.meter_id = r.old_meter_id "
            "AND o.valid_to = r.replaced_at AND o.end_reading = r.old_final_reading JOIN meter_assignments n "
            "ON n.meter_id = r.new_meter_id AND n.valid_from = r.replaced_at AND n.household_id = o.household_id "
            "JOIN meters m ON m.id = r.old_meter_id AND m.status = 'retired'"),
        "sample": [tuple(row) for row in await session.execute(text(
            "SELECT m.code, m.address, c.region_code, c.terminal_address, m.measurement_point FROM meters m "
            "JOIN concentrators c ON c.id = m.concentrator_id WHERE m.code IN ('W00000001', 'W00002999') ORDER BY 1"))],
    }


async def test_demo_load_scales_areas_is_idempotent_and_realistic(session: AsyncSession) -> None:
    await load_demo(session, households=3000, seed=7)
    first = await _snapshot(session)
    devices = await _devices(session)
    await load_demo(session, households=3000, seed=7)
    second = await _snapshot(session)

    assert first == second
    assert await _devices(session) == devices
    # The load leaves the planner's statistics behind it (ANALYZE), as a bulk load should.
    estimated = await session.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'households'::regclass"))
    assert estimated.scalar_one() >= 3000
    replaced = devices["replacements"]
    assert devices["models"] == 4 and devices["vendors"] == 3 and devices["swapped_models"] == 1
    assert devices["household_meters"] == 3000 + 0 and devices["meters"] == 3000 + replaced + 8  # type: ignore[operator]
    assert devices["monitoring"] == 8 and devices["monitoring_points"] == 4 and devices["monitoring_assigned"] == 0
    # 东/南/西/北干管: one station each, of an installed flow meter and pressure gauge in its area.
    assert devices["stations"] == ",".join(f"GG-{slug}:{label}干管网:{kind}" for slug, label in (
        ("EAST", "东"), ("NORTH", "北"), ("SOUTH", "南"), ("WEST", "西")) for kind in ("flow_monitor", "pressure_monitor"))
    assert devices["connections"] == "dtu_socket,serial,tcp_login"
    assert 3000 / 128 <= devices["concentrators"] <= 3000 / 32  # type: ignore[operator]
    assert 32 <= devices["smallest"] <= devices["largest"] <= 128  # type: ignore[operator]
    assert devices["unserved"] == 0 and devices["open"] == 3000
    assert devices["assignments"] == 3000 + replaced  # type: ignore[operator]
    assert 1 <= replaced <= 30 and devices["replacement_chain"] == replaced  # type: ignore[operator]
    assert devices["from_opening"] == 3000
    assert [row[0] for row in devices["sample"]] == ["W00000001", "W00002999"]  # type: ignore[attr-defined]
    assert all(len(row[1]) == 14 and row[1].isdigit() and 1 <= row[4] <= 128 for row in devices["sample"])  # type: ignore[attr-defined]
    households, _, owners_missing, sample = first
    assert households == 3000 and owners_missing == 0
    assert [row[0] for row in sample] == ["0100000001", "0100000500", "0100003000"]
    for _, name, phone, address, customer_type, kind in sample:
        assert 2 <= len(str(name)) <= 3
        assert str(phone).startswith("1") and len(str(phone)) == 11
        assert "号楼" in str(address) and "单元" in str(address) and str(address).endswith("室")
        assert customer_type in ("residential", "non_residential", "special")
        assert kind == "unit"
    # Each household's room is its address's flat (…1号楼1单元101室: room 0101, labelled 1-1-0101).
    mismatched = await session.execute(text(
        "SELECT count(*) FROM households WHERE account_no LIKE '01%' AND (room IS NULL OR address NOT LIKE "
        "'%' || ltrim(substr(room, 1, 2), '0') || substr(room, 3) || '室')"))
    assert mismatched.scalar_one() == 0
    rows = (await session.execute(text(
        "SELECT id, address FROM households WHERE account_no IN ('0100000001', '0100000500', '0100003000')"))).all()
    labels = await room_labels_by_household_ids(session, [row.id for row in rows])
    for row in rows:
        building, unit, room = str(labels[row.id].room_label).split("-")
        assert f"{building}号楼{unit}单元{int(room[:2])}{room[2:]}室" in row.address
        assert str(labels[row.id].unit_name).endswith(str(labels[row.id].room_label))
    mix = dict((await session.execute(text("SELECT customer_type, count(*) FROM households GROUP BY 1"))).all())
    assert mix["residential"] > 2500 and mix.get("non_residential", 0) > 50
    # Every meter serves a household in its own area's subtree (docs/security.md), past
    # assignments included.
    cross_area = await session.execute(text(
        "SELECT count(*) FROM meter_assignments s JOIN meters m ON m.id = s.meter_id JOIN areas ma ON ma.id = m.area_id "
        "JOIN households h ON h.id = s.household_id JOIN areas ha ON ha.id = h.area_id WHERE NOT starts_with(ha.path, ma.path)"
    ))
    assert cross_area.scalar_one() == 0


def test_demo_load_as_of_ends_the_demo_at_that_instant_and_refuses_a_naive_or_future_one(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[datetime | None] = []

    async def recording_load(session: AsyncSession, **options: Any) -> list[object]:
        asked.append(options["now"])
        return []

    monkeypatch.setattr(demo, "load_demo", recording_load)
    env = {"SHUIWU_DATABASE_URL": database_url, "COLUMNS": "200"}
    runner = CliRunner()

    loaded = runner.invoke(cli_app, ["demo", "load", "--as-of", "2026-11-26T10:30:00+08:00"], env=env)
    naive = runner.invoke(cli_app, ["demo", "load", "--as-of", "2026-11-26T10:30:00"], env=env)
    future = runner.invoke(cli_app, ["demo", "load", "--as-of", "2199-01-01T00:00:00+08:00"], env=env)

    assert loaded.exit_code == 0, loaded.output
    assert asked == [datetime(2026, 11, 26, 2, 30, tzinfo=UTC)]
    assert naive.exit_code == future.exit_code == 2
    assert "A time must carry a UTC offset" in naive.output and "is in the future" in future.output
