"""Bill queries (账单查询): the list's filters (period, status with overdue, area subtree,
name and 缴费号, account) kept to the caller's scope, the late fee and what is owed read
on today's date, and through GraphQL the bill with its lines, readings and allocations
(statements not growing with the page), permission and scope refusals, and the Excel
export read back."""

from __future__ import annotations

import io
from typing import Any

import pytest
from openpyxl import load_workbook
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.billing.bill_queries import BillFilter, BillPage, BillQueryStatus, bill_owed, bill_page
from backend.errors import DomainError, ErrorCode
from backend.graphql.relay import encode_id
from tests.billing import bill_rows
from tests.billing.bill_rows import BillTown
from tests.graphql.client import GraphQLClient
from tests.graphql.test_dataloaders import counted_statements

# The module's fixtures: a town with bills, an API client, the staff's logins.
town, client, tokens = bill_rows.town, bill_rows.client, bill_rows.tokens

BILLS = """
query($filter: BillFilterInput, $first: Int, $after: String) {
  bills(filter: $filter, first: $first, after: $after) {
    totalCount
    edges { node { id accountNo householdName roomLabel building period status overdue amount principalPaid
      principalOwed lateFee lateFeeOwed amountOwed dueDate volumeM3 tariffCode reissueOfId voidReason
      startReadings { meterId totalM3 } endReadings { meterId totalM3 }
      lines { lineNo component componentName tier volumeM3 price amount }
      allocations { entryId lateFee principal undoesId }
      account { id } household { name } } }
  }
}"""
BILL = "query($id: ID!) { bill(id: $id) { id amountOwed } }"
EXPORT_URL = "query($filter: BillFilterInput) { billsExportUrl(filter: $filter) }"


def gid(type_name: str, row: Any) -> str:
    assert row.id is not None
    return encode_id(type_name, row.id)


async def page(sessions: async_sessionmaker[AsyncSession], town: BillTown, limit: int = 100,
               **filters: Any) -> BillPage:
    async with sessions() as session:
        return await bill_page(session, scope_patterns=town.reader.principal.scope_patterns(),
                               bill_filter=BillFilter(**filters), today=town.today, offset=0, limit=limit)


def names(found: BillPage) -> list[tuple[str, str]]:
    return [(row.household_name, row.bill.status.value) for row in found.rows]


# --------------------------------------------------------------------------- the service


async def test_a_period_lists_the_scope_s_bills_by_account_number_with_the_count(
        committed_sessions: async_sessionmaker[AsyncSession], town: BillTown) -> None:
    found = await page(committed_sessions, town, period=town.period)

    # The west's 李娜 is outside the reader's scope; a re-issue comes before the bill it replaced.
    assert names(found) == [("王芳", "open"), ("张伟", "open"), ("李强", "open"), ("李强", "voided")]
    assert found.total == 4
    first_two = await page(committed_sessions, town, limit=2, period=town.period)
    assert (len(first_two.rows), first_two.total) == (2, 4)
    wang = found.rows[0]
    assert (wang.community, wang.building, wang.unit, wang.room_label) == ("翠湖小区", "1号楼", "1单元", "1-1-0101")


@pytest.mark.parametrize(("status", "expected"), [
    (BillQueryStatus.open, [("王芳", "open"), ("张伟", "open"), ("李强", "open")]),
    (BillQueryStatus.paid, [("王芳", "paid")]),
    (BillQueryStatus.voided, [("李强", "voided")]),
    # Open and past due: 张伟's is due in 5 days.
    (BillQueryStatus.overdue, [("王芳", "open"), ("李强", "open")]),
])
async def test_the_status_filter_reads_overdue_as_open_and_past_due(
        committed_sessions: async_sessionmaker[AsyncSession], town: BillTown, status: BillQueryStatus,
        expected: list[tuple[str, str]]) -> None:
    assert names(await page(committed_sessions, town, status=status)) == expected


async def test_search_area_subtree_and_account_narrow_the_list(
        committed_sessions: async_sessionmaker[AsyncSession], town: BillTown) -> None:
    wang = town.households["wang"]

    by_name = await page(committed_sessions, town, search="王芳")
    by_number = await page(committed_sessions, town, search=wang.account_no[-4:])
    in_building = await page(committed_sessions, town, area_id=town.building1.id)
    of_account = await page(committed_sessions, town, account_id=town.bills["zhang"].account_id)

    assert [r.bill.id for r in by_name.rows] == [town.bills["wang"].id, town.bills["wang_earlier"].id]
    assert [r.bill.id for r in by_number.rows] == [town.bills["wang"].id, town.bills["wang_earlier"].id]
    assert names(in_building) == [("王芳", "open"), ("张伟", "open"), ("王芳", "paid")]
    assert [r.bill.id for r in of_account.rows] == [town.bills["zhang"].id]


