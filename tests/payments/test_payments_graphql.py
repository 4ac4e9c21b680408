"""GraphQL for the counter: take a payment (Money strings; a mismatch or a card without
its reference refused with nothing written), reverse one's own and not someone else's,
the payments list's filters and scope, its Excel export, closing an account with a
final reading typed at the desk, the cashier's day handed over and locked, and the
audit entries of it all."""

from __future__ import annotations

import io
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from openpyxl import load_workbook
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives.models import AreaKind, Household
from backend.archives.service import assign_meter, create_area, create_household
from backend.billing import service as tariffs
from backend.billing.accounts import AccountTerms, open_account
from backend.billing.models import Account, BillingMode
from backend.clock import utcnow
from backend.db import session_factory
from backend.graphql.relay import encode_id
from backend.payments.counter import business_day
from tests.billing.factories import SHANGHAI, tariff
from tests.factories import AreaTree, Staff, make_area_tree, make_household, make_staff, unique
from tests.graphql.client import GraphQLClient, graphql_client
from tests.graphql.test_dataloaders import counted_statements
from tests.graphql.test_permission_walk import row_counts
from tests.readings.factories import make_meter

TAKE = """
mutation($input: TakePaymentInput!) {
  takePayment(input: $input) {
    payment { id serialNo kind channel purpose amount reference operatorName status businessDay receiptsPrinted
              accountNo householdName community building unit room roomLabel account { id balance } }
    account { id balance }
    errors { field code message messageEn } }
}"""
REVERSE = """
mutation($id: ID!, $reason: String!) {
  reversePayment(id: $id, reason: $reason) { payment { id status reversedBy reversalReason } errors { field code } }
}"""
CLOSE = """
mutation($input: CloseAccountInput!) {
  closeAccount(input: $input) { account { id status balance } finalCharge refund { kind channel amount }
    collection { id } errors { field code } }
}"""
PAYMENTS = """
query($filter: PaymentFilterInput, $first: Int) {
  payments(filter: $filter, first: $first) { totalCount edges { node { id channel amount operatorName accountNo } } }
}"""
EXPORT_URL = "query($filter: PaymentFilterInput) { paymentsExportUrl(filter: $filter) }"
DAY = """
query($day: Date, $operatorId: ID) {
  cashierDay(day: $day, operatorId: $operatorId) { operatorName day ledger balanced handedOver handedOverBy
    channels { channel collected refunded reversed net count } totals { collected refunded reversed net count } }
}"""
HAND_OVER = """
mutation($day: Date!) { handOverDay(day: $day) { cashierDay { handedOver totals { net } } errors { field code } } }"""

_keys = itertools.count()


def key() -> str:
    return f"gql-{next(_keys)}-{unique('k')}"


def gid(type_name: str, row: Any) -> str:
    assert row.id is not None
    return encode_id(type_name, row.id)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


async def data(client: GraphQLClient, token: str, document: str, variables: dict[str, Any] | None = None) -> Any:
    result = await client.execute(document, variables, token=token)
    assert "errors" not in result, result["errors"]
    return result["data"]


async def audit_entries(engine: AsyncEngine, action: str) -> list[tuple[str, bool]]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT module, success FROM audit_log WHERE action = :a ORDER BY id"),
                                        {"a": action})
        return [(row.module, row.success) for row in rows]


