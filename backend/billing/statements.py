"""What accounts look like on screen: the accounts list (销户 / 充值缴费), an account's
statement over a range of days (账户流水, with its Excel export) and the prepaid monthly
statement (预付费历史账单).

**Balances on a statement** are sums of entries, not a stored figure: the opening balance
of ``[start, end)`` is the sum of the account's entries posted before ``start``, the
closing balance the sum of those posted before ``end``. The ledger keeps the account's
balance equal to the sum of its entries (``backend.billing.ledger``), so this is the
``balance_after`` of the last entry posted before the instant whenever entries were
posted in time order, and it also holds when two postings' transaction times and lock
order disagree: opening + the period's movements = closing, always.

**Months and days** are the utility's (docs/periods.md): a day range ``[d1, d2]`` is
``[d1 00:00, (d2 + 1) 00:00)`` of the zone, at most 366 days; an entry belongs to the
month its ``posted_at`` falls in, in the zone.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.accounts import account_in_scope
from backend.billing.models import Account, AccountStatus, AlertState, BillingMode, EntryKind, TariffCycle
from backend.billing.settlement import cycle_of, midnight
from backend.db import raw_connection
from backend.errors import BadUserInput, DomainError, ErrorCode
from backend.readings.partitions import as_zone
from backend.readings.usage import usage_between

__all__ = [
    "MAX_MONTHS", "MAX_STATEMENT_DAYS", "AccountFilter", "AccountPage", "AccountRow", "MonthStatement",
    "StatementEntry", "StatementFigures", "account_page", "day_range", "prepaid_months", "statement_entries",
    "statement_figures",
]

MAX_STATEMENT_DAYS = 366
MAX_MONTHS = 36
CHARGED_KINDS = (EntryKind.charge, EntryKind.adjustment)
RECHARGED_KINDS = (EntryKind.recharge, EntryKind.payment)


class StatementRangeTooLong(DomainError):
    code = ErrorCode.RANGE_TOO_LONG
    message = f"对账期间不能超过 {MAX_STATEMENT_DAYS} 天"
    message_en = f"A statement covers at most {MAX_STATEMENT_DAYS} days"


def _like(search: str) -> str:
    return "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def day_range(start: date, end: date, *, tz: str | tzinfo) -> tuple[datetime, datetime]:
    """The instants ``[start 00:00, (end + 1) 00:00)`` of the zone for the days
    ``[start, end]``; BAD_USER_INPUT when ``end`` is before ``start``, RANGE_TOO_LONG past
    :data:`MAX_STATEMENT_DAYS` days."""
    if end < start:
        raise BadUserInput("结束日期不能早于开始日期", "`to` cannot be before `from`", field="to")
    if (end - start).days + 1 > MAX_STATEMENT_DAYS:
        raise StatementRangeTooLong(field="to")
    zone = as_zone(tz)
    return midnight(start, zone), midnight(end + timedelta(days=1), zone)


# --------------------------------------------------------------------------- the accounts list


@dataclass(frozen=True, slots=True)
class AccountFilter:
    """The list's filters; None filters nothing. ``search`` matches the household's
    account number (编码), name, phones and address."""

    area_id: int | None = None
    mode: BillingMode | None = None
    status: AccountStatus | None = None
    alert_state: AlertState | None = None
    search: str | None = None


@dataclass(frozen=True, slots=True)
class AccountRow:
    """An account with what the list shows of its household."""

    account: Account
    account_no: str
    household_name: str
    phone: str | None
    address: str


@dataclass(frozen=True, slots=True)
class AccountPage:
    rows: list[AccountRow]
    total: int


ACCOUNT_COLUMNS = (
    "id", "household_id", "mode", "tariff_code", "persons", "balance_fen", "alert_threshold_fen", "close_threshold_fen",
    "grace_fen", "vulnerable", "status", "alert_state", "opened_at", "opened_by", "closed_at", "closed_by", "settled_to",
    "created_at",
)


@functools.cache
def _account_page_sql(by_area: bool, by_mode: bool, by_status: bool, by_state: bool, by_search: bool) -> str:
    """The page and its count in one statement, for one shape of the filter (so each
    shape is one prepared statement with its own plan). Parameters: the scope patterns,
    offset, limit, then the filters that are set, in this order."""
    conditions = ["ar.path LIKE ANY($1::text[])"]
    number = 3

    def parameter() -> str:
        nonlocal number
        number += 1
        return f"${number}"

    if by_area:
        # Paths are ids and slashes (/1/4/17/): nothing in them for LIKE to escape.
        conditions.append(f"ar.path LIKE (SELECT r.path || '%' FROM areas r WHERE r.id = {parameter()}::bigint)")
    if by_mode:
        conditions.append(f"a.mode = {parameter()}::text")
    if by_status:
        conditions.append(f"a.status = {parameter()}::text")
    if by_state:
        conditions.append(f"a.alert_state = {parameter()}::text")
    if by_search:
        term = parameter()
        conditions.append("(" + " OR ".join(f"h.{column} LIKE {term}::text ESCAPE '\\'"
                                            for column in ("account_no", "name", "phone", "phone2", "address")) + ")")
    columns = ", ".join(f"a.{name}" for name in ACCOUNT_COLUMNS)
    return f"""
