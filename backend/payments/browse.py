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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.service import HouseholdRows, contains_pattern, fetch_by_ids, fetch_page
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


_LIST = HouseholdRows(
    select=", ".join(f"p.{name}" for name in PAYMENT_COLUMNS) + ", h.account_no, h.name AS household_name, h.room, "
                                                                "h.area_id",
    source="payments p JOIN households h ON h.id = p.household_id JOIN areas ar ON ar.id = h.area_id",
    id_column="p.id", conditions=_CONDITIONS, order="paid_at DESC, id DESC",
)


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
                value = contains_pattern(value)
        elif hasattr(value, "value"):
            value = value.value
        if value is not None:
            values[name] = value
    return values


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
    records, total = await fetch_page(session, _LIST, scope_patterns=scope_patterns, values=_values(payment_filter),
                                      offset=offset, limit=limit)
    return PaymentPage(rows=[_row(record) for record in records], total=total)


async def payment_rows_by_ids(session: AsyncSession, ids: Sequence[int], *,
                              scope_patterns: Sequence[str] | None = None) -> dict[int, PaymentRow]:
    """The payments of ``ids`` with their household's place, by id; with ``scope_patterns``
    only those of households in the scope. One statement."""
    records = await fetch_by_ids(session, _LIST, ids, scope_patterns=scope_patterns)
    return {record["id"]: _row(record) for record in records}


def _row(record: Any) -> PaymentRow:
    return PaymentRow(payment=payment_of_record(record), account_no=record["account_no"],
                      household_name=record["household_name"], room=record["room"], community=record["community"],
                      building=record["building"], unit=record["unit"], room_label=record["room_label"])
