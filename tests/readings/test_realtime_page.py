"""docs/screens/realtime.md: the 实时数据 worklist query on the page, run against the
page's world, answers exactly the page's output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives import service
from backend.archives.models import Area, AreaKind, MeterKind, MeterType
from backend.db import session_factory
from backend.graphql.relay import encode_id
from backend.readings.schema import browse as browse_schema
from backend.readings.service import ReadingIn, ingest_readings
from tests.doc_examples import examples
from tests.factories import Staff, make_staff
from tests.graphql.client import GraphQLClient, graphql_client

PAGE = "docs/screens/realtime.md"
TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 12, 7, 10, 0, tzinfo=TZ)


@dataclass
class World:
    community: Area
    staff: Staff


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    """The page's world: 恒大 (a community) with 1号楼 1单元 (0101 张伟, 0102 李娜, 0201 王芳,
    0202 孙丽) and 2号楼 1单元 (0101 赵敏), one meter each, coded 1-5 as on the brochure, and
    the community's inflow meter (6, a monitoring point). 张伟's meter read an hour ago
    (online), 孙丽's has only its handover reading, the inflow meter none; the others read
    days ago (offline)."""
    async with session_factory(committed_engine)() as session, session.begin():
        company = await service.create_area(session, name="示范水务", kind=AreaKind.company)
        district = await service.create_area(session, name="城东片区", kind=AreaKind.district, parent_id=company.id)
        community = await service.create_area(session, name="恒大", kind=AreaKind.community, parent_id=district.id)
        units = {}
        for building_name in ("1号楼", "2号楼"):
            building = await service.create_area(session, name=building_name, kind=AreaKind.building, parent_id=community.id)
            units[building_name] = await service.create_area(session, name="1单元", kind=AreaKind.unit, parent_id=building.id)
        staff = await make_staff(session, areas=[company])
        readings = []
        for code, (building_name, room, name, read_at, total) in enumerate((
            ("1号楼", "0101", "张伟", datetime(2026, 12, 7, 9, 0, tzinfo=TZ), "331.0000"),
            ("1号楼", "0102", "李娜", datetime(2026, 12, 1, 8, 0, tzinfo=TZ), "275.0000"),
            ("1号楼", "0201", "王芳", datetime(2026, 11, 20, 8, 0, tzinfo=TZ), "101.0000"),
            ("1号楼", "0202", "孙丽", None, None),
            ("2号楼", "0101", "赵敏", datetime(2026, 11, 30, 8, 0, tzinfo=TZ), "127.0000"),
        ), 1):
            unit = units[building_name]
            household = await service.create_household(session, account_no=f"HD{code:04d}", name=name, area_id=unit.id,  # type: ignore[arg-type]
                                                       room=room)
            meter = await service.create_meter(session, fields=service.MeterChanges(
                name=f"恒大生态城水{building_name[0]}-1-{room}", code=str(code), address=f"{20261207000000 + code:014d}",
                meter_type=MeterType.cold_water, area_id=unit.id))
            assert meter.id is not None and household.id is not None
            await service.assign_meter(session, meter_id=meter.id, household_id=household.id,
                                       valid_from=datetime(2026, 1, 1, tzinfo=TZ), start_reading=Decimal(0), now=NOW)
            if read_at is not None:
                readings.append(ReadingIn(meter.id, read_at, Decimal(total)))
        inflow = await service.create_meter(session, fields=service.MeterChanges(
            name="恒大进水总表", code="6", address="20261207000006", meter_type=MeterType.flow_monitor,
            kind=MeterKind.monitoring, area_id=community.id))
        assert inflow.id is not None
        await service.install_meter(session, meter_id=inflow.id, location="恒大北门", installed_at=NOW, changed_by="测试")
        await ingest_readings(session, readings=readings, source="test", now=NOW)
    return World(community, staff)


@pytest.fixture
async def client(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[GraphQLClient]:
    # Online means a reading within 24 hours of now: the page's now is fixed.
    monkeypatch.setattr(browse_schema, "utcnow", lambda: NOW)
    async with graphql_client(database_url) as api:
        yield api


async def test_the_realtime_page_query_answers_the_pages_output(client: GraphQLClient, world: World) -> None:
    (example,) = examples(PAGE)
    token = await client.login(world.staff.username, world.staff.password)

    answer = await client.execute(example.query, {"area": encode_id("Area", world.community.id),  # type: ignore[arg-type]
                                                  "search": "恒大1-1"}, token=token)

    assert "errors" not in answer, answer["errors"]
    assert {"data": answer["data"]} == example.output