@dataclass
class World:
    tree: AreaTree
    admin: Staff
    cashier: Staff  # east: collects, closes, reads payments
    colleague: Staff  # east: collects only
    west_cashier: Staff  # west: collects, reads payments
    day_cashier: Staff  # east: the one whose day is handed over
    east: Account  # 王芳, 1号楼 1单元 0101
    west: Account  # 李娜
    closing: Account  # 刘洋, with a meter from the start of the month


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    opened_at = utcnow() - timedelta(days=3)
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        admin = await make_staff(session, areas=[tree.company])
        counter = {"counter:collect", "counter:close_account", "payments:read", "accounts:read"}
        cashier = await make_staff(session, permissions=counter, areas=[tree.east])
        colleague = await make_staff(session, permissions={"counter:collect"}, areas=[tree.east])
        west_cashier = await make_staff(session, permissions={"counter:collect", "payments:read"}, areas=[tree.west])
        day_cashier = await make_staff(session, permissions=counter, areas=[tree.east])
        raw = tariff(prices=["2.00"])
        await tariffs.save_tariff(session, raw=raw)
        building = await create_area(session, name="1号楼", kind=AreaKind.building, parent_id=tree.east_community.id)
        unit = await create_area(session, name="1单元", kind=AreaKind.unit, parent_id=building.id)
        assert unit.id is not None

        async def opened(household: Household) -> Account:
            assert household.id is not None
            return await open_account(session, household_id=household.id, mode=BillingMode.prepaid_station,
                                      terms=AccountTerms(tariff_code=raw["code"]), now=opened_at, by="测试")

        east = await opened(await create_household(session, account_no=unique("88"), name="王芳", area_id=unit.id,
                                                   room="0101"))
        west = await opened(await make_household(session, area=tree.west_community, name="李娜"))
        closing_household = await make_household(session, area=tree.east_community, name="刘洋")
        meter = await make_meter(session, area_id=tree.east_community.id, install_date=None)
        assert meter.id is not None and closing_household.id is not None
        await assign_meter(session, meter_id=meter.id, household_id=closing_household.id, valid_from=opened_at,
                           start_reading=Decimal(0))
        closing = await opened(closing_household)
    return World(tree, admin, cashier, colleague, west_cashier, day_cashier, east, west, closing)


def payment_input(account: Account, amount: str = "123.45", **extra: Any) -> dict[str, Any]:
    return {"accountId": gid("Account", account), "channel": "cash", "purpose": "recharge", "amount": amount,
            "confirmAmount": amount, "idempotencyKey": key(), **extra}


async def take(client: GraphQLClient, token: str, account: Account, amount: str = "123.45",
               **extra: Any) -> dict[str, Any]:
    found: dict[str, Any] = (await data(client, token, TAKE, {"input": payment_input(account, amount, **extra)}))[
        "takePayment"]
    return found


def nodes(found: Any) -> list[dict[str, Any]]:
    return [edge["node"] for edge in found["payments"]["edges"]]


async def ledger_sum(engine: AsyncEngine, account: Account) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text(
            "SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries WHERE account_id = :a"), {"a": account.id})).scalar_one())


# --------------------------------------------------------------------------- take and reverse


async def test_a_payment_is_taken_in_money_strings_with_the_households_place(
        client: GraphQLClient, world: World, committed_engine: AsyncEngine) -> None:
    token = await client.login(world.cashier.username, world.cashier.password)
    taken = await take(client, token, world.east, "123.45", note="柜台")

    assert taken["errors"] == []
    payment = taken["payment"]
    assert {k: payment[k] for k in ("kind", "channel", "purpose", "amount", "status", "receiptsPrinted")} == {
        "kind": "collect", "channel": "cash", "purpose": "recharge", "amount": "123.45", "status": "succeeded",
        "receiptsPrinted": 0}
    assert (payment["householdName"], payment["community"], payment["building"], payment["unit"], payment["room"],
            payment["roomLabel"]) == ("王芳", "翠湖小区", "1号楼", "1单元", "0101", "1-1-0101")
    assert payment["operatorName"] == world.cashier.user.full_name
    assert payment["businessDay"] == str(business_day(utcnow(), SHANGHAI))
    assert taken["account"]["balance"] == payment["account"]["balance"] == "123.45"
    assert (await audit_entries(committed_engine, "takePayment"))[-1] == ("counter", True)


@pytest.mark.parametrize(("changes", "field", "code"), [
    ({"confirmAmount": "123.46"}, "confirmAmount", "PAYMENT_AMOUNT_MISMATCH"),
    ({"channel": "card"}, "reference", "PAYMENT_REFERENCE_REQUIRED"),
])
async def test_a_refused_payment_writes_only_its_audit_entry(
        client: GraphQLClient, world: World, committed_engine: AsyncEngine, changes: dict[str, Any], field: str,
        code: str) -> None:
    token = await client.login(world.cashier.username, world.cashier.password)
    before = await row_counts(committed_engine)

    refused = (await data(client, token, TAKE, {"input": {**payment_input(world.east), **changes}}))["takePayment"]

    assert refused["payment"] is None and refused["account"] is None
    assert [(e["field"], e["code"]) for e in refused["errors"]] == [(field, code)]
    assert refused["errors"][0]["message"] and refused["errors"][0]["messageEn"]
    after = await row_counts(committed_engine)
    assert {t: n - before[t] for t, n in after.items() if n != before[t]} == {"audit_log": 1}
    assert (await audit_entries(committed_engine, "takePayment"))[-1] == ("counter", False)


