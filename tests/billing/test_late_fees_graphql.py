"""Late fees over GraphQL: the rules listed and set (bills:configure), a waiver done by a
holder of bills:waive and refused (FORBIDDEN, only the refusal audited) for one without,
outside the scope NOT_FOUND; and the counter's takePayment paying named bills, a voided
one refused in the payload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.billing.bills_models import Bill
from backend.clock import utcnow
from backend.db import session_factory
from backend.graphql.relay import encode_id
from tests.billing.bill_factory import make_bill, postpaid_account, void
from tests.billing.factories import SHANGHAI, Served
from tests.factories import AreaTree, Staff, make_area_tree, make_staff
from tests.graphql.client import GraphQLClient, graphql_client
from tests.graphql.test_permission_walk import row_counts

RULES = "query { lateFeeRules { customerType enabled dailyRate graceDays capPercent isDefault updatedBy } }"
SET_RULE = """
mutation($input: LateFeeRuleInput!) {
  setLateFeeRule(input: $input) { rule { customerType enabled dailyRate graceDays capPercent isDefault }
    errors { field code } }
}"""
WAIVE = """
mutation($billId: ID!, $reason: String!) {
  waiveLateFee(billId: $billId, reason: $reason) {
    waiver { billId waived writtenOff waivedBy reason billPaid } errors { field code message messageEn } }
}"""
TAKE = """
mutation($input: TakePaymentInput!) {
  takePayment(input: $input) { payment { amount } account { balance } errors { field code } }
}"""


@dataclass
class World:
    tree: AreaTree
    supervisor: Staff  # east: bills:read, bills:configure, bills:waive
    cashier: Staff  # east: counter:collect only
    west_supervisor: Staff  # west: bills:waive
    served: Served  # east, postpaid, with two bills
    late: Bill  # ¥100.00, 20 days overdue today
    voided: Bill


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    today = utcnow().astimezone(SHANGHAI).date()
    async with session_factory(committed_engine)() as session, session.begin():
        tree = await make_area_tree(session)
        supervisor = await make_staff(session, permissions={"bills:read", "bills:configure", "bills:waive"},
                                      areas=[tree.east])
        cashier = await make_staff(session, permissions={"counter:collect"}, areas=[tree.east])
        west_supervisor = await make_staff(session, permissions={"bills:waive"}, areas=[tree.west])
        served = await postpaid_account(session, opened_at=utcnow() - timedelta(days=120), area=tree.east_community)
        late = await make_bill(session, served, period=(today - timedelta(days=80)).replace(day=1), amount_fen=10000,
                               due_date=today - timedelta(days=20))
        voided = await make_bill(session, served, period=(today - timedelta(days=40)).replace(day=1),
                                 amount_fen=5000, due_date=today + timedelta(days=5))
        await void(session, voided)
    return World(tree, supervisor, cashier, west_supervisor, served, late, voided)


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(database_url) as api:
        yield api


async def audit_entries(engine: AsyncEngine, action: str) -> list[tuple[str, bool]]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT module, success FROM audit_log WHERE action = :a ORDER BY id"),
                                        {"a": action})
        return [(row.module, row.success) for row in rows]


async def data(client: GraphQLClient, token: str, document: str, variables: dict[str, Any] | None = None) -> Any:
    result = await client.execute(document, variables, token=token)
    assert "errors" not in result, result["errors"]
    return result["data"]


def bill_id(bill: Bill) -> str:
    assert bill.id is not None
    return encode_id("Bill", bill.id)


async def test_the_rules_are_listed_with_defaults_and_set_by_a_holder_of_bills_configure(
        client: GraphQLClient, world: World, committed_engine: AsyncEngine) -> None:
    token = await client.login(world.supervisor.username, world.supervisor.password)
    rules = (await data(client, token, RULES))["lateFeeRules"]
    assert [r["customerType"] for r in rules] == ["residential", "non_residential", "special"]
    assert rules[2] == {"customerType": "special", "enabled": True, "dailyRate": "0.0005", "graceDays": 15,
                        "capPercent": 100, "isDefault": True, "updatedBy": None}

    rule = {"customerType": "special", "enabled": True, "dailyRate": "0.001", "graceDays": 10, "capPercent": 50}
    done = (await data(client, token, SET_RULE, {"input": rule}))["setLateFeeRule"]
    refused = (await data(client, token, SET_RULE, {"input": {**rule, "dailyRate": "0.02"}}))["setLateFeeRule"]

    assert done == {"rule": {**rule, "isDefault": False}, "errors": []}
    assert refused == {"rule": None, "errors": [{"field": "dailyRate", "code": "INVALID"}]}
    assert (await audit_entries(committed_engine, "setLateFeeRule"))[-2:] == [("bills", True), ("bills", False)]


async def test_a_waiver_needs_bills_waive_and_the_bill_in_scope_and_is_audited(
        client: GraphQLClient, world: World, committed_engine: AsyncEngine) -> None:
    variables = {"billId": bill_id(world.late), "reason": "困难户减免"}
    # Without the permission: FORBIDDEN, and nothing written but the refusal's audit row.
    cashier = await client.login(world.cashier.username, world.cashier.password)
    before = await row_counts(committed_engine)
    forbidden = await client.execute(WAIVE, variables, token=cashier)
    after = await row_counts(committed_engine)
    assert [error["extensions"]["code"] for error in forbidden["errors"]] == ["FORBIDDEN"]
    assert {t: after[t] - before[t] for t in after if after[t] != before[t]} == {"audit_log": 1}
    # With it, but the bill outside the caller's areas: NOT_FOUND.
    west = await client.login(world.west_supervisor.username, world.west_supervisor.password)
    outside = (await data(client, west, WAIVE, variables))["waiveLateFee"]
    assert [(e["field"], e["code"]) for e in outside["errors"]] == [("billId", "NOT_FOUND")]

    supervisor = await client.login(world.supervisor.username, world.supervisor.password)
    done = (await data(client, supervisor, WAIVE, variables))["waiveLateFee"]
    voided = (await data(client, supervisor, WAIVE, {**variables, "billId": bill_id(world.voided)}))["waiveLateFee"]

    # ¥100.00 × 0.5‰ × 20 days, none of it posted yet.
    assert done["errors"] == [] and done["waiver"] == {
        "billId": bill_id(world.late), "waived": "1.00", "writtenOff": "0.00",
        "waivedBy": world.supervisor.user.full_name, "reason": "困难户减免", "billPaid": False}
    assert [(e["field"], e["code"]) for e in voided["errors"]] == [("billId", "BILL_VOIDED")]
    assert (await audit_entries(committed_engine, "waiveLateFee"))[-4:] == [
        ("bills", False), ("bills", False), ("bills", True), ("bills", False)]


async def test_take_payment_pays_named_bills_and_refuses_a_voided_one_in_its_payload(
        client: GraphQLClient, world: World, committed_engine: AsyncEngine) -> None:
    token = await client.login(world.cashier.username, world.cashier.password)
    account = encode_id("Account", world.served.account_id)

    def payment(key: str, bills: list[str]) -> dict[str, Any]:
        return {"input": {"accountId": account, "channel": "cash", "purpose": "bills", "amount": "30.00",
                          "confirmAmount": "30.00", "idempotencyKey": key, "billIds": bills}}

    refused = (await data(client, token, TAKE, payment("gql-voided", [bill_id(world.voided)])))["takePayment"]
    paid = (await data(client, token, TAKE, payment("gql-named", [bill_id(world.late)])))["takePayment"]

    assert refused == {"payment": None, "account": None, "errors": [{"field": "billIds", "code": "BILL_VOIDED"}]}
    assert paid["errors"] == [] and paid["payment"] == {"amount": "30.00"}
    assert world.late.id is not None
    async with committed_engine.connect() as connection:
        row = (await connection.execute(text(
            "SELECT principal_paid_fen, late_fee_paid_fen FROM bills WHERE id = :id"), {"id": world.late.id})).one()
    # Whatever fee the waiver test left owed is paid first; the rest goes to the principal.
    assert row.principal_paid_fen + row.late_fee_paid_fen == 3000