WITH listed AS (
    SELECT {columns}, h.account_no, h.name AS household_name, h.phone, h.address
    FROM accounts a JOIN households h ON h.id = a.household_id JOIN areas ar ON ar.id = h.area_id
    WHERE {" AND ".join(conditions)}
)
SELECT t.total, p.*
FROM (SELECT count(*) AS total FROM listed) t
LEFT JOIN LATERAL (SELECT * FROM listed ORDER BY account_no, id DESC OFFSET $2 LIMIT $3) p ON true
"""


async def account_page(
    session: AsyncSession,
    *,
    scope_patterns: Sequence[str],
    account_filter: AccountFilter = AccountFilter(),
    offset: int,
    limit: int,
) -> AccountPage:
    """The accounts of households in the scope (and the filter), by account number, one
    page of them and how many there are in all: one statement. Filtering, ordering and
    paging happen in SQL."""
    search = account_filter.search.strip() if account_filter.search else ""
    if "\x00" in search:
        raise BadUserInput("文本不能包含 NUL 字符", "Text must not contain NUL characters", field="search")
    given = account_filter
    sql = _account_page_sql(given.area_id is not None, given.mode is not None, given.status is not None,
                            given.alert_state is not None, bool(search))
    values = [value for value in (
        given.area_id, given.mode.value if given.mode is not None else None,
        given.status.value if given.status is not None else None,
        given.alert_state.value if given.alert_state is not None else None, _like(search) if search else None,
    ) if value is not None]
    driver = await raw_connection(session)
    records = await driver.fetch(sql, list(scope_patterns), max(offset, 0), max(limit, 0), *values)
    total = records[0]["total"] if records else 0
    rows = [AccountRow(account=account_of_record(record), account_no=record["account_no"],
                       household_name=record["household_name"], phone=record["phone"], address=record["address"])
            for record in records if record["id"] is not None]
    return AccountPage(rows=rows, total=total)


def account_of_record(record: Any) -> Account:
    """An :class:`Account` (detached) from a row holding :data:`ACCOUNT_COLUMNS`."""
    values = {name: record[name] for name in ACCOUNT_COLUMNS}
    values["mode"] = BillingMode(values["mode"])
    values["status"] = AccountStatus(values["status"])
    values["alert_state"] = AlertState(values["alert_state"])
    return Account(**values)


_OF_HOUSEHOLDS = f"""
SELECT {", ".join(ACCOUNT_COLUMNS)} FROM accounts WHERE household_id = ANY($1::bigint[])
ORDER BY household_id, opened_at DESC, id DESC
"""


async def accounts_by_household_ids(session: AsyncSession, household_ids: Sequence[int]) -> dict[int, list[Account]]:
    """Every account of each household, newest first (the open one, if any, is first)."""
    driver = await raw_connection(session)
    found: dict[int, list[Account]] = {}
    for record in await driver.fetch(_OF_HOUSEHOLDS, list(set(household_ids))):
        found.setdefault(record["household_id"], []).append(account_of_record(record))
    return found


# --------------------------------------------------------------------------- a statement over days


@dataclass(frozen=True, slots=True)
class StatementFigures:
    """An account's figures over ``[start, end)``: balances before and after, the net
    change per entry kind (signed, as the entries are) and the number of entries."""

    account: Account
    start: datetime
    end: datetime
    opening_fen: int
    closing_fen: int
    totals_fen: dict[EntryKind, int]
    entries: int


@dataclass(frozen=True, slots=True)
class StatementEntry:
    id: int
    kind: EntryKind
    amount_fen: int
    balance_after_fen: int
    ref: str
    note: str
    cycle_start: date | None
    volume_m3: Decimal | None
    posted_at: datetime
    posted_by: str


_FIGURES = """
SELECT kind, coalesce(sum(amount_fen) FILTER (WHERE posted_at < $2), 0)::bigint AS before,
       coalesce(sum(amount_fen) FILTER (WHERE posted_at >= $2), 0)::bigint AS within,
       count(*) FILTER (WHERE posted_at >= $2) AS entries
