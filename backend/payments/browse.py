"""Payment queries (缴费查询 / 发票打印): payments of every channel, filtered, one page
and its count in one statement, kept to the caller's areas.

A payment belongs to the area of its household: the scope is the household's area path
(``areas.path LIKE ANY(scope)``), as for every household list. Days are the utility's
(docs/periods.md): ``[from, to]`` bounds the payment's business day, which is the day
of ``paid_at`` in the zone. The list is newest first. Each row carries what the lists
show of the household: 缴费号 (``account_no``), name, and its place: the community,
building and unit above it and its room label (``1-1-0101``), derived as the archives
derive them (``backend.archives.service.rooms``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.service import area_name_sql, room_label_sql
from backend.db import raw_connection
from backend.errors import BadUserInput
from backend.payments.days import MAX_DAYS
from backend.payments.models import Payment, PaymentChannel, PaymentKind, PaymentPurpose, PaymentStatus

__all__ = ["PAYMENT_COLUMNS", "PaymentFilter", "PaymentPage", "PaymentRow", "payment_page", "payment_rows_by_ids"]


@dataclass(frozen=True, slots=True)
class PaymentFilter:
    """The list's filters; None filters nothing. ``search`` matches the household's name
    or 缴费号 (account number), or the payment's 流水号, in part; ``printed`` true keeps
    payments whose receipt was printed at least once, false those never printed."""

    area_id: int | None = None
    start: date | None = None
    end: date | None = None
    search: str | None = None
    channel: PaymentChannel | None = None
    bank_partner: str | None = None
    bank_outlet: str | None = None
    operator_id: int | None = None
    printed: bool | None = None
    kind: PaymentKind | None = None
    status: PaymentStatus | None = None


@dataclass(frozen=True, slots=True)
class PaymentRow:
    payment: Payment
    account_no: str
    household_name: str
    room: str | None
    community: str | None
    building: str | None
    unit: str | None
    room_label: str | None


@dataclass(frozen=True, slots=True)
class PaymentPage:
    rows: list[PaymentRow]
    total: int


PAYMENT_COLUMNS = (
    "id", "serial_no", "idempotency_key", "account_id", "household_id", "kind", "channel", "purpose", "amount_fen",
    "reference", "bank_partner", "bank_outlet", "operator_id", "operator_name", "status", "entry_id",
    "reversal_entry_id", "reversed_at", "reversed_by", "reversal_reason", "note", "receipts_printed", "paid_at",
    "business_day", "created_at",
)
_ENUMS = {"kind": PaymentKind, "channel": PaymentChannel, "purpose": PaymentPurpose, "status": PaymentStatus}
# (filter field, its condition with {} for its parameter), in the order parameters are numbered.
_CONDITIONS: tuple[tuple[str, str], ...] = (
    # Paths are ids and slashes (/1/4/17/): nothing in them for LIKE to escape.
    ("area_id", "ar.path LIKE (SELECT r.path || '%' FROM areas r WHERE r.id = {}::bigint)"),
    ("start", "p.business_day >= {}::date"),
    ("end", "p.business_day <= {}::date"),
    ("search", "(h.name LIKE {0}::text ESCAPE '\\' OR h.account_no LIKE {0}::text ESCAPE '\\' "
               "OR p.serial_no LIKE {0}::text ESCAPE '\\')"),
    ("channel", "p.channel = {}::text"),
    ("bank_partner", "p.bank_partner = {}::text"),
    ("bank_outlet", "p.bank_outlet = {}::text"),
    ("operator_id", "p.operator_id = {}::bigint"),
    ("printed", "(p.receipts_printed > 0) = {}::boolean"),
    ("kind", "p.kind = {}::text"),
    ("status", "p.status = {}::text"),
)


# The household's place, for a row whose household's area is alias ``a`` and whose room is ``p.room``.
_PLACE = (f'{area_name_sql("a", "community")} AS community, {area_name_sql("a", "building")} AS building, '
          f'{area_name_sql("a", "unit")} AS unit, {room_label_sql("a", "p.room")} AS room_label')


@functools.cache
def _page_sql(given: frozenset[str]) -> str:
    """The page and its count in one statement for one shape of the filter (each shape one
    prepared statement with its own plan). Parameters: the scope patterns, offset, limit,
    then the filters that are set, in :data:`_CONDITIONS`' order. The place names are
    derived for the page's rows only."""
    conditions = ["ar.path LIKE ANY($1::text[])"]
    number = 3
    for name, condition in _CONDITIONS:
        if name in given:
            number += 1
            conditions.append(condition.format(f"${number}"))
    columns = ", ".join(f"p.{name}" for name in PAYMENT_COLUMNS)
    return f"""
WITH listed AS (
    SELECT {columns}, h.account_no, h.name AS household_name, h.room, h.area_id
    FROM payments p JOIN households h ON h.id = p.household_id JOIN areas ar ON ar.id = h.area_id
    WHERE {" AND ".join(conditions)}
)
SELECT t.total, p.*, {_PLACE}
FROM (SELECT count(*) AS total FROM listed) t
LEFT JOIN LATERAL (SELECT * FROM listed ORDER BY paid_at DESC, id DESC OFFSET $2 LIMIT $3) p ON true
LEFT JOIN areas a ON a.id = p.area_id
ORDER BY p.paid_at DESC, p.id DESC
"""


