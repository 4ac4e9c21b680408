"""Billing over plain HTTP: the Excel exports of an account statement and of the bills
list, and the bill notices' PDF.

``GET /exports/accounts/statement.xlsx?accountId=…&from=…&to=…&token=…``: the entries of
``accountStatement`` over the days ``[from, to]`` between an opening and a closing
balance line, as an xlsx drawn by :func:`backend.exports.sheets.write_sheets`. The link
comes from the ``accountStatementExportUrl`` query, signed for the caller and exactly
these parameters (5 minutes); a Bearer token works too. ``accounts:read`` and the scope
are checked again at download time; the download is audited (``exportAccountStatement``).
The file is spooled into the file storage and streamed from it
(``backend.files.http.serve_export``), deleted when the response ends.

``GET /exports/bills.xlsx?<filter>&token=…``: every bill ``bills`` lists for the same
filter (``period`` YYYY-MM, ``status``, ``areaId``, ``search``, ``accountId``, as the
GraphQL filter spells them), one row a bill, money in yuan, the late fee and what is
owed as of the download's day; link from ``billsExportUrl``; ``bills:read``, audited
``exportBills``.

``GET /bills/notices.pdf?areaId=…&kind=notice|reminder[&period=YYYY-MM]&token=…``: the
缴费通知单 or 催缴单 of the area's buildings (``backend.billing.notices``); link from
``billNoticesUrl``; ``bills:read`` and the scope checked again at download, audited
``printBillNotices`` with the number of households.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.routing import Route

from backend.audit.service import record_operation
from backend.auth.principal import Principal
from backend.billing import statements
from backend.billing.bill_queries import BillFilter, BillQueryStatus, BillRow, NoticeKind, bill_owed, bill_page
from backend.billing.bills_models import BillKind, BillStatus
from backend.billing.notices import NoticeWords, household_notices, local_today, render_notices_async
from backend.billing.review import parse_period
from backend.billing.settings import BillingSettings
from backend.clock import parse_day, utcnow
from backend.domain import HttpHost, settings_group_key
from backend.errors import BadUserInput
from backend.exports import excel
from backend.exports.sheets import SheetLayout, write_sheets
from backend.files.http import Exported, ExportRoute, enum_param, export_route, refuse_unknown_params
from backend.files.service import FileStore
from backend.graphql.relay import decode_id

STATEMENT_EXPORT_PATH = "/exports/accounts/statement.xlsx"
BILLS_EXPORT_PATH = "/exports/bills.xlsx"
BILL_NOTICES_PATH = "/bills/notices.pdf"
READ_PERMISSION = "accounts:read"
BILLS_PERMISSION = "bills:read"
PDF_MEDIA_TYPE = "application/pdf"
_PAGE = 5000

_KIND_TITLES = {
    "recharge": "充值", "charge": "扣费", "bill": "账单", "payment": "缴费", "late_fee": "滞纳金",
    "adjustment": "调整", "refund": "退费", "reversal": "冲正", "write_off": "核销",
}
STATEMENT_LAYOUT = SheetLayout(
    "账户流水",
    ("记账时间", "类型", "金额 (元)", "余额 (元)", "摘要", "结算周期", "周期水量 (m³)", "备注", "记账人"),
    ("Posted at", "Kind", "Amount (yuan)", "Balance (yuan)", "Reference", "Cycle", "Cycle volume (m³)", "Note",
     "Posted by"),
    (20, 10, 14, 14, 22, 12, 16, 24, 16),
    number_formats=((2, "0.00"), (3, "0.00"), (6, "0.0000")),
)


def _yuan(fen: int) -> Decimal:
    return Decimal(fen).scaleb(-2)


_BILL_STATUS_TITLES = {BillStatus.open: "未缴清", BillStatus.paid: "已缴清", BillStatus.voided: "已作废"}
_BILL_KIND_TITLES = {BillKind.regular: "正常", BillKind.final: "销户结算"}
BILLS_LAYOUT = SheetLayout(
    "账单",
    ("账期", "缴费号", "用户姓名", "小区", "楼宇", "单元", "房间", "类型", "状态", "水价", "起始读数", "截止读数",
     "用水量 (m³)", "账单金额 (元)", "已缴金额 (元)", "滞纳金 (元)", "欠费合计 (元)", "缴费截止日", "出账时间",
     "缴清时间", "作废时间", "作废原因"),
    ("Period", "Account no.", "Name", "Community", "Building", "Unit", "Room", "Kind", "Status", "Tariff",
     "Start reading", "End reading", "Volume (m³)", "Amount (yuan)", "Paid (yuan)", "Late fee (yuan)",
     "Owed (yuan)", "Due date", "Issued at", "Paid at", "Voided at", "Void reason"),
    (10, 14, 12, 14, 10, 8, 12, 8, 8, 12, 14, 14, 12, 14, 14, 12, 14, 12, 20, 20, 20, 24),
    number_formats=((12, "0.0000"), (13, "0.00"), (14, "0.00"), (15, "0.00"), (16, "0.00")),
)
_BILL_FILTER_PARAMS = frozenset({"period", "status", "areaId", "search", "accountId"})
_NOTICE_PARAMS = frozenset({"areaId", "kind", "period"})


def bill_filter_of_params(params: Mapping[str, str]) -> BillFilter:
    """The bills list's filter of the export link's (and the GraphQL filter's) parameters."""
    refuse_unknown_params(params, _BILL_FILTER_PARAMS)
    return BillFilter(
        period=parse_period(params["period"]) if "period" in params else None,
        status=enum_param(BillQueryStatus, params.get("status"), "status"),
        area_id=decode_id(params["areaId"], "Area", field="areaId") if "areaId" in params else None,
        search=params.get("search"),
        account_id=decode_id(params["accountId"], "Account", field="accountId") if "accountId" in params else None,
    )


def notice_params(params: Mapping[str, str]) -> tuple[int, NoticeKind, date | None]:
    """``(area id, kind, period)`` of a notices link: the area and kind are required, the
    period is for a 缴费通知单 (a 催缴单 without one takes every overdue period)."""
    refuse_unknown_params(params, _NOTICE_PARAMS)
    kind = enum_param(NoticeKind, params.get("kind"), "kind")
    if kind is None:
        raise BadUserInput("请指定通知单类型 (notice / reminder)", "Give the kind: notice or reminder", field="kind")
    period = parse_period(params["period"]) if "period" in params else None
    if kind is NoticeKind.notice and period is None:
        raise BadUserInput("请指定账期", "A notice prints one period: give it", field="period")
    return decode_id(params.get("areaId", ""), "Area", field="areaId"), kind, period


def _totals(readings: Sequence[dict[str, Any]]) -> str:
    # One meter's total as a number would do; several (a household with two meters) are listed.
    return " / ".join(str(Decimal(str(r["total_m3"])).normalize()) for r in sorted(readings,
                                                                                   key=lambda r: r["meter_id"]))


def bill_values(row: BillRow, *, today: date, local: Callable[[datetime], datetime]) -> list[Any]:
    """One sheet row of a bill (the layout's columns); the fee and what is owed on ``today``."""
    bill = row.bill
    owed = bill_owed(bill, today)
    return [f"{bill.period:%Y-%m}", row.account_no, row.household_name, row.community, row.building, row.unit,
            row.room_label, _BILL_KIND_TITLES[bill.kind], _BILL_STATUS_TITLES[bill.status], bill.tariff_code,
            _totals(bill.start_readings), _totals(bill.end_readings), bill.volume_m3, _yuan(bill.amount_fen),
            _yuan(bill.principal_paid_fen + bill.late_fee_paid_fen), _yuan(owed.late_fee_fen),
            _yuan(owed.amount_owed_fen), bill.due_date, local(bill.issued_at),
            local(bill.paid_at) if bill.paid_at else None, local(bill.voided_at) if bill.voided_at else None,
            bill.void_reason]


async def bill_rows(sessions: async_sessionmaker[AsyncSession], *, scope_patterns: list[str],
                    bill_filter: BillFilter, today: date) -> AsyncIterator[BillRow]:
    """Every bill of the filter in the list's order, a page (one short read) at a time."""
    offset = 0
    while True:
        async with sessions() as session:
            page = await bill_page(session, scope_patterns=scope_patterns, bill_filter=bill_filter, today=today,
                                   offset=offset, limit=_PAGE)
        for row in page.rows:
            yield row
        offset += len(page.rows)
        if len(page.rows) < _PAGE or offset >= page.total:
            return


def statement_rows(figures: statements.StatementFigures, entries: Sequence[statements.StatementEntry], *,
                   local: Callable[[datetime], datetime]) -> list[list[Any]]:
    """The sheet's rows: the opening balance, each entry, the closing balance."""
    rows: list[list[Any]] = [[local(figures.start), "期初余额", None, _yuan(figures.opening_fen), "", None, None, "", ""]]
    rows += [[local(e.posted_at), _KIND_TITLES.get(e.kind.value, e.kind.value), _yuan(e.amount_fen),
              _yuan(e.balance_after_fen), e.ref, e.cycle_start, e.volume_m3, e.note, e.posted_by] for e in entries]
    rows.append([local(figures.end), "期末余额", None, _yuan(figures.closing_fen), "", None, None, "", ""])
    return rows


def _arguments(params: dict[str, str]) -> tuple[int, date, date]:
    return (decode_id(params.get("accountId", ""), "Account", field="accountId"),
            parse_day(params.get("from"), field="from"), parse_day(params.get("to"), field="to"))


def routes(host: HttpHost) -> list[Route]:
    files: FileStore = host.services["files"]
    zone = host.settings.tz

    def local(instant: datetime) -> datetime:
        return instant.astimezone(zone).replace(tzinfo=None)

    async def build(principal: Principal, params: dict[str, str]) -> Exported:
        async with host.sessions() as session, session.begin():
            account_id, start_day, end_day = _arguments(params)
            start, end = statements.day_range(start_day, end_day, tz=zone)
            figures = await statements.statement_figures(session, account_id=account_id, start=start, end=end,
                                                         scope_patterns=principal.scope_patterns())
            entries: list[statements.StatementEntry] = []
            while len(entries) < figures.entries:
                more = await statements.statement_entries(session, account_id=account_id, start=start, end=end,
                                                          offset=len(entries), limit=_PAGE)
                if not more:
                    break
                entries += more
        rows = statement_rows(figures, entries, local=local)

        async def source() -> AsyncIterator[list[Any]]:
            for row in rows:
                yield row

        path, _ = await excel.spool_rows(
            lambda target, next_chunk: write_sheets(target, STATEMENT_LAYOUT, next_chunk, list),
            source(), prefix="shuiwu-statement-", directory=str(files.spool_directory()))
        return Exported(path, len(entries), f"statement-{account_id}-{start_day:%Y%m%d}-{end_day:%Y%m%d}.xlsx")

    billing: BillingSettings = host.services.get(settings_group_key("billing")) or BillingSettings()
    words = NoticeWords(utility_name=billing.utility_name, service_phone=billing.service_phone,
                        payment_methods=billing.payment_methods, reminder_days=billing.reminder_days)

    async def build_bills(principal: Principal, params: dict[str, str]) -> Exported:
        today = local_today(utcnow(), zone)
        rows = bill_rows(host.sessions, scope_patterns=principal.scope_patterns(),
                         bill_filter=bill_filter_of_params(params), today=today)
        path, written = await excel.spool_rows(
            lambda target, next_chunk: write_sheets(target, BILLS_LAYOUT, next_chunk,
                                                    lambda row: bill_values(row, today=today, local=local)),
            rows, prefix="shuiwu-bills-", directory=str(files.spool_directory()))
        return Exported(path, written, f"bills-{utcnow().astimezone(zone):%Y%m%d%H%M}.xlsx")

    async def build_notices(principal: Principal, params: dict[str, str]) -> Exported:
        area_id, kind, period = notice_params(params)
        today = local_today(utcnow(), zone)
        async with host.sessions() as session:
            notices = await household_notices(session, area_id=area_id, kind=kind, period=period, today=today, tz=zone,
                                              scope_patterns=principal.scope_patterns())
        pdf = await render_notices_async(notices, kind=kind, today=today, font=billing.font, words=words)
        descriptor, name = tempfile.mkstemp(prefix="shuiwu-notices-", suffix=".pdf", dir=str(files.spool_directory()))
        with os.fdopen(descriptor, "wb") as spooled:
            spooled.write(pdf)
        label = "notices" if kind is NoticeKind.notice else "reminders"
        return Exported(name, len(notices), f"{label}-{area_id}-{period or today:%Y%m}.pdf")

    return [
        export_route(host, ExportRoute(STATEMENT_EXPORT_PATH, READ_PERMISSION, "accounts", "exportAccountStatement",
                                       "导出账户流水"), build, record=record_operation),
        export_route(host, ExportRoute(BILLS_EXPORT_PATH, BILLS_PERMISSION, "bills", "exportBills", "导出账单"),
                     build_bills, record=record_operation),
        export_route(host, ExportRoute(BILL_NOTICES_PATH, BILLS_PERMISSION, "bills", "printBillNotices",
                                       "打印缴费通知单 / 催缴单", media_type=PDF_MEDIA_TYPE),
                     build_notices, record=record_operation),
    ]
