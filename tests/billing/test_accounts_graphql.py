"""GraphQL for accounts: open (and the second open refused), the accounts list with its
filters and scope, ``Household.account``, an account statement and its Excel export,
the prepaid monthly statement, close refused until settled and at zero, the audit
entries, and a list whose statement count does not grow with the page."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from openpyxl import load_workbook
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives.models import Household
from backend.archives.service import assign_meter
from backend.auth.service import login_resident, request_login_code
from backend.billing import service as tariffs
from backend.billing.accounts import AccountTerms, open_account
from backend.billing.ledger import post_entry
from backend.billing.models import Account, BillingMode, EntryKind
from backend.clock import utcnow
from backend.db import session_factory
from backend.graphql.relay import encode_id
from tests.billing.factories import SHANGHAI, ingest, tariff
from tests.factories import AreaTree, Staff, auth_policy, bind_at_counter, make_area_tree, make_household, make_staff
from tests.graphql.client import TEST_SECRET, GraphQLClient, graphql_client
from tests.graphql.test_dataloaders import counted_statements
from tests.graphql.test_permission_walk import row_counts
from tests.readings.factories import make_meter

OPEN = """
mutation($input: OpenAccountInput!) {
  openAccount(input: $input) { account { id mode tariffCode balance alertThreshold status alertState accountNo }
    errors { field code message messageEn } }
}"""
HOUSEHOLD_ACCOUNT = """
query($id: ID!) { household(id: $id) { name account { id mode status } accounts { id status } } }"""
ACCOUNTS = """
query($filter: AccountFilterInput, $first: Int) {
  accounts(filter: $filter, first: $first) { totalCount
    edges { node { id accountNo householdName phone address mode balance alertState status settledTo
      household { name } } } }
}"""
NODE = "query($id: ID!) { node(id: $id) { ... on Account { id balance } } }"
STATEMENT = """
query($id: ID!, $from: Date!, $to: Date!, $first: Int) {
  accountStatement(accountId: $id, from: $from, to: $to, first: $first) {
    from to openingBalance closingBalance totals { kind amount }
    entries { totalCount pageInfo { hasNextPage }
      edges { node { kind amount balanceAfter ref note postedAt postedBy } } } }
}"""
EXPORT_URL = "query($id: ID!, $from: Date!, $to: Date!) { accountStatementExportUrl(accountId: $id, from: $from, to: $to) }"
MONTHS = """
query($id: ID!, $months: Int) {
  prepaidStatements(accountId: $id, months: $months) { month usageM3 charged recharged other closingBalance }
}"""
CLOSE = "mutation($id: ID!) { closeSettledAccount(id: $id) { account { status closedAt } errors { field code } } }"
FINAL = """
mutation($id: ID!, $at: DateTime!) {
  finalCharge(id: $id, at: $at) { account { balance settledTo } settlement { accounts charged chargedAmount }
    errors { field code } }
}"""
UPDATE = """
mutation($id: ID!, $input: UpdateAccountInput!) {
  updateAccount(id: $id, input: $input) { account { alertThreshold closeThreshold grace } errors { field code } }
}"""


def month_start(day: date) -> date:
    return day.replace(day=1)


def months_back(day: date, n: int) -> date:
    for _ in range(n):
        day = (month_start(day) - timedelta(days=1)).replace(day=1)
    return month_start(day)


def local(day: date, hours: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=SHANGHAI) + timedelta(hours=hours)


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    east_clerk: Staff
    tariff_code: str
    unopened: Household  # east, no account yet (openAccount's test)
    west_unopened: Household  # west, no account yet (openAccounts' test)
    prepaid: Account  # east, prepaid station, a hand-made ledger over the last three months
    postpaid: Account  # east, 赵六
    west: Account  # west, prepaid station, zero balance (close state)
    closing: Account  # east, prepaid station with a meter: the 销户 walk
    closing_meter_id: int
    m0: date  # this month, m1 the one before, m2 the one before that
    m1: date
    m2: date
    resident_token: str  # bound to the prepaid account's household


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    today = utcnow().astimezone(SHANGHAI).date()
    m0, m1, m2 = month_start(today), months_back(today, 1), months_back(today, 2)
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        east_clerk = await make_staff(session, permissions={"accounts:read", "accounts:manage", "archives:read"},
                                      areas=[tree.east])
        raw = tariff(prices=["2.00"])
        await tariffs.save_tariff(session, raw=raw)
        terms = AccountTerms(tariff_code=raw["code"])

        async def opened(area: Any, name: str, mode: BillingMode, at: datetime, phone: str | None = None,
                         meter: bool = False) -> tuple[Account, int]:
            household = await make_household(session, area=area, name=name, phone=phone)
            assert household.id is not None
            meter_id = 0
            if meter:
                found = await make_meter(session, area_id=area.id, install_date=None)
                assert found.id is not None
                meter_id = found.id
                await assign_meter(session, meter_id=meter_id, household_id=household.id, valid_from=at,
                                   start_reading=Decimal(0))
            account = await open_account(session, household_id=household.id, mode=mode, terms=terms, now=at, by="测试")
            return account, meter_id

        opened_at = local(m2, 14 * 24)
        prepaid, prepaid_meter = await opened(tree.east_community, "王芳", BillingMode.prepaid_station, opened_at,
                                              meter=True)
        postpaid, _ = await opened(tree.east_community, "赵六", BillingMode.postpaid, opened_at, phone="13811112222")
        west, _ = await opened(tree.west_community, "李娜", BillingMode.prepaid_station, opened_at)
        closing, closing_meter = await opened(tree.east_community, "刘洋", BillingMode.prepaid_station, local(m2, 24),
                                              meter=True)
        for extra in ("陈静", "杨磊", "黄敏"):  # a fuller page for the statement count
            await opened(tree.west_community, extra, BillingMode.prepaid_card, opened_at)
        unopened = await make_household(session, area=tree.east_community, name="周杰")
        west_unopened = await make_household(session, area=tree.west_community, name="吴强")

        # The prepaid account's hand-made months (the test's expectations say what they add up to).
        assert prepaid.id is not None
        await ingest(session, prepaid_meter, [(local(m1), "3"), (local(m1, 20 * 24), "10")], now=utcnow())
        for key, kind, fen, day, days in (
            ("r1", EntryKind.recharge, 5000, m2, 15), ("c1", EntryKind.charge, -600, m2, 16),
            ("c2", EntryKind.charge, -700, m1, 4), ("a1", EntryKind.adjustment, 100, m1, 10),
            ("r2", EntryKind.recharge, 2000, m1, 12), ("f1", EntryKind.refund, -500, m1, 15),
        ):
            await post_entry(session, account_id=prepaid.id, kind=kind, amount_fen=fen, ref=f"test:{key}",
                             idempotency_key=f"accounts-graphql:{prepaid.id}:{key}", note=key, posted_by="测试",
                             posted_at=local(day, days * 24))
        catcher = _CodeCatcher()
        policy = auth_policy(TEST_SECRET)
        await request_login_code(session, phone="13900000001", now=utcnow(), policy=policy, sender=catcher)
        pair = await login_resident(session, phone="13900000001", code=catcher.code, now=utcnow(), policy=policy)
        prepaid_household = await session.get(Household, prepaid.household_id)
        assert prepaid_household is not None
        await bind_at_counter(session, resident=pair.principal, household=prepaid_household)
    return World(tree, admin, east_clerk, raw["code"], unopened, west_unopened, prepaid, postpaid, west, closing, closing_meter,
                 m0, m1, m2, pair.access_token)


class _CodeCatcher:
    def __init__(self) -> None:
        self.code = ""

    async def send_login_code(self, phone: str, code: str) -> None:
        self.code = code

    async def send_binding_code(self, phone: str, code: str, account_no: str) -> None:
        raise AssertionError("no binding code expected")


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


def gid(type_name: str, row: Any) -> str:
    assert row.id is not None
    return encode_id(type_name, row.id)


async def data(client: GraphQLClient, token: str, document: str, variables: dict[str, Any] | None = None) -> Any:
    result = await client.execute(document, variables, token=token)
    assert "errors" not in result, result["errors"]
    return result["data"]


def listed(found: Any) -> list[dict[str, Any]]:
    return [edge["node"] for edge in found["accounts"]["edges"]]


async def audit_entries(engine: AsyncEngine, action: str) -> list[tuple[str, bool]]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT module, success FROM audit_log WHERE action = :a ORDER BY id"),
                                        {"a": action})
        return [(row.module, row.success) for row in rows]


# --------------------------------------------------------------------------- open


async def test_open_shows_no_account_then_opens_once_and_a_second_open_writes_only_its_refusal(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.east_clerk.username, world.east_clerk.password)
    household = gid("Household", world.unopened)
    before = await data(client, token, HOUSEHOLD_ACCOUNT, {"id": household})
    assert before["household"]["account"] is None and before["household"]["accounts"] == []

    opened = (await data(client, token, OPEN, {"input": {
        "householdId": household, "mode": "prepaid_meter", "tariffCode": world.tariff_code, "alertThreshold": "30.5",
    }}))["openAccount"]
    assert opened["errors"] == []
    assert {k: opened["account"][k] for k in ("mode", "balance", "alertThreshold", "status", "alertState")} == {
        "mode": "prepaid_meter", "balance": "0.00", "alertThreshold": "30.50", "status": "open", "alertState": "normal"}
    assert opened["account"]["accountNo"] == world.unopened.account_no
    after = await data(client, token, HOUSEHOLD_ACCOUNT, {"id": household})
    assert after["household"]["account"]["id"] == opened["account"]["id"]

    counts = await row_counts(committed_engine)
    again = (await data(client, token, OPEN, {"input": {"householdId": household, "mode": "postpaid",
                                                         "tariffCode": world.tariff_code}}))["openAccount"]
    assert again["account"] is None
    assert [(e["field"], e["code"]) for e in again["errors"]] == [("householdId", "ACCOUNT_EXISTS")]
    assert again["errors"][0]["message"] and again["errors"][0]["messageEn"]
    written = {t: n - counts[t] for t, n in (await row_counts(committed_engine)).items() if n != counts[t]}
    assert written == {"audit_log": 1}
    assert (await audit_entries(committed_engine, "openAccount"))[-2:] == [("accounts", True), ("accounts", False)]


async def test_open_refuses_bad_money_and_a_household_outside_the_scope(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.east_clerk.username, world.east_clerk.password)
    west_household = encode_id("Household", world.west.household_id)
    outside = (await data(client, token, OPEN, {"input": {"householdId": west_household, "mode": "postpaid"}}))
    assert [(e["field"], e["code"]) for e in outside["openAccount"]["errors"]] == [("householdId", "NOT_FOUND")]
    places = await client.execute(OPEN, {"input": {"householdId": gid("Household", world.unopened), "mode": "postpaid",
                                                   "grace": "1.005"}}, token=token)
    assert [e["extensions"]["code"] for e in places["errors"]] == ["BAD_USER_INPUT"]
    negative = (await data(client, token, UPDATE, {"id": gid("Account", world.postpaid),
                                                   "input": {"grace": "-1.00"}}))["updateAccount"]
    assert [(e["field"], e["code"]) for e in negative["errors"]] == [("grace", "INVALID_MONEY")]
    below = (await data(client, token, UPDATE, {"id": gid("Account", world.postpaid),
                                                "input": {"closeThreshold": "-50.00", "grace": "5"}}))["updateAccount"]
    assert below == {"account": {"alertThreshold": "20.00", "closeThreshold": "-50.00", "grace": "5.00"}, "errors": []}


# --------------------------------------------------------------------------- the list


async def test_accounts_list_filters_in_sql_and_keeps_to_the_callers_scope(client: GraphQLClient, world: World) -> None:
    admin = await client.login(world.admin.username, world.admin.password)
    clerk = await client.login(world.east_clerk.username, world.east_clerk.password)

    postpaid = listed(await data(client, admin, ACCOUNTS, {"filter": {"mode": "postpaid"}}))
    assert [(a["householdName"], a["phone"], a["mode"]) for a in postpaid] == [("赵六", "13811112222", "postpaid")]
    assert postpaid[0]["household"] == {"name": "赵六"}
    by_phone = listed(await data(client, admin, ACCOUNTS, {"filter": {"search": "1381111"}}))
    assert [a["id"] for a in by_phone] == [gid("Account", world.postpaid)]
    by_name = listed(await data(client, admin, ACCOUNTS, {"filter": {"search": "王芳"}}))
    assert [(a["id"], a["balance"]) for a in by_name] == [(gid("Account", world.prepaid), "53.00")]
    closing = {a["id"] for a in listed(await data(client, admin, ACCOUNTS, {"filter": {"alertState": "close"}}))}
    assert gid("Account", world.west) in closing and gid("Account", world.prepaid) not in closing
    households = await data(client, admin, "{ households(first: 50, search: \"赵六\") { edges { node { account { mode } } } } }")
    assert [e["node"]["account"] for e in households["households"]["edges"]] == [{"mode": "postpaid"}]
    west_area = await data(client, admin, ACCOUNTS, {"filter": {"areaId": gid("Area", world.tree.west)}})
    assert west_area["accounts"]["totalCount"] == 4

    everything = await data(client, clerk, ACCOUNTS, {"first": 100})
    seen = {a["id"] for a in listed(everything)}
    assert gid("Account", world.prepaid) in seen and gid("Account", world.west) not in seen
    assert everything["accounts"]["totalCount"] == len(seen)
    foreign = await data(client, clerk, ACCOUNTS, {"filter": {"areaId": gid("Area", world.tree.west)}})
    assert foreign["accounts"] == {"totalCount": 0, "edges": []}
    node = await client.execute(NODE, {"id": gid("Account", world.west)}, token=clerk)
    assert [e["extensions"]["code"] for e in node["errors"]] == ["NOT_FOUND"]
    statement = await client.execute(STATEMENT, {"id": gid("Account", world.west), "from": "2026-01-01",
                                                 "to": "2026-01-31"}, token=clerk)
    assert [e["extensions"]["code"] for e in statement["errors"]] == ["NOT_FOUND"]


async def test_accounts_list_statement_count_does_not_grow_with_the_page(
    client: GraphQLClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    state = client.http._transport.app.state  # type: ignore[attr-defined]
    for _ in range(2):  # every pool connection the loaders use is opened before counting
        await client.execute(ACCOUNTS, {"first": 6}, token=token)
    with counted_statements(monkeypatch, state.engine, state.read_engine) as small:
        two = await data(client, token, ACCOUNTS, {"first": 2})
    with counted_statements(monkeypatch, state.engine, state.read_engine) as large:
        six = await data(client, token, ACCOUNTS, {"first": 6})

    assert (len(listed(two)), len(listed(six))) == (2, 6)
    work = [[s for s in statements if "current_setting('jit')" not in s and "typeinfo_tree" not in s]
            for statements in (small, large)]
    assert len(work[0]) == len(work[1])


# --------------------------------------------------------------------------- statements


async def test_statement_has_the_balances_totals_and_entries_of_its_days(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    last_day = world.m0 - timedelta(days=1)
    found = (await data(client, token, STATEMENT, {"id": gid("Account", world.prepaid), "from": str(world.m1),
                                                   "to": str(last_day), "first": 2}))["accountStatement"]
    assert (found["openingBalance"], found["closingBalance"]) == ("44.00", "53.00")
    assert sorted((t["kind"], t["amount"]) for t in found["totals"]) == [
        ("adjustment", "1.00"), ("charge", "-7.00"), ("recharge", "20.00"), ("refund", "-5.00")]
    assert found["entries"]["totalCount"] == 4 and found["entries"]["pageInfo"]["hasNextPage"] is True
    assert [(e["node"]["kind"], e["node"]["amount"], e["node"]["balanceAfter"], e["node"]["note"])
            for e in found["entries"]["edges"]] == [("charge", "-7.00", "37.00", "c2"), ("adjustment", "1.00", "38.00", "a1")]
    first_day = (await data(client, token, STATEMENT, {"id": gid("Account", world.prepaid), "from": str(world.m1),
                                                       "to": str(world.m1)}))["accountStatement"]
    assert (first_day["openingBalance"], first_day["closingBalance"], first_day["totals"]) == ("44.00", "44.00", [])
    year = await client.execute(STATEMENT, {"id": gid("Account", world.prepaid), "from": "2025-01-01",
                                            "to": "2026-01-01"}, token=token)  # 366 days
    assert "errors" not in year
    too_long = await client.execute(STATEMENT, {"id": gid("Account", world.prepaid), "from": "2025-01-01",
                                                "to": "2026-01-02"}, token=token)
    assert [e["extensions"]["code"] for e in too_long["errors"]] == ["RANGE_TOO_LONG"]


async def test_statement_exports_to_excel_between_its_balances(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    url = (await data(client, token, EXPORT_URL, {"id": gid("Account", world.prepaid), "from": str(world.m1),
                                                  "to": str(world.m0 - timedelta(days=1))}))["accountStatementExportUrl"]
    response = await client.http.get(url)
    assert response.status_code == 200, response.text
    sheet = load_workbook(io.BytesIO(response.content), read_only=True).active
    rows = [list(row) for row in sheet.iter_rows(min_row=3, values_only=True)]  # type: ignore[union-attr]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("期初余额", None, 44), ("扣费", -7, 37), ("调整", 1, 38), ("充值", 20, 58), ("退费", -5, 53), ("期末余额", None, 53)]
    assert (await audit_entries(committed_engine, "exportAccountStatement"))[-1] == ("accounts", True)
    assert (await client.http.get(url)).status_code == 401  # a link works once

    clerk = await client.login(world.east_clerk.username, world.east_clerk.password)
    bearer = {"Authorization": f"Bearer {clerk}"}
    path = url.split("?")[0]
    foreign = await client.http.get(path, params={"accountId": gid("Account", world.west), "from": str(world.m1),
                                                  "to": str(world.m1)}, headers=bearer)
    backwards = await client.http.get(path, params={"accountId": gid("Account", world.prepaid), "from": str(world.m1),
                                                    "to": str(world.m2)}, headers=bearer)
    assert (foreign.status_code, backwards.status_code) == (404, 400)


async def test_prepaid_monthly_statement_since_the_account_opened(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    months = (await data(client, token, MONTHS, {"id": gid("Account", world.prepaid)}))["prepaidStatements"]
    assert months == [
        {"month": str(world.m0), "usageM3": "0.0000", "charged": "0.00", "recharged": "0.00", "other": "0.00",
         "closingBalance": "53.00"},
        {"month": str(world.m1), "usageM3": "7.0000", "charged": "6.00", "recharged": "20.00", "other": "-5.00",
         "closingBalance": "53.00"},
        {"month": str(world.m2), "usageM3": "3.0000", "charged": "6.00", "recharged": "50.00", "other": "0.00",
         "closingBalance": "44.00"},
    ]
    latest = (await data(client, token, MONTHS, {"id": gid("Account", world.prepaid), "months": 1}))["prepaidStatements"]
    assert [m["month"] for m in latest] == [str(world.m0)]
    refused = await client.execute(MONTHS, {"id": gid("Account", world.prepaid), "months": 0}, token=token)
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["BAD_USER_INPUT"]


async def test_a_resident_reads_the_monthly_statement_of_their_own_household_only(
    client: GraphQLClient, world: World
) -> None:
    own = await data(client, world.resident_token, MONTHS, {"id": gid("Account", world.prepaid), "months": 2})
    assert [(m["month"], m["closingBalance"]) for m in own["prepaidStatements"]] == [
        (str(world.m0), "53.00"), (str(world.m1), "53.00")]
    other = await client.execute(MONTHS, {"id": gid("Account", world.postpaid)}, token=world.resident_token)
    assert [e["extensions"]["code"] for e in other["errors"]] == ["NOT_FOUND"]
    listing = await client.execute(ACCOUNTS, token=world.resident_token)
    assert [e["extensions"]["code"] for e in listing["errors"]] == ["FORBIDDEN"]


# --------------------------------------------------------------------------- close


async def test_close_is_refused_until_settled_and_at_zero_then_the_household_has_no_account(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.east_clerk.username, world.east_clerk.password)
    account = gid("Account", world.closing)
    assert world.closing.id is not None
    read_at = local(world.m1, 5 * 24)
    async with session_factory(committed_engine)() as session, session.begin():
        await post_entry(session, account_id=world.closing.id, kind=EntryKind.recharge, amount_fen=10000,
                         ref="test", idempotency_key=f"accounts-graphql:{world.closing.id}:recharge")
        await ingest(session, world.closing_meter_id, [(read_at, "5")], now=utcnow())

    unsettled = (await data(client, token, CLOSE, {"id": account}))["closeSettledAccount"]
    assert unsettled == {"account": None, "errors": [{"field": "id", "code": "ACCOUNT_UNSETTLED"}]}
    future = (await data(client, token, FINAL, {"id": account, "at": (utcnow() + timedelta(days=1)).isoformat()}))
    assert future["finalCharge"]["errors"] == [{"field": "at", "code": "BAD_USER_INPUT"}]
    final = (await data(client, token, FINAL, {"id": account, "at": (read_at + timedelta(hours=1)).isoformat()}))
    charged = final["finalCharge"]
    assert charged["errors"] == [] and charged["account"]["balance"] == "90.00"  # 5 m³ at ¥2.00
    assert charged["settlement"] == {"accounts": 1, "charged": 1, "chargedAmount": "10.00"}
    outstanding = (await data(client, token, CLOSE, {"id": account}))["closeSettledAccount"]
    assert outstanding == {"account": None, "errors": [{"field": "balance", "code": "BALANCE_OUTSTANDING"}]}

    async with session_factory(committed_engine)() as session, session.begin():
        await post_entry(session, account_id=world.closing.id, kind=EntryKind.refund, amount_fen=-9000, ref="test",
                         idempotency_key=f"accounts-graphql:{world.closing.id}:refund")
    closed = (await data(client, token, CLOSE, {"id": account}))["closeSettledAccount"]
    assert closed["errors"] == [] and closed["account"]["status"] == "closed"
    household = (await data(client, token, HOUSEHOLD_ACCOUNT,
                            {"id": encode_id("Household", world.closing.household_id)}))["household"]
    assert household["account"] is None
    assert household["accounts"] == [{"id": account, "status": "closed"}]
    assert (await audit_entries(committed_engine, "closeSettledAccount"))[-3:] == [
        ("accounts", False), ("accounts", False), ("accounts", True)]
    assert (await audit_entries(committed_engine, "finalCharge"))[-2:] == [("accounts", False), ("accounts", True)]


async def test_settle_prepaid_settles_the_subtree_and_is_audited(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    settle = "mutation($area: ID!) { settlePrepaid(areaId: $area) { settlement { accounts } errors { code } } }"
    done = (await data(client, token, settle, {"area": gid("Area", world.tree.west)}))["settlePrepaid"]
    assert done == {"settlement": {"accounts": 1}, "errors": []}  # the west prepaid-station account; cards are not
    assert (await audit_entries(committed_engine, "settlePrepaid"))[-1] == ("prepaid", True)


async def test_open_accounts_opens_the_subtrees_households_without_one_and_update_keeps_what_it_is_not_given(
    client: GraphQLClient, world: World, committed_engine: AsyncEngine
) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    bulk = """mutation($input: OpenAccountsInput!) { openAccounts(input: $input) { opened skipped errors { code } } }"""
    opened = (await data(client, token, bulk, {"input": {"areaId": gid("Area", world.tree.west), "mode": "postpaid",
                                                          "tariffCode": world.tariff_code}}))["openAccounts"]
    assert opened == {"opened": 1, "skipped": 4, "errors": []}
    assert (await audit_entries(committed_engine, "openAccounts"))[-1] == ("accounts", True)
    household = (await data(client, token, HOUSEHOLD_ACCOUNT,
                            {"id": gid("Household", world.west_unopened)}))["household"]
    assert household["account"]["mode"] == "postpaid"

    persons = ("mutation($id: ID!, $input: UpdateAccountInput!) "
               "{ updateAccount(id: $id, input: $input) { account { persons grace } errors { code } } }")
    account = household["account"]["id"]
    steps = [{"persons": 5}, {"grace": "3"}, {"persons": None}]
    seen = [(await data(client, token, persons, {"id": account, "input": step}))["updateAccount"]["account"]
            for step in steps]
    assert seen == [{"persons": 5, "grace": "0.00"}, {"persons": 5, "grace": "3.00"}, {"persons": None, "grace": "3.00"}]
