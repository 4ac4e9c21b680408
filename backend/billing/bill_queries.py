"""Bill queries (账单查询): postpaid bills filtered, one page and its count in one
statement, kept to the caller's areas; their lines and allocations for a page in one
statement each; and the bills a building's notices print.

**Scope** is the household's area path (``areas.path LIKE ANY(scope)``), as for every
household list; a bill outside it is NOT_FOUND. **Order**: newest period first, then by
缴费号 (account number), a re-issue before the bill it replaced.

**Status filter**: ``open``, ``paid`` and ``voided`` are the bill's stored status;
``overdue`` (逾期, what 催缴 works from) is an open bill whose due date is before
``today``, the utility's day of the read: the late fee starts the day after the due
date (``backend.billing.late_fees``), so an overdue bill is one accruing a fee.

**What is owed** is read, never stored: the principal not yet paid, and the late fee on
``today`` (:func:`backend.billing.late_fees.late_fee_owed_on`) less what of it was paid;
a paid or voided bill owes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.service import PLACE_COLUMNS, HouseholdRows, contains_pattern, fetch_by_ids, fetch_page
from backend.billing.bills_models import Bill, BillAllocation, BillKind, BillLine, BillStatus
from backend.billing.late_fees import LateFeeState, late_fee_on, late_fee_owed_on
from backend.billing.scope import area_path_in_scope
from backend.db import raw_connection
from backend.errors import BadUserInput, DomainError, ErrorCode

__all__ = [
    "BILL_COLUMNS", "MAX_HOUSEHOLD_BILLS", "MAX_NOTICE_BILLS", "BillFilter", "BillLineRow", "BillOwed", "BillPage",
    "BillQueryStatus", "BillReading", "BillRow", "NoticeBill", "NoticeKind", "allocations_by_bill_ids", "bill_owed",
    "bill_page", "bill_rows_by_household_ids", "bill_rows_by_ids", "lines_by_bill_ids", "natural_key", "notice_bills",
    "readings_of",
]

# The most bills one print of notices takes (a building is tens to a few hundred households).
MAX_NOTICE_BILLS = 5000


class BillQueryStatus(StrEnum):
    """The list's status filter: a stored status, or ``overdue`` (open and past due)."""

    open = "open"
    paid = "paid"
    voided = "voided"
    overdue = "overdue"


class NoticeKind(StrEnum):
    """缴费通知单 (every open bill of the period) or 催缴单 (every overdue bill)."""

    notice = "notice"
    reminder = "reminder"


class TooManyNotices(DomainError):
    code = ErrorCode.TOO_MANY_ROWS
    message = f"一次最多打印 {MAX_NOTICE_BILLS} 张账单的通知单, 请选择较小的片区 (楼宇)"
    message_en = f"At most {MAX_NOTICE_BILLS} bills print at once; choose a smaller area (a building)"


@dataclass(frozen=True, slots=True)
class BillFilter:
    """The list's filters; None filters nothing. ``period`` is the period's first day;
    ``search`` matches the household's name or 缴费号 (account number), in part."""

    period: date | None = None
    status: BillQueryStatus | None = None
    area_id: int | None = None
    search: str | None = None
    account_id: int | None = None


@dataclass(frozen=True, slots=True)
class BillReading:
    """One meter's reading a bill starts or ends at."""

    meter_id: int
    read_at: datetime
    total_m3: Decimal


@dataclass(frozen=True, slots=True)
class BillOwed:
    """A bill's figures on a day: its whole late fee (paid or not), what is owed of the
    principal and of the fee, and their sum."""

    late_fee_fen: int
    principal_owed_fen: int
    late_fee_owed_fen: int

    @property
    def amount_owed_fen(self) -> int:
        return self.principal_owed_fen + self.late_fee_owed_fen


@dataclass(frozen=True, slots=True)
class BillRow:
    """A bill with what the lists show of its household and its place (the community,
    building and unit above it, the room label ``1-1-0101``)."""

    bill: Bill
    account_no: str
    household_name: str
    address: str
    phone: str | None
    community: str | None
    building: str | None
    unit: str | None
    room_label: str | None


@dataclass(frozen=True, slots=True)
class BillPage:
    rows: list[BillRow]
    total: int


