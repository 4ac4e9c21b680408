"""Generated operations never crash the server.

hypothesis-graphql builds queries and mutations from the live schema, so every operation
added later is covered without touching this file. Whatever the input, the answer is data
or typed errors: never INTERNAL, never a 500.

The requests take the paths a served request takes: the app built by ``create_app`` (the
raw asyncpg read pool, the fast list path) and the export routes. Values are drawn where
bugs live: ids of objects that exist (so filters reach SQL), days and instants at the
1900-2200 bounds and just outside them (and at ``date.min``/``date.max``), page sizes of
0, 1, the maximum and one past it.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import graphql
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import mutations, queries
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.db import session_factory
from backend.graphql.relay import encode_id
from backend.graphql.schema import build_schema
from tests.factories import make_staff
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

SCHEMA = build_schema()._schema
# logout would revoke the token every later document runs with; it has its own tests.
MUTATION_FIELDS = sorted(name for name in SCHEMA.mutation_type.fields if name != "logout")  # type: ignore[union-attr]
TIME_SCALARS = {"Date", "DateTime"}


def _takes_time_or_ids(field: graphql.GraphQLField) -> bool:
    named = {graphql.get_named_type(argument.type).name for argument in field.args.values()}
    inputs = [graphql.get_named_type(argument.type) for argument in field.args.values()]
    nested = {graphql.get_named_type(f.type).name for t in inputs if isinstance(t, graphql.GraphQLInputObjectType)
              for f in t.fields.values()}
    return bool((named | nested) & (TIME_SCALARS | {"ID"}))


# The query fields whose arguments carry days, instants or ids: the analytics, the lists
# filtered by area, the histories. Generated apart so they are not drowned by the rest.
FILTERED_QUERY_FIELDS = sorted(name for name, field in SCHEMA.query_type.fields.items()  # type: ignore[union-attr]
                               if _takes_time_or_ids(field))

EDGE_DAYS = (date.min, date(1899, 12, 31), date(1900, 1, 1), date(2200, 12, 31), date(2201, 1, 1), date.max)
DAYS = st.one_of(st.sampled_from(EDGE_DAYS), st.dates(date(1899, 12, 1), date(2201, 1, 31)), st.dates())
INSTANTS = st.one_of(
    st.sampled_from(EDGE_DAYS).map(lambda d: datetime(d.year, d.month, d.day, tzinfo=UTC)),
    st.datetimes(datetime(1899, 12, 31), datetime(2201, 1, 2), timezones=st.just(UTC)),
    st.datetimes(timezones=st.just(UTC)),
)
SIZES = st.one_of(st.sampled_from((0, 1, 1000, 1001, -1, 2**31 - 1)), st.integers(-5, 50))


def _string(value: str) -> graphql.StringValueNode:
    return graphql.StringValueNode(value=value)


def _custom_scalars(ids: list[str]) -> dict[str, st.SearchStrategy[graphql.ValueNode]]:
    return {
        "Money": st.from_regex(r"\A-?[0-9]{1,6}(\.[0-9]{1,2})?\Z").map(_string),
        "DateTime": INSTANTS.map(lambda d: _string(d.isoformat())),
        "Date": DAYS.map(lambda d: _string(d.isoformat())),
        "JSON": st.just(_string("{}")),
        "Decimal": st.decimals(allow_nan=False, allow_infinity=False, places=4).map(lambda d: _string(str(d))),
        "ID": st.one_of(st.sampled_from(ids), st.text(max_size=8)).map(_string),
        "Int": SIZES.map(lambda n: graphql.IntValueNode(value=str(n))),
    }


def _world_ids(world: World) -> list[str]:
    tree = world.tree
    return [*(encode_id("Area", area.id) for area in (tree.company, tree.east, tree.west, tree.east_community)),
            encode_id("Household", world.east_household.id), encode_id("Household", world.west_household.id)]


class _DropCursors(graphql.Visitor):
    def enter_argument(self, node: graphql.ArgumentNode, *_: object) -> object:
        return graphql.REMOVE if node.name.value in {"after", "before", "last"} else None


def _paging_forward(document: str) -> str:
    """``document`` without ``after``/``before``/``last``: a generated cursor is refused
    before any SQL runs, and the filters beside it should reach SQL."""
    return graphql.print_ast(graphql.visit(graphql.parse(document), _DropCursors()))


def _assert_no_internal(result: dict) -> None:  # type: ignore[type-arg]
    assert result["_status"] < 500, result
    codes = [error.get("extensions", {}).get("code") for error in result.get("errors", [])]
    assert "INTERNAL" not in codes, result


def _collect(strategy: st.SearchStrategy[str], examples: int) -> list[str]:
    documents: list[str] = []

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    @given(strategy)
    def collect(document: str) -> None:
        documents.append(document)

    collect()
    return documents


async def test_generated_queries_and_mutations_never_raise_internal_errors(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    scalars = _custom_scalars(_world_ids(world))

    documents = _collect(st.one_of(
        queries(SCHEMA, custom_scalars=scalars),
        mutations(SCHEMA, fields=MUTATION_FIELDS, custom_scalars=scalars),
    ), 40)
    # Each filtered field a few times, as the admin: its filters reach SQL.
    filtered = [_paging_forward(document) for name in FILTERED_QUERY_FIELDS
                for document in _collect(queries(SCHEMA, fields=[name], custom_scalars=scalars), 3)]

    assert documents
    assert filtered
    for document in documents:
        for bearer in (token, world.resident_token, ""):
            _assert_no_internal(await client.execute(document, token=bearer or None))
    for document in filtered:
        _assert_no_internal(await client.execute(document, token=token))


EXPORT_SCREENS = ("realtime", "history", "statistics", "ledger", "comparison", "monitoring", "alarms")
EXPORT_FILTER_KEYS = ("areaId", "householdId", "from", "to", "openedFrom", "openedTo", "granularity", "basis")


async def test_generated_export_requests_never_answer_500(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    # A staff member of its own: the generated mutations above may have locked the admin out.
    async with session_factory(engine_for_module)() as session, session.begin():
        exporter = await make_staff(session, areas=[world.tree.company])
    token = await client.login(exporter.username, exporter.password)
    ids = _world_ids(world)
    days, instants = DAYS.map(date.isoformat), INSTANTS.map(datetime.isoformat)
    value = st.one_of(st.sampled_from(ids), days, instants, st.sampled_from(("day", "month", "quarter", "year",
                                                                             "year_on_year", "period", "")))
    filters = st.dictionaries(st.sampled_from(EXPORT_FILTER_KEYS), value, max_size=5)
    requests = st.one_of(
        st.tuples(st.sampled_from(EXPORT_SCREENS).map(lambda s: f"/exports/readings/{s}.xlsx"),
                  filters.map(lambda f: {"filters": json.dumps(f)})),
        st.tuples(st.just("/exports/audit-log.xlsx"),
                  st.fixed_dictionaries({}, optional={"since": instants, "until": instants})),
        st.tuples(st.sampled_from(("/exports/households.xlsx", "/exports/meters.xlsx")),
                  st.fixed_dictionaries({}, optional={"areaId": st.sampled_from(ids), "search": st.text(max_size=3)})),
    )
    drawn: list[tuple[str, dict[str, str]]] = []

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    @given(requests)
    def collect(request: tuple[str, dict[str, str]]) -> None:
        drawn.append(request)

    collect()
    for path, params in drawn:
        answer = await client.http.get(path, params=params, headers={"Authorization": f"Bearer {token}"})

        assert answer.status_code < 500, (path, params, answer.text)
        if answer.status_code != 200:
            assert answer.json()["errors"][0]["extensions"]["code"] != "INTERNAL", (path, params, answer.text)