FROM ledger_entries WHERE account_id = $1 AND posted_at < $3
GROUP BY kind
"""

_ENTRIES = """
SELECT id, kind, amount_fen, balance_after_fen, ref, note, cycle_start, volume_m3, posted_at, posted_by
FROM ledger_entries WHERE account_id = $1 AND posted_at >= $2 AND posted_at < $3
ORDER BY posted_at, id OFFSET $4 LIMIT $5
"""


async def statement_figures(
    session: AsyncSession,
    *,
    account_id: int,
    start: datetime,
    end: datetime,
    scope_patterns: Sequence[str] | None = None,
    field: str = "accountId",
) -> StatementFigures:
    """The account's balances and totals over ``[start, end)`` (module docstring);
    NOT_FOUND for an account outside the scope."""
    account = await account_in_scope(session, account_id, scope_patterns, field=field)
    driver = await raw_connection(session)
    opening = within = entries = 0
    totals: dict[EntryKind, int] = {}
    for record in await driver.fetch(_FIGURES, account_id, start, end):
        opening += record["before"]
        within += record["within"]
        entries += record["entries"]
        if record["entries"]:
            totals[EntryKind(record["kind"])] = record["within"]
    return StatementFigures(account=account, start=start, end=end, opening_fen=opening, closing_fen=opening + within,
                            totals_fen=totals, entries=entries)


async def statement_entries(
    session: AsyncSession, *, account_id: int, start: datetime, end: datetime, offset: int, limit: int
) -> list[StatementEntry]:
    """The account's entries posted in ``[start, end)``, oldest first, one page of them
    (the caller checked the scope with :func:`statement_figures`)."""
    if limit <= 0:
        return []
    driver = await raw_connection(session)
    return [StatementEntry(
        id=r["id"], kind=EntryKind(r["kind"]), amount_fen=r["amount_fen"], balance_after_fen=r["balance_after_fen"],
        ref=r["ref"], note=r["note"], cycle_start=r["cycle_start"], volume_m3=r["volume_m3"], posted_at=r["posted_at"],
        posted_by=r["posted_by"],
    ) for r in await driver.fetch(_ENTRIES, account_id, start, end, max(offset, 0), limit)]


# --------------------------------------------------------------------------- the prepaid monthly statement


@dataclass(frozen=True, slots=True)
class MonthStatement:
    """One month of the prepaid monthly statement (历史账单). ``charged_fen`` is what
    charges and adjustments took, as a positive debit; ``recharged_fen`` what recharges
    and payments brought; ``other_fen`` the net of every other kind (refunds, reversals,
    write-offs, late fees), signed as a change of the balance; ``closing_fen`` the
    balance at the month's end (or now, for the month running)."""

    month: date
    usage_m3: Decimal
    charged_fen: int
    recharged_fen: int
    other_fen: int
    closing_fen: int


