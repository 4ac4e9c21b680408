"""GraphQL for receipts: a layout saved (a bad one refused with the part at fault), forms
issued to a cashier, a receipt printed on a numbered pre-printed layout and downloaded
from its URL, a used form refused, a spoiled one voided, the stock report, a batch of
one page per payment, and the audit entries under the declared operations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.archives.models import Area
from backend.db import session_factory
from backend.graphql.relay import encode_id
from backend.payments.counter import Operator, take_payment
from backend.payments.models import PaymentChannel, PaymentPurpose
from tests.billing.factories import at, served_household, tariff
from tests.factories import Staff, make_staff
from tests.graphql.client import GraphQLClient, graphql_client
from tests.payments.receipt_pdf import pages, run_at, text_runs

SAVE = """
mutation($input: SaveReceiptLayoutInput!) {
  saveReceiptLayout(input: $input) { layout { id name preprinted numbered widthMm heightMm paper }
    errors { field code } }
}"""
LAYOUTS = "query { receiptLayouts { name isDefault numbered } }"
ISSUE = """
mutation($input: IssueReceiptFormsInput!) {
  issueReceiptForms(input: $input) { batch { firstFormNo lastFormNo count } errors { field code } }
}"""
PRINT = """
mutation($id: ID!, $layout: ID, $form: String) {
  printReceipt(paymentId: $id, layoutId: $layout, formNo: $form) { url prints { formNo reprint } errors { field code } }
}"""
PRINT_MANY = """
mutation($ids: [ID!]!, $layout: ID) {
  printReceipts(paymentIds: $ids, layoutId: $layout) { url prints { paymentId formNo reprint } errors { field code } }
}"""
VOID = "mutation($no: String!) { voidReceiptForm(formNo: $no, reason: \"卡纸\") { formNo errors { field code } } }"
STOCK = "query($id: ID) { receiptFormStock(operatorId: $id) { operatorName issued used voided left nextFormNo } }"

NUMBERED = {
    "paper": "241x93", "preprinted": True, "numbered": True,
    "fields": [
        {"key": "household_name", "x": 150, "y": 30, "font_size": 12},
        {"key": "amount_upper", "x": 52.5, "y": 58.5, "font_size": 12},
        {"key": "amount", "x": 185, "y": 58.5},
        {"key": "form_no", "x": 200, "y": 12},
    ],
}


@dataclass
class World:
    cashier: Staff
    manager: Staff
    payments: list[str]  # global ids


@pytest.fixture(scope="module")
async def world(committed_engine: AsyncEngine) -> World:
    async with session_factory(committed_engine)() as session, session.begin():
        served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
        area = await session.get(Area, served.household.area_id)
        assert area is not None
        cashier = await make_staff(session, permissions={"counter:collect", "receipts:print"}, areas=[area])
        manager = await make_staff(session, permissions={"receipts:manage", "receipts:print"}, areas=[area])
        assert cashier.user.id is not None
        operator = Operator(cashier.user.id, cashier.user.full_name)
        ids = []
        for fen in (12345, 1000, 5):
            payment = await take_payment(session, account_id=served.account_id, channel=PaymentChannel.cash,
                                         purpose=PaymentPurpose.recharge, amount_fen=fen, confirm_amount_fen=fen,
                                         idempotency_key=f"gql-receipt:{fen}", operator=operator, now=at(2026, 11, 20, 9))
            assert payment.id is not None
            ids.append(encode_id("Payment", payment.id))
    return World(cashier, manager, ids)


@pytest.fixture(scope="module")
async def client(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GraphQLClient]:
    data_dir: Path = tmp_path_factory.mktemp("receipts")
    async with graphql_client(database_url, data_dir=data_dir) as api:
        yield api


async def as_(client: GraphQLClient, staff: Staff) -> str:
    return await client.login(staff.username, staff.password)


async def download(client: GraphQLClient, url: str) -> bytes:
    response = await client.http.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    return response.content


async def test_the_receipt_desk_walk(client: GraphQLClient, world: World, committed_engine: AsyncEngine) -> None:
    manager, cashier = await as_(client, world.manager), await as_(client, world.cashier)

    bad = await client.execute(SAVE, {"input": {"name": "坏格式", "spec": {"paper": "241x93", "fields": [
        {"key": "phone", "x": 1, "y": 10}]}}}, token=manager)
    saved = await client.execute(SAVE, {"input": {"name": "编号预印收据", "spec": NUMBERED}}, token=manager)
    layouts = await client.execute(LAYOUTS, token=cashier)
    issued = await client.execute(ISSUE, {"input": {"operatorId": encode_id("StaffUser", world.cashier.user.id or 0),
                                                    "prefix": "N", "firstNo": 1, "lastNo": 5, "digits": 6}},
                                  token=manager)
    layout_id = saved["data"]["saveReceiptLayout"]["layout"]["id"]
    first = await client.execute(PRINT, {"id": world.payments[0], "layout": layout_id}, token=cashier)
    used = await client.execute(PRINT, {"id": world.payments[0], "layout": layout_id, "form": "N000001"}, token=cashier)
    voided = await client.execute(VOID, {"no": "N000002"}, token=cashier)
    on_void = await client.execute(PRINT, {"id": world.payments[0], "layout": layout_id, "form": "N000002"},
                                   token=cashier)
    batch = await client.execute(PRINT_MANY, {"ids": world.payments, "layout": layout_id}, token=cashier)
    stock = await client.execute(STOCK, token=cashier)
    others = await client.execute(STOCK, {"id": encode_id("StaffUser", world.manager.user.id or 0)}, token=cashier)

    assert bad["data"]["saveReceiptLayout"] == {"layout": None, "errors": [
        {"field": "fields[0].key", "code": "RECEIPT_LAYOUT_INVALID"}]}
    assert saved["data"]["saveReceiptLayout"]["layout"] | {"id": None} == {
        "id": None, "name": "编号预印收据", "preprinted": True, "numbered": True, "widthMm": 241.0, "heightMm": 93.0,
        "paper": "241x93"}
    assert layouts["data"]["receiptLayouts"] == [
        {"name": "标准收据 (241×93 白纸)", "isDefault": True, "numbered": False},
        {"name": "编号预印收据", "isDefault": False, "numbered": True}]
    assert issued["data"]["issueReceiptForms"] == {
        "batch": {"firstFormNo": "N000001", "lastFormNo": "N000005", "count": 5}, "errors": []}
    assert first["data"]["printReceipt"]["prints"] == [{"formNo": "N000001", "reprint": False}]
    pdf = await download(client, first["data"]["printReceipt"]["url"])
    runs = text_runs(pdf)
    assert [run_at(runs, x, y).text for x, y in ((150, 30), (52.5, 58.5), (185, 58.5), (200, 12))] == [  # type: ignore[union-attr]
        "王芳", "壹佰贰拾叁元肆角伍分", "¥123.45", "N000001"]
    assert used["data"]["printReceipt"] == {"url": None, "prints": [], "errors": [
        {"field": "formNo", "code": "RECEIPT_FORM_USED"}]}
    assert voided["data"]["voidReceiptForm"] == {"formNo": "N000002", "errors": []}
    assert on_void["data"]["printReceipt"]["errors"] == [{"field": "formNo", "code": "RECEIPT_FORM_VOID"}]
    assert [(p["formNo"], p["reprint"]) for p in batch["data"]["printReceipts"]["prints"]] == [
        ("N000003", True), ("N000004", False), ("N000005", False)]
    assert pages(await download(client, batch["data"]["printReceipts"]["url"])) == 3
    assert stock["data"]["receiptFormStock"] == [{"operatorName": world.cashier.user.full_name, "issued": 5,
                                                  "used": 4, "voided": 1, "left": 0, "nextFormNo": None}]
    assert [error["extensions"]["code"] for error in others["errors"]] == ["FORBIDDEN"]
    async with committed_engine.connect() as connection:
        log: list[Any] = list((await connection.execute(text(
            "SELECT action, success FROM audit_log WHERE action IN ('saveReceiptLayout', 'issueReceiptForms', "
            "'printReceipt', 'printReceipts', 'voidReceiptForm') ORDER BY id"))).all())
        printed = (await connection.execute(text(
            "SELECT receipts_printed FROM payments ORDER BY id"))).scalars().all()
    assert [tuple(row) for row in log] == [
        ("saveReceiptLayout", False), ("saveReceiptLayout", True), ("issueReceiptForms", True), ("printReceipt", True),
        ("printReceipt", False), ("voidReceiptForm", True), ("printReceipt", False), ("printReceipts", True)]
    assert list(printed) == [2, 1, 1]