async def test_own_payment_is_reversed_the_same_day_and_someone_elses_is_not(
        client: GraphQLClient, world: World, committed_engine: AsyncEngine) -> None:
    own = await client.login(world.cashier.username, world.cashier.password)
    other = await client.login(world.colleague.username, world.colleague.password)
    payment = (await take(client, own, world.east, "50.00"))["payment"]

    foreign = (await data(client, other, REVERSE, {"id": payment["id"], "reason": "收错"}))["reversePayment"]
    assert [(e["field"], e["code"]) for e in foreign["errors"]] == [("id", "REVERSAL_NOT_ALLOWED")]
    done = (await data(client, own, REVERSE, {"id": payment["id"], "reason": "收错"}))["reversePayment"]
    assert done == {"payment": {"id": payment["id"], "status": "reversed", "reversedBy": world.cashier.user.full_name,
                                "reversalReason": "收错"}, "errors": []}
    assert (await audit_entries(committed_engine, "reversePayment"))[-2:] == [("counter", False), ("counter", True)]


async def test_the_largest_counter_payment_comes_from_the_payments_settings(
        database_url: str, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUIWU_PAYMENTS_MAX_COUNTER_PAYMENT_FEN", "1000")
    async with graphql_client(database_url) as small:
        token = await small.login(world.cashier.username, world.cashier.password)
        above = await take(small, token, world.east, "10.01")
        at_most = await take(small, token, world.east, "10.00")
    assert [(e["field"], e["code"]) for e in above["errors"]] == [("amount", "PAYMENT_ABOVE_MAXIMUM")]
    assert at_most["errors"] == []


# --------------------------------------------------------------------------- the list and its export


async def test_the_payments_list_filters_and_keeps_to_the_callers_areas(client: GraphQLClient, world: World) -> None:
    cashier = await client.login(world.cashier.username, world.cashier.password)
    colleague = await client.login(world.colleague.username, world.colleague.password)
    west = await client.login(world.west_cashier.username, world.west_cashier.password)
    card = (await take(client, colleague, world.east, "20.00", channel="card", reference="POS-77"))["payment"]
    transfer = (await take(client, cashier, world.east, "30.00", channel="transfer", reference="TR-9"))["payment"]
    west_payment = (await take(client, west, world.west, "40.00"))["payment"]

    by_card = nodes(await data(client, cashier, PAYMENTS, {"filter": {"channel": "card"}, "first": 100}))
    assert card["id"] in {p["id"] for p in by_card} and all(p["channel"] == "card" for p in by_card)
    by_colleague = nodes(await data(client, cashier, PAYMENTS, {
        "filter": {"operatorId": gid("StaffUser", world.colleague.user)}, "first": 100}))
    assert {p["operatorName"] for p in by_colleague} == {world.colleague.user.full_name}
    unprinted = await data(client, cashier, PAYMENTS, {"filter": {"printed": False, "search": "王芳"}, "first": 100})
    assert {card["id"], transfer["id"]} <= {p["id"] for p in nodes(unprinted)}
    printed = await data(client, cashier, PAYMENTS, {"filter": {"printed": True}})
    assert printed["payments"]["totalCount"] == 0

    east_seen = await data(client, cashier, PAYMENTS, {"first": 1000})
    assert west_payment["id"] not in {p["id"] for p in nodes(east_seen)}
    assert east_seen["payments"]["totalCount"] == len(nodes(east_seen))
    west_seen = nodes(await data(client, west, PAYMENTS, {"first": 1000}))
    assert [p["id"] for p in west_seen] == [west_payment["id"]]
    foreign_area = await data(client, west, PAYMENTS, {"filter": {"areaId": gid("Area", world.tree.east)}})
    assert foreign_area["payments"] == {"totalCount": 0, "edges": []}
    node = await client.execute("query($id: ID!) { node(id: $id) { ... on Payment { id } } }", {"id": card["id"]},
                                token=west)
    assert [e["extensions"]["code"] for e in node["errors"]] == ["NOT_FOUND"]
    refused = await client.execute(PAYMENTS, token=colleague)
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"]


async def test_the_payments_export_downloads_the_listed_rows(
        client: GraphQLClient, world: World, committed_engine: AsyncEngine) -> None:
    token = await client.login(world.cashier.username, world.cashier.password)
    payment = (await take(client, token, world.east, "66.60", channel="transfer", reference="TR-EXPORT"))["payment"]
    today = str(business_day(utcnow(), SHANGHAI))
    filter_ = {"from": today, "to": today, "channel": "transfer", "search": "王芳"}
    listed = await data(client, token, PAYMENTS, {"filter": filter_, "first": 1000})

    url = (await data(client, token, EXPORT_URL, {"filter": filter_}))["paymentsExportUrl"]
    response = await client.http.get(url)

    assert response.status_code == 200, response.text
    sheet = load_workbook(io.BytesIO(response.content), read_only=True).active
    rows = [list(row) for row in sheet.iter_rows(min_row=3, values_only=True)]  # type: ignore[union-attr]
    assert len(rows) == listed["payments"]["totalCount"] >= 1
    mine = [r for r in rows if r[0] == payment["serialNo"]]
    assert len(mine) == 1
    assert (mine[0][2], mine[0][3], mine[0][4], mine[0][7], mine[0][10], mine[0][11], mine[0][12]) == (
        payment["accountNo"], "王芳", "翠湖小区", "1-1-0101", "转账", 66.6, "TR-EXPORT")
    assert (await audit_entries(committed_engine, "exportPayments"))[-1] == ("payments", True)
    assert (await client.http.get(url)).status_code == 401  # a link works once


# --------------------------------------------------------------------------- close


async def test_closing_with_a_final_reading_refunds_exactly_and_the_ledger_sums_to_zero(
        client: GraphQLClient, world: World, committed_engine: AsyncEngine) -> None:
    token = await client.login(world.cashier.username, world.cashier.password)
    await take(client, token, world.closing, "100.00")

    closed = (await data(client, token, CLOSE, {"input": {
        "accountId": gid("Account", world.closing), "finalReading": "6.5", "idempotencyKey": key()}}))["closeAccount"]

    assert closed["errors"] == []
    assert closed["finalCharge"] == "13.00" and closed["collection"] is None
    assert closed["refund"] == {"kind": "refund", "channel": "cash", "amount": "87.00"}
    assert closed["account"]["status"] == "closed" and closed["account"]["balance"] == "0.00"
    assert await ledger_sum(committed_engine, world.closing) == 0
    async with committed_engine.connect() as connection:
        newest = (await connection.execute(text(
            "SELECT r.quality, r.total_m3, r.source FROM readings r JOIN meter_assignments a ON a.meter_id = r.meter_id "
            "WHERE a.household_id = :h ORDER BY r.read_at DESC LIMIT 1"), {"h": world.closing.household_id})).one()
    assert (newest.quality, newest.total_m3, newest.source) == (
        "manual", Decimal("6.5"), f"manual:{world.cashier.user.full_name}")
    assert (await audit_entries(committed_engine, "closeAccount"))[-1] == ("counter", True)
    again = (await data(client, token, CLOSE, {"input": {"accountId": gid("Account", world.closing),
                                                         "idempotencyKey": key()}}))["closeAccount"]
    assert [e["code"] for e in again["errors"]] == ["ACCOUNT_CLOSED"]


# --------------------------------------------------------------------------- the cashier's day


async def test_the_day_is_handed_over_locked_and_not_handed_over_twice(
        client: GraphQLClient, world: World, committed_engine: AsyncEngine) -> None:
    token = await client.login(world.day_cashier.username, world.day_cashier.password)
    await take(client, token, world.east, "10.00")
    card = (await take(client, token, world.east, "25.50", channel="card", reference="POS-DAY"))["payment"]
    wrong = (await take(client, token, world.east, "3.00"))["payment"]
    assert (await data(client, token, REVERSE, {"id": wrong["id"], "reason": "收错"}))["reversePayment"]["errors"] == []
    today = str(business_day(utcnow(), SHANGHAI))

    day = (await data(client, token, DAY, {}))["cashierDay"]
    assert (day["day"], day["operatorName"], day["handedOver"]) == (today, world.day_cashier.user.full_name, False)
    assert day["channels"] == [
        {"channel": "cash", "collected": "13.00", "refunded": "0.00", "reversed": "3.00", "net": "10.00", "count": 2},
        {"channel": "card", "collected": "25.50", "refunded": "0.00", "reversed": "0.00", "net": "25.50", "count": 1}]
    assert day["totals"]["net"] == day["ledger"] == "35.50" and day["balanced"] is True
    others = await client.execute(DAY, {"operatorId": gid("StaffUser", world.cashier.user)}, token=token)
    assert [e["extensions"]["code"] for e in others["errors"]] == ["FORBIDDEN"]

    handed = (await data(client, token, HAND_OVER, {"day": today}))["handOverDay"]
    assert handed == {"cashierDay": {"handedOver": True, "totals": {"net": "35.50"}}, "errors": []}
    locked = (await data(client, token, REVERSE, {"id": card["id"], "reason": "晚了"}))["reversePayment"]
    assert [(e["field"], e["code"]) for e in locked["errors"]] == [("id", "CASHIER_DAY_LOCKED")]
    again = (await data(client, token, HAND_OVER, {"day": today}))["handOverDay"]
    assert [(e["field"], e["code"]) for e in again["errors"]] == [("day", "CASHIER_DAY_HANDED_OVER")]
    admin = await client.login(world.admin.username, world.admin.password)
    seen = (await data(client, admin, DAY, {"operatorId": gid("StaffUser", world.day_cashier.user)}))["cashierDay"]
    assert (seen["handedOver"], seen["handedOverBy"]) == (True, world.day_cashier.user.full_name)
    assert (await audit_entries(committed_engine, "handOverDay"))[-2:] == [("counter", True), ("counter", False)]


# --------------------------------------------------------------------------- statements


async def test_the_payments_list_statement_count_does_not_grow_with_the_page(
        client: GraphQLClient, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    for _ in range(6):
        await take(client, token, world.west, "1.00")
    document = "query($first: Int) { payments(first: $first) { edges { node { id roomLabel account { balance } } } } }"
    state = client.http._transport.app.state  # type: ignore[attr-defined]
    for _ in range(2):  # every pool connection the loaders use is opened before counting
        await client.execute(document, {"first": 6}, token=token)
    with counted_statements(monkeypatch, state.engine, state.read_engine) as small:
        two = await data(client, token, document, {"first": 2})
    with counted_statements(monkeypatch, state.engine, state.read_engine) as large:
        six = await data(client, token, document, {"first": 6})

    assert (len(two["payments"]["edges"]), len(six["payments"]["edges"])) == (2, 6)
    work = [[s for s in statements if "current_setting('jit')" not in s and "typeinfo_tree" not in s]
            for statements in (small, large)]
    assert len(work[0]) == len(work[1])


async def test_a_card_account_recharged_at_the_counter_shows_its_pending_card_write(
        client: GraphQLClient, world: World, committed_engine: AsyncEngine) -> None:
    async with session_factory(committed_engine)() as session, session.begin():
        household = await make_household(session, area=world.tree.east_community, name="赵敏")
        assert household.id is not None
        card = await open_account(session, household_id=household.id, mode=BillingMode.prepaid_card,
                                  terms=AccountTerms(tariff_code=world.east.tariff_code), now=utcnow(), by="测试")
    token = await client.login(world.cashier.username, world.cashier.password)
    document = """
    mutation($input: TakePaymentInput!) {
      takePayment(input: $input) {
        payment { serialNo }
        account { balance pendingWrites { target state amount paymentSerialNo settledAt purchaseCount sentAt heldReason } }
        errors { code } } }"""

    taken = (await data(client, token, document, {"input": payment_input(card, "50.00")}))["takePayment"]

    assert taken["errors"] == []
    assert taken["account"] == {"balance": "50.00", "pendingWrites": [
        {"target": "card", "state": "pending", "amount": "50.00", "paymentSerialNo": taken["payment"]["serialNo"],
         "settledAt": None, "purchaseCount": None, "sentAt": None, "heldReason": None}]}