async def test_an_area_outside_the_scope_is_not_found(
        committed_sessions: async_sessionmaker[AsyncSession], town: BillTown) -> None:
    with pytest.raises(DomainError) as refused:
        await page(committed_sessions, town, area_id=town.tree.west_community.id)
    assert (refused.value.code, refused.value.field) == (ErrorCode.NOT_FOUND, "areaId")


async def test_the_late_fee_and_what_is_owed_are_read_on_the_day(town: BillTown) -> None:
    # 王芳: ¥53.75 due 10 days ago: 5375 × 0.0005 × 10 = 26.875 → 27 fen.
    wang = bill_owed(town.bills["wang"], town.today)
    # 张伟: ¥20.00, ¥5.00 paid, not yet due; 李强's voided bill owes nothing.
    zhang = bill_owed(town.bills["zhang"], town.today)
    voided = bill_owed(town.bills["li_voided"], town.today)

    assert (wang.late_fee_fen, wang.principal_owed_fen, wang.amount_owed_fen) == (27, 5375, 5402)
    assert (zhang.late_fee_fen, zhang.principal_owed_fen, zhang.amount_owed_fen) == (0, 1500, 1500)
    assert voided.amount_owed_fen == 0


# --------------------------------------------------------------------------- GraphQL


async def test_a_bill_reads_with_its_lines_readings_allocations_and_money_strings(
        tokens: dict[str, str], client: GraphQLClient, town: BillTown) -> None:
    token = tokens["reader"]

    result = await client.execute(BILLS, {"filter": {"search": "王芳"}}, token=token)

    assert "errors" not in result, result["errors"]
    current, earlier = [edge["node"] for edge in result["data"]["bills"]["edges"]]
    assert {k: current[k] for k in ("period", "status", "overdue", "amount", "principalPaid", "lateFee", "lateFeeOwed",
                                    "amountOwed", "volumeM3", "roomLabel", "building")} == {
        "period": f"{town.period:%Y-%m}", "status": "open", "overdue": True, "amount": "53.75", "principalPaid": "0.00",
        "lateFee": "0.27", "lateFeeOwed": "0.27", "amountOwed": "54.02", "volumeM3": "12.5000", "roomLabel": "1-1-0101",
        "building": "1号楼"}
    assert [(line["componentName"], line["tier"], line["volumeM3"], line["price"], line["amount"])
            for line in current["lines"]] == [
        ("自来水费", 1, "10.0000", "3.0000", "30.00"), ("自来水费", 2, "2.5000", "4.5000", "11.25"),
        ("污水处理费", 1, "12.5000", "1.0000", "12.50")]
    meter = gid("Meter", town.meters["wang"])
    assert current["startReadings"] == [{"meterId": meter, "totalM3": "8"}]
    assert current["endReadings"] == [{"meterId": meter, "totalM3": "20.5"}]
    assert current["allocations"] == [] and current["household"] == {"name": "王芳"}
    assert current["account"] == {"id": encode_id("Account", town.bills["wang"].account_id)}
    assert (earlier["status"], earlier["amountOwed"], earlier["overdue"]) == ("paid", "0.00", False)
    assert [(a["lateFee"], a["principal"], a["undoesId"]) for a in earlier["allocations"]] == [("0.00", "32.00", None)]


async def test_a_re_issue_names_the_bill_it_replaced(tokens: dict[str, str], client: GraphQLClient, town: BillTown) -> None:
    token = tokens["reader"]

    result = await client.execute(BILLS, {"filter": {"search": "李强", "period": f"{town.period:%Y-%m}"}}, token=token)

    reissue, voided = [edge["node"] for edge in result["data"]["bills"]["edges"]]
    assert reissue["reissueOfId"] == voided["id"] == gid("Bill", town.bills["li_voided"])
    assert (voided["status"], voided["voidReason"], voided["amountOwed"]) == ("voided", "读数错误", "0.00")
    assert (reissue["lateFee"], reissue["amountOwed"]) == ("0.05", "36.05")  # 3600 × 0.0005 × 3 = 5.4


async def test_a_household_lists_its_bills_newest_first_and_by_status(
        client: GraphQLClient, tokens: dict[str, str], town: BillTown) -> None:
    document = """query($id: ID!) { household(id: $id) {
        all: bills { period status amountOwed } overdue: bills(status: overdue) { period amount } } }"""

    result = await client.execute(document, {"id": gid("Household", town.households["wang"])}, token=tokens["reader"])

    assert "errors" not in result, result["errors"]
    household = result["data"]["household"]
    assert household["all"] == [{"period": f"{town.period:%Y-%m}", "status": "open", "amountOwed": "54.02"},
                                {"period": f"{town.earlier:%Y-%m}", "status": "paid", "amountOwed": "0.00"}]
    assert household["overdue"] == [{"period": f"{town.period:%Y-%m}", "amount": "53.75"}]