BILL_COLUMNS = (
    "id", "account_id", "household_id", "period", "months", "kind", "status", "run_id", "period_start", "period_end",
    "tariff_code", "persons", "start_readings", "end_readings", "measured_m3", "volume_m3", "cycle_start",
    "cycle_volume_m3", "earlier_cycles", "prior_cycle_m3", "amount_fen", "principal_paid_fen", "due_date",
    "late_fee_rate", "late_fee_cap_fen", "late_fee_carried", "late_fee_from", "late_fee_posted_fen",
    "late_fee_paid_fen", "late_fee_waived_fen", "late_fee_waived_at", "late_fee_waived_by", "late_fee_waiver_reason",
    "entry_id", "issued_at", "issued_by", "paid_at", "voided_at", "voided_by", "void_reason", "void_entry_id",
    "reissue_of_id",
)

# (filter field, its condition with {} for its parameter), in the order parameters are numbered.
_CONDITIONS: tuple[tuple[str, str], ...] = (
    ("period", "b.period = {}::date"),
    ("status", "b.status = {}::text"),
    ("overdue_before", "(b.status = 'open' AND b.due_date < {}::date)"),
    # Paths are ids and slashes (/1/4/17/): nothing in them for LIKE to escape.
    ("area_path", "ar.path LIKE {}::text || '%'"),
    ("search", "(h.name LIKE {0}::text ESCAPE '\\' OR h.account_no LIKE {0}::text ESCAPE '\\')"),
    ("account_id", "b.account_id = {}::bigint"),
)

_LISTED_COLUMNS = ", ".join(f"b.{name}" for name in BILL_COLUMNS) + (
    ", h.account_no, h.name AS household_name, h.address, h.phone, h.room, h.area_id")
_LIST = HouseholdRows(
    select=_LISTED_COLUMNS,
    source="bills b JOIN households h ON h.id = b.household_id JOIN areas ar ON ar.id = h.area_id",
    id_column="b.id", conditions=_CONDITIONS, order="period DESC, account_no, id DESC",
)

# A line's component name is the one its tariff version gave it (自来水费), else its code.
# A household's newest bills, for every household of a page at once (Household.bills).
_OF_HOUSEHOLDS = f"""
SELECT p.*, {PLACE_COLUMNS}
FROM (SELECT {_LISTED_COLUMNS}, row_number() OVER (PARTITION BY b.household_id ORDER BY b.period DESC, b.id DESC) AS n
      FROM bills b JOIN households h ON h.id = b.household_id
      WHERE b.household_id = ANY($1::bigint[])
        AND ($2::text IS NULL OR b.status = $2::text)
        AND ($3::date IS NULL OR (b.status = 'open' AND b.due_date < $3::date))) p
JOIN areas a ON a.id = p.area_id
WHERE p.n <= $4
ORDER BY p.household_id, p.period DESC, p.id DESC
"""

_LINES = """
SELECT l.bill_id, l.line_no, l.component, l.tier, l.volume_m3, l.price, l.amount_fen, l.valid_from, l.cycle_start,
       coalesce((SELECT c.value ->> 'name' FROM tariffs t CROSS JOIN jsonb_array_elements(t.rules -> 'components') c
                 WHERE t.code = b.tariff_code AND t.valid_from = l.valid_from AND c.value ->> 'code' = l.component
                 LIMIT 1), l.component) AS component_name
FROM bill_lines l JOIN bills b ON b.id = l.bill_id
WHERE l.bill_id = ANY($1::bigint[]) ORDER BY l.bill_id, l.line_no
"""

_ALLOCATIONS = """
SELECT id, bill_id, account_id, entry_id, late_fee_fen, principal_fen, undoes_id, allocated_at FROM bill_allocations
WHERE bill_id = ANY($1::bigint[]) ORDER BY bill_id, allocated_at, id
"""


def _readings(value: Any) -> list[dict[str, Any]]:
    # SQLAlchemy's asyncpg codec hands JSONB over as text; the ORM would decode it.
    decoded = json.loads(value) if isinstance(value, str) else value
    return list(decoded or [])


def bill_of_record(record: Any) -> Bill:
    """A :class:`Bill` (detached) from a row holding :data:`BILL_COLUMNS`."""
    values = {name: record[name] for name in BILL_COLUMNS}
    values["kind"] = BillKind(values["kind"])
    values["status"] = BillStatus(values["status"])
    values["start_readings"] = _readings(values["start_readings"])
    values["end_readings"] = _readings(values["end_readings"])
    if isinstance(values["earlier_cycles"], str):
        values["earlier_cycles"] = json.loads(values["earlier_cycles"])
    return Bill(**values)


def _row(record: Any) -> BillRow:
    return BillRow(bill=bill_of_record(record), account_no=record["account_no"],
                   household_name=record["household_name"], address=record["address"], phone=record["phone"],
                   community=record["community"], building=record["building"], unit=record["unit"],
                   room_label=record["room_label"])