_MONTHS = """
SELECT m.start,
       coalesce(-sum(e.amount_fen) FILTER (WHERE e.posted_at >= m.start AND e.kind = ANY($4::text[])), 0)::bigint AS charged,
       coalesce(sum(e.amount_fen) FILTER (WHERE e.posted_at >= m.start AND e.kind = ANY($5::text[])), 0)::bigint AS recharged,
       coalesce(sum(e.amount_fen) FILTER (WHERE e.posted_at >= m.start AND NOT e.kind = ANY($4::text[])
                                          AND NOT e.kind = ANY($5::text[])), 0)::bigint AS other,
       coalesce(sum(e.amount_fen), 0)::bigint AS closing
FROM unnest($2::timestamptz[], $3::timestamptz[]) AS m(start, finish)
LEFT JOIN ledger_entries e ON e.account_id = $1 AND e.posted_at < m.finish
GROUP BY m.start
"""


async def prepaid_months(
    session: AsyncSession,
    *,
    account_id: int,
    months: int,
    now: datetime,
    tz: str | tzinfo = "Asia/Shanghai",
    scope_patterns: Sequence[str] | None = None,
    household_ids: Sequence[int] | None = None,
) -> list[MonthStatement]:
    """The account's last ``months`` months (1 to :data:`MAX_MONTHS`) up to the one
    holding ``now``, newest first, from the month it was opened (:class:`MonthStatement`).
    Usage is ``usage_between`` over the household for the month clipped to the account's
    open period. A staff caller passes ``scope_patterns``; a resident ``household_ids``
    (their bound households): an account of another household is NOT_FOUND, and the
    months before the current owner's 过户 are not theirs to read (they start at it)."""
    if not 1 <= months <= MAX_MONTHS:
        raise BadUserInput(f"月数须为 1 至 {MAX_MONTHS}", f"months must be 1 to {MAX_MONTHS}", field="months")
    account = await account_in_scope(session, account_id, scope_patterns, field="accountId",
                                     household_ids=household_ids)
    zone = as_zone(tz)
    opened = account.opened_at
    if household_ids is not None:
        driver = await raw_connection(session)
        # The current owner's start, when an earlier owner handed over to them (过户); the
        # first owner's record starts when the household was registered, which says nothing.
        owner_since = await driver.fetchval(
            "SELECT max(valid_from) FROM household_owners WHERE household_id = $1 AND valid_to IS NULL "
            "AND EXISTS (SELECT FROM household_owners o WHERE o.household_id = $1 AND o.valid_to IS NOT NULL)",
            account.household_id)
        if owner_since is not None:
            opened = max(opened, midnight(owner_since, zone))
    until = min(now, account.closed_at) if account.closed_at is not None else now
    first = opened.astimezone(zone).date().replace(day=1)
    month = until.astimezone(zone).date().replace(day=1)
    starts: list[date] = []
    while month >= first and len(starts) < months:
        starts.append(month)
        month = (month - timedelta(days=1)).replace(day=1)
    if not starts:
        return []
    bounds = [(midnight(m, zone), midnight(cycle_of(m, TariffCycle.month)[1], zone)) for m in starts]
    usage: list[Decimal] = []
    for begin, finish in bounds:
        window = (max(begin, opened), min(finish, until))
        if window[1] <= window[0]:
            usage.append(Decimal("0.0000"))
            continue
        by_household = await usage_between(session, household_ids=[account.household_id], start=window[0],
                                           end=window[1])
        usage.append(by_household.get(account.household_id, Decimal("0.0000")))
    driver = await raw_connection(session)
    records = {r["start"]: r for r in await driver.fetch(
        _MONTHS, account_id, [b for b, _ in bounds], [f for _, f in bounds],
        [k.value for k in CHARGED_KINDS], [k.value for k in RECHARGED_KINDS])}
    found: list[MonthStatement] = []
    for (begin, _), month_start, used in zip(bounds, starts, usage, strict=True):
        record = records[begin]
        found.append(MonthStatement(month=month_start, usage_m3=used, charged_fen=record["charged"],
                                    recharged_fen=record["recharged"], other_fen=record["other"],
                                    closing_fen=record["closing"]))
    return found
