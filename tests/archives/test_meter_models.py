"""Meter models (型号) on the 设备管理 screen: the meter list and its export filtered by
model, and the meters sheet naming a model by vendor and name (an unknown pair is a row
error, nothing written)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openpyxl
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.archives import excel as archive_excel
from backend.archives import service
from backend.archives.models import Meter, MeterKind, MeterModel, MeterType
from backend.db import session_factory
from backend.errors import DomainError, ErrorCode
from backend.exports.excel import ImportRowsInvalid, read_rows
from backend.graphql.relay import encode_id
from tests.factories import AreaTree, Staff, make_area_tree, make_staff, unique
from tests.graphql.client import GraphQLClient, graphql_client

_addresses = iter(range(20281000000000, 20281999999999))


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_operator: Staff
    models: dict[str, MeterModel]
    meters: dict[str, Meter]


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    """Model S (三川) on meters E1, E2 (东) and W1 (西); model N (宁波) on E3; E4 has no model."""
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        east_operator = await make_staff(session, permissions={"archives:read"}, areas=[tree.east])
        models = {
            "S": await service.save_meter_model(session, fields=service.MeterModelFields(vendor="三川智慧", name=unique("LXSY"),
                                                                                         caliber=20)),
            "N": await service.save_meter_model(session, fields=service.MeterModelFields(vendor="宁波水表", name=unique("LXSY"),
                                                                                         caliber=15)),
        }
        meters = {}
        for name, model, area in (("E1", "S", tree.east_community), ("E2", "S", tree.east_community),
                                  ("W1", "S", tree.west_community), ("E3", "N", tree.east_community),
                                  ("E4", None, tree.east_community)):
            meters[name] = await service.create_meter(session, fields=service.MeterChanges(
                name=f"户表{name}", code=unique(f"MM{name}"), address=f"{next(_addresses):014d}",
                meter_type=MeterType.cold_water, area_id=area.id, model_id=models[model].id if model else None))
    return World(tree, admin, east_operator, models, meters)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


METERS = """
query($model: ID) {
  meters(modelId: $model, first: 50) { totalCount edges { node { name model { vendor } } } }
}"""


async def test_the_meter_list_filters_by_model_within_the_callers_scope(client: GraphQLClient, world: World) -> None:
    model = encode_id("MeterModel", world.models["S"].id)  # type: ignore[arg-type]
    admin = await client.login(world.admin.username, world.admin.password)
    east = await client.login(world.east_operator.username, world.east_operator.password)

    answer = await client.execute(METERS, {"model": model}, token=admin)
    assert "errors" not in answer, answer
    everywhere = answer["data"]["meters"]
    in_east = (await client.execute(METERS, {"model": model}, token=east))["data"]["meters"]

    assert sorted(edge["node"]["name"] for edge in everywhere["edges"]) == ["户表E1", "户表E2", "户表W1"]
    assert {edge["node"]["model"]["vendor"] for edge in everywhere["edges"]} == {"三川智慧"}
    assert (in_east["totalCount"], sorted(edge["node"]["name"] for edge in in_east["edges"])) == (2, ["户表E1", "户表E2"])


async def test_a_model_filter_naming_something_else_is_refused(client: GraphQLClient, world: World) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    refused = await client.execute(METERS, {"model": encode_id("Meter", world.meters["E1"].id)}, token=admin)  # type: ignore[arg-type]

    assert refused["data"] is None
    assert [error["extensions"]["code"] for error in refused["errors"]] == ["NOT_FOUND"]


async def test_the_meters_export_filters_by_model_and_names_it_by_vendor_and_name(
    committed_engine: AsyncEngine, world: World,
) -> None:
    keys = archive_excel.METER_SHEET.keys
    raw = await committed_engine.raw_connection()
    try:
        rows = [row async for row in archive_excel.meter_export_rows(
            raw.driver_connection, scope_patterns=[world.tree.east.path + "%"],
            export_filter=archive_excel.DeviceExportFilter(model_id=world.models["S"].id))]
    finally:
        raw.close()

    model = world.models["S"]
    assert sorted((row[keys.index("name")], row[keys.index("model_vendor")], row[keys.index("model_name")]) for row in rows) == [
        ("户表E1", model.vendor, model.name), ("户表E2", model.vendor, model.name)]


def _meter_sheet(*rows: tuple[Any, ...]) -> Any:
    book = openpyxl.Workbook()
    sheet: Any = book.active
    sheet.append(["表计编码", "表计名称", "表地址", "表类型", "厂家", "型号", "区域编码"])
    for row in rows:
        sheet.append(list(row))
    buffer = io.BytesIO()
    book.save(buffer)
    return read_rows(archive_excel.METER_SHEET, buffer.getvalue())


async def test_the_meters_sheet_finds_a_model_by_vendor_and_name_and_refuses_an_unknown_one(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    model = await service.save_meter_model(session, fields=service.MeterModelFields(vendor="宁波水表", name=unique("LXSY"),
                                                                                   caliber=15))
    area = f"#{tree.east_community.id}"
    known, unknown = unique("MI"), unique("MI")
    sheet = _meter_sheet((known, "户表", f"{next(_addresses):014d}", "冷水表", "宁波水表", model.name, area),
                         (unknown, "户表", f"{next(_addresses):014d}", "冷水表", "宁波水表", "没有的型号", area))

    with pytest.raises(ImportRowsInvalid) as refused:
        async with session.begin_nested():  # as the import route's transaction, rolled back
            await archive_excel.import_meters(session, sheet=sheet, scope_patterns=["/%"], update_existing=False)
    assert [(error.row, error.column, error.message) for error in refused.value.errors] == [
        (3, "型号", archive_excel.UNKNOWN_MODEL[0])]
    assert (await session.execute(select(Meter.id).where(Meter.code.in_([known, unknown])))).all() == []  # type: ignore[attr-defined]

    sheet = _meter_sheet((known, "户表", f"{next(_addresses):014d}", "冷水表", "宁波水表", model.name, area))
    await archive_excel.import_meters(session, sheet=sheet, scope_patterns=["/%"], update_existing=False)
    # Without a 类别 column the meter is a household meter (the column's blank).
    stored = (await session.execute(select(Meter.model_id, Meter.kind).where(Meter.code == known))).one()
    assert tuple(stored) == (model.id, MeterKind.household)


async def test_an_nb_iot_model_keeps_its_payload_format_and_uplink_wait(session: AsyncSession) -> None:
    from backend.archives.models import PayloadFormat
    from backend.errors import DomainError

    fields = service.MeterModelFields(vendor="NB厂家", name=unique("NB"), caliber=20, has_valve=True,
                                      payload_format=PayloadFormat.json, uplink_wait_s=3600)
    model = await service.save_meter_model(session, fields=fields)
    assert (model.payload_format, model.uplink_wait_s) == (PayloadFormat.json, 3600)
    default = await service.save_meter_model(session, fields=service.MeterModelFields(vendor="NB厂家", name=unique("NB"),
                                                                                      caliber=20))
    assert (default.payload_format, default.uplink_wait_s) == (PayloadFormat.cjt188, 86400)

    for wait in (0, 7 * 86400 + 1):
        with pytest.raises(DomainError) as refused:
            await service.save_meter_model(session, fields=service.MeterModelFields(
                vendor="NB厂家", name=unique("NB"), caliber=20, uplink_wait_s=wait))
        assert refused.value.field == "uplinkWaitS"
async def test_a_models_wire_settings_are_kept_and_checked(session: AsyncSession) -> None:
    """The preamble, wire decimals and response timeout the worker speaks to its meters with."""
    fields = service.MeterModelFields(vendor="宁波水表", name=unique("NB"), caliber=15, preamble_len=4, wire_decimals=3,
                                      response_timeout_ms=800)
    model = await service.save_meter_model(session, fields=fields)
    assert (model.preamble_len, model.wire_decimals, model.response_timeout_ms) == (4, 3, 800)

    for bad, field in (({"preamble_len": 17}, "preambleLen"), ({"wire_decimals": 5}, "wireDecimals"),
                       ({"response_timeout_ms": 10}, "responseTimeoutMs")):
        with pytest.raises(DomainError) as refused:
            await service.save_meter_model(session, fields=dataclasses.replace(fields, name=unique("NB"), **bad))
        assert (refused.value.code, refused.value.field) == (ErrorCode.INVALID, field)
