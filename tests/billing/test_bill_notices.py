"""Bill notices (缴费通知单 / 催缴单) for door delivery: per building, two to an A4 page,
with the figures a household needs (readings, lines, amount, due date; for a reminder
each overdue bill's principal and late fee on the print day), read back from the PDF;
the link's permission, scope and arguments refused; the print audited."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.billing.bill_queries import NoticeKind
from backend.billing.notices import HouseholdNotice, NoticeBill, render_notices
from backend.exports.pdf import PdfFont
from backend.graphql.relay import encode_id
from tests.billing import bill_rows
from tests.billing.bill_rows import BillTown
from tests.graphql.client import GraphQLClient
from tests.payments.receipt_pdf import embedded_fonts, pages, text_runs

# The module's fixtures: a town with bills, an API client, the staff's logins.
town, client, tokens = bill_rows.town, bill_rows.client, bill_rows.tokens

NOTICES_URL = """
query($areaId: ID!, $kind: BillNoticeKind!, $period: String) {
  billNoticesUrl(areaId: $areaId, kind: $kind, period: $period)
}"""


async def printed(client: GraphQLClient, token: str, **variables: Any) -> bytes:
    result = await client.execute(NOTICES_URL, variables, token=token)
    assert "errors" not in result, result["errors"]
    response = await client.http.get(result["data"]["billNoticesUrl"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    return response.content


def gid(type_name: str, row: Any) -> str:
    assert row.id is not None
    return encode_id(type_name, row.id)


def words(pdf: bytes, page: int) -> list[str]:
    return [run.text for run in text_runs(pdf, page)]


def yuan(fen: int) -> str:
    return f"{Decimal(fen).scaleb(-2):,.2f}"


async def test_a_community_s_notices_print_each_building_from_a_new_page_with_the_bill_s_figures(
        tokens: dict[str, str], client: GraphQLClient, town: BillTown, committed_engine: AsyncEngine) -> None:
    token = tokens["reader"]

    pdf = await printed(client, token, areaId=gid("Area", town.tree.east_community), kind="notice",
                        period=f"{town.period:%Y-%m}")

    # 1号楼: 王芳 and 张伟 on one page; 2号楼: 李强's re-issue on a page of its own.
    assert pages(pdf) == 2
    first, second = words(pdf, 0), words(pdf, 1)
    half = first.index("翠湖小区 1号楼　第 2/2 户")  # the lower notice starts with its place in the round
    top, bottom = first[:half], first[half:]
    assert "王芳" in top and "张伟" in bottom
    period = f"{town.period.year}年{town.period.month:02d}月"
    due = town.bills["wang"].due_date
    assert {town.households["wang"].account_no, "翠湖小区 1号楼　第 1/2 户", "8.00", "20.50", "12.50", "30.00", "11.25",
            "第2阶梯", "自来水费", "污水处理费", "¥ 53.75", f"缴费截止日期：{due.year}年{due.month:02d}月{due.day:02d}日",
            } <= set(top)
    assert any(period in run for run in top)
    # A notice prints what is owed: 张伟 paid ¥5.00 of ¥20.00.
    assert {"¥ 20.00", "¥ 15.00", "5.00 / 0.00"} <= set(bottom)
    assert {"李强", "翠湖小区 2号楼　第 1/1 户", "¥ 36.00"} <= set(second)
    assert "40.00" not in " ".join(second) and "李娜" not in " ".join(first + second)  # voided; outside the scope
    assert [embedded for name, embedded in embedded_fonts(pdf).items() if "WenQuanYi" in name] == [True]
    async with committed_engine.connect() as connection:
        logged = (await connection.execute(text(
            "SELECT module, success, summary FROM audit_log WHERE action = 'printBillNotices' ORDER BY id DESC LIMIT 1"
        ))).one()
    assert (logged.module, logged.success) == ("bills", True) and "3 笔" in logged.summary


async def test_reminders_list_each_overdue_bill_with_its_late_fee_on_the_print_day(
        tokens: dict[str, str], client: GraphQLClient, town: BillTown) -> None:
    token = tokens["reader"]

    pdf = await printed(client, token, areaId=gid("Area", town.tree.east), kind="reminder")

    # 王芳 (¥53.75, 10 days late: 27 fen) and 李强 (¥36.00, 3 days late: 5 fen); 张伟 is not yet due.
    assert pages(pdf) == 2
    first, second = words(pdf, 0), words(pdf, 1)
    assert {"王芳", "53.75", "10", "0.27", "54.02", "¥ 54.02"} <= set(first)
    assert {"李强", "36.00", "3", "0.05", "36.05", "¥ 36.05"} <= set(second)
    assert "张伟" not in first + second
    assert any("7 日内缴清" in run for run in first)


async def test_nothing_to_deliver_prints_a_page_saying_so(tokens: dict[str, str], client: GraphQLClient, town: BillTown) -> None:
    token = tokens["reader"]

    pdf = await printed(client, token, areaId=gid("Area", town.building1), kind="notice",
                        period=f"{town.earlier:%Y-%m}")  # 王芳's earlier bill is paid

    assert pages(pdf) == 1 and words(pdf, 0) == ["没有需要投递的水费缴费通知单"]


@pytest.mark.parametrize(("who", "variables", "code"), [
    ("outsider", {"kind": "notice", "period": "PERIOD"}, "FORBIDDEN"),
    ("reader", {"kind": "notice", "area": "west", "period": "PERIOD"}, "NOT_FOUND"),
    ("reader", {"kind": "notice"}, "BAD_USER_INPUT"),
    ("reader", {"kind": "notice", "period": "2026-1"}, "INVALID"),
])
async def test_a_notices_link_is_refused_without_permission_scope_or_period(
        tokens: dict[str, str], client: GraphQLClient, town: BillTown, who: str, variables: dict[str, str], code: str) -> None:
    token = tokens[who]
    area = town.tree.west_community if variables.pop("area", "east") == "west" else town.tree.east_community
    if variables.get("period") == "PERIOD":
        variables["period"] = f"{town.period:%Y-%m}"

    result = await client.execute(NOTICES_URL, {"areaId": gid("Area", area), **variables}, token=token)

    assert [e["extensions"]["code"] for e in result["errors"]] == [code]


async def test_a_download_without_bills_read_is_forbidden_and_logged(
        tokens: dict[str, str], client: GraphQLClient, town: BillTown, committed_engine: AsyncEngine) -> None:
    token = tokens["outsider"]
    area = gid("Area", town.tree.east_community)

    response = await client.http.get(f"/bills/notices.pdf?areaId={area}&kind=reminder",
                                     headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 403
    async with committed_engine.connect() as connection:
        logged = (await connection.execute(text(
            "SELECT success FROM audit_log WHERE action = 'printBillNotices' ORDER BY id DESC LIMIT 1"))).scalar_one()
    assert logged is False


def test_a_reminder_too_long_for_half_a_page_takes_a_page_of_its_own() -> None:
    today = date(2026, 12, 7)

    def household(name: str, bills: int) -> HouseholdNotice:
        return HouseholdNotice("1号楼", name, name, "翠湖小区", [NoticeBill(
            period=date(2024 + (m // 12), m % 12 + 1, 1), months=1, due_date=today - timedelta(days=30), volume_m3=Decimal(5),
            amount_fen=2000, principal_paid_fen=0, principal_owed_fen=2000, late_fee_owed_fen=30,
            late_fee_rate=Decimal("0.0005")) for m in range(bills)])

    pdf = render_notices([household("甲", 1), household("乙", 18), household("丙", 1)], kind=NoticeKind.reminder,
                         today=today, font=PdfFont())

    # 甲 on the top half; 乙's 18 periods on a page of their own; 丙 on a new page.
    assert pages(pdf) == 3
    assert ["甲" in words(pdf, n) for n in range(3)] == [True, False, False]
    assert "乙" in words(pdf, 1) and "丙" in words(pdf, 2)
    assert f"¥ {yuan(18 * 2030)}" in words(pdf, 1)
