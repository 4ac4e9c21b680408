"""Billing over plain HTTP: the Excel export of an account statement.

``GET /exports/accounts/statement.xlsx?accountId=…&from=…&to=…&token=…``: the entries of
``accountStatement`` over the days ``[from, to]`` between an opening and a closing
balance line, as an xlsx drawn by :func:`backend.exports.sheets.write_sheets`. The link
comes from the ``accountStatementExportUrl`` query, signed for the caller and exactly
these parameters (5 minutes); a Bearer token works too. ``accounts:read`` and the scope
are checked again at download time; the download is audited (``exportAccountStatement``).
The file is spooled into the file storage and streamed from it
(``backend.files.http.serve_export``), deleted when the response ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from starlette.routing import Route

from backend.audit.service import record_operation
from backend.auth.principal import Principal
from backend.billing import statements
from backend.clock import parse_day
from backend.domain import HttpHost
from backend.exports import excel
from backend.exports.sheets import SheetLayout, write_sheets
from backend.files.http import Exported, ExportRoute, export_route
from backend.files.service import FileStore
from backend.graphql.relay import decode_id

STATEMENT_EXPORT_PATH = "/exports/accounts/statement.xlsx"
READ_PERMISSION = "accounts:read"
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

    return [export_route(host, ExportRoute(STATEMENT_EXPORT_PATH, READ_PERMISSION, "accounts", "exportAccountStatement",
                                           "导出账户流水"), build,
                         record=record_operation)]
