"""Requests that once ended in INTERNAL or an HTTP 500 (issue 10, class 7): each answers
with data or a typed error now, on the paths a served request takes."""

from __future__ import annotations

import json

from backend.graphql.relay import encode_id
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

HOUSEHOLDS_IN_AREA = """
query($area: ID) {
  households(first: 20, search: "张", status: active, areaId: $area) { totalCount edges { node { name } } }
}"""
METERS_IN_AREA = "query($area: ID) { meters(first: 20, areaId: $area) { totalCount } }"


async def test_households_and_meters_filter_by_area_on_the_raw_read_path(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    east, west = encode_id("Area", world.tree.east.id), encode_id("Area", world.tree.west.id)

    in_east = await client.execute(HOUSEHOLDS_IN_AREA, {"area": east}, token=token)
    in_west = await client.execute(HOUSEHOLDS_IN_AREA, {"area": west}, token=token)
    meters = await client.execute(METERS_IN_AREA, {"area": east}, token=token)

    assert in_east == {"data": {"households": {"totalCount": 1, "edges": [{"node": {"name": "张伟"}}]}}, "_status": 200}
    assert in_west["data"]["households"]["totalCount"] == 0
    assert meters == {"data": {"meters": {"totalCount": 0}}, "_status": 200}


STATISTICS = """query($s: UsageObjectInput!, $f: Date!, $t: Date!) {
  usageStatistics(scope: $s, granularity: MONTH, from: $f, to: $t) { summary { count } } }"""
SERIES_WITH_LAST_YEAR = """query($s: UsageObjectInput!, $f: Date!, $t: Date!) {
  usageSeries(objects: [$s], granularity: DAY, from: $f, to: $t, withLastYear: true) { labels } }"""
LEDGER = """query($s: UsageObjectInput!, $f: Date!, $t: Date!) {
  usageLedger(scope: $s, granularity: YEAR, from: $f, to: $t) { rows { totalCount } } }"""
YEAR_ON_YEAR = """query($s: UsageObjectInput!, $f: Date!, $t: Date!) {
  usageComparison(scope: $s, basis: YEAR_ON_YEAR, granularity: QUARTER, from: $f, to: $t) { totalCount } }"""
PERIOD_ON_PERIOD = """query($s: UsageObjectInput!, $f: Date!, $t: Date!) {
  usageComparison(scope: $s, basis: PERIOD_ON_PERIOD, granularity: MONTH, from: $f, to: $t) { totalCount } }"""
ANALYTICS = (STATISTICS, SERIES_WITH_LAST_YEAR, LEDGER, YEAR_ON_YEAR, PERIOD_ON_PERIOD)
# asyncpg sends date.min / date.max as -infinity / infinity: the periods never ended.
OUTSIDE = (("0001-01-01", "0001-01-31"), ("9999-12-01", "9999-12-31"), ("1899-12-31", "1900-01-31"),
           ("2200-12-01", "2201-01-01"))
AT_THE_EDGES = (("1900-01-01", "1900-01-31"), ("2200-12-01", "2200-12-31"))


async def test_days_outside_1900_to_2200_are_bad_input_for_every_analytics_query(
    client: GraphQLClient, world: World
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    company = {"areaId": encode_id("Area", world.tree.company.id)}

    for query in ANALYTICS:
        for start, end in OUTSIDE:
            result = await client.execute(query, {"s": company, "f": start, "t": end}, token=token)

            assert result["data"] is None, (query, start, result)
            assert {e["extensions"]["code"] for e in result["errors"]} == {"BAD_USER_INPUT"}, (query, start, result)


async def test_analytics_at_the_edges_of_1900_to_2200_answer_data(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    company = {"areaId": encode_id("Area", world.tree.company.id)}

    for query in ANALYTICS:
        for start, end in AT_THE_EDGES:
            result = await client.execute(query, {"s": company, "f": start, "t": end}, token=token)

            assert "errors" not in result, (query, start, result)


async def test_export_routes_refuse_days_outside_1900_to_2200_as_json_bad_input(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    bearer = {"Authorization": f"Bearer {token}"}
    company = encode_id("Area", world.tree.company.id)
    screens = {
        "comparison": {"areaId": company, "from": "9999-01-01", "to": "9999-12-31"},
        "statistics": {"areaId": company, "from": "0001-01-01", "to": "0001-01-31"},
        "ledger": {"areaId": company, "from": "1899-12-31", "to": "1900-01-31"},
        "history": {"areaId": company, "from": "0001-01-01T00:00:00+14:00", "to": "0001-01-02T00:00:00+14:00"},
    }

    answers = {
        screen: await client.http.get(f"/exports/readings/{screen}.xlsx", params={"filters": json.dumps(filters)},
                                      headers=bearer)
        for screen, filters in screens.items()
    }
    audit = await client.http.get("/exports/audit-log.xlsx", params={"since": "9999-12-31T23:00:00-10:00"}, headers=bearer)

    for answer in (*answers.values(), audit):
        assert answer.status_code == 400, (answer.request.url, answer.text)
        assert answer.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", answer.text
