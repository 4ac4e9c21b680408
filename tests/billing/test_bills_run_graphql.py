"""The billing run through GraphQL (``runBilling``, ``voidBill``, ``billingRuns``,
``setAreaBillingCycle``: permissions, scope, audit), ``shuiwu bill run`` and the daily
``run_billing`` job, against a committed database of this module's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from typer.testing import CliRunner, Result

from backend.archives.models import Area
from backend.archives.service import assign_meter
from backend.billing import bills, review
from backend.billing import service as tariffs
from backend.billing.accounts import AccountTerms, open_account
from backend.billing.bills_models import BillingRun
from backend.billing.models import BillingMode
from backend.billing.schema import bill_runs
from backend.cli import app
from backend.clock import utcnow
from backend.db import session_factory
from backend.graphql.relay import encode_id
from backend.jobs import runtime_for
from backend.settings import Settings
from tests.billing.factories import SHANGHAI, at, ingest, tariff
from tests.factories import make_area_tree, make_household, make_staff
from tests.graphql.client import GraphQLClient, graphql_client
from tests.readings.factories import make_meter

RUN = """mutation($period: String!, $area: ID) { runBilling(period: $period, areaId: $area) {
  run { period status accounts issued held alreadyBilled skipped amount }
  billIds held { accountId missingReading } errors { field code } } }"""
VOID = """mutation($bill: ID!, $reason: String!) { voidBill(billId: $bill, reason: $reason, reissue: true) {
  voidedBillId reissuedBillId errors { field code } } }"""
RUNS = """query($period: String) { billingRuns(period: $period) { totalCount edges { node { issued status } } } }"""
CYCLE = """mutation($area: ID!) { setAreaBillingCycle(areaId: $area, months: 2, firstMonth: 2) {
  cycle { months firstMonth } errors { field code } } }"""


@dataclass
class World:
    period: str  # two months back: ended, and its readings in
    first: date
    east_area: int
    west_area: Area
    east_account: int
    runner: Any  # bills:run + bills:void + bills:configure over 城东
    reader: Any  # bills:read only


def two_months_back() -> date:
    today = utcnow().astimezone(SHANGHAI).date()
    return (today.replace(day=1) - timedelta(days=40)).replace(day=1)


async def postpaid_in(session: AsyncSession, area: Area, raw: dict[str, Any], opened: datetime,
                      readings: list[tuple[datetime, str | Decimal]]) -> int:
    household = await make_household(session, area=area, name="周敏")
    meter = await make_meter(session, area_id=area.id, install_date=None)
    assert household.id is not None and meter.id is not None
    await assign_meter(session, meter_id=meter.id, household_id=household.id, valid_from=opened,
                       start_reading=Decimal(0))
    account = await open_account(session, household_id=household.id, mode=BillingMode.postpaid,
                                 terms=AccountTerms(tariff_code=raw["code"]), now=opened, by="测试")
    await ingest(session, meter.id, readings, now=utcnow())
    assert account.id is not None
    return account.id


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    first = two_months_back()
    opened = datetime.combine(first, time(), tzinfo=SHANGHAI)
    # Noon of the period's last day: inside the review's last 3 days, so nobody is held.
    period_last_day = datetime.combine(bills._add_months(first, 1), time(12), tzinfo=SHANGHAI) - timedelta(days=1)
    raw = tariff(prices=["2.00"], valid_from=date(2020, 1, 1))
    async with session_factory(committed_engine)() as session, session.begin():
        await tariffs.save_tariff(session, raw=raw)
        tree = await make_area_tree(session)
        east = await postpaid_in(session, tree.east_community, raw, opened, [(period_last_day, "10")])
        await postpaid_in(session, tree.west_community, raw, opened, [(period_last_day, "5")])
        runner = await make_staff(session, permissions={"bills:run", "bills:void", "bills:configure", "bills:read"},
                                  areas=[tree.east])
        reader = await make_staff(session, permissions={"bills:read"}, areas=[tree.east])
    assert tree.east_community.id is not None
    return World(f"{first:%Y-%m}", first, tree.east_community.id, tree.west_community, east, runner, reader)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


async def test_run_billing_needs_its_permission_bills_the_scope_once_and_is_audited(
        world: World, client: GraphQLClient, committed_engine: AsyncEngine) -> None:
    reader = await client.login(world.reader.username, world.reader.password)
    forbidden = await client.execute(RUN, {"period": world.period}, token=reader)
    assert forbidden["errors"][0]["extensions"]["code"] == "FORBIDDEN"

    token = await client.login(world.runner.username, world.runner.password)
    done = (await client.execute(RUN, {"period": world.period}, token=token))["data"]["runBilling"]
    # 城东 only: the clerk's scope; 10 m³ at ¥2.00.
    assert done["errors"] == []
    assert done["run"] == {"period": world.period, "status": "finished", "accounts": 1, "issued": 1, "held": 0,
                           "alreadyBilled": 0, "skipped": 0, "amount": "20.00"}
    assert len(done["billIds"]) == 1
    again = (await client.execute(RUN, {"period": world.period}, token=token))["data"]["runBilling"]
    assert (again["run"]["issued"], again["run"]["alreadyBilled"]) == (0, 1)
    outside = (await client.execute(RUN, {"period": world.period, "area": encode_id("Area", world.west_area.id or 0)},
                                    token=token))["data"]["runBilling"]
    assert outside["errors"] == [{"field": "areaId", "code": "NOT_FOUND"}]
    future = (await client.execute(RUN, {"period": "2099-01"}, token=token))["data"]["runBilling"]
    assert future["errors"] == [{"field": "period", "code": "BILLING_PERIOD_NOT_ENDED"}]

    # The 城东 clerk's runs "of everything" covered 城东 only and are recorded as 城东's: the
    # 城东 reader finds both (the refused ones wrote no run).
    listed = (await client.execute(RUNS, {"period": world.period}, token=reader))["data"]["billingRuns"]
    assert listed["totalCount"] == 2

    forbidden_void = await client.execute(VOID, {"bill": done["billIds"][0], "reason": "读数错误"}, token=reader)
    assert forbidden_void["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    voided = (await client.execute(VOID, {"bill": done["billIds"][0], "reason": "读数错误"}, token=token)
              )["data"]["voidBill"]
    assert voided["errors"] == [] and voided["voidedBillId"] == done["billIds"][0] and voided["reissuedBillId"]
    refused = (await client.execute(VOID, {"bill": done["billIds"][0], "reason": "再次"}, token=token))["data"]["voidBill"]
    assert refused["errors"] == [{"field": "billId", "code": "BILL_VOIDED"}]

    async with committed_engine.connect() as connection:
        rows = (await connection.execute(text(
            "SELECT action, module, success FROM audit_log WHERE action IN ('runBilling', 'voidBill') ORDER BY id"
        ))).all()
    # Forbidden calls are logged as refusals too.
    assert [(row.action, row.success) for row in rows] == [
        ("runBilling", False), ("runBilling", True), ("runBilling", True), ("runBilling", False),
        ("runBilling", False), ("voidBill", False), ("voidBill", True), ("voidBill", False)]
    assert {row.module for row in rows} == {"bills"}


async def test_setting_an_areas_cycle_needs_configure(world: World, client: GraphQLClient) -> None:
    reader = await client.login(world.reader.username, world.reader.password)
    area = encode_id("Area", world.east_area)
    assert (await client.execute(CYCLE, {"area": area}, token=reader))["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    token = await client.login(world.runner.username, world.runner.password)
    done = (await client.execute(CYCLE, {"area": area}, token=token))["data"]["setAreaBillingCycle"]
    assert done == {"cycle": {"months": 2, "firstMonth": 2}, "errors": []}


async def shuiwu(database_url: str, *args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, app, list(args),
                                   env={"SHUIWU_DATABASE_URL": database_url, "COLUMNS": "240"})


async def test_the_cli_run_prints_its_summary_and_a_refusal_exits_1(world: World, database_url: str) -> None:
    done = await shuiwu(database_url, "bill", "run", "--period", world.period, "--area", str(world.west_area.id))
    assert done.exit_code == 0, done.output
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{world.period}: issued ") and ", skipped 0, amount ¥" in summary
    refused = await shuiwu(database_url, "bill", "run", "--period", "2099-01")
    assert refused.exit_code == 1
    assert refused.stderr.strip().startswith("BILLING_PERIOD_NOT_ENDED (period): 账期尚未结束")
    unknown = await shuiwu(database_url, "bill", "run", "--period", world.period, "--area", "NO-SUCH-AREA")
    assert unknown.exit_code == 1 and unknown.stderr.startswith("NOT_FOUND (area)")


async def test_the_daily_job_bills_the_latest_period_ended_five_days_ago_once(
        world: World, committed_engine: AsyncEngine) -> None:
    raw = tariff(prices=["2.00"], valid_from=date(2020, 1, 1))
    opened = datetime.combine(world.first, time(), tzinfo=SHANGHAI)
    end = datetime.combine(bills._add_months(world.first, 1), time(), tzinfo=SHANGHAI)
    async with session_factory(committed_engine)() as session, session.begin():
        await tariffs.save_tariff(session, raw=raw)
        tree = await make_area_tree(session)
        account = await postpaid_in(session, tree.east_community, raw, opened, [(end - timedelta(hours=12), "3")])
    # Five days after the period's end, at 02:30: the period is the job's.
    runtime = runtime_for(Settings(), session_factory(committed_engine),
                          clock=lambda: end + timedelta(days=5, hours=2, minutes=30))
    first = await bills.scheduled_run(runtime, {})
    assert any(account in r.account_ids and r.period == world.first for r in first)
    again = await bills.scheduled_run(runtime, {})
    assert all(r.issued == 0 for r in again)  # held accounts may keep a period open; nothing is billed twice
    async with session_factory(committed_engine)() as session:
        started_by = (await session.execute(text("SELECT r.started_by FROM bills b JOIN billing_runs r ON r.id = b.run_id "
                                                 "WHERE b.account_id = :a"), {"a": account})).scalar_one()
    assert started_by == "系统"


def test_a_runs_payload_lists_the_first_bills_and_held_accounts_and_counts_them_all() -> None:
    many = bill_runs.LISTED + 1
    result = bills.BillingRunResult(
        run_id=1, period=date(2026, 10, 1), bill_ids=tuple(range(1, many + 1)), account_ids=tuple(range(1, many + 1)),
        held=tuple(review.HeldAccount(i, i, [], True) for i in range(1, many + 1)), accounts=2 * many, issued=many,
        already_billed=0, skipped=0, amount_fen=100 * many)
    run = BillingRun(id=1, period=date(2026, 10, 1), started_by="出账员", started_at=at(2026, 11, 5), accounts=2 * many,
                     issued=many, held=many, amount_fen=100 * many)

    payload = bill_runs.run_payload(result, run, errors=[])

    assert (len(payload.bill_ids), len(payload.held)) == (bill_runs.LISTED, bill_runs.LISTED)
    assert payload.run is not None and (payload.run.issued, payload.run.held) == (many, many)
