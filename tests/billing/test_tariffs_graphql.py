"""GraphQL for tariffs: ``saveTariff`` (typed errors, unchanged, the version conflict),
``tariffQuote`` with the same inputs as the CLI, and ``publicTariffs`` without login."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from backend.db import session_factory
from tests.factories import Staff, make_staff
from tests.graphql import conftest as graphql_fixtures
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

world = graphql_fixtures.world
engine_for_module = graphql_fixtures.engine_for_module
client = graphql_fixtures.client

SAVE = """
mutation($input: TariffInput!) {
  saveTariff(input: $input) { unchanged tariff { code validFrom cycle tierLimits minimumMonthlyCharge
    householdSize { basePersons extraM3PerPerson } components { code prices } } errors { field code message messageEn } }
}
"""
QUOTE = """
query($tariff: String!, $volume: Decimal!, $prior: Decimal!, $persons: Int, $on: Date, $from: Date, $to: Date) {
  tariffQuote(tariff: $tariff, volume: $volume, priorVolume: $prior, persons: $persons, on: $on, from: $from, to: $to) {
    tariff volume lines { component tier volume price amount } total }
}
"""
PUBLIC = "query($on: Date) { publicTariffs(on: $on) { code name customerType validFrom components { code name prices } } }"

SH_RES: dict[str, Any] = {
    "code": "SH-RES", "name": "居民生活用水", "customerType": "residential", "validFrom": "2024-01-01",
    "cycle": "year", "tierLimits": ["220", "300"], "householdSize": {"basePersons": 4, "extraM3PerPerson": "25"},
    "components": [{"code": "water", "name": "自来水费", "prices": ["1.92", "3.30", "4.30"]},
                   {"code": "sewage", "name": "污水处理费", "prices": ["1.53", "1.53", "1.53"]}],
}


async def _reader(engine: AsyncEngine) -> Staff:
    async with session_factory(engine)() as session, session.begin():
        return await make_staff(session, permissions={"tariffs:read"})


async def test_save_quote_and_read_without_login(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    saved = (await client.execute(SAVE, {"input": SH_RES}, token=admin))["data"]["saveTariff"]
    assert saved["errors"] == [] and saved["unchanged"] is False
    assert saved["tariff"]["tierLimits"] == ["220.0000", "300.0000"]
    assert saved["tariff"]["components"][0]["prices"] == ["1.9200", "3.3000", "4.3000"]
    again = (await client.execute(SAVE, {"input": SH_RES}, token=admin))["data"]["saveTariff"]
    assert (again["errors"], again["unchanged"]) == ([], True)

    other = {**SH_RES, "components": [{**SH_RES["components"][0], "prices": ["1.95", "3.30", "4.30"]},
                                      SH_RES["components"][1]]}
    conflict = (await client.execute(SAVE, {"input": other}, token=admin))["data"]["saveTariff"]
    assert conflict["tariff"] is None
    assert [(e["field"], e["code"]) for e in conflict["errors"]] == [("valid_from", "TARIFF_VERSION_CONFLICT")]
    places = {**SH_RES, "code": "SH-X", "components": [{"code": "water", "name": "水费",
                                                         "prices": ["1.92", "3.30", "4.30001"]}]}
    refused = (await client.execute(SAVE, {"input": places}, token=admin))["data"]["saveTariff"]
    assert [e["code"] for e in refused["errors"]] == ["TARIFF_PRICE_PLACES"]
    assert refused["errors"][0]["message"] and refused["errors"][0]["messageEn"]

    reader_staff = await _reader(engine_for_module)
    reader = await client.login(reader_staff.username, reader_staff.password)
    quoted = await client.execute(QUOTE, {"tariff": "SH-RES", "volume": "230", "prior": "0", "on": "2024-06-01"},
                                  token=reader)
    assert quoted["data"]["tariffQuote"] == {"tariff": "SH-RES", "volume": "230.0000", "lines": [
        {"component": "water", "tier": 1, "volume": "220.0000", "price": "1.9200", "amount": "422.40"},
        {"component": "water", "tier": 2, "volume": "10.0000", "price": "3.3000", "amount": "33.00"},
        {"component": "sewage", "tier": 1, "volume": "220.0000", "price": "1.5300", "amount": "336.60"},
        {"component": "sewage", "tier": 2, "volume": "10.0000", "price": "1.5300", "amount": "15.30"}],
        "total": "807.30"}
    # Six persons (base 4): limits 270 / 350, so 230 m³ after 40 already used in the year
    # stays in tier 1 (40..270): 230 × 1.92 + 230 × 1.53 = 441.60 + 351.90.
    extended = await client.execute(QUOTE, {"tariff": "SH-RES", "volume": "230", "prior": "40", "persons": 6,
                                            "from": "2024-06-01", "to": "2024-06-30"}, token=reader)
    assert extended["data"]["tariffQuote"]["total"] == "793.50"
    versions = await client.execute(
        "query { tariffs(code: \"SH-RES\") { code name customerType validFrom cycle tierLimits minimumMonthlyCharge "
        "sewageCoefficient householdSize { basePersons extraM3PerPerson } components { code name prices } } }",
        token=reader)
    assert [(t["validFrom"], t["householdSize"]) for t in versions["data"]["tariffs"]] == [
        ("2024-01-01", {"basePersons": 4, "extraM3PerPerson": "25.0000"})]
    # A reader may not save.
    forbidden = await client.execute(SAVE, {"input": {**SH_RES, "code": "SH-Y"}}, token=reader)
    assert forbidden["errors"][0]["extensions"]["code"] == "FORBIDDEN"

    # Anyone may read the tariffs in force, without a token.
    public = await client.execute(PUBLIC, {"on": "2024-06-01"}, token="")
    assert "errors" not in public, public
    assert [(t["code"], t["validFrom"]) for t in public["data"]["publicTariffs"]] == [("SH-RES", "2024-01-01")]
    # And the quote needs a login.
    anonymous = await client.execute(QUOTE, {"tariff": "SH-RES", "volume": "1", "prior": "0", "on": "2024-06-01"},
                                     token="")
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