async def test_the_bills_list_statement_count_does_not_grow_with_the_page(
        tokens: dict[str, str], client: GraphQLClient, town: BillTown, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tokens["reader"]
    state = client.http._transport.app.state  # type: ignore[attr-defined]
    for _ in range(2):  # every pool connection the loaders use is opened before counting
        await client.execute(BILLS, {"first": 5}, token=token)
    with counted_statements(monkeypatch, state.engine, state.read_engine) as small:
        one = await client.execute(BILLS, {"first": 1}, token=token)
    with counted_statements(monkeypatch, state.engine, state.read_engine) as large:
        five = await client.execute(BILLS, {"first": 5}, token=token)

    assert (len(one["data"]["bills"]["edges"]), len(five["data"]["bills"]["edges"])) == (1, 5)
    work = [[s for s in statements if "current_setting('jit')" not in s and "typeinfo_tree" not in s]
            for statements in (small, large)]
    assert len(work[0]) == len(work[1])


async def test_without_bills_read_the_list_is_forbidden(tokens: dict[str, str], client: GraphQLClient, town: BillTown) -> None:
    token = tokens["outsider"]

    for document, variables in ((BILLS, {}), (BILL, {"id": gid("Bill", town.bills["wang"])}), (EXPORT_URL, {})):
        result = await client.execute(document, variables, token=token)
        assert [e["extensions"]["code"] for e in result["errors"]] == ["FORBIDDEN"]


async def test_a_bill_outside_the_scope_is_not_found(tokens: dict[str, str], client: GraphQLClient, town: BillTown) -> None:
    token = tokens["reader"]

    outside = await client.execute(BILL, {"id": gid("Bill", town.bills["na"])}, token=token)
    inside = await client.execute(BILL, {"id": gid("Bill", town.bills["wang"])}, token=token)
    node = await client.execute("query($id: ID!) { node(id: $id) { ... on Bill { id } } }",
                                {"id": gid("Bill", town.bills["na"])}, token=token)

    assert [e["extensions"]["code"] for e in outside["errors"]] == ["NOT_FOUND"]
    assert inside["data"]["bill"] == {"id": gid("Bill", town.bills["wang"]), "amountOwed": "54.02"}
    assert [e["extensions"]["code"] for e in node["errors"]] == ["NOT_FOUND"]


async def test_the_export_downloads_the_filtered_bills_in_yuan_and_is_audited(
        tokens: dict[str, str], client: GraphQLClient, town: BillTown, committed_engine: AsyncEngine) -> None:
    token = tokens["reader"]
    filter_ = {"period": f"{town.period:%Y-%m}", "status": "overdue"}

    url = (await client.execute(EXPORT_URL, {"filter": filter_}, token=token))["data"]["billsExportUrl"]
    response = await client.http.get(url)

    assert response.status_code == 200, response.text
    sheet = load_workbook(io.BytesIO(response.content), read_only=True).active
    header = next(sheet.iter_rows(max_row=1, values_only=True))  # type: ignore[union-attr]
    rows = [list(row) for row in sheet.iter_rows(min_row=3, values_only=True)]  # type: ignore[union-attr]
    assert header[:3] == ("账期", "缴费号", "用户姓名")
    assert [(r[0], r[1], r[2], r[6], r[8], r[10], r[11], r[12], r[13], r[14], r[15], r[16]) for r in rows] == [
        (f"{town.period:%Y-%m}", town.households["wang"].account_no, "王芳", "1-1-0101", "未缴清", "8", "20.5", 12.5,
         53.75, 0, 0.27, 54.02),
        (f"{town.period:%Y-%m}", town.households["li"].account_no, "李强", "2-0201", "未缴清", "0", "9", 9, 36,
         0, 0.05, 36.05),
    ]
    async with committed_engine.connect() as connection:
        logged = (await connection.execute(text(
            "SELECT module, success FROM audit_log WHERE action = 'exportBills' ORDER BY id DESC LIMIT 1"))).one()
    assert tuple(logged) == ("bills", True)
    assert (await client.http.get(url)).status_code == 401  # a link works once


async def test_a_bad_filter_is_refused_when_the_link_is_asked_for(tokens: dict[str, str], client: GraphQLClient, town: BillTown) -> None:
    token = tokens["reader"]

    result = await client.execute(EXPORT_URL, {"filter": {"period": "2026-13"}}, token=token)

    assert [(e["extensions"]["code"], e["extensions"].get("field")) for e in result["errors"]] == [
        ("INVALID", "period")]