def _like(search: str) -> str:
    return "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _values(given: PaymentFilter) -> dict[str, Any]:
    """The filter's set fields as SQL parameters, checked."""
    if given.start is not None and given.end is not None:
        if given.end < given.start:
            raise BadUserInput("结束日期不能早于开始日期", "`to` cannot be before `from`", field="to")
        if (given.end - given.start).days + 1 > MAX_DAYS:
            raise BadUserInput(f"日期范围不能超过 {MAX_DAYS} 天", f"At most {MAX_DAYS} days", field="to")
    values: dict[str, Any] = {}
    for name, _ in _CONDITIONS:
        value = getattr(given, name)
        if isinstance(value, str) and not isinstance(value, PaymentChannel | PaymentKind | PaymentStatus):
            value = value.strip()
            if "\x00" in value:
                raise BadUserInput("文本不能包含 NUL 字符", "Text must not contain NUL characters", field=name)
            if not value:
                continue
            if name == "search":
                value = _like(value)
        elif hasattr(value, "value"):
            value = value.value
        if value is not None:
            values[name] = value
    return values


_BY_IDS = f"""
SELECT p.*, {_PLACE}
FROM (SELECT {", ".join(f"q.{name}" for name in PAYMENT_COLUMNS)}, h.account_no, h.name AS household_name, h.room,
             h.area_id
      FROM payments q JOIN households h ON h.id = q.household_id JOIN areas ar ON ar.id = h.area_id
      WHERE q.id = ANY($1::bigint[]) AND ($2::text[] IS NULL OR ar.path LIKE ANY($2::text[]))) p
JOIN areas a ON a.id = p.area_id
"""


def payment_of_record(record: Any) -> Payment:
    """A :class:`Payment` (detached) from a row holding :data:`PAYMENT_COLUMNS`."""
    values = {name: record[name] for name in PAYMENT_COLUMNS}
    for name, enum in _ENUMS.items():
        values[name] = enum(values[name])
    return Payment(**values)


async def payment_page(
    session: AsyncSession,
    *,
    scope_patterns: Sequence[str],
    payment_filter: PaymentFilter = PaymentFilter(),
    offset: int,
    limit: int,
) -> PaymentPage:
    """Payments of households in the scope (and the filter), newest first: one page and how
    many there are in all, in one statement."""
    values = _values(payment_filter)
    sql = _page_sql(frozenset(values))
    driver = await raw_connection(session)
    records = await driver.fetch(sql, list(scope_patterns), max(offset, 0), max(limit, 0),
                                 *(values[name] for name, _ in _CONDITIONS if name in values))
    total = records[0]["total"] if records else 0
    return PaymentPage(rows=[_row(record) for record in records if record["id"] is not None], total=total)


async def payment_rows_by_ids(session: AsyncSession, ids: Sequence[int], *,
                              scope_patterns: Sequence[str] | None = None) -> dict[int, PaymentRow]:
    """The payments of ``ids`` with their household's place, by id; with ``scope_patterns``
    only those of households in the scope. One statement."""
    if not ids:
        return {}
    driver = await raw_connection(session)
    records = await driver.fetch(_BY_IDS, list(ids), list(scope_patterns) if scope_patterns is not None else None)
    return {record["id"]: _row(record) for record in records}


def _row(record: Any) -> PaymentRow:
    return PaymentRow(payment=payment_of_record(record), account_no=record["account_no"],
                      household_name=record["household_name"], room=record["room"], community=record["community"],
                      building=record["building"], unit=record["unit"], room_label=record["room_label"])
