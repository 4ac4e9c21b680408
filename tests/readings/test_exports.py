"""Readings screen exports: a signed URL from ``readingsExportUrl`` downloads the screen's
rows in the caller's scope, with the columns of the scheme in its saved order."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from openpyxl import load_workbook
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.exports.excel import XLSX_MEDIA_TYPE
from backend.graphql.relay import encode_id
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World
from tests.readings import test_browse
from tests.readings.test_browse import Data

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client
data = test_browse.data

SAVE = """
mutation($input: SaveQuerySchemeInput!) {
  saveQueryScheme(input: $input) { scheme { id } errors { field code } }
}
"""
EXPORT_URL = """
query($screen: ScreenKind!, $schemeId: ID, $columns: [String!], $filters: JSON) {
  readingsExportUrl(screen: $screen, schemeId: $schemeId, columns: $columns, filters: $filters)
}
"""


async def _export_url(client: GraphQLClient, token: str, **variables: Any) -> str:
    result = await client.execute(EXPORT_URL, variables, token=token)
    assert "errors" not in result, result["errors"]
    url: str = result["data"]["readingsExportUrl"]
    return url


async def _download(client: GraphQLClient, url: str) -> list[tuple[Any, ...]]:
    response = await client.http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(XLSX_MEDIA_TYPE)
    workbook = load_workbook(io.BytesIO(response.content), read_only=True)
    rows = [tuple(row) for row in workbook.worksheets[0].iter_rows(values_only=True)]
    workbook.close()
    return rows


async def test_export_follows_the_schemes_column_order(client: GraphQLClient, world: World, data: Data) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    saved = await client.execute(SAVE, {"input": {
        "screen": "realtime", "name": "导出顺序", "columns": ["total_m3", "meter_code", "area_name"],
        "filters": {"meterCode": data.prefix, "areaId": encode_id("Area", world.tree.east.id)}}}, token=token)  # type: ignore[arg-type]
    scheme_id = saved["data"]["saveQueryScheme"]["scheme"]["id"]

    rows = await _download(client, await _export_url(client, token, screen="realtime", schemeId=scheme_id))

    assert rows[0] == ("累积流量(t)", "表计编码", "所属区域")  # 单位名称 is the room on 实时数据
    assert rows[1] == ("Total (t)", "Meter code", "Area")
    body = rows[2:]
    assert len(body) == 6
    assert [r[1] for r in body] == sorted(r[1] for r in body)
    assert (12.75, data.east_meters[0].code, "翠湖小区") in body
    assert (None, data.silent_meter.code, "翠湖小区") in body


async def test_explicit_columns_and_filters_override_the_scheme(client: GraphQLClient, world: World, data: Data) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    saved = await client.execute(SAVE, {"input": {"screen": "realtime", "name": "覆盖", "columns": ["total_m3"],
                                                  "filters": {"meterCode": data.prefix}}}, token=token)
    scheme_id = saved["data"]["saveQueryScheme"]["scheme"]["id"]

    rows = await _download(client, await _export_url(
        client, token, screen="realtime", schemeId=scheme_id, columns=["meter_code", "online_status"],
        filters={"meterCode": data.prefix, "status": "never"}))

    assert rows[0] == ("表计编码", "在线状态")
    assert rows[2:] == [(data.silent_meter.code, "从未上报")]


async def test_history_export_writes_local_times_newest_first(client: GraphQLClient, world: World, data: Data) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    filters = {"from": (data.now - timedelta(days=7)).isoformat(), "to": data.now.isoformat(),
               "meterIds": [encode_id("Meter", data.east_meters[0].id)]}  # type: ignore[arg-type]

    rows = await _download(client, await _export_url(client, token, screen="history", filters=filters,
                                                     columns=["read_at", "total_m3", "quality"]))

    local = (data.now - timedelta(hours=1)).astimezone(test_browse.SHANGHAI).replace(tzinfo=None, microsecond=0)
    assert [r[1:] for r in rows[2:]] == [(12.75, "实抄"), (11.25, "手工"), (10.5, "实抄")]
    assert abs(rows[2][0] - local) < timedelta(seconds=1)


async def test_export_is_limited_to_the_callers_scope(client: GraphQLClient, data: Data) -> None:
    token = await client.login(data.west_reader.username, data.west_reader.password)

    rows = await _download(client, await _export_url(client, token, screen="realtime", columns=["meter_code"],
                                                     filters={"meterCode": data.prefix}))

    assert rows[2:] == [(data.west_meter.code,)]


async def test_export_is_audited(client: GraphQLClient, world: World, data: Data, engine_for_module: AsyncEngine) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    url = await _export_url(client, token, screen="monitoring", filters={
        "meterId": encode_id("Meter", data.monitoring.id),  # type: ignore[arg-type]
        "from": (data.now - timedelta(days=1)).isoformat(), "to": data.now.isoformat()})

    rows = await _download(client, url)

    assert len(rows) == 3
    async with engine_for_module.connect() as connection:
        logged = (await connection.execute(text(
            "SELECT module, summary FROM audit_log WHERE action = 'exportMonitoring' ORDER BY id DESC LIMIT 1"))).one()
    assert tuple(logged) == ("monitoring", "导出数据监测: 1 行")


async def test_a_tampered_link_is_refused(client: GraphQLClient, world: World, data: Data) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    url = await _export_url(client, token, screen="realtime", filters={"meterCode": data.west_meter.code})
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    params["filters"] = '{"meterCode":""}'

    response = await client.http.get(f"{parts.path}?{urlencode(params)}")
    unsigned = await client.http.get(parts.path)

    assert response.status_code == 401
    assert unsigned.status_code == 401


async def test_unknown_columns_and_screens_without_permission_are_refused(
    client: GraphQLClient, world: World, data: Data
) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    operator = await client.login(world.east_operator.username, world.east_operator.password)

    unknown = await client.execute(EXPORT_URL, {"screen": "realtime", "columns": ["nope"]}, token=admin)
    forbidden = await client.execute(EXPORT_URL, {"screen": "history"}, token=operator)

    assert [(e["extensions"]["code"], e["extensions"].get("field")) for e in unknown["errors"]] == [
        ("BAD_USER_INPUT", "columns")]
    assert [e["extensions"]["code"] for e in forbidden["errors"]] == ["FORBIDDEN"]


async def test_bad_filters_at_download_time_are_a_400(client: GraphQLClient, world: World, data: Data) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    url = await _export_url(client, token, screen="history", filters={"from": "yesterday"})

    response = await client.http.get(url)

    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["field"] == "from"


async def test_a_download_without_the_screens_permission_is_refused_and_audited(
    client: GraphQLClient, world: World, data: Data, engine_for_module: AsyncEngine
) -> None:
    operator = await client.login(world.east_operator.username, world.east_operator.password)

    response = await client.http.get("/exports/readings/history.xlsx", params={"filters": "{}"},
                                     headers={"Authorization": f"Bearer {operator}"})

    assert response.status_code == 403
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["FORBIDDEN"]
    async with engine_for_module.connect() as connection:
        logged = (await connection.execute(text(
            "SELECT success, payload->>'code' FROM audit_log WHERE action = 'exportHistory' ORDER BY id DESC LIMIT 1"
        ))).one()
    assert tuple(logged) == (False, "FORBIDDEN")
