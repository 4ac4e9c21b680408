"""The gate in front of execution: cost from coerced values and declared weights, caps on
root fields and document size, one auth mutation per request, admission of expensive
work, introspection and GraphiQL off for strangers, JSON bodies only."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from graphql import get_introspection_query, parse
from graphql.execution.values import get_variable_values
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend import observability
from backend.app import create_app
from backend.graphql import http as graphql_http
from backend.graphql.limits import CostNode, QueryTooComplex, QueryTooDeep, admission_key, operation_shapes
from backend.graphql.relay import encode_id
from backend.graphql.schema import build_schema
from backend.readings import analytics
from backend.settings import Settings
from tests.graphql.client import GraphQLClient, api_settings, graphql_client
from tests.graphql.conftest import World
from tests.live import LiveServer, live_server

AREAS_PAGE = "query Many($n: Int) { " + " ".join(
    f"a{i}: areas(first: $n) {{ edges {{ node {{ id name }} }} }}" for i in range(20)
) + " }"
YEAR_OF_DAILY_STATISTICS = """query Stats($scope: UsageObjectInput!) {
  %s
}"""
STATISTICS_FIELD = (
    '%s: usageStatistics(scope: $scope, granularity: DAY, from: "2025-01-01", to: "2025-12-31", first: 20) '
    "{ summary { count } }"
)
DAILY_FLOW = "{ monitoringPoints { flow: dailyFlow(days: 366) { day volumeM3 } } }"
COMPARISON_DEFAULT_PAGE = """query Compare($scope: UsageObjectInput!) {
  usageComparison(scope: $scope, basis: YEAR_ON_YEAR, granularity: MONTH, from: "2025-01-01", to: "2025-12-01") {
    edges { node { unitName label currentM3 previousM3 changeM3 changePercent outlier } }
  }
}"""
TWO_LOGINS = """mutation($u: String!, $p: String!) {
  first: login(username: $u, password: $p) { errors { code } }
  second: login(username: $u, password: $p) { errors { code } }
}"""
LOGIN_AND_CODE = """mutation($u: String!, $p: String!) {
  login(username: $u, password: $p) { errors { code } }
  requestLoginCode(phone: "13700009999") { errors { code } }
}"""
SCHEMA_NAME = "{ __schema { queryType { name } } }"
# Forty copies of the type list: each is allowed, together they return ~40 schemas.
INTROSPECTION_BOMB = "{ __schema { " + " ".join(
    f"t{i}: types {{ fields {{ args {{ type {{ ofType {{ name }} }} }} type {{ ofType {{ ofType {{ name }} }} }} }} }}"
    for i in range(40)
) + " } }"
TYPE_NAME = '{ __type(name: "Query") { name } }'
SCHEMA = build_schema()._schema


def _codes(result: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in result.get("errors", [])]


def _roots(count: int) -> str:
    return "{ " + " ".join(f"v{i}: viewer {{ name }}" for i in range(count)) + " }"


@asynccontextmanager
async def _api(database_url: str, **overrides: Any) -> AsyncIterator[tuple[GraphQLClient, Any]]:
    """A client and the app it talks to (for reaching the endpoint's admission)."""
    app = create_app(api_settings(**overrides), database_url)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield GraphQLClient(http), app
    await app.state.engine.dispose()


@pytest.fixture(scope="module")
async def admin_token(database_url: str, world: World) -> str:
    """One login for the module (each costs an argon2 verification)."""
    async with graphql_client(database_url) as api:
        return await api.login(world.admin.username, world.admin.password)


def _company_scope(world: World) -> dict[str, str]:
    assert world.tree.company.id is not None
    return {"areaId": encode_id("Area", world.tree.company.id)}


# 1. Page sizes are costed as they execute.

async def test_a_page_size_sent_as_a_float_is_costed_as_the_integer_it_executes_as(
    admin_token: str, client: GraphQLClient, world: World
) -> None:
    as_float = await client.execute(AREAS_PAGE, {"n": 1000.0}, token=admin_token)
    too_big = await client.execute(AREAS_PAGE, {"n": 1001.0}, token=admin_token)
    small = await client.execute(AREAS_PAGE, {"n": 5.0}, token=admin_token)

    assert as_float["data"] is None
    assert _codes(as_float) == ["QUERY_TOO_COMPLEX"]
    assert too_big["data"] is None
    assert _codes(too_big) == ["PAGE_SIZE_EXCEEDED"]
    assert "errors" not in small


# 2. Declared weights, aliases, lists by type.

async def test_each_alias_of_an_expensive_field_costs_its_weight(admin_token: str, client: GraphQLClient, world: World) -> None:
    one = YEAR_OF_DAILY_STATISTICS % (STATISTICS_FIELD % "s0")
    six = YEAR_OF_DAILY_STATISTICS % " ".join(STATISTICS_FIELD % f"s{i}" for i in range(6))

    single = await client.execute(one, {"scope": _company_scope(world)}, token=admin_token)
    aliased = await client.execute(six, {"scope": _company_scope(world)}, token=admin_token)

    assert "QUERY_TOO_COMPLEX" not in _codes(single)
    assert aliased["data"] is None
    assert _codes(aliased) == ["QUERY_TOO_COMPLEX"]


async def test_a_list_field_not_named_like_a_list_is_costed_as_a_list(admin_token: str, database_url: str, world: World) -> None:
    async with _api(database_url, graphql_max_cost=500) as (api, _):
        daily = await api.execute(DAILY_FLOW, token=admin_token)
        comparison = await api.execute(COMPARISON_DEFAULT_PAGE, {"scope": _company_scope(world)}, token=admin_token)

    assert _codes(daily) == ["QUERY_TOO_COMPLEX"]
    assert _codes(comparison) == ["QUERY_TOO_COMPLEX"]


# 3. Root fields.

async def test_more_root_fields_than_the_cap_are_refused_before_execution(admin_token: str, client: GraphQLClient, world: World) -> None:
    at_cap = await client.execute(_roots(20), token=admin_token)
    over = await client.execute(_roots(21), token=admin_token)

    assert "errors" not in at_cap
    assert over["data"] is None
    assert _codes(over) == ["QUERY_TOO_COMPLEX"]


# 4. Heavy documents.

HEAVY_DOCUMENTS = {
    "1200 repeated fields": "{ " + " ".join(["viewer { name }"] * 1200) + " }",
    "240 repeated fields": "{ " + " ".join(["viewer { name }"] * 240) + " }",
    "31 fragments of one field": "{ " + " ".join(f"...F{i}" for i in range(31)) + " } "
    + " ".join(f"fragment F{i} on Query {{ viewer {{ name }} }}" for i in range(31)),
}


@pytest.mark.parametrize("heavy", HEAVY_DOCUMENTS.values(), ids=HEAVY_DOCUMENTS.keys())
async def test_a_document_of_many_repeated_fields_is_refused_without_validating_it(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch, heavy: str
) -> None:
    validations: list[int] = []
    real_validate = graphql_http.validate
    monkeypatch.setattr(graphql_http, "validate", lambda *a, **k: validations.append(1) or real_validate(*a, **k))

    result = await client.execute(heavy)

    assert result["data"] is None
    assert _codes(result) == ["QUERY_TOO_COMPLEX"]
    assert validations == []


def _doubling_fragments(levels: int) -> str:
    """~2 written fields a level, 2^levels fields once the fragments are spread."""
    chain = " ".join(f"fragment F{k} on Area {{ a: parent {{ ...F{k + 1} }} b: parent {{ ...F{k + 1} }} }}"
                     for k in range(levels))
    return f'query {{ node(id: "x") {{ ... on Area {{ ...F0 }} }} }} {chain} fragment F{levels} on Area {{ id }}'


@pytest.mark.parametrize("levels", [12, 18])
async def test_a_document_whose_fragments_double_at_each_level_is_refused_fast(
    client: GraphQLClient, levels: int
) -> None:
    # 12 levels fit the depth limit, 18 do not; both spread to far over the 10,000 fields.
    started = time.perf_counter()
    result = await client.execute(_doubling_fragments(levels))
    elapsed = time.perf_counter() - started

    assert result["data"] is None
    assert _codes(result) == ["QUERY_TOO_COMPLEX"]
    assert elapsed < 0.1


def test_the_depth_of_doubling_fragments_is_refused_before_any_is_copied() -> None:
    document = parse(_doubling_fragments(18))

    started = time.perf_counter()
    with pytest.raises(QueryTooDeep):
        operation_shapes(SCHEMA, document, max_depth=15)

    assert time.perf_counter() - started < 0.1


def test_the_cost_tree_stops_at_its_budget_of_spread_selections() -> None:
    document = parse(_doubling_fragments(10))  # depth 12: within the limit

    started = time.perf_counter()
    with pytest.raises(QueryTooComplex):
        operation_shapes(SCHEMA, document, max_depth=15, max_nodes=1_000)
    shapes = operation_shapes(SCHEMA, document, max_depth=15, max_nodes=20_000)

    assert time.perf_counter() - started < 0.5
    assert shapes[None].depth == 12
    # Every copy is costed (node, 2 + 4 + ... + 1024 parents, 1024 ids), each fragment built once.
    assert shapes[None].cost(_no_variables()) == 1 + (2 ** 11 - 2) + 2 ** 10
    assert len(_distinct_nodes(shapes[None].roots)) == 1 + 2 * 10 + 1


def _no_variables() -> Any:
    variables = get_variable_values(SCHEMA, [], {})
    assert not isinstance(variables, list)
    return variables


def _distinct_nodes(nodes: list[CostNode], seen: dict[int, CostNode] | None = None) -> dict[int, CostNode]:
    seen = {} if seen is None else seen
    for node in nodes:
        if id(node) not in seen:
            seen[id(node)] = node
            _distinct_nodes(node.children, seen)
    return seen


async def test_fragments_spread_twice_at_each_level_without_fields_are_refused_fast(client: GraphQLClient) -> None:
    # No field below the root: nothing deepens, nothing is written twice, yet 2^25 spreads.
    chain = " ".join(f"fragment F{k} on Query {{ __typename ...F{k + 1} ...F{k + 1} }}" for k in range(25))
    document = f"query {{ ...F0 }} {chain} fragment F25 on Query {{ __typename }}"

    started = time.perf_counter()
    result = await client.execute(document)
    elapsed = time.perf_counter() - started

    assert result["data"] is None
    assert _codes(result) == ["QUERY_TOO_COMPLEX"]
    assert elapsed < 0.1


async def test_whitespace_variants_of_one_document_are_validated_once(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    validations: list[int] = []
    real_validate = graphql_http.validate
    monkeypatch.setattr(graphql_http, "validate", lambda *a, **k: validations.append(1) or real_validate(*a, **k))

    for spaces in range(1, 30):
        await client.execute("{" + " " * spaces + "menuCatalog { code }" + "\n" * spaces + "}")

    assert validations == [1]


async def test_a_large_document_is_validated_off_the_event_loop(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real_validate = graphql_http.validate
    monkeypatch.setattr(graphql_http, "validate", lambda *a, **k: threads.append(threading.current_thread()) or real_validate(*a, **k))
    large = "{ " + " ".join(f"m{i}: menuCatalog {{ code name }}" for i in range(15)) + " viewer { name } }"

    await client.execute(large)

    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()


# 5. One auth mutation per request.

async def test_two_auth_mutations_in_one_request_are_refused_and_none_runs(
    client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    async with engine_for_module.connect() as connection:
        logged_before = (await connection.execute(text("SELECT count(*) FROM audit_log"))).scalar_one()
    variables = {"u": world.nobody.username, "p": "Wrong-password-1"}

    aliased = await client.execute(TWO_LOGINS, variables)
    mixed = await client.execute(LOGIN_AND_CODE, variables)

    for result in (aliased, mixed):
        assert result["data"] is None
        assert _codes(result) == ["RATE_LIMITED"]
    async with engine_for_module.connect() as connection:
        logged_after = (await connection.execute(text("SELECT count(*) FROM audit_log"))).scalar_one()
    assert logged_after == logged_before


# 6. Admission of expensive work.

async def test_an_expensive_request_waits_for_the_callers_slot_and_is_refused_when_it_cannot_get_one(
    admin_token: str, database_url: str, world: World
) -> None:
    async with _api(database_url, graphql_admission_wait_s=0.05) as (api, app):
        expensive = YEAR_OF_DAILY_STATISTICS % (STATISTICS_FIELD % "s0")
        admission = app.state.graphql.admission
        assert world.admin.user.id is not None

        async with admission.admit(f"staff:{world.admin.user.id}"):
            refused = await api.execute(expensive, {"scope": _company_scope(world)}, token=admin_token)
            cheap = await api.execute("{ viewer { name } }", token=admin_token)
        admitted = await api.execute(expensive, {"scope": _company_scope(world)}, token=admin_token)

    assert refused["data"] is None
    assert _codes(refused) == ["RATE_LIMITED"]
    assert "errors" not in cheap
    assert "RATE_LIMITED" not in _codes(admitted)
    assert admitted["data"]["s0"]["summary"] is not None


async def test_the_process_wide_admission_limit_holds_across_callers(admin_token: str, database_url: str, world: World) -> None:
    async with _api(database_url, graphql_admission_wait_s=0.05, graphql_expensive_per_process=1) as (api, app):
        expensive = YEAR_OF_DAILY_STATISTICS % (STATISTICS_FIELD % "s0")

        async with app.state.graphql.admission.admit("staff:someone-else"):
            refused = await api.execute(expensive, {"scope": _company_scope(world)}, token=admin_token)

    assert _codes(refused) == ["RATE_LIMITED"]


async def test_aliases_of_an_expensive_field_run_one_at_a_time_within_a_request(
    admin_token: str, client: GraphQLClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    running: list[int] = [0]
    most: list[int] = [0]
    real_statistics = analytics.usage_statistics

    async def counted(*args: Any, **kwargs: Any) -> Any:
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            await asyncio.sleep(0.01)
            return await real_statistics(*args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(analytics, "usage_statistics", counted)
    three = YEAR_OF_DAILY_STATISTICS % " ".join(STATISTICS_FIELD % f"s{i}" for i in range(3))

    result = await client.execute(three, {"scope": _company_scope(world)}, token=admin_token)

    assert "errors" not in result
    assert most == [1]


async def test_a_large_page_answered_by_the_compiled_path_is_admitted_like_an_expensive_field(
    admin_token: str, database_url: str, world: World
) -> None:
    # 1 + 1 + 1000 x 5 = 5,002: at least SHUIWU_GRAPHQL_EXPENSIVE_COST (5,000).
    page = "{ areas(first: 1000) { edges { node { id name kind level } } } }"
    async with _api(database_url, graphql_admission_wait_s=0.05) as (api, app):
        assert world.admin.user.id is not None

        async with app.state.graphql.admission.admit(f"staff:{world.admin.user.id}"):
            refused = await api.execute(page, token=admin_token)
        answered = await api.execute(page, token=admin_token)

    assert _codes(refused) == ["RATE_LIMITED"]
    assert "errors" not in answered
    assert app.state.graphql.documents._entries[page].plans  # answered by a compiled plan


async def test_a_second_caller_is_admitted_when_the_slot_frees_within_the_wait() -> None:
    from backend.graphql.limits import Admission

    admission = Admission(per_process=1, per_principal=1, wait_s=5.0)
    order: list[str] = []
    holding = asyncio.Event()

    async def first() -> None:
        async with admission.admit("ip:1"):
            order.append("first in")
            holding.set()
            await asyncio.sleep(0)
            order.append("first out")

    async def second() -> None:
        await holding.wait()
        async with admission.admit("ip:1"):
            order.append("second in")

    await asyncio.gather(first(), second())

    assert order == ["first in", "first out", "second in"]
    assert admission.waiting == 0 and admission.principals == 0


def test_anonymous_callers_wait_for_admission_by_the_address_the_throttles_count() -> None:
    one_subscriber = {admission_key(None, f"2001:db8:1:2::{host}") for host in ("1", "ffff", "a:b:c")}

    assert one_subscriber == {"ip:2001:db8:1:2::/64"}
    assert admission_key(None, "2001:db8:1:3::1") == "ip:2001:db8:1:3::/64"
    assert admission_key(None, "203.0.113.7") == "ip:203.0.113.7"
    assert admission_key(None, None) == "ip:unknown"


# 7. Introspection and GraphiQL.

def test_graphiql_is_off_and_introspection_needs_a_login_by_default() -> None:
    defaults = Settings(secret_key="x" * 40)

    assert defaults.graphiql is False
    assert defaults.introspection == "authenticated"


def test_the_demo_turns_graphiql_and_introspection_on() -> None:
    from backend.cli import demo_api_settings

    demo = demo_api_settings(Settings(secret_key="x" * 40))

    assert demo.graphiql is True
    assert demo.introspection == "all"


async def test_anonymous_introspection_is_refused_by_default(admin_token: str, database_url: str, world: World) -> None:
    async with _api(database_url, introspection="authenticated", graphiql=False) as (api, _):
        anonymous = [await api.execute(document) for document in (SCHEMA_NAME, TYPE_NAME)]
        logged_in = await api.execute(SCHEMA_NAME, token=admin_token)
        typename = await api.execute("{ __typename }")
        page = await api.http.get("/graphql")

    for result in anonymous:
        assert result["data"] is None
        assert _codes(result) == ["UNAUTHENTICATED"]
    assert logged_in["data"] == {"__schema": {"queryType": {"name": "Query"}}}
    assert typename["data"] == {"__typename": "Query"}
    assert page.status_code == 404


async def test_full_introspection_is_answered_and_a_nested_introspection_bomb_is_refused(
    admin_token: str, client: GraphQLClient, world: World
) -> None:
    full = get_introspection_query(descriptions=True, specified_by_url=True, directive_is_repeatable=True,
                                   schema_description=True, input_value_deprecation=True)

    answered = await client.execute(full, token=admin_token)
    bomb = await client.execute(INTROSPECTION_BOMB, token=admin_token)

    # Answered whole: GraphiQL needs every default value printable as a literal.
    assert "errors" not in answered, answered.get("errors")
    assert len(answered["data"]["__schema"]["types"]) > 100
    assert bomb["data"] is None
    assert _codes(bomb) == ["QUERY_TOO_COMPLEX"]


async def test_introspection_off_refuses_everyone(admin_token: str, database_url: str, world: World) -> None:
    async with _api(database_url, introspection="off") as (api, _):
        result = await api.execute(TYPE_NAME, token=admin_token)

    assert _codes(result) == ["FORBIDDEN"]


# 8. JSON bodies only.

@pytest.fixture(scope="module")
def live(database_url: str) -> Iterator[LiveServer]:
    with live_server(database_url) as server:
        yield server


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
async def test_a_graphql_post_that_is_not_json_is_refused_with_415(
    live: LiveServer, engine_for_module: AsyncEngine, content_type: str | None
) -> None:
    phone = "13700004150"
    body = orjson.dumps({"query": f'mutation {{ requestLoginCode(phone: "{phone}") {{ errors {{ code }} }} }}'})
    headers = {"content-type": content_type} if content_type else {}

    async with httpx.AsyncClient(base_url=live.url) as http:
        response = await http.post("/graphql", content=body, headers=headers)
    if content_type is None:
        # httpx adds no content type for raw bytes: the request really has none.
        assert "content-type" not in response.request.headers

    assert response.status_code == 415
    assert response.json()["errors"][0]["extensions"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    async with engine_for_module.connect() as connection:
        sent = (await connection.execute(text("SELECT count(*) FROM one_time_codes WHERE phone = :p"), {"p": phone})).scalar_one()
    assert sent == 0


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/graphql+json", "Application/JSON"])
async def test_json_content_types_are_accepted(live: LiveServer, content_type: str) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        response = await http.post("/graphql", content=b'{"query": "{ __typename }"}', headers={"content-type": content_type})

    assert response.status_code == 200
    assert response.json() == {"data": {"__typename": "Query"}}


# 9. Operation names as metric labels.

def _operation_labels() -> set[str]:
    return {sample.labels["operation"] for metric in observability.GRAPHQL_OPERATIONS.collect() for sample in metric.samples}


async def test_only_the_executed_operations_of_signed_in_callers_name_a_metric_label(
    admin_token: str, client: GraphQLClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(observability, "_seen_operations", set())
    monkeypatch.setattr(observability, "MAX_OPERATION_LABELS", 3)

    for n in range(4):
        await client.execute(f"query Stranger{n} {{ __typename }}", operation_name=f"Stranger{n}")
        await client.execute("query Q { __typename }", operation_name=f"Missing{n}", token=admin_token)
        await client.execute(f"query Invalid{n} {{ nope }}", operation_name=f"Invalid{n}", token=admin_token)
        await client.execute(f"query Refused{n} " + _roots(21)[2:-2].join("{}"), operation_name=f"Refused{n}",
                             token=admin_token)
    screen = await client.execute("query StaffScreen { viewer { name } }", operation_name="StaffScreen", token=admin_token)

    assert "errors" not in screen
    labels = _operation_labels()
    assert "StaffScreen" in labels
    assert not {label for label in labels if label.startswith(("Stranger", "Missing", "Invalid", "Refused"))}
    assert observability._seen_operations == {"StaffScreen"}