def readings_of(readings: Sequence[dict[str, Any]]) -> list[BillReading]:
    """A bill's ``start_readings`` / ``end_readings`` as typed values, by meter."""
    found = [BillReading(meter_id=int(r["meter_id"]), read_at=r["read_at"] if isinstance(r["read_at"], datetime)
                         else datetime.fromisoformat(str(r["read_at"])), total_m3=Decimal(str(r["total_m3"])))
             for r in readings]
    return sorted(found, key=lambda reading: reading.meter_id)


def bill_owed(bill: Bill, today: date) -> BillOwed:
    """What ``bill`` stands at on ``today`` (the utility's day): module docstring."""
    if bill.status is BillStatus.voided:
        return BillOwed(0, 0, 0)
    state = LateFeeState.of(bill)
    return BillOwed(late_fee_fen=late_fee_on(state, today),
                    principal_owed_fen=bill.amount_fen - bill.principal_paid_fen,
                    late_fee_owed_fen=max(0, late_fee_owed_on(state, today)))


async def _values(session: AsyncSession, given: BillFilter, *, today: date,
                  scope_patterns: Sequence[str] | None) -> dict[str, Any]:
    """The filter's set fields as SQL parameters, checked; NOT_FOUND for an area outside
    the scope."""
    values: dict[str, Any] = {}
    if given.period is not None:
        if given.period.day != 1:
            raise BadUserInput("账期须为某月 1 日", "A period is given as its month's first day", field="period")
        values["period"] = given.period
    if given.status is BillQueryStatus.overdue:
        values["overdue_before"] = today
    elif given.status is not None:
        values["status"] = given.status.value
    if given.area_id is not None:
        values["area_path"] = await area_path_in_scope(session, given.area_id, scope_patterns)
    search = (given.search or "").strip()
    if "\x00" in search:
        raise BadUserInput("文本不能包含 NUL 字符", "Text must not contain NUL characters", field="search")
    if search:
        values["search"] = contains_pattern(search)
    if given.account_id is not None:
        values["account_id"] = given.account_id
    return values


async def bill_page(
    session: AsyncSession,
    *,
    scope_patterns: Sequence[str],
    bill_filter: BillFilter = BillFilter(),
    today: date,
    offset: int,
    limit: int,
) -> BillPage:
    """Bills of households in the scope (and the filter), newest period first then by
    缴费号: one page and how many there are in all, in one statement. ``today`` is the
    utility's day the ``overdue`` filter reads."""
    values = await _values(session, bill_filter, today=today, scope_patterns=scope_patterns)
    records, total = await fetch_page(session, _LIST, scope_patterns=scope_patterns, values=values, offset=offset,
                                      limit=limit)
    return BillPage(rows=[_row(record) for record in records], total=total)


async def bill_rows_by_ids(session: AsyncSession, ids: Sequence[int], *,
                           scope_patterns: Sequence[str] | None = None) -> dict[int, BillRow]:
    """The bills of ``ids`` with their household's place, by id; with ``scope_patterns``
    only those of households in the scope. One statement."""
    records = await fetch_by_ids(session, _LIST, ids, scope_patterns=scope_patterns)
    return {record["id"]: _row(record) for record in records}


@dataclass(frozen=True, slots=True)
class BillLineRow:
    """A bill's line and the name its tariff gives the component (自来水费, 污水处理费)."""

    line: BillLine
    component_name: str


# The most bills Household.bills answers per household: three years of monthly bills.
MAX_HOUSEHOLD_BILLS = 36


async def bill_rows_by_household_ids(session: AsyncSession, household_ids: Sequence[int], *,
                                     status: BillQueryStatus | None, today: date,
                                     limit: int = MAX_HOUSEHOLD_BILLS) -> dict[int, list[BillRow]]:
    """Each household's newest bills (of ``status``; ``overdue`` read on ``today``), at
    most ``limit`` each, newest period first: one statement for every household. The
    caller saw the households, so no scope is applied here."""
    if not household_ids:
        return {}
    stored = status.value if status is not None and status is not BillQueryStatus.overdue else None
    overdue_before = today if status is BillQueryStatus.overdue else None
    driver = await raw_connection(session)
    found: dict[int, list[BillRow]] = {}
    for record in await driver.fetch(_OF_HOUSEHOLDS, list(set(household_ids)), stored, overdue_before,
                                     min(max(limit, 0), MAX_HOUSEHOLD_BILLS)):
        found.setdefault(record["household_id"], []).append(_row(record))
    return found


