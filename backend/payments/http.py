"""Payments over plain HTTP: the Excel export of the payments list (缴费查询), receipts'
downloads, online payments' notify routes (``backend.payments.online.http``) and the payer's
pages and static QR stickers (``backend.payments.online.payer.http``).

``GET /exports/payments.xlsx?<filter>&token=…``: every payment ``payments`` lists for the
same filter (parameters ``areaId``, ``from``, ``to``, ``search``, ``channel``,
``bankPartner``, ``bankOutlet``, ``operatorId``, ``printed``, ``kind``, ``status``, as
the GraphQL filter spells them), newest first, as an xlsx drawn by
:func:`backend.exports.sheets.write_sheets`. The link comes from the
``paymentsExportUrl`` query, signed for the caller and exactly this filter (5 minutes);
a Bearer token works too. ``payments:read`` and the scope are checked again at download
time; the download is audited (``exportPayments``). The rows are read a page at a time
while the sheet is drawn, spooled into the file storage and streamed from it
(``backend.files.http.serve_export``), deleted when the response ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.routing import Route

from backend.audit.service import record_operation
from backend.auth.principal import Principal
from backend.clock import parse_day, utcnow
from backend.domain import HttpHost
from backend.errors import BadUserInput
from backend.exports import excel
from backend.exports.sheets import SheetLayout, write_sheets
from backend.files.http import Exported, ExportRoute, enum_param, export_route, refuse_unknown_params
from backend.files.service import FileStore
from backend.graphql.relay import decode_id
from backend.payments import browse
from backend.payments.models import PaymentChannel, PaymentKind, PaymentPurpose, PaymentStatus
from backend.payments.online import http as online_http
from backend.payments.online.payer import http as payer_http
from backend.payments.receipts import http as receipts_http

PAYMENTS_EXPORT_PATH = "/exports/payments.xlsx"
READ_PERMISSION = "payments:read"
_PAGE = 5000

_CHANNEL_TITLES = {PaymentChannel.cash: "现金", PaymentChannel.transfer: "转账", PaymentChannel.card: "刷卡",
                   PaymentChannel.alipay: "支付宝", PaymentChannel.wechat: "微信", PaymentChannel.bank: "银行",
                   PaymentChannel.other: "其它"}
_KIND_TITLES = {PaymentKind.collect: "收款", PaymentKind.refund: "退费"}
_PURPOSE_TITLES = {PaymentPurpose.recharge: "充值", PaymentPurpose.bills: "缴费"}
_STATUS_TITLES = {PaymentStatus.succeeded: "成功", PaymentStatus.reversed: "已冲正"}
PAYMENTS_LAYOUT = SheetLayout(
    "缴费记录",
    ("流水号", "缴费时间", "缴费号", "用户姓名", "小区", "楼宇", "单元", "房间", "类型", "用途", "收费方式", "金额 (元)",
     "参考号", "合作银行", "银行网点", "收费员", "状态", "冲正时间", "冲正人", "打印次数", "备注"),
    ("Serial", "Paid at", "Account no.", "Name", "Community", "Building", "Unit", "Room", "Kind", "Purpose", "Channel",
     "Amount (yuan)", "Reference", "Bank", "Outlet", "Cashier", "Status", "Reversed at", "Reversed by", "Prints",
     "Note"),
    (24, 20, 14, 12, 14, 10, 8, 12, 8, 8, 10, 14, 20, 14, 14, 12, 8, 20, 12, 8, 24),
    number_formats=((11, "0.00"),),
)
_FILTER_PARAMS = frozenset({"areaId", "from", "to", "search", "channel", "bankPartner", "bankOutlet", "operatorId",
                            "printed", "kind", "status"})


def filter_of_params(params: Mapping[str, str]) -> browse.PaymentFilter:
    """The list filter of the export link's (and the GraphQL filter's) parameters."""
    refuse_unknown_params(params, _FILTER_PARAMS)
    printed = params.get("printed")
    if printed not in (None, "true", "false"):
        raise BadUserInput("取值无效", "Not one of the allowed values", field="printed")
    return browse.PaymentFilter(
        area_id=decode_id(params["areaId"], "Area", field="areaId") if "areaId" in params else None,
        start=parse_day(params["from"], field="from") if "from" in params else None,
        end=parse_day(params["to"], field="to") if "to" in params else None,
        search=params.get("search"),
        channel=enum_param(PaymentChannel, params.get("channel"), "channel"),
        bank_partner=params.get("bankPartner"), bank_outlet=params.get("bankOutlet"),
        operator_id=decode_id(params["operatorId"], "StaffUser", field="operatorId") if "operatorId" in params else None,
        printed=None if printed is None else printed == "true",
        kind=enum_param(PaymentKind, params.get("kind"), "kind"),
        status=enum_param(PaymentStatus, params.get("status"), "status"),
    )


def _yuan(fen: int) -> Decimal:
    return Decimal(fen).scaleb(-2)


def payment_values(row: browse.PaymentRow, *, local: Callable[[datetime], datetime]) -> list[Any]:
    """One sheet row of a payment (the layout's columns)."""
    p = row.payment
    return [p.serial_no, local(p.paid_at), row.account_no, row.household_name, row.community, row.building, row.unit,
            row.room_label or row.room, _KIND_TITLES[p.kind], _PURPOSE_TITLES[p.purpose], _CHANNEL_TITLES[p.channel],
            _yuan(p.amount_fen), p.reference, p.bank_partner, p.bank_outlet, p.operator_name, _STATUS_TITLES[p.status],
            local(p.reversed_at) if p.reversed_at else None, p.reversed_by, p.receipts_printed, p.note]


async def payment_rows(sessions: async_sessionmaker[AsyncSession], *, scope_patterns: list[str],
                       payment_filter: browse.PaymentFilter) -> AsyncIterator[browse.PaymentRow]:
    """Every payment of the filter, newest first, a page (one short read) at a time."""
    offset = 0
    while True:
        async with sessions() as session:
            page = await browse.payment_page(session, scope_patterns=scope_patterns, payment_filter=payment_filter,
                                             offset=offset, limit=_PAGE)
        for row in page.rows:
            yield row
        offset += len(page.rows)
        if len(page.rows) < _PAGE or offset >= page.total:
            return


def routes(host: HttpHost) -> list[Route]:
    files: FileStore = host.services["files"]
    zone = host.settings.tz

    def local(instant: datetime) -> datetime:
        return instant.astimezone(zone).replace(tzinfo=None)

    async def build(principal: Principal, params: dict[str, str]) -> Exported:
        rows = payment_rows(host.sessions, scope_patterns=principal.scope_patterns(),
                            payment_filter=filter_of_params(params))
        path, written = await excel.spool_rows(
            lambda target, next_chunk: write_sheets(target, PAYMENTS_LAYOUT, next_chunk,
                                                    lambda row: payment_values(row, local=local)),
            rows, prefix="shuiwu-payments-", directory=str(files.spool_directory()))
        return Exported(path, written, f"payments-{utcnow().astimezone(zone):%Y%m%d%H%M}.xlsx")

    export = ExportRoute(PAYMENTS_EXPORT_PATH, READ_PERMISSION, "payments", "exportPayments", "导出缴费记录")
    return [export_route(host, export, build, record=record_operation), *receipts_http.routes(host),
            *online_http.routes(host), *payer_http.routes(host)]
