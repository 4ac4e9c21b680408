"""A domain defined under tests/ (tests/sample_domain, installed for the whole run by
tests/conftest.py) is picked up everywhere from its declaration alone: the API and a
field on the archives' Household, its route, menu, demo grants, job, handler of a typed
event, CLI command, check, settings group and the system actor; the real schema stays as
it was."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from typer.testing import CliRunner

from backend.app import create_app
from backend.auth.catalog import all_permissions, menus
from backend.checks import run_checks
from backend.cli import app as cli
from backend.demo import demo_grants
from backend.domains import DOMAINS, installed
from backend.graphql.relay import encode_id
from backend.graphql.schema import build_schema, export_sdl
from backend.jobs import declared_jobs, run_job, run_worker, runtime_for, system_principal
from backend.settings import Settings, SettingsError
from tests.graphql.client import GraphQLClient, api_settings, graphql_client
from tests.graphql.conftest import World
from tests.sample_domain.domain import DOMAIN as NOTES
from tests.sample_domain.events import NoteWritten
from tests.sample_domain.handlers import HANDLED
from tests.sample_domain.jobs import TALLIES

NOTES_AND_HOUSEHOLD = """
query Notes($id: ID!) {
  notesGreeting
  node(id: $id) { ... on Household { accountNo noteHeading } }
}
"""
WRITE_NOTE = "mutation Write($text: String!) { writeNote(text: $text) { note errors { field code } } }"


def test_the_test_domain_is_installed_after_the_real_ones() -> None:
    assert installed() == (*DOMAINS, NOTES)


def test_its_schema_parts_join_the_api_and_the_real_schema_is_unchanged() -> None:
    schema = build_schema().as_str()
    real = build_schema(DOMAINS).as_str()

    assert "notesGreeting: String!" in schema and "writeNote(text: String!): NotePayload!" in schema
    assert "noteHeading: String!" in schema  # on Household, added through the extension point
    assert "notesGreeting" not in real and "noteHeading" not in real
    assert export_sdl(DOMAINS) == real + "\n"


async def test_its_query_mutation_and_household_field_answer_through_the_app(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    household_id = encode_id("Household", world.east_household.id or 0)

    read = await client.execute(NOTES_AND_HOUSEHOLD, {"id": household_id}, token=token)
    written = await client.execute(WRITE_NOTE, {"text": "  水表井积水  "}, token=token)
    refused = await client.execute(WRITE_NOTE, {"text": "   "}, token=token)

    assert read["data"]["notesGreeting"] == "便签服务 (Asia/Shanghai)"  # a service its declaration offers
    assert read["data"]["node"]["noteHeading"] == f"户号 {read['data']['node']['accountNo']}"
    assert written["data"]["writeNote"] == {"note": "水表井积水", "errors": []}
    assert refused["data"]["writeNote"]["errors"] == [{"field": "text", "code": "BAD_USER_INPUT"}]


async def test_a_caller_without_its_permission_is_refused(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.nobody.username, world.nobody.password)

    result = await client.execute(WRITE_NOTE, {"text": "x"}, token=token)

    assert [error["extensions"]["code"] for error in result["errors"]] == ["FORBIDDEN"]


async def test_its_route_is_served(database_url: str) -> None:
    app = create_app(api_settings(), database_url)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        response = await http.get("/notes/ping")
    await app.state.engine.dispose()

    assert response.status_code == 200
    assert response.json() == {"greeting": "便签服务 (Asia/Shanghai)"}


async def test_its_settings_group_is_read_with_its_own_prefix(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUIWU_NOTES_MAX_CHARS", "4")
    async with graphql_client(database_url) as api:
        token = await api.login(*await _admin_login(database_url))
        written = await api.execute(WRITE_NOTE, {"text": "水表井积水"}, token=token)
    monkeypatch.setenv("SHUIWU_NOTES_MAX_CHARS", "many")

    assert written["data"]["writeNote"]["note"] == "水表井积"
    with pytest.raises(SettingsError, match="bad setting SHUIWU_NOTES_MAX_CHARS"):
        create_app(api_settings(), database_url)


async def _admin_login(database_url: str) -> tuple[str, str]:
    from backend.db import create_engine, session_factory
    from tests.factories import make_staff

    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with session_factory(engine)() as session, session.begin():
            staff = await make_staff(session, permissions={"notes:write"})
    finally:
        await engine.dispose()
    return staff.username, staff.password


async def test_its_handler_gets_the_typed_payload_and_runs_as_the_system_actor(
    database_url: str, client: GraphQLClient, world: World
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    await client.execute(WRITE_NOTE, {"text": "三号楼阀门井漏水"}, token=token)
    written = NoteWritten(chars=8, by=world.admin.principal.name)

    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(Settings(), database_url, stop=stop, relay_sweep_interval=0.2))
    try:
        for _ in range(100):
            if any(payload == written for _, payload, _ in HANDLED):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 5)

    assert [actor for _, payload, actor in HANDLED if payload == written] == ["系统"]


def test_its_menu_permissions_and_demo_grants_are_in_the_catalog() -> None:
    assert "notes" in [menu.code for menu in menus()]
    assert {"notes:read", "notes:write"} <= all_permissions()
    assert {"notes:read", "notes:write"} <= demo_grants("repair")
    assert "notes:read" not in demo_grants("cashier")


async def test_its_job_is_scheduled_and_runs_as_the_system_actor(database_url: str) -> None:
    from tests.events.factories import committing_sessions

    job = next(job for job in declared_jobs(installed()) if job.name == "notes.tally")
    assert job.cron == "30 2 * * *"
    assert "notes:read" in system_principal(installed()).permissions
    async with committing_sessions(database_url) as sessions:
        await run_job(runtime_for(Settings(), sessions), job, {})

    assert TALLIES[-1][0] == "系统"


def test_its_cli_command_is_mounted() -> None:
    runner = CliRunner()

    kept = runner.invoke(cli, ["notes", "check", "  抄表 "])
    refused = runner.invoke(cli, ["notes", "check", "  "])

    assert (kept.exit_code, kept.stdout.strip()) == (0, "抄表")
    assert refused.exit_code == 1


async def test_its_check_is_a_line_of_shuiwu_check(database_url: str) -> None:
    lines: list[str] = []

    failed = await run_checks(Settings(), database_url, echo=lines.append)

    assert "ok    notes.greeting  便签服务 (Asia/Shanghai)" in lines
    assert lines[0].startswith("ok    settings  ")
    assert lines[1].startswith("ok    database.migrations")
    assert failed == sum(line.startswith("FAIL") for line in lines)


@pytest.mark.parametrize("name", ["auth.administrator", "archives.cross_area", "readings.partitions", "billing.ledger",
                                  "billing.bills", "billing.notice_font", "payments.ledger",
                                  "calendar.holidays"])
async def test_every_real_domain_check_runs(database_url: str, name: str) -> None:
    lines: list[str] = []

    await run_checks(Settings(), database_url, echo=lines.append)

    assert any(line.split()[1] == name for line in lines)