async def lines_by_bill_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[BillLineRow]]:
    """Each bill's lines in line order (one statement for every bill of a page)."""
    found: dict[int, list[BillLineRow]] = {}
    if not ids:
        return found
    driver = await raw_connection(session)
    for r in await driver.fetch(_LINES, list(set(ids))):
        found.setdefault(r["bill_id"], []).append(BillLineRow(BillLine(
            bill_id=r["bill_id"], line_no=r["line_no"], component=r["component"], tier=r["tier"],
            volume_m3=r["volume_m3"], price=r["price"], amount_fen=r["amount_fen"], valid_from=r["valid_from"],
            cycle_start=r["cycle_start"]),
            r["component_name"]))
    return found


async def allocations_by_bill_ids(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[BillAllocation]]:
    """Each bill's allocations, oldest first, undoing rows included (one statement)."""
    found: dict[int, list[BillAllocation]] = {}
    if not ids:
        return found
    driver = await raw_connection(session)
    for r in await driver.fetch(_ALLOCATIONS, list(set(ids))):
        found.setdefault(r["bill_id"], []).append(BillAllocation(
            id=r["id"], bill_id=r["bill_id"], account_id=r["account_id"], entry_id=r["entry_id"],
            late_fee_fen=r["late_fee_fen"], principal_fen=r["principal_fen"], undoes_id=r["undoes_id"],
            allocated_at=r["allocated_at"]))
    return found


# --------------------------------------------------------------------------- notices

_NOTICE_BILLS = f"""
SELECT p.*, {PLACE_COLUMNS},
       (SELECT x.id FROM areas x WHERE a.path LIKE x.path || '%' AND x.kind = 'building'
        ORDER BY length(x.path) DESC LIMIT 1) AS building_id
FROM (SELECT {_LISTED_COLUMNS}
      FROM bills b JOIN households h ON h.id = b.household_id JOIN areas ar ON ar.id = h.area_id
      WHERE ar.path LIKE $1::text || '%' AND ($2::text[] IS NULL OR ar.path LIKE ANY($2::text[]))
        AND b.status = 'open'
        AND (CASE WHEN $3::text = 'notice' THEN b.period = $4::date
                  ELSE b.due_date < $5::date AND ($4::date IS NULL OR b.period <= $4::date) END)
      LIMIT $6) p
JOIN areas a ON a.id = p.area_id
"""


@dataclass(frozen=True, slots=True)
class NoticeBill:
    """A bill a notice prints, with its household's place and the building it is
    delivered in (None: the household lies under no building area)."""

    row: BillRow
    building_id: int | None


async def notice_bills(
    session: AsyncSession,
    *,
    area_id: int,
    kind: NoticeKind,
    period: date | None,
    today: date,
    scope_patterns: Sequence[str] | None,
) -> list[NoticeBill]:
    """The bills notices of ``kind`` print for the households of the area's subtree in
    the scope: for a 缴费通知单 every open bill of ``period``; for a 催缴单 every bill
    overdue on ``today`` (any period up to ``period`` when given). Ordered by community,
    building, room label and 缴费号, then period: what the print groups by household. NOT_FOUND for
    an area outside the scope; TOO_MANY_ROWS past :data:`MAX_NOTICE_BILLS`."""
    if kind is NoticeKind.notice and period is None:
        raise BadUserInput("请指定账期", "A notice prints one period: give it", field="period")
    if period is not None and period.day != 1:
        raise BadUserInput("账期须为某月 1 日", "A period is given as its month's first day", field="period")
    area_path = await area_path_in_scope(session, area_id, scope_patterns)
    driver = await raw_connection(session)
    records = await driver.fetch(_NOTICE_BILLS, area_path, list(scope_patterns) if scope_patterns is not None else None,
                                 kind.value, period, today, MAX_NOTICE_BILLS + 1)
    if len(records) > MAX_NOTICE_BILLS:
        raise TooManyNotices(field="areaId")
    found = [NoticeBill(_row(record), record["building_id"]) for record in records]
    # The order of a door round: community, building, room label (1-2-0101 before 1-10-0101), 缴费号.
    found.sort(key=lambda b: (natural_key(b.row.community or ""), natural_key(b.row.building or ""),
                              b.building_id or 0, natural_key(b.row.room_label or ""), b.row.account_no,
                              b.row.bill.period, b.row.bill.id or 0))
    return found


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """``text`` ordered as people number things: ``2号楼`` before ``10号楼``."""
    return tuple((0, int(part)) if part.isdecimal() else (1, part) for part in re.split(r"(\d+)", text) if part)
